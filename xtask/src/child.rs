//! Driving benchmark targets: start a fixture that prints "ready PID",
//! read its lines, wait for a line, measure a child's CPU and peak RSS.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// A started fixture: its process, stdin, stdout lines and the pid it printed.
pub(crate) struct Target {
    pub child: Child,
    pub stdin: ChildStdin,
    pub out: mpsc::Receiver<String>,
    pub pid: String,
}

/// Starts `cmd` with piped stdin/stdout and waits for its "ready PID" line.
pub(crate) fn spawn_target(cmd: &mut Command) -> Result<Target> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    let stdin = child.stdin.take().context("target stdin")?;
    let out = lines_of(child.stdout.take().context("target stdout")?);
    let pid = wait_for(&out, "ready")?
        .split_whitespace()
        .nth(1)
        .context("the target prints its pid after \"ready\"")?
        .to_string();
    Ok(Target {
        child,
        stdin,
        out,
        pid,
    })
}

/// Waits for a child and returns its user+system CPU seconds and its peak
/// resident set in MB.
pub(crate) fn wait_cpu(child: &Child) -> Result<(f64, f64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        tv(usage.ru_utime) + tv(usage.ru_stime),
        // ru_maxrss is in KiB; MB (10^6 B) as heapscope states its bound.
        usage.ru_maxrss as f64 * 1024.0 / 1e6,
    ))
}

/// heapscope's memory bound from its report's line `peak RSS: X MB (...),
/// bound Y MB at ...`, in MB.
pub(crate) fn rss_bound_mb(report: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.trim().starts_with("peak RSS:"))?;
    let after = line.split("bound ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

pub(crate) fn number_after(text: &str, prefix: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(prefix)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

pub(crate) fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

pub(crate) fn wait_for(rx: &mpsc::Receiver<String>, what: &str) -> Result<String> {
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(300))
            .with_context(|| format!("timed out waiting for '{what}'"))?;
        if l.contains(what) {
            return Ok(l);
        }
    }
}
