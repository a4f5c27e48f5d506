#!/usr/bin/env bash
# Warm start read before the first token (--warm-start-mode before) against reading it in the background while the
# prompt runs (--warm-start-mode background, the default) and a cold start, for a short
# and a long prompt, under a memory cgroup, page cache dropped before every run; the same hot file (saved by the cold
# run) for both warm runs; the disk's sequential bandwidth after each round.
#
#   bench/warm_background_bench.sh MODEL.gguf [LIMIT=8G] [ROUNDS=2] [THREADS=2] [N_GEN=48]
# Needs root (cgroup v1 memory controller, drop_caches). Wrap in `flock /tmp/flash-moe-bench.lock` on shared hosts.
set -euo pipefail
model=${1:?usage: bench/warm_background_bench.sh MODEL.gguf [LIMIT] [ROUNDS] [THREADS] [N_GEN]}
limit=${2:-8G}
rounds=${3:-2}
threads=${4:-2}
n_gen=${5:-48}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
cg=/sys/fs/cgroup/memory/flash_moe_warm_bg
out=$(mktemp -d)
trap 'rmdir "$cg" 2>/dev/null || true; rm -rf "$out"' EXIT
limit_bytes=$(numfmt --from=iec "${limit%B}")
in_cgroup() {
    sync; echo 3 > /proc/sys/vm/drop_caches
    mkdir -p "$cg"; echo "$limit_bytes" > "$cg/memory.limit_in_bytes"
    bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$@"
}
long="In the early morning the harbour was quiet. Fishing boats rocked gently at their moorings while gulls \
circled overhead, and an old man sat on the pier mending a net with slow, practised hands. He had worked these \
waters for fifty years and knew every current, every rock, every change in the weather that the sky could \
announce. Today the clouds were low and grey, and he thought about the storm his grandfather had told him about"
short="The harbour was quiet in the early morning."
run() { # name prompt extra-flags...
    local name=$1 p=$2; shift 2
    in_cgroup "$fm" run -m "$model" -p "$p" -n "$n_gen" --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 --ignore-eos \
        -t "$threads" --memory-budget auto --stats-json "$out/$name.json" "$@" 2> "$out/$name.err" > /dev/null
    python3 - "$out/$name.json" "$name" <<'PY'
import json, sys
j = json.load(open(sys.argv[1])); t = j["time_to_first_token"]; d = j["experts_decode"]; w = t["warm_start"]
bg = w.get("background", {})
print(f"{sys.argv[2]:16} {j['prompt_tokens']:4} prompt tokens: first token {t['total_secs']:6.2f} s (preload "
      f"{w['preload']['secs']:.2f} + prefill {t['prefill_secs']:.2f}), to token {j['generated_tokens']} "
      f"{t['total_secs'] + j['decode_secs']:6.2f} s; decode {j['decode_tok_s']:.2f} tok/s, "
      f"{d['bytes_read'] / 2**20 / max(1, j['decode_steps']):.1f} MiB/token; read in the background "
      f"{bg.get('read', 0)} of {bg.get('queued', 0)}")
PY
}
for round in $(seq "$rounds"); do
    for which in short long; do
        if [[ $which == short ]]; then p=$short; else p=$long; fi
        rm -f "$out/hot.json"
        run "cold-$which" "$p" --warm-start "$out/hot.json"
        cp "$out/hot.json" "$out/hot1.json"; cp "$out/hot.json" "$out/hot2.json"
        run "preload-$which" "$p" --warm-start "$out/hot1.json" --warm-start-mode before
        run "background-$which" "$p" --warm-start "$out/hot2.json" --warm-start-mode background
    done
    sync; echo 3 > /proc/sys/vm/drop_caches
    "$fm" diskbench "$model" --bytes 2GiB --chunk 16MiB --in-flight 8 --sequential | tail -1
done
