#!/usr/bin/env python3
"""Reference outputs for the bundled tiny-py-moe, from references nobody here wrote: llama.cpp and transformers.

Writes assets/tiny-py-moe/reference.json with
  greedy:  for each committed GGUF and prompt, llama.cpp's greedy continuation: the text llama-completion --temp 0
           prints, and the token ids with each step's top-1/top-2 logit margin from tools/llama_logits.cpp (strict:
           1 thread, f32 KV cache, no flash attention; built here against LLAMA_CPP_DIR's libraries);
  heldout: held-out token windows (from the training run's heldout.json) and transformers' loss on them in f32:
           with the trained weights (HF directory, bf16 -> f32) and with each GGUF's weights dequantized by gguf-py.

    python3 tools/tiny_moe_reference.py --llama-cpp LLAMA_CPP_DIR --hf-dir TRAINED_MODEL_DIR --heldout heldout.json

LLAMA_CPP_DIR is a llama.cpp source tree with a build (build/bin/llama-completion) and gguf-py; TRAINED_MODEL_DIR
is tools/train_moe.py's `model/` output (not committed: 20 MB).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ASSETS = os.path.join(os.path.dirname(__file__), "..", "assets", "tiny-py-moe")
GGUFS = ["tiny-py-moe-Q8_0.gguf", "tiny-py-moe-Q4_K_M.gguf"]
PROMPTS = [
    "import os\n",
    "def parse_args(argv):\n",
    "class Config:\n    def __init__(self",
    "    for i in range(len(",
    "from typing import",
    "# Copyright",
    'if __name__ == "__main__":\n',
    "    def __repr__(self):\n        return",
]
N_PREDICT = 48


def greedy_llama_cpp(llama, gguf_path, prompt):
    exe = os.path.join(llama, "build", "bin", "llama-completion")
    cmd = [exe, "-m", gguf_path, "-p", prompt, "-n", str(N_PREDICT), "--temp", "0", "-no-cnv",
           "--no-display-prompt", "--simple-io", "-t", "2", "--no-warmup"]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8")
    # llama-completion ends its output with two newlines of its own.
    assert out.endswith("\n\n"), repr(out[-20:])
    return out[:-2]


def llama_logits_exe(llama):
    exe = os.path.join(tempfile.gettempdir(), "tiny_moe_llama_logits")
    src = os.path.join(os.path.dirname(__file__), "llama_logits.cpp")
    lib = os.path.join(llama, "build", "bin")
    subprocess.run(["g++", "-O2", "-std=c++17", src, f"-I{llama}/include", f"-I{llama}/ggml/include", f"-L{lib}",
                    f"-Wl,-rpath,{lib}", "-lllama", "-lggml", "-lggml-base", "-o", exe], check=True)
    return exe


def greedy_strict(exe, gguf_path, prompt):
    out = subprocess.run([exe, gguf_path, str(N_PREDICT), "-", "--text", prompt], capture_output=True, check=True)
    r = json.loads(out.stdout)
    return {"prompt_ids": r["prompt_ids"], "greedy_ids": r["greedy_ids"], "greedy_margins": r["greedy_margins"]}


def hf_loss(model, sequences):
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            x = torch.tensor([seq])
            logits = model(input_ids=x).logits.double()[0]
            lp = torch.log_softmax(logits[:-1], dim=-1)
            tgt = x[0, 1:]
            tot += float(-lp[torch.arange(len(tgt)), tgt].sum())
            cnt += len(tgt)
    return tot / cnt


def gguf_as_hf(llama, gguf_path, hf_dir, out_dir):
    """Writes the GGUF's weights, dequantized to f32 by gguf-py, as a per-expert safetensors HF directory."""
    sys.path.insert(0, os.path.join(llama, "gguf-py"))
    import gguf
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    r = gguf.GGUFReader(gguf_path)
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    per_layer = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate_inp": "mlp.gate",
    }
    sd = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if t.name in names:
            sd[names[t.name]] = torch.from_numpy(w.copy())
            continue
        _, layer, kind, _ = t.name.split(".")
        prefix = f"model.layers.{layer}."
        if kind in per_layer:
            sd[prefix + per_layer[kind] + ".weight"] = torch.from_numpy(w.copy())
        elif kind in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            proj = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}[kind]
            for e in range(w.shape[0]):
                sd[f"{prefix}mlp.experts.{e}.{proj}.weight"] = torch.from_numpy(w[e].copy())
        else:
            raise SystemExit(f"unexpected tensor {t.name}")
    os.makedirs(out_dir, exist_ok=True)
    save_file(sd, os.path.join(out_dir, "model.safetensors"))
    for f in ("config.json", "generation_config.json"):
        with open(os.path.join(hf_dir, f)) as src, open(os.path.join(out_dir, f), "w") as dst:
            dst.write(src.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--n-windows", type=int, default=4)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    ref = {"n_predict": N_PREDICT, "greedy": [], "heldout": {}}
    exe = llama_logits_exe(args.llama_cpp)
    for g in GGUFS:
        for p in PROMPTS:
            text = greedy_llama_cpp(args.llama_cpp, os.path.join(ASSETS, g), p)
            ref["greedy"].append({"model": g, "prompt": p, "llama_cpp": text,
                                  **greedy_strict(exe, os.path.join(ASSETS, g), p)})
            print(f"{g} {p!r} -> {text[:60]!r}")

    held = json.load(open(args.heldout))
    seqs = held["sequences"][: args.n_windows]
    ref["heldout"]["sequences"] = seqs
    m = AutoModelForCausalLM.from_pretrained(args.hf_dir, torch_dtype=torch.float32).eval()
    ref["heldout"]["transformers_f32_trained"] = hf_loss(m, seqs)
    print("transformers f32 (trained weights):", ref["heldout"]["transformers_f32_trained"])
    for g in GGUFS:
        with tempfile.TemporaryDirectory() as d:
            gguf_as_hf(args.llama_cpp, os.path.join(ASSETS, g), args.hf_dir, d)
            m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
            ref["heldout"][f"transformers_f32_{g}"] = hf_loss(m, seqs)
            print(f"transformers f32 ({g} dequantized):", ref["heldout"][f"transformers_f32_{g}"])
    with open(os.path.join(ASSETS, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1)


if __name__ == "__main__":
    main()
