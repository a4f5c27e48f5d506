#!/usr/bin/env bash
# A long prompt (the turn of a coding agent) on a big MoE file, in one command: llama.cpp and flash-moe with the
# model in RAM, then flash-moe inside a memory cgroup, with the bytes its prefill read against what the distinct
# experts it touched take to read once (flash-moe's prefill is expert-major: each chunk of the prompt reads each
# expert it needs once, overlapped with the previous chunk's compute).
#
#   bench/long_prompt.sh MODEL.gguf LLAMA_CPP_BUILD_DIR [N_TOKENS=4096] [LIMIT=8G] [THREADS=2]
#   env: FLASH_MOE=binary; FM_EXTRA extra flags for flash-moe run (both runs); SKIP_LLAMA=1, SKIP_RAM=1 leave
#        out those runs.
# Needs root (cgroup v1 memory controller at /sys/fs/cgroup/memory, drop_caches). The prompt is N_TOKENS - 1
# two-letter words, one token each in a `synth` vocabulary (the runs print the count).
set -euo pipefail
model=${1:?usage: bench/long_prompt.sh MODEL.gguf LLAMA_CPP_BUILD_DIR [N_TOKENS] [LIMIT] [THREADS]}
llama=${2:?llama.cpp build dir}
n=${3:-4096}
limit=${4:-8G}
threads=${5:-2}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
cg=/sys/fs/cgroup/memory/flash_moe_long_prompt
out=$(mktemp -d)
trap 'rmdir "$cg" 2>/dev/null || true; rm -rf "$out"' EXIT
awk -v n="$((n - 1))" 'BEGIN {
    srand(7); for (i = 0; i < n; i++) printf " %c%c", 97 + int(rand() * 26), 97 + int(rand() * 26)
}' > "$out/prompt.txt"

summary() {
    python3 - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
line = (f"{sys.argv[2]}: {s['prompt_tokens']} prompt tokens in {s['prompt_secs']:.1f} s = "
        f"{s['prompt_tokens'] / s['prompt_secs']:.1f} tok/s")
t = s.get("time_to_first_token") or {}
if t.get("prefill_bytes_expected"):
    line += (f"; {t['prefill_distinct_experts']} distinct experts touched, "
             f"{t['prefill_bytes_expected'] / 2**30:.2f} GiB to read them once, "
             f"{t['prefill_bytes_read'] / 2**30:.2f} GiB read")
rss = s.get("peak_rss_bytes")
if rss:
    line += f"; peak RSS {rss / 2**30:.2f} GiB"
print(line)
PY
}

touch "$out/llama.txt" "$out/ram.txt"
if [[ -z ${SKIP_LLAMA:-} ]]; then
    echo "== llama.cpp, in RAM (mmap), $threads threads"
    cat "$model" > /dev/null # llama.cpp maps the file: without this its prompt would read the file from disk
    "$llama/bin/llama-bench" -m "$model" -t "$threads" -p "$n" -n 0 -r 1 -o md | tee "$out/llama.txt"
fi

if [[ -z ${SKIP_RAM:-} ]]; then
    echo "== flash-moe, in RAM, $threads threads"
    "$fm" run -m "$model" -f "$out/prompt.txt" -n 1 -c "$((n + 16))" -t "$threads" --temp 0 -q --no-display-prompt \
        ${FM_EXTRA:-} --stats-json "$out/ram.json" > /dev/null
    summary "$out/ram.json" "flash-moe in RAM" | tee "$out/ram.txt"
fi

echo "== flash-moe, cgroup $limit, --memory-budget auto, $threads threads, page cache dropped"
sync; echo 3 > /proc/sys/vm/drop_caches
mkdir -p "$cg"
numfmt --from=iec "$limit" > "$cg/memory.limit_in_bytes"
echo 0 > "$cg/memory.max_usage_in_bytes"
echo 0 > "$cg/memory.failcnt"
bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$fm" run -m "$model" -f "$out/prompt.txt" -n 1 \
    -c "$((n + 16))" -t "$threads" --temp 0 -q --no-display-prompt --memory-budget auto ${FM_EXTRA:-} \
    --stats-json "$out/cg.json" > /dev/null
summary "$out/cg.json" "flash-moe in $limit" | tee "$out/cg.txt"
printf 'cgroup peak %.2f GiB, failcnt %s\n' "$(echo "$(cat $cg/memory.max_usage_in_bytes) / 1073741824" | bc -l)" \
    "$(cat $cg/memory.failcnt)"

echo "== summary"
grep "pp$n" "$out/llama.txt" | awk -F'|' '{print "llama.cpp in RAM: pp'"$n"'" $(NF-1) "tok/s"}'
cat "$out/ram.txt" "$out/cg.txt"
