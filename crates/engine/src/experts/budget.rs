//! The memory budget and the plan that splits it: resident weights, KV cache, scratch, and what is left for the
//! expert cache.
//!
//! The budget is given (`--memory-budget 8GiB`), the smallest that can run (`min`: one layer's top-k experts,
//! which makes nearly every expert read a miss), or automatic: the smaller of the memory cgroup's limit (v1
//! `memory.limit_in_bytes`, v2 `memory.max`, as seen by this process) and the available memory, less headroom.

use std::fmt;

use crate::{Error, Result};

/// How much memory the process may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// From the cgroup limit and available memory.
    Auto,
    /// The smallest expert cache that can run: the experts one token needs in one layer.
    Min,
    Bytes(u64),
    /// Whatever the resident weights, KV cache and scratch need plus a cache of this percentage (1-100) of the
    /// model's experts: the bundled model's default, so that its experts stream.
    ExpertPercent(u8),
}

impl Budget {
    /// Parses `auto`, `min`, or a size such as `8GiB`, `512MiB`, `4G`, `1.5GB`, `1073741824`.
    pub fn parse(s: &str) -> Result<Budget> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "auto" => return Ok(Budget::Auto),
            "min" => return Ok(Budget::Min),
            _ => {}
        }
        if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(Error::Invalid(format!(
                "memory budget '{s}': give a unit, like {t}GiB or {t}MiB (or {t}B if you mean bytes)"
            )));
        }
        parse_size(t).map(Budget::Bytes).ok_or_else(|| {
            Error::Invalid(format!("memory budget '{s}': expected a size like 8GiB, 512MiB or 4G, or 'min' or 'auto'"))
        })
    }
}

/// Parses a byte size with an optional binary (KiB, MiB, GiB, TiB; K, M, G, T) or decimal (KB, MB, GB, TB) unit.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    };
    let bytes = value * mult;
    (bytes.is_finite() && (0.0..1.8e19).contains(&bytes)).then_some(bytes as u64)
}

/// Bytes in a human unit (GiB/MiB/KiB, or bytes below 1 KiB).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The memory limit of this process's cgroup (v1 or v2), if any.
pub fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<u64> = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let files: Vec<String> = if controllers.split(',').any(|c| c == "memory") {
            vec![format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")]
        } else if controllers.is_empty() {
            vec![format!("/sys/fs/cgroup{path}/memory.max"), format!("/sys/fs/cgroup/unified{path}/memory.max")]
        } else {
            continue;
        };
        for f in files {
            if let Ok(v) = std::fs::read_to_string(&f) {
                // v1 writes a huge number for "no limit", v2 writes "max".
                if let Ok(limit) = v.trim().parse::<u64>() {
                    if limit < (1u64 << 60) {
                        best = Some(best.map_or(limit, |b| b.min(limit)));
                    }
                }
            }
        }
    }
    best
}

/// MemAvailable from /proc/meminfo.
pub fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The memory this process may use (the cgroup limit or the available memory, whichever is lower) and where it
/// came from.
pub fn memory_limit() -> (u64, String) {
    let cg = cgroup_limit();
    let avail = mem_available();
    match (cg, avail) {
        (Some(c), Some(a)) if c < a => (c, format!("cgroup limit {}", human(c))),
        (_, Some(a)) => (a, format!("available memory {}", human(a))),
        (Some(c), None) => (c, format!("cgroup limit {}", human(c))),
        (None, None) => (4 << 30, "no limit found; assuming 4 GiB".to_string()),
    }
}

/// The automatic budget and where it came from.
pub fn auto_budget() -> (u64, String) {
    let (limit, source) = memory_limit();
    // Headroom for the allocator, the binary, thread stacks and the kernel's own per-cgroup bookkeeping.
    let headroom = (limit / 16).max(256 << 20);
    (limit.saturating_sub(headroom), source)
}

/// At most this many slot sizes: layers whose experts differ in size by less are merged into the larger size.
pub const SLOT_CLASSES_MAX: usize = 4;

/// The sizes of the expert cache's slots. Quantization mixes give the layers of one model experts of different
/// sizes (llama.cpp's Q4_K_M stores half of the MoE layers' `ffn_down` in Q6_K: 2.92 MiB experts there, 2.53 MiB in
/// the others, for Qwen3-30B-A3B), so a slot for every expert at the largest size would waste up to 13% of the cache
/// on the smaller ones. Instead each layer's experts go to slots of its class's size, and the cache gives every
/// MoE layer the same number of slots' worth of its class.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SlotClasses {
    /// Bytes of a slot of each class, largest first.
    pub bytes: Vec<u64>,
    /// The class of each layer's experts (`None`: a layer without experts).
    pub of_layer: Vec<Option<usize>>,
}

