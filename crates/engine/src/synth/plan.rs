//! Which tensors a synthetic model has, in file order, with their types and shapes: the layout llama.cpp's
//! converter writes for `qwen3moe` (every layer attention + routed experts) and `qwen3next` (three gated-DeltaNet
//! layers of four, gated attention in the fourth, routed experts plus a shared expert in every layer).

use kernels::DType;

use crate::formats::gguf::GGUF_DEFAULT_ALIGNMENT;

use super::{QuantMix, ShapeParams};

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
    /// Qwen3-Next's norm before the feed-forward block.
    PostAttentionNorm,
    AttnQkv,
    AttnGate,
    SsmBa,
    SsmConv1d,
    SsmA,
    SsmDt,
    SsmNorm,
    SsmOut,
    FfnGateInp,
    FfnGateExps,
    FfnUpExps,
    FfnDownExps,
    FfnGateInpShexp,
    FfnGateShexp,
    FfnUpShexp,
    FfnDownShexp,
    OutputNorm,
    Output,
}

impl Kind {
    pub(crate) fn slot(self) -> &'static str {
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
            Kind::PostAttentionNorm => "post_attention_norm",
            Kind::AttnQkv => "attn_qkv",
            Kind::AttnGate => "attn_gate",
            Kind::SsmBa => "ssm_ba",
            Kind::SsmConv1d => "ssm_conv1d",
            Kind::SsmA => "ssm_a",
            Kind::SsmDt => "ssm_dt",
            Kind::SsmNorm => "ssm_norm",
            Kind::SsmOut => "ssm_out",
            Kind::FfnGateInp => "ffn_gate_inp",
            Kind::FfnGateExps => "ffn_gate_exps",
            Kind::FfnUpExps => "ffn_up_exps",
            Kind::FfnDownExps => "ffn_down_exps",
            Kind::FfnGateInpShexp => "ffn_gate_inp_shexp",
            Kind::FfnGateShexp => "ffn_gate_shexp",
            Kind::FfnUpShexp => "ffn_up_shexp",
            Kind::FfnDownShexp => "ffn_down_shexp",
            Kind::OutputNorm => "output_norm",
            Kind::Output => "output",
        }
    }

    /// The name's suffix: `weight`, except `ssm_a` (none) and `ssm_dt` (`bias`), as the converter writes them.
    fn suffix(self) -> &'static str {
        match self {
            Kind::SsmA => "",
            Kind::SsmDt => ".bias",
            _ => ".weight",
        }
    }

    /// Kept in F32 whatever the mix (llama-quantize leaves vectors, the router and the convolution alone).
    pub(crate) fn is_f32(self) -> bool {
        matches!(
            self,
            Kind::AttnNorm
                | Kind::AttnQNorm
                | Kind::AttnKNorm
                | Kind::FfnNorm
                | Kind::PostAttentionNorm
                | Kind::OutputNorm
                | Kind::FfnGateInp
                | Kind::FfnGateInpShexp
                | Kind::SsmConv1d
                | Kind::SsmA
                | Kind::SsmDt
                | Kind::SsmNorm
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
    let e = p.n_embd;
    let (q_dim, kv_dim) = (p.n_head * p.head_dim, p.n_head_kv * p.head_dim);
    let t = |kind: Kind, layer: Option<usize>, shape: Vec<usize>| PlannedTensor {
        name: match layer {
            Some(l) => format!("blk.{l}.{}{}", kind.slot(), kind.suffix()),
            None => format!("{}{}", kind.slot(), kind.suffix()),
        },
        kind,
        layer,
        dtype: q.dtype(kind, layer.unwrap_or(0), n),
        shape,
    };
    let mut out = vec![t(Kind::TokenEmbd, None, vec![p.n_vocab, e])];
    for l in 0..n {
        let l_ = Some(l);
        out.push(t(Kind::AttnNorm, l_, vec![e]));
        match &p.hybrid {
            None => {
                out.extend([
                    t(Kind::AttnQ, l_, vec![q_dim, e]),
                    t(Kind::AttnK, l_, vec![kv_dim, e]),
                    t(Kind::AttnV, l_, vec![kv_dim, e]),
                    t(Kind::AttnOutput, l_, vec![e, q_dim]),
                    t(Kind::AttnQNorm, l_, vec![p.head_dim]),
                    t(Kind::AttnKNorm, l_, vec![p.head_dim]),
                    t(Kind::FfnNorm, l_, vec![e]),
                ]);
            }
            Some(h) if h.is_recurrent(l) => {
                let (conv_dim, value_dim) = (h.conv_dim(), h.n_v_heads * h.d_v);
                out.extend([
                    t(Kind::AttnQkv, l_, vec![conv_dim, e]),
                    t(Kind::AttnGate, l_, vec![value_dim, e]),
                    t(Kind::SsmBa, l_, vec![2 * h.n_v_heads, e]),
                    t(Kind::SsmConv1d, l_, vec![conv_dim, h.conv_kernel]),
                    t(Kind::SsmA, l_, vec![h.n_v_heads]),
                    t(Kind::SsmDt, l_, vec![h.n_v_heads]),
                    t(Kind::SsmNorm, l_, vec![h.d_v]),
                    t(Kind::SsmOut, l_, vec![e, value_dim]),
                    t(Kind::PostAttentionNorm, l_, vec![e]),
                ]);
            }
            Some(_) => {
                out.extend([
                    t(Kind::AttnQ, l_, vec![2 * q_dim, e]),
                    t(Kind::AttnK, l_, vec![kv_dim, e]),
                    t(Kind::AttnV, l_, vec![kv_dim, e]),
                    t(Kind::AttnOutput, l_, vec![e, q_dim]),
                    t(Kind::AttnQNorm, l_, vec![p.head_dim]),
                    t(Kind::AttnKNorm, l_, vec![p.head_dim]),
                    t(Kind::PostAttentionNorm, l_, vec![e]),
                ]);
            }
        }
        out.extend([
            t(Kind::FfnGateInp, l_, vec![p.n_expert, e]),
            t(Kind::FfnGateExps, l_, vec![p.n_expert, p.n_ff_exp, e]),
            t(Kind::FfnUpExps, l_, vec![p.n_expert, p.n_ff_exp, e]),
            t(Kind::FfnDownExps, l_, vec![p.n_expert, e, p.n_ff_exp]),
        ]);
        if let Some(h) = &p.hybrid {
            out.extend([
                t(Kind::FfnGateInpShexp, l_, vec![e]),
                t(Kind::FfnGateShexp, l_, vec![h.n_ff_shexp, e]),
                t(Kind::FfnUpShexp, l_, vec![h.n_ff_shexp, e]),
                t(Kind::FfnDownShexp, l_, vec![e, h.n_ff_shexp]),
            ]);
        }
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
