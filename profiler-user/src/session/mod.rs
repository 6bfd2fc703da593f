//! One profiling session: tick, print status, stop on signal / duration /
//! target exit, detach; every tick goes into the timeline (and the
//! recording), which the final report is computed from.

pub mod ages;
pub mod capture;
pub mod publish;
pub mod recorder;
pub mod resolve;
pub mod status;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::RawSnapshot;
use crate::analysis::age::{AgeHistogram, OutstandingAlloc};
use crate::probes::Probes;
use crate::process::memory;
use crate::record::Header;
use crate::symbolize::{Symbolizer, SymbolizerOptions};
use crate::timeline::{ProfileMeta, Timeline};
use capture::Capture;
use recorder::Recorder;

/// How a session is run.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Stop after this long; `None` runs until a signal or the target exits.
    pub duration: Option<Duration>,
    /// Interval between snapshots and status lines.
    pub tick: Duration,
    /// Print a status line on stderr every tick.
    pub status: bool,
    /// Write the timeline to this recording as it goes.
    pub record: Option<PathBuf>,
    /// Mean bytes between samples (0: exact), stored in the recording.
    pub sample_rate: u64,
    /// Push one pprof profile per interval to a Pyroscope-compatible backend.
    pub push: Option<crate::push::PushOptions>,
    /// Printed on stderr once the session has read the target's memory map,
    /// so whoever waits for it knows allocations from then on resolve.
    pub announce: Option<String>,
    /// The allocator line and its warnings, kept in the recording and the report.
    pub allocator: String,
    pub allocator_notes: Vec<String>,
}

/// Why the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Interrupted,
    Terminated,
    /// SIGHUP: the terminal was closed; the session ends like on SIGTERM.
    HangUp,
    TargetExited,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Duration => "duration elapsed",
            StopReason::Interrupted => "interrupted (SIGINT)",
            StopReason::Terminated => "terminated (SIGTERM)",
            StopReason::HangUp => "hung up (SIGHUP: terminal closed)",
            StopReason::TargetExited => "target exited",
        }
    }
}

/// The result of a session.
pub struct SessionResult {
    pub timeline: Timeline,
    pub meta: ProfileMeta,
    pub stop: StopReason,
    /// Outstanding sampled allocations at the end, with the monotonic time
    /// their ages are measured at.
    pub outstanding: Vec<OutstandingAlloc>,
    pub now_ns: u64,
    /// Attach time, milliseconds since the Unix epoch (as in the recording header).
    pub start_unix_ms: u64,
    /// What the push thread sent and dropped, with `push`.
    pub push: Option<crate::push::PushSummary>,
    /// Non-fatal problems met on the way (detach errors, unreadable maps).
    pub warnings: Vec<String>,
}

impl SessionResult {
    /// The age histogram of the outstanding allocations.
    pub fn ages(&self) -> AgeHistogram {
        AgeHistogram::build(self.now_ns, &self.outstanding)
    }
}

fn note_layout(probes: &mut Probes, cap: &Capture, warnings: &mut Vec<String>) {
    let msg = match probes.note_layout(&cap.maps) {
        Ok(0) => return,
        Ok(dropped) => format!(
            "{dropped} of the allocator's code ranges did not fit the probes' table: \
             allocator-internal calls from them may be counted as the program's"
        ),
        Err(e) => format!("telling the probes the process layout: {e}"),
    };
    if !warnings.contains(&msg) {
        warnings.push(msg);
    }
}

/// Symbolizes the sites of `snap` seen for the first time and records the tick.
fn record_tick(
    rec: &mut Recorder,
    symbolizer: &mut Symbolizer,
    cap: &Capture,
    probes: &Probes,
    t_ms: u64,
    snap: &RawSnapshot,
) -> anyhow::Result<()> {
    let new = rec.new_sites(snap);
    if !new.sites.is_empty() {
        let mut resolver = resolve::Resolver::new(cap.pid, &cap.maps, symbolizer);
        let sites = resolver.sites(&new, &probes.ebpf, &cap.samples)?;
        for (module, n) in std::mem::take(&mut resolver.fp_cut) {
            *rec.fp_cut.entry(module).or_insert(0) += n;
        }
        rec.add_sites(new.sites.keys().copied(), sites);
    }
    let mem = memory::sample(cap.pid).ok();
    rec.tick(t_ms, snap, mem);
    Ok(())
}

/// A line on stderr. After SIGHUP the terminal is gone and `eprintln!`
/// would panic; the line is lost instead.
fn say(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{args}");
}

const EARLY_REFRESH: Duration = Duration::from_millis(20);
const EARLY_PERIOD: Duration = Duration::from_secs(2);

/// True while the process has a thread that has not exited (its main
/// thread may have: `pthread_exit` leaves a zombie leader).
pub fn process_alive(pid: u32) -> bool {
    crate::process::procfs::alive(pid)
}

