#!/usr/bin/env python3
"""Several users, measured through the server: runs of 1, 4 and 8 clients at once, interleaved (8 clients alone,
then in two groups of 4, then all 8, per cycle), each client streaming a completion of the same length from its own
prompt and seed (full-distribution sampling, so routing varies). For each run: the aggregate decode rate while every
client of the run is decoding (from the server's /metrics, sampled every 0.2 s), expert bytes read from disk per
generated token over that window, and the cache hit rate; at the end, whether each client's text was the same in
every run it took part in (alone, with 3 others, with 7 others).

  bench/serve_users.py URL [TOKENS=48] [CYCLES=2]     (a running `flash-moe serve --parallel 8`; stdlib only)
"""
import json
import statistics
import sys
import threading
import time
import urllib.request

url = sys.argv[1].rstrip("/")
n_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 48
n_cycles = int(sys.argv[3]) if len(sys.argv) > 3 else 2
PROMPTS = ["The history of", "In a small village", "def quicksort(items):", "The best way to learn",
           "Dear committee,", "SELECT name FROM", "Once upon a time", "The weather today is"]


def metrics():
    out = {}
    for line in urllib.request.urlopen(url + "/metrics", timeout=60).read().decode().splitlines():
        if line.startswith("flashmoe_") and " " in line and "{" not in line:
            k, v = line.split(" ", 1)
            out[k[len("flashmoe_"):]] = float(v)
    return out


def client(k, result):
    body = {"prompt": PROMPTS[k], "max_tokens": n_tokens, "stream": True, "temperature": 1.0, "top_k": 0,
            "top_p": 1.0, "min_p": 0.0, "seed": 1000 + k, "ignore_eos": True, "cache_prompt": False}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text, first = [], None
    with urllib.request.urlopen(req, timeout=7200) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            t = json.loads(line[6:])["choices"][0]["text"]
            if t and first is None:
                first = time.time()
            text.append(t)
    result[k] = ("".join(text), first, time.time())


def run(ids):
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.time(), metrics()))
            time.sleep(0.2)

    mon = threading.Thread(target=sample)
    mon.start()
    result = {}
    threads = [threading.Thread(target=client, args=(k, result)) for k in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    mon.join()
    t0 = max(result[k][1] for k in ids)  # every client is decoding from here
    t1 = min(result[k][2] for k in ids)  # until the first one ends
    inside = [(t, m) for t, m in samples if t0 <= t <= t1]
    if len(inside) < 2:  # a short window: take the samples around it
        inside = [s for s in samples if s[0] >= t0 - 0.5][:1] + [s for s in samples if s[0] <= t1 + 0.5][-1:]
    (ta, a), (tb, b) = inside[0], inside[-1]
    gen = b["generated_tokens_total"] - a["generated_tokens_total"]
    rate = gen / max(tb - ta, 1e-9)
    read = b.get("expert_bytes_read_total", 0) - a.get("expert_bytes_read_total", 0)
    hits = b.get("expert_cache_hits_total", 0) - a.get("expert_cache_hits_total", 0)
    misses = b.get("expert_cache_misses_total", 0) - a.get("expert_cache_misses_total", 0)
    batch = (b["forward_sequences_total"] - a["forward_sequences_total"]) / max(b["forward_steps_total"] - a["forward_steps_total"], 1)
    steps = max(b["forward_steps_total"] - a["forward_steps_total"], 1)
    wait = (b.get("expert_read_wait_seconds_total", 0) - a.get("expert_read_wait_seconds_total", 0)) / steps
    step_s = (b["forward_seconds_total"] - a["forward_seconds_total"]) / steps
    return {k: result[k][0] for k in ids}, rate, read / max(gen, 1), hits / max(hits + misses, 1), batch, tb - ta, wait, step_s


texts = {k: [] for k in range(8)}
rates = {1: [], 4: [], 8: []}
bytes_per_token = {1: [], 4: [], 8: []}
print(f"{'cycle':>5} {'clients':>7} {'agg tok/s':>9} {'MiB read/tok':>12} {'hit rate':>8} {'mean batch':>10} "
      f"{'step ms':>7} {'read wait ms/step':>17} {'window s':>8}", flush=True)
for c in range(n_cycles):
    schedule = [[0], [1], [2], [3], [0, 1, 2, 3], list(range(8)), [4], [5], [6], [7], [4, 5, 6, 7]]
    for ids in schedule:
        got, rate, bpt, hit, batch, window, wait, step_s = run(ids)
        for k, t in got.items():
            texts[k].append(t)
        rates[len(ids)].append(rate)
        bytes_per_token[len(ids)].append(bpt)
        print(f"{c + 1:>5} {len(ids):>7} {rate:>9.2f} {bpt / 2**20:>12.1f} {hit * 100:>7.1f}% {batch:>10.2f} "
              f"{step_s * 1e3:>7.0f} {wait * 1e3:>17.0f} {window:>8.1f}", flush=True)
one = statistics.mean(rates[1])
for n in (1, 4, 8):
    print(f"{n} client(s): aggregate decode {statistics.mean(rates[n]):.2f} tok/s ({statistics.mean(rates[n]) / one:.2f}x "
          f"one client), {statistics.mean(bytes_per_token[n]) / 2**20:.1f} MiB of experts read per generated token")
same = all(len(set(v)) == 1 for v in texts.values())
print(f"each client's text identical in every run (alone, with 3, with 7 others): {same}")
if not same:
    for k, v in texts.items():
        if len(set(v)) > 1:
            print(f"client {k} differs: {v!r}")
