//! Options that prepare the expert cache before the first token: a routing profile (`--profile`: per-layer shares
//! and pinned hot experts) and the warm start (`--warm-start`: read back the experts the last run kept cached, and
//! save them again for the next). Both only change which experts are cached, never a result; the engine's
//! `runtime` carries them out.

use std::path::PathBuf;

use clap::Args;
use engine::runtime::{CachePrep, WarmStart};

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

impl CacheArgs {
    /// The engine's cache preparation for these options.
    pub fn prep(&self) -> CachePrep {
        CachePrep {
            profile: self.profile.clone(),
            pin_fraction: self.pin_fraction,
            warm_start: match self.warm_start.as_deref() {
                None => WarmStart::Default,
                Some("off") => WarmStart::Off,
                Some(p) => WarmStart::File(PathBuf::from(p)),
            },
            mode: match self.warm_start_mode {
                WarmStartMode::Background => engine::runtime::WarmStartMode::Background,
                WarmStartMode::Before => engine::runtime::WarmStartMode::Before,
            },
        }
    }
}
