//! Synthetic MoE models: a GGUF of the real tensor layout with random weights (arch `qwen3moe`, or `qwen3next`
//! for the hybrid DeltaNet shapes), that flash-moe and llama.cpp both load and run. Big-model behaviour (expert
//! streaming, cache hit rates, SSD bandwidth) is measured on these, since real MoE weights are not reachable here.
//!
//! # Main types
//! - [`Shape`]: the closed set of model geometries ([`ShapeParams`]), from `tiny` (tests) to `qwen3-coder-next`.
//! - [`QuantMix`]: which GGUF type each tensor gets (`q4_k_m` follows llama.cpp's rule, see [`QuantMix::dtype`]).
//! - [`plan`] lists the tensors; [`write()`] streams the file; [`write_mlx`] writes the same qwen3moe shape as an
//!   MLX directory (4-bit, groups of 64, bf16), as mlx-lm's `convert -q` would.
//!
//! # How the file is written
//! Tensor by tensor, in chunks of about [`CHUNK_BYTES`]: the calling thread fills a chunk (rows split over
//! scoped threads) while a writer thread writes the previous one through [`GgufWriter`]; at most a few chunks
//! are in flight, so memory stays bounded (tens of MB) whatever the model size. Weights: see `weights`
//! (norms and the router fully random; every matrix row drawn from a pool of random rows quantized with
//! [`Kernels::quantize_row`]). The tokenizer is a synthetic byte-level BPE (see `vocab`).
//!
//! Must not: hold a whole tensor in memory, or depend on the thread count for its output (same seed, same
//! bytes).

mod mlx;
mod plan;
pub(crate) mod vocab;
mod weights;

pub use mlx::write_mlx;
pub use plan::{data_bytes, plan, Kind, PlannedTensor};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use kernels::{DType, Kernels};

use crate::formats::gguf::{GgufArray, GgufValue, GGUF_DEFAULT_ALIGNMENT};
use crate::formats::gguf_writer::GgufWriter;
use crate::{Error, Result};
use weights::{hash_name, mix64, router_scales, RowPool, RowSource};

/// Target bytes of one chunk of tensor data.
pub const CHUNK_BYTES: usize = 4 << 20;

/// Most layers `--layers` accepts.
pub const N_LAYER_MAX: usize = 1024;

/// A model geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Qwen3_30bA3b,
    Qwen3CoderNext,
    CoderNextLike,
    Small,
    Qwen3NextSmall,
    Tiny,
    Qwen3NextTiny,
}

/// The linear-attention part of a hybrid (`qwen3next`) geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridParams {
    pub n_k_heads: usize,
    pub n_v_heads: usize,
    pub d_k: usize,
    pub d_v: usize,
    pub conv_kernel: usize,
    /// Every `full_attention_interval`-th layer is full attention, the others DeltaNet.
    pub full_attention_interval: usize,
    pub n_ff_shexp: usize,
    /// Rotated dimensions per attention head.
    pub n_rot: usize,
}

impl HybridParams {
    pub fn is_recurrent(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.full_attention_interval)
    }

    pub fn conv_dim(&self) -> usize {
        2 * self.n_k_heads * self.d_k + self.n_v_heads * self.d_v
    }
}

/// The numbers that shape a Qwen3-MoE model (every MoE layer alike).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeParams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    /// Intermediate size of one expert.
    pub n_ff_exp: usize,
    /// `feed_forward_length` (the dense FFN size the real config states; no layer here is dense).
    pub n_ff: usize,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    /// `Some` for a hybrid Qwen3-Next geometry (arch `qwen3next`).
    pub hybrid: Option<HybridParams>,
}