/// Runs an attached session until it is stopped, then detaches and returns
/// its timeline. `alive` tells whether the target still runs (for a child,
/// it also reaps it).
pub async fn run(
    mut probes: Probes,
    opts: &SessionOptions,
    mut alive: impl FnMut() -> bool,
) -> anyhow::Result<SessionResult> {
    use tokio::signal::unix::{signal, SignalKind};

    let pid = probes.pid;
    // Signals are caught before the announcement: whoever waits for it may
    // interrupt the session right away.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut cap = Capture::new(&mut probes)?;
    if let Some(line) = &opts.announce {
        say(format_args!("{line}"));
    }
    let mut warnings = Vec::new();
    let start_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let header = Header {
        pid,
        comm: cap.comm.clone(),
        start_unix_ms,
        tick_ms: opts.tick.as_millis() as u64,
        heapscope_version: env!("CARGO_PKG_VERSION").to_string(),
        sample_rate: opts.sample_rate,
        allocator: opts.allocator.clone(),
        allocator_notes: opts.allocator_notes.clone(),
    };
    let mut rec = Recorder::new(opts.record.as_deref(), &header)?;
    let meta = ProfileMeta {
        pid,
        comm: cap.comm.clone(),
        sample_rate: opts.sample_rate,
        allocator: opts.allocator.clone(),
        allocator_notes: opts.allocator_notes.clone(),
    };
    let mut push = match opts.push.clone() {
        Some(p) => Some(publish::PushTicker::start(
            p,
            start_unix_ms,
            opts.sample_rate,
            meta.clone(),
        )?),
        None => None,
    };
    // Debug files fetched by debuginfod clients (heapscope's or elfutils'
    // `debuginfod-find`) are read from their cache; nothing is fetched here.
    let mut symbolizer = Symbolizer::with_options(SymbolizerOptions {
        debuginfod_caches: vec![crate::debuginfod::default_cache_dir()],
        ..SymbolizerOptions::default()
    });
    let started = Instant::now();
    let t_ms = || started.elapsed().as_millis() as u64;
    let deadline = opts.duration.map(|d| started + d);
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut status = status::StatusLine::new(started);
    // A freshly started command maps its libraries within milliseconds and may
    // exit before the first tick: refresh the memory map often at first.
    let mut early = tokio::time::interval(EARLY_REFRESH);

    let stop = loop {
        let until_deadline = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600 * 24 * 365));
        tokio::select! {
            _ = sigint.recv() => break StopReason::Interrupted,
            _ = sigterm.recv() => break StopReason::Terminated,
            _ = sighup.recv() => break StopReason::HangUp,
            _ = tokio::time::sleep(until_deadline) => break StopReason::Duration,
            _ = early.tick(), if started.elapsed() < EARLY_PERIOD => {
                cap.refresh();
                note_layout(&mut probes, &cap, &mut warnings);
                continue;
            }
            r = cap.events.readable() => {
                r?;
                cap.drain();
                continue;
            }
            _ = ticker.tick() => {}
        }
        if !alive() {
            break StopReason::TargetExited;
        }
        cap.refresh();
        note_layout(&mut probes, &cap, &mut warnings);
        if let Err(e) = crate::aggregate::prune_inflight(&mut probes.ebpf, pid) {
            warnings.push(format!("pruning per-thread state: {e}"));
        }
        let snap_at = Instant::now();
        let snap = cap.snapshot(&probes)?;
        let now_ms = t_ms();
        record_tick(&mut rec, &mut symbolizer, &cap, &probes, now_ms, &snap)?;
        if let Some(p) = push.as_mut() {
            p.tick(&rec.timeline, now_ms, false);
        }
        if opts.status {
            match &push {
                Some(p) => say(format_args!(
                    "{} | {}",
                    status.line(&snap, snap_at),
                    p.summary().counts()
                )),
                None => say(format_args!("{}", status.line(&snap, snap_at))),
            }
        }
    };

    if stop != StopReason::TargetExited {
        cap.refresh();
    }
    // The last tick is read while every probe is still attached: detaching
    // takes a while (one probe at a time), and calls made meanwhile would see
    // some probes and not others (entries without returns, frees of
    // allocations never seen). What happens during the detach is not counted.
    let snap = cap.snapshot(&probes)?;
    let end_ms = t_ms();
    record_tick(&mut rec, &mut symbolizer, &cap, &probes, end_ms, &snap)?;
    rec.finish(end_ms);
    if let Some(p) = push.as_mut() {
        p.tick(&rec.timeline, end_ms, true);
    }
    let (outstanding, now_ns) = ages::outstanding(&probes, &cap, &rec).unwrap_or_else(|e| {
        warnings.push(format!("reading allocation ages: {e}"));
        (Vec::new(), 0)
    });
    warnings.extend(probes.detach());
    // After the detach: waiting for the backend never keeps probes in the target.
    let push = push.map(publish::PushTicker::finish);
    if let Some(e) = &rec.write_error {
        warnings.push(format!("the recording stopped at its last whole tick: {e}"));
    }
    let ev = &cap.events.stats;
    if ev.malformed > 0 {
        warnings.push(format!(
            "{} malformed ring-buffer records ignored",
            ev.malformed
        ));
    }
    if cap.samples.unmatched_frees > 0 || cap.samples.stacks_dropped > 0 {
        warnings.push(format!(
            "{} sampled frees had no sample, {} samples exceeded the stack table",
            cap.samples.unmatched_frees, cap.samples.stacks_dropped
        ));
    }
    if ev.samples > 0 {
        say(format_args!(
            "heapscope: {} stacks unwound, {:.1} µs each; stop reasons: {:?}",
            ev.samples,
            ev.unwind_time.as_secs_f64() * 1e6 / ev.samples as f64,
            cap.unwinder.stops
        ));
    }
    for (module, n) in &rec.fp_cut {
        warnings.push(format!(
            "--stacks fp: {n} stacks left the code after a frame in {module}, which has no \
             frame pointers; their outer frames are dropped (--stacks dwarf unwinds it)"
        ));
    }
    if !cap.have_maps {
        warnings.push(format!(
            "no memory map of pid {pid} could be read; frames are unresolved"
        ));
    }
    Ok(SessionResult {
        timeline: rec.timeline,
        meta,
        stop,
        outstanding,
        now_ns,
        start_unix_ms,
        push,
        warnings,
    })
}