impl SlotClasses {
    /// Classes for layers whose experts need `layer_bytes[l]` bytes of slot (`None`: no experts), at most
    /// [`SLOT_CLASSES_MAX`] of them: the two closest sizes are merged into the larger until that many remain.
    pub fn from_layer_bytes(layer_bytes: &[Option<u64>]) -> SlotClasses {
        let mut sizes: Vec<u64> = layer_bytes.iter().flatten().copied().collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        while sizes.len() > SLOT_CLASSES_MAX {
            // sizes[i] > sizes[i + 1]: merge the pair with the smallest relative gap into the larger.
            let i = (0..sizes.len() - 1)
                .min_by(|&a, &b| {
                    let gap = |i: usize| (sizes[i] - sizes[i + 1]) as f64 / sizes[i] as f64;
                    gap(a).total_cmp(&gap(b))
                })
                .expect("at least two sizes");
            sizes.remove(i + 1);
        }
        // Each layer goes to the smallest class that holds its experts.
        let of_layer = layer_bytes
            .iter()
            .map(|b| b.map(|b| sizes.iter().rposition(|&s| s >= b).expect("the largest size holds every layer")))
            .collect();
        SlotClasses { bytes: sizes, of_layer }
    }

    /// One class of `bytes` for the layers flagged in `moe_layers`.
    pub fn uniform(moe_layers: &[bool], bytes: u64) -> SlotClasses {
        SlotClasses { bytes: vec![bytes], of_layer: moe_layers.iter().map(|&m| m.then_some(0)).collect() }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Layers of class `c`.
    pub fn n_layers(&self, c: usize) -> usize {
        self.of_layer.iter().filter(|&&x| x == Some(c)).count()
    }

    /// Bytes of `counts[c]` slots of each class.
    pub fn bytes_of(&self, counts: &[usize]) -> u64 {
        self.bytes.iter().zip(counts).map(|(&b, &n)| b * n as u64).sum()
    }

    /// How many slots of each class fit in `bytes`: every class gets at least `min_per_class` (at most its
    /// experts, `n_expert` per layer), then slots go one at a time to the class with the fewest per layer that
    /// still fits, so that every MoE layer gets about the same number of slots. `None` if the minimum does not fit.
    pub fn share(&self, bytes: u64, n_expert: usize, min_per_class: usize) -> Option<Vec<usize>> {
        let max: Vec<usize> = (0..self.len()).map(|c| self.n_layers(c) * n_expert).collect();
        let mut n: Vec<usize> = max.iter().map(|&m| min_per_class.min(m)).collect();
        let mut left = bytes.checked_sub(self.bytes_of(&n))?;
        // Equal slots per layer for every class that fits whole, as a start (the loop below then tops up).
        let per_layer_bytes: u64 = (0..self.len()).map(|c| self.bytes[c] * self.n_layers(c) as u64).sum();
        if let Some(per_layer) = bytes.checked_div(per_layer_bytes) {
            for c in 0..self.len() {
                let want = (per_layer as usize * self.n_layers(c)).min(max[c]);
                if want > n[c] {
                    let cost = (want - n[c]) as u64 * self.bytes[c];
                    if cost <= left {
                        left -= cost;
                        n[c] = want;
                    }
                }
            }
        }
        loop {
            let next = (0..self.len()).filter(|&c| n[c] < max[c] && self.bytes[c] <= left).min_by(|&a, &b| {
                let ratio = |c: usize| n[c] as f64 / self.n_layers(c).max(1) as f64;
                ratio(a).total_cmp(&ratio(b))
            });
            let Some(c) = next else { break };
            n[c] += 1;
            left -= self.bytes[c];
        }
        Some(n)
    }
}

/// [`MemoryPlan::budget_source`] of `--memory-budget min`.
const MIN_SOURCE: &str = "min";

/// What the memory goes to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    pub budget_bytes: u64,
    pub budget_source: String,
    pub resident_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    /// The slot sizes, and how many slots of each class the cache has.
    pub classes: SlotClasses,
    pub class_slots: Vec<usize>,
    pub n_slots: usize,
    pub n_experts_total: usize,
    /// Experts per MoE layer.
    pub n_expert: usize,
    /// Slots every class needs at least (one layer's experts for one token).
    pub min_slots: usize,
    /// The read engine, once the cache exists ("io_uring" or "pread threads").
    pub io_engine: String,
}

