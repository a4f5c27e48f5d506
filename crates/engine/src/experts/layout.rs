//! Where every expert's bytes are: for each MoE layer, projection and expert, one byte range of one file.
//!
//! GGUF stacks the experts of a projection in one tensor (`ffn_gate_exps`: `[n_expert, n_ff_exp, n_embd]`), so
//! expert `e` is the `e`-th contiguous slice; safetensors may store one tensor per expert. Both become the same
//! [`ProjLayout`], which the resident loader and the streaming store read through.

use kernels::DType;

use crate::formats::{TensorInfo, WeightIndex};
use crate::{Error, Result};

/// A byte range in one of the model's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertSpan {
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// One projection (gate, up or down) of every expert of a layer.
#[derive(Clone, Debug)]
pub struct ProjLayout {
    pub dtype: DType,
    /// Rows and columns of one expert's matrix.
    pub rows: usize,
    pub cols: usize,
    /// Per expert.
    pub spans: Vec<ExpertSpan>,
}

impl ProjLayout {
    /// A stacked tensor `[n_expert, rows, cols]`.
    pub fn stacked(index: &WeightIndex, t: &TensorInfo, n_expert: usize, rows: usize, cols: usize) -> Result<Self> {
        let expected = vec![n_expert, rows, cols];
        if t.shape != expected {
            return Err(Error::Shape {
                path: index.path.clone(),
                tensor: t.name.clone(),
                expected,
                got: t.shape.clone(),
            });
        }
        t.check_matmul(&index.path)?;
        let len = t.len / n_expert as u64;
        let spans =
            (0..n_expert as u64).map(|e| ExpertSpan { file: t.file, offset: t.offset + e * len, len }).collect();
        Ok(ProjLayout { dtype: t.dtype, rows, cols, spans })
    }

    /// One tensor `[rows, cols]` per expert, all of one type.
    pub fn per_expert(index: &WeightIndex, ts: &[&TensorInfo], rows: usize, cols: usize) -> Result<Self> {
        let first = ts.first().ok_or_else(|| Error::Invalid("a MoE layer without experts".into()))?;
        let mut spans = Vec::with_capacity(ts.len());
        for t in ts {
            if t.shape != [rows, cols] {
                return Err(Error::Shape {
                    path: index.path.clone(),
                    tensor: t.name.clone(),
                    expected: vec![rows, cols],
                    got: t.shape.clone(),
                });
            }
            t.check_matmul(&index.path)?;
            if t.dtype != first.dtype {
                return Err(Error::BadTensorType {
                    path: index.path.clone(),
                    tensor: t.name.clone(),
                    dtype: t.dtype.name().into(),
                    msg: format!("the other experts of this layer are {}", first.dtype.name()),
                });
            }
            spans.push(ExpertSpan { file: t.file, offset: t.offset, len: t.len });
        }
        Ok(ProjLayout { dtype: first.dtype, rows, cols, spans })
    }

    pub fn expert_bytes(&self) -> u64 {
        self.spans.first().map_or(0, |s| s.len)
    }
}

/// Gate, up and down of every expert of one MoE layer.
#[derive(Clone, Debug)]
pub struct LayerExperts {
    pub gate: ProjLayout,
    pub up: ProjLayout,
    pub down: ProjLayout,
}

impl LayerExperts {
    pub fn projs(&self) -> [&ProjLayout; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// Bytes of one expert (its three matrices).
    pub fn expert_bytes(&self) -> u64 {
        self.projs().iter().map(|p| p.expert_bytes()).sum()
    }
}

/// The experts of a model, by layer (`None` for a layer without experts).
#[derive(Clone, Debug, Default)]
pub struct ExpertLayout {
    pub n_expert: usize,
    pub layers: Vec<Option<LayerExperts>>,
}

impl ExpertLayout {
    pub fn n_moe_layers(&self) -> usize {
        self.layers.iter().flatten().count()
    }

    /// Bytes of all experts of all layers.
    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().flatten().map(|l| l.expert_bytes() * self.n_expert as u64).sum()
    }
}
