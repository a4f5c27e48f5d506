//! The pre-norm decoder shared by the Llama and Qwen3 families (dense and MoE):
//!
//! ```text
//! x = embed(tokens)
//! for each layer:  x = x + attention(rms_norm(x))
//!                  x = x + ffn_or_moe(rms_norm(x))
//! logits = output(rms_norm(x))
//! ```
//!
//! The family files decide the options (q/k norms, biases, RoPE style, which layers are MoE) and the names;
//! this file holds the weights and the forward pass.

use kernels::Kernels;

use crate::approx::ApproxMode;
use crate::experts::budget::MemoryPlan;
use crate::experts::cache::{CacheConfig, ExpertCache, Prefetch};
use crate::experts::io::IoEngine;
use crate::experts::resident::ResidentExperts;
use crate::experts::store::ExpertStore;
use crate::experts::{ExpertLayout, ExpertProvider, LayerExperts, ProjLayout};
use crate::formats::WeightIndex;
use crate::layers::attention::{self, AttentionShape, AttentionWeights};
use crate::layers::ffn::{self, FfnWeights};
use crate::layers::moe::{self, MoeRouting, MoeWeights, RouteHook, RouteOverrides};
use crate::models::loader::ExpertResidency;
use crate::models::loader::Loader;
use crate::models::{Logits, ModelInfo, Numerics};
use crate::ops::{self, Cpu};
use crate::session::Session;
use crate::tensor::QMat;
use crate::{Error, Result};

/// The numbers that shape a decoder.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ctx_train: usize,
    pub rms_eps: f32,
    pub attn: AttentionShape,
    /// Intermediate size of dense feed-forward layers.
    pub n_ff: usize,
    /// Routing of the MoE layers, if any.
    pub moe: Option<MoeRouting>,
    /// Intermediate size of one expert.
    pub n_ff_exp: usize,
    /// Per layer: whether it is a MoE layer.
    pub moe_layers: Vec<bool>,
    /// q/k/v biases (Qwen2-style).
    pub attn_bias: bool,
    /// Per-head RMSNorm of q and k (Qwen3).
    pub qk_norm: bool,
    /// The output projection is the token embedding.
    pub tied_embeddings: bool,
}

#[derive(Debug)]
pub(crate) enum FeedForward {
    Dense(FfnWeights),
    Moe(MoeWeights),
}

#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>, // [n_embd]
    pub(crate) attn: AttentionWeights,
    pub(crate) ffn_norm: Vec<f32>, // [n_embd]
    pub(crate) ffn: FeedForward,
}

/// Weights of a decoder plus the source of its experts.
pub struct Decoder {
    pub info: ModelInfo,
    pub cfg: DecoderConfig,
    pub(crate) token_embd: QMat, // [n_vocab, n_embd]
    pub(crate) layers: Vec<Layer>,
    pub(crate) output_norm: Vec<f32>, // [n_embd]
    pub(crate) output: Option<QMat>,  // [n_vocab, n_embd]; None: tied to token_embd
    kernels: Kernels,
    pub expert_layout: ExpertLayout,
    pub experts: Box<dyn ExpertProvider + Send>,
    /// How the memory budget was split (streaming mode only).
    pub plan: Option<MemoryPlan>,
    /// Route recording or replay (off by default).
    pub route_hook: Option<std::sync::Arc<dyn RouteHook>>,
    /// Approximate expert selection (off by default; see [`crate::approx`]).
    pub approx: Option<ApproxMode>,
    /// With [`Prefetch::Router`]: while layer `l` runs, the next MoE layer's router applied to layer `l`'s MoE
    /// input residual (through the next layer's `ffn_norm`) predicts its experts, which are prefetched.
    pub prefetch: Prefetch,
    /// Whose float arithmetic the forward pass reproduces (see [`Numerics`]).
    pub numerics: Numerics,
}

