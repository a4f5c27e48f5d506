//! What every family's loader shares: reading hyper-parameters from GGUF metadata or `config.json`
//! ([`Hparams`]), and reading weights by GGUF-style slot names through a family's name table ([`Loader`]),
//! validating each tensor's shape and type so the forward pass can trust them.

use std::io::Write;

use kernels::Kernels;

use crate::formats::{Metadata, TensorInfo, WeightIndex};
use crate::tensor::{AlignedBuf, Planes, QMat};
use crate::{Error, Result};

/// Options of [`crate::models::Model::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Draw a progress bar on stderr (the caller decides: the CLI asks for it on a terminal without --quiet).
    pub progress: bool,
    /// Where the routed experts live.
    pub experts: ExpertResidency,
    /// How sessions store keys and values (f32 unless asked: `-ctk`/`-ctv`).
    pub kv: crate::kv_cache::KvTypes,
}

/// Where the routed experts live while the model runs.
#[derive(Clone, Debug, Default)]
pub enum ExpertResidency {
    /// Every expert read into RAM at load.
    #[default]
    AllInRam,
    /// Experts streamed from the model files into a cache sized by a memory budget.
    Stream(StreamOptions),
}

/// Sizes of the streaming mode.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub budget: crate::experts::budget::Budget,
    /// Context length the KV cache is planned for.
    pub n_ctx: usize,
    /// Compute threads (per-thread attention scratch).
    pub n_threads: usize,
    /// Threads issuing expert reads (the pread engine).
    pub io_threads: usize,
    /// `None`: io_uring where the kernel allows it, else pread threads.
    pub io_engine: Option<crate::experts::io::IoEngine>,
    /// Force the number of cache slots (tests); `None` derives it from the budget.
    pub n_slots: Option<usize>,
    /// Next-layer prediction and prefetch.
    pub prefetch: crate::experts::cache::Prefetch,
}

/// Hyper-parameters by GGUF key (without the `{arch}.` prefix) or `config.json` key.
pub struct Hparams<'a> {
    index: &'a WeightIndex,
    arch: &'a str,
}

