//! What every family's loader shares: reading hyper-parameters from GGUF metadata or `config.json`
//! ([`Hparams`]), and reading weights by GGUF-style slot names through a family's name table ([`Loader`]),
//! validating each tensor's shape and type so the forward pass can trust them.

use std::io::{IsTerminal, Write};

use kernels::Kernels;

use crate::formats::{Metadata, TensorInfo, WeightIndex};
use crate::tensor::{AlignedBuf, QMat};
use crate::{Error, Result};

/// Options of [`crate::models::Model::load`].
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Where the routed experts live.
    pub experts: ExpertResidency,
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
                // transformers 5 moved rope_theta into rope_parameters.
                config.get(hf).or_else(|| config.get("rope_parameters").and_then(|r| r.get(hf)))
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

/// Bytes-read progress, drawn on stderr when it is a terminal.
pub struct Progress {
    total: u64,
    done: u64,
    drawn_pct: Option<u64>,
    enabled: bool,
}

impl Progress {
    pub fn new(total: u64, enabled: bool) -> Progress {
        Progress { total: total.max(1), done: 0, drawn_pct: None, enabled: enabled && std::io::stderr().is_terminal() }
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

/// Reads weights by GGUF-style slot (`attn_q`, `ffn_gate_exps`) through a family's table of safetensors names.
pub struct Loader<'a> {
    pub index: &'a WeightIndex,
    /// `(gguf slot, safetensors name)`, the latter with `{}` for the layer number, without `.weight`.
    hf_names: &'a [(&'a str, &'a str)],
    kernels: Kernels,
    pub progress: Progress,
    pub resident_bytes: u64,
    pub opts: LoadOptions,
}

impl<'a> Loader<'a> {
    pub fn new(index: &'a WeightIndex, hf_names: &'a [(&'a str, &'a str)], opts: &LoadOptions) -> Loader<'a> {
        Loader {
            index,
            hf_names,
            kernels: Kernels::detect(),
            progress: Progress::new(index.total_bytes(), opts.progress),
            resident_bytes: 0,
            opts: opts.clone(),
        }
    }

    /// The stored name of `slot` (of `layer`) with suffix `weight` or `bias`.
    pub fn name(&self, slot: &str, layer: Option<usize>, suffix: &str) -> String {
        match &self.index.metadata {
            Metadata::Gguf(_) => match layer {
                Some(l) => format!("blk.{l}.{slot}.{suffix}"),
                None => format!("{slot}.{suffix}"),
            },
            Metadata::HfConfig { .. } => {
                let hf = self.hf_names.iter().find(|(s, _)| *s == slot).map_or(slot, |(_, h)| *h);
                let base = match layer {
                    Some(l) => hf.replacen("{}", &l.to_string(), 1),
                    None => hf.to_string(),
                };
                format!("{base}.{suffix}")
            }
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

    /// A matrix from a tensor already validated by the caller.
    pub fn mat_from(&mut self, t: &TensorInfo) -> Result<QMat> {
        let cols = *t.shape.last().unwrap_or(&1);
        let rows = t.n_elems() / cols.max(1);
        t.check_matmul(&self.index.path)?;
        let mut data = AlignedBuf::zeroed(t.len as usize);
        self.index.read_tensor(t, data.as_mut_slice())?;
        self.progress.add(t.len);
        self.resident_bytes += t.len;
        Ok(QMat { dtype: t.dtype, rows, cols, data })
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

    /// Like [`Loader::vec`] for a tensor that may be absent.
    pub fn vec_opt(&mut self, slot: &str, layer: Option<usize>, suffix: &str, len: usize) -> Result<Option<Vec<f32>>> {
        if self.index.get(&self.name(slot, layer, suffix)).is_none() {
            return Ok(None);
        }
        self.vec(slot, layer, suffix, len).map(Some)
    }
}
