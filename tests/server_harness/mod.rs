//! Helpers for the server tests: start the real `tachyon serve` binary on a free port and
//! talk raw HTTP/1.1 to it, so the tests see exactly the bytes a client gets.

#![allow(dead_code)]

pub mod tiny_model;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `--backend BACKEND` for every server a test starts: the CPU unless
/// `TACHYON_TEST_BACKEND` names another (`cuda`, e.g. under the emulated GPU), so the same
/// tests run on either backend.
pub fn backend_args() -> [String; 2] {
    let backend = std::env::var("TACHYON_TEST_BACKEND")
        .ok()
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "cpu".to_string());
    ["--backend".to_string(), backend]
}

/// Whether `TACHYON_TEST_SERVER_MODEL=tiny` asks the server tests for [`tiny_model`]
/// instead of SmolLM2 (for the CUDA backend under the emulated device, where a SmolLM2
/// token costs seconds). Any other non-empty value is refused, so a typo cannot quietly
/// test the other model. Meant for slow devices: on the CPU a tiny-model token takes tens
/// of microseconds, less than a hung-up client takes to reach the engine, so the
/// disconnect test's bound of three tokens a request does not hold there.
pub fn tiny_server_model() -> bool {
    match std::env::var("TACHYON_TEST_SERVER_MODEL") {
        Ok(v) if v.trim() == "tiny" => true,
        Ok(v) if v.trim().is_empty() => false,
        Ok(v) => panic!("TACHYON_TEST_SERVER_MODEL={v:?}: only \"tiny\" (or unset) is known"),
        Err(_) => false,
    }
}

/// The model the server tests serve: SmolLM2, or with [`tiny_server_model`] the tiny
/// random model with SmolLM2's tokenizer, built from SmolLM2's file into the target
/// directory. None (the test skips) when SmolLM2 is missing and models are not required.
pub fn server_model() -> Option<PathBuf> {
    if !tiny_server_model() {
        return crate::common::model_path(crate::common::SMOLLM2);
    }
    tiny_model_file()
}

/// The tiny random model with SmolLM2's tokenizer ([`tiny_model`]), built from SmolLM2's
/// file into the target directory once per test binary. None (the test skips) when
/// SmolLM2 is missing and models are not required.
pub fn tiny_model_file() -> Option<PathBuf> {
    let smollm2 = crate::common::model_path(crate::common::SMOLLM2)?;
    static TINY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-tests");
    Some(
        TINY.get_or_init(|| tiny_model::build(&smollm2, &dir))
            .clone(),
    )
}

/// Whether the servers run the CUDA backend on the emulated device
/// (`scripts/emulated-gpu.sh` sets `TACHYON_EMULATED_GPU=1`), where a token costs a
/// thousand times what it does on a GPU: tests that repeat a request many times for
/// statistics scale their counts down there (with [`scaled`]), keeping every check.
pub fn emulated_cuda() -> bool {
    backend_args()[1] == "cuda" && std::env::var("TACHYON_EMULATED_GPU").is_ok_and(|v| v == "1")
}

/// `n`, or `emulated` on the emulated device ([`emulated_cuda`]).
pub fn scaled(n: usize, emulated: usize) -> usize {
    if emulated_cuda() { emulated } else { n }
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The last lines the server wrote to stderr after its ready line.
    said: Arc<Mutex<VecDeque<String>>>,
}

/// How many of the server's last stderr lines [`Server::stderr_tail`] keeps.
const TAIL_LINES: usize = 40;

