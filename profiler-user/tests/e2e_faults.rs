//! Fault test: heapscope killed with SIGKILL at points of attach, run and
//! detach leaves no breakpoint in the target. The target's executable text
//! (libc, its allocator, included) read through /proc/PID/mem must equal the
//! files' bytes, and the target, which calls every probed entry point in a
//! loop, must still run (a stray int3 would kill it with SIGTRAP). The one
//! exception is the kernel's own: killed inside a link's close, the kernel
//! may fail to restore the instruction and says so in its log ("leaking
//! uprobe"); that target is then replaced (see `kernel_leaks`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::driver::*;
use common::*;

/// A file-backed executable mapping: runtime range, file offset, path.
struct Text {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

fn texts(pid: u32) -> Vec<Text> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[1].contains('x') || !f[5].starts_with('/') {
                return None;
            }
            let (s, e) = f[0].split_once('-')?;
            Some(Text {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                offset: u64::from_str_radix(f[2], 16).ok()?,
                path: f[5].to_string(),
            })
        })
        .collect()
}

/// Every byte of the target's executable text that differs from its file,
/// as (path, file offset, byte in memory, byte in the file).
fn text_differences(pid: u32) -> Vec<(String, u64, u8, u8)> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut diffs = Vec::new();
    for t in texts(pid) {
        let len = (t.end - t.start) as usize;
        let mut in_mem = vec![0u8; len];
        mem.read_exact_at(&mut in_mem, t.start)
            .expect("read the target's text");
        let file = std::fs::File::open(format!("/proc/{pid}/root{}", t.path)).expect("open module");
        let size = file.metadata().expect("module size").len();
        let mut on_disk = vec![0u8; len.min(size.saturating_sub(t.offset) as usize)];
        file.read_exact_at(&mut on_disk, t.offset)
            .expect("read module");
        for (i, (m, f)) in in_mem.iter().zip(&on_disk).enumerate() {
            if m != f {
                diffs.push((t.path.clone(), t.offset + i as u64, *m, *f));
            }
        }
    }
    diffs
}

/// Waits (bounded, no timing asserted) until the text is clean again; the
/// kernel removes a killed process's uprobes when its file descriptors close,
/// and a uprobe_multi link's release waits for an RCU grace period, which on
/// a busy machine has been seen to take over 3 s: the bound is generous.
/// Returns what still differs.
fn wait_clean(pid: u32) -> Vec<(String, u64, u8, u8)> {
    let mut diffs = text_differences(pid);
    for _ in 0..3000 {
        if diffs.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        diffs = text_differences(pid);
    }
    diffs
}

fn assert_clean(pid: u32, what: &str) {
    let diffs = wait_clean(pid);
    assert!(
        diffs.is_empty(),
        "{what}: {} bytes of text differ from the files, first {:x?}",
        diffs.len(),
        &diffs[..diffs.len().min(8)]
    );
}

/// Kernel log lines saying a uprobe could not be unregistered. Killed
/// while it closes a link (its detach), heapscope's close fails in the
/// kernel (the pending SIGKILL interrupts the page walk that restores the
/// original instruction): the kernel says "failed to unregister, leaking
/// uprobe" and the breakpoint stays, without a consumer (the target takes
/// a trap there that does nothing). heapscope cannot prevent it.
fn kernel_leaks() -> usize {
    Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .matches("leaking uprobe")
                .count()
        })
        .unwrap_or(0)
}

/// After heapscope was killed: the target runs, and its text is clean
/// again, unless the kernel said it leaked uprobes since `leaks_before`.
/// Returns false when it did (the leaked breakpoints stay in this target:
/// the next kill points need a new one).
fn check_after_kill(fx: &mut Fixture, leaks_before: usize, what: &str) -> bool {
    let diffs = wait_clean(fx.pid);
    assert_running(fx, what);
    if diffs.is_empty() {
        return true;
    }
    let leaked = kernel_leaks().saturating_sub(leaks_before);
    assert!(
        leaked > 0,
        "{what}: {} bytes of text differ from the files, first {:x?}",
        diffs.len(),
        &diffs[..diffs.len().min(8)]
    );
    eprintln!(
        "{what}: the kernel leaked {leaked} uprobes (dmesg: \"failed to unregister, leaking \
         uprobe\"); {} bytes stay int3 and the target runs on; a new target for what follows",
        diffs.len()
    );
    false
}

fn assert_running(fx: &mut Fixture, what: &str) {
    let status = fx.child.try_wait().expect("poll the target");
    assert!(status.is_none(), "{what}: the target died: {status:?}");
}

