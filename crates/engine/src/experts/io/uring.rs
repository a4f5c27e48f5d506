//! The io_uring engine: one thread takes jobs from the queues (demand first), keeps up to [`URING_DEPTH`] reads in
//! flight and completes their batches.
//!
//! A request's buffer belongs to the kernel from the `io_uring_enter` that consumes its submission entry until its
//! completion arrives, so a request stays in the in-flight table, its id unused and its batch unfinished, until
//! then, whatever else fails. When `io_uring_enter` fails (EAGAIN, ENOMEM or EBUSY under a tight memory cgroup):
//! completions that arrived are handled, the call is retried with a growing pause, and requests the kernel took
//! are waited for with calls that only collect completions (they submit nothing, so they need no memory). If the
//! ring still fails once no request of ours is in the kernel, it is closed (entries it never consumed die with it)
//! and this thread reads the rest with `pread`, a slower engine but the same bytes. A panic in this thread fails
//! the read it was handling, or, outside of that, every read, once the kernel holds none of them.

use std::io;
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use io_uring::IoUring;

use super::{
    faults, panic_text, pread_thread, read_one, short_len, FaultKind, ReadBatch, ReadReq, Shared, URING_DEPTH,
};

/// `IORING_ENTER_GETEVENTS` (include/uapi/linux/io_uring.h): wait for completions.
const IORING_ENTER_GETEVENTS: u32 = 1;
/// Failed `io_uring_enter` calls in a row, with no completion meanwhile, before the ring is given up (once the
/// kernel holds no request of ours); the pauses between them double from 2 ms, about 2 s in all.
const ENTER_RETRIES: u32 = 10;
/// Failed calls in a row, with requests in the kernel and no completion meanwhile, after which none is expected any
/// more and the process stops (the kernel may still write into buffers that would otherwise be reused): minutes.
const ENTER_FAILURES_FATAL: u32 = ENTER_RETRIES + 2_000;

type Inflight = (ReadReq, ReadBatch, bool);

/// How [`Uring::serve`] ended.
enum Ended {
    /// The pool closed and every read is done.
    Closed,
    /// `io_uring_enter` kept failing (this error) and no request is in the kernel: go on with pread.
    RingFailed(io::Error),
}

struct Uring {
    ring: IoUring,
    /// Requests by id (`user_data`), from their submission entry until their completion.
    inflight: Vec<Option<Inflight>>,
    free: Vec<usize>,
    /// `io_uring_enter` calls that failed in a row with no completion meanwhile.
    stalled: u32,
}

/// Runs the engine on this thread until the pool closes.
pub(super) fn run(ring: IoUring, sh: &Shared) {
    let inflight = (0..URING_DEPTH).map(|_| None).collect();
    let mut u = Uring { ring, inflight, free: (0..URING_DEPTH).rev().collect(), stalled: 0 };
    match std::panic::catch_unwind(AssertUnwindSafe(|| u.serve(sh))) {
        Ok(Ended::Closed) => {}
        Ok(Ended::RingFailed(e)) => {
            // Nothing of ours is in the kernel: the entries it never consumed die with the ring.
            let pending: Vec<Inflight> = u.inflight.iter_mut().filter_map(Option::take).collect();
            drop(u);
            for (req, batch, spec) in pending {
                let r = read_one(&req).map_err(|m| format!("{m} (after io_uring failed: {e})"));
                batch.finish_one(r.err());
                sh.done(spec);
            }
            pread_thread(sh);
        }
        Err(payload) => {
            let why = match payload.downcast_ref::<&str>() {
                Some(s) => format!("the io_uring thread failed: {s}"),
                None => "the io_uring thread failed".to_string(),
            };
            u.abandon(sh, &why);
        }
    }
}

impl Uring {
    fn n_inflight(&self) -> usize {
        URING_DEPTH - self.free.len()
    }

    /// Requests whose submission entry the kernel consumed and whose completion has not been handled.
    fn n_in_kernel(&mut self) -> usize {
        self.n_inflight().saturating_sub(self.ring.submission().len())
    }