impl Decoder {
    /// Reads every weight named by the family's table; experts are described by an [`ExpertLayout`] and read by
    /// the resident provider.
    pub fn load(mut ld: Loader<'_>, cfg: DecoderConfig, mut info: ModelInfo) -> Result<Decoder> {
        let (e, a) = (cfg.n_embd, &cfg.attn);
        let q_dim = a.n_head * a.head_dim;
        let kv_dim = a.n_head_kv * a.head_dim;
        let token_embd = ld.mat("token_embd", None, cfg.n_vocab, e)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        let mut expert_layout = ExpertLayout { n_expert: cfg.moe.as_ref().map_or(0, |m| m.n_expert), layers: vec![] };
        for l in 0..cfg.n_layer {
            let l_ = Some(l);
            let bias = |ld: &mut Loader<'_>, slot: &str, n: usize| -> Result<Option<Vec<f32>>> {
                if cfg.attn_bias {
                    ld.vec(slot, l_, "bias", n).map(Some)
                } else {
                    ld.vec_opt(slot, l_, "bias", n)
                }
            };
            let attn = AttentionWeights {
                wq: ld.mat("attn_q", l_, q_dim, e)?,
                wk: ld.mat("attn_k", l_, kv_dim, e)?,
                wv: ld.mat("attn_v", l_, kv_dim, e)?,
                wo: ld.mat("attn_output", l_, e, q_dim)?,
                bq: bias(&mut ld, "attn_q", q_dim)?,
                bk: bias(&mut ld, "attn_k", kv_dim)?,
                bv: bias(&mut ld, "attn_v", kv_dim)?,
                q_norm: if cfg.qk_norm { Some(ld.vec("attn_q_norm", l_, "weight", a.head_dim)?) } else { None },
                k_norm: if cfg.qk_norm { Some(ld.vec("attn_k_norm", l_, "weight", a.head_dim)?) } else { None },
            };
            let (ffn, experts) = match (&cfg.moe, cfg.moe_layers[l]) {
                (Some(m), true) => {
                    let router = ld.mat("ffn_gate_inp", l_, m.n_expert, e)?;
                    let layout = expert_layer_layout(&ld, l, m.n_expert, cfg.n_ff_exp, e)?;
                    (FeedForward::Moe(MoeWeights { router }), Some(layout))
                }
                _ => {
                    let w = FfnWeights {
                        gate: ld.mat("ffn_gate", l_, cfg.n_ff, e)?,
                        up: ld.mat("ffn_up", l_, cfg.n_ff, e)?,
                        down: ld.mat("ffn_down", l_, e, cfg.n_ff)?,
                    };
                    (FeedForward::Dense(w), None)
                }
            };
            expert_layout.layers.push(experts);
            layers.push(Layer {
                attn_norm: ld.vec("attn_norm", l_, "weight", e)?,
                attn,
                ffn_norm: ld.vec("ffn_norm", l_, "weight", e)?,
                ffn,
            });
        }
        let output_norm = ld.vec("output_norm", None, "weight", e)?;
        let output = if cfg.tied_embeddings || !ld.has("output", None) {
            None
        } else {
            Some(ld.mat("output", None, cfg.n_vocab, e)?)
        };
        info.resident_bytes = ld.resident_bytes;
        let index = ld.index;
        let mut progress = std::mem::replace(&mut ld.progress, super::loader::Progress::new(0, false));
        let mut plan = None;
        let mut prefetch = Prefetch::Off;
        let experts: Box<dyn ExpertProvider + Send> = match &ld.opts.experts {
            ExpertResidency::Stream(so) if expert_layout.n_moe_layers() > 0 => {
                progress.finish();
                let store = ExpertStore::open(index, &expert_layout)?;
                let kv_bytes =
                    (cfg.n_layer as u64).saturating_mul(so.n_ctx as u64).saturating_mul(info.kv_dim as u64 * 8);
                let scratch = scratch_bytes(&cfg, so.n_ctx, so.n_threads);
                let min_slots = cfg.moe.as_ref().map_or(1, |m| m.n_expert_used);
                let mut p = MemoryPlan::new(
                    so.budget,
                    info.resident_bytes,
                    kv_bytes,
                    scratch,
                    store.slot_classes().clone(),
                    expert_layout.n_expert,
                    min_slots,
                )?;
                let (n_slots, class_slots) = match so.n_slots {
                    Some(n) => (n, None),
                    None => (p.n_slots, Some(p.class_slots.clone())),
                };
                // The resident weights were read through the page cache; a memory cgroup charges it, so drop it.
                drop_page_cache(index);
                let cfg = CacheConfig { n_slots, class_slots, io_threads: so.io_threads, io_engine: so.io_engine };
                let cache = ExpertCache::new(store, &cfg)?;
                cache.set_n_expert_used(min_slots);
                cache.set_prefetch(so.prefetch, min_slots);
                prefetch = so.prefetch;
                p.io_engine = match cache.io_engine() {
                    IoEngine::Uring => "io_uring".into(),
                    IoEngine::Threads => format!("{} pread threads", so.io_threads),
                };
                plan = Some(p);
                Box::new(cache)
            }
            _ => {
                let experts = ResidentExperts::load(index, &expert_layout, &mut |b| progress.add(b))?;
                progress.finish();
                Box::new(experts)
            }
        };
        Ok(Decoder {
            numerics: Numerics::Native,
            route_hook: None,
            approx: None,
            prefetch,
            plan,
            info,
            cfg,
            token_embd,
            layers,
            output_norm,
            output,
            kernels: Kernels::detect(),
            expert_layout,
            experts,
        })
    }

    /// Runs `tokens` at the session's position in chunks of at most [`N_BATCH`]; see
    /// [`crate::models::Model::forward`].
    pub fn forward<'s>(&self, cpu: &Cpu, sess: &'s mut Session, tokens: &[u32], want: Logits) -> Result<&'s [f32]> {
        // Numerics::Ggml runs a prompt as one batch, as llama.cpp's reference did.
        if tokens.len() <= N_BATCH || self.numerics == Numerics::Ggml {
            return self.forward_batch(cpu, sess, tokens, want);
        }
        sess.check_room(tokens.len())?;
        let mut all = std::mem::take(&mut sess.all_logits);
        all.clear();
        let n_chunks = tokens.len().div_ceil(N_BATCH);
        for (i, c) in tokens.chunks(N_BATCH).enumerate() {
            let w = match want {
                Logits::All => Logits::All,
                _ if i + 1 == n_chunks => Logits::Last,
                _ => Logits::None,
            };
            let out = self.forward_batch(cpu, sess, c, w)?;
            if want == Logits::All {
                all.extend_from_slice(out);
            }
        }
        sess.all_logits = all;
        Ok(if want == Logits::All { &sess.all_logits } else { &sess.scratch.logits })
    }

    fn forward_batch<'s>(&self, cpu: &Cpu, sess: &'s mut Session, tokens: &[u32], want: Logits) -> Result<&'s [f32]> {
        if self.numerics == Numerics::Ggml {
            return super::ggml_forward::forward(self, cpu, sess, tokens, want);
        }
        let cfg = &self.cfg;
        let n = tokens.len();
        let e = cfg.n_embd;
        if n == 0 {
            return Err(Error::EmptyPrompt);
        }
        sess.check_room(n)?;
        let pos0 = sess.pos;
        let s = &mut sess.scratch;
        s.x.resize(n * e, 0.0);
        s.xn.resize(n * e, 0.0);
        s.y.resize(n * e, 0.0);
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= cfg.n_vocab {
                return Err(Error::TokenOutOfRange { id, n_vocab: cfg.n_vocab });
            }
            self.kernels.dequantize_row(
                self.token_embd.dtype,
                self.token_embd.as_ref().row(id as usize),
                &mut s.x[t * e..(t + 1) * e],
            );
        }

        ops::tap("embd", None, &s.x);
        for (l, layer) in self.layers.iter().enumerate() {
            ops::rms_norm_into(&s.x, &layer.attn_norm, cfg.rms_eps, &mut s.xn);
            ops::tap("attn_norm", Some(l), &s.xn);
            attention::attention(cpu, &layer.attn, &cfg.attn, &mut sess.kv[l], &s.xn, pos0, &mut s.attn, &mut s.y);
            ops::tap("attn_out", Some(l), &s.y);
            ops::add(&mut s.x, &s.y);
            ops::tap("ffn_inp", Some(l), &s.x);

            ops::rms_norm_into(&s.x, &layer.ffn_norm, cfg.rms_eps, &mut s.xn);
            ops::tap("ffn_norm", Some(l), &s.xn);
            match &layer.ffn {
                FeedForward::Dense(w) => ffn::ffn(cpu, w, &s.xn, &mut s.ffn, &mut s.y),
                FeedForward::Moe(w) => {
                    let routing = cfg.moe.as_ref().expect("MoE layer has routing");
                    let next = if self.prefetch == Prefetch::Router && n == 1 {
                        self.predict_next(cpu, l, routing, s)
                    } else {
                        None
                    };
                    moe::moe(
                        cpu,
                        w,
                        routing,
                        &*self.experts,
                        l,
                        (pos0, RouteOverrides { hook: self.route_hook.as_deref(), approx: self.approx.as_ref() }),
                        next.map(|l2| (l2, &s.pred_ids[..])),
                        &s.xn,
                        &mut s.moe,
                        &mut s.y,
                    )?
                }
            }
            ops::tap("ffn_out", Some(l), &s.y);
            ops::add(&mut s.x, &s.y);
            ops::tap("l_out", Some(l), &s.x);
        }
        sess.pos += n;

        let rows = match want {
            Logits::Last => &s.x[(n - 1) * e..],
            Logits::All => &s.x[..],
            Logits::None => return Ok(&[]),
        };
        s.xn.resize(rows.len(), 0.0);
        ops::rms_norm_into(rows, &self.output_norm, cfg.rms_eps, &mut s.xn);
        let out = self.output.as_ref().unwrap_or(&self.token_embd);
        s.logits.resize(rows.len() / e * cfg.n_vocab, 0.0);
        ops::matmul_f32(cpu, out.as_ref(), &s.xn, &mut s.head_q, &mut s.logits);
        Ok(&s.logits)
    }
}

