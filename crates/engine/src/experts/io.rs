//! Positioned reads on a pool of I/O threads, many in flight, bypassing the page cache where the file system
//! allows (O_DIRECT).
//!
//! A [`ReadBatch`] is a set of reads that complete together (the gate, up and down ranges of one expert); callers
//! submit batches and wait for them later, so reads overlap with compute and with each other.
//!
//! Two engines behind one interface: io_uring (one thread keeps up to [`URING_DEPTH`] reads in flight), and a
//! pool of threads doing `pread` where io_uring is unavailable (old kernels, seccomp) or
//! `FLASH_MOE_IO=threads` asks for it. A failed or short read is retried once with `pread`; a read from a file
//! that changed since the model was opened fails.
//!
//! Failures never lose track of a buffer: a read the kernel may still write into (an io_uring request without
//! its completion) keeps its buffer and its batch until the completion arrives, whatever `io_uring_enter` returns
//! meanwhile ([`uring`]); a panic in an I/O thread fails the read it was doing and the thread lives on, and if an
//! I/O thread dies anyway every queued read fails instead of waiting forever. [`super::faults`] injects such
//! failures for the tests.
//!
//! Two queues: demand reads (an expert the forward pass waits for) and speculative reads (prefetch). A
//! speculative read starts only when no demand read is queued, and at most [`SPEC_INFLIGHT_MAX`] of them are in
//! flight, so a demand read never queues behind more than that; a queued speculative read can be promoted to the
//! demand queue (the forward pass now needs it) or cancelled (the prediction was wrong).
//!
//! The pool also measures how busy demand reads keep it: the time during which at least one demand read was
//! queued or in flight ([`IoPool::demand_busy_secs`]); the expert cache throttles prefetch by it.

mod uring;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::faults::{self, FaultKind};
use crate::formats::FileStamp;
use crate::{Error, Result};

/// The alignment of direct reads (buffer address, file offset and length): the page size, which covers every
/// logical block size in use.
pub const DIRECT_ALIGN: usize = 4096;

/// One read: `len` bytes at `offset` of `file` into `dst`.
pub struct ReadReq {
    pub file: Arc<File>,
    pub path: Arc<PathBuf>,
    pub offset: u64,
    pub dst: *mut u8,
    pub len: usize,
    /// Bytes that must arrive (the rest of `len` is alignment padding that may lie past the end of the file).
    pub len_needed: usize,
    /// What the file was when the model was opened: a read from a file that changed since then fails instead of
    /// handing out bytes of another model.
    pub expected: FileStamp,
}

// SAFETY: `dst` points into an expert-cache slot that the submitter has claimed for this read and does not touch
// until the batch completes; no other thread reads or writes it meanwhile.
unsafe impl Send for ReadReq {}

/// Completion state shared by the reads of one batch.
#[derive(Default)]
struct BatchState {
    remaining: usize,
    error: Option<String>,
}

/// A group of reads that complete together.
#[derive(Clone, Default)]
pub struct ReadBatch {
    state: Arc<(Mutex<BatchState>, Condvar)>,
}

impl ReadBatch {
    /// Blocks until every read of the batch is done; returns the first error.
    pub fn wait(&self) -> std::result::Result<(), String> {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        while s.remaining > 0 {
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        match &s.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// [`ReadBatch::wait`] for the forward pass: yields first, for as long as the pool's workers do
    /// ([`crate::pool::PARK_AFTER`]), then sleeps. Sleeping through a read of a few ms leaves the virtual CPU idle,
    /// and on a shared host an idle one is given away and comes back slowly (background threads use `wait`).
    pub fn wait_yielding(&self) -> std::result::Result<(), String> {
        let t0 = std::time::Instant::now();
        while !self.is_done() && t0.elapsed() < crate::pool::PARK_AFTER {
            std::thread::yield_now();
        }
        self.wait()
    }

    /// A batch of one read done some other way, finished by [`ReadBatch::complete`] (a preload's coalesced reads:
    /// a forward step that finds such an expert waits on it like on any read).
    pub(crate) fn manual() -> ReadBatch {
        let b = ReadBatch::default();
        b.state.0.lock().unwrap_or_else(|e| e.into_inner()).remaining = 1;
        b
    }

    /// Finishes a [`ReadBatch::manual`] batch, with an error or not.
    pub(crate) fn complete(&self, err: Option<String>) {
        self.finish_one(err);
    }

    /// Whether every read has finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).remaining == 0
    }

    fn same(&self, other: &ReadBatch) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    fn finish_one(&self, err: Option<String>) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if s.error.is_none() {
            s.error = err;
        }
        s.remaining -= 1;
        if s.remaining == 0 {
            cv.notify_all();
        }
    }
}

