//! One profiling session: tick, stop on signal / duration / target exit,
//! detach; every tick goes into the timeline, which the final report is
//! computed from, and to the session's outputs ([`output`]).
//!
//! Two threads: the async side ([`run`]) waits for signals, the duration and
//! the tick timer and only sets request flags ([`control`]); the capture
//! thread ([`worker`]) owns the probes and does everything else (bounded
//! ring-buffer drains, unwinding, snapshots, symbolization, outputs, detach).

pub mod ages;
pub mod arenas;
pub mod capture;
pub mod control;
pub mod exec;
mod guard;
pub mod output;
pub mod publish;
pub mod recording;
pub mod resolve;
pub mod sites;
mod symbolizing;
pub mod tree;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::analysis::age::{AgeHistogram, OutstandingAlloc};
use crate::probes::{ProbeError, Probes};
use crate::record::RecordError;
use crate::timeline::{ProfileMeta, Timeline};
use control::Control;
use output::SessionOutput;

/// How a session is run.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Stop after this long; `None` runs until a signal or the target exits.
    pub duration: Option<Duration>,
    /// Interval between snapshots.
    pub tick: Duration,
    /// Write the timeline to this recording as it goes.
    pub record: Option<PathBuf>,
    /// Mean bytes between samples (0: exact), stored in the recording.
    pub sample_rate: u64,
    /// The allocator line and its warnings, kept in the recording and the report.
    pub allocator: String,
    pub allocator_notes: Vec<String>,
    /// The allocator is glibc: read its footprint split (smaps) every tick.
    pub glibc_footprint: bool,
    /// Place sampled blocks in glibc's arenas by their chunk headers at the
    /// end (off with a custom pool: its blocks are carved from the pool's
    /// own chunks and have no glibc header).
    pub block_homes: bool,
    /// Once stopped, finish and detach at a raised priority, every thread
    /// (see `process::priority`).
    pub raise_priority: bool,
    /// `--max-overhead`: the probes' budget in percent of the target's CPU.
    pub max_overhead: Option<f64>,
    /// How stacks are captured (the guard's cost per capture depends on it).
    pub stack_mode: profiler_common::StackMode,
    /// With `--cgroup`/`--container`: processes joining the cgroup later
    /// are profiled too (found at every tick in its `cgroup.procs`).
    pub cgroup: Option<CgroupWatch>,
    /// How to find a process's allocator again after it exec'd another
    /// program (`None`: the probes stay as they were).
    pub reprobe: Option<ProbeSpec>,
}

/// How the allocator of a process is found (the options of `attach`).
#[derive(Clone, Debug, Default)]
pub struct ProbeSpec {
    pub skip_prologue: bool,
    pub custom: crate::probes::custom::CustomAllocator,
}

