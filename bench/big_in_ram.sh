#!/usr/bin/env bash
# A big MoE file held in RAM, flash-moe against llama.cpp in one command: prompt (64 and 512 tokens) and decode
# tok/s from both benchmarks with the bytes of weights a decode step reads against the memory bandwidth measured in
# the same run, and `flash-moe run`'s own wall-clock decode (what a user's command pays, not only the
# bench loop). The two engines cannot hold a 17 GB file at once on a 24 GB machine, so they run one after the other,
# each from a dropped page cache (read into it again first for llama.cpp, which maps the file), ROUNDS times
# alternating, and the best round of each counts.
#
#   bench/big_in_ram.sh MODEL.gguf LLAMA_CPP_BUILD_DIR [THREADS=2] [ROUNDS=2]
#   env: FLASH_MOE=binary; NG=32 decoded tokens in the benchmarks; N_RUN=64 tokens for `run`.
# Needs root (drop_caches).
set -euo pipefail
model=${1:?usage: bench/big_in_ram.sh MODEL.gguf LLAMA_CPP_BUILD_DIR [THREADS] [ROUNDS]}
llama=${2:?llama.cpp build dir}
threads=${3:-2}
rounds=${4:-2}
ng=${NG:-32}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# tok/s of a flash-moe bench line (`flash-moe  pp512  1234.5 tok/s ...`) or a llama-bench markdown row.
fm_ts() { awk -v t="$1" '$1 == "flash-moe" && $2 == t { print $3 }'; }
ll_ts() { awk -F'|' -v t="$1" '$0 ~ "\\| *" t " *\\|" { split($(NF - 1), a, " "); print a[1] }'; }

for r in $(seq "$rounds"); do
    echo "== round $r: flash-moe bench, in RAM, $threads threads"
    drop
    "$fm" bench -m "$model" -t "$threads" -p 512 -n "$ng" -r 1 -q | tee -a "$out/fm.txt"
    "$fm" bench -m "$model" -t "$threads" -p 64 -n 0 -r 1 -q --bandwidth-mib 0 | tee -a "$out/fm.txt"
    echo "== round $r: llama-bench, in RAM (mmap), $threads threads"
    drop
    cat "$model" > /dev/null # llama.cpp maps the file: without this its first test reads it from disk
    "$llama/bin/llama-bench" -m "$model" -t "$threads" -p 64,512 -n "$ng" -r 2 -o md | tee -a "$out/ll.txt"
done
echo "== flash-moe run, in RAM, $threads threads: ${N_RUN:-64} tokens, wall clock"
drop
/usr/bin/time -f "run: wall %e s, peak RSS %M KiB" "$fm" run -m "$model" -t "$threads" -p "def main():" \
    -n "${N_RUN:-64}" --temp 0 -q --ignore-eos --stats-json "$out/run.json" > /dev/null 2> "$out/time.txt" || {
    cat "$out/time.txt"
    exit 1
}
tail -1 "$out/time.txt"
python3 - "$out/run.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"run: prompt {s['prompt_tokens']} tokens, decode {s['decode_steps']} tokens in {s['decode_secs']:.2f} s "
      f"= {s['decode_tok_s']:.2f} tok/s")
PY
run_tg=$(python3 -c "import json; print(json.load(open('$out/run.json'))['decode_tok_s'])")
best() { sort -g | tail -1; }
echo "== summary (best rounds; flash-moe / llama.cpp)"
grep -E '^(memory read|decode reads)' "$out/fm.txt" || true
for t in pp64 pp512 "tg$ng"; do
    f=$(fm_ts "$t" < "$out/fm.txt" | best)
    l=$(ll_ts "$t" < "$out/ll.txt" | best)
    printf '%-6s flash-moe %8.2f  llama.cpp %8.2f  ratio %.2fx\n' "$t" "$f" "$l" "$(echo "$f / $l" | bc -l)"
done
l=$(ll_ts "tg$ng" < "$out/ll.txt" | best)
printf 'run    flash-moe %8.2f  llama.cpp %8.2f  ratio %.2fx (run'"'"'s own decode clock against llama-bench)\n' \
    "$run_tg" "$l" "$(echo "$run_tg / $l" | bc -l)"
