#!/usr/bin/env python3
"""How much N sequences decoding together could share of their experts under a real routing trace, and the most
batching could then gain where a decode step costs the bytes it touches.

Takes a route trace (tests/fixtures/traces/*.route.csv: the layers' expert and dense bytes in `#` lines, then one
row per (turn, phase, step, layer, slot, expert)) and draws N distinct decode steps of it at random, standing in
for N users' current tokens; for each layer it counts the distinct experts the N tokens chose. A step then touches
the resident (dense) weights once and each distinct expert once, so against one sequence N sequences can gain at
most

    N * (dense + k * expert) / (dense + distinct(N) * expert)

Draws from one conversation's decode steps share more than independent users would (one text routes alike from
token to token), so the figures are an upper bound of sharing for that trace's model.

    tools/trace_sharing.py [TRACE.csv] [--counts 1,2,4,8] [--draws 400] [--extra-mib 0]

`--extra-mib`: resident bytes a step touches beyond the layers' dense weights (the output matrix, which the trace's
header does not count; about 244 MiB for Qwen3-30B-A3B's Q6_K output).
"""
import argparse
import collections
import csv
import random
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent.parent / "tests/fixtures/traces/qwen3-30b-a3b.route.csv"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", nargs="?", default=str(DEFAULT))
    p.add_argument("--counts", default="1,2,4,8")
    p.add_argument("--draws", type=int, default=400)
    p.add_argument("--extra-mib", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    expert_bytes, dense = {}, 0
    rows = []
    with open(a.trace) as f:
        for line in f:
            if line.startswith("# layer="):
                kv = dict(x.split("=") for x in line[2:].split())
                expert_bytes[int(kv["layer"])] = int(kv["expert_bytes"])
                dense += int(kv["dense_bytes"])
            elif not line.startswith("#"):
                rows.append(line)
    if not expert_bytes:
        sys.exit(f"{a.trace}: no '# layer=' lines with expert_bytes and dense_bytes")
    chosen = collections.defaultdict(set)  # (turn, step, layer) -> experts, decode phase
    for r in csv.DictReader(rows):
        if r["phase"] == "1":
            chosen[(r["turn"], int(r["step"]), int(r["layer"]))].add(int(r["expert"]))
    steps = sorted({(t, s) for t, s, _ in chosen})
    layers = sorted({l for _, _, l in chosen})
    if not steps:
        sys.exit(f"{a.trace}: no decode rows (phase 1)")
    k = max(len(v) for v in chosen.values())
    resident = dense + a.extra_mib * 2**20
    one = resident + sum(k * expert_bytes[l] for l in layers)
    rng = random.Random(a.seed)
    print(f"{a.trace}: {len(steps)} decode steps, {len(layers)} MoE layers, top-{k}; resident {resident / 2**20:.1f} MiB a step")
    print(f"{'N':>3} {'distinct experts a layer':>25} {'of':>4} {'shared':>7} {'MiB a step':>11} {'bytes ceiling':>14}")
    for n in (int(x) for x in a.counts.split(",")):
        if n > len(steps):
            print(f"{n:>3} more than the trace's {len(steps)} decode steps")
            continue
        distinct, touched = 0.0, 0.0
        for _ in range(a.draws):
            picks = rng.sample(steps, n)
            for l in layers:
                d = len(set().union(*(chosen[(t, s, l)] for t, s in picks)))
                distinct += d
                touched += d * expert_bytes[l]
        distinct /= a.draws * len(layers)
        step = resident + touched / a.draws
        print(f"{n:>3} {distinct:>25.2f} {n * k:>4} {n * k / distinct:>6.2f}x {step / 2**20:>11.1f} {n * one / step:>13.2f}x")


if __name__ == "__main__":
    main()
