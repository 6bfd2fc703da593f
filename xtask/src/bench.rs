//! `cargo xtask bench`: what a malloc/free pair costs under each probe setup,
//! all measured in one run, reported as ratios against the unprofiled baseline.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use anyhow::{bail, Context as _, Result};

use crate::child::{
    lines_of, number_after, rss_bound_mb, spawn_target, wait_cpu, wait_for, Target,
};
use crate::util::{build_c, build_heapscope, cargo, run, workspace_root};

mod costs;
mod memleak;
mod rows;

use costs::per_hit_costs;

struct Mode {
    name: &'static str,
    /// None: no profiler; Some(flags): heapscope attach with these flags.
    heapscope: Option<&'static [&'static str]>,
}

/// The rows of the main table: the baselines first (ratios are taken
/// against "no profiler" and "bare probes" of the same run and thread count).
const MODES: &[Mode] = &[
    Mode {
        name: "no profiler",
        heapscope: None,
    },
    // Every call's entry and return trapped, as the issue measured them.
    Mode {
        name: "bare probes",
        heapscope: Some(&["--bare-probes", "--no-sessions"]),
    },
    // The floor of the default mode: the entry traps alone.
    Mode {
        name: "bare probes, uprobe sessions",
        heapscope: Some(&["--bare-probes"]),
    },
    Mode {
        name: "default (DWARF, 512KiB, sessions)",
        heapscope: Some(&[]),
    },
    Mode {
        name: "default --no-sessions",
        heapscope: Some(&["--no-sessions"]),
    },
    Mode {
        name: "--stacks fp (sampled)",
        heapscope: Some(&["--stacks", "fp"]),
    },
    Mode {
        name: "--stacks fp --exact",
        heapscope: Some(&["--stacks", "fp", "--exact"]),
    },
    Mode {
        name: "--exact (DWARF)",
        heapscope: Some(&["--exact"]),
    },
];

/// Rows only `--long` adds: every probe at +0 (the single-step cost).
const LONG_MODES: &[Mode] = &[
    Mode {
        name: "bare probes, all at +0",
        heapscope: Some(&["--bare-probes", "--no-sessions", "--no-prologue-skip"]),
    },
    Mode {
        name: "--stacks fp --exact, all at +0",
        heapscope: Some(&["--stacks", "fp", "--exact", "--no-prologue-skip"]),
    },
];

