//! End-to-end test of debug information by build-id: the leaks fixture,
//! stripped, with its split debug file served by Debian's `debuginfod`
//! (started here on a free port over a directory holding only that file).
//! Recorded without symbols, `report --resymbolize` names its functions
//! through the server; with the server down, or one that never answers,
//! frames stay `[module+0xoff]` after a bounded wait, and a live capture is
//! not held up. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::driver::*;
use common::*;

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("run tool");
    assert!(st.success(), "{cmd:?}");
}

/// The fixture stripped of every symbol, and a directory holding only its
/// debug file (`objcopy --only-keep-debug`).
fn stripped_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let full = fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let bin = dir.join("leaks-stripped");
    let debug_dir = dir.join("debug");
    std::fs::create_dir_all(&debug_dir).expect("debug dir");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&full)
        .arg(debug_dir.join("leaks.debug")));
    run(Command::new("strip")
        .arg("--strip-all")
        .arg(&full)
        .arg("-o")
        .arg(&bin));
    (bin, debug_dir)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// `GET path` on 127.0.0.1:port: the status code, or None when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn build_id(path: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-n"])
        .arg(path)
        .output()
        .expect("readelf");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("build-id note")
}

/// Debian's debuginfod over `dir`, on `port`; killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_debuginfod(dir: &Path, port: u16, id: &str) -> Server {
    let child = Command::new("debuginfod")
        .args(["-F", "-t", "0", "-g", "0", "-p", &port.to_string(), "-d"])
        .arg(dir.join("..").join("debuginfod.sqlite"))
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start debuginfod (install it: `cargo xtask setup`)");
    let server = Server(child);
    // Ready once the initial scan has indexed the debug file.
    let until = Instant::now() + HANG_GUARD;
    while http_status(port, &format!("/buildid/{id}/debuginfo")) != Some(200) {
        assert!(Instant::now() < until, "debuginfod never served {id}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// `heapscope report FILE --resymbolize` with `urls` and its own cache,
/// waited for with a guard against hangs (a lookup must be bounded).
fn resymbolize(rec: &Path, urls: &str, cache: &Path) -> Output {
    let mut child = Command::new(heapscope())
        .args(["report", "--resymbolize"])
        .arg(rec)
        .env("DEBUGINFOD_URLS", urls)
        .env("DEBUGINFOD_CACHE_PATH", cache)
        .env("DEBUGINFOD_TIMEOUT", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("heapscope report");
    let until = Instant::now() + HANG_GUARD;
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < until,
            "report --resymbolize did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn debuginfod_names_a_stripped_binary_and_its_absence_degrades() {
    if !root_or_skip("debuginfod_names_a_stripped_binary_and_its_absence_degrades") {
        return;
    }
    let dir = scratch("debuginfod");
    let (bin, debug_dir) = stripped_fixture(&dir);
    let id = build_id(&bin);
    let rec = dir.join("leaks.rec");

    // A server that accepts and never answers: the live session's lookup
    // (after detaching) gives up, the capture's numbers are untouched.
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole = format!("http://{}", black_hole.local_addr().expect("addr"));
    let fx = start_fixture(&bin);
    // The only test of this binary: the environment is heapscope's to inherit.
    std::env::set_var("DEBUGINFOD_URLS", &hole);
    std::env::set_var("DEBUGINFOD_CACHE_PATH", dir.join("cache-live"));
    std::env::set_var("DEBUGINFOD_TIMEOUT", "2");
    let report = run_attached(
        fx,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--record",
            rec.to_str().expect("utf8"),
        ],
    );
    std::env::remove_var("DEBUGINFOD_URLS");
    drop(black_hole);
    assert!(report.contains("[leaks-stripped+0x"), "{report}");
    assert!(!report.contains("leak_malloc"), "{report}");

    // The server up: report --resymbolize names the functions.
    let port = free_port();
    let server = start_debuginfod(&debug_dir, port, &id);
    let cache = dir.join("cache");
    let out = resymbolize(&rec, &format!("http://127.0.0.1:{port}"), &cache);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains("leak_malloc <- run_sites <- main"))
        .unwrap_or_else(|| panic!("no leak_malloc row:\n{stdout}\n{stderr}"));
    // The numbers are the capture's, exact: re-symbolizing only renames.
    let live: u64 = row
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("live bytes column");
    assert_eq!(live, expected_sites(&bin)["leak_malloc"], "{row}");
    assert!(stderr.contains("re-symbolized: "), "{stderr}");
    assert!(cache.join(&id).join("debuginfo").is_file());
    drop(server);

    // The server down: frames stay as recorded, the user is told why.
    let out = resymbolize(
        &rec,
        &format!("http://127.0.0.1:{port}"),
        &dir.join("cache2"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("[leaks-stripped+0x"), "{stdout}");
    assert!(stderr.contains("debuginfod failed"), "{stderr}");
    assert!(
        stderr.contains(&format!("debuginfod-find debuginfo {id}")),
        "{stderr}"
    );
}