impl Server {
    /// Starts `tachyon serve --model MODEL --port 0 EXTRA...` (one CPU thread unless EXTRA
    /// says otherwise, so parallel tests do not fight over the cores; the backend of
    /// [`backend_args`] unless EXTRA names one) and waits for its ready line.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(model, extra, &[])
    }

    /// [`Server::start`] with `env` set for the server process (e.g. the emulated
    /// device's fault injection).
    pub fn start_with_env(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let threads: &[&str] = if extra.contains(&"--threads") {
            &[]
        } else {
            &["--threads", "1"]
        };
        let backend: Vec<String> = if extra.contains(&"--backend") {
            Vec::new()
        } else {
            backend_args().to_vec()
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_tachyon"))
            .arg("serve")
            .arg("--model")
            .arg(model)
            .args(["--port", "0"])
            .args(threads)
            .args(&backend)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tachyon serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let said = Arc::new(Mutex::new(VecDeque::new()));
        let tail = said.clone();
        // Keep draining stderr so the server never blocks on a full pipe; what comes after
        // the ready line is kept (its last lines) for failure messages.
        std::thread::spawn(move || {
            let mut before = Vec::new();
            let mut ready = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if ready {
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                    continue;
                }
                match line.strip_prefix("listening on http://") {
                    Some(addr) => {
                        ready = true;
                        let _ = tx.send(Ok(addr.to_string()));
                    }
                    None => before.push(line),
                }
            }
            // The server exited: hand over what it said.
            let _ = tx.send(Err(before.join("\n")));
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(a)) => a.parse().expect("address"),
            Ok(Err(said)) => panic!("the server exited before it was ready:\n{said}"),
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not print its ready line within 120 s");
            }
        };
        Server { child, addr, said }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server wrote to stderr after its ready line (complete once it
    /// has exited and the pipe is drained).
    pub fn stderr_tail(&self) -> String {
        // The reader thread may still be taking the last lines off the pipe.
        std::thread::sleep(Duration::from_millis(100));
        self.said
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.addr, "GET", path, headers, b"")
    }

    pub fn post(&self, path: &str, body: &str) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let r = self.post(path, &body.to_string());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }

    /// A metric's value from /metrics (the first sample whose name and labels match).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics", &[]).text();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body's HTTP chunks as sent (empty when not chunked).
    pub chunks: Vec<Vec<u8>>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn write_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    s.write_all(body).expect("write body");
}

/// One request on a fresh connection; reads the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    write_request(&mut s, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = std::str::from_utf8(&raw[..split]).expect("head is text");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let (body, chunks) = if chunked {
        dechunk(rest)
    } else {
        (rest.to_vec(), Vec::new())
    };
    Response {
        status,
        headers,
        body,
        chunks,
    }
}

/// Decodes a chunked body; panics on broken framing.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut body = Vec::new();
    let mut chunks = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&rest[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex size");
        rest = &rest[eol + 2..];
        if size == 0 {
            break;
        }
        assert!(rest.len() >= size + 2, "truncated chunk");
        chunks.push(rest[..size].to_vec());
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        rest = &rest[size + 2..];
    }
    (body, chunks)
}

/// The `data:` payloads of an SSE body, checking the framing: every event is exactly
/// `data: ...\n\n` and the stream ends with `data: [DONE]\n\n`.
pub fn sse_events(body: &[u8]) -> Vec<serde_json::Value> {
    let text = std::str::from_utf8(body).expect("SSE body is UTF-8");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "no [DONE] at the end: {text:?}"
    );
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(*events.last().expect("events"), "data: [DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            let payload = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without data: prefix: {e:?}"));
            assert!(!payload.contains('\n'), "multi-line event: {e:?}");
            serde_json::from_str(payload)
                .unwrap_or_else(|err| panic!("bad chunk JSON ({err}): {payload}"))
        })
        .collect()
}

/// Concatenated `choices[0].text` (completions) or `choices[0].delta.content` (chat).
pub fn streamed_text(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .map(|c| {
            c["text"]
                .as_str()
                .or_else(|| c["delta"]["content"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// The finish reason of a stream (the one non-null one).
pub fn streamed_finish(events: &[serde_json::Value]) -> String {
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| e["choices"].get(0))
        .filter_map(|c| c["finish_reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 1, "exactly one finish_reason: {reasons:?}");
    reasons[0].to_string()
}

/// Sums the buckets of a Prometheus histogram and returns the smallest bucket bound that
/// holds at least `q` of the observations, with the count.
pub fn histogram_quantile(metrics: &str, name: &str, q: f64) -> (f64, u64) {
    let mut buckets: Vec<(f64, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0, |b| b.1);
    let need = (q * total as f64).ceil() as u64;
    let bound = buckets
        .iter()
        .find(|b| b.1 >= need)
        .map_or(f64::NAN, |b| b.0);
    (bound, total)
}