impl Decoder {
    /// Router-based prediction: the next MoE layer's router applied to this layer's MoE input residual (`s.x`,
    /// one token) through the next layer's `ffn_norm`: its top `PREDICTED_PER_USED * k` experts into `s.pred_ids`, to
    /// prefetch;
    /// returns that layer. Only decides what is read early, never a result.
    fn predict_next(
        &self,
        cpu: &Cpu,
        l: usize,
        routing: &MoeRouting,
        s: &mut crate::session::Scratch,
    ) -> Option<usize> {
        let Some((l2, FeedForward::Moe(w2))) = self
            .layers
            .iter()
            .enumerate()
            .skip(l + 1)
            .map(|(i, x)| (i, &x.ffn))
            .find(|(_, f)| matches!(f, FeedForward::Moe(_)))
        else {
            return None;
        };
        s.pred_x.resize(self.cfg.n_embd, 0.0);
        ops::rms_norm_into(&s.x, &self.layers[l2].ffn_norm, self.cfg.rms_eps, &mut s.pred_x);
        s.pred_logits.resize(routing.n_expert, 0.0);
        ops::matmul_f32(cpu, w2.router.as_ref(), &s.pred_x, &mut s.pred_q, &mut s.pred_logits);
        s.pred_order.clear();
        s.pred_order.extend(0..routing.n_expert as u32);
        let logits = &s.pred_logits;
        s.pred_order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        s.pred_ids.clear();
        s.pred_ids.extend(s.pred_order.iter().take(crate::experts::cache::PREDICTED_PER_USED * routing.n_expert_used));
        Some(l2)
    }
}

