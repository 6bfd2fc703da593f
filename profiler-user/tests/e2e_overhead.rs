//! End-to-end test of the overhead guard (`--max-overhead`): a busy target
//! under a tiny budget makes it back off, the status output and the report
//! say so, and the numbers stay consistent. It needs root; without it it
//! says it was skipped. Nothing is asserted on elapsed time: the guard
//! decides on the target's CPU time, which a busy target accrues however
//! slowly the machine runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;

use common::driver::*;
use common::*;

/// Threads of the fixture, each looping on malloc(64)/free without end.
const THREADS: u64 = 2;

#[test]
fn a_tiny_budget_backs_off_steps_back_when_calm_and_the_report_says_so() {
    if !root_or_skip("a_tiny_budget_backs_off_steps_back_when_calm_and_the_report_says_so") {
        return;
    }
    let bin = fixture("bench_pairs", "fp", &["-O2", "-pthread"]);
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["spin", &THREADS.to_string()]);
    let mut fx = start_command(cmd);
    // Every allocation captured (--exact): the captures are a cost the
    // guard can cut.
    let mut a = attach(
        fx.pid,
        &["--exact", "--stacks", "fp", "--max-overhead", "1"],
    );
    // The target runs until the status line shows the guard's new rate,
    // however long the machine takes to get there.
    let line = wait_for(&a.stderr, "sampling 1 per 64.0 KiB", &mut a.seen);
    assert!(
        line.starts_with('[') && line.contains("probes ~") && line.contains("budget 1%"),
        "a status line: {line}"
    );
    // The target calms down: a pair every few million loop iterations. The
    // guard steps back to the user's rate (every allocation) after
    // CALM_WINDOWS windows well under budget, and the status line says so.
    writeln!(fx.stdin, "light").expect("calm the fixture");
    wait_for(&fx.lines, "light", &mut Vec::new());
    let raised = "sampling raised back from 1 per 64.0 KiB to every allocation";
    wait_for(&a.stderr, raised, &mut a.seen);
    let line = wait_for(&a.stderr, "sampling every allocation", &mut a.seen);
    assert!(line.starts_with('[') && line.contains("probes ~"), "{line}");
    // Stopped while the target still runs: the last snapshot is read with
    // counting stopped in every program at once, so the counters agree.
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    writeln!(fx.stdin, "exit").expect("release fixture");
    let _ = fx.child.wait();
    assert_eq!(code, 0, "{stderr}");

    // Said as it happened.
    let lowered = "sampling lowered from every allocation to 1 per 64.0 KiB";
    assert!(stderr.contains(lowered), "{stderr}");
    // And in the report, with what it means for the numbers.
    assert!(
        report.contains("overhead guard (--max-overhead 1%)"),
        "{report}"
    );
    assert!(report.contains(lowered), "{report}");
    assert!(report.contains(raised), "{report}");
    assert!(
        report.contains("exact (every allocation captured) before the first back-off"),
        "{report}"
    );
    // Per-site numbers are no longer called exact anywhere in the report,
    // though every allocation is captured again at the end.
    assert!(!report.contains("every number is exact"), "{report}");
    assert!(
        report.contains("sampling: one sample per 64.0 KiB allocated on average"),
        "{report}"
    );

    // The process totals stay exact and consistent with each other: every
    // call is malloc(64) or free, so bytes are 64 × calls exactly (before
    // counting stopped at once, a running target moved the counters between
    // two reads: 70,249 allocations against 70,253 by bytes). What is left
    // live is what the threads held at the stop, one block each at most.
    let allocs = counter(&report, "allocations seen").expect("allocations");
    let frees = counter(&report, "frees seen").expect("frees");
    let allocated = counter(&report, "allocated bytes").expect("allocated bytes");
    let freed = counter(&report, "freed bytes").expect("freed bytes");
    assert!(allocs > 1000, "{report}");
    assert_eq!(allocated, 64 * allocs, "{report}");
    assert_eq!(freed, 64 * frees, "{report}");
    let (live_bytes, live_blocks) = live_heap(&report);
    assert_eq!(allocs - frees, live_blocks, "{report}");
    assert_eq!(allocated - freed, live_bytes, "{report}");
    assert!(live_blocks <= THREADS, "{report}");
    let pre = counter(
        &report,
        "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)",
    )
    .expect("pre-attach");
    assert!(pre <= THREADS, "{report}");
    for lost in ["ring buffer lost", "live map full", "per-thread state full"] {
        assert_eq!(counter(&report, lost), Some(0), "{lost}\n{report}");
    }
}

