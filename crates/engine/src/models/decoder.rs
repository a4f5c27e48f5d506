//! What every decoder family shares around its layer stack: the token embedding, the final norm and output
//! head, the source of the routed experts (all in RAM, or a streaming cache sized by the memory plan), and the
//! options that observe or change routing (route hooks, the approximate mode, router prefetch).
//!
//! A family file reads its layers with a [`Loader`], then calls [`Decoder::load`] for the rest; its forward pass
//! calls [`Decoder::embed`] first and [`Decoder::logits`] last.

use crate::approx::ApproxMode;
use crate::backend::{Exec, MatKind, Numerics};
use crate::experts::budget::MemoryPlan;
use crate::experts::cache::{CacheConfig, ExpertCache, Prefetch, PREDICTED_PER_USED};
use crate::experts::io::IoEngine;
use crate::experts::resident::ResidentExperts;
use crate::experts::store::ExpertStore;
use crate::experts::{ExpertLayout, ExpertProvider, LayerExperts, ProjLayout};
use crate::formats::WeightIndex;
use crate::layers::moe::{MoeRouting, RouteHook, RouteOverrides};
use crate::models::loader::{ExpertResidency, Loader};
use crate::models::{Logits, ModelInfo};
use crate::ops::QuantActs;
use crate::session::Scratch;
use crate::tensor::QMat;
use crate::{Error, Result};

/// The embeddings, output head and experts of a model, with the options of its forward pass.
pub struct Decoder {
    pub info: ModelInfo,
    pub rms_eps: f32,
    pub(crate) token_embd: QMat,      // [n_vocab, n_embd]
    pub(crate) output_norm: Vec<f32>, // [n_embd]
    pub(crate) output: Option<QMat>,  // [n_vocab, n_embd]; None: tied to token_embd
    pub expert_layout: ExpertLayout,
    pub experts: Box<dyn ExpertProvider + Send>,
    /// How the memory budget was split (streaming mode only).
    pub plan: Option<MemoryPlan>,
    /// Route recording or replay (off by default).
    pub route_hook: Option<std::sync::Arc<dyn RouteHook>>,
    /// Approximate expert selection (off by default; see [`crate::approx`]).
    pub approx: Option<ApproxMode>,
    /// With [`Prefetch::Router`]: while a MoE layer runs, the next MoE layer's router applied to its input
    /// residual (through the next layer's norm) predicts the next layer's experts, which are prefetched.
    pub prefetch: Prefetch,
    /// Whose float arithmetic the forward pass reproduces (see [`Numerics`]).
    pub numerics: Numerics,
}

/// What the family read before [`Decoder::load`] takes over.
pub struct Parts {
    pub token_embd: QMat,
    pub output_norm: Vec<f32>,
    pub output: Option<QMat>,
    pub rms_eps: f32,
    pub expert_layout: ExpertLayout,
    /// Bytes of the forward pass's scratch (for the memory plan).
    pub scratch_bytes: u64,
    /// Experts per token (the fewest slots a cache can run with).
    pub n_expert_used: usize,
}

impl Decoder {
    /// Finishes a load: the experts' provider (every expert read into RAM, or a streaming cache sized to the
    /// memory budget, after the rest of the model) and the memory plan.
    pub fn load(mut ld: Loader<'_>, p: Parts, mut info: ModelInfo) -> Result<Decoder> {
        info.resident_bytes = ld.resident_bytes;
        info.kv = ld.opts.kv;
        for kind in &info.state {
            if let crate::session::LayerStateKind::Kv { head_dim, .. } = *kind {
                for t in [info.kv.k, info.kv.v] {
                    if !t.fits(head_dim) {
                        return Err(Error::Invalid(format!(
                            "a {} KV cache needs heads of a multiple of 32 values; this model's are {head_dim}",
                            t.name()
                        )));
                    }
                }
            }
        }
        let index = ld.index;
        let mut progress = std::mem::replace(&mut ld.progress, super::loader::Progress::new(0, false));
        let mut plan = None;
        let mut prefetch = Prefetch::Off;
        let experts: Box<dyn ExpertProvider + Send> = match &ld.opts.experts {
            ExpertResidency::Stream(so) if p.expert_layout.n_moe_layers() > 0 => {
                progress.finish();
                let store = ExpertStore::open(index, &p.expert_layout)?;
                let mut mp = MemoryPlan::new(
                    so.budget,
                    info.resident_bytes,
                    info.kv_cache_bytes(so.n_ctx),
                    p.scratch_bytes,
                    store.slot_classes().clone(),
                    p.expert_layout.n_expert,
                    p.n_expert_used,
                )?;
                let (n_slots, class_slots) = match so.n_slots {
                    Some(n) => (n, None),
                    None => (mp.n_slots, Some(mp.class_slots.clone())),
                };
                // The resident weights were read through the page cache; a memory cgroup charges it, so drop it.
                drop_page_cache(index);
                let cfg = CacheConfig { n_slots, class_slots, io_threads: so.io_threads, io_engine: so.io_engine };
                let cache = ExpertCache::new(store, &cfg)?;
                cache.set_n_expert_used(p.n_expert_used);
                cache.set_prefetch(so.prefetch, p.n_expert_used);
                prefetch = so.prefetch;
                mp.io_engine = match cache.io_engine() {
                    IoEngine::Uring => "io_uring".into(),
                    IoEngine::Threads => format!("{} pread threads", so.io_threads),
                };
                plan = Some(mp);
                Box::new(cache)
            }
            _ => {
                let experts = ResidentExperts::load(index, &p.expert_layout, ld.direct, &mut |b| progress.add(b))?;
                progress.finish();
                Box::new(experts)
            }
        };
        Ok(Decoder {
            info,
            rms_eps: p.rms_eps,
            token_embd: p.token_embd,
            output_norm: p.output_norm,
            output: p.output,
            expert_layout: p.expert_layout,
            experts,
            plan,
            route_hook: None,
            approx: None,
            prefetch,
            numerics: Numerics::Native,
        })
    }