/// Reads io_uring keeps in flight.
pub const URING_DEPTH: usize = 64;

/// Pread threads at most (`--io-threads`): more only take memory for their stacks.
pub const IO_THREADS_MAX: usize = 256;

/// Which engine an [`IoPool`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    Uring,
    Threads,
}

/// Speculative reads in flight at most (per pool), so that a demand read waits behind at most this many.
pub const SPEC_INFLIGHT_MAX: usize = 2;

type Job = (ReadReq, ReadBatch);

/// The two queues of an [`IoPool`], under one lock.
#[derive(Default)]
struct Queues {
    demand: VecDeque<Job>,
    spec: VecDeque<Job>,
    spec_inflight: usize,
    closed: bool,
    /// Why the pool can no longer read (an I/O thread died): every read, queued or new, fails with this.
    dead: Option<String>,
    /// Demand reads queued or in flight; since when that count has been above zero, and the time it was before.
    demand_active: usize,
    busy_since: Option<std::time::Instant>,
    busy_secs: f64,
}

impl Queues {
    fn demand_added(&mut self, n: usize) {
        if self.demand_active == 0 && n > 0 {
            self.busy_since = Some(std::time::Instant::now());
        }
        self.demand_active += n;
    }

    fn demand_finished(&mut self) {
        self.demand_active = self.demand_active.saturating_sub(1);
        if self.demand_active == 0 {
            if let Some(t) = self.busy_since.take() {
                self.busy_secs += t.elapsed().as_secs_f64();
            }
        }
    }

    /// The next job to start: demand first; speculative only when no demand is queued and fewer than
    /// [`SPEC_INFLIGHT_MAX`] are in flight. The flag says whether it is speculative.
    fn pop(&mut self) -> Option<(Job, bool)> {
        if let Some(j) = self.demand.pop_front() {
            return Some((j, false));
        }
        if self.spec_inflight < SPEC_INFLIGHT_MAX {
            if let Some(j) = self.spec.pop_front() {
                self.spec_inflight += 1;
                return Some((j, true));
            }
        }
        None
    }
}

struct Shared {
    q: Mutex<Queues>,
    cv: Condvar,
}

