//! Attach and detach times of `cargo xtask bench`: on an idle target and on
//! one whose 200 threads saturate the CPUs with malloc/free pairs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::child::{lines_of, spawn_target, wait_for, Target};

/// Times for one target: (wall until "attached", as heapscope reports it,
/// wall from SIGINT to exit, detach as heapscope reports it), in ms.
struct Times {
    attach_wall: f64,
    attach_reported: Option<f64>,
    stop_wall: f64,
    detach_reported: Option<f64>,
}

/// The number before ` ms` in `line` after `after`.
fn ms_after(line: &str, after: &str) -> Option<f64> {
    let rest = &line[line.find(after)? + after.len()..];
    let end = rest.find(" ms")?;
    rest[..end].rsplit([' ', '(']).next()?.parse().ok()
}

fn attach_detach(bin: &Path, heapscope: &Path, target_args: &[&str]) -> Result<Times> {
    let Target {
        child: mut target,
        mut stdin,
        out: _out, // kept: its reader drains the target's stdout
        pid,
    } = spawn_target(Command::new(bin).args(target_args))?;
    let t0 = Instant::now();
    let mut p = Command::new(heapscope)
        .args(["attach", "-p", &pid, "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = lines_of(p.stderr.take().context("heapscope stderr")?);
    let attached = wait_for(&err, "attached")?;
    let attach_wall = t0.elapsed().as_secs_f64() * 1e3;
    // "attached 12 probes (2 uprobe_multi links, 918 ms) to pid ..."
    let attach_reported = ms_after(&attached, "probes (");
    let t1 = Instant::now();
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
    p.wait()?;
    let stop_wall = t1.elapsed().as_secs_f64() * 1e3;
    let detach_reported = err
        .iter()
        .find(|l| l.contains("probes detached in"))
        .and_then(|l| ms_after(&l, "probes detached in"));
    writeln!(stdin, "exit")?;
    drop(stdin);
    target.wait()?;
    Ok(Times {
        attach_wall,
        attach_reported,
        stop_wall,
        detach_reported,
    })
}

/// Prints attach and detach times of the default mode.
pub fn bench_attach(bin: &Path, heapscope: &Path) -> Result<()> {
    println!();
    println!(
        "attach and detach (default mode), ms: wall from start to the 'attached' line \
         (heapscope's own figure), wall from SIGINT to exit (probes detached in)"
    );
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    for (name, args) in [
        ("idle target", &["1", "1"][..]),
        ("200 threads saturating the CPUs", &["spin", "200"][..]),
    ] {
        let t = attach_detach(bin, heapscope, args)?;
        println!(
            "  {name:<34} attach {:>6.0} ({:>5})  stop {:>6.0} ({:>5})",
            t.attach_wall,
            show(t.attach_reported),
            t.stop_wall,
            show(t.detach_reported)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ms_after;

    #[test]
    fn reads_heapscope_times() {
        let l = "heapscope: attached 12 probes (2 uprobe_multi links, 918 ms) to pid 7; Ctrl-C";
        assert_eq!(ms_after(l, "probes ("), Some(918.0));
        let l = "heapscope: stopped: interrupted (SIGINT); probes detached in 66 ms";
        assert_eq!(ms_after(l, "probes detached in"), Some(66.0));
    }
}
