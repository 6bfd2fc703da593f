//! The capture thread: drains the ring buffer in bounded batches, unwinds,
//! takes a snapshot on each tick (its new sites are symbolized on a thread
//! of their own, see `symbolizing`), feeds the outputs, and on stop reads
//! the last tick and detaches. Nothing here runs on the async runtime's
//! thread, so a slow unwind never delays signals, timers or a server, and a
//! cold symbolization (seconds for a large module) never stops the draining.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::events::rings::RingSet;

use crate::aggregate::{RawSnapshot, SiteRef};
use crate::probes::Probes;

use crate::record::Header;
use crate::timeline::{ProfileMeta, Timeline};

use super::capture::Capture;
use super::control::Control;
use super::output::{Outputs, SessionEvent, SessionOutput};
use super::recording::RecordingOutput;
use super::sites::SiteIds;
use super::symbolizing::SymbolizerThread;
use super::{ages, SessionError, SessionOptions, SessionResult, StopReason};

mod procs;
mod ticks;

use ticks::{PendingTick, MAX_PENDING_TICKS};

/// Most records counted (and discarded) after the last tick: the probes are
/// still attached then and may keep writing.
const MAX_UNREAD_COUNT: u64 = 1 << 22;
/// Longest the stop waits for the ring's backlog to be applied.
const FINAL_DRAIN: Duration = Duration::from_secs(2);
/// Least time between two reads of a map the probes asked for.
const WANTED_LAYOUT_EVERY: Duration = Duration::from_millis(5);
/// What the capture thread keeps besides the capture itself.
struct Worker {
    probes: Probes,
    cap: Capture,
    outputs: Outputs,
    timeline: Timeline,
    ids: SiteIds,
    symbolizing: SymbolizerThread,
    /// Ticks waiting for their new sites' symbols, oldest first.
    pending: VecDeque<PendingTick>,
    /// Sites handed to the symbolizer thread and not registered yet.
    in_flight: HashSet<SiteRef>,
    /// New sites whose frame-pointer stack was not in the stack table.
    missing_stacks: u64,
    /// Children that exited before their probes went in (after the first,
    /// which is said when it happens, counted and said at the end).
    gone_before_probes: u64,
    /// Ticks not taken because [`MAX_PENDING_TICKS`] were waiting.
    ticks_skipped: u64,
    /// Every warning sent, in order (also returned in the result).
    warnings: Vec<String>,
    /// Frame-pointer stacks cut where the walk left executable code, by the
    /// module it broke in (see `resolve::Resolver::fp_cut`).
    fp_cut: BTreeMap<String, u64>,
    /// Read glibc's footprint split every tick.
    glibc: bool,
    /// The name of every process profiled, by pid (kept after it exits).
    comms: BTreeMap<u32, String>,
    /// `--max-overhead`.
    guard: Option<super::guard::SessionGuard>,
    /// The cgroup whose members are profiled (`--cgroup`, `--container`).
    cgroup: Option<super::CgroupWatch>,
    /// Cgroup members that could not be profiled (not tried again).
    refused: std::collections::BTreeSet<u32>,
    /// How to find a process's allocator again after an exec.
    reprobe: Option<super::ProbeSpec>,
    /// Processes that exited: their memory maps go after the next tick's
    /// symbolization (their last sites may still need them).
    exited: Vec<u32>,
    /// When a process's map was last read for the probes' request.
    layout_read: Option<Instant>,
    /// heapscope's own RSS against its bound, read every tick.
    memory: crate::selfmem::SelfMemory,
}

impl Worker {
    /// Sends a warning once, however often it happens.
    fn warn(&mut self, msg: String) {
        if !self.warnings.contains(&msg) {
            self.outputs.event(&SessionEvent::Warning(msg.clone()));
            self.warnings.push(msg);
        }
    }
}

/// Most reads of the counters while waiting for them to stop moving.
const SETTLE_READS: u32 = 100;

/// Waits until programs that passed the armed check before it was cleared
/// have finished: the counters read the same twice in a row (a program runs
/// for microseconds; a millisecond apart, at most [`SETTLE_READS`] times).
fn settle(probes: &Probes) {
    let mut prev = crate::aggregate::read_counters(&probes.ebpf).ok();
    for _ in 0..SETTLE_READS {
        std::thread::sleep(Duration::from_millis(1));
        let now = crate::aggregate::read_counters(&probes.ebpf).ok();
        if now.is_none() || now == prev {
            return;
        }
        prev = now;
    }
}

