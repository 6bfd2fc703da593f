//! The live web server while attached (needs root): the page receives new
//! ticks, and 100 event-stream clients each receive every tick the session
//! recorded while they were connected, none lost, the capture losing
//! nothing either. Without root it says it was skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use common::driver::*;
use common::serve::*;
use common::webdriver::*;
use common::*;

const CLIENTS: usize = 100;

/// One event-stream client: signals when connected, then collects the
/// `t_ms` of every tick event until the server closes the stream.
fn sse_client(addr: String, token: String, ready: mpsc::Sender<()>) -> Vec<u64> {
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    write!(
        s,
        "GET /api/v1/events?token={token} HTTP/1.0\r\nHost: {addr}\r\n\r\n"
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status");
    assert!(line.contains(" 200 "), "{line}");
    let _ = ready.send(());
    let mut ticks = Vec::new();
    let mut event = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = line.trim_end();
        if let Some(e) = l.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(data) = l.strip_prefix("data: ") {
            assert_ne!(event, "lagged", "a client fell behind");
            let v: serde_json::Value = serde_json::from_str(data).expect("tick JSON");
            ticks.push(v["t_ms"].as_u64().expect("t_ms"));
        }
    }
    ticks
}

/// (name, scheduling policy) of each thread of `pid`, from
/// `/proc/PID/task/TID/stat` (field 41; 0 is SCHED_OTHER, 1 SCHED_FIFO).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the threads");
    tasks
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            // Fields after the name start at 3 (state): policy is field 41.
            let policy = rest.split_whitespace().nth(41 - 3)?.parse().ok()?;
            Some((comm, policy))
        })
        .collect()
}

#[test]
fn live_page_gets_ticks_and_100_clients_lose_none() {
    if !root_or_skip("live_page_gets_ticks_and_100_clients_lose_none") {
        return;
    }
    let exe = fixture(
        "growth",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    let dir = scratch("e2e-serve");
    let rec = dir.join("live.rec");
    let mut cmd = Command::new(&exe);
    cmd.arg("leak");
    let fx = start_command(cmd);
    let mut hs = Command::new(heapscope());
    hs.args([
        "attach",
        "-p",
        &fx.pid.to_string(),
        "--tick",
        "200ms",
        "--quiet",
    ])
    .args([
        "--exact",
        "--stacks",
        "fp",
        "--serve",
        "127.0.0.1:0",
        "--token",
        TOKEN,
    ])
    .arg("--record")
    .arg(&rec)
    .stdout(Stdio::piped());
    let mut served = start_serving(hs);
    wait_for(&served.stderr, "attached", &mut served.seen);
    // The web server's threads, started while heapscope attached at
    // real-time priority, do not keep it: a slow request would hold a CPU
    // ahead of the target (they did, for whole sessions, before SCHED_RESET_ON_FORK).
    let policies = thread_policies(served.child.id());
    let web: Vec<_> = policies
        .iter()
        .filter(|(comm, _)| comm.starts_with("heapscope-http") || comm == "heapscope-serve")
        .collect();
    assert!(!web.is_empty(), "no web server thread in {policies:?}");
    assert!(
        web.iter().all(|(_, policy)| *policy == 0),
        "web server threads at a real-time policy: {policies:?}"
    );

    let (tx, rx) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, token, tx) = (served.addr.clone(), served.token.clone(), tx.clone());
            thread::spawn(move || sse_client(addr, token, tx))
        })
        .collect();
    for _ in 0..CLIENTS {
        rx.recv_timeout(HANG_GUARD).expect("every client connected");
    }

    // The live page: ticks arrive without reloading.
    let browser = browser_or_skip("live_page_gets_ticks_and_100_clients_lose_none")
        .then(|| Browser::start(&dir.join("chromium")));
    if let Some(b) = &browser {
        b.goto(&served.url);
        b.wait(
            "document.body.dataset.flameReady === '1'",
            "the live flame graph",
        );
        let first = b.wait(
            "Number(document.getElementById('ticks-received').textContent)",
            "a tick",
        );
        b.wait(
            &format!("Number(document.getElementById('ticks-received').textContent) > {first}"),
            "a new tick",
        );
    }
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    writeln!(stdin, "go").expect("go");
    wait_for(&lines, "done", &mut Vec::new());
    if let Some(b) = &browser {
        b.wait(
            "document.getElementById('table').innerText.includes('leak_slowly')",
            "the leak live",
        );
        b.screenshot(&screenshot_dir().join("live.png"));
    }
    drop(browser);
    let meta = served.json("/api/v1/meta");
    assert_eq!(meta["server_dropped_ticks"], 0, "{meta}");
    interrupt(&served.child);
    let status = served.child.wait().expect("wait heapscope");
    assert!(status.success(), "{:?}", served.seen);
    writeln!(stdin, "exit").expect("exit");
    assert_eq!(child.wait().expect("fixture").code(), Some(3));

    // Every client saw every recorded tick from its first to its last one.
    let recorded: Vec<u64> = heapscope::record::open(&rec)
        .expect("recording")
        .timeline
        .tick_times()
        .collect();
    let got: Vec<Vec<u64>> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let first = &got[0];
    assert!(first.len() >= 10, "ticks seen: {first:?}");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, first, "client {i} saw other ticks than client 0");
    }
    let start = recorded
        .iter()
        .position(|t| *t == first[0])
        .expect("first tick recorded");
    assert_eq!(
        &recorded[start..start + first.len()],
        first.as_slice(),
        "ticks missing from the stream"
    );
    eprintln!(
        "{CLIENTS} clients each received {} ticks of {} recorded",
        first.len(),
        recorded.len()
    );
    // The capture lost nothing while serving them.
    let report = Command::new(heapscope())
        .arg("report")
        .arg(&rec)
        .output()
        .expect("report");
    let text = String::from_utf8_lossy(&report.stdout);
    for c in ["ring buffer lost", "live map full", "per-thread state full"] {
        assert_eq!(counter(&text, c), Some(0), "{c}\n{text}");
    }
}
