//! One profiling session: tick, print status, stop on signal / duration /
//! target exit, detach, and build the final symbolized profile.

pub mod resolve;
pub mod status;

use std::time::{Duration, Instant};

use crate::aggregate::{self, regions::RegionTracker, RawSnapshot};
use crate::events::EventReader;
use crate::probes::Probes;
use crate::process::maps::MemoryMap;
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

/// Reads kernel state and drains events into one raw snapshot.
fn snapshot(
    probes: &Probes,
    events: &mut EventReader,
    tracker: &mut RegionTracker,
) -> anyhow::Result<RawSnapshot> {
    events.drain(tracker);
    let counters = aggregate::read_counters(&probes.ebpf)?;
    let sites = aggregate::read_sites(&probes.ebpf)?;
    Ok(aggregate::merge(&sites, &counters, tracker))
}

const EARLY_REFRESH: Duration = Duration::from_millis(20);
const EARLY_PERIOD: Duration = Duration::from_secs(2);

fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Keeps the newest memory map and name while the target lives: after it
/// exits, the last ones still symbolize what was captured.
fn refresh(pid: u32, maps: &mut Option<MemoryMap>, comm: &mut String) {
    if let Ok(m) = MemoryMap::read(pid) {
        if !m.regions.is_empty() {
            *maps = Some(m);
        }
    }
    if let Some(c) = read_comm(pid) {
        *comm = c;
    }
}

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
    let mut events = EventReader::new(&mut probes.ebpf)?;
    let mut tracker = RegionTracker::default();
    let mut warnings = Vec::new();
    let mut maps = MemoryMap::read(pid).ok();
    let mut comm = read_comm(pid).unwrap_or_default();
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
                refresh(pid, &mut maps, &mut comm);
                continue;
            }
            _ = ticker.tick() => {}
        }
        if !alive() {
            break StopReason::TargetExited;
        }
        refresh(pid, &mut maps, &mut comm);
        if let Err(e) = aggregate::prune_inflight(&mut probes.ebpf, pid) {
            warnings.push(format!("pruning per-thread state: {e}"));
        }
        let snap = snapshot(&probes, &mut events, &mut tracker)?;
        if opts.status {
            eprintln!("{}", status.line(&snap));
        }
    };

    if stop != StopReason::TargetExited {
        refresh(pid, &mut maps, &mut comm);
    }
    let snap = snapshot(&probes, &mut events, &mut tracker)?;
    let duration_secs = started.elapsed().as_secs_f64();
    warnings.extend(probes.detach());
    if events.malformed > 0 {
        warnings.push(format!(
            "{} malformed ring-buffer records ignored",
            events.malformed
        ));
    }
    let maps = match maps {
        Some(m) => m,
        None => {
            warnings.push(format!(
                "no memory map of pid {pid} could be read; frames are unresolved"
            ));
            MemoryMap::default()
        }
    };
    let mut symbolizer = Symbolizer::default();
    let mut resolver = resolve::Resolver::new(pid, &maps, &mut symbolizer);
    let sites = resolver.sites(&snap, &probes.ebpf)?;
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
