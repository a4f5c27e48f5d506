#!/usr/bin/env bash
# Streaming benchmark: flash-moe against llama.cpp on the same GGUF, under the same memory cgroup limit and thread
# count, each after dropping the page cache; with the disk's bandwidth measured in the same run and the physical
# limit (time per token >= compute time + bytes missed / disk bandwidth).
#
#   bench/stream_bench.sh MODEL.gguf [LIMIT=8G] [BUDGET=auto] [THREADS=2] [N_GEN=32]
#   env: LLAMA_CPP_DIR=llama.cpp build dir (holding bin/llama-bench) to compare; LLAMA_EXTRA="--repack 0" extra
#        llama-bench flags (stock llama.cpp repacks weights into its own memory and is OOM-killed under a limit);
#        FM_EXTRA="--replay-routes tests/fixtures/traces/qwen3-30b-a3b.route.csv" extra flags for flash-moe run
#        (e.g. "--approx drop-missing": the summary then gives the drop rate);
#        WARM_START=FILE warm-starts flash-moe from a hot file (default off: a cold start);
#        READ_AHEAD_KB=128 sets the disk's read-ahead for the llama.cpp run (restored after); FLASH_MOE=binary.
# Needs root (cgroup v1 memory controller at /sys/fs/cgroup/memory, drop_caches). Prints a summary table.
set -euo pipefail
model=${1:?usage: bench/stream_bench.sh MODEL.gguf [LIMIT] [BUDGET] [THREADS] [N_GEN]}
limit=${2:-8G}
budget=${3:-auto}
threads=${4:-2}
n_gen=${5:-32}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
cg=/sys/fs/cgroup/memory/flash_moe_bench
out=$(mktemp -d)
trap 'rmdir "$cg" 2>/dev/null || true; rm -rf "$out"' EXIT

to_bytes() { numfmt --from=iec "${1%B}" 2>/dev/null || numfmt --from=iec-i "${1%B}"; }
limit_bytes=$(to_bytes "$limit")

cgroup_reset() {
    mkdir -p "$cg"
    echo "$limit_bytes" > "$cg/memory.limit_in_bytes"
    echo 0 > "$cg/memory.max_usage_in_bytes"
    echo 0 > "$cg/memory.failcnt"
}
# Runs a command inside the cgroup after dropping the page cache.
in_cgroup() {
    sync; echo 3 > /proc/sys/vm/drop_caches
    cgroup_reset
    bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$@"
}
cgroup_report() {
    printf '%s peak %.2f GiB (limit %.2f GiB), failcnt %s\n' "$1" \
        "$(echo "$(cat $cg/memory.max_usage_in_bytes) / 1073741824" | bc -l)" \
        "$(echo "$limit_bytes / 1073741824" | bc -l)" "$(cat $cg/memory.failcnt)"
}

echo "== disk"
sync; echo 3 > /proc/sys/vm/drop_caches
"$fm" diskbench "$model" --bytes 2GiB --chunk 1MiB --in-flight 16 | tee "$out/disk.txt"
disk_gbs=$(grep -o '[0-9.]* GB/s' "$out/disk.txt" | cut -d' ' -f1)

if [[ -z ${SKIP_FLASH_MOE:-} ]]; then
echo "== flash-moe (cgroup $limit, --memory-budget $budget, $threads threads)"
# Sampling from the full distribution: varied tokens and so varied routing, like llama-bench's random tokens.
in_cgroup "$fm" run -m "$model" -p "The quick brown fox" -n "$n_gen" --temp 1 --top-k 0 --top-p 1 --min-p 0 \
    --seed 1 --ignore-eos -t "$threads" --warm-start "${WARM_START:-off}" ${FM_EXTRA:-} \
    --memory-budget "$budget" --stats-json "$out/fm.json" > /dev/null
cgroup_report "flash-moe" | tee "$out/fm_cg.txt"

