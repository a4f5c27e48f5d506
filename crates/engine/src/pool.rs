//! A persistent thread pool for the forward pass: `n - 1` workers plus the calling thread share one job at a time.
//!
//! A decode step hands the pool hundreds of small jobs (one per matrix), so a job must start in well under a
//! microsecond: workers spin briefly on a generation counter, then yield, then park on a condition variable.
//! Jobs split a range into chunks that threads take dynamically ([`ThreadPool::for_chunks`]); the calling thread
//! takes chunks too and never waits for a worker that has not started: when a core is busy with another process
//! and a worker is descheduled, the caller simply does the work itself. Every output element is computed by the
//! same code whatever thread computes it, so results never depend on the thread count or on scheduling.
//!
//! A panic in any share propagates to the caller once no worker is inside the job any more (the job borrows the
//! caller's stack frame): a worker catches its panic, leaves the job and hands the panic to the caller, which
//! resumes it; a panic of the caller's own share waits for the workers before unwinding further.

use std::any::Any;
use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Busy-wait iterations before a waiting worker starts yielding.
const SPIN_ITERS: u32 = 2_000;
/// How long a waiting worker yields before it parks. Long enough to cover a wait for an expert read (a few ms):
/// a parked thread leaves its virtual CPU idle, and on a shared host an idle virtual CPU is given away and comes
/// back slowly, its caches cold. With 200 yields (well under a millisecond) the 30B shape streamed in an 8 GiB
/// cgroup stepped 184-201 ms a token; yielding through its waits, 145-162 ms (docs/benchmarks.md). An idle pool
/// (a server between requests) still parks within this time.
pub(crate) const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers compare it with the last one they saw.
    generation: AtomicU64,
    /// The highest generation whose job may no longer be entered.
    closed: AtomicU64,
    /// Workers inside a job (entered and not yet left).
    active: AtomicUsize,
    /// The current job, valid for the generation it was published with until that generation is closed and
    /// `active` drops to zero.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers parked on `wake` (only then does publishing a job take the lock).
    n_sleeping: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// The first panic of a worker's share of the current job, for the caller to resume.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Shared {
    fn take_panic(&self) -> Option<Box<dyn Any + Send>> {
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Closes generation `gen` and waits until no worker is inside its job, when dropped: on every way out of
/// [`ThreadPool::run`], a panic of the caller's share included.
struct CloseJob<'a> {
    shared: &'a Shared,
    gen: u64,
}

impl Drop for CloseJob<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        shared.closed.store(self.gen, Ordering::SeqCst);
        let mut spins = 0u32;
        while shared.active.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if std::thread::panicking() {
            // The caller's own panic goes on; a worker's panic of the same job is dropped with the job.
            drop(shared.take_panic());
        }
    }
}

// SAFETY: `job` is written only by the thread holding `ThreadPool::run_lock`, before it bumps `generation`, and
// only while no worker is inside a job (`active == 0` after the previous generation was closed). A worker reads it
// only after incrementing `active` and checking that the generation it saw is current and not closed (all SeqCst,
// so the publisher either sees the worker in `active` and waits, or the worker sees the job closed and skips it).
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only dereferenced under the protocol above.
unsafe impl Send for Shared {}