impl Shape {
    pub const ALL: [Shape; 7] = [
        Shape::Qwen3_30bA3b,
        Shape::Qwen3CoderNext,
        Shape::CoderNextLike,
        Shape::Small,
        Shape::Qwen3NextSmall,
        Shape::Tiny,
        Shape::Qwen3NextTiny,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Qwen3_30bA3b => "qwen3-30b-a3b",
            Shape::Qwen3CoderNext => "qwen3-coder-next",
            Shape::CoderNextLike => "coder-next-like",
            Shape::Small => "small",
            Shape::Qwen3NextSmall => "qwen3next-small",
            Shape::Tiny => "tiny",
            Shape::Qwen3NextTiny => "qwen3next-tiny",
        }
    }

    /// The GGUF architecture it writes.
    pub fn arch(self) -> &'static str {
        if self.params().hybrid.is_some() {
            "qwen3next"
        } else {
            "qwen3moe"
        }
    }

    pub fn from_name(s: &str) -> Result<Shape> {
        Shape::ALL.into_iter().find(|sh| sh.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
            Error::Invalid(format!("unknown shape '{s}' (known: {})", names.join(", ")))
        })
    }

    /// One line on what the shape imitates.
    pub fn about(self) -> &'static str {
        match self {
            Shape::Qwen3_30bA3b => "Qwen3-30B-A3B's geometry",
            Shape::Qwen3CoderNext => {
                "Qwen3-Coder-Next (80B-A3B): hybrid, 36 gated-DeltaNet + 12 gated-attention layers, 512 experts \
                 top-10 plus a shared expert (arch qwen3next)"
            }
            Shape::CoderNextLike => {
                "Qwen3-Coder-Next's expert geometry on a plain qwen3moe stand-in (all attention layers)"
            }
            Shape::Small => "~450 MB at q4_k_m, for CPU benchmarks",
            Shape::Qwen3NextSmall => "a small hybrid qwen3next model, for CPU benchmarks and llama.cpp checks",
            Shape::Tiny => "a few MB, for tests",
            Shape::Qwen3NextTiny => "a few MB hybrid qwen3next model, for tests",
        }
    }

    pub fn params(self) -> ShapeParams {
        let p =
            |n_layer, n_embd, n_head, n_head_kv, head_dim, n_expert, n_expert_used, n_ff_exp, n_ff, n_vocab, ctx| {
                ShapeParams {
                    n_layer,
                    n_embd,
                    n_head,
                    n_head_kv,
                    head_dim,
                    n_expert,
                    n_expert_used,
                    n_ff_exp,
                    n_ff,
                    n_vocab,
                    n_ctx_train: ctx,
                    hybrid: None,
                }
            };
        let hybrid = |mut s: ShapeParams, (nk, nv, d, n_ff_shexp): (usize, usize, usize, usize)| {
            s.hybrid = Some(HybridParams {
                n_k_heads: nk,
                n_v_heads: nv,
                d_k: d,
                d_v: d,
                conv_kernel: 4,
                full_attention_interval: 4,
                n_ff_shexp,
                n_rot: s.head_dim / 4,
            });
            s
        };
        match self {
            Shape::Qwen3_30bA3b => p(48, 2048, 32, 4, 128, 128, 8, 768, 6144, 151_936, 40_960),
            // Qwen/Qwen3-Coder-Next config.json (Qwen3-Next-80B-A3B geometry).
            Shape::Qwen3CoderNext => {
                hybrid(p(48, 2048, 16, 2, 256, 512, 10, 512, 5120, 151_936, 262_144), (16, 32, 128, 512))
            }
            Shape::CoderNextLike => p(48, 2048, 16, 2, 256, 512, 10, 512, 5120, 151_936, 262_144),
            Shape::Small => p(24, 1024, 16, 4, 64, 32, 4, 256, 1024, 32_000, 4096),
            Shape::Qwen3NextSmall => hybrid(p(24, 1024, 8, 2, 128, 64, 8, 256, 1024, 32_000, 4096), (8, 16, 64, 256)),
            Shape::Tiny => p(4, 256, 8, 2, 32, 16, 4, 256, 512, 512, 2048),
            Shape::Qwen3NextTiny => hybrid(p(4, 256, 4, 2, 64, 16, 4, 256, 512, 512, 2048), (2, 4, 64, 256)),
        }
    }
}

/// Which GGUF type each tensor gets. Norms and the router (`ffn_gate_inp`) are always F32, as llama.cpp
/// leaves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMix {
    /// llama.cpp's Q4_K_M (`llama-quant.cpp`, `llama_tensor_get_type_impl`, for a model with n_expert != 8):
    /// `output` Q6_K; `attn_v` and `ffn_down(_exps)` Q6_K in the layers where `use_more_bits(i, n_layer)`
    /// (the first and last eighth, and every third layer between), Q4_K elsewhere; everything else Q4_K,
    /// `token_embd` included.
    Q4KM,
    /// Every matrix Q4_K (file type says Q4_K_S, the nearest llama.cpp name).
    Q4K,
    Q8_0,
    F16,
}

