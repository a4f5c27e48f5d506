//! Synthetic Qwen3-MoE models: a GGUF (arch `qwen3moe`) of the real tensor layout with random weights, that
//! flash-moe and llama.cpp both load and run. Big-model behaviour (expert streaming, cache hit rates, SSD
//! bandwidth) is measured on these, since real MoE weights are not reachable here.
//!
//! # Main types
//! - [`Shape`]: the closed set of model geometries ([`ShapeParams`]), from `tiny` (tests) to `qwen3-30b-a3b`.
//! - [`QuantMix`]: which GGUF type each tensor gets (`q4_k_m` follows llama.cpp's rule, see [`QuantMix::dtype`]).
//! - [`plan`] lists the tensors; [`write()`] streams the file.
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

mod vocab;
mod weights;

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
    CoderNextLike,
    Small,
    Tiny,
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
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Qwen3_30bA3b, Shape::CoderNextLike, Shape::Small, Shape::Tiny];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Qwen3_30bA3b => "qwen3-30b-a3b",
            Shape::CoderNextLike => "coder-next-like",
            Shape::Small => "small",
            Shape::Tiny => "tiny",
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
            Shape::CoderNextLike => {
                "Qwen3-Coder-Next's expert geometry (512 small experts, top-10) on a plain qwen3moe stand-in: \
                 the real model is a hybrid Gated-DeltaNet architecture (qwen3next), this one is all attention"
            }
            Shape::Small => "~450 MB at q4_k_m, for CPU benchmarks",
            Shape::Tiny => "a few MB, for tests",
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
                }
            };
        match self {
            Shape::Qwen3_30bA3b => p(48, 2048, 32, 4, 128, 128, 8, 768, 6144, 151_936, 40_960),
            Shape::CoderNextLike => p(48, 2048, 16, 2, 256, 512, 10, 512, 5120, 151_936, 262_144),
            Shape::Small => p(24, 1024, 16, 4, 64, 32, 4, 256, 1024, 32_000, 4096),
            Shape::Tiny => p(4, 256, 8, 2, 32, 16, 4, 256, 512, 512, 2048),
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

/// What a tensor is (its GGUF slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    TokenEmbd,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    AttnQNorm,
    AttnKNorm,
    FfnNorm,
    FfnGateInp,
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    OutputNorm,
    Output,
}

impl Kind {
    fn slot(self) -> &'static str {
        match self {
            Kind::TokenEmbd => "token_embd",
            Kind::AttnNorm => "attn_norm",
            Kind::AttnQ => "attn_q",
            Kind::AttnK => "attn_k",
            Kind::AttnV => "attn_v",
            Kind::AttnOutput => "attn_output",
            Kind::AttnQNorm => "attn_q_norm",
            Kind::AttnKNorm => "attn_k_norm",
            Kind::FfnNorm => "ffn_norm",
            Kind::FfnGateInp => "ffn_gate_inp",
            Kind::FfnGateExps => "ffn_gate_exps",
            Kind::FfnUpExps => "ffn_up_exps",
            Kind::FfnDownExps => "ffn_down_exps",
            Kind::OutputNorm => "output_norm",
            Kind::Output => "output",
        }
    }

    fn is_f32(self) -> bool {
        matches!(
            self,
            Kind::AttnNorm | Kind::AttnQNorm | Kind::AttnKNorm | Kind::FfnNorm | Kind::OutputNorm | Kind::FfnGateInp
        )
    }

    pub fn is_expert(self) -> bool {
        matches!(self, Kind::FfnGateExps | Kind::FfnUpExps | Kind::FfnDownExps)
    }
}

/// One tensor of the file.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    pub kind: Kind,
    pub layer: Option<usize>,
    pub dtype: DType,
    /// Row-major, outermost first (`ffn_gate_exps`: `[n_expert, n_ff_exp, n_embd]`).
    pub shape: Vec<usize>,
}

impl PlannedTensor {
    /// Values per row (the innermost dimension).
    pub fn cols(&self) -> usize {
        *self.shape.last().expect("a tensor has a dimension")
    }

    pub fn n_rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }

    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols()).expect("planned rows are whole blocks")
    }

    pub fn bytes(&self) -> u64 {
        self.n_rows() as u64 * self.row_bytes() as u64
    }
}

/// Every tensor of a model of shape `p` in mix `q`, in file order.
pub fn plan(p: &ShapeParams, q: QuantMix) -> Vec<PlannedTensor> {
    let n = p.n_layer;
    let (e, q_dim, kv_dim) = (p.n_embd, p.n_head * p.head_dim, p.n_head_kv * p.head_dim);
    let t = |kind: Kind, layer: Option<usize>, shape: Vec<usize>| PlannedTensor {
        name: match layer {
            Some(l) => format!("blk.{l}.{}.weight", kind.slot()),
            None => format!("{}.weight", kind.slot()),
        },
        kind,
        layer,
        dtype: q.dtype(kind, layer.unwrap_or(0), n),
        shape,
    };
    let mut out = vec![t(Kind::TokenEmbd, None, vec![p.n_vocab, e])];
    for l in 0..n {
        let l_ = Some(l);
        out.extend([
            t(Kind::AttnNorm, l_, vec![e]),
            t(Kind::AttnQ, l_, vec![q_dim, e]),
            t(Kind::AttnK, l_, vec![kv_dim, e]),
            t(Kind::AttnV, l_, vec![kv_dim, e]),
            t(Kind::AttnOutput, l_, vec![e, q_dim]),
            t(Kind::AttnQNorm, l_, vec![p.head_dim]),
            t(Kind::AttnKNorm, l_, vec![p.head_dim]),
            t(Kind::FfnNorm, l_, vec![e]),
            t(Kind::FfnGateInp, l_, vec![p.n_expert, e]),
            t(Kind::FfnGateExps, l_, vec![p.n_expert, p.n_ff_exp, e]),
            t(Kind::FfnUpExps, l_, vec![p.n_expert, p.n_ff_exp, e]),
            t(Kind::FfnDownExps, l_, vec![p.n_expert, e, p.n_ff_exp]),
        ]);
    }
    out.push(t(Kind::OutputNorm, None, vec![e]));
    out.push(t(Kind::Output, None, vec![p.n_vocab, e]));
    out
}

/// Bytes of tensor data (padded as in the file) of a model of shape `p` in mix `q`: the file size less the
/// header (metadata and tokenizer, a few MB for a 150k vocabulary).
pub fn data_bytes(p: &ShapeParams, q: QuantMix) -> u64 {
    plan(p, q).iter().map(|t| t.bytes().next_multiple_of(GGUF_DEFAULT_ALIGNMENT)).sum()
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
    let a = |k: &str| format!("qwen3moe.{k}");
    Ok(vec![
        ("general.architecture".into(), GgufValue::String("qwen3moe".into())),
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
        (a("rope.freq_base"), GgufValue::F32(1_000_000.0)),
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
    ])
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
