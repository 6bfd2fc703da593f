//! Command-line interface: argument parsing and the thin glue around a session.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::launch;
use crate::probes::{self, target, CaptureConfig, MapSizes, ProbeMode, Probes};
use crate::profile::{Metric, Profile};
use crate::session::{self, SessionOptions, StopReason};
use crate::units::{parse_duration, parse_size};
use crate::views;

/// heapscope: an eBPF heap profiler for running processes.
#[derive(Parser, Debug)]
#[command(name = "heapscope", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to a running process by PID (no restart, no LD_PRELOAD, no ptrace).
    Attach(AttachArgs),
    /// Start a command and profile it from its first allocation.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The process to profile.
    #[arg(short, long)]
    pub pid: u32,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum MetricArg {
    LiveBytes,
    AllocBytes,
    Allocs,
}

impl From<MetricArg> for Metric {
    fn from(m: MetricArg) -> Metric {
        match m {
            MetricArg::LiveBytes => Metric::LiveBytes,
            MetricArg::AllocBytes => Metric::AllocBytes,
            MetricArg::Allocs => Metric::Allocs,
        }
    }
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum StacksArg {
    /// Copy registers and the top of the stack, unwind in userspace with CFI:
    /// complete stacks for binaries without frame pointers.
    Dwarf,
    /// Kernel frame-pointer walk: cheaper, complete only for frame-pointer builds.
    Fp,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// How stacks are captured.
    #[arg(long, value_enum, default_value = "dwarf")]
    pub stacks: StacksArg,
    /// Mean bytes allocated between two sampled allocations (e.g. 512KiB, 4KiB);
    /// estimates are unbiased. Exact process totals are kept alongside.
    #[arg(long, default_value = "512KiB", value_parser = parse_size)]
    pub sample_rate: u64,
    /// Capture every allocation (no sampling): exact per-site numbers, higher cost.
    #[arg(long)]
    pub exact: bool,
    /// Bytes of user stack copied per sample for DWARF unwinding (4KiB, 8KiB or 16KiB).
    #[arg(long, default_value = "8KiB", value_parser = parse_size)]
    pub stack_size: u64,
    /// Stop after this long (e.g. 500ms, 30s, 5m); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Interval of status lines and snapshots.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub tick: Duration,
    /// Write folded stacks (`root;...;leaf WEIGHT`) to this file.
    #[arg(long)]
    pub folded: Option<PathBuf>,
    /// Write an inferno flame graph SVG to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Weight of the folded/SVG output.
    #[arg(long, value_enum, default_value = "live-bytes")]
    pub metric: MetricArg,
    /// Number of call sites in the report.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Add file:line (from DWARF) to each function frame, and mark inlined ones.
    #[arg(long)]
    pub lines: bool,
    /// Do not print the per-tick status line.
    #[arg(long)]
    pub quiet: bool,
    /// Capacity of the live-allocation map (allocations beyond it are counted as lost).
    #[arg(long, default_value_t = profiler_common::defaults::LIVE_MAP_ENTRIES)]
    pub live_map_entries: u32,
    /// Capacity of the call-site map.
    #[arg(long, default_value_t = profiler_common::defaults::SITE_MAP_ENTRIES)]
    pub site_map_entries: u32,
    /// Capacity of the stack-trace map.
    #[arg(long, default_value_t = profiler_common::defaults::STACK_MAP_ENTRIES)]
    pub stack_map_entries: u32,
    /// Capacity of the per-thread entry-state map.
    #[arg(long, default_value_t = profiler_common::defaults::INFLIGHT_ENTRIES)]
    pub inflight_entries: u32,
    /// Benchmark only: attach programs that do nothing, to measure the traps alone.
    #[arg(long, hide = true)]
    pub bare_probes: bool,
    /// Benchmark only: probe `free` at its first instruction instead of after its NULL guard.
    #[arg(long, hide = true)]
    pub no_prologue_skip: bool,
    /// Size of the event ring buffer (a power of two, e.g. 8MiB); records that do
    /// not fit are counted as lost.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub ringbuf_size: u64,
}

impl CommonArgs {
    fn map_sizes(&self) -> Result<MapSizes> {
        let ring = self.ringbuf_size;
        if !ring.is_power_of_two() || ring < 4096 || ring > u32::MAX as u64 {
            bail!("--ringbuf-size {ring} must be a power of two between 4KiB and 2GiB");
        }
        Ok(MapSizes {
            live: self.live_map_entries.max(1),
            sites: self.site_map_entries.max(1),
            stacks: self.stack_map_entries.max(1),
            inflight: self.inflight_entries.max(1),
            ringbuf_bytes: ring as u32,
        })
    }

    fn capture(&self) -> Result<CaptureConfig> {
        let Some(&stack_copy) = profiler_common::STACK_COPY_SIZES
            .iter()
            .find(|&&s| s as u64 >= self.stack_size)
        else {
            bail!(
                "--stack-size {} is too large: at most 16KiB",
                self.stack_size
            );
        };
        if self.sample_rate == 0 && !self.exact {
            bail!(
                "--sample-rate must be at least 1 byte (use --exact to capture every allocation)"
            );
        }
        Ok(CaptureConfig {
            sample_rate: if self.exact { 0 } else { self.sample_rate },
            stack_mode: match self.stacks {
                StacksArg::Dwarf => profiler_common::stack_mode::DWARF,
                StacksArg::Fp => profiler_common::stack_mode::FRAME_POINTER,
            },
            stack_copy,
        })
    }

