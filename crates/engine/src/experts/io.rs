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

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

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
    /// The file's size and modification time when the model was opened: a read from a file that changed since
    /// then fails instead of handing out bytes of another model.
    pub expected: (u64, Option<std::time::SystemTime>),
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
    pub fn wait(&self) -> Result<(), String> {
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

    /// Whether every read has finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).remaining == 0
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

/// Which engine an [`IoPool`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEngine {
    Uring,
    Threads,
}

/// Persistent I/O threads.
pub struct IoPool {
    tx: Mutex<Option<Sender<(ReadReq, ReadBatch)>>>,
    handles: Vec<JoinHandle<()>>,
    engine: IoEngine,
}

impl IoPool {
    /// io_uring when the kernel allows it (unless `FLASH_MOE_IO=threads`), else `n_threads` pread threads.
    pub fn new(n_threads: usize) -> IoPool {
        let want_threads = std::env::var("FLASH_MOE_IO").is_ok_and(|v| v == "threads");
        Self::with_engine(if want_threads { IoEngine::Threads } else { IoEngine::Uring }, n_threads)
    }

    /// The engine asked for (io_uring falls back to threads where the kernel refuses it).
    pub fn with_engine(engine: IoEngine, n_threads: usize) -> IoPool {
        if engine == IoEngine::Uring {
            if let Ok(ring) = io_uring::IoUring::new(URING_DEPTH as u32) {
                let (tx, rx) = channel::<(ReadReq, ReadBatch)>();
                let handle = std::thread::Builder::new()
                    .name("flash-moe-uring".into())
                    .spawn(move || uring_loop(ring, rx))
                    .expect("spawning the io_uring thread");
                return IoPool { tx: Mutex::new(Some(tx)), handles: vec![handle], engine: IoEngine::Uring };
            }
        }
        Self::threads(n_threads)
    }

    /// A pool of `n_threads` pread threads.
    pub fn threads(n_threads: usize) -> IoPool {
        let (tx, rx) = channel::<(ReadReq, ReadBatch)>();
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..n_threads.max(1))
            .map(|i| {
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("flash-moe-io-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((req, batch)) = job else { return };
                        batch.finish_one(read_one(&req).err());
                    })
                    .expect("spawning an I/O thread")
            })
            .collect();
        IoPool { tx: Mutex::new(Some(tx)), handles, engine: IoEngine::Threads }
    }

    pub fn engine(&self) -> IoEngine {
        self.engine
    }

    /// Submits `reqs` as one batch; wait on the returned handle.
    pub fn submit(&self, reqs: Vec<ReadReq>) -> ReadBatch {
        let batch = ReadBatch::default();
        batch.state.0.lock().unwrap_or_else(|e| e.into_inner()).remaining = reqs.len();
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let tx = tx.as_ref().expect("I/O pool is running");
        for r in reqs {
            if let Err(e) = tx.send((r, batch.clone())) {
                // The threads are gone (only at shutdown): fail the read rather than hang.
                let (req, b) = e.0;
                drop(req);
                b.finish_one(Some("I/O threads stopped".into()));
            }
        }
        batch
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// One read, retried once on an I/O error or a short read.
fn read_one(req: &ReadReq) -> Result<(), String> {
    // SAFETY: see `ReadReq`: the destination is exclusively ours until the batch completes.
    let dst = unsafe { std::slice::from_raw_parts_mut(req.dst, req.len) };
    let mut last = String::new();
    for _attempt in 0..2 {
        match read_full(&req.file, dst, req.offset) {
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

/// Reads until `dst` is full or the end of the file; returns the bytes read.
fn read_full(f: &File, dst: &mut [u8], offset: u64) -> std::io::Result<usize> {
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

/// Fails if the file's size or modification time differ from when the model was opened.
fn check_unchanged(req: &ReadReq) -> Result<(), String> {
    let meta = req.file.metadata().map_err(|e| format!("{}: {e}", req.path.display()))?;
    let now = (meta.len(), meta.modified().ok());
    if now != req.expected {
        return Err(format!(
            "{}: the model file changed while running (size {} -> {}, or modified): restart with the new file",
            req.path.display(),
            req.expected.0,
            now.0
        ));
    }
    Ok(())
}

/// The io_uring engine: takes requests from `rx`, keeps up to [`URING_DEPTH`] in flight, completes batches.
fn uring_loop(mut ring: io_uring::IoUring, rx: std::sync::mpsc::Receiver<(ReadReq, ReadBatch)>) {
    use std::os::fd::AsRawFd;
    use std::sync::mpsc::TryRecvError;
    let mut inflight: Vec<Option<(ReadReq, ReadBatch)>> = (0..URING_DEPTH).map(|_| None).collect();
    let mut free: Vec<usize> = (0..URING_DEPTH).rev().collect();
    let mut closed = false;
    loop {
        // Queue new requests: block for one only when nothing is in flight.
        while let Some(&slot) = free.last() {
            let idle = free.len() == URING_DEPTH;
            let msg = if idle && !closed { rx.recv().map_err(|_| TryRecvError::Disconnected) } else { rx.try_recv() };
            let (req, batch) = match msg {
                Ok(m) => m,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            };
            let len = u32::try_from(req.len).expect("expert reads are far below 4 GiB");
            let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(req.file.as_raw_fd()), req.dst, len)
                .offset(req.offset)
                .build()
                .user_data(slot as u64);
            // SAFETY: the buffer stays valid and untouched until the completion (see `ReadReq`), and the request
            // (holding the file open) is kept in `inflight` until then.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                // The queue is full (cannot happen: its depth equals the in-flight table's): read directly.
                batch.finish_one(read_one(&req).err());
                continue;
            }
            free.pop();
            inflight[slot] = Some((req, batch));
        }
        if free.len() == URING_DEPTH {
            if closed {
                return;
            }
            continue;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // The ring itself failed: finish everything in flight with pread.
                for (req, batch) in inflight.iter_mut().filter_map(Option::take) {
                    let r = read_one(&req).map_err(|m| format!("{m} (after io_uring failed: {e})"));
                    batch.finish_one(r.err());
                }
                free = (0..URING_DEPTH).rev().collect();
                continue;
            }
        }
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (slot, res) in done {
            let slot = slot as usize;
            let Some((req, batch)) = inflight[slot].take() else { continue };
            free.push(slot);
            let outcome = if res >= 0 && res as usize >= req.len_needed {
                check_unchanged(&req)
            } else {
                // An error or a short read: retry with pread (which retries once more and checks lengths).
                read_one(&req)
            };
            batch.finish_one(outcome.err());
        }
    }
}