    fn serve(&mut self, sh: &Shared) -> Ended {
        loop {
            self.fill(sh);
            if self.n_inflight() == 0 {
                let q = sh.lock();
                if q.closed && q.demand.is_empty() && q.spec.is_empty() {
                    return Ended::Closed;
                }
                continue;
            }
            match self.enter() {
                Ok(_) => self.stalled = 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stalled += 1;
                    if self.reap(sh) == 0 {
                        if self.n_in_kernel() > 0 {
                            self.wait_for_kernel(&e);
                        } else if self.stalled >= ENTER_RETRIES {
                            return Ended::RingFailed(e);
                        } else {
                            std::thread::sleep(Duration::from_millis(1 << self.stalled.min(9)));
                        }
                    }
                }
            }
            self.reap(sh);
        }
    }

    /// Queues new jobs while ids are free; blocks for one only when nothing is in flight.
    fn fill(&mut self, sh: &Shared) {
        while let Some(&id) = self.free.last() {
            let idle = self.n_inflight() == 0;
            let next = {
                let mut q = sh.lock();
                loop {
                    if let Some(j) = q.pop() {
                        break Some(j);
                    }
                    if !idle || (q.closed && q.demand.is_empty() && q.spec.is_empty()) {
                        break None;
                    }
                    q = sh.cv.wait(q).unwrap_or_else(|e| e.into_inner());
                }
            };
            let Some(((req, batch), spec)) = next else { break };
            let Ok(len) = u32::try_from(req.len) else {
                batch.finish_one(Some(format!("{}: a read of {} bytes is too long", req.path.display(), req.len)));
                sh.done(spec);
                continue;
            };
            let sqe = io_uring::opcode::Read::new(io_uring::types::Fd(req.file.as_raw_fd()), req.dst, len)
                .offset(req.offset)
                .build()
                .user_data(id as u64);
            // SAFETY: the buffer stays valid and untouched until the completion (see `ReadReq`), and the request
            // (holding the file open) is kept in `inflight` until then.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                // The queue is full (cannot happen: its depth equals the in-flight table's). The entry was not
                // queued, so the kernel never sees this buffer: read it directly.
                batch.finish_one(read_one(&req).err());
                sh.done(spec);
                continue;
            }
            self.free.pop();
            self.inflight[id] = Some((req, batch, spec));
        }
    }

    /// Submits what is queued and waits for one completion, or fails as [`faults`] asks.
    fn enter(&mut self) -> io::Result<usize> {
        let paths = self.inflight.iter().flatten().map(|(r, _, _)| r.path.as_path());
        match faults::on_uring_enter(paths) {
            Some(FaultKind::UringEnter) => {
                // As when the kernel takes the entries and the wait then fails: the requests are in the kernel.
                self.ring.submit()?;
                Err(io::Error::from_raw_os_error(libc::EAGAIN))
            }
            Some(_) => Err(io::Error::from_raw_os_error(libc::EAGAIN)), // refused: nothing submitted
            None => self.ring.submit_and_wait(1),
        }
    }

    /// After a failed `io_uring_enter` (`e`), with requests in the kernel: waits for a completion without
    /// submitting anything (which needs no memory), or pauses before the next try.
    fn wait_for_kernel(&mut self, e: &io::Error) {
        if self.stalled >= ENTER_FAILURES_FATAL {
            eprintln!(
                "error: io_uring failed {} times in a row ({e}) with expert reads in the kernel; stopping, since \
                 their buffers cannot be reused safely",
                self.stalled
            );
            std::process::abort();
        }
        if self.wait_only().is_err() {
            std::thread::sleep(Duration::from_millis(1 << self.stalled.min(7)));
        }
    }

    /// An `io_uring_enter` that submits nothing and waits for one completion.
    fn wait_only(&self) -> io::Result<usize> {
        // SAFETY: no entry is submitted and no argument pointer is passed; the call only waits for completions.
        unsafe { self.ring.submitter().enter::<libc::sigset_t>(0, 1, IORING_ENTER_GETEVENTS, None) }
    }

    /// Handles the completions that arrived; returns how many.
    fn reap(&mut self, sh: &Shared) -> usize {
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        if !done.is_empty() {
            self.stalled = 0;
        }
        for &(id, res) in &done {
            let Some((req, batch, spec)) = self.inflight.get_mut(id as usize).and_then(Option::take) else { continue };
            self.free.push(id as usize);
            // The kernel is done with the buffer: a retry or a panic here touches nobody else's.
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| complete(&req, res)))
                .unwrap_or_else(|p| Err(panic_text(&req, p.as_ref())));
            batch.finish_one(outcome.err());
            sh.done(spec);
        }
        done.len()
    }

    /// After a panic of this thread outside of a read: waits until the kernel holds no request of ours, then fails
    /// every read in flight or queued.
    fn abandon(&mut self, sh: &Shared, why: &str) {
        let fail = |(_, batch, spec): Inflight| {
            batch.finish_one(Some(why.to_string()));
            sh.done(spec);
        };
        loop {
            let ids: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            for id in ids {
                if let Some(x) = self.inflight.get_mut(id as usize).and_then(Option::take) {
                    self.free.push(id as usize);
                    fail(x);
                }
            }
            if self.n_in_kernel() == 0 {
                break;
            }
            if self.wait_only().is_err() {
                eprintln!("error: {why}, and io_uring fails with expert reads in the kernel; stopping");
                std::process::abort();
            }
        }
        // Entries the kernel never consumed: nothing submits them any more, and they die with the ring.
        self.inflight.iter_mut().filter_map(Option::take).for_each(fail);
        sh.fail_all(why);
    }
}

/// The outcome of a completed request (`res`: bytes read or a negative errno), with the fault [`faults`] injects
/// for this attempt; an error or a short read is retried with pread.
fn complete(req: &ReadReq, res: i32) -> Result<(), String> {
    let res = match faults::on_read(&req.path) {
        Some(FaultKind::Eio) => -libc::EIO,
        Some(FaultKind::Short) => short_len(req) as i32,
        Some(FaultKind::Slow(d)) => {
            std::thread::sleep(d);
            res
        }
        Some(FaultKind::Panic) => panic!("injected fault: panic while completing a read of {}", req.path.display()),
        None | Some(FaultKind::UringEnter | FaultKind::UringEnterRefused) => res,
    };
    if res >= 0 && res as usize >= req.len_needed {
        super::check_unchanged(req)
    } else {
        read_one(req)
    }
}
