//! End-to-end test of memory kept after a peak (glibc): the finding, the
//! arena split, and the call site of the live block pinning the top of
//! `[heap]`. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;
use std::time::Duration;

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
    let a = attach(fx.pid, &["--exact", "--stacks", "fp", "--quiet"]);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "peak", &mut Vec::new());
    // A few ticks (200 ms) at the peak and after it: the finding compares
    // them; nothing asserts on time.
    std::thread::sleep(Duration::from_millis(1200));
    writeln!(fx.stdin, "free").expect("signal fixture");
    wait_for(&fx.lines, "freed", &mut Vec::new());
    std::thread::sleep(Duration::from_millis(1200));
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
