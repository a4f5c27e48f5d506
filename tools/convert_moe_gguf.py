#!/usr/bin/env python3
"""Runs llama.cpp's own convert_hf_to_gguf.py on the model trained by tools/train_moe.py.

Its tokenizer is new, so the converter's table of known tokenizers (a hash of how a test string encodes, which
depends on the vocabulary) cannot name its pre-tokenizer. The tokenizer splits text with exactly Qwen2's regex
(tools/train_moe.py, QWEN2_SPLIT), which llama.cpp calls "qwen2"; this wrapper says so, as an entry added by
convert_hf_to_gguf_update.py would, and changes nothing else.

    python3 tools/convert_moe_gguf.py LLAMA_CPP_DIR MODEL_DIR --outtype f16 --outfile model-f16.gguf
"""

import sys
from pathlib import Path


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    llama = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(llama))
    sys.path.insert(1, str(llama / "gguf-py"))
    import convert_hf_to_gguf
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    sys.argv = [str(llama / "convert_hf_to_gguf.py")] + sys.argv[2:]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