impl QuantMix {
    pub const ALL: [QuantMix; 4] = [QuantMix::Q4KM, QuantMix::Q4K, QuantMix::Q8_0, QuantMix::F16];

    pub fn name(self) -> &'static str {
        match self {
            QuantMix::Q4KM => "q4_k_m",
            QuantMix::Q4K => "q4_k",
            QuantMix::Q8_0 => "q8_0",
            QuantMix::F16 => "f16",
        }
    }

    pub fn from_name(s: &str) -> Result<QuantMix> {
        QuantMix::ALL.into_iter().find(|q| q.name() == s).ok_or_else(|| {
            let names: Vec<&str> = QuantMix::ALL.iter().map(|q| q.name()).collect();
            Error::Invalid(format!("unknown quantization '{s}' (known: {})", names.join(", ")))
        })
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            QuantMix::Q4KM => 15,
            QuantMix::Q4K => 14,
            QuantMix::Q8_0 => 7,
            QuantMix::F16 => 1,
        }
    }

    /// The type of a tensor of `kind` in layer `layer` of `n_layer`.
    pub fn dtype(self, kind: Kind, layer: usize, n_layer: usize) -> DType {
        if kind.is_f32() {
            return DType::F32;
        }
        // llama-quant.cpp's use_more_bits.
        let more_bits =
            layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer as i64 - (n_layer / 8) as i64) % 3 == 2;
        match self {
            QuantMix::F16 => DType::F16,
            QuantMix::Q8_0 => DType::Q8_0,
            QuantMix::Q4K => DType::Q4_K,
            QuantMix::Q4KM => match kind {
                Kind::Output => DType::Q6_K,
                Kind::AttnV | Kind::FfnDownExps if more_bits => DType::Q6_K,
                _ => DType::Q4_K,
            },
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub shape: ShapeParams,
    /// The shape's name, for `general.name`.
    pub shape_name: String,
    pub quant: QuantMix,
    pub seed: u64,
    /// Router popularity skew: 0 spreads tokens evenly; larger values scale the router row of the expert of
    /// popularity rank r (per layer) by (1 + r)^-skew, so a few experts are chosen more often (see
    /// `weights::router_scales`; 1 is mild, 2 stronger).
    pub skew: f32,
    pub n_threads: usize,
}