/// The experts of layer `l`: GGUF's stacked `ffn_*_exps`, or one safetensors tensor per expert.
fn expert_layer_layout(ld: &Loader<'_>, l: usize, n_expert: usize, n_ff: usize, n_embd: usize) -> Result<LayerExperts> {
    let index = ld.index;
    let proj = |stacked: &str, per_expert: &str, rows: usize, cols: usize| -> Result<ProjLayout> {
        if let Ok(t) = ld.tensor(stacked, Some(l), "weight") {
            return ProjLayout::stacked(index, t, n_expert, rows, cols);
        }
        let ts: Vec<_> = (0..n_expert)
            .map(|x| ld.index.require(&ld.name(per_expert, Some(l), "weight").replacen("{e}", &x.to_string(), 1)))
            .collect::<Result<_>>()?;
        ProjLayout::per_expert(index, &ts, rows, cols)
    };
    Ok(LayerExperts {
        gate: proj("ffn_gate_exps", "ffn_gate_exp.{e}", n_ff, n_embd)?,
        up: proj("ffn_up_exps", "ffn_up_exp.{e}", n_ff, n_embd)?,
        down: proj("ffn_down_exps", "ffn_down_exp.{e}", n_embd, n_ff)?,
    })
}

/// Prompt tokens run through the layers at once; longer prompts are split (results do not depend on it).
pub const N_BATCH: usize = 64;

/// Bytes of the forward pass's scratch buffers for a batch of [`N_BATCH`] tokens (an upper estimate).
pub fn scratch_bytes(cfg: &DecoderConfig, n_ctx: usize, n_threads: usize) -> u64 {
    let b = N_BATCH;
    let a = &cfg.attn;
    let q_dim = a.n_head * a.head_dim;
    let kv_dim = a.n_head_kv * a.head_dim;
    let (n_expert, k) = cfg.moe.as_ref().map_or((0, 0), |m| (m.n_expert, m.n_expert_used));
    let n_ff = cfg.n_ff.max(cfg.n_ff_exp);
    let floats = b * cfg.n_embd * 6          // residual, normed input, block output, gathered rows, expert output
        + b * (2 * q_dim + 2 * kv_dim)       // q, k, v, attention output
        + n_threads.saturating_mul(n_ctx)    // attention scores
        + b * (n_expert + k * cfg.n_embd)    // router logits, per-slot expert outputs
        + b * 2 * n_ff                       // gate and up
        + b * cfg.n_vocab; // logits
                           // Quantized copies of activations are at most as large again as the f32 rows they come from.
    (floats as u64).saturating_mul(4 * 2)
}

/// Asks the kernel to drop the model files' cached pages.
fn drop_page_cache(index: &WeightIndex) {
    use std::os::fd::AsRawFd;
    for f in &index.files {
        // SAFETY: a valid open descriptor; the call only advises the kernel.
        unsafe { libc::posix_fadvise(f.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}
