//! Running `flash-moe serve` in tests, and a small HTTP/1.1 client over a TCP stream (no HTTP library: the tests
//! also need to send what no library would, such as broken bodies).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::command;

/// A running server, killed when dropped; its stderr is collected.
pub struct Server {
    child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
    /// `--api-key`, sent by [`Server::get`] and [`Server::post`].
    key: Option<String>,
}

impl Server {
    /// `flash-moe serve ARGS --port 0`, once it listens.
    pub fn start(args: &[&str]) -> Server {
        let mut child = command()
            .arg("serve")
            .args(args)
            .args(["--port", "0", "--host", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flash-moe serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                let mut l = sink.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let key = args.iter().position(|a| *a == "--api-key").and_then(|i| args.get(i + 1)).map(|k| k.to_string());
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => Server { child, addr, log, key },
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start:\n{}", log.lock().expect("log"));
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Resident memory now (VmRSS) and at its peak (VmHWM), in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb = |key: &str| {
            status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        };
        (kb("VmRSS:").unwrap_or(0) * 1024, kb("VmHWM:").unwrap_or(0) * 1024)
    }

    /// The server process's `/proc/PID/status` line `KEY:` (e.g. `SigIgn`), without the key.
    pub fn status_line(&self, key: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let prefix = format!("{key}:");
        status.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_default().trim().to_string()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn auth(&self) -> Vec<(&str, String)> {
        self.key.iter().map(|k| ("Authorization", format!("Bearer {k}"))).collect()
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        let mut h = self.auth();
        h.push(("Content-Type", "application/json".into()));
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(&self.addr, "POST", path, &h, body.to_string().as_bytes()).expect("request")
    }

    pub fn get(&self, path: &str) -> Response {
        let h = self.auth();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(&self.addr, "GET", path, &h, b"").expect("request")
    }

    /// The value of a metric in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        let prefix = format!("flashmoe_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str())?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, raw headers, body (a server-sent event stream in full).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` payloads of a server-sent event stream, `[DONE]` left out.
    pub fn events(&self) -> Vec<Value> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect()
    }
}

/// Connects with generous timeouts (a test must fail, not hang).
pub fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    Ok(s)
}

/// One request on its own connection (`Connection: close`), read to the end.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let mut s = connect(addr)?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(parse_response(&raw))
}

/// Status, headers and (de-chunked) body of a complete raw response.
pub fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(rest) } else { rest.to_string() };
    Response { status, headers: head.to_string(), body }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A chat template of tests/fixtures/chat-templates.
pub fn template(name: &str) -> String {
    repo().join("tests/fixtures/chat-templates").join(name).to_string_lossy().into_owned()
}

/// The fixture model with a tokenizer (Qwen3-MoE, vocabulary 320).
pub fn fixture_model() -> String {
    super::moe_gguf().to_string_lossy().into_owned()
}
