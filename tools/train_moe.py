#!/usr/bin/env python3
"""Trains flash-moe's bundled small MoE: a Qwen3-MoE (transformers' Qwen3MoeForCausalLM, load-balancing loss on)
and its byte-level BPE tokenizer, on the Python source of the packages installed on the training machine.

Runs on one NVIDIA GPU in about ten minutes (`--train-seconds`), offline. Everything it writes goes to `--out`:
  model/                  config.json, model-*.safetensors (bf16, shards <= 15 MB), tokenizer files
  training_log.txt        hyper-parameters, loss every `--log-every` steps, held-out loss, samples
  corpus_manifest.json    what the corpus held: files and bytes per installed distribution, with its license
  heldout.json            held-out token sequences (and the text they come from), for checks against flash-moe

The corpus is every `*.py` file under the interpreter's stdlib and site-packages, sorted by path; a file goes to the
held-out set when the SHA-1 of its path (relative to its root) is 0 mod 100, so the split is the same on any machine
with the same packages. The tokenizer uses Qwen2's pre-tokenizer regex (byte-level), which llama.cpp knows as "qwen2".

    python3 tools/train_moe.py --out /tmp/moe --train-seconds 420
"""

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import random
import sys
import sysconfig
import time

import numpy as np
import torch

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS = "<|endoftext|>"


def log(f, *args):
    line = " ".join(str(a) for a in args)
    print(line, flush=True)
    f.write(line + "\n")
    f.flush()


def source_roots():
    roots = [sysconfig.get_paths()["stdlib"]]
    for p in sys.path:
        if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p):
            roots.append(p)
    out = []
    for r in roots:
        r = os.path.realpath(r)
        if r not in out:
            out.append(r)
    return out


def license_of(dist):
    md = dist.metadata
    lic = md.get("License-Expression") or ""
    if not lic:
        classifiers = [c.split("::")[-1].strip() for c in md.get_all("Classifier") or [] if c.startswith("License ::")]
        lic = "; ".join(classifiers)
    if not lic:
        lic = (md.get("License") or "").strip().splitlines()[0:1]
        lic = lic[0][:80] if lic else "unknown"
    return lic


def collect(max_file_bytes):
    """Every .py file: (root, relpath, abspath), sorted; plus a map abspath -> distribution name."""
    files = []
    for root in source_roots():
        for d, dirs, names in os.walk(root):
            dirs.sort()
            if d != root and os.path.basename(d) in ("site-packages", "dist-packages"):
                dirs[:] = []  # packages below the stdlib: walked as their own root when on sys.path
                continue
            for n in sorted(names):
                if n.endswith(".py"):
                    p = os.path.join(d, n)
                    try:
                        if 0 < os.path.getsize(p) <= max_file_bytes:
                            files.append((root, os.path.relpath(p, root), p))
                    except OSError:
                        pass
    owner = {}
    licenses = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name") or "?"
        licenses[name] = license_of(dist)
        for f in dist.files or []:
            if str(f).endswith(".py"):
                owner[os.path.realpath(dist.locate_file(f))] = name
    return files, owner, licenses


def read(p):
    try:
        with open(p, "rb") as fh:
            return fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def is_heldout(relpath):
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 100 == 0


