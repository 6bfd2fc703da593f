//! `cargo xtask bench --load`: records lost by `--exact` with DWARF stacks
//! under sustained and bursty allocation (tests/fixtures/load.c), with
//! heapscope's CPU and peak RSS.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use crate::child::{
    lines_of, number_after, rss_bound_mb, spawn_target, wait_cpu, wait_for, Target,
};
use crate::util::build_c;

/// (label, threads, mode, allocations/s in total: 0 as fast as it can) of
/// each row. 200,000/s is the rate the lossless goal is stated at; the
/// unpaced rows show where it ends.
const CASES: [(&str, u32, &str, u32); 5] = [
    ("200,000/s, 1 thread", 1, "steady", 200_000),
    ("200,000/s, 2 threads", 2, "steady", 200_000),
    ("unpaced, 1 thread", 1, "steady", 0),
    ("unpaced, 2 threads", 2, "steady", 0),
    ("bursts of 50,000, 1 thread", 1, "burst", 0),
];

/// Runs each case for `seconds` under `heapscope attach --exact`.
pub fn bench_load(heapscope: &Path, seconds: u64) -> Result<()> {
    let bin = build_c("load", &["-O2", "-g", "-fomit-frame-pointer", "-pthread"])?;
    println!();
    println!(
        "--exact (DWARF stacks) under load, {seconds} s per row: allocations/s reached, \
         records lost, heapscope CPU and peak RSS"
    );
    for (label, threads, mode, rate) in CASES {
        let Target {
            child: mut target,
            mut stdin,
            out,
            pid,
        } = spawn_target(Command::new(&bin).args([
            seconds.to_string(),
            threads.to_string(),
            mode.to_string(),
            rate.to_string(),
        ]))?;
        let mut p = Command::new(heapscope)
            .args(["attach", "-p", &pid, "--quiet", "--exact"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let err = lines_of(p.stderr.take().context("heapscope stderr")?);
        let report = lines_of(p.stdout.take().context("heapscope stdout")?);
        wait_for(&err, "attached")?;
        writeln!(stdin, "go")?;
        let done = wait_for(&out, "pairs")?;
        let rate = done
            .split_whitespace()
            .nth(3)
            .map_or("?", |r| r.trim_end_matches("/s"))
            .to_string();
        // SAFETY: sending SIGINT to our own child.
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
        let (cpu, rss_mb) = wait_cpu(&p)?;
        let report: Vec<String> = report.iter().collect();
        let lost = number_after(&report.join("\n"), "ring buffer lost:");
        let allocs = number_after(&report.join("\n"), "allocations seen:");
        let bound = rss_bound_mb(&report.join("\n"));
        println!(
            "  {label:<28} {rate:>10} allocs/s  {} allocations, lost {}  heapscope CPU {cpu:.2}s  peak RSS {rss_mb:.0} MB (bound {} MB)",
            allocs.map_or("?".to_string(), |a| a.to_string()),
            lost.map_or("?".to_string(), |l| l.to_string()),
            bound.map_or("?".to_string(), |b| format!("{b:.1}")),
        );
        writeln!(stdin, "exit")?;
        target.wait()?;
    }
    Ok(())
}