/// A pool of `n_threads` threads (the caller counts as one).
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            n_sleeping: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            panic: Mutex::new(None),
        });
        let handles = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("flash-moe-{index}"))
                    .spawn(move || worker(shared, index))
                    .expect("spawning a pool thread")
            })
            .collect();
        ThreadPool { n_threads, shared, handles, run_lock: Mutex::new(()) }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(0)` on the caller and `f(i)` on every worker `i` that starts before the caller finishes; returns
    /// when the caller is done and no worker is still inside `f`. `f` must therefore share its work dynamically
    /// (as [`ThreadPool::for_chunks`] does): a worker may not run it at all. A panic in any share is resumed on
    /// the caller, after every worker has left `f`.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: we hold run_lock and the previous job is closed with no worker inside it (see below), so no
        // worker reads `job` now. The lifetime is erased; the pointer is not used after this function returns or
        // unwinds, because `CloseJob` closes the generation and waits for `active == 0` on both ways out.
        unsafe {
            let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *shared.job.get() = Some(ptr);
        }
        let gen = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let close = CloseJob { shared, gen };
        if shared.n_sleeping.load(Ordering::SeqCst) > 0 {
            let _l = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        f(0);
        drop(close);
        if let Some(payload) = shared.take_panic() {
            std::panic::resume_unwind(payload);
        }
    }

    /// Splits `0..n` into chunks of `chunk` items (the last may be shorter) and runs `f` on each exactly once,
    /// spreading the chunks over the threads dynamically.
    pub fn for_chunks(&self, n: usize, chunk: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        self.for_chunks_indexed(n, chunk, &|_, r| f(r));
    }

    /// Like [`ThreadPool::for_chunks`], also passing the index of the thread running the chunk (for per-thread
    /// scratch buffers).
    pub fn for_chunks_indexed(&self, n: usize, chunk: usize, f: &(dyn Fn(usize, Range<usize>) + Sync)) {
        let chunk = chunk.max(1);
        let n_chunks = n.div_ceil(chunk);
        if n_chunks <= 1 || self.n_threads == 1 {
            let mut start = 0;
            while start < n {
                f(0, start..(start + chunk).min(n));
                start += chunk;
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|thread| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let start = c * chunk;
            f(thread, start..(start + chunk).min(n));
        });
    }

    /// A chunk size that gives each thread several chunks of `n` items, rounded up to a multiple of `align`.
    pub fn chunk_size(&self, n: usize, align: usize) -> usize {
        let per = n.div_ceil(self.n_threads * 4).max(1);
        per.div_ceil(align) * align
    }
}

fn worker(shared: Arc<Shared>, index: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let mut yielding = None;
        let gen = loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let g = shared.generation.load(Ordering::SeqCst);
            if g != seen {
                break g;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
                continue;
            }
            let since = *yielding.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < PARK_AFTER {
                std::thread::yield_now();
                continue;
            }
            let guard = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.n_sleeping.fetch_add(1, Ordering::SeqCst);
            let _guard = shared
                .wake
                .wait_while(guard, |_| {
                    shared.generation.load(Ordering::SeqCst) == seen && !shared.shutdown.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|e| e.into_inner());
            shared.n_sleeping.fetch_sub(1, Ordering::SeqCst);
            spins = 0;
            yielding = None;
        };
        seen = gen;
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.generation.load(Ordering::SeqCst) == gen && shared.closed.load(Ordering::SeqCst) < gen {
            // SAFETY: generation `gen` is current and not closed, and we are counted in `active`, so the publisher
            // keeps the job alive until we leave (see `Shared`).
            let job = unsafe { (*shared.job.get()).expect("job published with the generation") };
            // SAFETY: as above. A panic is caught here, so that this worker still leaves the job (the caller waits
            // for that) and lives on; the caller resumes it.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) }));
            if let Err(payload) = result {
                shared.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
            }
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// The number of physical cores (not SMT siblings), from /sys; falls back to the logical CPU count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..logical {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let core = std::fs::read_to_string(format!("{base}/core_id"));
        let pkg = std::fs::read_to_string(format!("{base}/physical_package_id"));
        match (core, pkg) {
            (Ok(c), Ok(p)) => {
                cores.insert((p.trim().to_string(), c.trim().to_string()));
            }
            _ => return logical,
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        for n_threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(n_threads);
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
                pool.for_chunks(1000, 7, &|r| {
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn every_thread_index_is_in_range_and_used_once_per_job() {
        let pool = ThreadPool::new(4);
        for _ in 0..100 {
            let seen: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|i| {
                seen[i].fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(seen[0].load(Ordering::Relaxed), 1, "the caller always runs");
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) <= 1));
        }
    }

    /// Runs `f` on a thread of its own; `None` if it has not returned within `secs` (a hang).
    fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(secs)).ok()
    }

    /// Spins until `flag` is set or `secs` have passed.
    fn wait_for(flag: &AtomicBool, secs: u64) {
        let t0 = std::time::Instant::now();
        while !flag.load(Ordering::SeqCst) && t0.elapsed().as_secs() < secs {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_panic_in_the_callers_share_returns_only_once_no_worker_is_inside_the_job() {
        let pool = ThreadPool::new(2);
        let entered = AtomicBool::new(false);
        let inside = std::sync::Arc::new(AtomicUsize::new(0));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 0 {
                    wait_for(&entered, 5);
                    panic!("the caller's share fails");
                }
                inside.fetch_add(1, Ordering::SeqCst);
                entered.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(200));
                inside.fetch_sub(1, Ordering::SeqCst);
            })
        }));
        assert!(caught.is_err(), "the caller's panic propagates");
        assert_eq!(inside.load(Ordering::SeqCst), 0, "run returned while a worker was still running the job");
        // The pool still works.
        let hits = AtomicUsize::new(0);
        pool.for_chunks(100, 3, &|r| {
            hits.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn a_panic_in_a_worker_reaches_the_caller_instead_of_hanging_it() {
        let outcome = within(20, || {
            let pool = ThreadPool::new(2);
            let entered = AtomicBool::new(false);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(&|i| {
                    if i == 0 {
                        wait_for(&entered, 5);
                    } else {
                        entered.store(true, Ordering::SeqCst);
                        panic!("a worker's share fails");
                    }
                })
            }));
            let message = caught.err().and_then(|p| p.downcast_ref::<&str>().map(|s| s.to_string()));
            // The worker survived its panic and the next job runs normally.
            let hits = AtomicUsize::new(0);
            pool.for_chunks(1000, 7, &|r| {
                hits.fetch_add(r.len(), Ordering::Relaxed);
            });
            (message, hits.load(Ordering::Relaxed))
        });
        let (message, hits) = outcome.expect("the caller hung after a worker panicked");
        assert_eq!(message.as_deref(), Some("a worker's share fails"));
        assert_eq!(hits, 1000);
    }
}
