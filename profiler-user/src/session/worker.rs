//! The capture thread: drains the ring buffer in bounded batches, unwinds,
//! takes a snapshot and symbolizes new sites on each tick, feeds the outputs,
//! and on stop reads the last tick and detaches. Nothing here runs on the
//! async runtime's thread, so a slow unwind or a cold symbolization (hundreds
//! of milliseconds for a large module) never delays signals, timers or a server.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime};

use aya::maps::{MapData, RingBuf};

use crate::aggregate::RawSnapshot;
use crate::probes::Probes;
use crate::process::memory;
use crate::record::Header;
use crate::symbolize::{Symbolizer, SymbolizerOptions};
use crate::timeline::{ProfileMeta, Tick, Timeline};

use super::capture::Capture;
use super::control::Control;
use super::output::{Outputs, SessionEvent, SessionOutput, TickUpdate};
use super::recording::RecordingOutput;
use super::sites::SiteIds;
use super::{ages, resolve, SessionError, SessionOptions, SessionResult, StopReason};

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
    symbolizer: Symbolizer,
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
}

impl Worker {
    /// Sends a warning once, however often it happens.
    fn warn(&mut self, msg: String) {
        if !self.warnings.contains(&msg) {
            self.outputs.event(&SessionEvent::Warning(msg.clone()));
            self.warnings.push(msg);
        }
    }

    /// Attaches probes to one more process (a child of `parent`, or with
    /// `target` one that joined the cgroup) and says so.
    fn follow(
        &mut self,
        pid: u32,
        parent: u32,
        forked_ns: Option<u64>,
        target: Option<&crate::probes::target::AllocatorTarget>,
    ) {
        let comm = super::capture::read_comm(pid).unwrap_or_default();
        let added = match target {
            Some(t) => self.probes.add_process(pid, Some(t)),
            None => self.probes.add_child(pid, parent),
        };
        match added {
            Ok(0) => {}
            Ok(_) => {
                self.note_layout_of(pid, true);
                let probes_after_ms =
                    forked_ns.map_or(0, |t| ages::monotonic_ns().saturating_sub(t) / 1_000_000);
                self.comms.insert(pid, comm.clone());
                self.timeline
                    .set_process(super::tree::process_info(pid, parent, &comm));
                let f = super::tree::Followed {
                    pid,
                    parent,
                    comm,
                    forked: forked_ns.is_some(),
                    probes_after_ms,
                    joined: target.is_some(),
                };
                self.outputs.event(&SessionEvent::Followed(f));
            }
            // Gone already (a short-lived child) or refused: its allocations
            // are not seen, and the user is told.
            Err(e) if target.is_some() => self.warn(format!(
                "pid {pid} ({comm}) joined the cgroup but could not be followed: {e}; \
                 its allocations are not counted"
            )),
            Err(e) => self.warn(format!(
                "pid {pid} ({comm}), child of pid {parent}, could not be followed: {e}; \
                 its allocations are not counted"
            )),
        }
    }

    /// Profiles the processes found in the cgroup that have no probes yet
    /// (moved in, or forked before their parent was followed); one that
    /// cannot be profiled is said once and not tried again.
    fn rescan_cgroup(&mut self) {
        let Some(watch) = self.cgroup.clone() else {
            return;
        };
        let members = match crate::process::cgroup::procs(&watch.dir) {
            Ok(m) => m,
            Err(e) => {
                self.warn(format!("rescanning the cgroup: {e}"));
                return;
            }
        };
        for pid in members {
            if self.probes.pids().contains(&pid) || !self.refused.insert(pid) {
                continue;
            }
            match crate::probes::target::discover(pid, watch.skip_prologue, &watch.custom) {
                Ok(t) => {
                    self.refused.remove(&pid);
                    self.follow(pid, 0, None, Some(&t));
                }
                Err(e) => {
                    let comm = super::capture::read_comm(pid).unwrap_or_default();
                    self.warn(format!(
                        "pid {pid} ({comm}) is in the cgroup but cannot be profiled: {e}"
                    ));
                }
            }
        }
    }

    /// Sends the exits applied since the last call.
    fn exits(&mut self) {
        for mut n in std::mem::take(&mut self.cap.exit_notes) {
            n.comm = self.comms.get(&n.pid).cloned().unwrap_or_default();
            if let Err(e) = self.probes.forget_layout(n.pid) {
                self.warn(format!("forgetting the layout of pid {}: {e}", n.pid));
            }
            self.exited.push(n.pid);
            self.outputs.event(&SessionEvent::Exited(n));
        }
    }

    /// Follows the children forked since the last call.
    fn follow_forks(&mut self) {
        for ev in std::mem::take(&mut self.cap.forks) {
            self.follow(ev.tgid, ev.parent, Some(ev.ts_ns), None);
        }
    }

