//! Ctrl-C during `flash-moe run`: generation stops after the token in progress, the summary is printed, the hot
//! experts are saved for the next warm start, and the exit code is 130.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_flash-moe");

#[test]
fn ctrl_c_stops_cleanly_and_saves_the_hot_experts() {
    let cache_home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interrupt_xdg");
    let _ = std::fs::remove_dir_all(&cache_home);
    std::fs::create_dir_all(&cache_home).expect("temp dir");
    // The bundled model, streaming through a cache of a quarter of its experts, long enough to be interrupted.
    let mut child = Command::new(BIN)
        .args([
            "run",
            "-p",
            "def main():",
            "-n",
            "100000",
            "--ignore-eos",
            "--temp",
            "0",
            "-t",
            "1",
            "--no-display-prompt",
        ])
        .env("XDG_CACHE_HOME", &cache_home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flash-moe");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("generation starts");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) }, 0);
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("stdout");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "exit code after Ctrl-C; stderr:\n{stderr}");
    assert!(stderr.contains("stop: Interrupted"), "the summary says why it stopped:\n{stderr}");
    assert!(stderr.contains("experts    decode"), "the summary is printed:\n{stderr}");
    let dir = cache_home.join("flash-moe");
    let hot: Vec<_> = std::fs::read_dir(&dir).expect("hot dir").filter_map(Result::ok).collect();
    assert_eq!(hot.len(), 1, "one hot file in {}", dir.display());
    assert!(stderr.contains("hot experts saved for the next start"), "saved at the interrupted run's exit:\n{stderr}");
    let text = std::fs::read_to_string(hot[0].path()).expect("hot file");
    assert!(text.contains("\"experts\""), "a hot file: {text}");
}
