//! `cargo xtask bench`: what a malloc/free pair costs under each probe setup,
//! all measured in one run, reported as ratios against the unprofiled baseline.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::util::{build_c, build_heapscope, cargo, run, workspace_root};

struct Mode {
    name: &'static str,
    /// None: no profiler; Some(flags): heapscope attach with these flags.
    heapscope: Option<&'static [&'static str]>,
}

const MODES: &[Mode] = &[
    Mode {
        name: "no profiler",
        heapscope: None,
    },
    Mode {
        name: "bare probes (free after NULL guard)",
        heapscope: Some(&["--bare-probes"]),
    },
    Mode {
        name: "bare probes (free at +0)",
        heapscope: Some(&["--bare-probes", "--no-prologue-skip"]),
    },
    Mode {
        name: "heapscope (free after NULL guard)",
        heapscope: Some(&[]),
    },
    Mode {
        name: "heapscope (free at +0)",
        heapscope: Some(&["--no-prologue-skip"]),
    },
];

fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
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

fn wait_for(rx: &mpsc::Receiver<String>, what: &str) -> Result<String> {
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(300))
            .with_context(|| format!("timed out waiting for '{what}'"))?;
        if l.contains(what) {
            return Ok(l);
        }
    }
}

fn measure(bin: &Path, heapscope: &Path, mode: &Mode, pairs: u64) -> Result<f64> {
    let mut target = Command::new(bin)
        .arg(pairs.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = target.stdin.take().context("bench stdin")?;
    let out = lines_of(target.stdout.take().context("bench stdout")?);
    let pid = wait_for(&out, "ready")?
        .split_whitespace()
        .nth(1)
        .context("bench prints its pid")?
        .to_string();
    let mut profiler: Option<Child> = None;
    if let Some(flags) = mode.heapscope {
        let mut p = Command::new(heapscope)
            .args(["attach", "-p", &pid, "--quiet"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let err = lines_of(p.stderr.take().context("heapscope stderr")?);
        wait_for(&err, "attached")?;
        profiler = Some(p);
    }
    writeln!(stdin, "go")?;
    let ns: f64 = wait_for(&out, "ns_per_pair")?
        .split_whitespace()
        .nth(1)
        .context("ns_per_pair value")?
        .parse()?;
    if let Some(mut p) = profiler {
        // SAFETY: sending SIGINT to our own child.
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
        p.wait()?;
    }
    writeln!(stdin, "exit")?;
    target.wait()?;
    Ok(ns)
}

/// Symbolization throughput (cold and warm unique addresses per second) on
/// heapscope's own debug build, a large binary with full DWARF. Runs an
/// example of profiler-user in a separate cargo invocation: xtask must not
/// depend on profiler-user (setup has to build before bpf-linker exists).
fn bench_symbols() -> Result<()> {
    let root = workspace_root()?;
    run(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--quiet",
        "-p",
        "profiler-user",
        "--bin",
        "heapscope",
    ]))
    .context("building the debug heapscope binary to symbolize")?;
    let target = root.join("target/debug/heapscope");
    run(Command::new(cargo())
        .current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "profiler-user",
            "--example",
            "symbolize_bench",
            "--",
        ])
        .arg(&target))
    .context("running the symbolization benchmark")
}

/// Runs every mode and prints ns per pair and the ratio to the baseline,
/// then the symbolization benchmark (`--symbols` runs only that one; it
/// needs no root).
pub fn bench(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--symbols") {
        return bench_symbols();
    }
    let pairs: u64 = args
        .iter()
        .position(|a| a == "--pairs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(200_000);
    let heapscope = build_heapscope()?;
    let bin = build_c("bench_pairs", &["-O2", "-g", "-fno-omit-frame-pointer"])?;
    if !std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    {
        bail!("the benchmark attaches eBPF probes: run it as root");
    }
    println!("malloc(64)/free pairs: {pairs} per mode, ns per pair (ratio to no profiler)");
    let mut baseline = None;
    for mode in MODES {
        let ns = measure(&bin, &heapscope, mode, pairs)?;
        let base = *baseline.get_or_insert(ns);
        println!("  {:<40} {:>10.1} ns  {:>8.1}x", mode.name, ns, ns / base);
    }
    bench_symbols()
}
