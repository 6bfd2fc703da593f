//! Options shared by `attach` and `run`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::probes::custom::{self, CustomAllocator, CustomEntry, Shape};
use crate::probes::{CaptureConfig, MapSizes, ProbeMode};
use crate::profile::Metric;
use crate::push::{ingest::valid_label_name, Endpoint, PushOptions};
use crate::session::SessionOptions;
use crate::units::{duration_in, parse_duration, size_in};

/// The longest `--duration`: a year (tokio's timers and `Instant` stay far from overflow).
pub const MAX_SESSION: Duration = Duration::from_secs(365 * 24 * 3600);
/// `--tick` bounds: below 10 ms the map reads would cost more than the target;
/// above an hour there would be no status at all.
pub const MIN_TICK: Duration = Duration::from_millis(10);
pub const MAX_TICK: Duration = Duration::from_secs(3600);
/// The largest `--sample-rate`: keeps the in-kernel `rate * quantile` products
/// within 64 bits.
pub const MAX_SAMPLE_RATE: u64 = 1 << 30;
/// Map capacities: beyond these the kernel refuses the map or it would pin
/// gigabytes of kernel memory.
const MAX_LIVE: i64 = 1 << 24;
const MAX_SITES: i64 = 1 << 22;
const MAX_STACKS: i64 = 1 << 20;
const MAX_INFLIGHT: i64 = 1 << 20;

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
    #[arg(long, default_value = "512KiB", value_parser = size_in(1, MAX_SAMPLE_RATE))]
    pub sample_rate: u64,
    /// Capture every allocation (no sampling): exact per-site numbers, higher cost.
    #[arg(long)]
    pub exact: bool,
    /// Keep the probes' estimated CPU cost below PCT percent of the target's
    /// CPU time: above it, sample less (fewer stack captures); well under it
    /// again, step back toward the given rate; said in the status line and
    /// the report.
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub max_overhead: Option<f64>,
    /// Profile only the given processes, not their children (by default
    /// children, existing and forked later, are profiled too).
    #[arg(long)]
    pub no_follow: bool,
    /// Bytes of user stack copied per sample for DWARF unwinding (4KiB, 8KiB or 16KiB).
    #[arg(long, default_value = "8KiB", value_parser = size_in(1, 16 << 10))]
    pub stack_size: u64,
    /// Stop after this long (e.g. 500ms, 30s, 5m); default: until Ctrl-C or the target exits.
    #[arg(short, long, value_parser = duration_in(Duration::from_millis(1), MAX_SESSION))]
    pub duration: Option<Duration>,
    /// Interval of status lines and snapshots.
    #[arg(long, default_value = "1s", value_parser = duration_in(MIN_TICK, MAX_TICK))]
    pub tick: Duration,
    /// Write folded stacks (`root;...;leaf WEIGHT`) to this file.
    #[arg(long)]
    pub folded: Option<PathBuf>,
    /// Write an inferno flame graph SVG to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Write the whole session as gzipped pprof (profile.proto) to this file.
    #[arg(long)]
    pub pprof: Option<PathBuf>,
    /// Push one pprof profile per interval to this Pyroscope-compatible
    /// server (e.g. http://pyroscope:4040), from a thread of its own.
    #[arg(long, value_name = "URL")]
    pub push: Option<String>,
    /// Interval of --push (100ms to 1d).
    #[arg(long, default_value = "15s",
          value_parser = duration_in(Duration::from_millis(100), Duration::from_secs(86_400)))]
    pub push_interval: Duration,
    /// A label of pushed profiles (repeatable); `service_name=NAME` names the
    /// application (default: the target's command name).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Serve the web UI, JSON API and /metrics while attached, on ADDR
    /// (default 127.0.0.1:7878; a non-loopback address needs --token).
    #[arg(long, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = crate::server::DEFAULT_LISTEN)]
    pub serve: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub serve_opts: super::serve::ServeOpts,
    /// Weight of the folded/SVG output.
    #[arg(long, value_enum, default_value = "live-bytes")]
    pub metric: MetricArg,
    /// Number of call sites in the report.
    #[arg(long, default_value_t = 20, value_parser = super::ranges::top_range())]
    pub top: usize,
    /// Add file:line (from DWARF) to each function frame, and mark inlined ones.
    #[arg(long)]
    pub lines: bool,
    /// Do not print the per-tick status line.
    #[arg(long)]
    pub quiet: bool,
    /// Accepted for compatibility: attaching and detaching run ahead of the
    /// target by default now (see --no-attach-priority).
    #[arg(long, hide = true)]
    pub attach_priority: bool,
    /// Attach and detach at heapscope's own priority instead of real-time
    /// (SCHED_FIFO 1, else nice -20), and run the thread that moves records
    /// out of the ring buffer at it too (unwinding always runs at normal
    /// priority): on a target whose threads saturate the CPUs this makes
    /// attaching take tens of seconds, and `--exact` may lose records.
    #[arg(long, conflicts_with = "attach_priority")]
    pub no_attach_priority: bool,
    /// Capacity of the live-allocation map (allocations beyond it are counted as lost).
    #[arg(long, default_value_t = profiler_common::defaults::LIVE_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..=MAX_LIVE))]
    pub live_map_entries: u32,
    /// Capacity of the call-site map.
    #[arg(long, default_value_t = profiler_common::defaults::SITE_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..=MAX_SITES))]
    pub site_map_entries: u32,
    /// Capacity of the stack-trace map.
    #[arg(long, default_value_t = profiler_common::defaults::STACK_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..=MAX_STACKS))]
    pub stack_map_entries: u32,
    /// Capacity of the per-thread entry-state map.
    #[arg(long, default_value_t = profiler_common::defaults::INFLIGHT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..=MAX_INFLIGHT))]
    pub inflight_entries: u32,
    /// Write a recording (every tick, flushed as it comes) for `report`, `diff`, `export`.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Also list call sites by bytes of allocations at least this old (memleak's -o).
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Benchmark only: attach programs that do nothing, to measure the traps alone.
    #[arg(long, hide = true)]
    pub bare_probes: bool,
    /// Keep every allocation's return probe instead of attaching the
    /// allocation entry points as uprobe sessions (kernel 6.13+, the default
    /// in sampled modes): the live heap stays exact, at ~1.6× the cost per call.
    #[arg(long)]
    pub no_sessions: bool,
    /// Accepted for older scripts: uprobe sessions are the default now.
    #[arg(long, hide = true, conflicts_with = "no_sessions")]
    pub sessions: bool,
    /// Benchmark only: probe `free` at its first instruction instead of after its NULL guard.
    #[arg(long, hide = true)]
    pub no_prologue_skip: bool,
    /// A custom pool allocator's allocation function and the argument holding
    /// the size (repeatable), e.g. 'pkg_malloc(size=arg1)': its calls are
    /// program allocations at their call sites; what the pool takes from the
    /// allocator below it is the pool's footprint.
    #[arg(long = "alloc", value_name = "FUNC(size=argN)", value_parser = pool_alloc)]
    pub pool_alloc: Vec<CustomEntry>,
    /// The custom pool's free function (repeatable), e.g. 'pkg_free(ptr=arg1)'.
    #[arg(long = "free", value_name = "FUNC(ptr=argN)", value_parser = pool_free)]
    pub pool_free: Vec<CustomEntry>,
    /// The custom pool's realloc-like function, e.g. 'pkg_realloc(ptr=arg1,size=arg2)'.
    #[arg(long = "realloc", value_name = "FUNC(ptr=argN,size=argM)", value_parser = pool_realloc)]
    pub pool_realloc: Vec<CustomEntry>,
    /// The custom pool's calloc-like function, e.g. 'pkg_calloc(count=arg1,size=arg2)'.
    #[arg(long = "calloc", value_name = "FUNC(count=argN,size=argM)", value_parser = pool_calloc)]
    pub pool_calloc: Vec<CustomEntry>,
    /// A function of the pool's own besides its entry points (its start-up,
    /// its growth; repeatable): the blocks it takes are the pool's footprint.
    #[arg(long = "pool-code", value_name = "FUNC")]
    pub pool_code: Vec<String>,
    /// Size of the event ring buffers together (a power of two, e.g. 8MiB),
    /// split into one ring per CPU (at most 8); records that do not fit are
    /// counted as lost.
    #[arg(long, default_value = "8MiB", value_parser = size_in(4 << 10, 1 << 31))]
    pub ringbuf_size: u64,
}

