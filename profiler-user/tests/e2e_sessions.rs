//! End-to-end: uprobe sessions (`--sessions`) on a C++ program whose
//! `operator new` (libstdc++) calls glibc's malloc, and on C calls that
//! enter another entry point (`realloc(NULL, n)` is a tail call of malloc):
//! every call is counted once, at its entry or at its return, and the
//! sampled live estimate stays near the truth. They need root; without it
//! they say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;

use common::driver::{attach, finish, interrupt, start_command, wait_for};
use common::{counter, fixture_with, root_or_skip, ENTRY_ONLY};

/// The `~… (N B)` byte count of the report's `live heap:` line.
fn live_estimate(report: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with("live heap: ~"))?;
    let inner = line.split('(').nth(1)?.split(" B)").next()?;
    inner.replace(',', "").parse().ok()
}

#[test]
fn cxx_new_over_glibc_counts_each_call_once_and_estimates_the_live_heap() {
    if !root_or_skip("cxx_new_over_glibc_counts_each_call_once_and_estimates_the_live_heap") {
        return;
    }
    let bin = fixture_with(
        "c++",
        "leaks_cpp.cpp",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let mut fx = start_command(std::process::Command::new(&bin));
    // 64-byte mean: about half of the 48-byte blocks go unsampled (their
    // returns skipped), nearly every larger one is sampled.
    let a = attach(fx.pid, &["--sessions", "--sample-rate", "64", "--quiet"]);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
    assert_eq!(code, 0, "{stderr}");

    // The fixture's run: 10 + 6 + 4 + 5 leaking news, 1,000 + 100 + 20
    // churning ones, each one operator new (libstdc++) over one malloc (or
    // aligned_alloc): counted once, never once for new and once for malloc.
    const CALLS: u64 = 10 + 6 + 4 + 5 + 1_000 + 100 + 20;
    const BYTES: u64 = 10 * 48 + 6 * 3_000 + 4 * 256 + 5 * 700 + 1_000 * 48 + 100 * 100 + 20 * 256;
    let untracked = counter(&report, ENTRY_ONLY).expect("untracked allocations");
    let untracked_bytes =
        counter(&report, "bytes of allocations seen at entry only").expect("untracked bytes");
    let tracked = counter(&report, "allocations seen").expect("allocations");
    let tracked_bytes = counter(&report, "allocated bytes").expect("allocated bytes");
    assert_eq!(untracked + tracked, CALLS, "{report}");
    assert_eq!(untracked_bytes + tracked_bytes, BYTES, "{report}");
    // About half of the 1,010 48-byte news are unsampled (sd ~16).
    assert!((350..700).contains(&untracked), "{untracked}\n{report}");
    assert_eq!(counter(&report, "unmatched returns"), Some(0), "{report}");

    // The live heap is the sampled estimate, labelled so. Truth: 23,004 B
    // (10 × 48 + 6 × 3,000 + 4 × 256 + 5 × 700); only the 48-byte blocks
    // are sampled with a weight (sd ~150 B), the others almost surely.
    assert!(
        report.contains("estimate from the samples: uprobe sessions"),
        "{report}"
    );
    let live = live_estimate(&report).expect("live estimate");
    assert!((22_000..24_100).contains(&live), "{live}\n{report}");
}

#[test]
fn realloc_of_null_under_sessions_counts_once() {
    if !root_or_skip("realloc_of_null_under_sessions_counts_once") {
        return;
    }
    // leaks.c runs every API once per leaking block, realloc(NULL, n)
    // among them (glibc's realloc tail-calls malloc for it).
    let bin = fixture_with(
        "cc",
        "leaks.c",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let run = |flags: &[&str]| {
        let mut fx = start_command(std::process::Command::new(&bin));
        let a = attach(fx.pid, flags);
        writeln!(fx.stdin, "go").expect("signal fixture");
        wait_for(&fx.lines, "done", &mut Vec::new());
        interrupt(&a.child);
        let (code, report, stderr) = finish(a);
        writeln!(fx.stdin, "exit").expect("release fixture");
        let _ = fx.child.wait();
        assert_eq!(code, 0, "{stderr}");
        report
    };
    // The truth: every call through the return side.
    let exact = run(&["--exact", "--stacks", "fp", "--quiet"]);
    let calls = counter(&exact, "allocations seen").expect("allocations");
    let bytes = counter(&exact, "allocated bytes").expect("bytes");
    let sessions = run(&[
        "--sessions",
        "--stacks",
        "fp",
        "--sample-rate",
        "4096",
        "--quiet",
    ]);
    let untracked = counter(&sessions, ENTRY_ONLY).expect("untracked");
    assert!(untracked > 0, "some returns skipped\n{sessions}");
    let untracked_bytes =
        counter(&sessions, "bytes of allocations seen at entry only").expect("untracked bytes");
    let tracked = counter(&sessions, "allocations seen").expect("allocations");
    let tracked_bytes = counter(&sessions, "allocated bytes").expect("bytes");
    assert_eq!(untracked + tracked, calls, "{exact}\n{sessions}");
    assert_eq!(
        untracked_bytes + tracked_bytes,
        bytes,
        "{exact}\n{sessions}"
    );
}

/// `heapscope run` attaches before its command's exec, which turns the
/// entry table off (its addresses were heapscope's own image's); the table
/// is filled again for the command, whose calls then find their cookie
/// there. Every call is counted as without uprobe sessions: the same
/// allocations, to the byte and the call, as under `--no-sessions`.
#[test]
fn run_fills_the_entry_table_again_after_the_exec_and_counts_every_call() {
    if !root_or_skip("run_fills_the_entry_table_again_after_the_exec_and_counts_every_call") {
        return;
    }
    let bin = common::fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let run = |flags: &[&str]| -> (String, Vec<String>) {
        let mut child = std::process::Command::new(common::heapscope())
            .args(["run", "--quiet", "--tick", "100ms"])
            .args(flags)
            .arg("--")
            .arg(&bin)
            .env("RUST_LOG", "heapscope::probes::entry_table=debug")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("heapscope run");
        let out = common::driver::line_reader(child.stdout.take().expect("stdout"));
        let err = common::driver::line_reader(child.stderr.take().expect("stderr"));
        let mut stdin = child.stdin.take().expect("stdin");
        wait_for(&out, "ready", &mut Vec::new());
        // Filled at attach, and again once the exec was applied (a tick).
        let mut fills = Vec::new();
        while fills.len() < 2 {
            let line = err
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("the entry table's fills");
            if line.contains("entry table for pid") {
                fills.push(line);
            }
        }
        writeln!(stdin, "go").expect("go");
        wait_for(&out, "done", &mut Vec::new());
        writeln!(stdin, "exit").expect("exit");
        let mut report = String::new();
        while let Ok(line) = out.recv_timeout(std::time::Duration::from_secs(30)) {
            report.push_str(&line);
            report.push('\n');
        }
        assert_eq!(child.wait().expect("wait").code(), Some(3), "{report}");
        (report, fills)
    };
    let (sessions, fills) = run(&[]);
    for fill in &fills {
        assert!(fill.contains(": 12 probes, 0 left out"), "{fills:#?}");
    }
    let (returns, _) = run(&["--no-sessions"]);
    let allocated = |report: &str| -> String {
        let line = report
            .lines()
            .find(|l| l.starts_with("allocated: "))
            .unwrap_or_else(|| panic!("an allocated line\n{report}"));
        line.split(" calls").next().unwrap_or(line).to_string()
    };
    assert!(
        counter(&sessions, ENTRY_ONLY).unwrap_or(0) > 0,
        "{sessions}"
    );
    assert_eq!(
        allocated(&sessions),
        allocated(&returns),
        "{sessions}\n{returns}"
    );
}
