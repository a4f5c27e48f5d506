//! Synthetic MLX directories: the tensors of a Qwen3-MoE shape as mlx-lm's `convert -q` writes them
//! (`Qwen3MoeForCausalLM`, experts stacked under `switch_mlp`), affine 4-bit in groups of 64 with bf16 scales,
//! biases and norms, the router at 8 bits (mlx-lm's Qwen3-MoE `quant_predicate`), one `model.safetensors`, a
//! `config.json` and a `tokenizer.json` of the synthetic vocabulary. For measuring MLX files against GGUF ones of
//! the same shape; the weights are random (each matrix's rows drawn from a small pool of quantized random rows).
//!
//! Like the GGUF writer it streams: a tensor's planes are written row range by row range, never held whole.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use kernels::affine::quantize_affine_ref;
use kernels::{AffineFormat, DType};

use super::plan::{plan, Kind};
use super::weights::{hash_name, mix64, Rng};
use super::{vocab, QuantMix, SynthOptions, SynthProgress, SynthSummary};
use crate::models::qwen3::HF_NAMES;
use crate::{Error, Result};

/// Rows in each matrix's pool.
const POOL_ROWS: usize = 64;

/// One tensor of the file: its name, safetensors dtype, shape, and how its bytes are made.
struct Entry {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: u64,
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    /// RMSNorm weights `1 + 0.1 N(0, 1)`, bf16.
    Norm,
    /// Plane 0 (packed), 1 (scales) or 2 (biases) of a matrix of `cols` columns in `format`, rows from a pool
    /// seeded `seed` with N(0, sigma) values.
    Plane { plane: usize, format: AffineFormat, cols: usize, seed: u64, sigma: f32 },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// The safetensors name of a planned tensor (qwen3's name table, `{}` = layer).
fn hf_name(kind: Kind, layer: Option<usize>) -> Result<String> {
    let slot = kind.slot();
    let (_, hf) = HF_NAMES
        .iter()
        .find(|(s, _)| *s == slot)
        .ok_or_else(|| Error::Invalid(format!("synth --format mlx: no safetensors name for {slot}")))?;
    Ok(match layer {
        Some(l) => hf.replacen("{}", &l.to_string(), 1),
        None => hf.to_string(),
    })
}

fn entries(o: &SynthOptions) -> Result<(Vec<Entry>, serde_json::Map<String, serde_json::Value>)> {
    let p = &o.shape;
    if p.hybrid.is_some() {
        return Err(Error::Invalid("synth --format mlx writes the qwen3moe shapes only".into()));
    }
    let default = AffineFormat::new(4, 64, DType::BF16).expect("a valid format");
    let router = AffineFormat::new(8, 64, DType::BF16).expect("a valid format");
    let mut overrides = serde_json::Map::new();
    let mut out = Vec::new();
    for t in plan(p, QuantMix::F16) {
        let name = hf_name(t.kind, t.layer)?;
        if t.shape.len() == 1 {
            out.push(Entry {
                name: format!("{name}.weight"),
                dtype: "BF16",
                shape: t.shape.clone(),
                bytes: 2 * t.shape[0] as u64,
                source: Source::Norm,
            });
            continue;
        }
        let format = if t.kind == Kind::FfnGateInp {
            overrides.insert(name.clone(), serde_json::json!({"group_size": 64, "bits": 8}));
            router
        } else {
            default
        };
        let cols = t.cols();
        let rows = t.n_rows() as u64;
        let seed = o.seed ^ mix64(hash_name(&name));
        let sigma = 1.0 / (cols as f32).sqrt();
        let lead = &t.shape[..t.shape.len() - 1];
        let with_last = |last: usize| lead.iter().copied().chain([last]).collect::<Vec<_>>();
        let plane = |plane: usize| Source::Plane { plane, format, cols, seed, sigma };
        let q_words = cols * format.bits as usize / 32;
        out.push(Entry {
            name: format!("{name}.weight"),
            dtype: "U32",
            shape: with_last(q_words),
            bytes: rows * format.q_bytes(cols) as u64,
            source: plane(0),
        });
        for (i, suffix) in [(1, "scales"), (2, "biases")] {
            out.push(Entry {
                name: format!("{name}.{suffix}"),
                dtype: "BF16",
                shape: with_last(cols / format.group),
                bytes: rows * format.param_bytes(cols) as u64,
                source: plane(i),
            });
        }
    }
    Ok((out, overrides))
}

fn config(o: &SynthOptions, overrides: serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let p = &o.shape;
    let mut quant = serde_json::json!({"group_size": 64, "bits": 4, "mode": "affine"});
    if let Some(q) = quant.as_object_mut() {
        q.extend(overrides);
    }
    serde_json::json!({
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": p.n_embd,
        "num_hidden_layers": p.n_layer,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_head_kv,
        "head_dim": p.head_dim,
        "num_experts": p.n_expert,
        "num_experts_per_tok": p.n_expert_used,
        "moe_intermediate_size": p.n_ff_exp,
        "intermediate_size": p.n_ff,
        "vocab_size": p.n_vocab,
        "max_position_embeddings": p.n_ctx_train,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "norm_topk_prob": true,
        "tie_word_embeddings": false,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "torch_dtype": "bfloat16",
        "quantization": quant.clone(),
        "quantization_config": quant,
    })
}

/// A `tokenizer.json` (byte-level BPE) of the synthetic vocabulary the GGUF writer uses.
fn tokenizer(n_vocab: usize) -> Result<serde_json::Value> {
    let v = vocab::build(n_vocab)?;
    let special = [v.bos_id, v.eos_id, v.pad_id];
    let vocab_map: serde_json::Map<String, serde_json::Value> =
        v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::Value::from(i))).collect();
    let added: Vec<serde_json::Value> = v
        .tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| special.contains(&(*i as u32)) || v.types.get(*i) == Some(&3))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": true})
        })
        .collect();
    let merges: Vec<serde_json::Value> = v
        .merges
        .iter()
        .map(|m| m.split_once(' ').map_or(serde_json::json!(m), |(a, b)| serde_json::json!([a, b])))
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
        "use_regex": true});
    Ok(serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab_map, "merges": merges},
    }))
}