impl<'a> Hparams<'a> {
    pub fn new(index: &'a WeightIndex, arch: &'a str) -> Hparams<'a> {
        Hparams { index, arch }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self.index.metadata, Metadata::Gguf(_))
    }

    fn json(&self, hf: &str) -> Option<&serde_json::Value> {
        match &self.index.metadata {
            Metadata::HfConfig { config, .. } => {
                // A multimodal checkpoint (`...ForConditionalGeneration`) keeps the language model's numbers in
                // text_config; transformers 5 moved rope_theta into rope_parameters.
                let root = config.get("text_config").unwrap_or(config);
                root.get(hf).or_else(|| root.get("rope_parameters").and_then(|r| r.get(hf))).or_else(|| config.get(hf))
            }
            Metadata::Gguf(_) => None,
        }
    }

    fn gguf_key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    /// `Ok(None)` if the key is absent (or `null` in `config.json`); an error naming the key if its value is not
    /// a non-negative integer.
    pub fn usize_opt(&self, gguf: &str, hf: &str) -> Result<Option<usize>> {
        match &self.index.metadata {
            Metadata::Gguf(m) => m.opt_usize(&self.gguf_key(gguf)),
            Metadata::HfConfig { .. } => match self.json(hf).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_u64().and_then(|v| usize::try_from(v).ok()).map(Some).ok_or_else(|| {
                    self.error(format!("config.json has \"{hf}\": {v}, expected a non-negative integer"))
                }),
            },
        }
    }

    pub fn usize(&self, gguf: &str, hf: &str) -> Result<usize> {
        self.usize_opt(gguf, hf)?.ok_or_else(|| self.missing(gguf, hf))
    }

    /// Like [`Hparams::usize_opt`] for a number.
    pub fn f32_opt(&self, gguf: &str, hf: &str) -> Result<Option<f32>> {
        match &self.index.metadata {
            Metadata::Gguf(m) => m.opt_f32(&self.gguf_key(gguf)),
            Metadata::HfConfig { .. } => match self.json(hf).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(|v| Some(v as f32))
                    .ok_or_else(|| self.error(format!("config.json has \"{hf}\": {v}, expected a number"))),
            },
        }
    }

    pub fn f32(&self, gguf: &str, hf: &str) -> Result<f32> {
        self.f32_opt(gguf, hf)?.ok_or_else(|| self.missing(gguf, hf))
    }

    /// The RMSNorm epsilon (`default` when the file does not say): refused unless a small positive number, since
    /// a NaN, zero or negative one gives NaN logits.
    pub fn rms_eps(&self, default: f32) -> Result<f32> {
        let eps = self.f32_opt("attention.layer_norm_rms_epsilon", "rms_norm_eps")?.unwrap_or(default);
        if !(eps > 0.0 && eps < 1.0) {
            return Err(self.error(format!("RMSNorm epsilon {eps} must be a small positive number (0 < eps < 1)")));
        }
        Ok(eps)
    }

    /// A `config.json` boolean (GGUF has no key for it).
    pub fn hf_bool(&self, hf: &str) -> Option<bool> {
        self.json(hf).and_then(|v| v.as_bool())
    }

    /// A `config.json` value, for fields GGUF does not carry.
    pub fn hf_value(&self, hf: &str) -> Option<&serde_json::Value> {
        self.json(hf)
    }

    /// A GGUF metadata value by key without the `{arch}.` prefix (arrays, for example).
    pub fn gguf_value(&self, gguf: &str) -> Option<&crate::formats::gguf::GgufValue> {
        match &self.index.metadata {
            Metadata::Gguf(m) => m.get(&self.gguf_key(gguf)),
            Metadata::HfConfig { .. } => None,
        }
    }

    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::config(&self.index.path, msg)
    }

    fn missing(&self, gguf: &str, hf: &str) -> Error {
        if self.is_gguf() {
            self.error(format!("GGUF metadata lacks {}", self.gguf_key(gguf)))
        } else {
            self.error(format!("config.json lacks \"{hf}\""))
        }
    }
}

/// Bytes-read progress, drawn on stderr when asked for.
pub struct Progress {
    total: u64,
    done: u64,
    drawn_pct: Option<u64>,
    enabled: bool,
}

impl Progress {
    pub fn new(total: u64, enabled: bool) -> Progress {
        Progress { total: total.max(1), done: 0, drawn_pct: None, enabled }
    }

    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if !self.enabled {
            return;
        }
        let pct = self.done * 100 / self.total;
        if self.drawn_pct != Some(pct) {
            self.drawn_pct = Some(pct);
            let bar = "#".repeat((pct / 4) as usize);
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            let _ = write!(
                std::io::stderr(),
                "\rloading weights [{bar:<25}] {pct:3}% {:.1}/{:.1} MiB",
                mib(self.done),
                mib(self.total)
            );
        }
    }

    pub fn finish(&mut self) {
        if self.enabled && self.drawn_pct.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// The bytes a load reads: every tensor, less the routed experts when they stream.
fn load_bytes(index: &WeightIndex, opts: &LoadOptions) -> u64 {
    let streamed = |name: &str| name.contains("_exps.") || name.contains(".experts.") || name.contains("switch_mlp");
    match opts.experts {
        ExpertResidency::Stream(_) => index.tensors.iter().filter(|t| !streamed(&t.name)).map(|t| t.len).sum(),
        ExpertResidency::AllInRam => index.total_bytes(),
    }
}

/// Reads weights by GGUF-style slot (`attn_q`, `ffn_gate_exps`) through a family's table of safetensors names.
pub struct Loader<'a> {
    pub index: &'a WeightIndex,
    /// `(gguf slot, safetensors name)`, the latter with `{}` for the layer number, without `.weight`.
    hf_names: &'a [(&'a str, &'a str)],
    kernels: Kernels,
    pub progress: Progress,
    pub resident_bytes: u64,
    pub opts: LoadOptions,
    /// Large tensors are read past the page cache ([`crate::formats::bulk::direct_wanted`]).
    pub direct: bool,
    /// Where the checkpoint keeps its language model.
    nesting: Nesting,
}