fn pool_alloc(s: &str) -> Result<CustomEntry, String> {
    custom::parse(Shape::Alloc, s).map_err(|e| e.to_string())
}
fn pool_free(s: &str) -> Result<CustomEntry, String> {
    custom::parse(Shape::Free, s).map_err(|e| e.to_string())
}
fn pool_realloc(s: &str) -> Result<CustomEntry, String> {
    custom::parse(Shape::Realloc, s).map_err(|e| e.to_string())
}
fn pool_calloc(s: &str) -> Result<CustomEntry, String> {
    custom::parse(Shape::Calloc, s).map_err(|e| e.to_string())
}

impl CommonArgs {
    /// The custom pool allocator named with `--alloc`, `--free`, `--realloc`,
    /// `--calloc` and `--pool-code` (empty without one).
    pub(super) fn custom_allocator(&self) -> Result<CustomAllocator> {
        let c = CustomAllocator {
            entries: [
                &self.pool_alloc,
                &self.pool_calloc,
                &self.pool_realloc,
                &self.pool_free,
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
            pool_code: self.pool_code.clone(),
        };
        if let Err(e) = c.check() {
            bail!("{e}");
        }
        Ok(c)
    }

    pub(super) fn map_sizes(&self) -> Result<MapSizes> {
        let ring = self.ringbuf_size;
        if !ring.is_power_of_two() {
            bail!("--ringbuf-size {ring} must be a power of two between 4KiB and 2GiB");
        }
        Ok(MapSizes {
            live: self.live_map_entries,
            sites: self.site_map_entries,
            stacks: self.stack_map_entries,
            inflight: self.inflight_entries,
            ringbuf_bytes: ring as u32,
        })
    }

    pub(super) fn capture(&self) -> Result<CaptureConfig> {
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
                StacksArg::Dwarf => profiler_common::StackMode::Dwarf,
                StacksArg::Fp => profiler_common::StackMode::FramePointer,
            },
            stack_copy,
            follow: !self.no_follow,
            sessions: !self.no_sessions,
            hold_exit: false,
            // The overhead guard may switch to sampling, which needs the
            // kernel's live map from the start.
            user_live: self.max_overhead.is_none(),
        })
    }

    pub(super) fn probe_mode(&self) -> ProbeMode {
        if self.bare_probes {
            ProbeMode::Bare
        } else {
            ProbeMode::Profile
        }
    }

    pub(super) fn push_options(&self) -> Result<Option<PushOptions>> {
        let Some(url) = &self.push else {
            return Ok(None);
        };
        let service = self
            .labels
            .iter()
            .find(|(k, _)| k == "service_name")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok(Some(PushOptions {
            endpoint: Endpoint::parse(url)?,
            interval: self.push_interval,
            service,
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| k != "service_name")
                .cloned()
                .collect(),
        }))
    }

    pub(super) fn session_options(&self) -> Result<SessionOptions> {
        Ok(SessionOptions {
            duration: self.duration,
            tick: self.tick,
            record: self.record.clone(),
            sample_rate: self.capture()?.sample_rate,
            allocator: String::new(),
            allocator_notes: Vec::new(),
            glibc_footprint: false,
            block_homes: true,
            raise_priority: !self.no_attach_priority,
            max_overhead: self.max_overhead,
            stack_mode: self.capture()?.stack_mode,
            cgroup: None,
            reprobe: Some(crate::session::ProbeSpec {
                skip_prologue: !self.no_prologue_skip,
                custom: self.custom_allocator()?,
            }),
        })
    }

    /// Fails before attaching when an output file could not be written later.
    pub(super) fn check_outputs(&self) -> Result<()> {
        if self.exact && self.max_overhead.is_some() {
            // These announce "exact" at the start; the guard may sample
            // later, which they cannot say yet.
            for (flag, given) in [
                ("--record", self.record.is_some()),
                ("--serve", self.serve.is_some()),
                ("--push", self.push.is_some()),
            ] {
                if given {
                    bail!(
                        "--exact --max-overhead with {flag}: the guard may switch to sampling \
                         mid-session, and {flag} would still call every number exact; drop \
                         --max-overhead, or --exact (the guard then only samples less)"
                    );
                }
            }
        }
        // A bad --push URL or label fails before the target is touched.
        self.push_options()?;
        let outputs = [
            ("--record", &self.record),
            ("--folded", &self.folded),
            ("--svg", &self.svg),
            ("--pprof", &self.pprof),
        ];
        for (flag, path) in outputs {
            if let Some(p) = path {
                super::outputs::check_writable(p, flag)?;
            }
        }
        Ok(())
    }
}

/// Parses `--label KEY=VALUE`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got '{text}'"))?;
    if !valid_label_name(k) {
        return Err(format!(
            "label name '{k}' must start with a letter or '_' and hold only letters, digits, '_' and '.'"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `--max-overhead PCT`: a percentage above 0 and at most 100
/// (`5`, `0.5`, `5%`).
fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!(
            "expected a percentage of the target's CPU above 0 and at most 100 (e.g. 5), got '{text}'"
        )),
    }
}
