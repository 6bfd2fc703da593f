//! End-to-end tests of capture under load: attaching to a process whose
//! threads saturate the CPUs. They need root; without it they say they were
//! skipped. No test asserts on elapsed time (`cargo xtask bench` measures it).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;

use common::driver::*;
use common::*;

/// Threads of the saturating fixture: more than the CPUs, each looping on
/// malloc(64)/free with at most one block outstanding.
const SPIN_THREADS: u64 = 32;

#[test]
fn attach_to_a_saturated_process_counts_only_after_the_attach_line() {
    if !root_or_skip("attach_to_a_saturated_process_counts_only_after_the_attach_line") {
        return;
    }
    let bin = fixture("bench_pairs", "fp", &["-O2", "-pthread"]);
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["spin", &SPIN_THREADS.to_string()]);
    let mut fx = start_command(cmd);
    let a = attach(
        fx.pid,
        &["--exact", "--stacks", "fp", "--quiet", "--attach-priority"],
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    writeln!(fx.stdin, "exit").expect("release fixture");
    let _ = fx.child.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        counter(&report, "allocations seen").unwrap_or(0) > 1000,
        "{report}\n{stderr}"
    );
    // Counting starts when the session has started: the only blocks freed
    // without their allocation having been seen are those each thread held at
    // that moment (one at most), not the millions of pairs made while the
    // probes went in.
    let pre = counter(
        &report,
        "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)",
    )
    .unwrap_or(u64::MAX);
    assert!(pre <= SPIN_THREADS, "{pre} pre-attach frees\n{report}");
    // Stopped while the threads run: the last snapshot is read with counting
    // stopped in every program at once, so counters read one after the other
    // agree (every call is malloc(64) or free).
    let allocs = counter(&report, "allocations seen").expect("allocations");
    let frees = counter(&report, "frees seen").expect("frees");
    assert_eq!(
        counter(&report, "allocated bytes"),
        Some(64 * allocs),
        "{report}"
    );
    assert_eq!(
        counter(&report, "freed bytes"),
        Some(64 * frees),
        "{report}"
    );
    assert_eq!(
        counter(&report, "replaced (free not seen)"),
        Some(0),
        "{report}"
    );
    // A thread preempted inside malloc while the entry probes went in returns
    // without any state: at most one such call per thread, counted apart
    // (its block is not counted, like one allocated before attach), not
    // as a loss that would make the live heap "not exact".
    let before = counter(
        &report,
        "returns of calls entered before the probes went in (not counted)",
    )
    .unwrap_or(u64::MAX);
    assert!(before <= SPIN_THREADS, "{before} early returns\n{report}");
    assert_eq!(counter(&report, "unmatched returns"), Some(0), "{report}");
    let stale = counter(&report, "per-thread state stale (return not seen)").unwrap_or(u64::MAX);
    assert!(stale <= SPIN_THREADS, "{stale} stale states\n{report}");
}

#[test]
fn single_probe_fallback_attaches_and_counts() {
    if !root_or_skip("single_probe_fallback_attaches_and_counts") {
        return;
    }
    // Kernels before 6.6 have no uprobe_multi links: the fallback attaches
    // one probe at a time and must count the same way.
    let bin = fixture("bench_pairs", "fp", &["-O2", "-pthread"]);
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["spin", "2"]);
    let mut fx = start_command(cmd);
    let mut child = std::process::Command::new(heapscope())
        .args([
            "attach",
            "-p",
            &fx.pid.to_string(),
            "--exact",
            "--stacks",
            "fp",
        ])
        .arg("--quiet")
        .env("HEAPSCOPE_NO_UPROBE_MULTI", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let stderr = line_reader(child.stderr.take().expect("heapscope stderr"));
    let mut seen = Vec::new();
    wait_for(&stderr, "attached", &mut seen);
    let a = Attached {
        child,
        stderr,
        seen,
    };
    assert!(
        a.seen.iter().any(|l| l.contains("one at a time")),
        "{:?}",
        a.seen
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    writeln!(fx.stdin, "exit").expect("release fixture");
    let _ = fx.child.wait();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        counter(&report, "allocations seen").unwrap_or(0) > 1000,
        "{report}"
    );
    let pre = counter(
        &report,
        "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)",
    )
    .unwrap_or(u64::MAX);
    assert!(pre <= 2, "{pre} pre-attach frees\n{report}");
}

#[test]
fn uprobe_sessions_skip_unsampled_returns_and_say_the_live_heap_is_an_estimate() {
    if !root_or_skip("uprobe_sessions_skip_unsampled_returns_and_say_the_live_heap_is_an_estimate")
    {
        return;
    }
    // 1,000 warm-up and 200,000 timed malloc(64)/free pairs on one thread,
    // all after the attach line.
    const PAIRS: u64 = 201_000;
    let bin = fixture("bench_pairs", "fp", &["-O2", "-pthread"]);
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["200000", "1"]);
    let mut fx = start_command(cmd);
    let a = attach(
        fx.pid,
        &[
            "--sessions",
            "--stacks",
            "fp",
            "--sample-rate",
            "4096",
            "--quiet",
        ],
    );
    writeln!(fx.stdin, "go").expect("start the pairs");
    let mut seen = Vec::new();
    wait_for(&fx.lines, "cpu_ns_per_pair", &mut seen);
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    writeln!(fx.stdin, "exit").expect("release fixture");
    let _ = fx.child.wait();
    assert_eq!(code, 0, "{stderr}");
    let untracked = counter(&report, ENTRY_ONLY).expect("untracked counter");
    let tracked = counter(&report, "allocations seen").expect("allocations");
    // Every call counted once: at entry when unsampled, at return when
    // sampled (thread start-up may add a few of glibc's own).
    let all = untracked + tracked;
    assert!((PAIRS..PAIRS + 50).contains(&all), "{all}\n{report}");
    // One 64-byte block in 64 is sampled at a 4 KiB mean: ~3,140 (sd ~56);
    // the bounds are over 10 sd apart. Sampled ones went through the return
    // side (the session program's return half), and were all freed.
    assert!((2_500..3_800).contains(&tracked), "{tracked}\n{report}");
    let frees = counter(&report, "frees seen").expect("frees");
    assert!(frees + 2 >= tracked, "{frees} of {tracked}\n{report}");
    assert_eq!(counter(&report, "unmatched returns"), Some(0), "{report}");
    assert!(
        report.contains("estimate from the samples: uprobe sessions"),
        "{report}"
    );
    assert!(!report.contains("every number is exact"), "{report}");
}
