//! The server driven by the official `openai` and `anthropic` Python clients (tests/python/*.py, installed into
//! target/py-clients by tools/python_clients.sh): chat and completions streamed and not, sampling and seeds, forced
//! tool calls and their round trips (also streamed), reasoning, count_tokens, stop sequences, cancelled streams,
//! the clients' error classes; on the fixture model with three templates (Hermes JSON tool calls, XML tool calls
//! with reasoning, a DeltaNet model) and on the bundled model (built-in ChatML).

mod common;

use std::process::Command;

use common::server::*;

fn python() -> String {
    let out = Command::new(repo().join("tools/python_clients.sh")).output().expect("run tools/python_clients.sh");
    assert!(out.status.success(), "installing the Python clients failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn official_python_clients() {
    let python = python();
    let fixture = fixture_model();
    let next = repo().join("tests/fixtures/qwen3next-h64/qwen3next-h64-q8_0.gguf").to_string_lossy().into_owned();
    let (qwen3, qwen35, coder) =
        (template("Qwen-Qwen3-0.6B.jinja"), template("Qwen3.5-4B.jinja"), template("Qwen3-Coder.jinja"));
    let setups: Vec<(&str, Vec<&str>, bool)> = vec![
        ("qwen3moe-h64, Qwen3 template", vec!["-m", &fixture, "--chat-template", &qwen3, "-c", "2048"], false),
        (
            "qwen3moe-h64, Qwen3.5 template (reasoning)",
            vec!["-m", &fixture, "--chat-template", &qwen35, "-c", "2048"],
            true,
        ),
        (
            "qwen3next-h64 (DeltaNet), Qwen3-Coder template",
            vec!["-m", &next, "--chat-template", &coder, "-c", "2048"],
            false,
        ),
        ("the bundled tiny-py-moe (built-in ChatML)", vec![], false),
    ];
    for (what, args, reasoning) in setups {
        let mut all: Vec<&str> = args;
        all.extend(["--api-key", "test-key", "--no-log"]);
        let server = Server::start(&all);
        for script in ["openai_client.py", "anthropic_client.py"] {
            let out = Command::new(&python)
                .arg(repo().join("tests/python").join(script))
                .env("FLASH_MOE_URL", format!("http://{}", server.addr))
                .env("FLASH_MOE_KEY", "test-key")
                .env("FLASH_MOE_REASONING", if reasoning { "1" } else { "0" })
                .output()
                .expect("run python");
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            eprintln!("--- {what}: {script}\n{stdout}");
            assert!(
                out.status.success(),
                "{what}: {script} failed:\n{stdout}\n{stderr}\nserver log:\n{}",
                server.log()
            );
        }
    }
}
