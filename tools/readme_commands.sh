#!/usr/bin/env bash
# Runs every README command block marked runnable (a fence opened with "```bash runnable"), in order, from the
# repository root, with the built flash-moe first on PATH; stops at the first failing command. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/release"
export PATH="$bin_dir:$PATH"
blocks="$(mktemp -d)"
trap 'rm -rf "$blocks"' EXIT
awk -v dir="$blocks" '
    /^```bash runnable[[:space:]]*$/ { n++; file = sprintf("%s/%02d.sh", dir, n); inside = 1; next }
    /^```/ && inside { inside = 0; next }
    inside { print > file }
' README.md
shopt -s nullglob
files=("$blocks"/*.sh)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "error: README.md has no runnable command blocks" >&2
    exit 1
fi
for f in "${files[@]}"; do
    echo "== README block $(basename "$f" .sh):"
    sed 's/^/   /' "$f"
    bash -euo pipefail "$f"
done
echo "== every runnable README block ran (${#files[@]} blocks)"
