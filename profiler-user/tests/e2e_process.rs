//! End-to-end: process changes under heapscope. A target that execs from
//! its main thread: the old image's blocks are released by the exec (never
//! "live" under the new program), the new program's are profiled, and both
//! names are reported.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;
use std::process::Command;

use common::driver::{attach, finish, interrupt, start_command, wait_for, Fixture};
use common::{
    assert_per_process_sites, by_site, counter, fixture, headline_live_bytes, parse_folded,
    root_or_skip, scratch, site_sum_rows,
};

#[test]
fn exec_from_the_main_thread_releases_the_old_image_fp() {
    if !root_or_skip("exec_from_the_main_thread_releases_the_old_image_fp") {
        return;
    }
    exec_main(&["--exact", "--stacks", "fp"]);
}

#[test]
fn exec_from_the_main_thread_releases_the_old_image_dwarf() {
    if !root_or_skip("exec_from_the_main_thread_releases_the_old_image_dwarf") {
        return;
    }
    exec_main(&["--exact", "--stacks", "dwarf"]);
}

#[test]
fn exec_from_a_second_thread_reattaches_the_probes() {
    if !root_or_skip("exec_from_a_second_thread_reattaches_the_probes") {
        return;
    }
    exec_from(&["--exact", "--stacks", "fp"], true);
}

fn exec_main(flags: &[&str]) {
    exec_from(flags, false);
}

/// A dynamically linked program execs a static one: the new program's
/// malloc is in its executable, not in the libc the probes are on; it is
/// found and probed, and its leak is exact.
#[test]
fn exec_into_a_static_program_probes_its_allocator() {
    if !root_or_skip("exec_into_a_static_program_probes_its_allocator") {
        return;
    }
    let flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"];
    let bin = fixture("exec_leak", "fp", &flags);
    let mut static_flags = flags.to_vec();
    static_flags.push("-static");
    let static_bin = fixture("exec_leak", "static", &static_flags);
    let dir = scratch("exec_static");
    let link = dir.join("static_prog");
    std::os::unix::fs::symlink(&static_bin, &link).expect("link the new program");
    let folded = dir.join("live.folded");
    let mut cmd = Command::new(&bin);
    cmd.arg(&link).arg("wait");
    let fx = start_command(cmd);
    let mut a = attach(
        fx.pid,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--folded",
            folded.to_str().expect("utf8"),
        ],
    );
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    writeln!(stdin, "go").expect("signal fixture");
    wait_for(&lines, "second ready", &mut Vec::new());
    wait_for(&a.stderr, "probes attached for it", &mut a.seen);
    writeln!(stdin, "leak").expect("let the new program leak");
    let done = wait_for(&lines, "done", &mut Vec::new());
    let new: u64 = done
        .split_whitespace()
        .find_map(|w| w.strip_prefix("new="))
        .and_then(|v| v.parse().ok())
        .expect("done old=N new=N");
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));
    assert_eq!(
        counter(
            &report,
            "released by exec (old image's live blocks, in frees)"
        ),
        Some(34),
        "{report}"
    );
    let sites = by_site(&parse_folded(
        &std::fs::read_to_string(&folded).expect("folded written"),
    ));
    assert_eq!(
        sites.get("new_image_leak").copied(),
        Some(new),
        "{sites:?}\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The exec_leak fixture under heapscope: it execs from its main thread or
/// (`thread`) from a second one.
fn exec_from(flags: &[&str], thread: bool) {
    let bin = fixture(
        "exec_leak",
        "fp",
        &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    let dir = scratch(&format!("exec_{thread}_{}", flags.join("_")));
    // The new program is this one under another name: its own comm.
    let link = dir.join("after_exec");
    std::os::unix::fs::symlink(&bin, &link).expect("link the new program");
    let folded = dir.join("live.folded");
    let mut cmd = Command::new(&bin);
    cmd.arg(&link);
    if thread {
        cmd.arg("thread");
    }
    let fx = start_command(cmd);
    let mut args = flags.to_vec();
    args.extend(["--folded", folded.to_str().expect("utf8")]);
    let mut a = attach(fx.pid, &args);
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    writeln!(stdin, "go").expect("signal fixture");
    if thread {
        // The new program leaks only once its probes are in again.
        wait_for(&lines, "second ready", &mut Vec::new());
        wait_for(&a.stderr, "were attached again", &mut a.seen);
        writeln!(stdin, "leak").expect("let the new program leak");
    }
    let done = wait_for(&lines, "done", &mut Vec::new());
    let num = |key: &str| -> u64 {
        done.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .expect("fixture prints old=N new=N")
    };
    let (old, new) = (num("old="), num("new="));
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));

    // Every block of the old image was released by the exec, none by a free
    // (from a thread: also the block glibc allocated for that thread).
    let released = counter(&report, "bytes released by exec (in freed bytes)");
    let blocks = counter(
        &report,
        "released by exec (old image's live blocks, in frees)",
    );
    if thread {
        assert_eq!(blocks, Some(35), "{report}\n{stderr}");
        assert!(released.is_some_and(|b| b > old), "{report}");
    } else {
        assert_eq!(released, Some(old), "{report}\n{stderr}");
        assert_eq!(blocks, Some(34), "{report}");
    }
    let sites = by_site(&parse_folded(
        &std::fs::read_to_string(&folded).expect("folded written"),
    ));
    assert_eq!(sites.get("new_image_leak").copied(), Some(new), "{sites:?}");
    assert_eq!(
        sites.get("old_image_leak").copied().unwrap_or(0),
        0,
        "{sites:?}"
    );
    // The live heap is the new program's: its leak and whatever its loader
    // allocated after the exec, never the old image's 34 blocks.
    let live = headline_live_bytes(&report).expect("headline");
    assert!(
        live >= new && live < new + old,
        "live heap {live}\n{report}"
    );
    // Both programs are named.
    assert!(
        stderr.contains("exec_leak-fp → after_exec"),
        "exec not reported:\n{stderr}"
    );
    assert!(report.contains("after_exec"), "{report}");
    if thread {
        assert!(
            stderr.contains("exec'd from thread") && stderr.contains("were attached again"),
            "{stderr}"
        );
    }
}