    /// Sends the execs applied; the process is named after both programs.
    fn execs(&mut self, notes: Vec<super::exec::ExecNote>) {
        for mut n in notes {
            if n.old_comm.is_empty() {
                n.old_comm = self.comms.get(&n.pid).cloned().unwrap_or_default();
            }
            // The new program's allocator: another one (a static binary,
            // another library) is probed now; the old probes are on files it
            // does not map, so nothing is counted twice.
            let new_target = self.reprobe.as_ref().and_then(|spec| {
                crate::probes::target::discover(n.pid, spec.skip_prologue, &spec.custom).ok()
            });
            let changed = new_target.as_ref().filter(|t| {
                let old = self.probes.target_of(n.pid);
                t.modules != old.modules || t.allocator != old.allocator
            });
            if n.from_thread.is_some() {
                // The old probes died with the old main thread: all again.
                let t = changed.cloned();
                n.reattached = Some(self.probes.reattach(n.pid, t).map_err(|e| e.to_string()));
            } else if let Some(t) = changed.cloned() {
                let what = t.headline();
                let r = self.probes.reattach(n.pid, Some(t));
                n.new_allocator = Some((what, r.map_err(|e| e.to_string())));
            }
            // The new program maps its allocator elsewhere (its map was
            // read again when the exec was applied).
            self.note_layout_of(n.pid, false);
            self.comms.insert(n.pid, n.new_comm.clone());
            if let Some(p) = self.timeline.processes().iter().find(|p| p.pid == n.pid) {
                let mut p = p.clone();
                p.comm = format!("{} → {}", p.comm, n.new_comm);
                let fresh = super::tree::process_info(n.pid, 0, "").cmdline;
                if !fresh.is_empty() {
                    p.cmdline = fresh;
                }
                self.timeline.set_process(p);
            }
            self.outputs.event(&SessionEvent::Exec(n));
        }
    }

    /// Drains, applies execs and reads one raw snapshot.
    fn snapshot(&mut self, t_ms: u64) -> Result<RawSnapshot, SessionError> {
        let (snap, notes) = self.cap.snapshot(&mut self.probes, t_ms)?;
        self.execs(notes);
        self.exits();
        self.follow_forks();
        Ok(snap)
    }

    /// Tells the probes every profiled process's allocator layout: the
    /// target's from its map (re-read each tick), another process's read
    /// again while its trampoline page is not known yet.
    fn note_layout(&mut self) {
        for pid in self.probes.pids().to_vec() {
            let fresh = !self.probes.layout_complete(pid);
            self.note_layout_of(pid, fresh);
        }
    }

    /// Reads the map of a process whose probes ran before its layout was
    /// complete (its trampoline page appears at its first probe hit): its
    /// calls are judged without it until then. At most every
    /// [`WANTED_LAYOUT_EVERY`], so a process whose page never shows costs
    /// little.
    fn wanted_layout(&mut self) {
        match self.probes.take_wanted_layout() {
            Ok(Some(pid)) => {
                let now = Instant::now();
                if self
                    .layout_read
                    .is_some_and(|t| now.duration_since(t) < WANTED_LAYOUT_EVERY)
                {
                    return;
                }
                self.layout_read = Some(now);
                if pid == self.cap.pid {
                    self.cap.refresh();
                }
                self.note_layout_of(pid, true);
            }
            Ok(None) => {}
            Err(e) => self.warn(format!("reading the probes' layout requests: {e}")),
        }
    }

    /// Tells the probes the allocator layout of `pid` (its map read now when
    /// `fresh`: it was just attached, or exec'd).
    fn note_layout_of(&mut self, pid: u32, fresh: bool) {
        let maps = if pid == self.cap.pid {
            Some(&self.cap.maps)
        } else {
            self.cap.others.get(pid, fresh)
        };
        let Some(maps) = maps else {
            // Gone already, or its map unreadable: its calls are counted
            // as judged without a layout.
            return;
        };
        let msg = match self.probes.note_layout(pid, maps) {
            Ok(0) => return,
            Ok(dropped) => format!(
                "{dropped} of the allocator's code ranges of pid {pid} did not fit the \
                 probes' table: allocator-internal calls from them may be counted as the \
                 program's"
            ),
            Err(e) => format!("telling the probes the layout of pid {pid}: {e}"),
        };
        self.warn(msg);
    }

