//! Fault injection for expert reads: makes reads of chosen files fail with EIO, come back short, be slow or panic,
//! and io_uring's `io_uring_enter` fail after submitting, so that the error paths of [`super::io`] and
//! [`super::cache`] run under test (`tests/io_faults.rs`, `crates/cli/tests/hardening.rs`) instead of only when a
//! disk dies.
//!
//! Off unless asked: with no rule installed, each read pays one relaxed atomic load. Rules come from
//! [`inject`] (tests; removed when the returned guard drops) or from the environment variable
//! `FLASH_MOE_FAULTS`, read once, for a whole process (the CLI tests, fault drills):
//!
//! ```text
//! FLASH_MOE_FAULTS="eio:every=3:after=10:path=model.gguf;slow=20ms;short:every=2;uring-enter:every=4"
//! ```
//!
//! Rules are separated by `;`; each is a kind (`eio`, `short`, `slow=<N>ms`, `panic`, `uring-enter`: submits then
//! fails, `uring-enter-refused`: fails without submitting) and options
//! `every=N` (one attempt in N, default 1: all), `after=N` (the first N attempts are spared, default 0) and
//! `path=TEXT` (only files whose path contains TEXT, default all). A rule counts the read attempts it matches
//! (a retry is a new attempt); `uring-enter` counts `io_uring_enter` calls of rings with a matching read in flight.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::{Error, Result};

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The read fails with EIO (nothing is read).
    Eio,
    /// The read returns half of the bytes needed.
    Short,
    /// The read happens after this delay.
    Slow(Duration),
    /// The I/O thread panics while handling the read (a bug in the I/O layer, simulated).
    Panic,
    /// `io_uring_enter` submits the queued reads, then fails with EAGAIN (the requests are in the kernel).
    UringEnter,
    /// `io_uring_enter` fails with EAGAIN and submits nothing (as under a tight memory cgroup).
    UringEnterRefused,
}

impl FaultKind {
    fn is_uring_enter(self) -> bool {
        matches!(self, FaultKind::UringEnter | FaultKind::UringEnterRefused)
    }
}

/// One rule: which attempts get which fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Only reads of files whose path contains this (empty: every file).
    pub path_contains: String,
    /// One matching attempt in `every` fails (1: all of them).
    pub every: u64,
    /// The first `after` matching attempts are spared.
    pub after: u64,
}

impl Fault {
    /// Every attempt on files whose path contains `path_contains`.
    pub fn new(kind: FaultKind, path_contains: &str) -> Fault {
        Fault { kind, path_contains: path_contains.to_string(), every: 1, after: 0 }
    }

    fn matches(&self, path: &Path) -> bool {
        self.path_contains.is_empty() || path.to_string_lossy().contains(&self.path_contains)
    }
}

struct Rule {
    id: u64,
    fault: Fault,
    attempts: u64,
}

/// Whether any rule is installed (the fast path when none is).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static RULES: Mutex<Vec<Rule>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static FROM_ENV: OnceLock<()> = OnceLock::new();

