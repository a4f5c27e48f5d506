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

/// Bytes in a human unit (GiB/MiB/KiB).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", b / 1024.0)
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

/// The automatic budget and where it came from.
pub fn auto_budget() -> (u64, String) {
    let cg = cgroup_limit();
    let avail = mem_available();
    let (limit, source) = match (cg, avail) {
        (Some(c), Some(a)) if c < a => (c, format!("cgroup limit {}", human(c))),
        (_, Some(a)) => (a, format!("available memory {}", human(a))),
        (Some(c), None) => (c, format!("cgroup limit {}", human(c))),
        (None, None) => (4 << 30, "no limit found; assuming 4 GiB".to_string()),
    };
    // Headroom for the allocator, the binary, thread stacks and the kernel's own per-cgroup bookkeeping.
    let headroom = (limit / 16).max(256 << 20);
    (limit.saturating_sub(headroom), source)
}

/// What the memory goes to.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    pub budget_bytes: u64,
    pub budget_source: String,
    pub resident_bytes: u64,
    pub kv_bytes: u64,
    pub scratch_bytes: u64,
    pub slot_bytes: u64,
    pub n_slots: usize,
    pub n_experts_total: usize,
    pub min_slots: usize,
    /// The read engine, once the cache exists ("io_uring" or "pread threads").
    pub io_engine: String,
}

impl MemoryPlan {
    /// Fits an expert cache of whole slots into what the budget leaves.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        budget: Budget,
        resident_bytes: u64,
        kv_bytes: u64,
        scratch_bytes: u64,
        slot_bytes: u64,
        n_experts_total: usize,
        min_slots: usize,
    ) -> Result<MemoryPlan> {
        let fixed = resident_bytes + kv_bytes + scratch_bytes;
        let min_total = fixed + min_slots as u64 * slot_bytes;
        let (budget_bytes, budget_source) = match budget {
            Budget::Min => (min_total, "min: one layer's top-k experts".to_string()),
            Budget::Bytes(b) => (b, "--memory-budget".to_string()),
            Budget::ExpertPercent(pct) => {
                let n = (n_experts_total * pct.clamp(1, 100) as usize).div_ceil(100).max(min_slots);
                (fixed + n as u64 * slot_bytes, format!("a cache of {pct}% of the experts"))
            }
            Budget::Auto => auto_budget(),
        };
        if budget_bytes < min_total {
            return Err(Error::Invalid(format!(
                "memory budget {} is too small to run: resident weights {} + KV cache {} + scratch {} + {} experts of \
                 {} need at least {} (--memory-budget min); lower --ctx-size to shrink the KV cache",
                human(budget_bytes),
                human(resident_bytes),
                human(kv_bytes),
                human(scratch_bytes),
                min_slots,
                human(slot_bytes),
                human(min_total),
            )));
        }
        let n_slots =
            (((budget_bytes - fixed) / slot_bytes.max(1)) as usize).clamp(min_slots, n_experts_total.max(min_slots));
        Ok(MemoryPlan {
            budget_bytes,
            budget_source,
            resident_bytes,
            kv_bytes,
            scratch_bytes,
            slot_bytes,
            n_slots,
            n_experts_total,
            min_slots,
            io_engine: String::new(),
        })
    }

    pub fn cache_bytes(&self) -> u64 {
        self.n_slots as u64 * self.slot_bytes
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
        if !self.io_engine.is_empty() {
            write!(f, ", read with {}", self.io_engine)?;
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
        let p = MemoryPlan::new(Budget::Bytes(1000 + 10 * 100 + 50), 800, 100, 100, 100, 64, 2).expect("fits");
        assert_eq!(p.n_slots, 10);
        let e = MemoryPlan::new(Budget::Bytes(1100), 800, 100, 100, 100, 64, 2).expect_err("too small");
        assert!(e.to_string().contains("too small"), "{e}");
        let q = MemoryPlan::new(Budget::ExpertPercent(25), 800, 100, 100, 100, 64, 2).expect("25%");
        assert_eq!((q.n_slots, q.budget_bytes), (16, 1000 + 1600));
        let m = MemoryPlan::new(Budget::Min, 800, 100, 100, 100, 64, 2).expect("min");
        assert_eq!(m.n_slots, 2);
        let all = MemoryPlan::new(Budget::Bytes(1 << 40), 800, 100, 100, 100, 64, 2).expect("all");
        assert_eq!(all.n_slots, 64);
    }
}
