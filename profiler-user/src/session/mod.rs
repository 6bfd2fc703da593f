//! One profiling session: tick, print status, stop on signal / duration /
//! target exit, detach, and build the final symbolized profile.

pub mod capture;
pub mod resolve;
pub mod status;

use std::time::{Duration, Instant};

use crate::aggregate::{self, RawSnapshot};
use crate::probes::Probes;
use crate::profile::Profile;
use crate::symbolize::Symbolizer;

/// How a session is run.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Stop after this long; `None` runs until a signal or the target exits.
    pub duration: Option<Duration>,
    /// Interval between snapshots and status lines.
    pub tick: Duration,
    /// Print a status line on stderr every tick.
    pub status: bool,
}

/// Why the session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Interrupted,
    Terminated,
    TargetExited,
}

impl StopReason {
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Duration => "duration elapsed",
            StopReason::Interrupted => "interrupted (SIGINT)",
            StopReason::Terminated => "terminated (SIGTERM)",
            StopReason::TargetExited => "target exited",
        }
    }
}

/// The result of a session.
pub struct SessionResult {
    pub profile: Profile,
    pub stop: StopReason,
    /// Non-fatal problems met on the way (detach errors, unreadable maps).
    pub warnings: Vec<String>,
}

const EARLY_REFRESH: Duration = Duration::from_millis(20);
const EARLY_PERIOD: Duration = Duration::from_secs(2);

/// True while `/proc/PID` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name, which may contain spaces.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Runs an attached session until it is stopped, then detaches and builds the profile.
/// `alive` tells whether the target still runs (for a child, it also reaps it).
pub async fn run(
    mut probes: Probes,
    opts: &SessionOptions,
    mut alive: impl FnMut() -> bool,
) -> anyhow::Result<SessionResult> {
    use tokio::signal::unix::{signal, SignalKind};

    let pid = probes.pid;
    let mut cap = capture::Capture::new(&mut probes)?;
    let mut warnings = Vec::new();
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let started = Instant::now();
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
            _ = tokio::time::sleep(until_deadline) => break StopReason::Duration,
            _ = early.tick(), if started.elapsed() < EARLY_PERIOD => {
                cap.refresh();
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
        if let Err(e) = aggregate::prune_inflight(&mut probes.ebpf, pid) {
            warnings.push(format!("pruning per-thread state: {e}"));
        }
        let snap = cap.snapshot(&probes)?;
        if opts.status {
            eprintln!("{}", status.line(&snap));
        }
    };

    if stop != StopReason::TargetExited {
        cap.refresh();
    }
    let snap = cap.snapshot(&probes)?;
    let duration_secs = started.elapsed().as_secs_f64();
    warnings.extend(probes.detach());
    // Records written between the last drain and the detach.
    cap.drain();
    let snap = RawSnapshot {
        sites: snap.sites,
        totals: snap.totals,
    };
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
        eprintln!(
            "heapscope: {} stacks unwound, {:.1} µs each; stop reasons: {:?}",
            ev.samples,
            ev.unwind_time.as_secs_f64() * 1e6 / ev.samples as f64,
            cap.unwinder.stops
        );
    }
    if !cap.have_maps {
        warnings.push(format!(
            "no memory map of pid {pid} could be read; frames are unresolved"
        ));
    }
    let comm = cap.comm.clone();
    let mut symbolizer = Symbolizer::default();
    let mut resolver = resolve::Resolver::new(pid, &cap.maps, &mut symbolizer);
    let sites = resolver.sites(&snap, &probes.ebpf, &cap.samples)?;
    if resolver.missing_stacks > 0 {
        warnings.push(format!(
            "{} stacks were missing from the stack map",
            resolver.missing_stacks
        ));
    }
    let profile = Profile {
        pid,
        comm,
        duration_secs,
        sites,
        totals: snap.totals,
    };
    Ok(SessionResult {
        profile,
        stop,
        warnings,
    })
}
