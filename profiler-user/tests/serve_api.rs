//! The web API on a recording of the growth fixture's leak (no root needed):
//! status codes, JSON shapes, exact bytes of the leaking call site in the
//! profile and the diff, windows, tokens, bad input, /metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::path::Path;
use std::process::Command;

use common::http::{get, request};
use common::serve::*;
use common::*;
use serde_json::Value;

/// The first node named `name` in a call tree (depth first).
fn find<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|c| find(c, name))
}

fn last_frame(v: &Value) -> &str {
    v["frames"]
        .as_array()
        .and_then(|f| f.last())
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[test]
fn api_answers_with_the_leaking_site_exact_bytes() {
    let s = serve(&leak_recording());
    let meta = s.json("/api/v1/meta");
    assert_eq!(meta["api_version"], 1);
    assert_eq!(meta["comm"], "growth-fp");
    assert_eq!(meta["live"], false);
    assert_eq!(meta["exact"], true);
    let ticks = meta["ticks"].as_u64().expect("ticks");
    assert!(ticks >= 10, "{meta}");
    let counters = meta["counters"].as_array().expect("counters");
    assert!(counters
        .iter()
        .any(|c| c["id"] == "ringbuf_lost" && c["section"] == "lost"));

    // The whole session: leak_slowly holds exactly what the fixture leaked.
    let p = s.json("/api/v1/profile");
    assert_eq!(p["metric"], "live-bytes");
    let leak = find(&p["root"], "leak_slowly").expect("leak_slowly in the tree");
    assert_eq!(leak["live_bytes"], LEAK_BYTES);
    assert_eq!(leak["live_blocks"], 480);
    assert_eq!(leak["allocs"], 480);
    assert!(
        leak["loc"].as_str().unwrap_or("").starts_with("growth.c:"),
        "{leak}"
    );
    assert_eq!(
        find(leak, "malloc").expect("API leaf")["live_bytes"],
        LEAK_BYTES
    );

    // Allocations as the metric: churn() shows up (it frees everything).
    let p = s.json("/api/v1/profile?metric=allocs");
    assert_eq!(find(&p["root"], "churn").expect("churn")["allocs"], 3000);
    assert_eq!(find(&p["root"], "churn").expect("churn")["live_bytes"], 0);

    // A window in the middle holds part of the leak.
    let p = s.json("/api/v1/profile?window=2s..3s");
    assert_eq!(p["window"]["start_ms"], 2000);
    let part = find(&p["root"], "leak_slowly").expect("leak_slowly")["live_bytes"]
        .as_u64()
        .expect("bytes");
    assert!(part > 0 && part < LEAK_BYTES, "{part}");
    assert_eq!(part % (16 * 4096), 0, "whole rounds of 16 blocks");

    let top = s.json("/api/v1/top?limit=5");
    assert_eq!(last_frame(&top["sites"][0]), "leak_slowly");
    assert_eq!(top["sites"][0]["live_bytes"], LEAK_BYTES);

    let tl = s.json("/api/v1/timeline");
    let points = tl["points"].as_array().expect("points");
    assert_eq!(points.len() as u64, ticks);
    assert_eq!(points.last().expect("last")["live_heap"], LEAK_BYTES);
    assert!(points
        .iter()
        .any(|p| p["rss_anon"].as_u64().unwrap_or(0) > 0));

    // Baseline at the start, window at the end: the leak grew.
    let d = s.json("/api/v1/diff?baseline=0s..1s&window=7s..&top=5");
    let c = &d["changes"][0];
    assert_eq!(last_frame(c), "leak_slowly");
    assert_eq!(c["after"], LEAK_BYTES);
    assert!(c["delta"].as_i64().expect("delta") > 0);
    assert_eq!(c["new"], c["before"] == 0);
    let node = find(&d["root"], "leak_slowly").expect("in the diff tree");
    assert_eq!(node["after"], LEAK_BYTES);

    let f = s.json("/api/v1/findings");
    assert!(f["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .any(|x| x["kind"] == "leak" && last_frame(x) == "leak_slowly"));
    assert_eq!(f["live_bytes"], LEAK_BYTES);
}

#[test]
fn report_json_is_the_findings_endpoint() {
    let file = leak_recording();
    let s = serve(&file);
    let out = Command::new(heapscope())
        .args(["report", "--json", "--top", "20"])
        .arg(&file)
        .output()
        .expect("report");
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report, s.json("/api/v1/findings?top=20"));
}

#[test]
fn tokens_cookies_and_bad_requests() {
    let s = serve(&leak_recording());
    for path in [
        "/",
        "/api/v1/meta",
        "/metrics",
        "/nope",
        "/api/v1/meta?token=wrong",
    ] {
        assert_eq!(get(&s.addr, path).status, 401, "{path}");
    }
    // The first visit sets a cookie that then suffices.
    let r = s.get("/");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<title>heapscope</title>"));
    let cookie = r.header("set-cookie").expect("cookie set").to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains(&s.token),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value");
    let r = request("GET", &s.addr, "/api/v1/meta", &[("Cookie", pair)], None);
    assert_eq!(r.status, 200);
    let bearer = format!("Bearer {}", s.token);
    let r = request(
        "GET",
        &s.addr,
        "/metrics",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(r.status, 200);

    for path in ["/nope", "/api/v2/meta", "/api/v1/", "/api/v1/profile/extra"] {
        let r = s.get(path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.json()["error"].is_string());
    }
    let huge = "9".repeat(5000);
    let long_window = format!("/api/v1/profile?window={}s..", "1".repeat(300));
    let bad = [
        "/api/v1/profile?window=abc".to_string(),
        "/api/v1/profile?window=9s..1s".into(),
        "/api/v1/profile?metric=bogus".into(),
        "/api/v1/profile?colour=red".into(),
        "/api/v1/profile?window=%zz".into(),
        format!("/api/v1/profile?window={huge}"),
        long_window,
        "/api/v1/diff?window=1s..2s".into(),
        "/api/v1/diff?baseline=0s..1s&window=2s..3s&top=0".into(),
        "/api/v1/diff?baseline=0s..1s&window=2s..3s&top=99999999999999999999".into(),
        "/api/v1/top?limit=-1".into(),
        "/api/v1/meta?x=1".into(),
        format!("/api/v1/meta?{}", "a=1&".repeat(2000)),
    ];
    for path in &bad {
        let r = s.get(path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(!msg.is_empty(), "{path}");
    }
    assert!(s
        .get("/api/v1/profile?window=abc")
        .text()
        .contains("invalid window 'abc'"));
}

#[test]
fn non_loopback_without_token_is_refused() {
    let out = Command::new(heapscope())
        .arg("serve")
        .arg(leak_recording())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve on 0.0.0.0:0 without a token"),
        "{err}"
    );
    let out = Command::new(heapscope())
        .arg("serve")
        .arg(leak_recording())
        .args(["--listen", "127.0.0.1:0", "--token", "short"])
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid token"));
}

fn serve_fails(file: &Path, want: &str) {
    let out = Command::new(heapscope())
        .arg("serve")
        .arg(file)
        .args(["--listen", "127.0.0.1:0", "--token", TOKEN])
        .output()
        .expect("run serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "want {want:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn corrupt_and_truncated_recordings() {
    let dir = scratch("serve-bad");
    let good = std::fs::read(leak_recording()).expect("read recording");
    let garbage = dir.join("garbage.rec");
    std::fs::write(&garbage, b"this is not a recording at all, just some text").expect("write");
    serve_fails(&garbage, "not a heapscope recording");
    let empty = dir.join("empty.rec");
    std::fs::write(&empty, b"").expect("write");
    serve_fails(&empty, "too short");
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0xff;
    let damaged = dir.join("damaged.rec");
    std::fs::write(&damaged, &flipped).expect("write");
    serve_fails(&damaged, "is damaged at byte");
    serve_fails(&dir.join("missing.rec"), "cannot read recording");

    // With --allow-damaged it is served, and says what was skipped.
    let mut cmd = Command::new(heapscope());
    cmd.arg("serve").arg(&damaged).args([
        "--allow-damaged",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
    ]);
    let s = start_serving(cmd);
    let meta = s.json("/api/v1/meta");
    assert!(
        meta["damage"]
            .as_str()
            .unwrap_or("")
            .contains("damaged at byte"),
        "{meta}"
    );
    drop(s);

    // A cut recording is served up to its last whole tick, and says so.
    let cut = dir.join("cut.rec");
    std::fs::write(&cut, &good[..good.len() - 5]).expect("write");
    let s = serve(&cut);
    let meta = s.json("/api/v1/meta");
    assert_eq!(meta["truncated"], true);
    assert!(meta["ticks"].as_u64().unwrap_or(0) > 5);
    assert_eq!(s.get("/api/v1/profile").status, 200);
}

/// The `B` number of the report's `live heap:` line.
fn report_live_heap(file: &Path) -> u64 {
    let out = Command::new(heapscope())
        .arg("report")
        .arg(file)
        .output()
        .expect("report");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("live heap:"))
        .unwrap_or_else(|| panic!("no live heap line in\n{text}"));
    let inner = line.split_once('(').expect("(N B)").1;
    inner
        .split(" B)")
        .next()
        .expect("N B")
        .replace(',', "")
        .parse()
        .expect("a number")
}

/// A tool the test needs: skipped without it, a failure under CI.
fn have_or_skip(tool: &str, test: &str) -> bool {
    let have = Command::new(tool).arg("--version").output().is_ok();
    if !have {
        if std::env::var("HEAPSCOPE_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("{test}: needs {tool} (cargo xtask setup installs Debian's prometheus)");
        }
        eprintln!("SKIPPED {test}: needs {tool} (`cargo xtask setup`)");
    }
    have
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn metrics_pass_promtool_and_a_real_prometheus_scrapes_the_report_numbers() {
    let test = "metrics_pass_promtool_and_a_real_prometheus_scrapes_the_report_numbers";
    if !have_or_skip("promtool", test) || !have_or_skip("prometheus", test) {
        return;
    }
    let file = leak_recording();
    let want = report_live_heap(&file);
    assert_eq!(want, LEAK_BYTES);
    let s = serve(&file);
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    assert!(
        text.contains(&format!("heapscope_live_heap_bytes {want}\n")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "heapscope_site_live_bytes{{function=\"leak_slowly\",caller=\"run_leak\",api=\"malloc\"}} {LEAK_BYTES}\n"
    )));
    for name in [
        "heapscope_ringbuf_lost_total",
        "heapscope_allocations_total 3480",
        "heapscope_rss_anon_bytes",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
    // Prometheus' own parser (with its lint rules).
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scraping the server with its token.
    let dir = scratch("prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: heapscope\n    \
             params:\n      token: ['{}']\n    static_configs:\n      - targets: ['{}']\n",
            s.token, s.addr
        ),
    )
    .expect("config");
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start prometheus");
    let paddr = format!("127.0.0.1:{port}");
    let start = std::time::Instant::now();
    let value = loop {
        assert!(
            start.elapsed() < driver::HANG_GUARD,
            "prometheus never scraped"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        if std::net::TcpStream::connect(&paddr).is_err() {
            continue;
        }
        let r = get(&paddr, "/api/v1/query?query=heapscope_live_heap_bytes");
        if r.status != 200 {
            continue;
        }
        let v = r.json();
        if let Some(x) = v["data"]["result"][0]["value"][1].as_str() {
            break x.to_string();
        }
    };
    let up = get(&paddr, "/api/v1/query?query=up").json();
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(value, want.to_string());
    assert_eq!(up["data"]["result"][0]["value"][1], "1");
}

/// The `~… (N B)` estimate of a recording's `live heap:` line under uprobe
/// sessions.
fn report_live_estimate(file: &Path) -> u64 {
    let out = Command::new(heapscope())
        .arg("report")
        .arg(file)
        .output()
        .expect("report");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("live heap: ~"))
        .unwrap_or_else(|| panic!("no estimated live heap line in\n{text}"));
    assert!(line.contains("estimate from the samples"), "{line}");
    let inner = line.split_once('(').expect("(N B)").1;
    inner
        .split(" B)")
        .next()
        .expect("N B")
        .replace(',', "")
        .parse()
        .expect("bytes")
}

#[test]
fn under_uprobe_sessions_metrics_and_the_timeline_say_the_live_heap_is_estimated() {
    let file = sessions_recording();
    let want = report_live_estimate(&file);
    assert!(want > 0);
    let s = serve(&file);
    let meta = s.json("/api/v1/meta");
    assert_eq!(meta["live_estimated"], true, "{meta}");
    let untracked = meta["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .find(|c| c["id"] == "untracked_allocs")
        .and_then(|c| c["value"].as_u64())
        .expect("untracked_allocs");
    assert!(untracked > 0);

    // Every point that has untracked allocations says its live heap is the
    // sites' estimate, and gives it; the last one is the report's figure.
    let tl = s.json("/api/v1/timeline");
    let points = tl["points"].as_array().expect("points");
    let last = points.last().expect("a point");
    assert_eq!(last["live_estimated"], true, "{last}");
    assert_eq!(last["live_heap"], last["sites_live_bytes"], "{last}");
    assert_eq!(last["live_heap"].as_u64(), Some(want), "{last}");
    for p in points {
        if p["live_estimated"] == true {
            assert_eq!(p["live_heap"], p["sites_live_bytes"], "{p}");
        }
    }

    // /metrics: the estimate under its own name, the exact name absent.
    let text = s.get("/metrics").text();
    assert!(
        text.contains(&format!("\nheapscope_live_heap_estimated_bytes {want}\n")),
        "{text}"
    );
    assert!(
        text.contains("# HELP heapscope_live_heap_estimated_bytes Live heap, estimated"),
        "{text}"
    );
    assert!(
        text.contains("\nheapscope_live_blocks_estimated "),
        "{text}"
    );
    assert!(!text.contains("\nheapscope_live_heap_bytes "), "{text}");
    assert!(!text.contains("\nheapscope_live_blocks "), "{text}");
    if Command::new("promtool").arg("--version").output().is_ok() {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
            .expect("feed promtool");
        let out = child.wait_with_output().expect("promtool");
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