    /// The embeddings of `tokens` into `x` (`[n, n_embd]`).
    pub fn embed(&self, exec: &Exec<'_>, tokens: &[u32], x: &mut Vec<f32>) -> Result<()> {
        let e = self.info.n_embd;
        x.resize(tokens.len() * e, 0.0);
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= self.info.n_vocab {
                return Err(Error::TokenOutOfRange { id, n_vocab: self.info.n_vocab });
            }
            exec.embed(&self.token_embd, id, &mut x[t * e..(t + 1) * e]);
        }
        exec.tap("embd", None, x);
        Ok(())
    }

    /// The logits of the rows of `x` that `want` asks for (`x` holds the last row only when the last layer was
    /// trimmed to it): final norm into `xn`, then the output head into `logits`.
    pub fn logits<'s>(
        &self,
        exec: &Exec<'_>,
        x: &[f32],
        want: Logits,
        (xn, xq): (&mut Vec<f32>, &mut QuantActs),
        logits: &'s mut Vec<f32>,
    ) -> Result<&'s [f32]> {
        let e = self.info.n_embd;
        let rows = match want {
            Logits::Last => &x[x.len() - e..],
            Logits::All => x,
            Logits::None => return Ok(&[]),
        };
        xn.resize(rows.len(), 0.0);
        exec.rms_norm(rows, &self.output_norm, self.rms_eps, xn);
        exec.tap("result_norm", None, xn);
        let out = self.output.as_ref().unwrap_or(&self.token_embd);
        logits.resize(rows.len() / e * self.info.n_vocab, 0.0);
        exec.matmul(out.as_ref(), xn, xq, logits, MatKind::Dense);
        exec.tap("result_output", None, logits);
        Ok(logits)
    }

    /// Router-based prediction: the next MoE layer's router (`router`, after its norm `norm`) applied to this
    /// layer's MoE input residual (`s.x`, one token): its top `PREDICTED_PER_USED * k` experts into `s.pred_ids`,
    /// to prefetch. Only decides what is read early, never a result.
    pub fn predict_experts(&self, exec: &Exec<'_>, norm: &[f32], router: &QMat, routing: &MoeRouting, s: &mut Scratch) {
        s.pred_x.resize(self.info.n_embd, 0.0);
        crate::ops::rms_norm_into(&s.x, norm, self.rms_eps, &mut s.pred_x);
        s.pred_logits.resize(routing.n_expert, 0.0);
        crate::ops::matmul_f32(exec.cpu, router.as_ref(), &s.pred_x, &mut s.pred_q, &mut s.pred_logits);
        s.pred_order.clear();
        s.pred_order.extend(0..routing.n_expert as u32);
        let logits = &s.pred_logits;
        s.pred_order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        s.pred_ids.clear();
        s.pred_ids.extend(s.pred_order.iter().take(PREDICTED_PER_USED * routing.n_expert_used));
    }

    /// The route hook and approximate mode in force.
    pub fn overrides(&self) -> RouteOverrides<'_> {
        RouteOverrides { hook: self.route_hook.as_deref(), approx: self.approx.as_ref() }
    }
}

/// The experts of layer `l`: GGUF's stacked `ffn_*_exps`, or one safetensors tensor per expert.
pub fn expert_layer_layout(
    ld: &Loader<'_>,
    l: usize,
    n_expert: usize,
    n_ff: usize,
    n_embd: usize,
) -> Result<LayerExperts> {
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
        gate: proj("ffn_gate_exps", "ffn_gate.{e}", n_ff, n_embd)?,
        up: proj("ffn_up_exps", "ffn_up.{e}", n_ff, n_embd)?,
        down: proj("ffn_down_exps", "ffn_down.{e}", n_embd, n_ff)?,
    })
}

/// Asks the kernel to drop the model files' cached pages.
fn drop_page_cache(index: &WeightIndex) {
    use std::os::fd::AsRawFd;
    for f in &index.files {
        // SAFETY: a valid open descriptor; the call only advises the kernel.
        unsafe { libc::posix_fadvise(f.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}
