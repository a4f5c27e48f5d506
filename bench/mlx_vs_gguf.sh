#!/usr/bin/env bash
# MLX 4-bit against Q4_K_M of the same shape, streamed under the same memory cgroup: for each format, writes the
# file with `flash-moe synth` (GGUF q4_k_m, or --format mlx: 4-bit groups of 64, bf16 scales, 8-bit router), drops
# the page cache, runs `flash-moe run` inside the cgroup, prints decode tok/s, bytes read per token, hit rate and
# peak memory, and deletes the file (one file on disk at a time).
#
#   bench/mlx_vs_gguf.sh DIR [SHAPE=qwen3-30b-a3b] [LIMIT=8G] [THREADS=2] [N_GEN=32]
#   env: FLASH_MOE=binary; KEEP=1 keeps the files in DIR (about 17 GB each for qwen3-30b-a3b); LAYERS=N writes
#        only the first N layers of the shape (a scaled-down run where the disk cannot hold the full files).
# Needs root: a memory cgroup (v1 at /sys/fs/cgroup/memory or v2 at /sys/fs/cgroup) and drop_caches.
set -euo pipefail
dir=${1:?usage: bench/mlx_vs_gguf.sh DIR [SHAPE] [LIMIT] [THREADS] [N_GEN]}
shape=${2:-qwen3-30b-a3b}
limit=${3:-8G}
threads=${4:-2}
n_gen=${5:-32}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fm=${FLASH_MOE:-$root/target/release/flash-moe}
mkdir -p "$dir"
gguf="$dir/$shape-q4_k_m.gguf"
mlx="$dir/$shape-mlx-4bit"
limit_bytes=$(numfmt --from=iec "${limit%B}")

if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    cg=/sys/fs/cgroup/flash_moe_mlx_bench
    mkdir -p "$cg"
    cg_set() { echo "$limit_bytes" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max" 2>/dev/null || true; }
    cg_peak() { cat "$cg/memory.peak" 2>/dev/null || echo 0; }
else
    cg=/sys/fs/cgroup/memory/flash_moe_mlx_bench
    mkdir -p "$cg"
    cg_set() { echo "$limit_bytes" > "$cg/memory.limit_in_bytes"; echo 0 > "$cg/memory.max_usage_in_bytes"; }
    cg_peak() { cat "$cg/memory.max_usage_in_bytes"; }
fi
trap 'rmdir "$cg" 2>/dev/null || true' EXIT

layers=(${LAYERS:+--layers "$LAYERS"})
for model in "$gguf" "$mlx"; do
    name=$(basename "$model")
    if [[ ! -e $model ]]; then
        echo "== synth $model"
        if [[ $model == "$gguf" ]]; then
            "$fm" synth --shape "$shape" "${layers[@]}" --quant q4_k_m -o "$gguf" -q
        else
            "$fm" synth --shape "$shape" "${layers[@]}" --format mlx -o "$mlx" -q
        fi
    fi
    du -sh "$model"
    sync; echo 3 > /proc/sys/vm/drop_caches
    cg_set
    echo "== $name (cgroup $limit, --memory-budget auto, $threads threads, $n_gen tokens)"
    bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$fm" run -m "$model" -p "The quick brown fox" \
        -n "$n_gen" --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 --ignore-eos -t "$threads" --warm-start off \
        --memory-budget auto --stats-json "$dir/$name.json" > /dev/null
    python3 - "$dir/$name.json" "$name" "$(cg_peak)" "$limit_bytes" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); d = s["experts_decode"]; steps = max(s["decode_steps"], 1)
t_tok = s["decode_secs"] / steps
print(f"{sys.argv[2]}: decode {1/t_tok:.2f} tok/s; {d['bytes_read']/steps/2**20:.1f} MiB read/token; hit rate "
      f"{d['hits']/max(d['hits']+d['misses'],1)*100:.1f}%; waited {d['wait_secs']/steps*1e3:.0f} ms/token for reads; "
      f"peak {int(sys.argv[3])/2**30:.2f} GiB of {int(sys.argv[4])/2**30:.2f} GiB")
PY
    [[ -n ${KEEP:-} ]] || rm -rf "$model"
done
