//! The cache's counters ([`CacheStats`]), for the run summary and `--stats-json`.

/// Counters of the cache, for the run summary and `--stats-json`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CacheStats {
    /// Experts found in the cache (prefetched ones included, even when their read had not finished).
    pub hits: u64,
    pub misses: u64,
    /// Bytes read, prefetches included.
    pub bytes_read: u64,
    /// Time the forward pass waited for expert reads.
    pub wait_secs: f64,
    pub per_layer_hits: Vec<u64>,
    pub per_layer_misses: Vec<u64>,
    /// Prefetch reads started, and their bytes.
    pub prefetch_issued: u64,
    pub prefetch_bytes: u64,
    /// Prefetched experts that a forward step then used (counted in `hits`), and of those, the ones whose read had
    /// not finished when they were needed.
    pub prefetch_used: u64,
    pub prefetch_late: u64,
    /// Prefetches whose read was dropped before it started (the prediction was wrong; not counted above).
    pub prefetch_cancelled: u64,
    /// Experts used at visits that had a prediction, and how many of them were predicted.
    pub predicted_of: u64,
    pub predicted_used: u64,
    /// Predicted experts not prefetched because the disk was busy with demand reads or the forward pass hardly
    /// waited for reads (see `PrefetchThrottle`).
    pub prefetch_throttled: u64,
    /// Warm start in the background ([`super::ExpertCache::warm_in_background`]): hot experts read, and their bytes.
    pub warm_reads: u64,
    pub warm_bytes: u64,
}

impl CacheStats {
    /// The counts accumulated since `start` (an earlier snapshot of the same cache).
    pub fn since(&self, start: &CacheStats) -> CacheStats {
        let diff = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| x - y).collect();
        CacheStats {
            hits: self.hits - start.hits,
            misses: self.misses - start.misses,
            bytes_read: self.bytes_read - start.bytes_read,
            wait_secs: self.wait_secs - start.wait_secs,
            per_layer_hits: diff(&self.per_layer_hits, &start.per_layer_hits),
            per_layer_misses: diff(&self.per_layer_misses, &start.per_layer_misses),
            prefetch_issued: self.prefetch_issued - start.prefetch_issued,
            prefetch_bytes: self.prefetch_bytes - start.prefetch_bytes,
            prefetch_used: self.prefetch_used - start.prefetch_used,
            prefetch_late: self.prefetch_late - start.prefetch_late,
            prefetch_cancelled: self.prefetch_cancelled - start.prefetch_cancelled,
            predicted_of: self.predicted_of - start.predicted_of,
            predicted_used: self.predicted_used - start.predicted_used,
            prefetch_throttled: self.prefetch_throttled - start.prefetch_throttled,
            warm_reads: self.warm_reads - start.warm_reads,
            warm_bytes: self.warm_bytes - start.warm_bytes,
        }
    }

    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }

    /// Predicted experts that were used / experts used (at visits that had a prediction).
    pub fn prediction_accuracy(&self) -> f64 {
        ratio(self.predicted_used, self.predicted_of)
    }
}

pub(super) fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