python3 - "$out/fm.json" "$disk_gbs" <<'PY' | tee "$out/fm_summary.txt"
import json, sys
s = json.load(open(sys.argv[1])); bw = float(sys.argv[2]) * 1e9
d = s["experts_decode"]; steps = max(s["decode_steps"], 1)
t_tok = s["decode_secs"] / steps
bytes_tok = d["bytes_read"] / steps
compute_tok = max(t_tok - d["wait_secs"] / steps, 0.0)
limit_tok = compute_tok + bytes_tok / bw
print(f"flash-moe decode {1/t_tok:.2f} tok/s; {bytes_tok/2**20:.1f} MiB read/token; hit rate "
      f"{d['hits']/max(d['hits']+d['misses'],1)*100:.1f}%; compute {compute_tok*1e3:.0f} ms/token")
print(f"physical limit {1/limit_tok:.2f} tok/s (compute + bytes read / {bw/1e9:.2f} GB/s); "
      f"flash-moe reaches {limit_tok/t_tok*100:.0f}% of it")
if s.get("approx"):
    a = s["approx"]
    print(f"APPROXIMATE MODE {a['mode']}: dropped {a['dropped_experts']} of {a['routed_experts']} routed experts "
          f"({a['dropped_fraction']*100:.1f}%)")
if d.get("prefetch_issued", 0) or d.get("predicted_of", 0):
    demand_tok = (d["bytes_read"] - d["prefetch_bytes"]) / steps
    print(f"prefetch ({s.get('prefetch')}): {d['prefetch_issued']/steps:.1f} reads/token "
          f"({d['prefetch_bytes']/steps/2**20:.1f} MiB), {d['prefetch_used']/steps:.1f} used/token "
          f"({d['prefetch_late']/steps:.1f} late), {d['prefetch_cancelled']/steps:.1f} cancelled/token; "
          f"prediction accuracy {s['prediction_accuracy_decode']*100:.1f}%; demand reads {demand_tok/2**20:.1f} MiB/token")
print(f"FM_TOKS={1/t_tok:.4f}")
PY
fm_toks=$(grep -o 'FM_TOKS=[0-9.]*' "$out/fm_summary.txt" | cut -d= -f2)
else
fm_toks=${FM_TOKS:-1}
fi

if [[ -n ${LLAMA_CPP_DIR:-} ]]; then
    bench="$LLAMA_CPP_DIR/bin/llama-bench"
    dev=$(basename "$(df --output=source "$model" | tail -1)")
    ra_file=/sys/block/${dev%%[0-9]*}/queue/read_ahead_kb
    ra_old=$(cat "$ra_file" 2>/dev/null || echo "")
    if [[ -n ${READ_AHEAD_KB:-} && -n $ra_old ]]; then echo "$READ_AHEAD_KB" > "$ra_file"; fi
    echo "== llama.cpp (cgroup $limit, mmap, read_ahead_kb $(cat "$ra_file" 2>/dev/null), $threads threads, ${LLAMA_EXTRA:-})"
    set +e
    # shellcheck disable=SC2086
    in_cgroup "$bench" -m "$model" -t "$threads" -p 0 -n "$n_gen" -r 1 -o json ${LLAMA_EXTRA:-} > "$out/llama.json" 2> "$out/llama.err"
    rc=$?
    set -e
    if [[ -n $ra_old ]]; then echo "$ra_old" > "$ra_file"; fi
    cgroup_report "llama.cpp"
    if [[ $rc -ne 0 ]]; then
        echo "llama.cpp failed (exit $rc; 137 = killed by the cgroup's OOM killer): $(tail -2 "$out/llama.err")"
    else
        ll_toks=$(python3 -c "import json,sys; r=json.load(open('$out/llama.json')); print(r[0]['avg_ts'])")
        echo "llama.cpp decode $ll_toks tok/s"
        python3 -c "print(f'ratio flash-moe / llama.cpp: {$fm_toks/$ll_toks:.2f}x')"
    fi
fi
