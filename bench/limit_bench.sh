#!/usr/bin/env bash
# Decode speed of a model larger than memory against its physical limit and against llama.cpp, in one command:
#
#   limit = max(in-RAM compute time per token, bytes read per token / disk bandwidth)
#
# - in-RAM compute time per token: flash-moe's decode time on copies of the model cut to 1 and to L layers (made by
#   `flash-moe synth --layers`, small enough to load whole), extrapolated linearly to the full layer count;
# - bytes read per token: from flash-moe's own run (--stats-json), excluding the first WARMUP decoded tokens (the
#   cache still fills and the pages of fresh cache memory are still being faulted in);
# - disk bandwidth: `flash-moe diskbench` (random direct reads of 2 MiB, 16 in flight) right before and right after
#   the run; the faster reading counts (the harder limit).
#
#   bench/limit_bench.sh MODEL.gguf BUDGET MODEL_1_LAYER.gguf MODEL_L_LAYERS.gguf [N_GEN=48] [THREADS=2]
#   env: LLAMA_CPP_DIR=llama.cpp build dir (bin/llama-bench) to run llama.cpp on the same file (mmap, no repack:
#        repacking copies every weight into RAM); N_LLAMA=8 tokens for it; FM_EXTRA="--prefetch router" extra flags
#        for flash-moe run; CGROUP_LIMIT=16G runs both inside a memory cgroup (default: none); WARMUP=8.
# Needs root (drop_caches; cgroup v1 when CGROUP_LIMIT is set).
set -euo pipefail
model=${1:?usage: bench/limit_bench.sh MODEL BUDGET MODEL_1_LAYER MODEL_L_LAYERS [N_GEN] [THREADS]}
budget=${2:?budget}
m1=${3:?model cut to 1 layer}
ml=${4:?model cut to L layers}
n_gen=${5:-48}
threads=${6:-2}
warmup=${WARMUP:-8}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fm=${FLASH_MOE:-$root/target/release/flash-moe}
[[ -x $fm ]] || (cd "$root" && cargo build --release -p flash-moe)
out=$(mktemp -d)
cg=/sys/fs/cgroup/memory/flash_moe_limit_bench
trap 'rmdir "$cg" 2>/dev/null || true; rm -rf "$out"' EXIT

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Runs a command after dropping the page cache, inside the cgroup when CGROUP_LIMIT is set.
fresh() {
    drop
    if [[ -n ${CGROUP_LIMIT:-} ]]; then
        mkdir -p "$cg"
        numfmt --from=iec "$CGROUP_LIMIT" > "$cg/memory.limit_in_bytes"
        echo 0 > "$cg/memory.max_usage_in_bytes"
        bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$@"
    else
        "$@"
    fi
}
layers() { "$fm" inspect "$1" | grep -o '^layers *[0-9]*' | grep -o '[0-9]*$' || "$fm" inspect "$1" | grep -o 'block_count = [0-9]*' | grep -o '[0-9]*$'; }
decode_secs_per_token() {
    "$fm" run -m "$1" -p "The quick brown fox" -n 32 --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 --ignore-eos \
        -t "$threads" --warm-start off 2>&1 | grep '^decode' | python3 -c '
import re, sys
m = re.search(r"(\d+) tokens in ([0-9.]+) s", sys.stdin.read()); print(float(m.group(2)) / int(m.group(1)))'
}

n_full=$(layers "$model"); n_l=$(layers "$ml")
echo "== in-RAM compute: $m1 (1 layer) and $ml ($n_l layers), extrapolated to $n_full layers"
t1=$(decode_secs_per_token "$m1"); tl=$(decode_secs_per_token "$ml")
t_compute=$(python3 -c "print($t1 + ($tl - $t1) * ($n_full - 1) / ($n_l - 1))")
python3 -c "print(f'1 layer {1/$t1:.2f} tok/s, $n_l layers {1/$tl:.2f} tok/s -> $n_full layers {$t_compute*1e3:.0f} ms/token ({1/$t_compute:.2f} tok/s) in RAM')"

disk() {
    drop
    "$fm" diskbench "$model" --bytes 2GiB --chunk 2MiB --in-flight 16 | tee -a "$out/disk.txt"
}
echo "== disk (before)"
disk

echo "== flash-moe (--memory-budget $budget, $threads threads${CGROUP_LIMIT:+, cgroup $CGROUP_LIMIT}, ${FM_EXTRA:-})"
# shellcheck disable=SC2086
fresh "$fm" run -m "$model" -p "The quick brown fox" -n "$n_gen" --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 \
    --ignore-eos -t "$threads" --warm-start off --memory-budget "$budget" ${FM_EXTRA:-} --stats-json "$out/fm.json" \
    2>&1 >/dev/null | grep -E '^(memory|decode|experts|prefetch)' || true
echo "== disk (after)"
disk
# The faster of the two readings: the limit it gives is the harder one to reach.
disk_gbs=$(grep -o '[0-9.]* GB/s' "$out/disk.txt" | cut -d' ' -f1 | sort -g | tail -1)
python3 - "$out/fm.json" "$disk_gbs" "$t_compute" "$warmup" <<'PY' | tee "$out/fm.txt"
import json, sys
s = json.load(open(sys.argv[1])); bw = float(sys.argv[2]) * 1e9; t_compute = float(sys.argv[3]); w = int(sys.argv[4])
steady = s["per_token"][w:]
t_tok = sum(x["secs"] for x in steady) / len(steady)
bytes_tok = sum(x["bytes_read"] for x in steady) / len(steady)
wait_tok = sum(x["wait_secs"] for x in steady) / len(steady)
t_disk = bytes_tok / bw
limit = max(t_compute, t_disk)
print(f"flash-moe decode {1/t_tok:.2f} tok/s over tokens {w+1}..{w+len(steady)} "
      f"({s['decode_steps']/s['decode_secs']:.2f} tok/s over all {s['decode_steps']}), "
      f"{bytes_tok/2**20:.0f} MiB read/token, waited {wait_tok*1e3:.0f} ms/token, peak RSS "
      f"{s['peak_rss_bytes']/2**30:.2f} GiB")
print(f"limit {1/limit:.2f} tok/s = 1 / max(compute {t_compute*1e3:.0f} ms, {bytes_tok/2**20:.0f} MiB / "
      f"{bw/1e9:.2f} GB/s = {t_disk*1e3:.0f} ms); flash-moe reaches {limit/t_tok*100:.0f}% of it")
print(f"FM_TOKS={1/t_tok:.4f}")
PY
fm_toks=$(grep -o 'FM_TOKS=[0-9.]*' "$out/fm.txt" | cut -d= -f2)

if [[ -n ${LLAMA_CPP_DIR:-} ]]; then
    echo "== llama.cpp (llama-bench, mmap, --repack 0, $threads threads, ${N_LLAMA:-8} tokens)"
    set +e
    fresh "$LLAMA_CPP_DIR/bin/llama-bench" -m "$model" -t "$threads" -p 0 -n "${N_LLAMA:-8}" -r 1 --repack 0 -o json \
        > "$out/llama.json" 2> "$out/llama.err"
    rc=$?
    set -e
    if [[ $rc -ne 0 ]]; then
        echo "llama.cpp failed (exit $rc): $(tail -2 "$out/llama.err")"
    else
        python3 -c "
import json; t = json.load(open('$out/llama.json'))[0]['avg_ts']
print(f'llama.cpp decode {t:.3f} tok/s; flash-moe / llama.cpp = {$fm_toks / t:.1f}x')"
    fi
fi
