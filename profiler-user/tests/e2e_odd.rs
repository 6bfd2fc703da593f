//! Containers and odd processes: a process chroot'ed inside a private mount
//! namespace is profiled exactly (its files reached through
//! /proc/PID/map_files); so is a process whose main thread exited (through
//! a live thread); a zombie and a kernel thread each get their own accurate
//! message; so does a Go program (no malloc).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::process::{Command, Stdio};

use common::driver::*;
use common::*;

fn attach_error(pid: u32) -> String {
    let out = Command::new(heapscope())
        .args(["attach", "-p", &pid.to_string(), "--duration", "1s"])
        .output()
        .expect("heapscope");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_chroot_in_a_private_mount_namespace_is_profiled_exactly() {
    if !root_or_skip("a_chroot_in_a_private_mount_namespace_is_profiled_exactly") {
        return;
    }
    let bin = fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let expected = expected_sites(&bin);
    let root = scratch("chroot");
    // The fixture and its libraries on a tmpfs mounted only inside the
    // namespace: neither the host's paths nor /proc/PID/root reach them.
    let script = format!(
        "set -e; mount -t tmpfs tmpfs {r}; mkdir -p {r}/lib64 {r}/lib/x86_64-linux-gnu; \
         cp {bin} {r}/leaks; cp /lib/x86_64-linux-gnu/libc.so.6 {r}/lib/x86_64-linux-gnu/; \
         cp /lib64/ld-linux-x86-64.so.2 {r}/lib64/; exec chroot {r} /leaks",
        r = root.display(),
        bin = bin.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    let fx = start_command(cmd);
    let folded = root.join("chroot.folded");
    let report = run_attached(
        fx,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--folded",
            folded.to_str().expect("utf8"),
        ],
    );
    assert!(report.contains("live heap"), "{report}");
    let text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact_no_stack_lost(&text, &expected, &report);
}

#[test]
fn a_process_whose_main_thread_exited_is_profiled_exactly() {
    if !root_or_skip("a_process_whose_main_thread_exited_is_profiled_exactly") {
        return;
    }
    let bin = fixture(
        "main_exit",
        "fp",
        &["-O2", "-g", "-pthread", "-fno-omit-frame-pointer"],
    );
    let expected = expected_sites(&bin);
    let fx = start_fixture(&bin);
    let dir = scratch("main_exit");
    let folded = dir.join("main_exit.folded");
    let report = run_attached(
        fx,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--folded",
            folded.to_str().expect("utf8"),
        ],
    );
    assert!(report.contains("live heap"), "{report}");
    let text = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact_no_stack_lost(&text, &expected, &report);
}

#[test]
fn zombies_and_kernel_threads_are_said_so() {
    let stderr = attach_error(2);
    assert!(
        stderr.contains("pid 2 (kthreadd) is a kernel thread: it has no user-space heap"),
        "{stderr}"
    );
    // A child that exited and is not waited for yet.
    let mut child = Command::new("true")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    for _ in 0..500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stderr = attach_error(pid);
    assert!(
        stderr.contains(&format!(
            "pid {pid} is a zombie: it has exited and waits for its parent (pid {}) to reap it",
            std::process::id()
        )),
        "{stderr}"
    );
    let _ = child.wait();
}

/// A process killed and reaped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds a pure Go program (no cgo, so no libc and no malloc) offline with
/// Debian's golang-go, its caches in the scratch directory.
fn go_fixture(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("main.go");
    std::fs::write(
        &src,
        "package main\n\nimport \"time\"\n\nvar keep [][]byte\n\n\
         func main() {\n\tfor {\n\t\tkeep = append(keep, make([]byte, 4096))\n\
         \t\tif len(keep) > 256 {\n\t\t\tkeep = keep[:0]\n\t\t}\n\
         \t\ttime.Sleep(10 * time.Millisecond)\n\t}\n}\n",
    )
    .expect("write main.go");
    let home = dir.join("go-home");
    let bin = dir.join("gofixture");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .current_dir(dir)
        .env("HOME", &home)
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("run `go build` (install golang-go: `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn a_go_program_is_said_to_have_no_malloc() {
    if !root_or_skip("a_go_program_is_said_to_have_no_malloc") {
        return;
    }
    let dir = scratch("gofixture");
    let bin = go_fixture(&dir);
    let child = Child(
        Command::new(&bin)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the Go fixture"),
    );
    let pid = child.0.id();
    let stderr = attach_error(pid);
    assert!(
        stderr.contains(&format!(
            "pid {pid} ({}) is a Go program: the Go runtime manages its heap without malloc",
            bin.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("stripped"), "{stderr}");
}