/// A cgroup whose members are profiled, and how to probe a new one.
#[derive(Clone, Debug)]
pub struct CgroupWatch {
    /// The cgroup's directory under /sys/fs/cgroup.
    pub dir: PathBuf,
    pub skip_prologue: bool,
    pub custom: crate::probes::custom::CustomAllocator,
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
    /// How the reason reads in messages ("duration elapsed").
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

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Boxed: a probe error is large and sessions fail rarely.
    #[error(transparent)]
    Probe(Box<ProbeError>),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("cannot watch for SIGINT/SIGTERM/SIGHUP")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the capture thread for pid {pid}")]
    Thread {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for events of pid {pid}")]
    Poll {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the capture thread for pid {pid} panicked; the probes were detached when it unwound")]
    Panicked { pid: u32 },
}

impl From<ProbeError> for SessionError {
    fn from(e: ProbeError) -> Self {
        SessionError::Probe(Box::new(e))
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
    /// Non-fatal problems met on the way (detach errors, unreadable maps).
    pub warnings: Vec<String>,
    /// glibc's arenas with the sampled live blocks they hold, read at the end.
    pub arenas: Option<arenas::ArenaReport>,
    /// How long detaching every probe took.
    pub detach_time: Duration,
    /// Each profiled process's exact live blocks at the end, the first
    /// process first; one row when a single process was profiled.
    pub processes: Vec<tree::ProcessLive>,
    /// What `--max-overhead` did, when it was given.
    pub overhead: Option<crate::overhead::OverheadSummary>,
    /// heapscope's own memory against its bound.
    pub memory: crate::selfmem::SelfMemory,
}

impl SessionResult {
    /// The age histogram of the outstanding allocations.
    pub fn ages(&self) -> AgeHistogram {
        AgeHistogram::build(self.now_ns, &self.outstanding)
    }
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
/// it also reaps it); it is called on the caller's thread at every tick.
/// `output` receives every tick and event (see [`output`]), on the capture
/// thread; the recording of `opts.record` is written by the session itself.
/// `attach_priority`: the caller's raised priority (see `process::priority`),
/// kept for the session: before the capture thread has started (a caller
/// that went back to its own priority before that waited ~0.3 s for the
/// CPU under a saturating target), and after it, since this thread serves
/// the signals and ticks.
pub async fn run(
    mut probes: Probes,
    opts: &SessionOptions,
    mut alive: impl FnMut() -> bool,
    output: impl SessionOutput + 'static,
    attach_priority: Option<crate::process::priority::Raised>,
) -> Result<SessionResult, SessionError> {
    use tokio::signal::unix::{signal, SignalKind};

    let pid = probes.pid;
    let ring = probes
        .take_rings()
        .ok_or(ProbeError::MissingMap("EVENT_RINGS"))?;
    let control = Arc::new(Control::new().map_err(|source| SessionError::Poll { pid, source })?);
    let mut sigint = signal(SignalKind::interrupt()).map_err(SessionError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(SessionError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(SessionError::Signals)?;
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    {
        let control = Arc::clone(&control);
        let opts = opts.clone();
        let output: Box<dyn SessionOutput> = Box::new(output);
        crate::process::priority::inheriting(|| {
            std::thread::Builder::new()
                .name("heapscope-capture".into())
                .spawn(move || {
                    let result = worker::run(probes, ring, &opts, output, &control);
                    // The receiver is gone only when the session future was dropped.
                    let _ = done_tx.send(result);
                })
        })
        .map_err(|source| SessionError::Thread { pid, source })?;
    }
    // This thread serves the signals, ticks and --duration: a few
    // microseconds of work per event, which must not wait behind a
    // saturating target. With 200 spinning threads it saw SIGINT 20-300 ms
    // late at nice 0 and no sooner at nice -20 (sleeps overran by 34 ms at
    // the median there, 0.1 ms at SCHED_FIFO), so it keeps the raise.
    let _control = attach_priority;
    let finished = |r: Result<Result<SessionResult, SessionError>, _>| match r {
        Ok(result) => result,
        Err(_) => Err(SessionError::Panicked { pid }),
    };
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let mut ticker = tokio::time::interval(opts.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    // A freshly started command maps its libraries within milliseconds and may
    // exit before the first tick: refresh the memory map often at first.
    let mut early = tokio::time::interval(EARLY_REFRESH);

    let stop = loop {
        let until_deadline = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600 * 24 * 365));
        tokio::select! {
            // The capture thread ended on its own: an error (or a panic).
            r = &mut done => return finished(r),
            _ = sigint.recv() => break StopReason::Interrupted,
            _ = sigterm.recv() => break StopReason::Terminated,
            _ = sighup.recv() => break StopReason::HangUp,
            _ = tokio::time::sleep(until_deadline) => break StopReason::Duration,
            _ = early.tick(), if started.elapsed() < EARLY_PERIOD => {
                control.request_refresh();
                continue;
            }
            _ = ticker.tick() => {}
        }
        if !alive() {
            break StopReason::TargetExited;
        }
        control.request_tick();
    };
    // What is left (final drain, last snapshot, detach, report) is bounded:
    // run it ahead of a target that saturates the CPUs, on every thread.
    if opts.raise_priority {
        crate::process::priority::raise_all_for_exit();
    }
    control.request_stop(stop);
    finished(done.await)
}
