#!/usr/bin/env bash
# Warm start and routing profiles, streaming under a memory cgroup, page cache dropped before every run:
#   1. the disk's sequential and random direct-read bandwidth (flash-moe diskbench), in the same run;
#   2. time to first token cold (no hot file) and warm (the hot file the cold run saved), each split into load,
#      warm-start preload and prefill; warm is compared with hot bytes / sequential bandwidth + prefill;
#   3. decode speed and bytes read with --profile (made from other prompts than the one measured) at several
#      --pin-fraction values, and without, all cold.
#
#   bench/warm_bench.sh MODEL.gguf [LIMIT=8G] [THREADS=2] [N_GEN=48]
# Needs root (cgroup v1 memory controller, drop_caches). Wrap in `flock /tmp/flash-moe-bench.lock` on shared hosts.
set -euo pipefail
model=${1:?usage: bench/warm_bench.sh MODEL.gguf [LIMIT] [THREADS] [N_GEN]}
limit=${2:-8G}
threads=${3:-2}
n_gen=${4:-48}
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" # root, fm, drop
cg=/sys/fs/cgroup/memory/flash_moe_warm
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
limit_bytes=$(numfmt --from=iec "${limit%B}")

in_cgroup() {
    sync; echo 3 > /proc/sys/vm/drop_caches
    mkdir -p "$cg"
    echo "$limit_bytes" > "$cg/memory.limit_in_bytes"
    echo 0 > "$cg/memory.max_usage_in_bytes"
    echo 0 > "$cg/memory.failcnt"
    bash -c 'echo $$ > '"$cg"'/cgroup.procs; exec "$@"' _ "$@"
    printf '  cgroup peak %.2f GiB, failcnt %s\n' "$(echo "$(cat $cg/memory.max_usage_in_bytes) / 1073741824" | bc -l)" \
        "$(cat $cg/memory.failcnt)"
}

prompt="In the early morning the harbour was quiet. Fishing boats rocked gently at their moorings while gulls \
circled overhead, and an old man sat on the pier mending a net with slow, practised hands. He had worked these \
waters for fifty years and knew every current, every rock, every change in the weather that the sky could \
announce. Today the clouds were low and grey, and he thought about the storm his grandfather had told him about"
cat > "$out/profile_prompts.txt" <<'EOF'
Write a short poem about the autumn leaves falling in a city park.
Explain how a binary search tree keeps its keys in order and how lookups work.
def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)
The history of the Roman Empire spans many centuries, from the founding of the city to the fall of Constantinople.
What are the main differences between a virus and a bacterium, and how do antibiotics work?
Translate into French: the weather is nice today and we are going to the beach after lunch.
A recipe for bread: mix flour, water, salt and yeast, knead the dough for ten minutes, then let it rise.
SELECT name, count(*) FROM orders JOIN customers ON orders.customer_id = customers.id GROUP BY name;
EOF
hot="$out/model.hot.json"
short="The harbour was quiet in the early morning."
run() { # name, extra flags...
    local name=$1; shift
    echo "== $name"
    in_cgroup "$fm" run -m "$model" -p "${PROMPT:-$prompt}" -n "$n_gen" --temp 1 --top-k 0 --top-p 1 --min-p 0 --seed 1 \
        --ignore-eos -t "$threads" --memory-budget auto --stats-json "$out/$name.json" "$@" 2>&1 >/dev/null |
        grep -E '^(first token|prefill |decode |experts )' | sed 's/^/  /'
}

seqdisk() { # appends one sequential measurement to disk_seq.txt
    sync; echo 3 > /proc/sys/vm/drop_caches
    "$fm" diskbench "$model" --bytes 2GiB --chunk 16MiB --in-flight 8 --sequential | tee -a "$out/disk_seq.txt"
}
echo "== disk (page cache dropped)"
rm -f "$out/disk_seq.txt"
sync; echo 3 > /proc/sys/vm/drop_caches
"$fm" diskbench "$model" --bytes 2GiB --chunk 1MiB --in-flight 16 | tee "$out/disk_rand.txt"

