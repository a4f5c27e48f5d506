//! A persistent thread pool for the forward pass: `n - 1` workers plus the calling thread share one job at a time.
//!
//! A decode step hands the pool hundreds of small jobs (one per matrix), so a job must start in well under a
//! microsecond: workers spin briefly on a generation counter, then yield, then park on a condition variable.
//! Jobs split a range into chunks that threads take dynamically ([`ThreadPool::for_chunks`]); the calling thread
//! takes chunks too and never waits for a worker that has not started: when a core is busy with another process
//! and a worker is descheduled, the caller simply does the work itself. Every output element is computed by the
//! same code whatever thread computes it, so results never depend on the thread count or on scheduling.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Busy-wait iterations before a waiting worker starts yielding, and yields before it parks.
const SPIN_ITERS: u32 = 2_000;
const YIELD_ITERS: u32 = 200;

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
    /// (as [`ThreadPool::for_chunks`] does): a worker may not run it at all.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: we hold run_lock and the previous job is closed with no worker inside it (see below), so no
        // worker reads `job` now. The lifetime is erased; the pointer is not used after this function returns,
        // because we close the generation and wait for `active == 0` before returning.
        unsafe {
            let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *shared.job.get() = Some(ptr);
        }
        let gen = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if shared.n_sleeping.load(Ordering::SeqCst) > 0 {
            let _l = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        f(0);
        shared.closed.store(gen, Ordering::SeqCst);
        let mut spins = 0u32;
        while shared.active.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
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
            if spins < SPIN_ITERS + YIELD_ITERS {
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
        };
        seen = gen;
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.generation.load(Ordering::SeqCst) == gen && shared.closed.load(Ordering::SeqCst) < gen {
            // SAFETY: generation `gen` is current and not closed, and we are counted in `active`, so the publisher
            // keeps the job alive until we leave (see `Shared`).
            let job = unsafe { (*shared.job.get()).expect("job published with the generation") };
            // SAFETY: as above.
            unsafe { (*job)(index) };
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
}
