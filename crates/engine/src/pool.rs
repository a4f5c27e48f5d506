//! A persistent thread pool for the forward pass: `n - 1` workers plus the calling thread run one job at a time.
//!
//! A decode step hands the pool hundreds of small jobs (one per matrix), so a job must start in well under a
//! microsecond: workers spin for a short while on a generation counter before they park on a condition variable.
//! Jobs are plain closures `f(thread_index)`; [`ThreadPool::for_chunks`] splits a range of rows into chunks taken
//! dynamically, which keeps every output element computed by the same code whatever thread computes it (results
//! never depend on the thread count).

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spin iterations before a worker parks.
const SPIN_ITERS: u32 = 20_000;

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers compare it with the last one they ran.
    generation: AtomicU64,
    /// The current job, valid while `remaining > 0` for the generation it was published with.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// Workers parked on `wake` (only then does publishing a job take the lock).
    n_sleeping: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread that holds `ThreadPool::run_lock`, before it bumps `generation`
// (Release) and while no worker reads it; workers read it only after observing the new generation (Acquire) and
// finish with it before decrementing `remaining`, which the publisher waits for before the job goes out of scope.
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
            job: UnsafeCell::new(None),
            remaining: AtomicUsize::new(0),
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

    /// Runs `f(i)` for every thread index `i` in `0..n_threads`, the caller taking index 0; returns when all are
    /// done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: only the holder of run_lock writes `job`, and no worker reads it until the generation changes.
        // The lifetime is erased; the pointer is not used after this function returns, because we wait below
        // for every worker to finish the job.
        unsafe {
            let ptr: *const Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f);
            *shared.job.get() = Some(ptr);
        }
        shared.remaining.store(self.n_threads - 1, Ordering::Relaxed);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.n_sleeping.load(Ordering::SeqCst) > 0 {
            let _l = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        f(0);
        let mut spins = 0u32;
        while shared.remaining.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Splits `0..n` into chunks of `chunk` items (the last may be shorter) and runs `f` on each, spreading the
    /// chunks over the threads dynamically.
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
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
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
        }
        seen = shared.generation.load(Ordering::Acquire);
        // SAFETY: the publisher stored the job before bumping the generation we observed (Acquire), and keeps it
        // alive until `remaining` reaches zero, which happens only after this call returns.
        let job = unsafe { (*shared.job.get()).expect("job published with the generation") };
        // SAFETY: see above: the pointee outlives this call.
        unsafe { (*job)(index) };
        shared.remaining.fetch_sub(1, Ordering::AcqRel);
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
    fn run_gives_each_thread_its_index() {
        let pool = ThreadPool::new(4);
        let seen: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        pool.run(&|i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }
}