/// Where a checkpoint keeps its language model: a multimodal one (`...ForConditionalGeneration`, config under
/// `text_config`) nests it beside its vision tower, which flash-moe leaves unread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nesting {
    /// A text model (and every GGUF): the family table's names.
    Text,
    /// transformers: `model.language_model.layers.N...`, with `lm_head` at the top (Qwen3.5's released
    /// checkpoints).
    Transformers,
    /// mlx-lm: everything under `language_model.` (`language_model.model.layers.N...`, `language_model.lm_head`),
    /// as its `sanitize` renames the transformers checkpoint (mlx-vlm names them the same way; its files are not
    /// tested).
    Mlx,
}

impl Nesting {
    fn of(index: &WeightIndex) -> Nesting {
        let Metadata::HfConfig { config, .. } = &index.metadata else { return Nesting::Text };
        if index.tensors.iter().any(|t| t.name.starts_with("language_model.")) {
            Nesting::Mlx
        } else if config.get("text_config").is_some() {
            Nesting::Transformers
        } else {
            Nesting::Text
        }
    }

    /// The stored name of a text model's tensor `name`.
    fn apply(self, name: String) -> String {
        match (self, name.strip_prefix("model.")) {
            (Nesting::Text, _) => name,
            (Nesting::Transformers, Some(rest)) => format!("model.language_model.{rest}"),
            (Nesting::Transformers, None) => name,
            (Nesting::Mlx, _) => format!("language_model.{name}"),
        }
    }
}

