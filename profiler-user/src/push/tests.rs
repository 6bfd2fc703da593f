//! The pusher against an in-process loopback sink.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use super::*;
use crate::views::testdata::sample_profile;

/// Accepts `n` connections, answers each with `status`, hands back each
/// request's bytes.
fn sink(n: usize, status: u16) -> (String, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut c, _)) = l.accept() else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            loop {
                let k = c.read(&mut buf).unwrap_or(0);
                if k == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..k]);
                let text = String::from_utf8_lossy(&req).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = write!(c, "HTTP/1.1 {status} X\r\nContent-Length: 4\r\n\r\nnope");
            let _ = tx.send(req);
        }
    });
    (url, rx)
}

fn opts(url: &str) -> PushOptions {
    PushOptions {
        endpoint: Endpoint::parse(url).expect("url"),
        interval: Duration::from_secs(1),
        service: "leaky".into(),
        labels: vec![("pid".into(), "4242".into())],
    }
}

fn offer(p: &Pusher) {
    p.offer(
        sample_profile(),
        PprofOptions::default(),
        1_700_000_000_000,
        1_700_000_015_000,
    );
}

#[test]
fn sends_one_request_per_profile() {
    let (url, rx) = sink(2, 200);
    let p = Pusher::start(opts(&url)).expect("start");
    offer(&p);
    offer(&p);
    let s = p.finish();
    assert_eq!((s.offered, s.sent, s.dropped), (2, 2, 0), "{s:?}");
    let req = String::from_utf8_lossy(&rx.recv().expect("request")).into_owned();
    assert!(
        req.starts_with(
            "POST /ingest?name=leaky%7Bservice_name%3Dleaky%2Cpid%3D4242%7D&from=1700000000&until=1700000015&format=pprof"
        ),
        "{req}"
    );
    assert!(
        req.contains("Content-Type: multipart/form-data; boundary="),
        "{req}"
    );
}

#[test]
fn a_refusing_backend_drops_after_every_attempt() {
    let (url, _rx) = sink(MAX_ATTEMPTS as usize, 500);
    let p = Pusher::start(opts(&url)).expect("start");
    offer(&p);
    let s = p.finish();
    assert_eq!((s.sent, s.dropped, s.failed_attempts), (0, 1, 3), "{s:?}");
    let e = s.last_error.clone().expect("error");
    assert!(e.contains("HTTP 500") && e.contains(&url), "{e}");
    assert!(s.describe().contains("0 sent, 1 dropped"));
}

#[test]
fn a_full_queue_drops_without_blocking() {
    // Nothing listens: every send fails, the thread is busy retrying.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port();
    let p = Pusher::start(opts(&format!("http://127.0.0.1:{port}"))).expect("start");
    for _ in 0..(QUEUE + 10) {
        offer(&p);
    }
    let during = p.summary();
    assert!(during.dropped >= 10 - 1, "{during:?}");
    let s = p.finish();
    assert_eq!(s.offered, QUEUE as u64 + 10);
    assert_eq!(s.sent, 0);
    assert_eq!(s.dropped, s.offered, "{s:?}");
}
