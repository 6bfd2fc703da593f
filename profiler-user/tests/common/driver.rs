//! Driving fixtures and heapscope: the fixture protocol (print "ready PID",
//! wait for a line, run, print "done", wait for a line, exit 3) and heapscope
//! attached to it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::heapscope;

/// Generous guard against hangs only; no test asserts on elapsed time.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

pub struct Fixture {
    pub child: Child,
    pub stdin: ChildStdin,
    pub lines: mpsc::Receiver<String>,
    pub pid: u32,
}

pub fn line_reader(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn wait_for(rx: &mpsc::Receiver<String>, what: &str, seen: &mut Vec<String>) -> String {
    loop {
        match rx.recv_timeout(HANG_GUARD) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(what) {
                    return l;
                }
            }
            Err(_) => panic!("never saw '{what}'; output so far:\n{}", seen.join("\n")),
        }
    }
}

impl Fixture {
    /// Runs the sites, waits for them, and lets the fixture exit with its own code (3).
    pub fn run_to_exit(mut self) {
        writeln!(self.stdin, "go").expect("signal fixture");
        wait_for(&self.lines, "done", &mut Vec::new());
        writeln!(self.stdin, "exit").expect("release fixture");
        assert_eq!(self.child.wait().expect("wait fixture").code(), Some(3));
    }
}

pub fn start_fixture(path: &std::path::Path) -> Fixture {
    start_command(Command::new(path))
}

/// Starts a command speaking the fixture protocol ("ready PID", wait, "done", wait).
pub fn start_command(mut cmd: Command) -> Fixture {
    let mut child = super::spawn_when_not_busy(cmd.stdin(Stdio::piped()).stdout(Stdio::piped()))
        .expect("start fixture");
    let stdin = child.stdin.take().expect("fixture stdin");
    let lines = line_reader(child.stdout.take().expect("fixture stdout"));
    let ready = wait_for(&lines, "ready", &mut Vec::new());
    let pid = ready
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("fixture prints its pid");
    Fixture {
        child,
        stdin,
        lines,
        pid,
    }
}

pub struct Attached {
    pub child: Child,
    pub stderr: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

pub fn attach(pid: u32, extra: &[&str]) -> Attached {
    let mut child = Command::new(heapscope())
        .args(["attach", "-p", &pid.to_string(), "--tick", "200ms"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let stderr = line_reader(child.stderr.take().expect("heapscope stderr"));
    let mut seen = Vec::new();
    wait_for(&stderr, "attached", &mut seen);
    Attached {
        child,
        stderr,
        seen,
    }
}

pub fn finish(mut a: Attached) -> (i32, String, String) {
    let mut stdout = String::new();
    if let Some(mut out) = a.child.stdout.take() {
        std::io::Read::read_to_string(&mut out, &mut stdout).expect("read report");
    }
    let status = a.child.wait().expect("wait heapscope");
    while let Ok(l) = a.stderr.recv_timeout(Duration::from_secs(5)) {
        a.seen.push(l);
    }
    (status.code().unwrap_or(-1), stdout, a.seen.join("\n"))
}

pub fn interrupt(child: &Child) {
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// Runs the fixture's protocol with heapscope attached with `flags`: go,
/// wait for "done", interrupt heapscope, let the fixture exit (asserting its
/// exit code 3). Returns heapscope's report; fails on a non-zero exit.
pub fn run_attached(fx: Fixture, flags: &[&str]) -> String {
    let a = attach(fx.pid, flags);
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    writeln!(stdin, "go").expect("signal fixture");
    wait_for(&lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "heapscope exit code; stderr:\n{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));
    report
}
