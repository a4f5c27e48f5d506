//! MLX model directories (what mlx-lm's `convert` writes and mlx-community publishes): safetensors files whose
//! quantized linear layers are three tensors, read through the same [`WeightIndex`] as any safetensors file.
//!
//! A quantized `X` (`nn.QuantizedLinear`, `QuantizedEmbedding`, `QuantizedSwitchLinear`) stores
//! - `X.weight`: U32 `[..., rows, cols * bits / 32]`, the packed values (see [`kernels::affine`]);
//! - `X.scales`, `X.biases`: `[..., rows, cols / group]` in the model's float type.
//!
//! `config.json`'s `quantization` says `{"group_size": G, "bits": B, "mode": "affine"}`, and for layers a
//! mixed-precision recipe or a model's `quant_predicate` set apart, `"X": {"group_size": .., "bits": ..}` (or
//! `"X": false` for a layer left in floats). The index lists `X.weight` with the packed plane's type
//! (`MLX_Q4` for 4 bits) and its logical shape `[..., rows, cols]`, so shapes check like any other weight; the
//! scales and biases stay in the index as the float tensors they are, and [`planes`] finds them. Each plane of
//! a stacked `switch_mlp` tensor is `[n_expert, ...]`, so every expert is three byte ranges per projection.
//!
//! mlx-lm also rewrites some checkpoints when converting (experts stacked under `switch_mlp`, Qwen3-Next's and
//! Qwen3.5's zero-centred norms stored as `1 + w`): [`is_mlx_layout`] tells a family which convention a file
//! follows. A multimodal checkpoint's language model (Qwen3.5) is renamed to `language_model.model.*` and
//! `language_model.lm_head`, its vision tower and multi-token-prediction head dropped; the loader's name
//! mapping (`models::loader`) finds it there.

use std::collections::HashMap;
use std::path::Path;

use kernels::{AffineFormat, DType};

use super::{TensorInfo, WeightIndex};
use crate::{Error, Result};

/// Bits and group size of one quantized layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub bits: u32,
    pub group: usize,
}

/// `config.json`'s `quantization`: the default and the per-layer overrides (`None`: the layer is not quantized).
#[derive(Clone, Debug)]
pub struct Quantization {
    default: QuantParams,
    overrides: HashMap<String, Option<QuantParams>>,
}

fn params_of(v: &serde_json::Value, what: &str, path: &Path) -> Result<QuantParams> {
    let bad = |msg: String| Error::config(path, format!("config.json quantization {what}: {msg}"));
    let mode = v.get("mode").and_then(|m| m.as_str()).unwrap_or("affine");
    if mode != "affine" {
        return Err(bad(format!(
            "mode \"{mode}\" is not supported (flash-moe reads mlx's affine quantization; mxfp4/nvfp4/mxfp8 are not \
             implemented)"
        )));
    }
    let int = |k: &str| v.get(k).and_then(|x| x.as_u64()).ok_or_else(|| bad(format!("needs an integer \"{k}\"")));
    let (bits, group) = (int("bits")?, int("group_size")?);
    if DType::mlx_affine(bits as u32).is_none() || !matches!(group, 32 | 64 | 128) {
        return Err(bad(format!(
            "bits {bits}, group_size {group}: expected bits 2-6 or 8 and groups of 32, 64 or 128"
        )));
    }
    Ok(QuantParams { bits: bits as u32, group: group as usize })
}

impl Quantization {
    /// The quantization `config.json` declares (`quantization`, or an mlx-style `quantization_config`), or
    /// `None` for an unquantized model.
    pub fn from_config(config: &serde_json::Value, path: &Path) -> Result<Option<Quantization>> {
        let q = match config.get("quantization") {
            Some(q) => q,
            None => match config.get("quantization_config") {
                // Other tools' quantization_config (GPTQ, AWQ, ...) name a quant_method; mlx-lm's does not.
                Some(q) if q.get("quant_method").is_none() && q.get("bits").is_some() => q,
                _ => return Ok(None),
            },
        };
        let obj = q.as_object().ok_or_else(|| Error::config(path, "config.json quantization is not an object"))?;
        let default = params_of(q, "(default)", path)?;
        let mut overrides = HashMap::new();
        for (k, v) in obj {
            match v {
                serde_json::Value::Object(_) => {
                    overrides.insert(k.clone(), Some(params_of(v, k, path)?));
                }
                serde_json::Value::Bool(false) => {
                    overrides.insert(k.clone(), None);
                }
                _ => {}
            }
        }
        Ok(Some(Quantization { default, overrides }))
    }