    fn probe_mode(&self) -> ProbeMode {
        if self.bare_probes {
            ProbeMode::Bare
        } else {
            ProbeMode::Profile
        }
    }

    fn session_options(&self) -> SessionOptions {
        SessionOptions {
            duration: self.duration,
            tick: self.tick.max(Duration::from_millis(10)),
            status: !self.quiet,
        }
    }

    /// Fails before attaching when an output file could not be written later.
    fn check_outputs(&self) -> Result<()> {
        for p in self.folded.iter().chain(self.svg.iter()) {
            let parent = p
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail!(
                    "cannot write {}: directory {} does not exist",
                    p.display(),
                    parent.display()
                );
            }
        }
        Ok(())
    }
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Attach(a) => attach(a).await,
        Command::Run(r) => run_command(r).await,
    }
}

async fn attach(args: AttachArgs) -> Result<i32> {
    let pid = args.pid;
    args.common.check_outputs()?;
    let sizes = args.common.map_sizes()?;
    probes::preflight(pid)?;
    let target = target::discover(pid, !args.common.no_prologue_skip)?;
    let probes = Probes::attach(
        pid,
        &target,
        sizes,
        args.common.capture()?,
        args.common.probe_mode(),
    )?;
    announce(pid, &target, &probes);
    let result = session::run(probes, &args.common.session_options(), || {
        session::process_alive(pid)
    })
    .await?;
    finish(&args.common, &result.profile, result.stop, &result.warnings)?;
    Ok(0)
}

async fn run_command(args: RunArgs) -> Result<i32> {
    let Some((cmd, rest)) = args.command.split_first() else {
        bail!("no command given: use `heapscope run -- COMMAND [ARGS...]`");
    };
    args.common.check_outputs()?;
    let sizes = args.common.map_sizes()?;
    let program = launch::resolve_program(cmd).with_context(|| {
        format!("cannot run {cmd}: not an executable file or not found on PATH")
    })?;
    if !probes::has_bpf_privileges() {
        return Err(probes::ProbeError::NotPrivileged.into());
    }
    let target = target::for_command(&program, !args.common.no_prologue_skip)?;
    let child = launch::spawn_suspended(&program, rest)
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.pid;
    // On error the child is dropped at the gate: it exits without running.
    let probes = Probes::attach(
        pid,
        &target,
        sizes,
        args.common.capture()?,
        args.common.probe_mode(),
    )?;
    announce(pid, &target, &probes);
    child
        .release()
        .with_context(|| format!("cannot release {} (pid {pid})", program.display()))?;
    let mut exit_code = None;
    let result = session::run(probes, &args.common.session_options(), || {
        exit_code = exit_code.or_else(|| launch::try_wait(pid));
        exit_code.is_none()
    })
    .await?;
    let exit_code = exit_code.or_else(|| launch::try_wait(pid));
    finish(&args.common, &result.profile, result.stop, &result.warnings)?;
    match exit_code {
        Some(code) => {
            eprintln!("heapscope: {} exited with code {code}", program.display());
            Ok(code.max(0))
        }
        None => {
            eprintln!(
                "heapscope: detached; {} (pid {pid}) runs on",
                program.display()
            );
            Ok(0)
        }
    }
}

fn announce(pid: u32, target: &target::AllocatorTarget, probes: &Probes) {
    let missing: Vec<&str> = target.missing.iter().map(|k| k.symbol()).collect();
    eprintln!(
        "heapscope: attached {} probes to pid {pid} (allocator: {}){}; Ctrl-C to stop",
        probes.probe_count(),
        target.allocator,
        if missing.is_empty() {
            String::new()
        } else {
            format!(", not defined there: {}", missing.join(", "))
        }
    );
}

/// Prints the report first (so nothing recorded is lost if a file cannot be
/// written), then writes the requested files.
fn finish(
    common: &CommonArgs,
    profile: &Profile,
    stop: StopReason,
    warnings: &[String],
) -> Result<()> {
    eprintln!("heapscope: stopped: {}", stop.describe());
    for w in warnings {
        eprintln!("heapscope: warning: {w}");
    }
    let labels = views::Labels {
        lines: common.lines,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    views::report::write_report_with(profile, common.top, labels, &mut out)
        .context("writing the report")?;
    let metric: Metric = common.metric.into();
    if let Some(path) = &common.folded {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        views::folded::write_folded_with(profile, metric, labels, &mut f)
            .and_then(|_| std::io::Write::flush(&mut f))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("heapscope: wrote {}", path.display());
    }
    if let Some(path) = &common.svg {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        let title = format!("heapscope: pid {} ({})", profile.pid, profile.comm);
        views::svg::write_svg_with(profile, metric, labels, &title, &mut f)
            .with_context(|| format!("cannot write {}", path.display()))?;
        std::io::Write::flush(&mut f)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("heapscope: wrote {}", path.display());
    }
    Ok(())
}
