//! End-to-end test of memory kept after a peak (glibc): the finding, the
//! arena split, and the call site of the live block pinning the top of
//! `[heap]`. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;

use common::driver::*;
use common::*;

#[test]
fn memory_kept_after_a_peak_names_the_block_pinning_the_heap() {
    if !root_or_skip("memory_kept_after_a_peak_names_the_block_pinning_the_heap") {
        return;
    }
    let bin = fixture("peak", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let expected: u64 = expected_sites(&bin).values().sum();
    let mut fx = start_fixture(&bin);
    let mut a = attach(fx.pid, &["--exact", "--stacks", "fp"]);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "peak", &mut Vec::new());
    // The finding compares ticks: go on only once a status line has shown
    // the peak, and after the free once one has shown the fall (a loaded
    // machine may serve ticks late; nothing asserts on time).
    wait_for_status(&mut a, |mib| mib >= 39.0, "a tick at the peak");
    writeln!(fx.stdin, "free").expect("signal fixture");
    wait_for(&fx.lines, "freed", &mut Vec::new());
    wait_for_status(&mut a, |mib| mib < 1.0, "a tick after the free");
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(fx.stdin, "done").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));

    // 40 long-lived 512 B blocks and the 64 B pin.
    assert_eq!(expected, 20_544);
    assert!(
        report.contains("live heap: 20.1 KiB (20,544 B)"),
        "{report}"
    );
    assert!(
        report.contains("- memory not returned after a peak: the live heap fell from 39."),
        "{report}"
    );
    assert!(report.contains("main heap ([heap]): resident "), "{report}");
    assert!(
        report.contains("top of [heap]: the highest live block is 64 B from pin_top <- build_peak"),
        "{report}"
    );
    assert!(report.contains("malloc_trim(0)"), "remedies\n{report}");
    assert!(!report.contains("- leak:"), "no leak\n{report}");
}

/// Waits for a status line (`[  1.0s] live 39.1 MiB in ...`) whose live heap
/// in MiB satisfies `ok`.
fn wait_for_status(a: &mut Attached, ok: impl Fn(f64) -> bool, what: &str) {
    loop {
        let line = wait_for(&a.stderr, "] live ", &mut a.seen);
        let live = line.split("] live ").nth(1).and_then(|rest| {
            let mut words = rest.split_whitespace();
            let n: f64 = words.next()?.parse().ok()?;
            let scale = match words.next()? {
                "B" => 1.0 / 1048576.0,
                "KiB" => 1.0 / 1024.0,
                "MiB" => 1.0,
                "GiB" => 1024.0,
                _ => return None,
            };
            Some(n * scale)
        });
        if live.is_some_and(&ok) {
            return;
        }
        assert!(a.seen.len() < 100_000, "never saw {what}");
    }
}
