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
        name: "bare probes (on emulated instructions)",
        heapscope: Some(&["--bare-probes"]),
    },
    Mode {
        name: "bare probes (every probe at +0)",
        heapscope: Some(&["--bare-probes", "--no-prologue-skip"]),
    },
    Mode {
        name: "heapscope --stacks fp --exact",
        heapscope: Some(&["--stacks", "fp", "--exact"]),
    },
    Mode {
        name: "heapscope --stacks fp --exact, all at +0",
        heapscope: Some(&["--stacks", "fp", "--exact", "--no-prologue-skip"]),
    },
    Mode {
        name: "heapscope --stacks fp (sampled 512KiB)",
        heapscope: Some(&["--stacks", "fp"]),
    },
    Mode {
        name: "heapscope --exact (DWARF)",
        heapscope: Some(&["--exact"]),
    },
    Mode {
        name: "heapscope default (DWARF, sampled 512KiB)",
        heapscope: Some(&[]),
    },
];

/// What one mode measured.
struct Measurement {
    ns_per_pair: f64,
    /// Ring-buffer records lost, from the report.
    lost: Option<u64>,
    /// Stacks unwound in userspace, from heapscope's stderr.
    stacks: Option<u64>,
    /// heapscope's own CPU time (user + system) over the whole session.
    cpu_secs: Option<f64>,
    /// Userspace unwinding time per stack, from heapscope's stderr.
    unwind_us: Option<f64>,
}

/// Waits for a child and returns its user+system CPU seconds.
fn wait_cpu(child: &Child) -> Result<f64> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

