//! End-to-end tests of outputs under adverse conditions: unwritable files
//! refused before anything is attached, a reader that closes stdout, a
//! terminal that goes away (SIGHUP). Exact numbers against the fixture.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::driver::*;
use common::*;

const FP_EXACT: [&str; 3] = ["--exact", "--stacks", "fp"];

fn fp_fixture() -> std::path::PathBuf {
    fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"])
}

fn utf8(p: &std::path::Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// Runs `heapscope attach -p PID ARGS` to completion; (exit code, stderr).
fn attach_once(pid: u32, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(heapscope())
        .args(["attach", "-p", &pid.to_string(), "--duration", "5s"])
        .args(args)
        .output()
        .expect("heapscope");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Lets a fixture that has run its sites exit, with its own exit code.
fn release(mut fx: Fixture) {
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
}

#[test]
fn unwritable_outputs_fail_before_attaching() {
    if !root_or_skip("unwritable_outputs_fail_before_attaching") {
        return;
    }
    let bin = fp_fixture();
    let fx = start_fixture(&bin);
    let dir = scratch("unwritable");
    // A directory given as the recording.
    let (code, stderr) = attach_once(fx.pid, &["--record", utf8(&dir)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
    assert!(
        !stderr.contains("attached"),
        "refused before attaching: {stderr}"
    );
    // A read-only file system, in a private mount namespace so nothing leaks.
    let ro = dir.join("ro");
    std::fs::create_dir_all(&ro).expect("mkdir");
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {ro} && exec {hs} attach -p {pid} --duration 5s --folded {ro}/x.folded --record {ro}/x.heapscope",
        ro = utf8(&ro),
        hs = heapscope(),
        pid = fx.pid
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--record") && stderr.contains("Read-only file system"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("attached"),
        "refused before attaching: {stderr}"
    );
    fx.run_to_exit();
}

#[test]
fn a_closed_stdout_does_not_cost_the_files() {
    if !root_or_skip("a_closed_stdout_does_not_cost_the_files") {
        return;
    }
    let bin = fp_fixture();
    let expected = expected_sites(&bin);
    let dir = scratch("closed-stdout");
    let folded = dir.join("x.folded");
    let svg = dir.join("x.svg");
    let mut fx = start_fixture(&bin);
    let mut args: Vec<&str> = FP_EXACT.to_vec();
    args.extend(["--quiet", "--folded", utf8(&folded), "--svg", utf8(&svg)]);
    let mut a = attach(fx.pid, &args);
    // `| head` that has read enough: the report's reader is gone.
    drop(a.child.stdout.take());
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, _, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("closed the pipe"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact(&text, &expected);
    let svg_text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(svg_text.contains("leak_calloc"), "svg");
    release(fx);
}

/// A pseudo-terminal: (master, slave).
fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: out-pointers to two ints; name, termios and winsize may be NULL.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn sighup_ends_the_session_like_sigterm() {
    if !root_or_skip("sighup_ends_the_session_like_sigterm") {
        return;
    }
    let bin = fp_fixture();
    let expected = expected_sites(&bin);
    let dir = scratch("sighup");
    let folded = dir.join("x.folded");
    let rec = dir.join("x.heapscope");
    let report = dir.join("report.txt");
    let mut fx = start_fixture(&bin);
    // `heapscope attach ... > report.txt` in a terminal that is then closed.
    let (master, slave) = openpty();
    let mut child = Command::new(heapscope())
        .args(["attach", "-p", &fx.pid.to_string(), "--tick", "100ms"])
        .args(FP_EXACT)
        .args(["--folded", utf8(&folded), "--record", utf8(&rec)])
        .stdin(Stdio::null())
        .stdout(File::create(&report).expect("report file"))
        .stderr(slave)
        .spawn()
        .expect("start heapscope");
    // The terminal shows the "attached" line, then the reader lets go of it.
    let (tx, rx) = mpsc::channel();
    let mut term = File::from(master.try_clone().expect("dup"));
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = term.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("attached") {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&seen).into_owned());
    });
    let shown = rx.recv_timeout(HANG_GUARD).expect("attached line");
    assert!(shown.contains("attached"), "{shown}");
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    // The terminal closes: its master goes away, the shell sends SIGHUP.
    drop(master);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let status = child.wait().expect("wait heapscope");
    assert_eq!(status.code(), Some(0), "heapscope exit after SIGHUP");
    let text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact(&text, &expected);
    let report_text = std::fs::read_to_string(&report).expect("report written");
    assert!(report_text.contains("live heap"), "{report_text}");
    // The recording ends cleanly and reads back.
    let out = Command::new(heapscope())
        .args(["report", utf8(&rec)])
        .output()
        .expect("heapscope report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("partial"), "{stderr}");
    // A window after its end is an error naming the recording's span.
    let out = Command::new(heapscope())
        .args(["report", utf8(&rec), "--window", "1h.."])
        .output()
        .expect("heapscope report");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("window 3600s.. holds no tick of the recording, which spans"),
        "{stderr}"
    );
    release(fx);
}

#[test]
fn bad_values_are_errors_not_panics() {
    // No root needed: every one fails at parse time or before attaching.
    for args in [
        &["attach", "-p", "1", "--duration", "99999999999999999999"][..],
        &["attach", "-p", "1", "--duration", "10000000000000000000"],
        &["attach", "-p", "1", "--tick", "99999999999999999999"],
        &["attach", "-p", "1", "--older-than", "99999999999999999999"],
        &["attach", "-p", "1", "--live-map-entries", "4294967295"],
        &["report", "x", "--window", "99999999999999999999.."],
        &["diff", "x", "--baseline", "..", "--window", "1e400.."],
    ] {
        let out = Command::new(heapscope())
            .args(args)
            .output()
            .expect("heapscope");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error: invalid value"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn fp_stacks_through_code_without_frame_pointers_warn() {
    if !root_or_skip("fp_stacks_through_code_without_frame_pointers_warn") {
        return;
    }
    let bin = fixture("leaks", "nofp", &["-O2", "-g", "-fomit-frame-pointer"]);
    let dir = scratch("fp-nofp");
    let folded = dir.join("x.folded");
    let mut fx = start_fixture(&bin);
    let mut args: Vec<&str> = FP_EXACT.to_vec();
    args.extend(["--quiet", "--folded", utf8(&folded)]);
    let a = attach(fx.pid, &args);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, _, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("--stacks fp:")
            && stderr.contains(&format!(
                "a frame in {}, which has no frame pointers",
                bin.display()
            )),
        "{stderr}"
    );
    // No frame made of data the walk read as a return address.
    let text = std::fs::read_to_string(&folded).expect("folded written");
    for bogus in ["[heap]", "[stack]", "[?+", "[anon"] {
        assert!(!text.contains(bogus), "{bogus} in\n{text}");
    }
    release(fx);
}
