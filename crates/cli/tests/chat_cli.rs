//! `flash-moe chat`: messages from stdin (one line, a line continued with `\`, a `"""` block), streamed replies,
//! `/stats` (the second turn reused the first's state), `/reset`, `/exit`; Ctrl-C during a reply stops the reply and
//! the conversation goes on.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::server::{fixture_model, template};
use common::*;

#[test]
fn a_conversation_from_stdin() {
    let (model, tpl) = (fixture_model(), template("Qwen-Qwen3-0.6B.jinja"));
    let mut child = command()
        .args([
            "chat",
            "-m",
            &model,
            "--chat-template",
            &tpl,
            "-c",
            "2048",
            "-n",
            "6",
            "--temp",
            "0",
            "--system",
            "Be brief.",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat");
    let input = "Hello\nSecond \\\nline two\n/stats\n\"\"\"\na block\nof lines\n\"\"\"\n/reset\nAgain\n/stats\n/exit\nnot read\n";
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("chat");
    let (stdout, stderr) = assert_succeeds(&out);
    eprintln!("{stderr}");
    // Four replies, one per line (each ends with a newline).
    assert_eq!(stdout.matches('\n').count(), 4, "stdout: {stdout:?}");
    let stats: Vec<&str> = stderr.lines().filter(|l| l.starts_with("last reply")).collect();
    assert_eq!(stats.len(), 2, "{stderr}");
    let reused = |line: &str| -> usize {
        line.split(" reused").next().and_then(|s| s.rsplit('(').next()).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    };
    assert!(reused(stats[0]) > 0, "the second turn reused the first: {}", stats[0]);
    assert_eq!(reused(stats[1]), 0, "after /reset nothing is reused: {}", stats[1]);
    assert!(stderr.contains("(new conversation)"));
}

#[test]
fn ctrl_c_stops_a_reply_not_the_chat() {
    let (model, tpl) = (fixture_model(), template("Qwen-Qwen3-0.6B.jinja"));
    let mut child = command()
        .args(["chat", "-m", &model, "--chat-template", &tpl, "-c", "8192", "--temp", "1", "--seed", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"Tell me a very long story\n").expect("write");
    // Wait for the reply to start, then Ctrl-C.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    let n = stdout.read(&mut first).expect("read");
    assert!(n > 0);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let t0 = Instant::now();
    stdin.write_all(b"/stats\n/exit\n").expect("write");
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    let out = child.wait_with_output().expect("chat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(t0.elapsed() < Duration::from_secs(60));
    let stats = stderr.lines().find(|l| l.starts_with("last reply")).unwrap_or_else(|| panic!("no stats: {stderr}"));
    assert!(stats.contains("Cancelled"), "the reply was not stopped by Ctrl-C: {stats}");
}
