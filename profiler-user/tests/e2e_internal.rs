//! End-to-end: the allocator's own activity outside any program call (arenas
//! created inside free, thread-exit cache release) is footprint, never
//! program allocations or pre-attach frees; a signal handler allocating
//! inside an interrupted allocator call loses neither call.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;

use common::driver::{attach, finish, interrupt, start_fixture, wait_for, Fixture};
use common::{counter, fixture, root_or_skip};

/// The exact bytes of the report's headline `live heap: 1.2 MiB (1,234,567 B) ...`.
fn headline_live_bytes(report: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with("live heap: "))?;
    let inner = line.split_once('(')?.1.split_once(" B)")?.0;
    inner.replace(',', "").parse().ok()
}

/// Runs the fixture `name` with heapscope attached (`flags`); returns the
/// report and the bytes the fixture says it holds.
fn run(name: &str, flags: &[&str]) -> (String, u64) {
    let bin = fixture(name, "O2", &["-O2", "-g", "-pthread"]);
    let fx = start_fixture(&bin);
    let a = attach(fx.pid, flags);
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    writeln!(stdin, "go").expect("signal fixture");
    let done = wait_for(&lines, "done", &mut Vec::new());
    let held: u64 = done
        .split_once("live=")
        .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok())
        .expect("fixture prints live=N");
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));
    (report, held)
}

fn assert_arenas_are_footprint(report: &str, held: u64) {
    let live = headline_live_bytes(report).expect("headline");
    let diff = live.abs_diff(held) as f64 / held as f64;
    assert!(
        diff <= 0.02,
        "live heap {live} B vs the program's {held} B ({:.1}% off)\n{report}",
        diff * 100.0
    );
    for heap_fn in ["alloc_new_heap", "new_heap", "_int_new_arena", "arena_get2"] {
        assert!(
            !report.contains(heap_fn),
            "arena heaps shown as program allocations ({heap_fn})\n{report}"
        );
    }
    // Eight workers, each with an arena of at least one 64 MiB heap.
    let mapped = counter(
        report,
        "bytes mapped by the allocator itself (or a pool's own blocks)",
    )
    .unwrap_or(0);
    assert!(mapped >= 64 << 20, "{report}");
    assert!(
        counter(report, "allocator's own calls (outside program calls)").unwrap_or(0) > 0,
        "{report}"
    );
    // Every block the program frees was allocated after attach; the worker
    // caches released at thread exit are the allocator's own frees.
    assert!(
        counter(report, "allocator's own frees (its caches)").unwrap_or(0) >= 8,
        "{report}"
    );
    assert_eq!(
        counter(report, "frees of pointers allocated before attach"),
        Some(0),
        "{report}"
    );
}

#[test]
fn arenas_created_inside_free_are_footprint_default_mode() {
    if !root_or_skip("arenas_created_inside_free_are_footprint_default_mode") {
        return;
    }
    let (report, held) = run("arena_free_first", &[]);
    assert_arenas_are_footprint(&report, held);
}

#[test]
fn arenas_created_inside_free_are_footprint_exact_fp() {
    if !root_or_skip("arenas_created_inside_free_are_footprint_exact_fp") {
        return;
    }
    let (report, held) = run("arena_free_first", &["--exact", "--stacks", "fp"]);
    assert_arenas_are_footprint(&report, held);
}

/// The main loop leaks 20,000 blocks of 1,000 B while a SIGALRM handler
/// frees and reallocates a 32-byte block every 100 µs, often inside an
/// interrupted malloc: the exact live heap is the program's own count, to
/// the byte, and no entry state is lost.
#[test]
fn a_signal_handler_allocating_inside_malloc_loses_nothing() {
    if !root_or_skip("a_signal_handler_allocating_inside_malloc_loses_nothing") {
        return;
    }
    let (report, held) = run("signal_alloc", &[]);
    assert_eq!(held, 20_000_032);
    assert_eq!(headline_live_bytes(&report), Some(held), "{report}");
    for lost in [
        "per-thread state stale (return not seen)",
        "unmatched returns",
        "per-thread state full",
        "frees of pointers allocated before attach",
    ] {
        assert_eq!(counter(&report, lost), Some(0), "{lost}\n{report}");
    }
}
