//! End-to-end tests of the capture core: real probes on real fixture
//! processes, exact byte counts per call site. They need root; without it
//! they say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;
use std::process::Command;

use common::driver::*;
use common::*;

/// The capture core's mode: every allocation, kernel frame-pointer stacks.
const FP_EXACT: [&str; 3] = ["--exact", "--stacks", "fp"];

fn attach_fp(pid: u32, extra: &[&str]) -> Attached {
    let args: Vec<&str> = FP_EXACT.iter().chain(extra).copied().collect();
    attach(pid, &args)
}

fn fp_fixture() -> std::path::PathBuf {
    fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"])
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
    let a = attach_fp(
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
        counter(&report, "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)"),
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
    assert_own_memory_section(&report);
}

/// The report's own-memory section: the high-water mark against the bound
/// at the most allocations tracked, the tick closest to its bound. Whether
/// it holds is not asserted here: a debug build of heapscope (what `cargo
/// test` runs) maps ~10 MB more code than the release build the bound is
/// for; `cargo xtask bench` prints the release build's numbers.
fn assert_own_memory_section(report: &str) {
    let line = |prefix: &str| -> &str {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in\n{report}"))
    };
    let mb = |text: &str, after: &str| -> f64 {
        let rest = text.split(after).nth(1).expect(after);
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert!(report
        .contains("heapscope's own memory (bound: RSS <= 50.0 MB + 64 B per tracked allocation"));
    let peak = line("peak RSS:");
    let tracked: f64 = peak
        .split("tracked (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let bound = mb(peak, "bound ");
    assert!(
        (bound - (50.0 + 64.0 * tracked / 1e6)).abs() < 0.051,
        "{peak}"
    );
    let closest = line("closest tick:");
    let (peak_mb, tick_mb) = (mb(peak, "peak RSS: "), mb(closest, "closest tick: "));
    // The high-water mark covers every tick; a real process, not zero.
    assert!(peak_mb >= tick_mb && tick_mb > 5.0, "{peak}\n{closest}");
    assert!(
        peak.contains("within") || peak.contains("OVER by"),
        "{peak}"
    );
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
        .args(["run"])
        .args(FP_EXACT)
        .args(["--quiet", "--folded", folded.to_str().expect("utf8"), "--"])
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
    assert_sites_exact_no_stack_lost(&folded_text, &expected, &report);
    // From the first allocation: the pre-attach blocks are seen being
    // allocated, so none of their frees is unknown.
    assert_eq!(
        counter(&report, "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)"),
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
    let a = attach_fp(fx.pid, &["--folded", folded.to_str().expect("utf8")]);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    writeln!(fx.stdin, "exit").expect("release fixture");
    let status = fx.child.wait().expect("wait fixture");
    assert_eq!(status.code(), Some(3));
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("target exited"), "{stderr}");
    let folded_text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact_no_stack_lost(&folded_text, &expected, &report);
}

#[test]
fn duration_detaches_and_target_runs_on() {
    if !root_or_skip("duration_detaches_and_target_runs_on") {
        return;
    }
    let bin = fp_fixture();
    let fx = start_fixture(&bin);
    let a = attach_fp(fx.pid, &["--duration", "300ms"]);
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

#[test]
fn detaching_from_a_busy_process_leaves_no_artifacts() {
    if !root_or_skip("detaching_from_a_busy_process_leaves_no_artifacts") {
        return;
    }
    // The demo server allocates ~10,000 times a second without pause. Probes
    // attach and detach one at a time: free must be in before the allocators
    // (or frees go unseen and addresses come back "replaced"), and the last
    // numbers must be read before the detach (or calls made meanwhile show up
    // as frees of unknown pointers and lost returns).
    let bin = fixture(
        "demo_server",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let mut server = Command::new(&bin)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start demo server");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = Command::new(heapscope())
        .args([
            "attach",
            "-p",
            &server.id().to_string(),
            "--duration",
            "2s",
            "--quiet",
        ])
        .args(FP_EXACT)
        .output()
        .expect("heapscope");
    let _ = server.kill();
    let _ = server.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        counter(&report, "allocations seen").unwrap_or(0) > 1000,
        "{report}"
    );
    // Blocks allocated while the probes were going in are freed as pre-attach
    // blocks (free is probed first), never left "live" to be replaced later.
    assert!(
        counter(&report, "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)").is_some(),
        "{report}"
    );
    for lost in [
        "per-thread state stale (return not seen)",
        "replaced (free not seen)",
        "unmatched returns",
    ] {
        assert_eq!(counter(&report, lost), Some(0), "{lost}\n{report}");
    }
}

#[test]
fn sampled_headline_is_the_exact_live_heap() {
    if !root_or_skip("sampled_headline_is_the_exact_live_heap") {
        return;
    }
    let bin = fixture("leaks", "nofp", &["-O2", "-g", "-fomit-frame-pointer"]);
    let expected: u64 = expected_sites(&bin).values().sum();
    let mut fx = start_fixture(&bin);
    // Sampled, DWARF stacks, every return probe kept (--no-sessions): the
    // live map holds every block, so the headline is exact.
    let a = attach(fx.pid, &["--no-sessions"]);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
    assert_eq!(
        headline_live_bytes(&report),
        Some(expected),
        "the headline is allocated - freed over every allocation\n{report}"
    );
    assert!(report.contains("(exact: allocated - freed since attach)"));
    assert!(
        report.contains("~LIVE BYTES"),
        "sampled sites are marked\n{report}"
    );
}