impl Shared {
    fn new() -> Arc<Shared> {
        Arc::new(Shared { q: Mutex::default(), cv: Condvar::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until a job is queued (demand first, see [`Queues::pop`]); `None` once the pool is closed and
    /// nothing is queued.
    fn next_job(&self) -> Option<(Job, bool)> {
        let mut q = self.lock();
        loop {
            if let Some(j) = q.pop() {
                return Some(j);
            }
            if q.closed && q.demand.is_empty() && q.spec.is_empty() {
                return None;
            }
            q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks the pool dead (`why`) and fails every queued read: nobody is left to do them.
    fn fail_all(&self, why: &str) {
        let mut q = self.lock();
        q.dead.get_or_insert_with(|| why.to_string());
        let demand: Vec<Job> = q.demand.drain(..).collect();
        let spec: Vec<Job> = q.spec.drain(..).collect();
        for _ in &demand {
            q.demand_finished();
        }
        drop(q);
        self.cv.notify_all();
        for (_, batch) in demand.into_iter().chain(spec) {
            batch.finish_one(Some(why.to_string()));
        }
    }

    /// A read started by [`Queues::pop`] finished.
    fn done(&self, spec: bool) {
        let mut q = self.lock();
        if spec {
            q.spec_inflight -= 1;
            drop(q);
            self.cv.notify_all();
        } else {
            q.demand_finished();
        }
    }
}

/// Persistent I/O threads.
pub struct IoPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    engine: IoEngine,
}

impl IoPool {
    /// io_uring when the kernel allows it (unless `FLASH_MOE_IO=threads`), else `n_threads` pread threads.
    pub fn new(n_threads: usize) -> Result<IoPool> {
        let want_threads = std::env::var("FLASH_MOE_IO").is_ok_and(|v| v == "threads");
        Self::with_engine(if want_threads { IoEngine::Threads } else { IoEngine::Uring }, n_threads)
    }

    /// The engine asked for (io_uring falls back to threads where the kernel refuses it).
    pub fn with_engine(engine: IoEngine, n_threads: usize) -> Result<IoPool> {
        if engine == IoEngine::Uring {
            if let Ok(ring) = io_uring::IoUring::new(URING_DEPTH as u32) {
                let shared = Shared::new();
                let sh = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("flash-moe-uring".into())
                    .spawn(move || uring::run(ring, &sh))
                    .map_err(|e| Error::Invalid(format!("starting the io_uring thread: {e}")))?;
                return Ok(IoPool { shared, handles: vec![handle], engine: IoEngine::Uring });
            }
        }
        Self::threads(n_threads)
    }

    /// A pool of `n_threads` pread threads (at most [`IO_THREADS_MAX`]).
    pub fn threads(n_threads: usize) -> Result<IoPool> {
        if n_threads > IO_THREADS_MAX {
            return Err(Error::Invalid(format!("{n_threads} I/O threads: at most {IO_THREADS_MAX}")));
        }
        let mut pool = IoPool { shared: Shared::new(), handles: Vec::new(), engine: IoEngine::Threads };
        for i in 0..n_threads.max(1) {
            let sh = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("flash-moe-io-{i}"))
                .spawn(move || pread_thread(&sh))
                // Dropping the pool stops the threads already started.
                .map_err(|e| Error::Invalid(format!("starting I/O thread {} of {n_threads}: {e}", i + 1)))?;
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    /// Submits `reqs` as one batch of demand reads; wait on the returned handle.
    pub fn submit(&self, reqs: Vec<ReadReq>) -> ReadBatch {
        self.enqueue(reqs, false)
    }

    /// Submits `reqs` as one batch of speculative reads: they start only when no demand read is queued.
    pub fn submit_speculative(&self, reqs: Vec<ReadReq>) -> ReadBatch {
        self.enqueue(reqs, true)
    }

    fn enqueue(&self, reqs: Vec<ReadReq>, spec: bool) -> ReadBatch {
        let batch = ReadBatch::default();
        batch.state.0.lock().unwrap_or_else(|e| e.into_inner()).remaining = reqs.len();
        let mut q = self.shared.lock();
        if q.closed || q.dead.is_some() {
            let why = q.dead.clone().unwrap_or_else(|| "I/O threads stopped".into());
            drop(q);
            for _ in reqs {
                batch.finish_one(Some(why.clone()));
            }
            return batch;
        }
        if !spec {
            q.demand_added(reqs.len());
        }
        let dst = if spec { &mut q.spec } else { &mut q.demand };
        dst.extend(reqs.into_iter().map(|r| (r, batch.clone())));
        drop(q);
        self.shared.cv.notify_all();
        batch
    }

    /// Seconds during which at least one demand read was queued or in flight, since the pool started.
    pub fn demand_busy_secs(&self) -> f64 {
        let q = self.shared.lock();
        q.busy_secs + q.busy_since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Moves the queued reads of a speculative `batch` to the demand queue (the forward pass now waits for it).
    pub fn promote(&self, batch: &ReadBatch) {
        let mut q = self.shared.lock();
        let mut i = 0;
        while i < q.spec.len() {
            if q.spec[i].1.same(batch) {
                let job = q.spec.remove(i).expect("index checked");
                q.demand.push_back(job);
                q.demand_added(1);
            } else {
                i += 1;
            }
        }
        drop(q);
        self.shared.cv.notify_all();
    }

    /// Drops a speculative `batch` if none of its reads has started; returns whether it was dropped (the batch
    /// then completes with an error and its destination is untouched).
    pub fn cancel(&self, batch: &ReadBatch) -> bool {
        let mut q = self.shared.lock();
        let queued = q.spec.iter().filter(|j| j.1.same(batch)).count();
        let total = batch.state.0.lock().unwrap_or_else(|e| e.into_inner()).remaining;
        if queued == 0 || queued != total {
            return false;
        }
        q.spec.retain(|j| !j.1.same(batch));
        drop(q);
        for _ in 0..queued {
            batch.finish_one(Some("cancelled".into()));
        }
        true
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.cv.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A pread thread: does queued reads until the pool closes. A panic while reading fails that read and the thread
/// goes on; should the thread die anyway, the queued reads fail instead of waiting for it.
fn pread_thread(sh: &Shared) {
    struct OnExit<'a>(&'a Shared);
    impl Drop for OnExit<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.fail_all("an I/O thread died");
            }
        }
    }
    let _exit = OnExit(sh);
    while let Some(((req, batch), spec)) = sh.next_job() {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| read_one(&req)))
            .unwrap_or_else(|p| Err(panic_text(&req, p.as_ref())));
        batch.finish_one(outcome.err());
        sh.done(spec);
    }
}

/// The error of a read whose I/O thread panicked.
fn panic_text(req: &ReadReq, payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    format!("{}: reading {} bytes at offset {}: the I/O thread failed: {what}", req.path.display(), req.len, req.offset)
}

/// One read, retried once on an I/O error or a short read.
fn read_one(req: &ReadReq) -> std::result::Result<(), String> {
    // SAFETY: see `ReadReq`: the destination is exclusively ours until the batch completes.
    let dst = unsafe { std::slice::from_raw_parts_mut(req.dst, req.len) };
    let mut last = String::new();
    for _attempt in 0..2 {
        match read_full_faulty(req, dst) {
            Ok(n) if n >= req.len_needed => return check_unchanged(req),
            Ok(n) => {
                last = format!(
                    "{}: short read: {n} of {} bytes at offset {} (file truncated or replaced?)",
                    req.path.display(),
                    req.len_needed,
                    req.offset
                )
            }
            Err(e) => last = format!("{}: reading {} bytes at offset {}: {e}", req.path.display(), req.len, req.offset),
        }
    }
    Err(last)
}

/// [`read_full`] of `req` into `dst`, with the fault [`faults`] injects for this attempt, if any.
fn read_full_faulty(req: &ReadReq, dst: &mut [u8]) -> std::io::Result<usize> {
    match faults::on_read(&req.path) {
        None | Some(FaultKind::UringEnter | FaultKind::UringEnterRefused) => read_full(&req.file, dst, req.offset),
        Some(FaultKind::Eio) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        Some(FaultKind::Short) => read_full(&req.file, &mut dst[..short_len(req)], req.offset),
        Some(FaultKind::Slow(d)) => {
            std::thread::sleep(d);
            read_full(&req.file, dst, req.offset)
        }
        Some(FaultKind::Panic) => panic!("injected fault: panic while reading {}", req.path.display()),
    }
}

/// What an injected short read returns: about half of the bytes needed (whole 4 KiB blocks, as a direct read).
fn short_len(req: &ReadReq) -> usize {
    req.len_needed / 2 / DIRECT_ALIGN * DIRECT_ALIGN
}

/// Reads until `dst` is full or the end of the file; returns the bytes read. (Also the load's direct reads,
/// [`crate::formats::bulk`].)
pub(crate) fn read_full(f: &File, dst: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < dst.len() {
        match f.read_at(&mut dst[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                // A direct read returns less only at the end of the file; continuing at an unaligned offset
                // would fail, so stop and let the caller check the length.
                if done % DIRECT_ALIGN != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Fails if the file changed since the model was opened ([`FileStamp`]: size, times, inode).
fn check_unchanged(req: &ReadReq) -> std::result::Result<(), String> {
    let meta = req.file.metadata().map_err(|e| format!("{}: {e}", req.path.display()))?;
    if let Some(change) = FileStamp::of(&meta).change_since(&req.expected) {
        return Err(format!(
            "{}: the model file changed while running ({change}): restart with the new file",
            req.path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(file: &Arc<File>) -> Job {
        let req = ReadReq {
            file: Arc::clone(file),
            path: Arc::new(PathBuf::from("/dev/null")),
            offset: 0,
            dst: std::ptr::null_mut(),
            len: 0,
            len_needed: 0,
            expected: FileStamp { size: 0, mtime: None, ctime: (0, 0), dev: 0, ino: 0 },
        };
        (req, ReadBatch::default())
    }

    /// A panic in an I/O thread fails the read it was doing (no `wait` blocks) and the pool goes on reading.
    #[test]
    fn a_panicking_io_thread_fails_its_read_and_lives_on() {
        let path = std::env::temp_dir().join(format!("flash-moe-io-panic-{}.bin", std::process::id()));
        std::fs::write(&path, vec![7u8; 3 * DIRECT_ALIGN]).expect("write");
        let file = Arc::new(File::open(&path).expect("open"));
        let expected = FileStamp::of(&file.metadata().expect("meta"));
        for engine in [IoEngine::Uring, IoEngine::Threads] {
            let pool = IoPool::with_engine(engine, 1).expect("pool");
            let buf = crate::tensor::AlignedBuf::zeroed_aligned(DIRECT_ALIGN, DIRECT_ALIGN);
            let req = |dst: *mut u8| ReadReq {
                file: Arc::clone(&file),
                path: Arc::new(path.clone()),
                offset: DIRECT_ALIGN as u64,
                dst,
                len: DIRECT_ALIGN,
                len_needed: DIRECT_ALIGN,
                expected,
            };
            let guard = faults::inject(faults::Fault::new(FaultKind::Panic, path.to_str().expect("utf-8")));
            let (tx, rx) = std::sync::mpsc::channel();
            let batch = pool.submit(vec![req(buf.as_ptr())]);
            std::thread::spawn(move || tx.send(batch.wait()));
            let result =
                rx.recv_timeout(std::time::Duration::from_secs(20)).expect("wait blocked: the read never ended");
            let msg = result.expect_err("the read fails");
            assert!(msg.contains("the I/O thread failed") && msg.contains("injected fault"), "{msg}");
            drop(guard);
            pool.submit(vec![req(buf.as_ptr())]).wait().expect("the pool reads again");
            assert!(buf.as_slice().iter().all(|&b| b == 7));
        }
        let _ = std::fs::remove_file(&path);
    }

    /// A pool whose threads are gone fails queued and new reads instead of leaving them waiting.
    #[test]
    fn reads_of_a_dead_pool_fail() {
        let f = Arc::new(File::open("/dev/null").expect("/dev/null"));
        let pool = IoPool::threads(1).expect("pool");
        pool.shared.fail_all("an I/O thread died");
        let (req, _) = job(&f);
        let msg = pool.submit(vec![req]).wait().expect_err("fails");
        assert_eq!(msg, "an I/O thread died");
    }

    #[test]
    fn demand_reads_go_first_and_speculative_ones_are_bounded() {
        let f = Arc::new(File::open("/dev/null").expect("/dev/null"));
        let mut q = Queues::default();
        for _ in 0..SPEC_INFLIGHT_MAX + 2 {
            q.spec.push_back(job(&f));
        }
        q.demand.push_back(job(&f));
        assert!(matches!(q.pop(), Some((_, false))), "the demand read first");
        for _ in 0..SPEC_INFLIGHT_MAX {
            assert!(matches!(q.pop(), Some((_, true))));
        }
        assert!(q.pop().is_none(), "no more than SPEC_INFLIGHT_MAX speculative reads in flight");
        q.demand.push_back(job(&f));
        assert!(matches!(q.pop(), Some((_, false))), "a demand read still starts");
        q.spec_inflight -= 1;
        assert!(matches!(q.pop(), Some((_, true))), "a finished speculative read makes room");
    }

    #[test]
    fn demand_busy_time_counts_while_demand_reads_are_pending() {
        let mut q = Queues::default();
        q.demand_added(2);
        std::thread::sleep(std::time::Duration::from_millis(5));
        q.demand_finished();
        assert_eq!(q.busy_secs, 0.0, "one of two still pending");
        q.demand_finished();
        let busy = q.busy_secs;
        assert!(busy >= 0.005, "{busy}");
        std::thread::sleep(std::time::Duration::from_millis(5));
        q.demand_added(0);
        assert_eq!(q.busy_secs, busy, "idle time is not counted");
        assert!(q.busy_since.is_none());
    }
}
