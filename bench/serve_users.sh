#!/usr/bin/env bash
# Several users on a model larger than memory: `flash-moe serve` inside a memory cgroup, driven by
# bench/serve_users.py (runs of 1, 4 and 8 concurrent clients, interleaved; aggregate decode rate, expert bytes read
# per generated token, each client's text the same alone and together).
#
#   bench/serve_users.sh MODEL.gguf [LIMIT=8G] [TOKENS=48] [CYCLES=2] [THREADS=2]
#   e.g. flash-moe synth --shape qwen3-30b-a3b --quant q4_k_m -o /work/models/q30.gguf; bench/serve_users.sh /work/models/q30.gguf
# Needs root (cgroup v1 memory controller at /sys/fs/cgroup/memory, drop_caches). The budget is 'auto': the cgroup
# limit less headroom, split by `serve` between the sequences' states and the model.
set -euo pipefail
model=${1:?usage: bench/serve_users.sh MODEL.gguf [LIMIT] [TOKENS] [CYCLES] [THREADS]}
limit=${2:-8G}
tokens=${3:-48}
cycles=${4:-2}
threads=${5:-2}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
cg=/sys/fs/cgroup/memory/flash_moe_serve_bench
out=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rmdir "$cg" 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT
limit_bytes=$(numfmt --from=iec "${limit%B}")

echo "== disk"
sync; echo 3 > /proc/sys/vm/drop_caches
"$fm" diskbench "$model" --bytes 2GiB --chunk 1MiB --in-flight 16

echo "== flash-moe serve (cgroup $limit, --memory-budget auto, $threads threads, 8 sequences of 128 tokens)"
sync; echo 3 > /proc/sys/vm/drop_caches
mkdir -p "$cg"
echo "$limit_bytes" > "$cg/memory.limit_in_bytes"
echo 0 > "$cg/memory.max_usage_in_bytes"
echo 0 > "$cg/memory.failcnt"
bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$fm" serve -m "$model" --memory-budget auto -c 128 \
    --parallel 8 --cache-prompts 0 -t "$threads" --port 0 --warm-start off --no-log 2> "$out/server.log" &
server_pid=$!
for _ in $(seq 600); do
    grep -q "listening on" "$out/server.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log"; exit 1; }
    sleep 0.5
done
cat "$out/server.log"
url=$(grep -o 'http://[0-9.:]*' "$out/server.log" | head -1)
python3 "$root/bench/serve_users.py" "$url" "$tokens" "$cycles"
printf 'cgroup peak %.2f GiB (limit %.2f GiB), failcnt %s\n' \
    "$(echo "$(cat $cg/memory.max_usage_in_bytes) / 1073741824" | bc -l)" \
    "$(echo "$limit_bytes / 1073741824" | bc -l)" "$(cat $cg/memory.failcnt)"