    /// Symbolizes the sites of `snap` seen for the first time and sends the tick.
    fn tick(&mut self, t_ms: u64, snap: &RawSnapshot, last: bool) -> Result<(), SessionError> {
        let new = self.ids.new_sites(snap);
        let new_sites = if new.sites.is_empty() {
            Vec::new()
        } else {
            // Each process's stacks against its own memory map (ASLR gives
            // unrelated processes other layouts); sites are ordered by pid,
            // so the groups keep the order of `new.sites`.
            let mut sites = Vec::with_capacity(new.sites.len());
            let mut pids: Vec<u32> = new.sites.keys().map(|k| k.pid).collect();
            pids.dedup();
            for pid in pids {
                let group = RawSnapshot {
                    sites: new
                        .sites
                        .iter()
                        .filter(|(k, _)| k.pid == pid)
                        .map(|(k, v)| (*k, v.clone()))
                        .collect(),
                    totals: new.totals.clone(),
                };
                let maps = match pid == self.cap.pid {
                    true => &self.cap.maps,
                    false => self.cap.others.get(pid, false).unwrap_or(&self.cap.maps),
                };
                let mut resolver = resolve::Resolver::new(pid, maps, &mut self.symbolizer);
                sites.extend(resolver.sites(&group, &self.probes.ebpf, &self.cap.samples)?);
                for (module, n) in std::mem::take(&mut resolver.fp_cut) {
                    *self.fp_cut.entry(module).or_insert(0) += n;
                }
            }
            for pid in std::mem::take(&mut self.exited) {
                self.cap.others.forget(pid);
            }
            self.ids.add(new.sites.keys().copied(), sites)
        };
        if let Some(g) = &mut self.guard {
            if let Some((status, error)) = g.tick(t_ms, &snap.totals, &mut self.probes) {
                self.outputs.event(&SessionEvent::Overhead(status));
                if let Some(e) = error {
                    self.warn(e);
                }
            }
        }
        let (mem, split) = match memory::sample_and_footprint(self.cap.pid, self.glibc) {
            Ok((m, fp)) => (Some(m), fp),
            Err(_) => (None, None),
        };
        // Without placed blocks an arena's live bytes are unknown, not 0.
        let split = split.filter(|_| self.cap.glibc);
        let arenas = split.map_or_else(Vec::new, |fp| {
            super::arenas::arena_samples(&fp, &self.cap.samples.live_by_home(self.cap.pid))
        });
        let tick = Tick {
            t_ms,
            sites: self.ids.stats(snap),
            totals: snap.totals.clone(),
            mem,
            arenas,
        };
        for (_, info) in &new_sites {
            self.timeline.add_site(info.clone());
        }
        self.timeline.push(tick.clone());
        self.outputs.tick(&TickUpdate {
            new_sites: &new_sites,
            tick: &tick,
            timeline: &self.timeline,
            last,
        });
        Ok(())
    }
}

/// Runs the capture until `control` says stop, then detaches.
pub(super) fn run(
    mut probes: Probes,
    ring: RingBuf<MapData>,
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
    let mut cap = Capture::new(pid, ring, probes.stack_copy);
    phases.mark("capture state (maps)");
    // Sampled blocks are placed in arenas (and cross-thread frees judged by
    // arena) where their samples reach userspace: DWARF stacks; not for a
    // custom pool's blocks, which have no glibc header.
    cap.glibc = opts.glibc_footprint
        && opts.block_homes
        && opts.stack_mode == profiler_common::StackMode::Dwarf;
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
        // Debug files fetched by debuginfod clients (heapscope's or elfutils'
        // `debuginfod-find`) are read from their cache; nothing is fetched here.
        symbolizer: Symbolizer::with_options(SymbolizerOptions {
            debuginfod_caches: vec![crate::debuginfod::default_cache_dir()],
            ..SymbolizerOptions::default()
        }),
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
                .wait(w.cap.events.source().as_fd())
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
            w.cap.refresh();
            w.note_layout();
            if let Err(e) = crate::aggregate::prune_inflight(&mut w.probes.ebpf, pid) {
                w.warn(format!("pruning per-thread state: {e}"));
            }
            w.rescan_cgroup();
            let now = t_ms();
            let snap = w.snapshot(now)?;
            w.tick(now, &snap, false)?;
            more = true;
            continue;
        }
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
    // Records already in the ring describe calls made before the stop:
    // apply them, for a bounded time, so that a sample's free is not left
    // behind its allocation (a sampled block would stay live for good).
    let deadline = Instant::now() + FINAL_DRAIN;
    while Instant::now() < deadline && w.cap.drain(1) {}
    phases.mark("final drain");
    // The last tick is read while every probe is still attached: detaching
    // takes a while (one probe at a time), and calls made meanwhile would see
    // some probes and not others (entries without returns, frees of
    // allocations never seen). What happens during the detach is not counted.
    let end_ms = t_ms();
    let snap = w.snapshot(end_ms)?;
    w.tick(end_ms, &snap, true)?;
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
    let processes = match super::tree::live_by_process(&w.probes.ebpf) {
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
    let ev = w.cap.events.stats.clone();
    if ev.malformed > 0 {
        w.warn(format!(
            "{} malformed ring-buffer records ignored",
            ev.malformed
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
        w.outputs.event(&SessionEvent::UnwindStats {
            stacks: ev.samples,
            time: ev.unwind_time,
            stops,
            copies,
        });
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
    Ok(SessionResult {
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
