//! End-to-end tests of the capture core: real probes on real fixture
//! processes, exact byte counts per call site. They need root; without it
//! they say they were skipped.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Generous guard against hangs only; no test asserts on elapsed time.
const HANG_GUARD: Duration = Duration::from_secs(120);

struct Fixture {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    pid: u32,
}

fn line_reader(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>) -> String {
    loop {
        match rx.recv_timeout(HANG_GUARD) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(what) {
                    return l;
                }
            }
            Err(_) => panic!("never saw '{what}'; output so far:\n{}", seen.join("\n")),
        }
    }
}

impl Fixture {
    /// Runs the sites, waits for them, and lets the fixture exit with its own code (3).
    fn run_to_exit(mut self) {
        writeln!(self.stdin, "go").expect("signal fixture");
        wait_for(&self.lines, "done", &mut Vec::new());
        writeln!(self.stdin, "exit").expect("release fixture");
        assert_eq!(self.child.wait().expect("wait fixture").code(), Some(3));
    }
}

fn start_fixture(path: &std::path::Path) -> Fixture {
    let mut child = Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fixture");
    let stdin = child.stdin.take().expect("fixture stdin");
    let lines = line_reader(child.stdout.take().expect("fixture stdout"));
    let ready = wait_for(&lines, "ready", &mut Vec::new());
    let pid = ready
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("fixture prints its pid");
    Fixture {
        child,
        stdin,
        lines,
        pid,
    }
}