impl SynthOptions {
    /// Options for `shape` with its own layer count unless `n_layer` overrides it.
    pub fn new(shape: Shape, quant: QuantMix, n_layer: Option<usize>) -> Result<SynthOptions> {
        let mut params = shape.params();
        if let Some(n) = n_layer {
            if n == 0 || n > N_LAYER_MAX {
                return Err(Error::Invalid(format!("--layers must be in 1..={N_LAYER_MAX}, got {n}")));
            }
            params.n_layer = n;
        }
        Ok(SynthOptions {
            shape: params,
            shape_name: shape.name().to_string(),
            quant,
            seed: 0,
            skew: 0.0,
            n_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
}

/// How far [`write()`] is.
#[derive(Clone, Copy, Debug)]
pub struct SynthProgress {
    pub bytes_written: u64,
    pub bytes_total: u64,
    pub seconds: f64,
}

/// What [`write()`] wrote.
#[derive(Clone, Debug)]
pub struct SynthSummary {
    pub file_bytes: u64,
    pub header_bytes: u64,
    /// Bytes of the `ffn_*_exps` tensors, and of all other tensors.
    pub expert_bytes: u64,
    pub other_bytes: u64,
    pub n_tensors: usize,
    pub seconds: f64,
}

fn metadata(o: &SynthOptions) -> Result<Vec<(String, GgufValue)>> {
    let p = &o.shape;
    let v = vocab::build(p.n_vocab)?;
    let u = |x: usize| GgufValue::U32(x as u32);
    let arch = if p.hybrid.is_some() { "qwen3next" } else { "qwen3moe" };
    let a = |k: &str| format!("{arch}.{k}");
    let mut hybrid_keys = vec![];
    if let Some(h) = &p.hybrid {
        hybrid_keys = vec![
            (a("expert_shared_feed_forward_length"), u(h.n_ff_shexp)),
            (a("ssm.conv_kernel"), u(h.conv_kernel)),
            (a("ssm.state_size"), u(h.d_k)),
            (a("ssm.group_count"), u(h.n_k_heads)),
            (a("ssm.time_step_rank"), u(h.n_v_heads)),
            (a("ssm.inner_size"), u(h.n_v_heads * h.d_v)),
            (a("full_attention_interval"), u(h.full_attention_interval)),
            (
                a("attention.recurrent_layers"),
                GgufValue::Array(GgufArray::Bool((0..p.n_layer).map(|l| h.is_recurrent(l)).collect())),
            ),
            (a("rope.dimension_count"), u(h.n_rot)),
        ];
    }
    let rope_base = if p.hybrid.is_some() { 10_000_000.0 } else { 1_000_000.0 };
    let mut kvs = vec![
        ("general.architecture".into(), GgufValue::String(arch.into())),
        ("general.type".into(), GgufValue::String("model".into())),
        (
            "general.name".into(),
            GgufValue::String(format!("flash-moe synth {} {} seed {}", o.shape_name, o.quant.name(), o.seed)),
        ),
        ("general.file_type".into(), GgufValue::U32(o.quant.file_type())),
        ("general.quantization_version".into(), GgufValue::U32(2)),
        (a("context_length"), u(p.n_ctx_train)),
        (a("embedding_length"), u(p.n_embd)),
        (a("block_count"), u(p.n_layer)),
        (a("feed_forward_length"), u(p.n_ff)),
        (a("attention.head_count"), u(p.n_head)),
        (a("attention.head_count_kv"), u(p.n_head_kv)),
        (a("attention.key_length"), u(p.head_dim)),
        (a("attention.value_length"), u(p.head_dim)),
        (a("attention.layer_norm_rms_epsilon"), GgufValue::F32(1e-6)),
        (a("rope.freq_base"), GgufValue::F32(rope_base)),
        (a("expert_count"), u(p.n_expert)),
        (a("expert_used_count"), u(p.n_expert_used)),
        (a("expert_feed_forward_length"), u(p.n_ff_exp)),
        ("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GgufValue::String("qwen2".into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(GgufArray::String(v.tokens))),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(GgufArray::I32(v.types))),
        ("tokenizer.ggml.merges".into(), GgufValue::Array(GgufArray::String(v.merges))),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(v.bos_id)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(v.eos_id)),
        ("tokenizer.ggml.padding_token_id".into(), GgufValue::U32(v.pad_id)),
        ("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(false)),
        ("tokenizer.chat_template".into(), GgufValue::String(vocab::CHAT_TEMPLATE.into())),
    ];
    kvs.extend(hybrid_keys);
    Ok(kvs)
}

/// The pool a matrix's rows come from: (type, row length, bits of sigma); `None` for norms and the router.
type PoolKey = (DType, usize, u32);

fn pool_key(t: &PlannedTensor) -> Option<PoolKey> {
    if t.kind.is_f32() {
        return None;
    }
    // Unit-variance embeddings: the residual stream starts at RMS ~1, the scale of every block's output.
    let sigma = if t.kind == Kind::TokenEmbd { 1.0 } else { 1.0 / (t.cols() as f32).sqrt() };
    Some((t.dtype, t.cols(), sigma.to_bits()))
}

/// The row source of tensor `t`; matrices borrow their pool from `pools`.
fn source<'a>(t: &PlannedTensor, o: &SynthOptions, pools: &'a HashMap<PoolKey, RowPool>) -> RowSource<'a> {
    match (t.kind, pool_key(t)) {
        (Kind::FfnGateInp, _) => RowSource::Scaled {
            sigma: 1.0 / (t.cols() as f32).sqrt(),
            scales: router_scales(o.shape.n_expert, o.skew, o.seed ^ mix64(0x5EED ^ t.layer.unwrap_or(0) as u64)),
        },
        (Kind::FfnGateInpShexp, _) => RowSource::Gaussian { sigma: 1.0 / (t.cols() as f32).sqrt() },
        // Taps of a 4-wide causal convolution.
        (Kind::SsmConv1d, _) => RowSource::Gaussian { sigma: 0.5 },
        // -exp(A_log): the decay rates, negative, most between -1 and -0.05 (slow to moderate forgetting).
        (Kind::SsmA, _) => RowSource::Uniform { lo: -1.0, hi: -0.05 },
        (Kind::SsmDt, _) => RowSource::Gaussian { sigma: 0.5 },
        (_, Some(key)) => RowSource::Pooled(&pools[&key]),
        (_, None) => RowSource::Norm,
    }
}

/// Writes the model of `o` to `path`, calling `progress` after every chunk. The file is written under a temporary
/// name beside `path` (`<path>.part`) and renamed when complete, so an interrupted run never leaves a truncated file
/// at `path`; a failed one removes its temporary file.
pub fn write(path: &Path, o: &SynthOptions, progress: &mut dyn FnMut(&SynthProgress)) -> Result<SynthSummary> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = std::path::PathBuf::from(part);
    match write_to(&part, o, progress) {
        Ok(summary) => {
            std::fs::rename(&part, path).map_err(|e| Error::io(path, e))?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn write_to(path: &Path, o: &SynthOptions, progress: &mut dyn FnMut(&SynthProgress)) -> Result<SynthSummary> {
    let t0 = Instant::now();
    let k = Kernels::detect();
    let tensors = plan(&o.shape, o.quant);
    let mut w = GgufWriter::create(path)?;
    for (key, value) in metadata(o)? {
        w.add_kv(key, value)?;
    }
    for t in &tensors {
        w.add_tensor(&t.name, t.dtype, &t.shape)?;
    }
    let header_bytes = w.write_header()?;
    let data_total: u64 = tensors.iter().map(|t| t.bytes().next_multiple_of(GGUF_DEFAULT_ALIGNMENT)).sum();
    let bytes_total = header_bytes + data_total;
    let written = AtomicU64::new(header_bytes);
    let mut pools: HashMap<PoolKey, RowPool> = HashMap::new();

    let (tx, rx) = sync_channel::<Vec<u8>>(2);
    let written = &written;
    let (gen, file) = std::thread::scope(|s| {
        let writer = s.spawn(move || -> Result<std::fs::File> {
            for chunk in rx {
                w.write_tensor_data(&chunk)?;
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let file = w.finish()?.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
            file.sync_data().map_err(|e| Error::io(path, e))?;
            Ok(file)
        });
        let gen = (|| -> Result<()> {
            for (i, t) in tensors.iter().enumerate() {
                if let Some(key @ (dtype, cols, sigma)) = pool_key(t) {
                    pools.entry(key).or_insert_with(|| {
                        let seed = o.seed ^ mix64(hash_name(dtype.name()) ^ mix64(cols as u64) ^ u64::from(sigma));
                        RowPool::new(&k, dtype, cols, f32::from_bits(sigma), seed, o.n_threads)
                    });
                }
                let src = source(t, o, &pools);
                let seed = mix64(o.seed) ^ hash_name(&t.name) ^ mix64(i as u64);
                let rows_per_chunk = (CHUNK_BYTES / t.row_bytes()).max(1);
                let mut row0 = 0;
                while row0 < t.n_rows() {
                    let n = rows_per_chunk.min(t.n_rows() - row0);
                    let mut buf = vec![0u8; n * t.row_bytes()];
                    weights::fill_rows(&k, &src, t.dtype, t.cols(), seed, row0, &mut buf, o.n_threads);
                    if tx.send(buf).is_err() {
                        // The writer stopped; its error is the one to report.
                        return Ok(());
                    }
                    row0 += n;
                    progress(&SynthProgress {
                        bytes_written: written.load(Ordering::Relaxed),
                        bytes_total,
                        seconds: t0.elapsed().as_secs_f64(),
                    });
                }
            }
            Ok(())
        })();
        drop(tx);
        let file = writer.join().unwrap_or_else(|_| Err(Error::Invalid("synth: the writer thread panicked".into())));
        (gen, file)
    });
    gen?;
    let file = file?;
    let file_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let expert_bytes = tensors.iter().filter(|t| t.kind.is_expert()).map(PlannedTensor::bytes).sum();
    let other_bytes = tensors.iter().filter(|t| !t.kind.is_expert()).map(PlannedTensor::bytes).sum();
    let seconds = t0.elapsed().as_secs_f64();
    progress(&SynthProgress { bytes_written: file_bytes, bytes_total, seconds });
    Ok(SynthSummary { file_bytes, header_bytes, expert_bytes, other_bytes, n_tensors: tensors.len(), seconds })
}
