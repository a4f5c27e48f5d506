#!/usr/bin/env python3
"""Print a GGUF file's architecture keys and its tensor table (name, ggml type, ne = ggml shape, contiguous
dimension first) with llama.cpp's gguf-py. A sanity check for the fixtures; tools/make_fixtures.py puts its
output into tests/fixtures/README.md.

  python tools/inspect_gguf.py FILE.gguf [FILE.gguf ...]
"""
import sys
from collections import Counter

from gguf import GGUFReader, GGUFValueType


def field_value(field):
    if field.types[0] == GGUFValueType.ARRAY:
        return f"[{len(field.data)} items]"
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return field.parts[field.data[0]].tolist()[0]


def inspect(path: str) -> None:
    r = GGUFReader(path)
    arch = field_value(r.fields["general.architecture"])
    print(f"{path.rsplit('/', 1)[-1]}: architecture {arch}, {len(r.tensors)} tensors")
    for name, field in r.fields.items():
        if name.startswith(f"{arch}.") or name in ("general.file_type", "tokenizer.ggml.pre",
                                                   "tokenizer.ggml.add_bos_token"):
            print(f"  {name} = {field_value(field)}")
    types = Counter(t.tensor_type.name for t in r.tensors)
    print("  tensor types: " + ", ".join(f"{k} x{v}" for k, v in sorted(types.items())))
    for t in r.tensors:
        ne = [int(x) for x in t.shape]
        print(f"  {t.name:32s} {t.tensor_type.name:6s} ne={ne}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        inspect(p)