fn number_after(text: &str, prefix: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix(prefix)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

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

/// The allocators of the per-allocator rows: name and the Debian library
/// preloaded under the benchmark (none: glibc's own).
const ALLOCATORS: [(&str, Option<&str>); 4] = [
    ("glibc", None),
    (
        "jemalloc",
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ),
    (
        "tcmalloc",
        Some("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
    ),
    (
        "mimalloc",
        Some("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    ),
];

/// The columns of the per-allocator rows.
const ALLOCATOR_MODES: [Mode; 3] = [
    Mode {
        name: "no profiler",
        heapscope: None,
    },
    Mode {
        name: "bare probes",
        heapscope: Some(&["--bare-probes"]),
    },
    Mode {
        name: "default",
        heapscope: Some(&[]),
    },
];

/// One row per allocator: ns per pair with no profiler, bare probes and the
/// default mode, and the default mode's cost against glibc's.
fn bench_allocators(bin: &Path, heapscope: &Path, pairs: u64) -> Result<()> {
    println!();
    println!(
        "per allocator (LD_PRELOAD of Debian's library), ns per malloc(64)/free pair; \
         the last column: default mode's cost per pair against glibc's"
    );
    println!(
        "  {:<10} {:>12} {:>12} {:>12} {:>8}",
        "allocator", "no profiler", "bare probes", "default", "vs glibc"
    );
    let mut glibc_cost = None;
    for (name, lib) in ALLOCATORS {
        if let Some(l) = lib {
            if !Path::new(l).exists() {
                println!("  {name:<10} {l} not installed (cargo xtask setup)");
                continue;
            }
        }
        let mut row = Vec::new();
        for mode in &ALLOCATOR_MODES {
            row.push(measure_with(bin, heapscope, mode, pairs, lib)?.ns_per_pair);
        }
        // What heapscope adds to a pair, beyond the allocator's own cost.
        let cost = row[2] - row[0];
        let base = *glibc_cost.get_or_insert(cost);
        println!(
            "  {name:<10} {:>9.1} ns {:>9.1} ns {:>9.1} ns {:>7.2}x",
            row[0],
            row[1],
            row[2],
            cost / base
        );
    }
    Ok(())
}

fn measure(bin: &Path, heapscope: &Path, mode: &Mode, pairs: u64) -> Result<Measurement> {
    measure_with(bin, heapscope, mode, pairs, None)
}

fn measure_with(
    bin: &Path,
    heapscope: &Path,
    mode: &Mode,
    pairs: u64,
    preload: Option<&str>,
) -> Result<Measurement> {
    let mut cmd = Command::new(bin);
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    let mut target = cmd
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
    let mut profiler = None;
    if let Some(flags) = mode.heapscope {
        let mut p = Command::new(heapscope)
            .args(["attach", "-p", &pid, "--quiet"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let err = lines_of(p.stderr.take().context("heapscope stderr")?);
        let report = lines_of(p.stdout.take().context("heapscope stdout")?);
        wait_for(&err, "attached")?;
        profiler = Some((p, err, report));
    }
    writeln!(stdin, "go")?;
    let ns_per_pair: f64 = wait_for(&out, "ns_per_pair")?
        .split_whitespace()
        .nth(1)
        .context("ns_per_pair value")?
        .parse()?;
    let mut m = Measurement {
        ns_per_pair,
        lost: None,
        stacks: None,
        cpu_secs: None,
        unwind_us: None,
    };
    if let Some((p, err, report)) = profiler {
        // SAFETY: sending SIGINT to our own child.
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
        m.cpu_secs = Some(wait_cpu(&p)?);
        // The readers end at EOF, now that heapscope has exited.
        let report: Vec<String> = report.iter().collect();
        let unwound: Vec<String> = err
            .iter()
            .filter(|l| l.contains("stacks unwound"))
            .collect();
        m.lost = number_after(&report.join("\n"), "ring buffer lost:");
        m.stacks = number_after(&unwound.join("\n"), "heapscope:");
        m.unwind_us = unwound.first().and_then(|l| {
            let (before, _) = l.split_once(" µs each")?;
            before.rsplit(' ').next()?.parse().ok()
        });
    }
    writeln!(stdin, "exit")?;
    target.wait()?;
    Ok(m)
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

/// The web server on a generated one-hour, 5,000-site session: endpoint
/// times and the page load to the first flame graph (needs no root).
fn bench_server() -> Result<()> {
    let root = workspace_root()?;
    run(Command::new(cargo()).current_dir(&root).args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "profiler-user",
        "--example",
        "server_bench",
    ]))
    .context("running the web server benchmark")
}

/// Runs every mode and prints ns per pair and the ratio to the baseline,
/// then the symbolization benchmark (`--symbols` runs only that one; it
/// needs no root).
pub fn bench(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--symbols") {
        return bench_symbols();
    }
    if args.iter().any(|a| a == "--server") {
        return bench_server();
    }
    let allocators_only = args.iter().any(|a| a == "--allocators");
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
    if allocators_only {
        return bench_allocators(&bin, &heapscope, pairs);
    }
    println!("malloc(64)/free pairs: {pairs} per mode, ns per pair (ratio to no profiler);");
    println!("for heapscope: ring-buffer records lost, stacks unwound, heapscope CPU per stack");
    let mut baseline = None;
    let mut measured = Vec::new();
    for mode in MODES {
        let m = measure(&bin, &heapscope, mode, pairs)?;
        measured.push((mode.name, m.ns_per_pair));
        let base = *baseline.get_or_insert(m.ns_per_pair);
        let mut extra = String::new();
        if let Some(lost) = m.lost {
            extra.push_str(&format!("  lost {lost}"));
        }
        if let Some(cpu) = m.cpu_secs {
            extra.push_str(&format!("  heapscope CPU {cpu:.2}s"));
        }
        if let (Some(n), Some(us)) = (m.stacks, m.unwind_us) {
            extra.push_str(&format!("  {n} stacks, unwound in {us:.1} µs each"));
        }
        println!(
            "  {:<44} {:>10.1} ns {:>8.1}x{extra}",
            mode.name,
            m.ns_per_pair,
            m.ns_per_pair / base
        );
    }
    per_hit_costs(&measured);
    bench_allocators(&bin, &heapscope, pairs)?;
    bench_symbols()?;
    bench_server()
}

/// The per-event costs `--max-overhead` estimates with, derived from the
/// modes just measured (a pair is 3 probe hits and 2 counted calls), beside
/// the constants heapscope has (`profiler-user/src/overhead.rs`).
fn per_hit_costs(measured: &[(&str, f64)]) {
    let ns = |name: &str| measured.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let (Some(none), Some(bare), Some(fp), Some(fp_exact), Some(dwarf), Some(dwarf_exact)) = (
        ns("no profiler"),
        ns("bare probes (on emulated instructions)"),
        ns("heapscope --stacks fp (sampled 512KiB)"),
        ns("heapscope --stacks fp --exact"),
        ns("heapscope default (DWARF, sampled 512KiB)"),
        ns("heapscope --exact (DWARF)"),
    ) else {
        return;
    };
    println!(
        "  --max-overhead costs, measured (calibrated in overhead.rs): trap {:.0} ns/hit (560), \
         map work {:.0} ns/call (184), fp capture {:.0} ns (520), DWARF capture {:.0} ns (4460)",
        (bare - none) / 3.0,
        (fp - bare) / 2.0,
        fp_exact - fp,
        dwarf_exact - dwarf,
    );
}
