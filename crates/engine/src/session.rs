//! Per-sequence state: the KV cache, the position, and the scratch buffers of the forward pass.
//!
//! Weights are immutable and shared; everything that changes while a sequence is decoded lives here, so one
//! model can serve several sessions.

use crate::layers::attention::AttentionScratch;
use crate::layers::ffn::FfnScratch;
use crate::layers::moe::MoeScratch;
use crate::{Error, Result};

/// Keys and values of one layer, `[n_ctx, n_head_kv * head_dim]` each, in f32.
pub struct LayerKv {
    n_ctx: usize,
    kv_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl LayerKv {
    pub fn new(n_ctx: usize, kv_dim: usize) -> LayerKv {
        LayerKv { n_ctx, kv_dim, k: vec![0.0; n_ctx * kv_dim], v: vec![0.0; n_ctx * kv_dim] }
    }

    /// Like [`LayerKv::new`], `None` where the memory cannot be had (a size that overflows, or an allocation the
    /// system refuses) instead of aborting the process. Zeroed pages are only committed as they are written.
    pub fn try_new(n_ctx: usize, kv_dim: usize) -> Option<LayerKv> {
        let n = n_ctx.checked_mul(kv_dim)?;
        Some(LayerKv { n_ctx, kv_dim, k: zeroed_f32(n)?, v: zeroed_f32(n)? })
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Stores keys and values (`[n, kv_dim]`) at positions `pos0..pos0 + n`.
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        let start = pos0 * self.kv_dim;
        self.k[start..start + k.len()].copy_from_slice(k);
        self.v[start..start + v.len()].copy_from_slice(v);
    }

    pub fn k_head(&self, pos: usize, head: usize, head_dim: usize) -> &[f32] {
        let o = pos * self.kv_dim + head * head_dim;
        &self.k[o..o + head_dim]
    }

    pub fn v_head(&self, pos: usize, head: usize, head_dim: usize) -> &[f32] {
        let o = pos * self.kv_dim + head * head_dim;
        &self.v[o..o + head_dim]
    }

    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }
}

/// `n` zeros, or `None` where the allocation fails (as `vec![0.0; n]`, lazily committed, but without the abort).
fn zeroed_f32(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).ok()?;
    // SAFETY: the layout's size is not zero. A non-null result is a fresh allocation of the global allocator with
    // exactly the layout a `Vec<f32>` of capacity `n` uses, and all-zero bits are `n` valid f32 zeros, so the Vec
    // built from it owns it with length and capacity `n`.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout).cast::<f32>();
        (!p.is_null()).then(|| Vec::from_raw_parts(p, n, n))
    }
}

/// Buffers of the decoder forward pass, grown on first use and then reused.
#[derive(Default)]
pub struct Scratch {
    pub x: Vec<f32>,      // [n, n_embd] the residual stream
    pub xn: Vec<f32>,     // [n, n_embd] normed input of a block
    pub y: Vec<f32>,      // [n, n_embd] output of a block
    pub logits: Vec<f32>, // [n_out, n_vocab]
    pub attn: AttentionScratch,
    pub ffn: FfnScratch,
    pub moe: MoeScratch,
    pub head_q: crate::ops::QuantActs,
    /// Next-layer prediction (router-based prefetch).
    pub pred_x: Vec<f32>, // [n_embd] the next layer's normed input, estimated
    pub pred_logits: Vec<f32>, // [n_expert]
    pub pred_q: crate::ops::QuantActs,
    pub pred_ids: Vec<u32>,   // predicted experts, best first
    pub pred_order: Vec<u32>, // [n_expert]
}

/// One sequence being decoded.
pub struct Session {
    pub kv: Vec<LayerKv>,
    /// Tokens processed so far (the next token's position).
    pub pos: usize,
    pub n_ctx: usize,
    pub scratch: Scratch,
    /// Logits of every position of a prompt run in chunks.
    pub all_logits: Vec<f32>,
}

impl Session {
    /// A session with room for `n_ctx` tokens in every layer's KV cache.
    pub fn new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Session {
        Session {
            kv: (0..n_layer).map(|_| LayerKv::new(n_ctx, kv_dim)).collect(),
            pos: 0,
            n_ctx,
            scratch: Scratch::default(),
            all_logits: Vec::new(),
        }
    }

    /// Like [`Session::new`], but an error where the KV cache cannot be allocated (`-c 100000000000`) instead of an
    /// abort in the allocator.
    pub fn try_new(n_layer: usize, n_ctx: usize, kv_dim: usize) -> Result<Session> {
        let mut kv = Vec::with_capacity(n_layer);
        for _ in 0..n_layer {
            let layer = LayerKv::try_new(n_ctx, kv_dim).ok_or_else(|| {
                let bytes = (n_layer as u128) * (n_ctx as u128) * (kv_dim as u128) * 8;
                Error::Invalid(format!(
                    "a KV cache of {n_ctx} tokens needs {:.1} GiB ({n_layer} layers x {n_ctx} tokens x {kv_dim} \
                     values x 2 x 4 bytes), which cannot be allocated: lower --ctx-size",
                    bytes as f64 / (1u64 << 30) as f64
                ))
            })?;
            kv.push(layer);
        }
        Ok(Session { kv, pos: 0, n_ctx, scratch: Scratch::default(), all_logits: Vec::new() })
    }

    /// Fails unless `n` more tokens fit.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if self.pos + n > self.n_ctx {
            if self.pos == 0 {
                return Err(Error::PromptTooLong { n_tokens: n, n_ctx: self.n_ctx });
            }
            return Err(Error::ContextFull { n_ctx: self.n_ctx });
        }
        Ok(())
    }

    /// Forgets every token (keeps the buffers).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    pub fn kv_bytes(&self) -> usize {
        self.kv.iter().map(|l| l.bytes()).sum()
    }
}
