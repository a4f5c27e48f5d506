//! Where every expert's bytes are: for each MoE layer, projection and expert, one byte range of one file.
//!
//! GGUF stacks the experts of a projection in one tensor (`ffn_gate_exps`: `[n_expert, n_ff_exp, n_embd]`), so
//! expert `e` is the `e`-th contiguous slice; safetensors may store one tensor per expert. Both become the same
//! [`ProjLayout`], which the resident loader and the streaming store read through. An MLX affine projection
//! (see [`crate::formats::mlx`]) has three planes, so each of its experts is three byte ranges: the packed
//! values, the scales and the biases ([`ProjLayout::parts`]).

use kernels::{AffineFormat, DType};

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
    /// Per expert: its matrix (for an MLX affine projection, its packed plane).
    pub spans: Vec<ExpertSpan>,
    /// An MLX affine projection's scales and biases, per expert.
    pub planes: Option<PlaneSpans>,
}

/// Where the scales and biases of each expert of an MLX affine projection are.
#[derive(Clone, Debug)]
pub struct PlaneSpans {
    pub format: AffineFormat,
    pub scales: Vec<ExpertSpan>,
    pub biases: Vec<ExpertSpan>,
}

/// The `n` equal slices of a tensor stacked over experts.
fn split(t: &TensorInfo, n: usize) -> Vec<ExpertSpan> {
    let len = t.len / n as u64;
    (0..n as u64).map(|e| ExpertSpan { file: t.file, offset: t.offset + e * len, len }).collect()
}

/// The planes of a stacked MLX tensor, split per expert.
fn stacked_planes(index: &WeightIndex, t: &TensorInfo, n_expert: usize) -> Result<Option<PlaneSpans>> {
    Ok(crate::formats::mlx::planes(index, t)?.map(|p| PlaneSpans {
        format: p.format,
        scales: split(p.scales, n_expert),
        biases: split(p.biases, n_expert),
    }))
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
        let planes = stacked_planes(index, t, n_expert)?;
        Ok(ProjLayout { dtype: t.dtype, rows, cols, spans: split(t, n_expert), planes })
    }

    /// One tensor `[rows, cols]` per expert, all of one type.
    pub fn per_expert(index: &WeightIndex, ts: &[&TensorInfo], rows: usize, cols: usize) -> Result<Self> {
        let first = ts.first().ok_or_else(|| Error::Invalid("a MoE layer without experts".into()))?;
        let mut spans = Vec::with_capacity(ts.len());
        let mut planes: Option<PlaneSpans> = None;
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
            if let Some(p) = crate::formats::mlx::planes(index, t)? {
                let ps = planes.get_or_insert_with(|| PlaneSpans { format: p.format, scales: vec![], biases: vec![] });
                if ps.format != p.format {
                    return Err(Error::BadTensorType {
                        path: index.path.clone(),
                        tensor: t.name.clone(),
                        dtype: t.dtype.name().into(),
                        msg: format!("quantized as {:?}, the other experts of this layer as {:?}", p.format, ps.format),
                    });
                }
                ps.scales.push(ExpertSpan { file: p.scales.file, offset: p.scales.offset, len: p.scales.len });
                ps.biases.push(ExpertSpan { file: p.biases.file, offset: p.biases.offset, len: p.biases.len });
            }
        }
        Ok(ProjLayout { dtype: first.dtype, rows, cols, spans, planes })
    }

    /// The byte ranges of expert `e`: its matrix, or an affine matrix's packed plane, scales and biases.
    pub fn parts(&self, e: usize) -> impl Iterator<Item = ExpertSpan> + '_ {
        let planes = self.planes.iter().flat_map(move |p| [p.scales[e], p.biases[e]]);
        std::iter::once(self.spans[e]).chain(planes)
    }

    /// Ranges per expert: 1, or 3 for an MLX affine projection.
    pub fn n_parts(&self) -> usize {
        if self.planes.is_some() {
            3
        } else {
            1
        }
    }

    /// Bytes of one expert's matrix (all its planes).
    pub fn expert_bytes(&self) -> u64 {
        if self.spans.is_empty() {
            return 0;
        }
        self.parts(0).map(|s| s.len).sum()
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
