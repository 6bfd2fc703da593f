//! Everything a session accumulates while attached: events applied to the
//! region tracker and the sample table, the newest memory map, the unwinder.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::aggregate::{self, regions::ProcessRegions, samples::SampleTable, RawSnapshot};
use crate::events::rings::RingSet;

use crate::events::pump::Pumped;
use crate::events::{DrainLimits, EventReader, EventSink, ExecSeen, Homes};
use crate::probes::{ProbeError, Probes};
use crate::process::arenas::{ChunkHead, HeapInfoCache};
use crate::process::maps::{MemoryMap, Region};
use crate::process::vm::ProcessVm;
use crate::unwind::extent::{EndUpdate, StackExtents};
use crate::unwind::{ModulePaths, Unwinder};

/// Opens the module files the target mapped: through the handle the memory
/// map captured from `/proc/PID/map_files` (the mapped inode, even after a
/// deploy replaced or deleted the file), else by path inside the target's
/// root (containers) while that path still names the mapped file.
pub struct RootedFiles {
    pub pid: u32,
}

impl ModulePaths for RootedFiles {
    fn open_path(&self, maps: &MemoryMap, region: &Region) -> Option<PathBuf> {
        let m = maps.mapped_module(self.pid, region)?;
        if m.handle.is_some() {
            return Some(m.open_path);
        }
        // No handle: the path is only the mapped file if it is still that inode.
        let meta = std::fs::metadata(&m.open_path).ok()?;
        (!region.deleted && meta.ino() == region.inode).then_some(m.open_path)
    }
}

/// Most batches drained before a snapshot is taken: with the default limits
/// several times what an 8 MiB ring holds, so the ring is normally empty at
/// a tick, while a ring refilled as fast as it is read still lets the tick go.
pub const TICK_DRAIN_BATCHES: usize = 16;

/// The state of an attached session.
pub struct Capture {
    pub pid: u32,
    pub events: EventReader<Pumped<RingSet>>,
    pub regions: ProcessRegions,
    pub samples: SampleTable,
    pub unwinder: Unwinder,
    /// Each thread's stack end, learned from its unwinds.
    pub extents: StackExtents,
    pub maps: MemoryMap,
    /// The maps of the other profiled processes.
    pub others: crate::process::maps::OtherMaps,
    /// False until a non-empty memory map of the target was read.
    pub have_maps: bool,
    pub comm: String,
    /// The name before the last change `refresh` saw: an exec is read from
    /// the ring after the new name may already be in /proc.
    prev_comm: Option<String>,
    /// Execs seen in the event stream and not yet applied to the live map.
    pending_execs: Vec<ExecSeen>,
    /// Forks of profiled processes waiting for their probes.
    pub forks: Vec<profiler_common::ProcEvent>,
    /// What execs released so far.
    pub execs: super::exec::Released,
    /// What the exits of processes released so far.
    pub exits: super::exec::Released,
    /// Exits applied since the session last took them.
    pub exit_notes: Vec<super::exec::ExitNote>,
    /// Processes whose exit was applied (two last threads may both report it).
    exited: std::collections::BTreeSet<u32>,
    /// The allocator is glibc: each sampled block's arena is read from its
    /// chunk header as its sample is applied.
    pub glibc: bool,
    /// Lost sampled-free records when the sample table was last reconciled.
    free_lost_seen: u64,
    /// Each heap's arena, read once per tick.
    heaps: HeapInfoCache,
    /// The text of `/proc/PID/maps` behind `maps`: a refresh that reads the
    /// same text keeps `maps` and opens no module file again.
    maps_text: Vec<u8>,
}

pub(super) fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_maps(pid: u32) -> Option<MemoryMap> {
    MemoryMap::read(pid).ok().filter(|m| !m.regions.is_empty())
}