def train_tokenizer(texts, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def encode_all(tok, texts, eos_id, max_tokens, deadline):
    """Encodes texts in order until `max_tokens` or `deadline`: (tokens, characters encoded)."""
    chunks, n, chars = [], 0, 0
    for i in range(0, len(texts), 512):
        if n >= max_tokens or time.time() > deadline:
            break
        chars += sum(len(t) for t in texts[i : i + 512])
        for enc in tok.encode_batch(texts[i : i + 512]):
            ids = enc.ids
            ids.append(eos_id)
            chunks.append(np.asarray(ids, dtype=np.uint16))
            n += len(ids)
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.uint16)), chars


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-seconds", type=float, default=420)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--expert-ffn", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--aux-coef", type=float, default=0.001, help="router load-balancing loss weight (Qwen3-MoE's default)")
    ap.add_argument("--tokenizer-mb", type=float, default=120, help="MB of training text to train the tokenizer on")
    ap.add_argument("--max-tokens", type=float, default=400e6, help="tokens of training text to encode at most")
    ap.add_argument("--max-file-kb", type=int, default=512, help="skip larger (mostly generated) files")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true", help="smoke test without a GPU")
    args = ap.parse_args()

    t_start = time.time()
    os.makedirs(os.path.join(args.out, "model"), exist_ok=True)
    logf = open(os.path.join(args.out, "training_log.txt"), "w")
    log(logf, "args", json.dumps(vars(args)))
    log(logf, "python", sys.version.split()[0], "torch", torch.__version__)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = "cpu" if args.cpu else "cuda"
    if not args.cpu:
        log(logf, "gpu", torch.cuda.get_device_name(0))

    # --- corpus -------------------------------------------------------------------------------------------------
    files, owner, licenses = collect(args.max_file_kb * 1024)
    train_texts, held_texts, per_dist = [], [], {}
    for root, rel, p in files:
        text = read(p)
        if text is None or not text.strip():
            continue
        (held_texts if is_heldout(rel) else train_texts).append(text)
        dist = owner.get(os.path.realpath(p), "python-stdlib" if root == source_roots()[0] else "unowned")
        e = per_dist.setdefault(dist, {"files": 0, "bytes": 0, "license": licenses.get(dist, "PSF-2.0" if dist == "python-stdlib" else "unknown")})
        e["files"] += 1
        e["bytes"] += len(text.encode())
    train_bytes = sum(len(t) for t in train_texts)
    log(logf, f"corpus: {len(files)} files; train {len(train_texts)} files {train_bytes / 1e6:.1f} MB chars; "
        f"held-out {len(held_texts)} files; {time.time() - t_start:.1f}s")
    random.Random(args.seed).shuffle(train_texts)
    with open(os.path.join(args.out, "corpus_manifest.json"), "w") as fh:
        json.dump({"roots": source_roots(), "heldout_rule": "sha1(path relative to root) % 100 == 0",
                   "distributions": dict(sorted(per_dist.items(), key=lambda kv: -kv[1]["bytes"]))}, fh, indent=1)

    # --- tokenizer ----------------------------------------------------------------------------------------------
    t0 = time.time()
    sample, size = [], 0
    for t in train_texts:
        if size > args.tokenizer_mb * 1e6:
            break
        sample.append(t)
        size += len(t)
    tok = train_tokenizer(sample, args.vocab)
    eos_id = tok.token_to_id(EOS)
    log(logf, f"tokenizer: vocab {tok.get_vocab_size()} trained on {size / 1e6:.1f} MB in {time.time() - t0:.1f}s")
    from transformers import PreTrainedTokenizerFast

    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(os.path.join(args.out, "model"))
    # Plain completion: no BOS is added (the converter writes this as tokenizer.ggml.add_bos_token).
    tc_path = os.path.join(args.out, "model", "tokenizer_config.json")
    with open(tc_path) as fh:
        tc = json.load(fh)
    tc.update(add_bos_token=False, add_eos_token=False)
    with open(tc_path, "w") as fh:
        json.dump(tc, fh, indent=1)

    t0 = time.time()
    data, chars = encode_all(tok, train_texts, eos_id, args.max_tokens, time.time() + 150)
    held, _ = encode_all(tok, held_texts, eos_id, 2e6, time.time() + 30)
    log(logf, f"encoded: train {len(data) / 1e6:.1f} M tokens from {chars / 1e6:.1f} M chars "
        f"({chars / max(len(data), 1):.2f} chars/token), "
        f"held-out {len(held) / 1e6:.2f} M tokens, {time.time() - t0:.1f}s")

    # --- model --------------------------------------------------------------------------------------------------
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.expert_ffn * args.top_k,
        moe_intermediate_size=args.expert_ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        num_experts=args.experts,
        num_experts_per_tok=args.top_k,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        max_position_embeddings=args.seq,  # the context it was trained on
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        output_router_logits=True,
        router_aux_loss_coef=args.aux_coef,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    model = Qwen3MoeForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(logf, f"model: {n_params / 1e6:.2f} M parameters; config {json.dumps(cfg.to_diff_dict())}")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), fused=not args.cpu,
    )
    data_t = torch.from_numpy(data.astype(np.int64))
    gen = torch.Generator().manual_seed(args.seed)

    def batch():
        starts = torch.randint(0, len(data_t) - args.seq - 1, (args.batch,), generator=gen)
        x = torch.stack([data_t[s : s + args.seq] for s in starts.tolist()])
        return x.to(dev, non_blocking=True)

    warmup, planned, t20 = 100, None, 0.0
    step, seen, t_train = 0, 0, time.time()
    model.train()
    while True:
        elapsed = time.time() - t_train
        if step == 20:
            t20 = elapsed
        if planned is None and step == 120:
            # Steps 20..120 give the steady step time (the first ones include compilation and warm-up).
            ms = (elapsed - t20) / 100
            planned = max(int(120 + (args.train_seconds - elapsed) / ms), 200)
            log(logf, f"planned steps: {planned} ({ms * 1000:.0f} ms/step)")
        if planned is not None and step >= planned:
            break
        total = planned or 10**9
        lr = args.lr * min(1.0, (step + 1) / warmup)
        if planned is not None and step > warmup:
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        x = batch()
        with torch.autocast(device_type="cuda" if not args.cpu else "cpu", dtype=torch.bfloat16, enabled=not args.cpu):
            out = model(input_ids=x, labels=x)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += x.numel()
        if step % args.log_every == 0 or step == 1:
            aux = float(out.aux_loss.detach()) if out.aux_loss is not None else float("nan")
            lm = float(loss.detach()) - args.aux_coef * aux
            el = time.time() - t_train
            log(logf, f"step {step:6d}  tokens {seen / 1e6:8.1f} M  lm_loss {lm:.4f}  aux {aux:.4f}  lr {lr:.2e}  "
                f"{seen / el / 1e3:.0f} k tok/s  {el:.0f}s")
    log(logf, f"trained: {step} steps, {seen / 1e6:.1f} M tokens ({seen / max(len(data), 1):.2f} epochs) in "
        f"{time.time() - t_train:.0f}s")

    # --- held-out loss and samples ---------------------------------------------------------------------------------
    model.eval()
    n_win = min(len(held) // (args.seq + 1), 256)
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(0, n_win, 32):
            xs = [torch.from_numpy(held[j * args.seq : (j + 1) * args.seq].astype(np.int64)) for j in range(i, min(i + 32, n_win))]
            x = torch.stack(xs).to(dev)
            with torch.autocast(device_type="cuda" if not args.cpu else "cpu", dtype=torch.bfloat16, enabled=not args.cpu):
                logits = model(input_ids=x).logits.float()
            l = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            tot += float(l)
            cnt += x[:, 1:].numel()
    held_loss = tot / max(cnt, 1)
    log(logf, f"held-out: {n_win} windows of {args.seq} tokens, loss {held_loss:.4f} (perplexity {math.exp(held_loss):.2f}), bf16 autocast")
    seqs = [held[j * args.seq : (j + 1) * args.seq].tolist() for j in range(min(n_win, 8))]
    with open(os.path.join(args.out, "heldout.json"), "w") as fh:
        json.dump({"seq": args.seq, "loss_bf16": held_loss, "windows": n_win, "sequences": seqs,
                   "texts": [tok.decode(s) for s in seqs]}, fh)
    for prompt in ["def fibonacci(n):\n", "import numpy as np\n\n\ndef ", "class Config:\n    def __init__(self"]:
        ids = torch.tensor([tok.encode(prompt).ids], device=dev)
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=eos_id, pad_token_id=eos_id)
        log(logf, "sample (greedy):\n" + tok.decode(g[0].tolist()) + "\n----")

    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(os.path.join(args.out, "model"), max_shard_size="15MB")
    log(logf, f"saved; total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