/// Runs the capture until `control` says stop, then detaches.
pub(super) fn run(
    mut probes: Probes,
    ring: RingSet,
    opts: &SessionOptions,
    output: Box<dyn SessionOutput>,
    control: &Control,
) -> Result<SessionResult, SessionError> {
    let pid = probes.pid;
    let mut phases = crate::phases::Phases::new("attach session");
    // Up to "attached", this thread runs ahead of a saturating target as
    // the attach did (see `process::priority`).
    let raised = opts
        .raise_priority
        .then(|| crate::process::priority::raise().ok())
        .flatten();
    // Records leave the ring on a thread of their own (raised like this
    // one), into a queue of at most half the ring's size (4 MiB at most).
    let queue_bytes = (probes.ringbuf_bytes as usize / 2).min(crate::events::pump::MAX_QUEUE_BYTES);
    let ring = crate::events::pump::start(ring, queue_bytes, opts.raise_priority)
        .map_err(|source| SessionError::Thread { pid, source })?;
    let mut cap = Capture::new(pid, ring, probes.stack_copy);
    if probes.user_live {
        cap.samples.hold_live();
    }
    phases.mark("capture state (maps)");
    // Sampled blocks are placed in arenas (and cross-thread frees judged by
    // arena) where their samples reach userspace: DWARF stacks; not for a
    // custom pool's blocks, which have no glibc header.
    cap.glibc = opts.glibc_footprint
        && opts.block_homes
        && opts.stack_mode == profiler_common::StackMode::Dwarf;
    if opts.stack_mode == profiler_common::StackMode::Dwarf {
        cap.preload_unwind_tables();
        phases.mark("unwind tables");
    }
    // The starting point: counting begins here, with the target's map read,
    // not when the probes went in.
    probes.arm()?;
    phases.mark("armed");
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
    let mut outputs = Outputs::default();
    if let Some(path) = &opts.record {
        outputs.push(RecordingOutput::create(path, &header)?);
    }
    outputs.0.push(output);
    let mut w = Worker {
        probes,
        cap,
        outputs,
        timeline: Timeline::default(),
        ids: SiteIds::default(),
        symbolizing: SymbolizerThread::start()
            .map_err(|source| SessionError::Thread { pid, source })?,
        pending: VecDeque::new(),
        in_flight: HashSet::new(),
        ticks_skipped: 0,
        missing_stacks: 0,
        gone_before_probes: 0,
        warnings: Vec::new(),
        fp_cut: BTreeMap::new(),
        glibc: opts.glibc_footprint,
        comms: BTreeMap::new(),
        guard: opts.max_overhead.map(|budget| {
            super::guard::SessionGuard::new(pid, budget, opts.stack_mode, opts.sample_rate)
        }),
        cgroup: opts.cgroup.clone(),
        refused: std::collections::BTreeSet::new(),
        reprobe: opts.reprobe.clone(),
        exited: Vec::new(),
        layout_read: None,
        memory: crate::selfmem::SelfMemory::default(),
    };
    // The allocator's code ranges go in before "attached" is announced: a
    // call the allocator makes on its own right after (an arena created in a
    // new thread's first free) must already be recognised.
    w.comms.insert(pid, w.cap.comm.clone());
    for p in w.probes.pids().to_vec() {
        let comm = if p == pid {
            w.cap.comm.clone()
        } else {
            super::capture::read_comm(p).unwrap_or_default()
        };
        w.comms.insert(p, comm.clone());
        w.timeline
            .set_process(super::tree::process_info(p, 0, &comm));
    }
    if w.probes.follow && w.cgroup.is_none() {
        // Children forked from now on are reported by the fork tracepoint
        // (already attached); those forked before are in /proc. (With a
        // cgroup, its members are the processes: children moved out of it
        // are not profiled.)
        let roots = w.probes.pids().to_vec();
        for (child, parent) in super::tree::descendants(&roots) {
            w.follow(child, parent, None, None);
        }
    }
    phases.mark("outputs and processes");
    w.rescan_cgroup();
    w.note_layout();
    phases.mark("allocator layout");
    // "attached" once every process present has its probes.
    w.outputs.event(&SessionEvent::Attached { header });
    drop(raised);
    let started = Instant::now();
    let t_ms = || started.elapsed().as_millis() as u64;

    // True while the last batch stopped at its limit: drain on without
    // waiting, but still look at the requests between batches.
    let mut more = false;
    let stop = loop {
        let ring_ready = more
            || control
                .wait(w.cap.events.source().ready_fd())
                .map_err(|source| SessionError::Poll { pid, source })?
                .ring;
        if let Some(stop) = control.stop() {
            break stop;
        }
        if control.take_refresh() {
            w.cap.refresh();
            w.note_layout();
        }
        if control.take_tick() {
            // Logged at debug level: a tick stalls the capture meanwhile.
            let mut phases = crate::phases::Phases::new("tick");
            w.cap.refresh();
            w.note_layout();
            phases.mark("maps refreshed");
            if let Err(e) = crate::aggregate::prune_inflight(&mut w.probes.ebpf) {
                w.warn(format!("pruning per-thread state: {e}"));
            }
            w.rescan_cgroup();
            phases.mark("per-thread state pruned");
            let now = t_ms();
            let snap = w.snapshot(now)?;
            phases.mark("snapshot");
            w.tick(now, snap, false)?;
            phases.mark("tick");
            more = true;
            continue;
        }
        w.finish_ticks(false)?;
        w.release_held_exit();
        more = ring_ready && w.cap.drain(1);
        w.wanted_layout();
        if let Err(e) = w.cap.push_stack_ends(&mut w.probes) {
            w.warn(format!("telling the probes the threads' stack ends: {e}"));
        }
        match w.cap.apply_execs(&mut w.probes, t_ms()) {
            Ok(notes) => {
                w.execs(notes);
                w.exits();
                w.follow_forks();
            }
            Err(e) => w.warn(format!("releasing the blocks of an exec'd image: {e}")),
        }
    };

    let mut phases = crate::phases::Phases::new("stop");
    if stop != StopReason::TargetExited {
        w.cap.refresh();
    }
    phases.mark("maps refreshed");
    // Counting stops first, in every program at once, so that the counters
    // (read one at a time), the call sites and the live map describe one
    // moment, and the ring stops filling.
    match w.probes.disarm() {
        Ok(()) => settle(&w.probes),
        Err(e) => w.warn(format!(
            "stopping the count before the last snapshot: {e}; its counters were read \
             while the target ran and may disagree by a few calls"
        )),
    }
    phases.mark("counting stopped");
    // Records already in the ring describe calls made before that: apply
    // them, for a bounded time, so that a sample's free is not left behind
    // its allocation (a sampled block would stay live for good).
    // The pump goes first (what it took is still applied, then the ring is
    // read directly): the backlog is then read at this thread's priority.
    w.cap.events.source_mut().stop_pump();
    let deadline = Instant::now() + FINAL_DRAIN;
    while Instant::now() < deadline && w.cap.drain(1) {}
    phases.mark("final drain");
    // The last tick is read while every probe is still attached: detaching
    // takes a while (one probe at a time), and calls made meanwhile would see
    // some probes and not others (entries without returns, frees of
    // allocations never seen). What happens during the detach is not counted.
    let end_ms = t_ms();
    let snap = w.snapshot(end_ms)?;
    w.tick(end_ms, snap, true)?;
    w.finish_ticks(true)?;
    phases.mark("last snapshot and tick (symbolization)");
    let unread = w.cap.events.discard_rest(MAX_UNREAD_COUNT);
    if let Some(problem) = w.outputs.finish(end_ms) {
        w.warn(problem);
    }
    phases.mark("unread records discarded, outputs finished");
    let (outstanding, now_ns) = match ages::outstanding(&w.probes, &w.cap, &w.ids) {
        Ok(found) => found,
        Err(e) => {
            w.warn(format!("reading allocation ages: {e}"));
            (Vec::new(), 0)
        }
    };
    if let Some(e) = w.probes.exec_watch_error() {
        let msg = format!(
            "an exec of pid {pid} cannot be noticed (the sched_process_exec tracepoint \
             did not attach: {e}); after an exec the old program's blocks would stay live"
        );
        w.warn(msg);
    }
    // While the target still runs: its chunk headers and smaps.
    let homes = opts.glibc_footprint && opts.block_homes;
    let arena_report = if homes && stop != StopReason::TargetExited {
        match super::arenas::arena_report(pid, &outstanding, &w.cap.maps) {
            Ok(r) => Some(r),
            Err(e) => {
                w.warn(format!("reading glibc's arenas of pid {pid}: {e}"));
                None
            }
        }
    } else {
        None
    };
    let live_by_process = if w.cap.samples.holds_live() {
        Ok(w.cap.samples.live_by_process())
    } else {
        super::tree::live_by_process(&w.probes.ebpf)
    };
    let processes = match live_by_process {
        Ok(by_pid) => w
            .probes
            .pids()
            .iter()
            .map(|p| {
                let (blocks, bytes) = by_pid.get(p).copied().unwrap_or((0, 0));
                super::tree::ProcessLive {
                    pid: *p,
                    comm: super::capture::read_comm(*p)
                        .or_else(|| w.comms.get(p).cloned())
                        .unwrap_or_default(),
                    blocks,
                    bytes,
                }
            })
            .collect(),
        Err(e) => {
            w.warn(format!("reading the live heap per process: {e}"));
            Vec::new()
        }
    };
    phases.mark("ages, arenas, live per process");
    let detaching = Instant::now();
    // With --attach-priority, detaching runs ahead of a saturating target too.
    let raised = opts
        .raise_priority
        .then(|| crate::process::priority::raise().ok())
        .flatten();
    let errors = w.probes.detach();
    drop(raised);
    let detach_time = detaching.elapsed();
    phases.mark("detach");
    for e in errors {
        w.warn(e);
    }
    if unread > 0 {
        w.warn(format!(
            "{unread} ring-buffer records were still unread when the session stopped; \
             their allocations and frees are missing from the per-site numbers"
        ));
    }
    if w.ticks_skipped > 0 {
        let msg = format!(
            "{} ticks were not taken while {MAX_PENDING_TICKS} earlier ones waited for their \
             new call sites to be symbolized (the timeline has gaps there)",
            w.ticks_skipped
        );
        w.warn(msg);
    }
    let queue = w.cap.events.source().queue();
    if queue.full_waits() > 0 {
        let msg = format!(
            "the queue between the ring buffer and unwinding ({} MiB) was full {} times: \
             records waited in the ring meanwhile (any that did not fit are counted as \
             ring buffer lost)",
            queue_bytes >> 20,
            queue.full_waits()
        );
        w.warn(msg);
    }
    let ev = w.cap.events.stats.clone();
    if ev.malformed > 0 {
        w.warn(format!(
            "{} malformed ring-buffer records ignored",
            ev.malformed
        ));
    }
    if ev.homes_unknown > 0 {
        w.warn(format!(
            "{} sampled blocks could not be placed in a glibc arena (their chunk header \
             was unmapped or unreadable when read, after the allocation): the per-arena \
             live bytes leave them out",
            ev.homes_unknown
        ));
    }
    let samples = &w.cap.samples;
    if samples.unmatched_frees > 0 || samples.stacks_dropped > 0 {
        let msg = format!(
            "{} sampled frees had no sample, {} samples exceeded the stack table",
            samples.unmatched_frees, samples.stacks_dropped
        );
        w.warn(msg);
    }
    if ev.samples > 0 {
        let stops: BTreeMap<_, _> = w.cap.unwinder.stops.iter().map(|(k, v)| (*k, *v)).collect();
        let x = &w.cap.extents;
        let copies = super::output::StackCopies {
            learned: x.learned_copies,
            learned_bytes: x.learned_bytes,
            cut_short: x.cut_short,
        };
        // One sample in TIME_ONE_IN is timed: scaled to all of them.
        let time = ev
            .unwind_time
            .mul_f64(ev.samples as f64 / ev.timed.max(1) as f64);
        w.outputs.event(&SessionEvent::UnwindStats {
            stacks: ev.samples,
            repeated: w.cap.unwinder.memo.hits,
            time,
            stops,
            copies,
        });
    }
    if w.gone_before_probes > 1 {
        let msg = format!(
            "{} children exited before their probes went in: their allocations are not \
             counted",
            w.gone_before_probes
        );
        w.warn(msg);
    }
    if w.missing_stacks > 0 {
        let msg = format!(
            "{} call sites had a stack id missing from the stack table: they are shown \
             without frames",
            w.missing_stacks
        );
        w.warn(msg);
    }
    for (module, n) in std::mem::take(&mut w.fp_cut) {
        w.warn(format!(
            "--stacks fp: {n} stacks left the code after a frame in {module}, which has no \
             frame pointers; their outer frames are dropped (--stacks dwarf unwinds it)"
        ));
    }
    if !w.cap.have_maps {
        w.warn(format!(
            "no memory map of pid {pid} could be read; frames are unresolved"
        ));
    }
    w.outputs.event(&SessionEvent::Stopped {
        reason: stop,
        detached_in: detach_time,
    });
    // Once the guard sampled less, per-site numbers are estimates at its
    // last rate (each sample carries its own weight, so sums stay unbiased).
    let sample_rate = w.guard.as_ref().map_or(opts.sample_rate, |g| g.rate());
    let overhead = w.guard.as_ref().map(|g| g.summary(opts.sample_rate));
    w.memory.finish();
    Ok(SessionResult {
        memory: w.memory,
        overhead,
        timeline: w.timeline,
        meta: ProfileMeta {
            pid,
            comm: w.cap.execs.program_names(pid, &w.cap.comm),
            sample_rate,
            allocator: opts.allocator.clone(),
            allocator_notes: opts.allocator_notes.clone(),
        },
        stop,
        outstanding,
        now_ns,
        start_unix_ms,
        warnings: w.warnings,
        arenas: arena_report,
        detach_time,
        processes,
    })
}