impl Capture {
    /// The state of a session on `pid`, reading events from `ring` (through
    /// its pump); DWARF samples copy `stack_copy` bytes of stack until their
    /// thread is known.
    pub fn new(pid: u32, ring: Pumped<RingSet>, stack_copy: u32) -> Capture {
        let maps = read_maps(pid);
        Capture {
            pid,
            events: EventReader::new(ring, DrainLimits::default()),
            regions: ProcessRegions::default(),
            samples: SampleTable::default(),
            unwinder: Unwinder::default(),
            extents: StackExtents::new(stack_copy),
            have_maps: maps.is_some(),
            maps: maps.unwrap_or_default(),
            others: crate::process::maps::OtherMaps::default(),
            comm: read_comm(pid).unwrap_or_default(),
            prev_comm: None,
            pending_execs: Vec::new(),
            forks: Vec::new(),
            execs: super::exec::Released::default(),
            exits: super::exec::Released::default(),
            exit_notes: Vec::new(),
            exited: std::collections::BTreeSet::new(),
            glibc: false,
            free_lost_seen: 0,
            heaps: HeapInfoCache::default(),
            maps_text: Vec::new(),
        }
    }

    /// Loads the unwind tables of every module the target maps (DWARF
    /// stacks), before the probes count: see `Unwinder::preload`.
    pub fn preload_unwind_tables(&mut self) -> usize {
        let files = RootedFiles { pid: self.pid };
        self.unwinder.preload(&self.maps, &files)
    }

    /// Keeps the newest memory map and name while the target lives: after it
    /// exits, the last ones still symbolize what was captured.
    /// The map is read again only when its text changed: the first 2 s of a
    /// session refresh it every 20 ms (a command maps its libraries, or
    /// execs, within milliseconds), and each full read opens every module
    /// file (up to 4 ms seen on python3.11, on the capture thread; a read of
    /// the text alone takes 0.1–0.3 ms).
    pub fn refresh(&mut self) {
        let text = std::fs::read(crate::process::procfs::dir(self.pid).join("maps"));
        let same = text
            .as_ref()
            .is_ok_and(|t| self.have_maps && !t.is_empty() && *t == self.maps_text);
        if !same {
            if let Some(m) = read_maps(self.pid) {
                self.maps = m;
                self.have_maps = true;
                // The text read before: if the map changed in between, the
                // next refresh sees another text and reads it again.
                self.maps_text = text.unwrap_or_default();
            }
        }
        if let Some(c) = read_comm(self.pid) {
            if c != self.comm {
                self.prev_comm = Some(std::mem::replace(&mut self.comm, c));
            }
        }
    }

    /// Applies at most `max_batches` bounded batches of pending events;
    /// returns true when more may be waiting.
    pub fn drain(&mut self, max_batches: usize) -> bool {
        let pid = self.pid;
        let files = RootedFiles { pid };
        let mut refresh = || read_maps(pid);
        let heaps = &self.heaps;
        // The target's [heap] as last read (others: their header decides).
        let main_heap = self
            .maps
            .regions
            .iter()
            .find(|r| r.path.as_deref() == Some("[heap]"))
            .map(|r| (r.start, r.end));
        let place = |tgid: u32, ptr: u64, head: Option<ChunkHead>| {
            let main_heap = main_heap.filter(|_| tgid == pid);
            heaps.home(&ProcessVm, tgid, ptr, head, main_heap)
        };
        let mut sink = EventSink {
            regions: &mut self.regions,
            samples: &mut self.samples,
            unwinder: &mut self.unwinder,
            extents: &mut self.extents,
            maps: &mut self.maps,
            others: &mut self.others,
            files: &files,
            refresh: &mut refresh,
            refreshed: false,
            home: self.glibc.then_some(Homes {
                memory: &ProcessVm,
                place: &place,
            }),
            execs: &mut self.pending_execs,
            target: pid,
        };
        self.events.drain(&mut sink, max_batches)
    }

