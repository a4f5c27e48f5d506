#!/usr/bin/env python3
"""Compares tensors dumped by dump_tensors (llama.cpp, DUMP_DIR) with flash-moe's FLASH_MOE_GGML_DUMP files.
usage: compare.py LLAMA_DIR FLASH_DIR [STEPS [OFFSET]]   (llama step s<i> is flash-moe call s<i> of the same run)"""
import sys, os, array, struct
ld, fd = sys.argv[1], sys.argv[2]
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
off = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # flash-moe call number of llama step s0
idx = [l.split() for l in open(os.path.join(ld, 'index.txt'))]
# last entry with a name per step wins (Qcur/Kcur: the ROPE result follows the MUL_MAT one)
by = {}
for path, op, *ne in idx:
    base = os.path.basename(path)[:-4]
    step, _, name = base.split('_', 2)
    by[(step, name)] = (path, op)
n_tot = n_eq = 0
first = None
for s in range(steps):
    for (step, name), (path, op) in sorted(by.items(), key=lambda kv: kv[1][0]):
        if step != f's{s}':
            continue
        f = os.path.join(fd, f's{s + off}_{name}.f32')
        if not os.path.exists(f):
            continue
        ra = open(path, 'rb').read(); rb = open(f, 'rb').read()
        n_tot += 1
        if len(ra) != len(rb):
            print('SIZE', step, name, len(ra), len(rb)); continue
        if ra == rb:
            n_eq += 1
        else:
            a = array.array('f', ra); b = array.array('f', rb)
            diffs = [(abs(x - y) if x == x and y == y else float('inf'), i) for i, (x, y) in enumerate(zip(a, b)) if x != y]
            # -0.0 vs 0.0 compare equal as floats but differ in bits
            dmax, i = max(diffs) if diffs else (0.0, 0)
            print(f'DIFF {step} {name} ({op}): {len(diffs)}/{len(a)} differ in value (bits differ), max |d| {dmax:.3g} at {i} ({a[i]!r} vs {b[i]!r})')
            if first is None: first = (step, name)
print(f'{n_eq}/{n_tot} tensors bit-identical; first differing: {first}')
