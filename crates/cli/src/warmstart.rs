//! Options that prepare the expert cache before the first token: a routing profile (`--profile`: per-layer shares
//! and pinned hot experts) and the warm start (`--warm-start`: read back the experts the last run kept cached, and
//! save them again for the next). Both only change which experts are cached, never a result.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use engine::experts::cache::PreloadStats;
use engine::experts::profile::{plan_classes, ModelIdentity, RoutingProfile};
use engine::experts::warm::{self, HotFile};
use engine::formats::WeightIndex;
use engine::models::Model;

#[derive(Args, Clone, Debug)]
pub struct CacheArgs {
    /// A routing profile made by `flash-moe profile` for this model: the cache's eviction ranking starts from its
    /// per-layer expert frequencies (so each layer's share of the cache follows them from the first token), and
    /// --pin-fraction pins its hottest experts (streaming mode only).
    #[arg(long = "profile", value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// With --profile: the largest fraction of the cache's slots that the profile's hottest experts may take,
    /// pinned (never evicted). Off by default: on the 30B-shaped model with a profile of other prompts, 0.1, 0.25
    /// and 0.5 read 7%, 13% and 44% more bytes per decoded token than no pins (bench/warm_bench.sh).
    #[arg(long = "pin-fraction", default_value_t = 0.0, allow_negative_numbers = true)]
    pub pin_fraction: f64,
    /// Where the experts the cache holds are saved (at exit and every 64 tokens) and read back from at the next
    /// start, or 'off' [default: $XDG_CACHE_HOME/flash-moe/MODEL-SIZE-MTIME.hot.json].
    #[arg(long = "warm-start", value_name = "FILE|off")]
    pub warm_start: Option<String>,
    /// When the warm start reads the hot experts back: 'background' (with low priority while the prompt is
    /// computed, into free slots: the first token comes as soon as a cold start's and the cache warms up as the
    /// disk allows; measured faster to the first token and to token 48 than 'before' on the 30B-shaped model) or
    /// 'before' (all of them before the first token, in large sequential reads: full speed from the first token).
    /// Profile pins are read before the first token either way.
    #[arg(long = "warm-start-mode", value_enum, default_value_t = WarmStartMode::Background)]
    pub warm_start_mode: WarmStartMode,
}

/// See [`CacheArgs::warm_start_mode`].
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarmStartMode {
    Background,
    Before,
}

/// What was done to the cache before the first token.
pub struct Prepared {
    pub preload: PreloadStats,
    /// Where to save the hot experts (None: --warm-start off, or no home directory).
    pub hot_path: Option<PathBuf>,
    /// Whether a hot file was read back.
    pub warm: bool,
    /// Hot experts queued to be read in the background (--warm-start-mode background).
    pub background: usize,
    pub n_pinned_planned: usize,
    identity: ModelIdentity,
    mtime_ns: u128,
}

/// Applies --profile and the warm start to a streaming model's cache; `None` when experts do not stream.
pub fn prepare(a: &CacheArgs, index: &WeightIndex, model: &Model) -> Result<Option<Prepared>> {
    if !(0.0..=1.0).contains(&a.pin_fraction) {
        anyhow::bail!("--pin-fraction {}: must be between 0 and 1", a.pin_fraction);
    }
    let Some(cache) = model.expert_cache() else {
        if a.profile.is_some() {
            eprintln!("warning: --profile ignored: every expert is in RAM (no --memory-budget, the model fits)");
        }
        return Ok(None);
    };
    let identity = ModelIdentity::of(index, &model.info);
    let mtime_ns = warm::model_mtime_ns(index);
    let moe: Vec<bool> = model.expert_layout().layers.iter().map(Option::is_some).collect();
    let k = model.info.n_expert_used.max(1);
    let cache_plan = match &a.profile {
        Some(path) => {
            let p = RoutingProfile::load(path, &identity)?;
            Some(plan_classes(&p.totals(), cache.slot_classes(), cache.class_slots(), k, a.pin_fraction))
        }
        None => None,
    };
    let hot_path = match a.warm_start.as_deref() {
        Some("off") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => warm::default_path(index, &identity),
    };
    let mut hot = match &hot_path {
        Some(p) => match HotFile::load(p, &identity, mtime_ns, &moe) {
            Ok(h) => h,
            Err(e) => {
                eprintln!("warning: warm start: {e}; ignored (starting cold)");
                None
            }
        },
        None => None,
    };
    let background = if a.warm_start_mode == WarmStartMode::Background { hot.take() } else { None };
    let warm = hot.is_some() || background.is_some();
    let preload = match warm::prepare(cache, cache_plan.as_ref(), hot.as_ref(), k) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: preloading experts failed: {e}; starting cold");
            PreloadStats::default()
        }
    };
    let queued = match background.as_ref().map(|h| warm::queue_background(cache, h)) {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("warning: warm start in the background: {e}; starting cold");
            0
        }
        None => 0,
    };
    Ok(Some(Prepared {
        preload,
        hot_path,
        warm,
        background: queued,
        n_pinned_planned: cache_plan.map_or(0, |p| p.pinned.len()),
        identity,
        mtime_ns,
    }))
}

impl Prepared {
    /// Saves the cache's experts for the next warm start (a warning, not an error, when it cannot).
    /// Returns the file and how many experts it lists.
    pub fn save_hot(&self, model: &Model) -> Option<(&std::path::Path, usize)> {
        let (Some(path), Some(cache)) = (&self.hot_path, model.expert_cache()) else { return None };
        let hot = HotFile::of(cache, self.identity.clone(), self.mtime_ns);
        match hot.save(path) {
            Ok(()) => Some((path, hot.experts.len())),
            Err(e) => {
                eprintln!("warning: saving the hot experts for the next warm start: {e}");
                None
            }
        }
    }
}