    /// Tells the probes the stack ends learned since the last call, so the
    /// next samples of those threads copy only what they need.
    pub fn push_stack_ends(&mut self, probes: &mut Probes) -> Result<(), ProbeError> {
        let updates: Vec<(u32, Option<u64>)> = self
            .extents
            .take_updates()
            .into_iter()
            .map(|u| match u {
                EndUpdate::Set { tid, end } => (tid, Some(end)),
                EndUpdate::Forget { tid } => (tid, None),
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        crate::probes::stack_ends::push(&mut probes.ebpf, &updates)
    }

    /// Applies the execs seen by the last drains: the old image's live
    /// blocks leave the live map as "released by exec", and the new
    /// program's map and name are read. Returns what happened, one note per
    /// exec; `t_ms` is the session's clock.
    pub fn apply_execs(
        &mut self,
        probes: &mut Probes,
        t_ms: u64,
    ) -> Result<Vec<super::exec::ExecNote>, ProbeError> {
        let mut notes = Vec::new();
        for seen in std::mem::take(&mut self.pending_execs) {
            if seen.ev.kind == profiler_common::EventKind::Fork as u32 {
                // A pid that exited and came back is a new process.
                self.exited.remove(&seen.ev.tgid);
                self.forks.push(seen.ev);
                continue;
            }
            if seen.ev.kind == profiler_common::EventKind::Exit as u32 {
                let pid = seen.ev.tgid;
                if !self.exited.insert(pid) {
                    continue;
                }
                if pid == self.pid {
                    // The session's own target: its exit ends the session,
                    // and what it still held then (its leaks at exit) is
                    // what the final report is for.
                    continue;
                }
                let (blocks, bytes) = super::exec::release(
                    &mut probes.ebpf,
                    &seen,
                    &mut self.samples,
                    &mut self.exits,
                )?;
                self.exit_notes.push(super::exec::ExitNote {
                    pid,
                    t_ms,
                    comm: String::new(),
                    blocks,
                    bytes,
                });
                continue;
            }
            let (blocks, bytes) =
                super::exec::release(&mut probes.ebpf, &seen, &mut self.samples, &mut self.execs)?;
            let pid = seen.ev.tgid;
            // The old map would resolve the new program's addresses wrongly.
            let (old_comm, new_comm) = if pid == self.pid {
                self.refresh();
                let old = self.prev_comm.take().unwrap_or_else(|| self.comm.clone());
                (old, self.comm.clone())
            } else {
                self.others.get(pid, true);
                // The session knows its old name.
                (String::new(), read_comm(pid).unwrap_or_default())
            };
            let tid = seen.ev.parent;
            let note = super::exec::ExecNote {
                pid,
                t_ms,
                old_comm,
                new_comm,
                blocks,
                bytes,
                from_thread: (tid != 0 && tid != pid).then_some(tid),
                reattached: None,
                new_allocator: None,
            };
            self.execs.notes.push(note.clone());
            notes.push(note);
        }
        Ok(notes)
    }

    /// Drains pending events (at most [`TICK_DRAIN_BATCHES`] batches: a
    /// flooded ring must not hold the tick back) and reads the kernel's
    /// counters into one raw snapshot.
    /// Execs among them are applied first (see [`Capture::apply_execs`]),
    /// their notes returned; what they released counts as freed.
    pub fn snapshot(
        &mut self,
        probes: &mut Probes,
        t_ms: u64,
    ) -> Result<(RawSnapshot, Vec<super::exec::ExecNote>), ProbeError> {
        self.drain(TICK_DRAIN_BATCHES);
        self.heaps.clear();
        let notes = self.apply_execs(probes, t_ms)?;
        let counters = aggregate::read_counters(&probes.ebpf)?;
        let free_lost = counters[profiler_common::counter::SAMPLED_FREE_LOST as usize];
        // (Held in userspace, no map tells which blocks are gone: the lost
        // frees make the totals not exact, and the report says so.)
        if free_lost > self.free_lost_seen && !self.samples.holds_live() {
            // Free records were lost: drop the samples the kernel no longer
            // holds, so no site keeps bytes the program freed.
            let live = aggregate::LiveLookup::new(&probes.ebpf)?;
            self.samples
                .reconcile(|tgid, ptr| live.holds_sample(tgid, ptr));
            self.free_lost_seen = free_lost;
        }
        let mut sites = aggregate::read_sites(&probes.ebpf)?;
        self.execs.apply_to_sites(&mut sites);
        self.exits.apply_to_sites(&mut sites);
        let mut snap = aggregate::merge(&sites, &self.samples, &counters, &self.regions);
        // Released live-map blocks are frees; released regions are already
        // frees of the region tracker.
        let t = &mut snap.totals;
        let x = &self.execs;
        t.frees += x.blocks;
        t.free_bytes += x.bytes;
        t.exec_released = x.blocks + x.regions;
        t.exec_released_bytes = x.bytes + x.region_bytes;
        let x = &self.exits;
        t.frees += x.blocks;
        t.free_bytes += x.bytes;
        t.exit_released = x.blocks + x.regions;
        t.exit_released_bytes = x.bytes + x.region_bytes;
        Ok((snap, notes))
    }
}