# Cold then warm, for a short prompt (its experts fit the cache) and a long one; the sequential bandwidth is
# measured right before and after each warm run (the shared disk's speed drifts from minute to minute).
rm -f "$hot"
PROMPT=$short run cold_short --warm-start "$hot"
seqdisk; PROMPT=$short run warm_short --warm-start "$hot" --warm-start-mode before; seqdisk
rm -f "$hot"
run cold --warm-start "$hot"
seqdisk; run warm --warm-start "$hot" --warm-start-mode before; seqdisk
echo "== profile (other prompts)"
in_cgroup "$fm" profile -m "$model" --prompts "$out/profile_prompts.txt" -n 16 -t "$threads" --memory-budget auto \
    -o "$out/profile.json" 2>&1 | grep -E '^wrote' | sed 's/^/  /'
run noprofile --warm-start off
for pin in 0 0.1 0.25 0.5; do
    run "profile_pin$pin" --warm-start off --profile "$out/profile.json" --pin-fraction "$pin"
done

python3 - "$out" <<'PY'
import json, re, sys
d = sys.argv[1]
seq = [float(x) for x in re.findall(r'([0-9.]+) GB/s', open(f"{d}/disk_seq.txt").read())]
rnd = float(re.findall(r'([0-9.]+) GB/s', open(f"{d}/disk_rand.txt").read())[0])
names = ["cold_short", "warm_short", "cold", "warm", "noprofile"] + [f"profile_pin{p}" for p in ("0", "0.1", "0.25", "0.5")]
j = {n: json.load(open(f"{d}/{n}.json")) for n in names}
print(f"disk: sequential 16 MiB x 8 {' / '.join(f'{s:.2f}' for s in seq)} GB/s, random 1 MiB x 16 {rnd:.2f} GB/s")
for n in names[:4]:
    t = j[n]["time_to_first_token"]; p = t["warm_start"]["preload"]
    print(f"{n:10} first token {t['total_secs']:6.2f} s = load {t['load_secs']:.2f} + preload {p['secs']:.2f} "
          f"({p['n_experts']} experts, {p['bytes_read']/2**30:.2f} GiB in {p['n_reads']} reads, "
          f"{t['warm_start']['gb_per_s']:.2f} GB/s) + prefill {t['prefill_secs']:.2f} s ({j[n]['prompt_tokens']} tokens); "
          f"prefill touched {t['prefill_distinct_experts']} experts ({t['prefill_distinct_experts_cached_at_start']} "
          f"cached): expected {t['prefill_bytes_expected']/2**20:.1f} MiB, read {t['prefill_bytes_read']/2**20:.1f} MiB; "
          f"to token {j[n]['generated_tokens']}: {t['total_secs'] + j[n]['decode_secs']:.2f} s")
for i, (c, w) in enumerate([("cold_short", "warm_short"), ("cold", "warm")]):
    wt = j[w]["time_to_first_token"]; p = wt["warm_start"]["preload"]
    bw = (seq[2 * i] + seq[2 * i + 1]) / 2
    ideal = p["bytes_read"] / 1e9 / bw + wt["prefill_secs"]
    actual = p["secs"] + wt["prefill_secs"]
    ct = j[c]["time_to_first_token"]
    print(f"{w}: preload + prefill {actual:.2f} s vs hot bytes / sequential bandwidth ({bw:.2f} GB/s, around it) + "
          f"prefill = {ideal:.2f} s: {actual/ideal:.2f}x; first token warm/cold {wt['total_secs']/ct['total_secs']:.2f}x, "
          f"to the last token {(wt['total_secs']+j[w]['decode_secs'])/(ct['total_secs']+j[c]['decode_secs']):.2f}x")
for n in names:
    e = j[n]["experts_decode"]
    print(f"{n:17} decode {j[n]['decode_tok_s']:5.2f} tok/s, hit {100*e['hits']/max(1,e['hits']+e['misses']):.1f}%, "
          f"{e['bytes_read']/2**20/max(1,j[n]['decode_steps']):6.1f} MiB/token")
b = j["noprofile"]
for p in ("0", "0.1", "0.25", "0.5"):
    x = j[f"profile_pin{p}"]
    print(f"--profile --pin-fraction {p} / no profile: decode {x['decode_tok_s']/b['decode_tok_s']:.2f}x tok/s, "
          f"{x['experts_decode']['bytes_read']/max(1,b['experts_decode']['bytes_read']):.2f}x bytes read")
PY
