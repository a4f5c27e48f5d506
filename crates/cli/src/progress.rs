//! A one-line progress display on stderr for long work (loading, perplexity, synth): redrawn in place at most a
//! few times a second, and only when stderr is a terminal and `--quiet` was not given, so that logs and pipes stay
//! clean. `FLASH_MOE_PROGRESS=always|never` overrides the terminal check (tests use it).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct ProgressLine {
    enabled: bool,
    drawn: bool,
    last: Option<Instant>,
}

/// Whether progress should be drawn: `FLASH_MOE_PROGRESS`, else stderr is a terminal; never with `quiet`.
pub fn wanted(quiet: bool) -> bool {
    if quiet {
        return false;
    }
    match std::env::var("FLASH_MOE_PROGRESS").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => std::io::stderr().is_terminal(),
    }
}

impl ProgressLine {
    pub fn new(quiet: bool) -> ProgressLine {
        ProgressLine { enabled: wanted(quiet), drawn: false, last: None }
    }

    /// Redraws the line with `text()` unless it was drawn less than 200 ms ago (`force` draws anyway).
    pub fn update(&mut self, force: bool, text: impl FnOnce() -> String) {
        if !self.enabled || (!force && self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(200))) {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        // Clear to the end of the line: the new text may be shorter.
        let _ = write!(std::io::stderr(), "\r{}\x1b[K", text());
    }

    /// Ends the line (if one was drawn) so that what follows starts on a fresh one.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// "1m05s" / "12s": a duration for an ETA.
pub fn eta(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
