//! The one entry point for running a model: the model loaded with its expert residency, its tokenizer, and the
//! expert cache prepared before the first token (a routing profile's pins and shares, the warm start from the last
//! run's hot file), with the hot experts saved again at the end. The command line uses it; a server will too.
//!
//! [`Runtime::open`] does the slow part once; sessions ([`Model::new_session`]) are cheap and per sequence. Nothing
//! here prints: what a user should hear of (a hot file for another model, a profile that does not apply) is
//! collected in [`Runtime::warnings`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::experts::cache::PreloadStats;
use crate::experts::profile::{plan_classes, ModelIdentity, RoutingProfile};
use crate::experts::warm::{self, HotFile};
use crate::formats::WeightIndex;
use crate::models::{LoadOptions, Model};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Where the warm start's hot file is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WarmStart {
    Off,
    /// `$XDG_CACHE_HOME/flash-moe/<model file>-<size>-<mtime>.hot.json`.
    #[default]
    Default,
    File(PathBuf),
}

/// When the warm start reads the hot experts back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WarmStartMode {
    /// With low priority while the prompt is computed, into free slots.
    #[default]
    Background,
    /// All of them before the first token, in large sequential reads.
    Before,
}

/// How to prepare the expert cache before the first token (streaming only).
#[derive(Clone, Debug, Default)]
pub struct CachePrep {
    /// A routing profile made by `flash-moe profile` for this model.
    pub profile: Option<PathBuf>,
    /// The largest fraction of the slots the profile's hottest experts may take, pinned.
    pub pin_fraction: f64,
    pub warm_start: WarmStart,
    pub mode: WarmStartMode,
}

/// What was done to the cache before the first token.
pub struct Prepared {
    pub preload: PreloadStats,
    /// Where to save the hot experts (None: warm start off, or no home directory).
    pub hot_path: Option<PathBuf>,
    /// Whether a hot file was read back.
    pub warm: bool,
    /// Hot experts queued to be read in the background.
    pub background: usize,
    pub n_pinned_planned: usize,
    identity: ModelIdentity,
    mtime_ns: u128,
}

/// A loaded model ready to generate.
pub struct Runtime {
    pub index: WeightIndex,
    pub model: Model,
    pub tokenizer: Tokenizer,
    /// The expert cache's preparation (None when every expert is in RAM).
    pub prepared: Option<Prepared>,
    /// Things a user should hear of; nothing failed.
    pub warnings: Vec<String>,
    /// Facts about the model worth a line (e.g. token ids its tokenizer has no text for).
    pub notes: Vec<String>,
    /// Seconds spent loading the model and tokenizer.
    pub load_secs: f64,
}

impl Runtime {
    /// Loads the model of `index` (`load` says where its experts live) and its tokenizer.
    pub fn open(index: WeightIndex, load: &LoadOptions) -> Result<Runtime> {
        let t0 = Instant::now();
        let tokenizer = crate::generate::load_tokenizer(&index)?;
        let model = Model::load(&index, load)?;
        let notes = crate::generate::check_tokenizer(&tokenizer, model.info.n_vocab)?.into_iter().collect();
        let load_secs = t0.elapsed().as_secs_f64();
        Ok(Runtime { index, model, tokenizer, prepared: None, warnings: vec![], notes, load_secs })
    }

    /// Applies a routing profile and the warm start to a streaming model's cache (does nothing, but warn about a
    /// profile, when every expert is in RAM). Only changes which experts are cached, never a result.
    pub fn prepare_cache(&mut self, prep: &CachePrep) -> Result<()> {
        if !(0.0..=1.0).contains(&prep.pin_fraction) {
            return Err(Error::Invalid(format!("--pin-fraction {}: must be between 0 and 1", prep.pin_fraction)));
        }
        let (index, model) = (&self.index, &self.model);
        let Some(cache) = model.expert_cache() else {
            if prep.profile.is_some() {
                self.warnings.push("--profile ignored: every expert is in RAM (the model fits)".into());
            }
            return Ok(());
        };
        let identity = ModelIdentity::of(index, &model.info);
        let mtime_ns = warm::model_mtime_ns(index);
        let moe: Vec<bool> = model.expert_layout().layers.iter().map(Option::is_some).collect();
        let k = model.info.n_expert_used.max(1);
        let cache_plan = match &prep.profile {
            Some(path) => {
                let p = RoutingProfile::load(path, &identity)?;
                Some(plan_classes(&p.totals(), cache.slot_classes(), cache.class_slots(), k, prep.pin_fraction))
            }
            None => None,
        };
        let hot_path = match &prep.warm_start {
            WarmStart::Off => None,
            WarmStart::File(p) => Some(p.clone()),
            WarmStart::Default => warm::default_path(index, &identity),
        };
        let mut hot = match &hot_path {
            Some(p) => match HotFile::load(p, &identity, mtime_ns, &moe) {
                Ok(h) => h,
                Err(e) => {
                    self.warnings.push(format!("warm start: {e}; ignored (starting cold)"));
                    None
                }
            },
            None => None,
        };
        let background = if prep.mode == WarmStartMode::Background { hot.take() } else { None };
        let warm = hot.is_some() || background.is_some();
        let preload = match warm::prepare(cache, cache_plan.as_ref(), hot.as_ref(), k) {
            Ok(s) => s,
            Err(e) => {
                self.warnings.push(format!("preloading experts failed: {e}; starting cold"));
                PreloadStats::default()
            }
        };
        let queued = match background.as_ref().map(|h| warm::queue_background(cache, h)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.warnings.push(format!("warm start in the background: {e}; starting cold"));
                0
            }
            None => 0,
        };
        self.prepared = Some(Prepared {
            preload,
            hot_path,
            warm,
            background: queued,
            n_pinned_planned: cache_plan.map_or(0, |p| p.pinned.len()),
            identity,
            mtime_ns,
        });
        Ok(())
    }

    /// Saves the cache's experts for the next warm start. Returns the file and how many experts it lists, or
    /// why it could not (a warning for the user, not an error of the run).
    pub fn save_hot(&self) -> Option<std::result::Result<(&Path, usize), String>> {
        let p = self.prepared.as_ref()?;
        let (Some(path), Some(cache)) = (&p.hot_path, self.model.expert_cache()) else { return None };
        let hot = HotFile::of(cache, p.identity.clone(), p.mtime_ns);
        Some(match hot.save(path) {
            Ok(()) => Ok((path.as_path(), hot.experts.len())),
            Err(e) => Err(format!("saving the hot experts for the next warm start: {e}")),
        })
    }
}
