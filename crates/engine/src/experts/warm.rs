//! Warm start: the experts a run kept cached are saved to a hot file, and the next run of the same model reads them
//! back before its first token ([`super::cache::ExpertCache::preload`]: large sequential reads, many in flight),
//! so it starts at full speed instead of missing on every expert.
//!
//! A hot file is JSON, written to a temporary file and renamed over the old one (a crash never leaves half a file):
//!
//! ```json
//! {"format": "flash-moe hot experts", "version": 1,
//!  "model": {"file": ..., "size_bytes": ..., "n_layer": ..., "n_expert": ..., "n_expert_used": ...},
//!  "mtime_ns": 1764200000000000000, "n_slots": 2002, "experts": [[layer, expert, uses], ...]}
//! ```
//!
//! `experts` is the cache's content, most used first. Its default place is
//! `$XDG_CACHE_HOME/flash-moe/<file name>-<size>-<mtime>.hot.json` (`~/.cache` without XDG_CACHE_HOME), so a
//! replaced model file never finds the old list. A hot file that is missing, unreadable, for another model or
//! out of range is reported and ignored: it can only make the start slower, never change a result.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::{ExpertCache, PreloadItem, PreloadStats};
use super::profile::{CachePlan, ModelIdentity};
use crate::formats::WeightIndex;
use crate::{Error, Result};

pub const HOT_FORMAT: &str = "flash-moe hot experts";
pub const HOT_VERSION: u32 = 1;

/// A saved list of cached experts (format in the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotFile {
    pub format: String,
    pub version: u32,
    pub model: ModelIdentity,
    /// The model file's modification time (ns since the epoch; 0 when unknown).
    pub mtime_ns: u128,
    pub n_slots: usize,
    /// `[layer, expert, uses]`, most used first.
    pub experts: Vec<[u32; 3]>,
}

/// The first model file's modification time in ns since the epoch (0 when unknown).
pub fn model_mtime_ns(index: &WeightIndex) -> u128 {
    index
        .files
        .first()
        .and_then(|f| f.mtime)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// `$XDG_CACHE_HOME/flash-moe/<file name>-<size>-<mtime>.hot.json` (or under `~/.cache`); `None` without a home.
pub fn default_path(index: &WeightIndex, model: &ModelIdentity) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    let secs = model_mtime_ns(index) / 1_000_000_000;
    Some(base.join("flash-moe").join(format!("{}-{}-{secs}.hot.json", model.file, model.size_bytes)))
}

impl HotFile {
    /// The hot experts as preload items (hottest first, unpinned, their use counts kept).
    pub fn items(&self) -> impl Iterator<Item = PreloadItem> + '_ {
        self.experts.iter().map(|&[l, e, uses]| PreloadItem { layer: l as usize, expert: e, uses, pin: false })
    }

    /// The cache's current content.
    pub fn of(cache: &ExpertCache, model: ModelIdentity, mtime_ns: u128) -> HotFile {
        let experts = cache.hot_experts().iter().map(|h| [h.layer as u32, h.expert, h.uses]).collect();
        HotFile { format: HOT_FORMAT.into(), version: HOT_VERSION, model, mtime_ns, n_slots: cache.n_slots(), experts }
    }

    /// Writes the file atomically (temporary file beside it, then rename), creating its directory.
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let text = serde_json::to_string(self).map_err(|e| Error::Invalid(format!("serializing a hot file: {e}")))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(path, e)
        })
    }

    /// Reads a hot file and checks it belongs to `model` (same identity and modification time) and that every
    /// entry names an expert of a MoE layer. `Ok(None)` when there is no file.
    pub fn load(path: &Path, model: &ModelIdentity, mtime_ns: u128, moe_layers: &[bool]) -> Result<Option<HotFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        Self::parse(&text, path, model, mtime_ns, moe_layers).map(Some)
    }

    /// [`HotFile::load`] of the text of a hot file (`path` names it in errors). Never panics, whatever the text
    /// holds (the `hot_file` fuzz target calls it).
    pub fn parse(
        text: &str,
        path: &Path,
        model: &ModelIdentity,
        mtime_ns: u128,
        moe_layers: &[bool],
    ) -> Result<HotFile> {
        let h: HotFile =
            serde_json::from_str(text).map_err(|e| Error::format(path, format!("not a flash-moe hot file: {e}")))?;
        if h.format != HOT_FORMAT || h.version != HOT_VERSION {
            return Err(Error::format(
                path,
                format!("format '{}' v{}, expected '{HOT_FORMAT}' v{HOT_VERSION}", h.format, h.version),
            ));
        }
        h.model.check(model, path, "hot file")?;
        if h.mtime_ns != mtime_ns {
            return Err(Error::format(path, "the model file was modified since this hot file was written"));
        }
        for &[l, e, _] in &h.experts {
            if !moe_layers.get(l as usize).copied().unwrap_or(false) || e as usize >= model.n_expert {
                return Err(Error::format(path, format!("expert {e} of layer {l} is not an expert of this model")));
            }
        }
        Ok(h)
    }
}

/// Queues the hot file's experts to be read in the background while the forward pass runs
/// ([`ExpertCache::warm_in_background`]); returns how many were queued.
pub fn queue_background(cache: &ExpertCache, hot: &HotFile) -> Result<usize> {
    cache.warm_in_background(&hot.items().collect::<Vec<_>>())
}

/// Prepares the cache before the first token: applies a profile's per-layer shares, then reads the profile's
/// pinned experts and the hot file's experts (pinned first, then hottest first, as many as fit) in one preload.
/// `keep_free` slots stay unpinned (at least one token's experts of a layer).
pub fn prepare(
    cache: &ExpertCache,
    plan: Option<&CachePlan>,
    hot: Option<&HotFile>,
    keep_free: usize,
) -> Result<PreloadStats> {
    let mut items = Vec::new();
    if let Some(p) = plan {
        cache.seed_uses(&p.prior, keep_free);
        let n = p.pinned.len();
        items.extend(p.pinned.iter().enumerate().map(|(i, &(layer, expert))| PreloadItem {
            layer,
            expert,
            uses: (n - i) as u32,
            pin: true,
        }));
    }
    if let Some(h) = hot {
        items.extend(h.items());
    }
    if items.is_empty() {
        return Ok(PreloadStats::default());
    }
    cache.preload(&items, keep_free)
}
