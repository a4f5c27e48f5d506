#!/usr/bin/env python3
"""Make flash-moe's MLX fixtures (tests/fixtures/mlx/NAME/) with mlx-lm's own converter and forward pass.

Each fixture is the tiny transformers model of tests/fixtures/SOURCE/ converted by `mlx_lm.convert` (what
`python -m mlx_lm convert --hf-path SRC --mlx-path OUT -q --q-bits B --q-group-size G [--dtype D]
[--quant-predicate RECIPE]` runs), so its files are what mlx-community publishes:
  config.json, model.safetensors (or model-0000K-of-0000N.safetensors + model.safetensors.index.json),
  tokenizer.json
and mlx-lm's logits on those files, for the prompt of tests/fixtures/SOURCE/reference.json:
  logits.mlx.npy           float32 [n_prompt, n_vocab]  mlx-lm's forward pass in the file's own dtype (what a
                                                        user of mlx-lm gets: bf16/f16 activations for such files)
  logits.mlx.greedy.npy    float32 [N_GREEDY, n_vocab]  row i = the logits greedy token i was picked from (KV cache)
  logits.mlx.f32.npy, logits.mlx.f32.greedy.npy         the same with every float parameter (scales and biases
                                                        included) widened to float32 first (exact), so mlx-lm
                                                        computes in f32 on exactly the file's quantized weights
  reference.json           prompt ids, greedy ids, versions, the conversion arguments, tensor summary

A trap of mlx-lm's converter, handled here: mlx-lm 0.32 reads rope_theta, partial_rotary_factor and num_experts from the
top level of config.json, where transformers 5 writes rope_parameters / num_local_experts; the source config is
copied with those keys added at the top level before converting (the copy then travels into the MLX config.json,
as in real mlx-community files, which carry them at the top level).

Qwen3.5-MoE (`qwen35moe-h64`, a text-only `Qwen3_5MoeForCausalLM`): mlx-lm has no `qwen3_5_moe_text` model, only
`qwen3_5_moe`, which reads the released checkpoints (`Qwen3_5MoeForConditionalGeneration`). The source is
rewritten into that layout first (`as_released_qwen35`): config.json nests the text model under `text_config`
(model_type `qwen3_5_moe`), tensors move under `model.language_model.`, each layer's experts are fused into
`experts.gate_up_proj [E, 2 * I, H]` (gate rows first) and `experts.down_proj [E, H, I]`, and one `mtp.*` and one
`model.visual.*` tensor stand in for the multi-token-prediction head and the vision tower. mlx-lm's `sanitize`
then writes what mlx-community publishes: `language_model.model.*` and `language_model.lm_head`, experts split
and stacked under `switch_mlp`, conv1d weights as `[C, K, 1]`, the zero-centred norms (all but the DeltaNet's
gated norm) as `1 + w`, no mtp or vision tensors, the router and shared-expert gate at 8 bits in groups of 64.

How to run (a minute on 2 cores; needs no torch):
  python3 -m venv /tmp/mlx-venv && /tmp/mlx-venv/bin/pip install "mlx[cpu]" mlx-lm
  /tmp/mlx-venv/bin/python tools/make_mlx_fixtures.py [NAME ...]      # default: every fixture below
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
import mlx_lm.convert  # noqa: F401  (the module, not the function mlx_lm re-exports)
mlx_convert = sys.modules["mlx_lm.convert"]
from mlx_lm import utils as mlx_utils

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
OUT = FIXTURES / "mlx"
N_GREEDY = 16

# name: (source fixture, bits, group size, dtype or None (the source's), mixed recipe or None, shard bytes or None)
SPECS = {
    "qwen3moe-h64-4bit-g32": ("qwen3moe-h64", 4, 32, "bfloat16", None, None),
    "qwen3moe-h64-8bit-g32-f32": ("qwen3moe-h64", 8, 32, "float32", None, None),
    "qwen3moe-h64-mixed_3_6-g32": ("qwen3moe-h64", None, 32, "bfloat16", "mixed_3_6", None),
    "qwen3moe-h64-4bit-g32-sharded": ("qwen3moe-h64", 4, 32, "bfloat16", None, 60_000),
    "qwen3moe-h256-4bit-g64": ("qwen3moe-h256", 4, 64, None, None, None),
    "qwen3moe-h256-mixed_4_6-g128-f16": ("qwen3moe-h256", None, 128, "float16", "mixed_4_6", None),
    "mixtral-h64-4bit-g32": ("mixtral-h64", 4, 32, "bfloat16", None, None),
    "qwen3next-h64-4bit-g32": ("qwen3next-h64", 4, 32, "bfloat16", None, None),
    "qwen35moe-h64-4bit-g32": ("qwen35moe-h64", 4, 32, "bfloat16", None, None),
}


def patched_source(src: Path, tmp: Path) -> Path:
    """A copy of the source fixture whose config.json carries mlx-lm's top-level keys (Qwen3.5: in the released
    checkpoints' layout, whose config mlx-lm reads as it is)."""
    dst = tmp / "src"
    dst.mkdir()
    for name in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    cfg = json.loads((src / "config.json").read_text())
    if cfg.get("model_type") == "qwen3_5_moe_text":
        cfg = as_released_qwen35(dst, cfg)
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
        return dst
    for k, v in cfg.get("rope_parameters", {}).items():
        if k in ("rope_theta", "partial_rotary_factor"):
            cfg.setdefault(k, v)
    if "num_local_experts" in cfg and cfg.get("model_type") != "mixtral":
        cfg.setdefault("num_experts", cfg["num_local_experts"])
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def as_released_qwen35(dst: Path, text_cfg: dict) -> dict:
    """Rewrites dst/model.safetensors of a text-only Qwen3.5-MoE into the released checkpoints' layout (module
    docs) and returns their config.json."""
    w = mx.load(str(dst / "model.safetensors"))
    n_layer, n_expert = text_cfg["num_hidden_layers"], text_cfg["num_experts"]
    out = {}
    for k, v in w.items():
        if ".mlp.experts." in k:
            continue
        out["model.language_model." + k[len("model."):] if k.startswith("model.") else k] = v
    for l in range(n_layer):
        pre = f"model.layers.{l}.mlp.experts"
        gate = [w[f"{pre}.{e}.gate_proj.weight"] for e in range(n_expert)]
        up = [w[f"{pre}.{e}.up_proj.weight"] for e in range(n_expert)]
        down = [w[f"{pre}.{e}.down_proj.weight"] for e in range(n_expert)]
        dst_pre = f"model.language_model.layers.{l}.mlp.experts"
        out[f"{dst_pre}.gate_up_proj"] = mx.stack([mx.concatenate([g, u], axis=0) for g, u in zip(gate, up)])
        out[f"{dst_pre}.down_proj"] = mx.stack(down)
    h = text_cfg["hidden_size"]
    out["mtp.fc.weight"] = mx.zeros((h, 2 * h))
    out["model.visual.patch_embed.proj.weight"] = mx.zeros((h, 3, 2, 2, 2))
    mx.save_safetensors(str(dst / "model.safetensors"), out, metadata={"format": "pt"})
    text = {k: v for k, v in text_cfg.items() if k not in ("architectures", "transformers_version", "dtype")}
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "tie_word_embeddings": text_cfg.get("tie_word_embeddings", False),
        "dtype": text_cfg.get("dtype", "float32"),
        "transformers_version": text_cfg.get("transformers_version"),
    }


