//! End-to-end test of `attach --push`: a loopback HTTP sink started here
//! receives one Pyroscope ingest request per interval from heapscope
//! attached to the leaks fixture; then the sink is stopped and the capture
//! goes on, counting the profiles it could not deliver. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use common::driver::*;
use common::gopprof::{go_pprof, top_rows};
use common::*;

/// One request as the sink saw it.
struct Request {
    head: String,
    body: Vec<u8>,
}

/// A loopback HTTP server answering 200 to everything, until stopped.
struct Sink {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn read_request(c: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            let body = buf[end + 4..end + 4 + len].to_vec();
            return Some(Request { head, body });
        }
    }
}

impl Sink {
    fn start() -> (Sink, mpsc::Receiver<Request>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind sink");
        let addr = l.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut c) = conn else { continue };
                if let Some(r) = read_request(&mut c) {
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    let _ = tx.send(r);
                }
            }
            // The listener is dropped here: connections are refused from now on.
        });
        (
            Sink {
                addr,
                stop,
                thread: Some(thread),
            },
            rx,
        )
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            t.join().expect("sink thread");
        }
    }
}

/// Percent-decoding of a query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

/// The query parameters of the request line.
fn query(r: &Request) -> Vec<(String, String)> {
    let line = r.head.lines().next().expect("request line");
    let target = line.split_whitespace().nth(1).expect("target");
    let (path, q) = target.split_once('?').expect("query");
    assert_eq!(path, "/ingest", "{line}");
    q.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            (k.to_string(), decode(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> &'a str {
    q.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k} in {q:?}"))
}

/// The multipart parts: field name → content.
fn parts(r: &Request) -> Vec<(String, Vec<u8>)> {
    let ctype = r
        .head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .expect("content type");
    let boundary = ctype
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {ctype}"));
    let delim = format!("--{boundary}");
    let body = &r.body;
    let mut out = Vec::new();
    let positions: Vec<usize> = body
        .windows(delim.len())
        .enumerate()
        .filter(|(_, w)| *w == delim.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for pair in positions.windows(2) {
        let part = &body[pair[0] + delim.len() + 2..pair[1] - 2];
        let end = part
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part head");
        let head = String::from_utf8_lossy(&part[..end]);
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("field name")
            .to_string();
        out.push((name, part[end + 4..].to_vec()));
    }
    assert!(
        body.ends_with(format!("{delim}--\r\n").as_bytes()),
        "closing delimiter"
    );
    out
}

/// Waits for a status line whose push counts satisfy `ok(sent, dropped)`.
fn wait_push_status(a: &mut Attached, ok: impl Fn(u64, u64) -> bool) -> String {
    loop {
        let line = a
            .stderr
            .recv_timeout(HANG_GUARD)
            .unwrap_or_else(|_| panic!("no such status line:\n{}", a.seen.join("\n")));
        a.seen.push(line.clone());
        let Some(rest) = line.split("push ").nth(1) else {
            continue;
        };
        let nums: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        if nums.len() >= 2 && ok(nums[0], nums[1]) {
            return line;
        }
    }
}

fn check_profile(dir: &Path, name: &str, gz: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, gz).expect("write profile");
    go_pprof(
        dir,
        &[
            "-top",
            "-unit=byte",
            "-sample_index=inuse_space",
            path.to_str().expect("utf8"),
        ],
    )
}

#[test]
fn push_to_a_loopback_sink_and_survive_its_death() {
    if !root_or_skip("push_to_a_loopback_sink_and_survive_its_death") {
        return;
    }
    let dir = scratch("push");
    let bin = fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let folded = dir.join("out.folded");
    let (mut sink, requests) = Sink::start();
    let url = format!("http://{}", sink.addr);
    let fx = start_fixture(&bin);
    let pid = fx.pid;
    let mut a = attach(
        pid,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--push",
            &url,
            "--push-interval",
            "300ms",
            "--label",
            "env=e2e",
            "--folded",
            folded.to_str().expect("utf8"),
        ],
    );
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    let first = requests.recv_timeout(HANG_GUARD).expect("a first push");
    writeln!(stdin, "go").expect("signal fixture");
    wait_for(&lines, "done", &mut Vec::new());
    // A push that covers the end of the run (its in-use values include the leaks).
    let mut after = Vec::new();
    while after.len() < 2 {
        after.push(
            requests
                .recv_timeout(HANG_GUARD)
                .expect("pushes after done"),
        );
    }
    sink.stop();
    // The capture goes on, and counts what it could not deliver.
    let line = wait_push_status(&mut a, |_, dropped| dropped >= 1);
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));

    // The capture was not disturbed: exact leaks as always.
    let text = std::fs::read_to_string(&folded).expect("folded");
    assert_sites_exact_no_stack_lost(&text, &expected_sites(&bin), &report);
    let summary = stderr
        .lines()
        .find(|l| l.starts_with(&format!("heapscope: push {url}")))
        .unwrap_or_else(|| panic!("no push summary:\n{stderr}"));
    let dropped: u64 = summary
        .split(" dropped")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 1, "{summary} (status: {line})");

    // The requests are Pyroscope ingest requests.
    let comm = bin
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let mut last_until = 0;
    for (i, r) in std::iter::once(&first).chain(&after).enumerate() {
        let q = query(r);
        let name = param(&q, "name");
        assert!(
            name.starts_with(&format!("{comm}{{service_name={comm},host=")),
            "{name}"
        );
        assert!(
            name.ends_with(&format!(",pid={pid},comm={comm},env=e2e}}")),
            "{name}"
        );
        assert_eq!(param(&q, "format"), "pprof");
        let from: u64 = param(&q, "from").parse().expect("from");
        let until: u64 = param(&q, "until").parse().expect("until");
        assert!(from < until, "{from}..{until}");
        assert!(from + 1 >= last_until, "windows follow each other: {q:?}");
        last_until = until;
        let p = parts(r);
        let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["profile", "sample_type_config"]);
        let config: serde_json::Value =
            serde_json::from_slice(&p[1].1).expect("sample_type_config is JSON");
        assert_eq!(config["inuse_space"]["units"], "bytes");
        let top = check_profile(&dir, &format!("push{i}.pb.gz"), &p[0].1);
        assert!(top.contains("Type: inuse_space"), "{top}");
    }
    // After "done", a pushed profile holds the leaks with their exact in-use bytes.
    let last = &after[after.len() - 1];
    let top = check_profile(&dir, "last.pb.gz", &parts(last)[0].1);
    let rows = top_rows(&top);
    assert_eq!(
        rows.get("leak_malloc").copied(),
        Some(expected_sites(&bin)["leak_malloc"] as i64),
        "{top}"
    );
}