/// A matrix's pool: [`POOL_ROWS`] random rows quantized in `format`, as (packed, scales, biases) planes.
fn pool(format: AffineFormat, cols: usize, seed: u64, sigma: f32) -> [Vec<u8>; 3] {
    let (qb, pb) = (format.q_bytes(cols), format.param_bytes(cols));
    let mut planes = [vec![0u8; POOL_ROWS * qb], vec![0u8; POOL_ROWS * pb], vec![0u8; POOL_ROWS * pb]];
    let mut x = vec![0.0f32; cols];
    let mut rng = Rng::new(seed);
    let [q, s, b] = &mut planes;
    for r in 0..POOL_ROWS {
        x.iter_mut().for_each(|v| *v = sigma * rng.normal());
        quantize_affine_ref(
            format,
            &x,
            &mut q[r * qb..(r + 1) * qb],
            &mut s[r * pb..(r + 1) * pb],
            &mut b[r * pb..(r + 1) * pb],
        );
    }
    planes
}

/// Writes an MLX directory for `o` (a qwen3moe shape) at `dir` (created; must not hold a model already).
pub fn write_mlx(dir: &Path, o: &SynthOptions, progress: &mut dyn FnMut(&SynthProgress)) -> Result<SynthSummary> {
    let start = Instant::now();
    let (entries, overrides) = entries(o)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cfg = config(o, overrides);
    let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&path, text).map_err(io(&path))
    };
    write_json("config.json", &cfg)?;
    write_json("tokenizer.json", &tokenizer(o.shape.n_vocab)?)?;

    // The safetensors header: every tensor with its data offsets, padded with spaces to 8 bytes.
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "mlx"}));
    let mut offset = 0u64;
    for e in &entries {
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.bytes]}),
        );
        offset += e.bytes;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    h.resize(h.len().next_multiple_of(8), b' ');
    let path = dir.join("model.safetensors");
    let part = dir.join("model.safetensors.part");
    let file = std::fs::File::create(&part).map_err(io(&part))?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io(&part))?;
    w.write_all(&h).map_err(io(&part))?;
    let (total, mut written) = (offset, 0u64);
    let (mut expert_bytes, mut other_bytes) = (0u64, 0u64);
    let mut cached: Option<(u64, [Vec<u8>; 3])> = None;
    for e in &entries {
        match e.source {
            Source::Norm => {
                let mut rng = Rng::new(o.seed ^ mix64(hash_name(&e.name)));
                let bytes: Vec<u8> = (0..e.shape[0])
                    .flat_map(|_| kernels::f32_to_bf16(1.0 + 0.1 * rng.normal()).to_le_bytes())
                    .collect();
                w.write_all(&bytes).map_err(io(&part))?;
            }
            Source::Plane { plane, format, cols, seed, sigma } => {
                if cached.as_ref().map(|c| c.0) != Some(seed) {
                    cached = Some((seed, pool(format, cols, seed, sigma)));
                }
                let src = &cached.as_ref().expect("just made").1[plane];
                let row_bytes = src.len() / POOL_ROWS;
                let rows = e.bytes as usize / row_bytes;
                for r in 0..rows {
                    let i = (mix64(seed ^ r as u64) % POOL_ROWS as u64) as usize;
                    w.write_all(&src[i * row_bytes..(i + 1) * row_bytes]).map_err(io(&part))?;
                }
            }
        }
        if e.name.contains(".switch_mlp.") {
            expert_bytes += e.bytes;
        } else {
            other_bytes += e.bytes;
        }
        written += e.bytes;
        progress(&SynthProgress { bytes_written: written, bytes_total: total, seconds: start.elapsed().as_secs_f64() });
    }
    w.flush().map_err(io(&part))?;
    drop(w);
    std::fs::rename(&part, &path).map_err(io(&path))?;
    Ok(SynthSummary {
        file_bytes: 8 + h.len() as u64 + total,
        header_bytes: 8 + h.len() as u64,
        expert_bytes,
        other_bytes,
        n_tensors: entries.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
