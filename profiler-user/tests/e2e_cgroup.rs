//! End-to-end: `attach --container ID` (and so `--cgroup`) on a real cgroup
//! v2 created by the test: every member at attach, a process that joins the
//! cgroup later (found by the rescan of `cgroup.procs`) and the children
//! members fork (fork events) are each profiled exactly, per process.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::driver::{finish, interrupt, line_reader, start_command, wait_for, Attached, Fixture};
use common::{fixture, heapscope, root_or_skip, site_sum_rows};

/// A child cgroup of the v2 hierarchy, removed (its processes killed) on drop.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn create(name: &str) -> TestCgroup {
        let v2 = heapscope::process::cgroup::mounts()
            .into_iter()
            .find(|m| m.v2)
            .expect("a cgroup v2 hierarchy is mounted");
        let dir = v2.point.join(name);
        std::fs::create_dir(&dir).expect("create the test cgroup");
        TestCgroup { dir }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Whatever is left (a failed test) goes with the cgroup.
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("note: could not remove {}", self.dir.display());
    }
}

/// Starts the prefork fixture inside `cgroup` (the shell moves itself in,
/// then becomes the fixture: its children are born in the cgroup).
fn start_in(cgroup: &Path, bin: &Path) -> Fixture {
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec '{}'",
        cgroup.display(),
        bin.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    start_command(cmd)
}

/// Moves process `pid` and its children into `cgroup` (as a container
/// runtime or `systemd-run --scope` would): they join an existing cgroup
/// without being forked by a member.
fn move_tree_into(cgroup: &Path, pid: u32) {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).expect("move the process in");
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            std::fs::write(&procs, p.to_string()).expect("move the child in");
        }
    }
}

/// `leaked pid=P bytes=N` lines of one fixture, until `done`.
fn leaks(fx: &Fixture, seen: &mut Vec<String>, out: &mut BTreeMap<u32, u64>) {
    loop {
        let l = wait_for(&fx.lines, "", seen);
        if l == "done" {
            return;
        }
        let Some(rest) = l.strip_prefix("leaked ") else {
            continue;
        };
        let f = |k: &str| -> u64 {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .expect("leaked pid=P bytes=N")
        };
        out.insert(f("pid=") as u32, f("bytes="));
    }
}

#[test]
fn a_cgroup_with_two_process_trees_is_profiled_per_process() {
    if !root_or_skip("a_cgroup_with_two_process_trees_is_profiled_per_process") {
        return;
    }
    let bin = fixture("prefork", "fp", &["-O1", "-g", "-fno-omit-frame-pointer"]);
    let id = format!("c0ffee{:08x}", std::process::id());
    let cg = TestCgroup::create(&format!("heapscope-e2e-{id}.scope"));
    let a = start_in(&cg.dir, &bin);

    let folded = common::scratch("cgroup").join("live.folded");
    let mut child = Command::new(heapscope())
        .args(["attach", "--container", &id, "--tick", "200ms"])
        .args(["--exact", "--stacks", "fp"])
        .args(["--folded", folded.to_str().expect("utf8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let stderr = line_reader(child.stderr.take().expect("heapscope stderr"));
    let mut seen = Vec::new();
    let members = wait_for(&stderr, "processes", &mut seen);
    assert!(members.contains("3 processes"), "{members}");
    wait_for(&stderr, "attached", &mut seen);
    let mut h = Attached {
        child,
        stderr,
        seen,
    };

    // A second process tree, started outside, is moved into the cgroup
    // while heapscope runs: the rescan finds its three processes.
    let b = start_command(Command::new(&bin));
    move_tree_into(&cg.dir, b.pid);
    for _ in 0..3 {
        wait_for(&h.stderr, "joined the cgroup", &mut h.seen);
    }
    assert!(
        h.seen
            .iter()
            .any(|l| l.contains(&format!("following pid {} ", b.pid))),
        "{:?}",
        h.seen
    );
    let (mut fx_seen, mut leaked) = (Vec::new(), BTreeMap::new());
    for fx in [&a, &b] {
        let mut stdin = &fx.stdin;
        writeln!(stdin, "fork").expect("ask for a fork");
        let l = wait_for(&fx.lines, "forked", &mut fx_seen);
        let pid = l
            .split_once("pid=")
            .expect("forked pid=P")
            .1
            .trim()
            .to_string();
        // Forked by a member: followed from the fork event.
        wait_for(&h.stderr, &format!("following pid {pid}"), &mut h.seen);
    }
    for fx in [&a, &b] {
        let mut stdin = &fx.stdin;
        writeln!(stdin, "leak").expect("ask for leaks");
        leaks(fx, &mut fx_seen, &mut leaked);
    }
    interrupt(&h.child);
    let (a_pid, b_pid) = (a.pid, b.pid);
    let (code, report, stderr) = finish(h);
    assert_eq!(code, 0, "{stderr}");
    for mut fx in [a, b] {
        writeln!(fx.stdin, "exit").expect("release fixture");
        assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
    }

    assert_eq!(leaked.len(), 8, "two trees of a parent and three children");
    let rows = site_sum_rows(&report);
    for (pid, bytes) in &leaked {
        assert_eq!(
            rows.get(&pid.to_string()),
            Some(bytes),
            "pid {pid}'s live bytes\n{report}\n{stderr}"
        );
    }
    let total: u64 = leaked.values().sum();
    assert_eq!(rows.get("total"), Some(&total), "{report}");
    assert_eq!(rows.len(), 9, "8 processes and the total\n{report}");
    // Each process's stacks resolved against its own memory map (the two
    // trees have different layouts): exactly its own call site.
    let parents = [a_pid, b_pid];
    let site = |pid: u32| {
        if parents.contains(&pid) {
            "parent_leak"
        } else {
            "child_leak"
        }
    };
    let text = std::fs::read_to_string(&folded).expect("folded written");
    common::assert_per_process_sites(&text, &leaked, site, &report);
}

#[test]
fn unknown_containers_and_cgroups_are_clear_errors() {
    for (args, expect) in [
        (
            vec!["--container", "deadbeef00deadbeef"],
            "no process is in a cgroup named after container",
        ),
        (vec!["--container", "a/b"], "letters, digits"),
        (
            vec!["--cgroup", "/no/such/cgroup"],
            "is not a cgroup v2 directory",
        ),
    ] {
        let out = Command::new(heapscope())
            .arg("attach")
            .args(&args)
            .output()
            .expect("run heapscope");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
