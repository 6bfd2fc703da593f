//! Web server cost on a long session: a generated one-hour timeline (3,600
//! ticks at 1 s) with 5,000 call sites, served as `heapscope serve` would;
//! times the flame graph, the diff and the other endpoints over loopback,
//! then the page load to the first flame graph in headless chromium (when
//! chromium and chromedriver are installed).
//!
//! `cargo run --release -p profiler-user --example server_bench` (run by
//! `cargo xtask bench --server`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

#[path = "../tests/common/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../tests/common/webdriver.rs"]
#[allow(dead_code)]
mod webdriver;

use std::time::Instant;

use heapscope::api::SessionInfo;
use heapscope::profile::{Frame, SiteStats, Totals};
use heapscope::server::{self, ServeConfig, Source};
use heapscope::timeline::{MemSample, SiteId, SiteInfo, Timeline};

const SITES: u32 = 5_000;
const TICKS: u64 = 3_600;

/// 5,000 sites under 25 services, 250 handlers and 1,000 parsers; every
/// tick a tenth of them allocate, a tenth of those never free (leaks).
fn timeline() -> Timeline {
    let mut tl = Timeline::default();
    for i in 0..SITES {
        let names = [
            "_start".to_string(),
            "__libc_start_main".into(),
            "main".into(),
            "event_loop".into(),
            format!("service_{}", i % 25),
            format!("handler_{}", i % 250),
            format!("parse_request_{}", i % 1000),
            format!("alloc_site_{i}"),
        ];
        tl.add_site(SiteInfo {
            pid: 1,
            frames: names
                .iter()
                .map(|n| Frame::function(n.as_str(), "server"))
                .collect(),
            api: if i % 3 == 0 { "calloc" } else { "malloc" },
        });
    }
    let mut stats = vec![SiteStats::default(); SITES as usize];
    let mut totals = Totals::default();
    for t in 0..TICKS {
        let mut changes = Vec::new();
        for i in (0..SITES).filter(|i| (u64::from(*i) + t) % 10 == 0) {
            let s = &mut stats[i as usize];
            let size = 64 + u64::from(i % 64) * 16;
            s.alloc_bytes += size * 10;
            s.alloc_count += 10;
            if i % 10 == 3 {
                s.live_bytes += size;
                s.live_count += 1;
            }
            totals.allocs += 10;
            totals.alloc_bytes += size * 10;
            totals.frees += 9;
            totals.free_bytes += size * 9;
            changes.push((SiteId(i), s.clone()));
        }
        let live = totals.alloc_bytes - totals.free_bytes;
        let mem = MemSample {
            rss_anon: live + (40 << 20),
            rss_file: 8 << 20,
            heap_mappings: live + (30 << 20),
            ..MemSample::default()
        };
        tl.push_changes(t * 1000, changes, totals.clone(), Some(mem));
    }
    tl
}

fn time(addr: &str, token: &str, path: &str) -> (f64, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let full = format!("{path}{sep}token={token}");
    let mut best = f64::MAX;
    let mut size = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let r = http::get(addr, &full);
        let ms = start.elapsed().as_secs_f64() * 1e3;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        best = best.min(ms);
        size = r.body.len();
    }
    (best, size)
}

fn main() {
    let start = Instant::now();
    let tl = timeline();
    println!(
        "generated: {} ticks, {} call sites, {:.1} s",
        tl.len(),
        tl.sites().len(),
        start.elapsed().as_secs_f64()
    );
    let info = SessionInfo {
        pid: 1,
        comm: "bench".into(),
        tick_ms: 1000,
        sample_rate: 0,
        heapscope_version: env!("CARGO_PKG_VERSION").into(),
        ..SessionInfo::default()
    };
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        token: None,
        metrics_top: 10,
    };
    let (srv, _) = server::start(config, Source::Recording { info, timeline: tl }).expect("start");
    let addr = srv.addr().to_string();
    let url = srv.url();
    let token = url.rsplit('=').next().unwrap_or_default().to_string();
    println!("best of 5 over loopback (server time + transfer), response size:");
    for path in [
        "/api/v1/profile",
        "/api/v1/profile?window=30m..31m",
        "/api/v1/profile?metric=alloc-bytes",
        "/api/v1/diff?baseline=0s..5m&window=55m..60m",
        "/api/v1/top?limit=200",
        "/api/v1/timeline",
        "/api/v1/findings",
        "/metrics",
    ] {
        let (ms, bytes) = time(&addr, &token, path);
        println!(
            "  {path:<48} {ms:>8.1} ms  {:>8.1} KiB",
            bytes as f64 / 1024.0
        );
    }
    let chromium = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new("/usr/bin/chromedriver").exists();
    if !chromium {
        println!("page load: skipped (install chromium and chromium-driver)");
        return;
    }
    let profile = std::env::temp_dir().join(format!("heapscope-bench-{}", std::process::id()));
    let b = webdriver::Browser::start(&profile);
    let mut loads = Vec::new();
    for _ in 0..3 {
        b.goto("about:blank");
        b.goto(&url);
        let ms = b.wait("document.body.dataset.flameMs", "the first flame graph");
        loads.push(
            ms.as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN),
        );
        let rects = b.js("return document.querySelectorAll('#flame rect').length");
        println!(
            "page load to first flame graph: {:.0} ms ({rects} frames drawn)",
            loads[loads.len() - 1]
        );
    }
}