/// Removes its rule when dropped.
#[must_use = "the fault is removed when the guard drops"]
pub struct FaultGuard {
    id: u64,
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let mut rules = lock();
        rules.retain(|r| r.id != self.id);
        ACTIVE.store(!rules.is_empty(), Ordering::Relaxed);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Rule>> {
    RULES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs `fault` until the guard drops.
pub fn inject(fault: Fault) -> FaultGuard {
    load_env();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    lock().push(Rule { id, fault, attempts: 0 });
    ACTIVE.store(true, Ordering::Relaxed);
    FaultGuard { id }
}

/// Installs the rules of `FLASH_MOE_FAULTS` once (a malformed value is reported on stderr and ignored: a fault
/// drill that silently injected nothing would prove nothing, one that stopped the program would be no drill).
fn load_env() {
    FROM_ENV.get_or_init(|| {
        let Ok(text) = std::env::var("FLASH_MOE_FAULTS") else { return };
        match parse(&text) {
            Ok(faults) => {
                let mut rules = lock();
                for fault in faults {
                    rules.push(Rule { id: 0, fault, attempts: 0 });
                }
                ACTIVE.store(!rules.is_empty(), Ordering::Relaxed);
            }
            Err(e) => eprintln!("warning: FLASH_MOE_FAULTS ignored: {e}"),
        }
    });
}

/// Parses the `FLASH_MOE_FAULTS` syntax (see the module doc).
pub fn parse(text: &str) -> Result<Vec<Fault>> {
    let bad = |rule: &str, why: &str| Error::Invalid(format!("fault rule '{rule}': {why}"));
    let mut out = Vec::new();
    for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
        let mut parts = rule.split(':');
        let kind = match parts.next().unwrap_or_default() {
            "eio" => FaultKind::Eio,
            "short" => FaultKind::Short,
            "panic" => FaultKind::Panic,
            "uring-enter" => FaultKind::UringEnter,
            "uring-enter-refused" => FaultKind::UringEnterRefused,
            k => match k.strip_prefix("slow=").and_then(|ms| ms.strip_suffix("ms")).map(str::parse::<u64>) {
                Some(Ok(ms)) => FaultKind::Slow(Duration::from_millis(ms)),
                _ => return Err(bad(rule, "kind is eio, short, slow=<N>ms, panic, uring-enter(-refused)")),
            },
        };
        let mut fault = Fault::new(kind, "");
        for opt in parts {
            let (key, value) = opt.split_once('=').ok_or_else(|| bad(rule, "options are key=value"))?;
            let number = || value.parse::<u64>().map_err(|_| bad(rule, "every and after take a number"));
            match key {
                "every" => fault.every = number()?.max(1),
                "after" => fault.after = number()?,
                "path" => fault.path_contains = value.to_string(),
                _ => return Err(bad(rule, "options are every, after and path")),
            }
        }
        out.push(fault);
    }
    Ok(out)
}

/// The fault (if any) for one read attempt of `path`: counts the attempt against every matching read rule.
pub(crate) fn on_read(path: &Path) -> Option<FaultKind> {
    load_env();
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    fire(|f| !f.kind.is_uring_enter() && f.matches(path))
}

/// The fault (if any) for an `io_uring_enter` call of a ring with reads of `paths` in flight.
pub(crate) fn on_uring_enter<'a>(mut paths: impl Iterator<Item = &'a Path>) -> Option<FaultKind> {
    load_env();
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    let rules = lock();
    let wanted: Vec<Fault> = rules.iter().filter(|r| r.fault.kind.is_uring_enter()).map(|r| r.fault.clone()).collect();
    drop(rules);
    if wanted.is_empty() {
        return None;
    }
    let hit = paths.find(|p| wanted.iter().any(|w| w.matches(p)))?;
    fire(|f| f.kind.is_uring_enter() && f.matches(hit))
}

/// Counts an attempt against every rule `applies` accepts; the first whose turn it is fires.
fn fire(applies: impl Fn(&Fault) -> bool) -> Option<FaultKind> {
    let mut rules = lock();
    let mut hit = None;
    for r in rules.iter_mut().filter(|r| applies(&r.fault)) {
        r.attempts += 1;
        let n = r.attempts;
        if hit.is_none() && n > r.fault.after && (n - r.fault.after) % r.fault.every == 0 {
            hit = Some(r.fault.kind);
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_syntax() {
        let f = parse("eio:every=3:after=10:path=model.gguf; slow=20ms ;short:every=2;uring-enter:every=4;panic")
            .expect("parses");
        assert_eq!(f.len(), 5);
        assert_eq!(parse("uring-enter-refused").expect("parses")[0].kind, FaultKind::UringEnterRefused);
        assert_eq!(f[0], Fault { kind: FaultKind::Eio, path_contains: "model.gguf".into(), every: 3, after: 10 });
        assert_eq!(f[1].kind, FaultKind::Slow(Duration::from_millis(20)));
        assert_eq!((f[2].kind, f[2].every), (FaultKind::Short, 2));
        assert_eq!((f[3].kind, f[3].every), (FaultKind::UringEnter, 4));
        assert_eq!(f[4].kind, FaultKind::Panic);
        for bad in ["eio:every", "slow=20", "nope", "eio:every=x", "eio:color=red"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_and_after_pick_the_attempts() {
        let path = "/tmp/faults-unit-test-every-after.bin";
        let _g = inject(Fault { every: 2, after: 1, ..Fault::new(FaultKind::Eio, path) });
        let hits: Vec<bool> = (0..6).map(|_| on_read(Path::new(path)).is_some()).collect();
        assert_eq!(hits, [false, false, true, false, true, false]);
        assert!(on_read(Path::new("/tmp/another-file")).is_none());
    }
}