    /// The parameters of layer `module` (a tensor name without `.weight`), `None` if it is left in floats.
    pub fn params(&self, module: &str) -> Option<QuantParams> {
        match self.overrides.get(module) {
            Some(p) => *p,
            None => Some(self.default),
        }
    }

    /// The index entry for a U32 tensor of the file: its packed-plane type and logical shape.
    pub(crate) fn packed(&self, name: &str, raw_shape: &[usize], path: &Path) -> Result<(DType, Vec<usize>)> {
        let err = |msg: String| Error::format(path, format!("tensor '{name}': {msg}"));
        let module = name
            .strip_suffix(".weight")
            .ok_or_else(|| err("a U32 tensor that is not a quantized layer's .weight".into()))?;
        let p = self.params(module).ok_or_else(|| {
            err("config.json's quantization leaves this layer unquantized, but its weight is packed U32".into())
        })?;
        let (Some(&last), true) = (raw_shape.last(), raw_shape.len() >= 2) else {
            return Err(err(format!("packed weight of shape {raw_shape:?}: expected [..., rows, packed columns]")));
        };
        let cols = last * 32 / p.bits as usize;
        if !(last * 32).is_multiple_of(p.bits as usize) || !cols.is_multiple_of(p.group) {
            return Err(err(format!(
                "{last} packed words do not hold whole groups of {} {}-bit values",
                p.group, p.bits
            )));
        }
        let mut shape = raw_shape.to_vec();
        *shape.last_mut().expect("len >= 2") = cols;
        Ok((DType::mlx_affine(p.bits).expect("validated bits"), shape))
    }
}

/// The scales and biases of an MLX-quantized weight, and its format.
#[derive(Clone, Copy, Debug)]
pub struct Planes<'a> {
    pub format: AffineFormat,
    pub scales: &'a TensorInfo,
    pub biases: &'a TensorInfo,
}

/// The planes of `t` if it is an MLX packed weight (`None` for any other tensor); an error if they are missing
/// or do not fit (every MLX weight was checked by [`check_planes`] when the index was opened).
pub fn planes<'a>(index: &'a WeightIndex, t: &TensorInfo) -> Result<Option<Planes<'a>>> {
    let Some(bits) = t.dtype.affine_bits() else { return Ok(None) };
    let module = t.name.strip_suffix(".weight").unwrap_or(&t.name);
    let scales = index.require(&format!("{module}.scales"))?;
    let biases = index.require(&format!("{module}.biases"))?;
    let err = |msg: String| Error::format(&index.path, format!("MLX weight '{}': {msg}", t.name));
    let cols = *t.shape.last().unwrap_or(&0);
    let n_groups = *scales.shape.last().unwrap_or(&0);
    if n_groups == 0 || !cols.is_multiple_of(n_groups) {
        return Err(err(format!("{cols} columns do not split into {n_groups} groups")));
    }
    let group = cols / n_groups;
    let format = AffineFormat::new(bits, group, scales.dtype).ok_or_else(|| {
        err(format!("group size {group} with {} scales is not an mlx affine format", scales.dtype.name()))
    })?;
    let mut want = t.shape.clone();
    *want.last_mut().unwrap_or(&mut 0) = n_groups;
    for p in [scales, biases] {
        if p.shape != want || p.dtype != scales.dtype {
            return Err(err(format!(
                "{} is {} {:?}, expected {} {want:?} (as {})",
                p.name,
                p.dtype.name(),
                p.shape,
                scales.dtype.name(),
                scales.name
            )));
        }
    }
    Ok(Some(Planes { format, scales, biases }))
}

/// Checks every MLX weight of the index against its planes and `config.json`'s group size.
pub fn check_planes(index: &WeightIndex, q: &Quantization) -> Result<()> {
    for t in &index.tensors {
        if let Some(p) = planes(index, t)? {
            let module = t.name.strip_suffix(".weight").unwrap_or(&t.name);
            let declared = q.params(module).map(|p| p.group);
            if declared != Some(p.format.group) {
                return Err(Error::format(
                    &index.path,
                    format!(
                        "MLX weight '{}': its scales make groups of {}, config.json's quantization says {:?}",
                        t.name, p.format.group, declared
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether the files follow mlx-lm's conventions (quantized, or experts stacked under `switch_mlp`): then
/// zero-centred norms are stored as `1 + w`, as mlx-lm's converter writes them.
pub fn is_mlx_layout(index: &WeightIndex) -> bool {
    let quantized = match &index.metadata {
        super::Metadata::HfConfig { config, .. } => config.get("quantization").is_some(),
        super::Metadata::Gguf(_) => return false,
    };
    quantized || index.tensors.iter().any(|t| t.name.contains(".switch_mlp."))
}
