#!/usr/bin/env python3
"""Multi-turn reuse, measured through the server: a conversation of N turns where each turn is asked twice, with
the conversation's kept state (cache_prompt on, the default) and without (cache_prompt off: a fresh run over the
whole conversation), interleaved. Prints per turn: the prompt's tokens, those computed (the rest came from the kept
state), the time to the first token both ways (the server's timings.prompt_ms: from admission to the first generated
token), the server's resident memory, and whether both replies are equal.

  bench/serve_multiturn.py URL [N_TURNS=20] [REPLY_TOKENS=32]     (a running `flash-moe serve`; stdlib only)
"""
import json
import sys
import urllib.request

url = sys.argv[1].rstrip("/")
n_turns = int(sys.argv[2]) if len(sys.argv) > 2 else 20
reply_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 32

TOPICS = ["parsing command-line arguments", "reading a CSV file", "a binary search", "retrying HTTP requests",
          "a least-recently-used cache", "walking a directory tree", "merging two sorted lists", "a token bucket",
          "formatting a table", "computing a checksum"]


def post(body):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=3600).read())


def metric(name):
    for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
        if line.startswith("flashmoe_" + name + " "):
            return float(line.split()[1])
    return 0.0


messages = [{"role": "system", "content": "You are a concise Python programmer."}]
print(f"{'turn':>4} {'prompt':>7} {'computed':>8} {'ttft reuse ms':>13} {'ttft fresh ms':>13} {'speedup':>7} "
      f"{'rss MiB':>8} {'equal':>5}")
rows = []
for t in range(n_turns):
    messages.append({"role": "user", "content": f"Turn {t + 1}: write a short Python function for "
                                                f"{TOPICS[t % len(TOPICS)]}, then explain it in one sentence."})
    base = {"messages": messages, "max_tokens": reply_tokens, "temperature": 0}
    reused = post({**base, "cache_prompt": True})
    fresh = post({**base, "cache_prompt": False})
    tr, tf = reused["timings"], fresh["timings"]
    equal = reused["choices"][0]["message"] == fresh["choices"][0]["message"]
    rss = metric("resident_bytes") / 2**20
    row = (t + 1, reused["usage"]["prompt_tokens"], tr["prompt_n"], tr["prompt_ms"], tf["prompt_ms"], rss, equal)
    rows.append(row)
    print(f"{row[0]:>4} {row[1]:>7} {row[2]:>8} {row[3]:>13.1f} {row[4]:>13.1f} {row[4] / max(row[3], 1e-9):>6.1f}x "
          f"{row[5]:>8.0f} {'yes' if equal else 'NO':>5}", flush=True)
    messages.append({"role": "assistant", "content": reused["choices"][0]["message"]["content"] or ""})
print(f"all replies equal to fresh runs: {all(r[6] for r in rows)}; last turn: {rows[-1][2]} of {rows[-1][1]} prompt "
      f"tokens computed, first token {rows[-1][3]:.0f} ms with reuse vs {rows[-1][4]:.0f} ms fresh")