fn start_heapscope(pid: u32) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(heapscope())
        .args([
            "attach",
            "-p",
            &pid.to_string(),
            "--exact",
            "--tick",
            "50ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let stderr = line_reader(child.stderr.take().expect("heapscope stderr"));
    (child, stderr)
}

fn kill(child: &mut Child, signal: i32) {
    // SAFETY: signalling our own child process, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

/// Deterministic delays in `0..max_us` (a fixed-seed LCG).
fn delays(seed: u64, n: usize, max_us: u64) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % max_us
        })
        .collect()
}

/// Kills a process by pid when dropped, so a failing assertion does not
/// leave the fixture spinning after the test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid; a reaped pid is at worst ESRCH.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
    }
}

#[test]
fn sigkill_at_any_point_leaves_no_breakpoint() {
    if !root_or_skip("sigkill_at_any_point_leaves_no_breakpoint") {
        return;
    }
    let bin = fixture("churn", "o2", &["-O2", "-g"]);
    let mut fx = start_fixture(&bin);
    let mut guard = KillOnDrop(fx.pid);
    assert_clean(fx.pid, "before any attach");
    let pid = fx.pid;
    // A target the kernel leaked uprobes in is replaced (see `kernel_leaks`).
    let renew = |fx: &mut Fixture, guard: &mut KillOnDrop| {
        let _ = fx.child.kill();
        let _ = fx.child.wait();
        *fx = start_fixture(&bin);
        *guard = KillOnDrop(fx.pid);
        assert_clean(fx.pid, "a new target");
    };

    // The check sees probes: while attached, the entry points hold int3.
    let leaks = kernel_leaks();
    let started = std::time::Instant::now();
    let (mut hs, stderr) = start_heapscope(pid);
    wait_for(&stderr, "attached", &mut Vec::new());
    // Only used to spread the kill points over the attach (never asserted).
    let attach_us = (started.elapsed().as_micros() as u64).max(1000);
    let probed = text_differences(pid);
    eprintln!(
        "attached in {attach_us} µs; {} text bytes hold int3 while attached",
        probed.len()
    );
    assert!(
        !probed.is_empty() && probed.iter().all(|d| d.2 == 0xcc),
        "attached: expected int3 bytes, got {:x?}",
        &probed[..probed.len().min(8)]
    );
    kill(&mut hs, libc::SIGKILL);
    hs.wait().expect("reap heapscope");
    if !check_after_kill(&mut fx, leaks, "killed while running") {
        renew(&mut fx, &mut guard);
    }

    // During attach: killed some time after start, before or while the
    // probes go in (delays spread over the time the first attach took).
    for (i, us) in delays(12, 6, attach_us).into_iter().enumerate() {
        let leaks = kernel_leaks();
        let (mut hs, _stderr) = start_heapscope(fx.pid);
        std::thread::sleep(Duration::from_micros(us));
        kill(&mut hs, libc::SIGKILL);
        hs.wait().expect("reap heapscope");
        let what = format!("attach #{i}, killed after {us} µs");
        if !check_after_kill(&mut fx, leaks, &what) {
            renew(&mut fx, &mut guard);
        }
    }
    // While running: killed some time after the attach line.
    for (i, us) in delays(34, 3, 300_000).into_iter().enumerate() {
        let leaks = kernel_leaks();
        let (mut hs, stderr) = start_heapscope(fx.pid);
        wait_for(&stderr, "attached", &mut Vec::new());
        std::thread::sleep(Duration::from_micros(us));
        kill(&mut hs, libc::SIGKILL);
        hs.wait().expect("reap heapscope");
        let what = format!("run #{i}, killed {us} µs after attaching");
        if !check_after_kill(&mut fx, leaks, &what) {
            renew(&mut fx, &mut guard);
        }
    }
    // During detach: SIGTERM starts the orderly stop, SIGKILL cuts it.
    for (i, us) in delays(56, 4, 50_000).into_iter().enumerate() {
        let leaks = kernel_leaks();
        let (mut hs, stderr) = start_heapscope(fx.pid);
        wait_for(&stderr, "attached", &mut Vec::new());
        kill(&mut hs, libc::SIGTERM);
        std::thread::sleep(Duration::from_micros(us));
        kill(&mut hs, libc::SIGKILL);
        hs.wait().expect("reap heapscope");
        let what = format!("detach #{i}, killed {us} µs after SIGTERM");
        if !check_after_kill(&mut fx, leaks, &what) {
            renew(&mut fx, &mut guard);
        }
    }
    let _ = fx.child.kill();
    let _ = fx.child.wait();
}