struct Attached {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

fn attach(pid: u32, extra: &[&str]) -> Attached {
    let mut child = Command::new(heapscope())
        .args(["attach", "-p", &pid.to_string(), "--tick", "200ms"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let stderr = line_reader(child.stderr.take().expect("heapscope stderr"));
    let mut seen = Vec::new();
    wait_for(&stderr, "attached", &mut seen);
    Attached {
        child,
        stderr,
        seen,
    }
}

fn finish(mut a: Attached) -> (i32, String, String) {
    let mut stdout = String::new();
    if let Some(mut out) = a.child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).expect("read report");
    }
    let status = a.child.wait().expect("wait heapscope");
    while let Ok(l) = a.stderr.recv_timeout(Duration::from_secs(5)) {
        a.seen.push(l);
    }
    (status.code().unwrap_or(-1), stdout, a.seen.join("\n"))
}

fn interrupt(child: &Child) {
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

fn fp_fixture() -> std::path::PathBuf {
    fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"])
}

fn assert_sites_exact(folded: &str, expected: &std::collections::BTreeMap<String, u64>) {
    let sites = by_site(&parse_folded(folded));
    for (site, want) in expected {
        let got = sites.get(site).copied().unwrap_or(0);
        assert_eq!(got, *want, "live bytes of {site}\nfolded:\n{folded}");
    }
}

#[test]
fn attach_reports_exact_live_bytes_per_site() {
    if !root_or_skip("attach_reports_exact_live_bytes_per_site") {
        return;
    }
    let bin = fp_fixture();
    let expected = expected_sites(&bin);
    assert!(expected.len() >= 13, "fixture states its sites");
    let dir = scratch("attach");
    let folded = dir.join("live.folded");
    let svg = dir.join("live.svg");
    let mut fx = start_fixture(&bin);
    let a = attach(
        fx.pid,
        &[
            "--folded",
            folded.to_str().expect("utf8"),
            "--svg",
            svg.to_str().expect("utf8"),
        ],
    );
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "heapscope exit code; stderr:\n{stderr}");
    // The target runs on after detach and exits with its own code.
    writeln!(fx.stdin, "exit").expect("release fixture");
    let status = fx.child.wait().expect("wait fixture");
    assert_eq!(
        status.code(),
        Some(3),
        "fixture exit code must be unchanged"
    );

    let folded_text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact(&folded_text, &expected);
    // Each leaking site is reached through run_sites and main.
    for (frames, _) in parse_folded(&folded_text) {
        if frames.iter().any(|f| f.starts_with("leak_")) {
            let n = frames.len();
            assert_eq!(frames[n - 3], "run_sites", "stack {frames:?}");
            assert!(frames.contains(&"main".to_string()), "stack {frames:?}");
        }
    }
    assert_eq!(
        counter(&report, "frees of pointers allocated before attach"),
        Some(10),
        "report:\n{report}"
    );
    // 1000 churned mallocs + 20 callocs + 20 reallocs at least were seen.
    let allocs = counter(&report, "allocations seen").expect("allocations counter");
    assert!(allocs >= 1040, "allocations seen {allocs}\n{report}");
    for lost in [
        "live map full",
        "per-thread state full",
        "site map full",
        "ring buffer lost",
    ] {
        assert_eq!(counter(&report, lost), Some(0), "{lost}\n{report}");
    }
    let svg_text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(svg_text.contains("<svg") && svg_text.contains("leak_realloc_big"));
    assert!(stderr.contains("live"), "status lines on stderr:\n{stderr}");
}

#[test]
fn run_profiles_from_first_allocation() {
    if !root_or_skip("run_profiles_from_first_allocation") {
        return;
    }
    let bin = fp_fixture();
    let expected = expected_sites(&bin);
    let dir = scratch("run");
    let folded = dir.join("run.folded");
    let out = Command::new(heapscope())
        .args([
            "run",
            "--quiet",
            "--folded",
            folded.to_str().expect("utf8"),
            "--",
        ])
        .arg(&bin)
        .arg("--no-wait")
        .output()
        .expect("heapscope run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "run passes on the exit code\n{stderr}"
    );
    let folded_text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact(&folded_text, &expected);
    // From the first allocation: the pre-attach blocks are seen being
    // allocated, so none of their frees is unknown.
    assert_eq!(
        counter(&report, "frees of pointers allocated before attach"),
        Some(0),
        "{report}"
    );
}

#[test]
fn target_exit_while_attached_still_reports() {
    if !root_or_skip("target_exit_while_attached_still_reports") {
        return;
    }
    let bin = fp_fixture();
    let expected = expected_sites(&bin);
    let dir = scratch("exit");
    let folded = dir.join("exit.folded");
    let mut fx = start_fixture(&bin);
    let a = attach(fx.pid, &["--folded", folded.to_str().expect("utf8")]);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    writeln!(fx.stdin, "exit").expect("release fixture");
    let status = fx.child.wait().expect("wait fixture");
    assert_eq!(status.code(), Some(3));
    let (code, _report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("target exited"), "{stderr}");
    let folded_text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact(&folded_text, &expected);
}

#[test]
fn duration_detaches_and_target_runs_on() {
    if !root_or_skip("duration_detaches_and_target_runs_on") {
        return;
    }
    let bin = fp_fixture();
    let fx = start_fixture(&bin);
    let a = attach(fx.pid, &["--duration", "300ms"]);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("duration elapsed"), "{stderr}");
    assert!(report.contains("live heap"), "{report}");
    // Detached: the fixture still answers and exits normally.
    fx.run_to_exit();
}

#[test]
fn bad_pid_is_a_clear_error() {
    // No root needed: the pid is checked before anything is loaded.
    let out = Command::new(heapscope())
        .args(["attach", "-p", "999999999"])
        .output()
        .expect("heapscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("no such process: pid 999999999"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unprivileged_user_gets_a_clear_error() {
    if !root_or_skip("unprivileged_user_gets_a_clear_error") {
        return;
    }
    let bin = fp_fixture();
    let fx = start_fixture(&bin);
    // Drop to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(heapscope())
        .args(["attach", "-p", &fx.pid.to_string()])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    fx.run_to_exit();
}

#[test]
fn missing_output_directory_fails_before_attaching() {
    let out = Command::new(heapscope())
        .args(["attach", "-p", "1", "--folded", "/nonexistent-dir/x.folded"])
        .output()
        .expect("heapscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("/nonexistent-dir"), "{stderr}");
}