impl MemoryPlan {
    /// Fits an expert cache of whole slots into what the budget leaves; `n_expert` experts per MoE layer.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        budget: Budget,
        resident_bytes: u64,
        kv_bytes: u64,
        scratch_bytes: u64,
        classes: SlotClasses,
        n_expert: usize,
        min_slots: usize,
    ) -> Result<MemoryPlan> {
        let fixed = resident_bytes.saturating_add(kv_bytes).saturating_add(scratch_bytes);
        let n_classes = classes.len().max(1);
        let min_counts: Vec<usize> =
            (0..classes.len()).map(|c| min_slots.min(classes.n_layers(c) * n_expert)).collect();
        let min_total = fixed.saturating_add(classes.bytes_of(&min_counts));
        let (budget_bytes, budget_source) = match budget {
            Budget::Min => (min_total, format!("{MIN_SOURCE}: one layer's top-k experts")),
            Budget::Bytes(b) => (b, "--memory-budget".to_string()),
            Budget::ExpertPercent(pct) => {
                let n: Vec<usize> = (0..classes.len())
                    .map(|c| {
                        let all = classes.n_layers(c) * n_expert;
                        (all * pct.clamp(1, 100) as usize).div_ceil(100).max(min_counts[c]).min(all)
                    })
                    .collect();
                (fixed + classes.bytes_of(&n), format!("a cache of {pct}% of the experts"))
            }
            Budget::Auto => auto_budget(),
        };
        let too_small = || {
            Error::Invalid(format!(
                "memory budget {} is too small to run: resident weights {} + KV cache {} + scratch {} + {} experts of \
                 {}{} need at least {} (--memory-budget min); lower --ctx-size to shrink the KV cache",
                human(budget_bytes),
                human(resident_bytes),
                human(kv_bytes),
                human(scratch_bytes),
                min_slots,
                if n_classes > 1 { "each size, " } else { "" },
                classes.bytes.iter().map(|&b| human(b)).collect::<Vec<_>>().join(" and "),
                human(min_total),
            ))
        };
        if budget_bytes < min_total {
            return Err(too_small());
        }
        let class_slots = classes.share(budget_bytes - fixed, n_expert, min_slots).ok_or_else(too_small)?;
        let n_experts_total = (0..classes.len()).map(|c| classes.n_layers(c) * n_expert).sum();
        Ok(MemoryPlan {
            budget_bytes,
            budget_source,
            resident_bytes,
            kv_bytes,
            scratch_bytes,
            n_slots: class_slots.iter().sum(),
            classes,
            class_slots,
            n_experts_total,
            n_expert,
            min_slots,
            io_engine: String::new(),
        })
    }

    pub fn cache_bytes(&self) -> u64 {
        self.classes.bytes_of(&self.class_slots)
    }

    /// Experts one token uses in all MoE layers (`min_slots` per layer), and the budget whose cache holds them
    /// (every size class its layers' share): below it nearly every expert is read again for every token.
    pub fn token_working_set(&self) -> (usize, u64) {
        let need = self.token_need();
        let fixed = self.resident_bytes + self.kv_bytes + self.scratch_bytes;
        (need.iter().sum(), fixed + self.classes.bytes_of(&need))
    }

    /// Whether some size class holds fewer slots than one token's experts in its layers (not said of
    /// `--memory-budget min`, which asks for that).
    pub fn below_token_working_set(&self) -> bool {
        !self.budget_source.starts_with(MIN_SOURCE)
            && self.token_need().iter().zip(&self.class_slots).any(|(&need, &have)| have < need)
    }

    /// Slots of each class one token's experts take.
    fn token_need(&self) -> Vec<usize> {
        (0..self.classes.len()).map(|c| self.classes.n_layers(c) * self.min_slots.min(self.n_expert)).collect()
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory budget   {} ({})", human(self.budget_bytes), self.budget_source)?;
        writeln!(f, "  resident weights {}", human(self.resident_bytes))?;
        writeln!(f, "  KV cache         {}", human(self.kv_bytes))?;
        writeln!(f, "  scratch          {}", human(self.scratch_bytes))?;
        write!(
            f,
            "  expert cache     {} = {} of {} experts, {:.1}%",
            human(self.cache_bytes()),
            self.n_slots,
            self.n_experts_total,
            100.0 * self.n_slots as f64 / self.n_experts_total.max(1) as f64
        )?;
        if self.classes.len() > 1 {
            let each: Vec<String> = (0..self.classes.len())
                .map(|c| format!("{} x {}", self.class_slots[c], human(self.classes.bytes[c])))
                .collect();
            write!(f, " (slots of {})", each.join(" + "))?;
        }
        if !self.io_engine.is_empty() {
            write!(f, ", read with {}", self.io_engine)?;
        }
        if self.below_token_working_set() {
            let (n, bytes) = self.token_working_set();
            write!(
                f,
                "\nwarning: the expert cache holds fewer experts than one token uses ({} of {n}, top-{} in every MoE \
                 layer): nearly every expert is read again for every token; --memory-budget {}MiB or more holds one \
                 token's experts, and more is faster",
                self.n_slots,
                self.min_slots,
                bytes.div_ceil(1 << 20),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8GiB"), Some(8 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(Budget::parse("min").ok(), Some(Budget::Min));
        assert!(Budget::parse("lots").is_err());
    }

    #[test]
    fn plan_fits_whole_slots_and_refuses_too_small() {
        let one = || SlotClasses::uniform(&[true], 100);
        let p = MemoryPlan::new(Budget::Bytes(1000 + 10 * 100 + 50), 800, 100, 100, one(), 64, 2).expect("fits");
        assert_eq!(p.n_slots, 10);
        let e = MemoryPlan::new(Budget::Bytes(1100), 800, 100, 100, one(), 64, 2).expect_err("too small");
        assert!(e.to_string().contains("too small"), "{e}");
        let q = MemoryPlan::new(Budget::ExpertPercent(25), 800, 100, 100, one(), 64, 2).expect("25%");
        assert_eq!((q.n_slots, q.budget_bytes), (16, 1000 + 1600));
        let m = MemoryPlan::new(Budget::Min, 800, 100, 100, one(), 64, 2).expect("min");
        assert_eq!(m.n_slots, 2);
        let all = MemoryPlan::new(Budget::Bytes(1 << 40), 800, 100, 100, one(), 64, 2).expect("all");
        assert_eq!(all.n_slots, 64);
    }

    #[test]
    fn slot_classes_follow_the_layers_sizes() {
        // Qwen3-30B-A3B Q4_K_M: Q6_K ffn_down in every other layer; a dense layer in front.
        let (big, small) = (3059712, 2654208);
        let c = SlotClasses::from_layer_bytes(&[None, Some(big), Some(small), Some(big), Some(small)]);
        assert_eq!(c.bytes, vec![big, small]);
        assert_eq!(c.of_layer, vec![None, Some(0), Some(1), Some(0), Some(1)]);
        // The same number of slots per layer in each class, the rest to whichever fits.
        let n = c.share(10 * big + 10 * small + small, 128, 6).expect("fits");
        assert_eq!(n, vec![10, 11]);
        assert!(c.bytes_of(&n) <= 10 * big + 11 * small);
        // More slots than one size everywhere: 2654208 * 2 / 3059712 = 1.7 extra slots per 10.
        let uniform = (10 * big + 10 * small) / big;
        assert!(n.iter().sum::<usize>() as u64 > uniform);
        // Never more than the experts, never fewer than the minimum.
        assert_eq!(c.share(u64::MAX / 4, 128, 6).expect("all"), vec![256, 256]);
        assert_eq!(c.share(6 * big + 6 * small, 128, 6).expect("min"), vec![6, 6]);
        assert!(c.share(6 * big + 5 * small, 128, 6).is_none());
        // Many sizes merge into at most SLOT_CLASSES_MAX, each layer into a class at least its size.
        let sizes: Vec<Option<u64>> = (0..10).map(|i| Some(1000 + 7 * i * i)).collect();
        let m = SlotClasses::from_layer_bytes(&sizes);
        assert_eq!(m.len(), SLOT_CLASSES_MAX);
        for (b, c) in sizes.iter().zip(&m.of_layer) {
            assert!(m.bytes[c.expect("a class")] >= b.expect("a size"));
        }
        // Below one token's experts (6 per layer, 2 layers per class) the plan warns, and names a budget that is not.
        let fixed = 1000;
        let low =
            MemoryPlan::new(Budget::Bytes(fixed + 8 * big + 8 * small), 800, 100, 100, c.clone(), 128, 6).expect("low");
        assert!(low.below_token_working_set());
        assert!(low.to_string().contains("warning: the expert cache holds fewer experts than one token uses"), "{low}");
        let (n, need) = low.token_working_set();
        assert_eq!((n, need), (24, fixed + 12 * big + 12 * small));
        let ok = MemoryPlan::new(Budget::Bytes(need), 800, 100, 100, c.clone(), 128, 6).expect("enough");
        assert!(!ok.below_token_working_set() && !ok.to_string().contains("warning"), "{ok}");
        let min = MemoryPlan::new(Budget::Min, 800, 100, 100, c.clone(), 128, 6).expect("min");
        assert!(!min.to_string().contains("warning"), "min asks for a cache below one token's experts: {min}");
        // A plan with classes says so.
        let plan = MemoryPlan::new(Budget::Bytes(1000 + 40 * big), 800, 100, 100, c.clone(), 128, 6).expect("plan");
        assert_eq!(plan.n_slots, plan.class_slots.iter().sum::<usize>());
        assert!(plan.cache_bytes() <= 40 * big);
        assert!(plan.to_string().contains("slots of"), "{plan}");
    }
}