impl<'a> Loader<'a> {
    pub fn new(index: &'a WeightIndex, hf_names: &'a [(&'a str, &'a str)], opts: &LoadOptions) -> Loader<'a> {
        let bytes = load_bytes(index, opts);
        Loader {
            index,
            hf_names,
            kernels: Kernels::detect(),
            progress: Progress::new(bytes, opts.progress),
            direct: crate::formats::bulk::direct_wanted(bytes),
            resident_bytes: 0,
            opts: opts.clone(),
            nesting: Nesting::of(index),
        }
    }

    /// The stored name of `slot` (of `layer`) with suffix `weight` or `bias` (an empty suffix: none, for tensors
    /// such as GGUF `ssm_a` or safetensors `A_log`).
    pub fn name(&self, slot: &str, layer: Option<usize>, suffix: &str) -> String {
        let base = match &self.index.metadata {
            Metadata::Gguf(_) => match layer {
                Some(l) => format!("blk.{l}.{slot}"),
                None => slot.to_string(),
            },
            Metadata::HfConfig { .. } => {
                let hf = self.hf_names.iter().find(|(s, _)| *s == slot).map_or(slot, |(_, h)| *h);
                self.nesting.apply(match layer {
                    Some(l) => hf.replacen("{}", &l.to_string(), 1),
                    None => hf.to_string(),
                })
            }
        };
        if suffix.is_empty() {
            base
        } else {
            format!("{base}.{suffix}")
        }
    }

    pub fn has(&self, slot: &str, layer: Option<usize>) -> bool {
        self.index.get(&self.name(slot, layer, "weight")).is_some()
    }

    pub fn tensor(&self, slot: &str, layer: Option<usize>, suffix: &str) -> Result<&'a TensorInfo> {
        self.index.require(&self.name(slot, layer, suffix))
    }

    fn check_shape(&self, t: &TensorInfo, expected: &[usize]) -> Result<()> {
        if t.shape != expected {
            return Err(Error::Shape {
                path: self.index.path.clone(),
                tensor: t.name.clone(),
                expected: expected.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(())
    }

    /// A weight matrix `[rows, cols]` in its stored type.
    pub fn mat(&mut self, slot: &str, layer: Option<usize>, rows: usize, cols: usize) -> Result<QMat> {
        let t = self.tensor(slot, layer, "weight")?;
        self.check_shape(t, &[rows, cols])?;
        self.mat_from(t)
    }

    /// A weight matrix of `rows * cols` values whose stored shape may carry unit dimensions (`[cols]` for one
    /// row, `[rows, 1, cols]`): the shared-expert gate is `[1, n_embd]` in one file and `[n_embd]` in another.
    pub fn mat_squeezed(&mut self, slot: &str, layer: Option<usize>, rows: usize, cols: usize) -> Result<QMat> {
        let t = self.tensor(slot, layer, "weight")?;
        let squeezed: Vec<usize> = t.shape.iter().copied().filter(|&d| d != 1).collect();
        let want: Vec<usize> = [rows, cols].into_iter().filter(|&d| d != 1).collect();
        if squeezed != want {
            self.check_shape(t, &[rows, cols])?;
        }
        self.mat_from(t)
    }

    /// A matrix from a tensor already validated by the caller.
    pub fn mat_from(&mut self, t: &TensorInfo) -> Result<QMat> {
        let cols = *t.shape.last().unwrap_or(&1);
        let rows = t.n_elems() / cols.max(1);
        t.check_matmul(&self.index.path)?;
        let data = self.read(t)?;
        // An MLX weight brings its scales and biases.
        let planes = match crate::formats::mlx::planes(self.index, t)? {
            Some(p) => {
                Some(Box::new(Planes { format: p.format, scales: self.read(p.scales)?, biases: self.read(p.biases)? }))
            }
            None => None,
        };
        Ok(QMat { dtype: t.dtype, rows, cols, data, planes })
    }

    /// A tensor's bytes, counted as resident.
    fn read(&mut self, t: &TensorInfo) -> Result<AlignedBuf> {
        let mut data = AlignedBuf::zeroed(t.len as usize);
        self.index.read_large(t.file, t.offset, data.as_mut_slice(), self.direct)?;
        self.progress.add(t.len);
        self.resident_bytes += t.len;
        Ok(data)
    }

    /// A vector of `len` values (norm weights, biases), converted to f32.
    pub fn vec(&mut self, slot: &str, layer: Option<usize>, suffix: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(slot, layer, suffix)?;
        self.check_shape(t, &[len])?;
        if t.dtype.block_elems() != 1 {
            return Err(Error::BadTensorType {
                path: self.index.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype.name().into(),
                msg: "a norm or bias vector must be F32, F16 or BF16".into(),
            });
        }
        let mut raw = vec![0u8; t.len as usize];
        self.index.read_tensor(t, &mut raw)?;
        self.progress.add(t.len);
        self.resident_bytes += t.len;
        let mut out = vec![0.0f32; len];
        self.kernels.dequantize_row(t.dtype, &raw, &mut out);
        Ok(out)
    }

    /// `n` values of a tensor of any shape (a convolution's `[channels, 1, kernel]` taps), converted to f32.
    pub fn values(&mut self, slot: &str, layer: Option<usize>, suffix: &str, n: usize) -> Result<Vec<f32>> {
        let t = self.tensor(slot, layer, suffix)?;
        if t.n_elems() != n {
            return Err(Error::Shape {
                path: self.index.path.clone(),
                tensor: t.name.clone(),
                expected: vec![n],
                got: t.shape.clone(),
            });
        }
        if t.dtype.block_elems() != 1 {
            return Err(Error::BadTensorType {
                path: self.index.path.clone(),
                tensor: t.name.clone(),
                dtype: t.dtype.name().into(),
                msg: "this tensor must be F32, F16 or BF16".into(),
            });
        }
        let mut raw = vec![0u8; t.len as usize];
        self.index.read_tensor(t, &mut raw)?;
        self.progress.add(t.len);
        self.resident_bytes += t.len;
        let mut out = vec![0.0f32; n];
        self.kernels.dequantize_row(t.dtype, &raw, &mut out);
        Ok(out)
    }

    /// Like [`Loader::vec`] for a tensor that may be absent.
    pub fn vec_opt(&mut self, slot: &str, layer: Option<usize>, suffix: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.index.get(&self.name(slot, layer, suffix)).is_none() {
            return Ok(None);
        }
        self.vec(slot, layer, suffix, len).map(Some)
    }
}
