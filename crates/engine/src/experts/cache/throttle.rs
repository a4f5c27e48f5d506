//! When prefetch pays: the throttle that weighs the disk's demand load and the forward pass's stall.

use std::time::Instant;

/// Shortest window over which `PrefetchThrottle` measures.
const LOAD_WINDOW_SECS: f64 = 0.02;

/// The chance of use that always justifies a prefetch when the disk is free enough, however little the forward
/// pass waits. Without it a compute-bound run (a stall of a few percent asks for a chance above 0.9) prefetched
/// almost nothing: the 17 GB Qwen3-30B-A3B shape with uniform routing in an 8 GiB cgroup read 1 of its 14 misses a
/// token early and waited 10-11 ms a token. The router's measured chances there: rank 1 0.86, rank 4 0.55, ranks
/// 5-8 0.41-0.20. While a waiting thread slept (before it yielded), 0.25 made that step 5-9% faster than 0.5. Since
/// waits yield, reading the likely ranks only is what pays: at 0.6 (ranks 1-3) the step took 147-149 ms against
/// 164-175 ms at 0.25 and 148-149 ms with no prefetch at all, with the file in RAM at 136-138 ms (interleaved
/// rounds, docs/benchmarks.md). Each speculative read costs the compute more than its CPU time on this VM (the
/// weights' memory stalls grew 12% at 0.25), so an unlikely one loses more than the wait it may save. Disk-bound
/// (the same shape in 5 GiB) the load term sets the bar, and 0.6 measured as 0.25 did (190 against 192 ms, no
/// prefetch 225). A disk that demand misses keep busy raises the bar through the load term (reading every
/// prediction there measured 0.78x).
const CHANCE_ENOUGH: f32 = 0.6;

/// When prefetch pays, measured over windows of at least [`LOAD_WINDOW_SECS`] (moving averages): the disk's
/// demand load, the fraction of time during which at least one demand read was queued or in flight, and the stall,
/// the fraction of time the forward pass waited for expert reads. A predicted expert is prefetched only if the
/// measured chance that its prediction rank is used is at least the load and at least one minus the stall: on a
/// disk that demand misses saturate only near-certain predictions are read (every wrong prefetch there delays the
/// reads the forward pass waits for; others measured -21%), and when the forward pass hardly waits (compute-bound)
/// a speculative read has little to save and still costs CPU time, so only likely ones are read; but a prediction
/// at least [`CHANCE_ENOUGH`] likely is read whenever the disk has room (the stall term alone shut prefetch off in
/// compute-bound runs whose few misses it could have hidden).
/// `FLASH_MOE_PREFETCH_THROTTLE=off` turns the throttle off (for measuring what it does).
pub(super) struct PrefetchThrottle {
    enabled: bool,
    /// The start of the current window, and the pool's demand-busy seconds and the forward pass's waiting seconds
    /// then.
    at: Option<(Instant, f64, f64)>,
    load: f32,
    stall: f32,
}

impl PrefetchThrottle {
    pub(super) fn new() -> PrefetchThrottle {
        let enabled = std::env::var("FLASH_MOE_PREFETCH_THROTTLE").map_or(true, |v| v != "off");
        PrefetchThrottle { enabled, at: None, load: 0.0, stall: 1.0 }
    }

    /// The least chance of use worth a prefetch read, given the pool's demand-busy seconds and the forward pass's
    /// waiting seconds now.
    pub(super) fn update(&mut self, busy_secs: f64, wait_secs: f64) -> f32 {
        if !self.enabled {
            return 0.0;
        }
        let now = Instant::now();
        match self.at {
            None => self.at = Some((now, busy_secs, wait_secs)),
            Some((t, b, w)) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt >= LOAD_WINDOW_SECS {
                    let frac = |x: f64| (x / dt).clamp(0.0, 1.0) as f32;
                    self.load = 0.5 * self.load + 0.5 * frac(busy_secs - b);
                    self.stall = 0.5 * self.stall + 0.5 * frac(wait_secs - w);
                    self.at = Some((now, busy_secs, wait_secs));
                }
            }
        }
        self.load.max((1.0 - self.stall).min(CHANCE_ENOUGH))
    }
}

#[cfg(test)]
mod tests {
    use super::{PrefetchThrottle, CHANCE_ENOUGH};

    #[test]
    fn threshold_follows_throttle_and_stall() {
        let mut d = PrefetchThrottle { enabled: true, at: None, load: 0.0, stall: 1.0 };
        let t0 = std::time::Instant::now();
        let window = || std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(d.update(0.0, 0.0), 0.0, "no window yet: prefetch whatever is likely enough");
        window();
        // An idle disk while the forward pass waits the whole window: read every prediction worth a read.
        let wait = t0.elapsed().as_secs_f64() + 1.0;
        assert_eq!(d.update(0.0, wait), 0.0);
        window();
        // Disk busy and the forward pass waiting: the load moves halfway to 1.
        let busy = t0.elapsed().as_secs_f64() + 1.0;
        let wait = wait + busy;
        let l1 = d.update(busy, wait);
        assert!((l1 - 0.5).abs() < 1e-6, "{l1}");
        // Within the same window nothing changes.
        assert_eq!(d.update(busy, wait), l1);
        window();
        // Idle disk, nobody waited: the load falls to 0.25, the stall to 0.5, and the bar is 1 - stall.
        let l2 = d.update(busy, wait);
        assert!((l2 - 0.5).abs() < 1e-6, "{l2}");
        window();
        // 1 - stall = 0.75, but a prediction as likely as CHANCE_ENOUGH is still read while the disk is free.
        let l3 = d.update(busy, wait);
        assert!((l3 - CHANCE_ENOUGH).abs() < 1e-6, "{l3}");
        // A busy disk raises the bar above it again: the load moves halfway to 1 from 0.125, then from 0.5625.
        window();
        let t = t0.elapsed().as_secs_f64() + 10.0;
        let l4 = d.update(t, wait);
        assert!((l4 - CHANCE_ENOUGH.max(0.5625)).abs() < 1e-6, "{l4}");
        window();
        let t = t + t0.elapsed().as_secs_f64() + 10.0;
        let l5 = d.update(t, wait);
        assert!((l5 - 0.78125).abs() < 1e-6, "{l5}");
        let mut off = PrefetchThrottle { enabled: false, at: None, load: 0.0, stall: 1.0 };
        assert_eq!(off.update(5.0, 0.0), 0.0);
    }
}
