//! The cross-thread-free fixture (`tests/fixtures/xthread.c`) run under
//! `attach --record`: producers allocate, consumers on other threads free.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::driver::*;
use super::{fixture, scratch};

/// Runs the fixture with heapscope attached (`flags`), recording to a file
/// in the test's scratch dir; a few ticks after production and after
/// consumption. Returns attach's report and the recording.
pub fn run(test: &str, flags: &[&str]) -> (String, PathBuf) {
    let bin = fixture(
        "xthread",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    let file = scratch(test).join("session.rec");
    let mut fx = start_fixture(&bin);
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["--quiet", "--record", file.to_str().expect("utf8")]);
    let a = attach(fx.pid, &args);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "produced", &mut Vec::new());
    // Ticks (200 ms) at the peak and after it; nothing asserts on time.
    std::thread::sleep(Duration::from_millis(1000));
    writeln!(fx.stdin, "consume").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    std::thread::sleep(Duration::from_millis(1000));
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
    (report, file)
}