def logits_of(model, ids: list[int]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Prompt logits at every position, and N_GREEDY greedy steps with mlx-lm's KV cache."""
    from mlx_lm.models.cache import make_prompt_cache

    prompt = np.array(model(mx.array([ids])).astype(mx.float32)[0])
    cache = make_prompt_cache(model)
    out = model(mx.array([ids]), cache=cache)
    rows, greedy = [], []
    last = out[0, -1]
    for _ in range(N_GREEDY):
        row = np.array(last.astype(mx.float32))
        rows.append(row)
        tok = int(np.argmax(row))
        greedy.append(tok)
        last = model(mx.array([[tok]]), cache=cache)[0, -1]
    return prompt, np.stack(rows), greedy


def make(name: str) -> None:
    source, bits, group, dtype, recipe, shard_bytes = SPECS[name]
    src = FIXTURES / source
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    ids = json.loads((src / "reference.json").read_text())["prompt_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf = patched_source(src, tmp)
        conv = tmp / "mlx"
        saved_make_shards = mlx_utils.make_shards
        if shard_bytes:
            # mlx-lm shards at whole gigabytes; a tiny model needs a byte limit to get several shards.
            def small_shards(weights, max_file_size_gb=0):
                shards, size = [], 0
                for k, v in weights.items():
                    if not shards or size + v.nbytes > shard_bytes:
                        shards.append({})
                        size = 0
                    shards[-1][k] = v
                    size += v.nbytes
                return shards

            mlx_utils.make_shards = small_shards
        try:
            mlx_convert.convert(
                str(hf),
                str(conv),
                quantize=True,
                q_group_size=group,
                q_bits=bits,
                dtype=dtype,
                quant_predicate=recipe,
            )
        finally:
            mlx_utils.make_shards = saved_make_shards
        out.mkdir(parents=True)
        for f in sorted(conv.iterdir()):
            if f.name == "config.json" or f.name == "tokenizer.json" or f.suffix == ".safetensors" or f.name.endswith(
                ".index.json"
            ):
                shutil.copy(f, out / f.name)
    model, _ = mlx_lm.load(str(out))
    prompt, greedy_rows, greedy = logits_of(model, ids)
    np.save(out / "logits.mlx.npy", prompt.astype(np.float32))
    np.save(out / "logits.mlx.greedy.npy", greedy_rows.astype(np.float32))
    model.set_dtype(mx.float32)
    prompt32, greedy_rows32, greedy32 = logits_of(model, ids)
    np.save(out / "logits.mlx.f32.npy", prompt32.astype(np.float32))
    np.save(out / "logits.mlx.f32.greedy.npy", greedy_rows32.astype(np.float32))
    cfg = json.loads((out / "config.json").read_text())
    weights = {}
    for f in sorted(out.glob("*.safetensors")):
        weights.update(mx.load(str(f)))
    kinds = {}
    for k, v in weights.items():
        kinds[str(v.dtype)] = kinds.get(str(v.dtype), 0) + 1
    ref = {
        "source": f"tests/fixtures/{source}",
        "convert": {"bits": bits, "group_size": group, "dtype": dtype, "quant_predicate": recipe,
                    "shard_bytes": shard_bytes},
        "quantization": cfg.get("quantization"),
        "prompt_ids": ids,
        "n_greedy": N_GREEDY,
        "greedy_ids": greedy,
        "greedy_ids_f32": greedy32,
        "versions": {"mlx": mx.__version__, "mlx_lm": mlx_lm.__version__},
        "tensor_dtypes": kinds,
        "n_tensors": len(weights),
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {len(weights)} tensors, {size} bytes, greedy {greedy}")


def main() -> None:
    names = sys.argv[1:] or list(SPECS)
    for name in names:
        make(name)


if __name__ == "__main__":
    main()