/// What one run measured.
#[derive(Default)]
struct Measurement {
    /// The target threads' CPU time (user + kernel, where probe handling
    /// is charged) per pair: steady when other work loads the machine.
    cpu_ns: f64,
    /// Wall-clock time per pair.
    wall_ns: f64,
    /// Ring-buffer records lost, from the report.
    lost: Option<u64>,
    /// heapscope's own CPU time (user + system) over the whole session.
    cpu_secs: Option<f64>,
    /// heapscope's peak resident set.
    peak_rss_mb: Option<f64>,
    /// heapscope's memory bound at the most allocations it tracked (from
    /// its report: 50 MB + 64 B per tracked allocation).
    bound_mb: Option<f64>,
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
        heapscope: Some(&["--bare-probes", "--no-sessions"]),
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
            row.push(measure_with(bin, heapscope, mode, pairs, 1, lib)?.cpu_ns);
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

/// Runs `pairs` malloc/free pairs on each of `threads` threads of the
/// target, under `mode`.
fn measure(
    bin: &Path,
    heapscope: &Path,
    mode: &Mode,
    pairs: u64,
    threads: u32,
) -> Result<Measurement> {
    measure_with(bin, heapscope, mode, pairs, threads, None)
}

fn measure_with(
    bin: &Path,
    heapscope: &Path,
    mode: &Mode,
    pairs: u64,
    threads: u32,
    preload: Option<&str>,
) -> Result<Measurement> {
    let mut cmd = Command::new(bin);
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    cmd.arg(pairs.to_string()).arg(threads.to_string());
    let Target {
        child: mut target,
        mut stdin,
        out,
        pid,
    } = spawn_target(&mut cmd)?;
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
    let mut m = read_pair_costs(&out)?;
    if let Some((p, _err, report)) = profiler {
        // SAFETY: sending SIGINT to our own child.
        unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
        let (cpu, rss) = wait_cpu(&p)?;
        m.cpu_secs = Some(cpu);
        m.peak_rss_mb = Some(rss);
        // The readers end at EOF, now that heapscope has exited.
        let report: Vec<String> = report.iter().collect();
        m.lost = number_after(&report.join("\n"), "ring buffer lost:");
        m.bound_mb = rss_bound_mb(&report.join("\n"));
    }
    writeln!(stdin, "exit")?;
    target.wait()?;
    Ok(m)
}

/// Reads `cpu_ns_per_pair X` and `ns_per_pair Y` from the benchmark target.
fn read_pair_costs(out: &mpsc::Receiver<String>) -> Result<Measurement> {
    let value = |l: String| -> Result<f64> {
        Ok(l.split_whitespace()
            .nth(1)
            .context("a value after the name")?
            .parse()?)
    };
    Ok(Measurement {
        cpu_ns: value(wait_for(out, "cpu_ns_per_pair")?)?,
        wall_ns: value(wait_for(out, "ns_per_pair")?)?,
        ..Measurement::default()
    })
}

/// The same workload under heaptrack (LD_PRELOAD, from the start of the
/// program): the peer a user would pick instead. `None` when heaptrack is
/// not installed.
fn measure_heaptrack(bin: &Path, pairs: u64, threads: u32) -> Result<Option<Measurement>> {
    if !crate::util::have("heaptrack") {
        return Ok(None);
    }
    let dir = std::env::temp_dir().join(format!("heapscope-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut p = Command::new("heaptrack")
        .arg("-o")
        .arg(dir.join("bench"))
        .arg(bin)
        .arg(pairs.to_string())
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = p.stdin.take().context("heaptrack stdin")?;
    let out = lines_of(p.stdout.take().context("heaptrack stdout")?);
    wait_for(&out, "ready")?;
    writeln!(stdin, "go")?;
    let mut m = read_pair_costs(&out)?;
    writeln!(stdin, "exit")?;
    drop(stdin);
    // heaptrack's interpreter is the script's child: its CPU and memory are
    // in the script's rusage, together with the target's.
    let (cpu, rss) = wait_cpu(&p)?;
    m.cpu_secs = Some(cpu);
    m.peak_rss_mb = Some(rss);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Some(m))
}

/// One row of the main table: per thread count, CPU ns per pair and its
/// ratios to no profiler and to bare probes; then losses, heapscope's CPU
/// and peak RSS (per thread count, `1t/2t`).
fn print_row(name: &str, runs: &[Measurement], none: &[f64], bare: &[f64]) {
    let mut line = format!("  {name:<34}");
    for (i, m) in runs.iter().enumerate() {
        // Ratios to baselines measured before this row ("-" on the baselines).
        let ratio =
            |base: Option<&f64>| base.map_or("-".to_string(), |b| format!("{:.2}x", m.cpu_ns / b));
        line.push_str(&format!(
            " {:>8.0} {:>7.0} {:>7} {:>6}",
            m.cpu_ns,
            m.wall_ns,
            ratio(none.get(i)),
            ratio(bare.get(i))
        ));
    }
    let join = |f: &dyn Fn(&Measurement) -> Option<String>| -> String {
        let v: Vec<String> = runs
            .iter()
            .map(|m| f(m).unwrap_or_else(|| "-".into()))
            .collect();
        v.join("/")
    };
    line.push_str(&format!(
        " {:>11} {:>11} {:>15}",
        join(&|m| m.lost.map(|v| v.to_string())),
        join(&|m| m.cpu_secs.map(|v| format!("{v:.1}"))),
        join(&|m| {
            m.peak_rss_mb.map(|v| match m.bound_mb {
                Some(b) => format!("{v:.0}<={b:.0}"),
                None => format!("{v:.0}"),
            })
        }),
    ));
    println!("{line}");
}

/// The main table: every mode at 1 and 2 threads, and heaptrack.
/// With `peers_only`, only the baselines (no profiler, bare probes) and the peers.
fn bench_table(
    bin: &Path,
    heapscope: &Path,
    pairs: u64,
    long: bool,
    peers_only: bool,
) -> Result<()> {
    const THREADS: [u32; 2] = [1, 2];
    println!(
        "malloc(64)/free pairs, {pairs} per thread; ns per pair in the target threads' CPU time \
         (user + kernel: probe handling is charged there) and wall time; ratios of the CPU \
         time to no profiler and to bare probes of the same run; lost ring-buffer records, \
         heapscope CPU seconds and peak RSS/its bound (MB; bound: 50 MB + 64 B per tracked \
         allocation) at 1/2 threads"
    );
    println!(
        "  {:<34} {:>8} {:>7} {:>7} {:>6} {:>8} {:>7} {:>7} {:>6} {:>11} {:>11} {:>15}",
        "mode",
        "1t cpu",
        "wall",
        "xnone",
        "xbare",
        "2t cpu",
        "wall",
        "xnone",
        "xbare",
        "lost",
        "CPU s",
        "RSS/bound MB"
    );
    let modes: Vec<&Mode> = MODES
        .iter()
        .take(if peers_only { 2 } else { MODES.len() })
        .chain(if long { LONG_MODES } else { &[] })
        .collect();
    let (mut none, mut bare) = (Vec::new(), Vec::new());
    let mut measured = Vec::new();
    for mode in modes {
        let mut runs = Vec::new();
        for t in THREADS {
            runs.push(measure(bin, heapscope, mode, pairs, t)?);
        }
        measured.push((mode.name, runs[0].cpu_ns));
        if none.is_empty() {
            none = runs.iter().map(|m| m.cpu_ns).collect();
        } else if bare.is_empty() {
            bare = runs.iter().map(|m| m.cpu_ns).collect();
        }
        print_row(mode.name, &runs, &none, &bare);
    }
    per_hit_costs(&measured);
    let mut peer = Vec::new();
    for t in THREADS {
        match measure_heaptrack(bin, pairs, t)? {
            Some(m) => peer.push(m),
            None => {
                println!("  heaptrack: not installed (apt-get install heaptrack)");
                break;
            }
        }
    }
    if peer.len() == THREADS.len() {
        print_row(
            "heaptrack (LD_PRELOAD; CPU/RSS incl. target)",
            &peer,
            &none,
            &bare,
        );
    }
    bench_memleak(bin, pairs, &THREADS, &none, &bare)
}

/// bcc's memleak on the same workload, or why it was skipped (never a
/// failure of the benchmark).
fn bench_memleak(
    bin: &Path,
    pairs: u64,
    threads: &[u32],
    none: &[f64],
    bare: &[f64],
) -> Result<()> {
    let m = match memleak::prepare() {
        Ok(m) => m,
        Err(why) => {
            println!("  bcc memleak: skipped: {why}");
            return Ok(());
        }
    };
    let mut runs = Vec::new();
    for &t in threads {
        match memleak::measure(&m, bin, pairs, t)? {
            Ok(r) => runs.push(r),
            Err(why) => {
                println!("  bcc memleak: skipped: {why}");
                return Ok(());
            }
        }
    }
    print_row("bcc memleak (-p PID; CPU/RSS: its own)", &runs, none, bare);
    println!("    (bcc memleak compiled against {})", m.headers);
    Ok(())
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
    let target = crate::util::target_dir(&root).join("debug/heapscope");
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

/// The main table, then attach and detach times; `--long` adds the +0
/// rows, the per-allocator rows, the symbolization and the web server
/// benchmarks (`--symbols`, `--server`, `--allocators`, `--attach` run only
/// that one; `--peers` only the baselines and the peers; `--rows A,B
/// [--runs N]` only the baselines and the rows named so).
pub fn bench(args: &[String]) -> Result<()> {
    let has = |f: &str| args.iter().any(|a| a == f);
    if has("--symbols") {
        return bench_symbols();
    }
    if has("--server") {
        return bench_server();
    }
    let long = has("--long");
    let load_seconds: u64 = args
        .iter()
        .position(|a| a == "--load-seconds")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(10);
    let pairs: u64 = args
        .iter()
        .position(|a| a == "--pairs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(200_000);
    let heapscope = build_heapscope()?;
    let bin = build_c(
        "bench_pairs",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    )?;
    if !std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    {
        bail!("the benchmark attaches eBPF probes: run it as root");
    }
    if has("--allocators") {
        return bench_allocators(&bin, &heapscope, pairs);
    }
    if has("--load") {
        return crate::bench_load::bench_load(&heapscope, load_seconds);
    }
    if has("--attach") {
        return crate::bench_attach::bench_attach(&bin, &heapscope);
    }
    if let Some(rows) = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
    {
        let runs: u32 = args
            .iter()
            .position(|a| a == "--runs")
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(1);
        return rows::bench_rows(&bin, &heapscope, pairs, rows, runs);
    }
    crate::setup::bench_packages();
    if has("--peers") {
        return bench_table(&bin, &heapscope, pairs, false, true);
    }
    bench_table(&bin, &heapscope, pairs, long, false)?;
    crate::bench_attach::bench_attach(&bin, &heapscope)?;
    if long {
        bench_allocators(&bin, &heapscope, pairs)?;
        bench_symbols()?;
        bench_server()?;
        crate::bench_load::bench_load(&heapscope, load_seconds)?;
    }
    Ok(())
}
