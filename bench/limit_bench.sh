#!/usr/bin/env bash
# Decode speed of a model larger than memory against its physical limit and against llama.cpp, in one command:
#
#   limit = max(in-RAM compute time per token, bytes read per token / disk bandwidth)
#
# - in-RAM compute time per token, either
#   `full`: the same model, the same prompt and seed (so the same tokens), run with every weight in RAM and no
#     cgroup (the machine must hold the file), over the same window of tokens; or
#   `M1.gguf ML.gguf`: flash-moe's decode time on copies of the model cut to 1 and to L layers (made by
#     `flash-moe synth --layers`, small enough to load whole), extrapolated linearly to the full layer count (for
#     a model the machine cannot hold; the cut files' per-layer speed is not quite the full model's);
# - bytes read per token: from flash-moe's own run (--stats-json), excluding the first WARMUP decoded tokens (the
#   cache still fills and the pages of fresh cache memory are still being faulted in);
# - disk bandwidth: `flash-moe diskbench` (random direct reads of 2 MiB, 16 in flight) right before and right after
#   the run; the faster reading counts (the harder limit).
# With ROUNDS > 1 the in-RAM and the streamed runs alternate (the machine's speed drifts between minutes); each round
# gives its own ratio and the median is reported.
#
#   bench/limit_bench.sh MODEL.gguf BUDGET {full | MODEL_1_LAYER.gguf MODEL_L_LAYERS.gguf} [N_GEN=48] [THREADS=2]
#   env: LLAMA_CPP_DIR=llama.cpp build dir (bin/llama-bench) to run llama.cpp on the same file (mmap, no repack:
#        repacking copies every weight into RAM); N_LLAMA=8 tokens for it; FM_EXTRA="--prefetch router" extra flags
#        for the streamed run; CGROUP_LIMIT=16G runs the streamed run and llama.cpp inside a memory cgroup (default:
#        none); WARMUP=8; ROUNDS=1.
# Needs root (drop_caches; cgroup v1 when CGROUP_LIMIT is set).
set -euo pipefail
usage="usage: bench/limit_bench.sh MODEL BUDGET {full | MODEL_1_LAYER MODEL_L_LAYERS} [N_GEN] [THREADS]"
model=${1:?$usage}
budget=${2:?$usage}
in_ram=${3:?$usage}
if [[ $in_ram == full ]]; then
    shift 3
else
    m1=$in_ram
    ml=${4:?$usage}
    shift 4
fi
n_gen=${1:-48}
threads=${2:-2}
warmup=${WARMUP:-8}
rounds=${ROUNDS:-1}
(( n_gen > warmup + 1 )) || { echo "N_GEN ($n_gen) must exceed WARMUP ($warmup) + 1" >&2; exit 2; }
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
out=$(mktemp -d)
cg=/sys/fs/cgroup/memory/flash_moe_limit_bench
trap 'rmdir "$cg" 2>/dev/null || true; rm -rf "$out"' EXIT

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
gen=(-p "The quick brown fox" --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 --ignore-eos -t "$threads"
    --warm-start off)
layers() { "$fm" inspect "$1" | grep -o '^layers *[0-9]*' | grep -o '[0-9]*$' || "$fm" inspect "$1" | grep -o 'block_count = [0-9]*' | grep -o '[0-9]*$'; }
# Mean seconds per decode step of a --stats-json file, over the steps after the first WARMUP.
steady_secs() {
    python3 -c '
import json, sys
st = json.load(open(sys.argv[1]))["per_token"][int(sys.argv[2]):]
print(sum(x["secs"] for x in st) / len(st))' "$1" "$2"
}
decode_secs_per_token() {
    "$fm" run -m "$1" "${gen[@]}" -n 32 --stats-json "$out/cut.json" >/dev/null 2>&1
    steady_secs "$out/cut.json" 0
}
# Sets t_compute: the in-RAM compute time per token.
in_ram_compute() {
    if [[ $in_ram == full ]]; then
        echo "== in-RAM compute: $model, every weight resident (no cgroup), tokens $((warmup + 1))..$((n_gen - 1))"
        drop
        "$fm" run -m "$model" "${gen[@]}" -n "$n_gen" --stats-json "$out/ram.json" 2>&1 >/dev/null |
            grep -E '^(memory|decode)' || true
        t_compute=$(steady_secs "$out/ram.json" "$warmup")
        python3 -c "print(f'in RAM {$t_compute*1e3:.0f} ms/token ({1/$t_compute:.2f} tok/s)')"
    else
        local n_full n_l t1 tl
        n_full=$(layers "$model"); n_l=$(layers "$ml")
        echo "== in-RAM compute: $m1 (1 layer) and $ml ($n_l layers), extrapolated to $n_full layers"
        t1=$(decode_secs_per_token "$m1"); tl=$(decode_secs_per_token "$ml")
        t_compute=$(python3 -c "print($t1 + ($tl - $t1) * ($n_full - 1) / ($n_l - 1))")
        python3 -c "print(f'1 layer {1/$t1:.2f} tok/s, $n_l layers {1/$tl:.2f} tok/s -> $n_full layers {$t_compute*1e3:.0f} ms/token ({1/$t_compute:.2f} tok/s) in RAM')"
    fi
}
disk() {
    drop
    "$fm" diskbench "$model" --bytes 2GiB --chunk 2MiB --in-flight 16 | tee -a "$out/disk$r.txt"
}

for r in $(seq "$rounds"); do
    echo "==== round $r of $rounds"
    in_ram_compute
    echo "== disk (before)"
    disk
    echo "== flash-moe (--memory-budget $budget, $threads threads${CGROUP_LIMIT:+, cgroup $CGROUP_LIMIT}, ${FM_EXTRA:-})"
    # shellcheck disable=SC2086
    fresh "$fm" run -m "$model" "${gen[@]}" -n "$n_gen" --memory-budget "$budget" ${FM_EXTRA:-} \
        --stats-json "$out/fm.json" 2>&1 >/dev/null | grep -E '^(memory|decode|experts|prefetch)' || true
    echo "== disk (after)"
    disk
    # The faster of the two readings: the limit it gives is the harder one to reach.
    disk_gbs=$(grep -o '[0-9.]* GB/s' "$out/disk$r.txt" | cut -d' ' -f1 | sort -g | tail -1)
    python3 - "$out/fm.json" "$disk_gbs" "$t_compute" "$warmup" <<'PY' | tee "$out/fm$r.txt"
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
print(f"FM_TOKS={1/t_tok:.4f} OF_LIMIT={limit/t_tok*100:.1f}")
PY
done
fm_toks=$(cat "$out"/fm*.txt | grep -o 'FM_TOKS=[0-9.]*' | cut -d= -f2 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
if (( rounds > 1 )); then
    echo "== summary: of the limit by round: $(cat "$out"/fm*.txt | grep -o 'OF_LIMIT=[0-9.]*' | cut -d= -f2 | tr '\n' ' ')"
    cat "$out"/fm*.txt | grep -o 'OF_LIMIT=[0-9.]*' | cut -d= -f2 | sort -g |
        awk '{a[NR]=$1} END {printf "median %.0f%% of the limit\n", a[int((NR+1)/2)]}'
fi

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
print(f'llama.cpp decode {t:.3f} tok/s; flash-moe (median round) / llama.cpp = {$fm_toks / t:.1f}x')"
    fi
fi