/// The exact live heap of the report's headline: (bytes, blocks), from
/// "live heap: 1.2 KiB (1,234 B) in 5 blocks".
fn live_heap(report: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("live heap:"))
        .expect("live heap line");
    let num = |s: &str| s.replace(',', "").parse::<u64>().expect("a number");
    let bytes = line
        .split('(')
        .nth(1)
        .and_then(|r| r.split(" B)").next())
        .map(num)
        .expect("bytes in parentheses");
    let blocks = line
        .split(" in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .map(num)
        .expect("blocks");
    (bytes, blocks)
}

/// A sampled start (every 64 B on average, DWARF stacks: the captures are a
/// cost the guard can cut) under a 2% budget, recorded: the guard samples
/// less while the fixture spins, steps back to the user's rate once it is
/// light, and the recording read back says both, in text and in
/// `report --json`.
#[test]
fn a_recording_keeps_the_guards_windows() {
    if !root_or_skip("a_recording_keeps_the_guards_windows") {
        return;
    }
    let bin = fixture("bench_pairs", "fp", &["-O2", "-pthread"]);
    let file = scratch("a_recording_keeps_the_guards_windows").join("guard.rec");
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["spin", &THREADS.to_string()]);
    let mut fx = start_command(cmd);
    let mut a = attach(
        fx.pid,
        &[
            "--sample-rate",
            "64",
            "--max-overhead",
            "2",
            "--record",
            file.to_str().expect("utf8"),
        ],
    );
    wait_for(&a.stderr, "sampling lowered from 1 per 64 B", &mut a.seen);
    writeln!(fx.stdin, "light").expect("calm the fixture");
    wait_for(&fx.lines, "light", &mut Vec::new());
    wait_for(&a.stderr, "sampling raised back", &mut a.seen);
    wait_for(&a.stderr, "sampling 1 per 64 B", &mut a.seen);
    interrupt(&a.child);
    let (code, _report, stderr) = finish(a);
    writeln!(fx.stdin, "exit").expect("release fixture");
    let _ = fx.child.wait();
    assert_eq!(code, 0, "{stderr}");

    let out = std::process::Command::new(heapscope())
        .args(["report", "--json"])
        .arg(&file)
        .output()
        .expect("run heapscope report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let g = &doc["overhead_guard"];
    assert_eq!(g["budget_percent"], 2.0, "{g:#}");
    assert_eq!(g["start_rate"], 64, "{g:#}");
    assert_eq!(g["current_rate"], 64, "the user's rate again: {g:#}");
    let kinds: Vec<&str> = g["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["kind"].as_str())
        .collect();
    let less = kinds.iter().position(|k| *k == "sampled_less");
    let more = kinds.iter().rposition(|k| *k == "sampled_more");
    assert!(less.is_some() && more.is_some() && less < more, "{g:#}");
    assert!(
        g["coarsest_rate"].as_u64().is_some_and(|r| r >= 256),
        "{g:#}"
    );
    assert!(g["estimated_from_ms"].as_u64().is_some(), "{g:#}");

    let out = std::process::Command::new(heapscope())
        .arg("report")
        .arg(&file)
        .output()
        .expect("run heapscope report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("overhead guard (--max-overhead 2%)")
            && text.contains("sampling lowered from 1 per 64 B to 1 per 256 B")
            && text.contains("sampling raised back from")
            && text.contains("sampling 1 per 64 B now"),
        "{text}"
    );
}