/// The `live heap per process` rows of the report: pid → (comm, bytes, blocks).
fn process_rows(report: &str) -> std::collections::BTreeMap<u32, (String, u64, u64)> {
    let mut rows = std::collections::BTreeMap::new();
    let Some(at) = report.find("live heap per process") else {
        return rows;
    };
    for l in report[at..].lines().skip(2) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 4 {
            break;
        }
        if let (Ok(pid), Ok(bytes), Ok(blocks)) = (f[0].parse(), f[2].parse(), f[3].parse()) {
            rows.insert(pid, (f[1].to_string(), bytes, blocks));
        }
    }
    rows
}

#[test]
fn children_before_and_during_attach_are_followed_exactly() {
    if !root_or_skip("children_before_and_during_attach_are_followed_exactly") {
        return;
    }
    let bin = fixture("prefork", "fp", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let dir = scratch("prefork");
    let folded = dir.join("live.folded");
    let rec = dir.join("prefork.heapscope");
    let fx = start_command(Command::new(&bin));
    let parent = fx.pid;
    let mut a = attach(
        parent,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--folded",
            folded.to_str().expect("utf8"),
            "--record",
            rec.to_str().expect("utf8"),
        ],
    );
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    let mut seen = Vec::new();
    writeln!(stdin, "fork").expect("ask for a fork");
    let forked: u32 = wait_for(&lines, "forked", &mut seen)
        .split_once("pid=")
        .and_then(|(_, p)| p.trim().parse().ok())
        .expect("fixture prints forked pid=P");
    // The child forked under heapscope is leaked into only once it is followed.
    wait_for(&a.stderr, &format!("following pid {forked}"), &mut a.seen);
    writeln!(stdin, "leak").expect("ask for leaks");
    let mut leaked = std::collections::BTreeMap::new();
    while leaked.len() < 4 {
        let l = wait_for(&lines, "leaked", &mut seen);
        let field = |k: &str| -> u64 {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .expect("leaked pid=P bytes=N")
        };
        leaked.insert(field("pid=") as u32, field("bytes="));
    }
    wait_for(&lines, "done", &mut seen);
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));

    let rows = process_rows(&report);
    assert_eq!(rows.len(), 4, "one row per process\n{report}\n{stderr}");
    for (pid, bytes) in &leaked {
        let row = rows
            .get(pid)
            .unwrap_or_else(|| panic!("no row for pid {pid}\n{report}"));
        assert_eq!(row.1, *bytes, "pid {pid}'s live bytes\n{report}");
    }
    assert_eq!(leaked[&parent], 7000);
    let total: u64 = leaked.values().sum();
    assert_eq!(headline_live_bytes(&report), Some(total), "{report}");
    assert!(
        stderr.contains(&format!("forked by pid {parent}")),
        "the fork under heapscope is said\n{stderr}"
    );
    assert!(stderr.contains("an existing child"), "{stderr}");

    // Per process and per call site, exact: each process's stacks under its
    // own root frame, in the live folded output and in the recording's.
    let live_folded = std::fs::read_to_string(&folded).expect("folded written");
    let expect_site = |pid: u32| {
        if pid == parent {
            "parent_leak"
        } else {
            "child_leak"
        }
    };
    assert_per_process_sites(&live_folded, &leaked, expect_site, &report);
    let exported = heapscope_stdout(&["export", rec.to_str().expect("utf8"), "--format", "folded"]);
    assert_per_process_sites(&exported, &leaked, expect_site, &report);
    // The recording's report has the same per-process rows as the live one.
    let rec_report = heapscope_stdout(&["report", rec.to_str().expect("utf8")]);
    let live_rows = site_sum_rows(&report);
    assert_eq!(live_rows.len(), 5, "4 processes and the total\n{report}");
    for (pid, bytes) in &leaked {
        assert_eq!(
            live_rows.get(&pid.to_string()),
            Some(bytes),
            "pid {pid} in the per-process section\n{report}"
        );
    }
    assert_eq!(live_rows.get("total"), Some(&total), "{report}");
    assert_eq!(site_sum_rows(&rec_report), live_rows, "{rec_report}");
    assert!(
        rec_report.contains(&format!("(child of {parent})")),
        "{rec_report}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs heapscope and returns its stdout (it must succeed).
fn heapscope_stdout(args: &[&str]) -> String {
    let out = Command::new(common::heapscope())
        .args(args)
        .output()
        .expect("run heapscope");
    assert!(
        out.status.success(),
        "heapscope {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn an_exited_child_releases_its_blocks() {
    if !root_or_skip("an_exited_child_releases_its_blocks") {
        return;
    }
    let bin = fixture("prefork", "fp", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let fx = start_command(Command::new(&bin));
    let parent = fx.pid;
    let mut a = attach(parent, &["--exact", "--stacks", "fp"]);
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    let mut seen = Vec::new();
    writeln!(stdin, "fork").expect("ask for a fork");
    let forked = wait_for(&lines, "forked", &mut seen);
    let forked = forked.split_once("pid=").expect("forked pid=P").1.trim();
    wait_for(&a.stderr, &format!("following pid {forked}"), &mut a.seen);
    writeln!(stdin, "leak").expect("ask for leaks");
    let mut leaked = std::collections::BTreeMap::new();
    while leaked.len() < 4 {
        let l = wait_for(&lines, "leaked", &mut seen);
        let f = |k: &str| -> u64 {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .expect("leaked pid=P bytes=N")
        };
        leaked.insert(f("pid=") as u32, f("bytes="));
    }
    wait_for(&lines, "done", &mut seen);
    writeln!(stdin, "kill").expect("ask for a child's end");
    let killed = wait_for(&lines, "killed", &mut seen);
    let field = |k: &str| -> u64 {
        killed
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .expect("killed pid=P bytes=N blocks=K")
    };
    let (gone, bytes, blocks) = (field("pid=") as u32, field("bytes="), field("blocks="));
    assert_eq!(leaked.get(&gone), Some(&bytes));
    wait_for(&a.stderr, &format!("pid {gone} ("), &mut a.seen);
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));

    // The killed child's blocks (its whole live heap: it was forked before
    // attach and leaked only after) left the live heap as released by exit.
    assert_eq!(
        counter(&report, "bytes released by exit (in freed bytes)"),
        Some(bytes),
        "{report}\n{stderr}"
    );
    assert_eq!(
        counter(
            &report,
            "released by exit (exited processes' live blocks, in frees)"
        ),
        Some(blocks),
        "{report}"
    );
    let total: u64 = leaked.values().sum();
    assert_eq!(
        headline_live_bytes(&report),
        Some(total - bytes),
        "{report}"
    );
    let rows = site_sum_rows(&report);
    assert_eq!(rows.get(&gone.to_string()), Some(&0), "{report}");
    assert_eq!(rows.get("total"), Some(&(total - bytes)), "{report}");
    assert!(
        stderr.contains(&format!(
            "its {blocks} live blocks ({bytes} B) released by exit"
        )),
        "{stderr}"
    );
}
