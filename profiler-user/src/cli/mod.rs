//! Command-line interface: argument parsing and the thin glue around a
//! session (`live`) or a recording (`offline`).

mod args;
mod hints;
mod live;
mod offline;
mod outputs;
mod pprof;
mod ranges;
mod serve;
mod terminal;

use std::path::PathBuf;

use anyhow::Result;

use crate::timeline::Window;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use args::{CommonArgs, MetricArg, StacksArg};
pub use serve::{ServeArgs, ServeOpts};

/// heapscope: an eBPF heap profiler for running processes.
#[derive(Parser, Debug)]
#[command(name = "heapscope", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More detail on stderr: -v for heapscope's debug messages (why an
    /// address stayed unresolved, which debug files were tried), -vv for its
    /// libraries' too.
    /// RUST_LOG overrides it (e.g. RUST_LOG=heapscope=debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The log level of `-v` repeated `verbose` times: warnings only by default.
pub fn log_level(verbose: u8) -> log::LevelFilter {
    match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Sends the library's `log` messages to stderr at the level of `-v`, or
/// as RUST_LOG says when it is set. Called once, by the binary.
pub fn init_logging(verbose: u8) {
    let mut b = env_logger::Builder::new();
    // -v is about heapscope; its libraries (aya's loader is chatty) need -vv.
    b.filter_level(log_level(verbose.saturating_sub(1)));
    b.filter_module("heapscope", log_level(verbose));
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    // Already initialised (tests): the first logger stays.
    let _ = b.try_init();
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to a running process by PID (no restart, no LD_PRELOAD, no ptrace).
    Attach(AttachArgs),
    /// Start a command and profile it from its first allocation.
    Run(RunArgs),
    /// Totals, top call sites, leak suspects and findings of a recording.
    Report(ReportArgs),
    /// Per call site change of live bytes between two windows of a recording.
    Diff(DiffArgs),
    /// Folded stacks or a flame graph of one window of a recording.
    Export(ExportArgs),
    /// The web UI, JSON API and /metrics on a recording.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The processes to profile (`-p 1,2` or `-p 1 -p 2`), with their
    /// children unless `--no-follow`.
    #[arg(short, long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..),
          required_unless_present_any = ["cgroup", "container"])]
    pub pid: Vec<u32>,
    /// Profile every process of this cgroup (v2), and those that join it
    /// later: a directory under /sys/fs/cgroup, or a path as in
    /// /proc/PID/cgroup (e.g. /system.slice/nginx.service).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "container"])]
    pub cgroup: Option<PathBuf>,
    /// Profile every process of this container (a full id or a prefix of
    /// 4+ characters), found by its cgroup in /proc/*/cgroup.
    #[arg(long, value_name = "ID", conflicts_with = "pid")]
    pub container: Option<String>,
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

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A recording written by `--record`.
    pub file: PathBuf,
    /// Read a recording damaged in the middle (skipped stretches are listed).
    #[arg(long)]
    pub allow_damaged: bool,
    /// Number of call sites and suspects shown.
    #[arg(long, default_value_t = 20, value_parser = ranges::top_range())]
    pub top: usize,
    /// The part of the recording to report on, e.g. `30s..90s`, `5m..`, `..2m`.
    #[arg(long, default_value = "..", value_parser = Window::parse)]
    pub window: Window,
    /// A JSON document with `findings`, `suspects`, `top_sites`, `totals`.
    #[arg(long)]
    pub json: bool,
    /// Add file:line to every frame.
    #[arg(long)]
    pub lines: bool,
    /// Symbolize the recorded frames again from their modules (same
    /// build-id on this machine), /usr/lib/debug and debuginfod
    /// (DEBUGINFOD_URLS): for debug info installed after recording.
    #[arg(long)]
    pub resymbolize: bool,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum DiffFormat {
    Text,
    Folded,
    Svg,
    /// Gzipped pprof of the window minus the baseline (negative values), to
    /// -o OUT.pb.gz, plus OUT.base.pb.gz and OUT.window.pb.gz for
    /// `go tool pprof -diff_base`.
    Pprof,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// A recording written by `--record`.
    pub file: PathBuf,
    /// Read a recording damaged in the middle (skipped stretches are listed).
    #[arg(long)]
    pub allow_damaged: bool,
    /// The reference window, e.g. `0s..60s`.
    #[arg(long, value_parser = Window::parse)]
    pub baseline: Window,
    /// The window compared with it, e.g. `5m..6m`.
    #[arg(long, value_parser = Window::parse)]
    pub window: Window,
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiffFormat,
    /// Rows of the text format.
    #[arg(long, default_value_t = 20, value_parser = ranges::top_range())]
    pub top: usize,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ExportFormat {
    Folded,
    Svg,
    /// Gzipped profile.proto, for `go tool pprof`, Pyroscope and Parca (needs -o).
    Pprof,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A recording written by `--record`.
    pub file: PathBuf,
    /// Read a recording damaged in the middle (skipped stretches are listed).
    #[arg(long)]
    pub allow_damaged: bool,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    #[arg(long, value_enum, default_value = "live-bytes")]
    pub metric: MetricArg,
    /// The part of the recording, e.g. `30s..90s`.
    #[arg(long, default_value = "..", value_parser = Window::parse)]
    pub window: Window,
    /// Add file:line to every frame.
    #[arg(long)]
    pub lines: bool,
    /// Write here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Prints `heapscope: MSG` on stderr. A closed terminal (after SIGHUP) or
/// pipe makes `eprintln!` panic; here it only loses the line.
pub(crate) fn note(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "heapscope: {msg}");
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Attach(a) => live::attach(a).await,
        Command::Run(r) => live::run_command(r).await,
        Command::Report(r) => offline::report(r),
        Command::Diff(d) => offline::diff(d),
        Command::Export(e) => offline::export(e),
        Command::Serve(s) => serve::serve(s).await,
    }
}

#[cfg(test)]
mod tests;
