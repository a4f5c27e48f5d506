#!/usr/bin/env bash
# Several sequences decoded together on a big MoE file held in RAM: `flash-moe bench --parallel` against
# `llama-batched-bench` on the same file, counts, prompt and decode lengths. The two engines cannot hold a 17 GB
# file at once on a 24 GB machine (flash-moe's `bench --llama-cpp --parallel` runs both in one command where they
# fit), so they run one after the other, each from a dropped page cache (read into it again first for llama.cpp,
# which maps the file), ROUNDS times alternating; the best round of each counts.
#
#   bench/parallel_big.sh MODEL.gguf LLAMA_CPP_BUILD_DIR [COUNTS=1,4,8] [THREADS=2] [ROUNDS=1]
#   env: FLASH_MOE=binary; NP=16 prompt tokens a sequence; NG=32 decode steps.
# Needs root (drop_caches) and llama-batched-bench (cmake --build build --target llama-batched-bench).
set -euo pipefail
model=${1:?usage: bench/parallel_big.sh MODEL.gguf LLAMA_CPP_BUILD_DIR [COUNTS] [THREADS] [ROUNDS]}
llama=${2:?llama.cpp build dir}
counts=${3:-1,4,8}
threads=${4:-2}
rounds=${5:-1}
np=${NP:-16}
ng=${NG:-32}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
n_max=$(tr ',' '\n' <<<"$counts" | sort -n | tail -1)
for r in $(seq "$rounds"); do
    echo "== round $r: flash-moe bench --parallel $counts, in RAM, $threads threads"
    drop
    "$fm" bench -m "$model" -t "$threads" -p "$np" -n "$ng" -r 1 -q --parallel "$counts" | tee -a "$out/fm.txt"
    echo "== round $r: llama-batched-bench -npl $counts, in RAM (mmap), $threads threads"
    drop
    cat "$model" > /dev/null # llama.cpp maps the file: its first pass would read it from disk
    "$llama/bin/llama-batched-bench" -m "$model" -t "$threads" -c $((n_max * (np + ng + 1))) -npp "$np" -ntg "$ng" \
        -npl "$counts" --output-format jsonl 2>/dev/null | grep '^{' | tee -a "$out/ll.txt"
done
echo "== summary (best rounds)"
python3 - "$out/fm.txt" "$out/ll.txt" <<'PY'
import json, re, sys
fm, ll = {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"flash-moe\s+N=(\d+)\s+pp\s+([\d.]+) tok/s\s+tg\s+([\d.]+) tok/s", line)
    if m:
        n = int(m[1]); fm[n] = max(fm.get(n, (0, 0)), (float(m[3]), float(m[2])))
for line in open(sys.argv[2]):
    v = json.loads(line); n = v["pl"]
    ll[n] = max(ll.get(n, (0, 0)), (v["speed_tg"], v["speed_pp"]))
for n in sorted(fm):
    f, l = fm[n][0], ll.get(n, (0, 0))[0]
    fg = f / fm[min(fm)][0]; lg = l / ll[min(ll)][0] if ll else 0
    print(f"N={n:<3} decode flash-moe {f:7.2f} tok/s ({fg:.2f}x N={min(fm)})  llama.cpp {l:7.2f} tok/s ({lg:.2f}x)  "
          f"ratio {f / l if l else 0:.2f}x")
PY
