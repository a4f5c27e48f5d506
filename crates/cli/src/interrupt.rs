//! Ctrl-C during `run`: the first one asks generation to stop after the token in progress, so that the summary
//! is printed and the hot experts are saved for the next warm start (the process then exits with 130, as a shell
//! expects of SIGINT); a second one kills the process at once (the default action, restored by the first).
//!
//! In `chat`, Ctrl-C during a reply stops the reply (the flag, cleared at the next reply) and the conversation
//! goes on; at the prompt it ends the process as usual.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: signal(2) is async-signal-safe; restoring the default lets a second Ctrl-C end the process.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Installs the SIGINT handler and returns the flag it sets.
pub fn install() -> &'static AtomicBool {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic and calls signal(2), both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
    &REQUESTED
}

static GENERATING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint_chat(_: libc::c_int) {
    if GENERATING.load(Ordering::SeqCst) {
        REQUESTED.store(true, Ordering::SeqCst);
    } else {
        // SAFETY: signal(2) and raise(3) are async-signal-safe: the default action ends the process.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
        }
    }
}

/// The chat's handler: see the module doc. Returns the stop flag.
pub fn install_for_chat() -> &'static AtomicBool {
    let handler = on_sigint_chat as extern "C" fn(libc::c_int);
    // SAFETY: the handler only touches atomics and calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
    &REQUESTED
}

/// A reply starts (Ctrl-C now stops it) or ends (Ctrl-C now quits); the stop flag is cleared either way.
pub fn set_generating(on: bool) {
    REQUESTED.store(false, Ordering::SeqCst);
    GENERATING.store(on, Ordering::SeqCst);
}

/// Whether a Ctrl-C asked generation to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
