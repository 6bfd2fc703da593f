//! An immutable, symbolized snapshot of one profiling window: the only input to the views.

use std::sync::Arc;

use profiler_common::counters::{CounterDef, CounterId, Section as CounterSection, COUNTERS};

/// Identity of a module (executable or shared library) as loaded: enough to
/// find its symbols again later, on another machine or through debuginfod.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleId {
    /// The path as the process saw it (the maps column).
    pub path: String,
    /// The GNU build-id note; empty when the file has none (or was unreadable).
    pub build_id: Vec<u8>,
}

impl ModuleId {
    /// The build-id as lowercase hex (empty without one).
    pub fn build_id_hex(&self) -> String {
        self.build_id.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Where a frame's code is: the module and the file offset of the address
/// (a return address: the call is the instruction before it). Frames
/// inlined at one address share its `Pc`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pc {
    pub module: Arc<ModuleId>,
    pub offset: u64,
    /// The runtime address when captured (0 when not known): with `offset`
    /// it gives the module's load address.
    pub address: u64,
}

/// One frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Frame {
    /// A resolved function (`module` is the file name of the ELF it lives in).
    Function {
        /// Demangled function name.
        name: Arc<str>,
        module: Arc<str>,
        /// Source file from DWARF, as the compiler recorded it (often absolute).
        file: Option<Arc<str>>,
        /// Source line from DWARF: the line executing in this function (for a
        /// caller of an inlined function, the line of the inlined call).
        line: Option<u32>,
        /// The function was inlined into the frame below it (its caller):
        /// it has no stack frame of its own, DWARF says it is there.
        inlined: bool,
        /// Module and file offset of the address (`None` in recordings
        /// written before heapscope kept it).
        pc: Option<Pc>,
    },
    /// An address that could not be resolved: module file name + file offset,
    /// rendered `[module+0xoff]`; `module` is `?` when no mapping covered it.
    Unknown {
        module: Arc<str>,
        offset: u64,
        /// Module identity, when known (see [`Frame::Function`]'s `pc`).
        pc: Option<Pc>,
    },
}

impl Frame {
    /// A function frame without source information (symbol tables only).
    pub fn function(name: impl Into<Arc<str>>, module: impl Into<Arc<str>>) -> Frame {
        Frame::Function {
            name: name.into(),
            module: module.into(),
            file: None,
            line: None,
            inlined: false,
            pc: None,
        }
    }

    /// An unresolved frame without module identity.
    pub fn unknown(module: impl Into<Arc<str>>, offset: u64) -> Frame {
        Frame::Unknown {
            module: module.into(),
            offset,
            pc: None,
        }
    }

    /// Where this frame's code is, when known.
    pub fn pc(&self) -> Option<&Pc> {
        match self {
            Frame::Function { pc, .. } | Frame::Unknown { pc, .. } => pc.as_ref(),
        }
    }

    /// This frame with its code location set.
    pub fn with_pc(mut self, new: Option<Pc>) -> Frame {
        match &mut self {
            Frame::Function { pc, .. } | Frame::Unknown { pc, .. } => *pc = new,
        }
        self
    }

    /// The text shown for this frame in stacks.
    pub fn label(&self) -> String {
        match self {
            Frame::Function { name, .. } => name.to_string(),
            Frame::Unknown { module, offset, .. } => format!("[{module}+{offset:#x}]"),
        }
    }

    /// `file:line` with the file's last path component (`leaks.c:42`), or
    /// `file` alone without a line; `None` without source information.
    pub fn source_location(&self) -> Option<String> {
        let Frame::Function { file, line, .. } = self else {
            return None;
        };
        let file = file.as_deref()?;
        let base = file.rsplit('/').next().unwrap_or(file);
        Some(match line {
            Some(l) => format!("{base}:{l}"),
            None => base.to_string(),
        })
    }
}

/// Splits root-first frames into physical frames: a frame inlined into its
/// caller joins the caller's group.
pub fn physical_frames(frames: &[Frame]) -> Vec<&[Frame]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (i, f) in frames.iter().enumerate() {
        let inlined = matches!(f, Frame::Function { inlined: true, .. });
        if i > start && !inlined {
            groups.push(&frames[start..i]);
            start = i;
        }
    }
    if start < frames.len() {
        groups.push(&frames[start..]);
    }
    groups
}

/// Numbers of one call site: a unique (stack, allocator entry point) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteStats {
    pub live_bytes: u64,
    pub live_count: u64,
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    /// Blocks of this site freed by another thread than the one that
    /// allocated them, into an arena that is not the freeing thread's
    /// (cumulative, weighted like `alloc_*`; sampled sites only).
    pub cross_free_bytes: u64,
    pub cross_free_count: u64,
}

/// A call site with its symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The process that allocated (see [`Profile::processes`]).
    pub pid: u32,
    /// Root first (`main` side), leaf last (the allocator's caller); shared
    /// with the timeline's copy of the site (a profile is a view of it).
    pub frames: Arc<[Frame]>,
    /// The allocator entry point (`malloc`, `mmap`, ...).
    pub api: &'static str,
    pub stats: SiteStats,
}

/// A profiled process, as the views name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The process it was found under (forked while followed, or an
    /// existing child); 0 for one named on the command line.
    pub parent: u32,
    /// /proc/PID/comm when first seen (after an exec: "old → new").
    pub comm: String,
    /// /proc/PID/cmdline, arguments separated by spaces; empty when unreadable.
    pub cmdline: String,
}

impl ProcessInfo {
    /// `comm [pid N]`: the root frame of this process's stacks when a view
    /// shows several processes.
    pub fn frame_label(&self) -> String {
        format!("{} [pid {}]", self.comm, self.pid)
    }
}

/// One process's share of a profile: the sum of its sites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessShare {
    pub process: ProcessInfo,
    pub stats: SiteStats,
    /// Call sites with numbers in the window.
    pub sites: u64,
}

/// Process-wide counters, including everything that was lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocs: u64,
    pub alloc_bytes: u64,
    pub frees: u64,
    pub free_bytes: u64,
    /// Frees of pointers allocated before attach (or whose allocation was dropped).
    pub frees_unknown: u64,
    pub live_map_full: u64,
    pub stack_failed: u64,
    pub inflight_full: u64,
    pub site_map_full: u64,
    pub ringbuf_lost: u64,
    pub nested: u64,
    pub alloc_failed: u64,
    pub replaced: u64,
    pub unmatched_return: u64,
    /// Per-thread entry states discarded because their return never came.
    pub inflight_stale: u64,
    /// munmap/mremap of ranges heapscope was not tracking (allocator-internal or pre-attach).
    pub untracked_unmaps: u64,
    /// Allocator calls made by the allocator's own code outside any program
    /// call (arenas created in free, trims, thread exit).
    pub allocator_calls: u64,
    /// Frees by the allocator's own code of blocks the program never had
    /// (its caches): not pre-attach frees.
    pub allocator_frees: u64,
    /// Bytes the allocator mapped outside program calls (arena heaps): its
    /// footprint, never program allocations.
    pub allocator_mapped: u64,
    /// Bytes the allocator unmapped outside program calls.
    pub allocator_unmapped: u64,
    /// Live blocks (and mappings) of an image that exec replaced; included in `frees`.
    pub exec_released: u64,
    /// Their bytes; included in `free_bytes`.
    pub exec_released_bytes: u64,
    /// Live blocks (and mappings) of profiled processes that exited;
    /// included in `frees`.
    pub exit_released: u64,
    /// Their bytes; included in `free_bytes`.
    pub exit_released_bytes: u64,
    /// Unsampled allocations counted at entry only (uprobe sessions skip
    /// their returns): not in `allocs`, their frees in `frees_unknown`.
    /// Non-zero makes the live heap an estimate.
    pub untracked_allocs: u64,
    /// Bytes those allocations asked for (not in `alloc_bytes`).
    pub untracked_bytes: u64,
    /// See `counter::NO_LAYOUT`.
    pub no_layout: u64,
    /// See `counter::RETURNS_BEFORE_ENTRY`.
    pub entered_before_probes: u64,
}

impl Totals {
    /// The value of one counter of `profiler_common::counters::COUNTERS`.
    /// This match and [`Totals::set`] are the only places where a field
    /// meets its row of the table.
    pub fn get(&self, id: CounterId) -> u64 {
        match id {
            CounterId::Allocs => self.allocs,
            CounterId::AllocBytes => self.alloc_bytes,
            CounterId::Frees => self.frees,
            CounterId::FreeBytes => self.free_bytes,
            CounterId::FreesUnknown => self.frees_unknown,
            CounterId::LiveMapFull => self.live_map_full,
            CounterId::StackFailed => self.stack_failed,
            CounterId::InflightFull => self.inflight_full,
            CounterId::SiteMapFull => self.site_map_full,
            CounterId::RingbufLost => self.ringbuf_lost,
            CounterId::Nested => self.nested,
            CounterId::AllocFailed => self.alloc_failed,
            CounterId::Replaced => self.replaced,
            CounterId::UnmatchedReturn => self.unmatched_return,
            CounterId::InflightStale => self.inflight_stale,
            CounterId::UntrackedUnmaps => self.untracked_unmaps,
            CounterId::AllocatorCalls => self.allocator_calls,
            CounterId::AllocatorFrees => self.allocator_frees,
            CounterId::AllocatorMapped => self.allocator_mapped,
            CounterId::AllocatorUnmapped => self.allocator_unmapped,
            CounterId::ExecReleased => self.exec_released,
            CounterId::ExecReleasedBytes => self.exec_released_bytes,
            CounterId::ExitReleased => self.exit_released,
            CounterId::ExitReleasedBytes => self.exit_released_bytes,
            CounterId::UntrackedAllocs => self.untracked_allocs,
            CounterId::UntrackedBytes => self.untracked_bytes,
            CounterId::NoLayout => self.no_layout,
            CounterId::EnteredBeforeProbes => self.entered_before_probes,
        }
    }

    /// Sets one counter (see [`Totals::get`]).
    pub fn set(&mut self, id: CounterId, v: u64) {
        let field = match id {
            CounterId::Allocs => &mut self.allocs,
            CounterId::AllocBytes => &mut self.alloc_bytes,
            CounterId::Frees => &mut self.frees,
            CounterId::FreeBytes => &mut self.free_bytes,
            CounterId::FreesUnknown => &mut self.frees_unknown,
            CounterId::LiveMapFull => &mut self.live_map_full,
            CounterId::StackFailed => &mut self.stack_failed,
            CounterId::InflightFull => &mut self.inflight_full,
            CounterId::SiteMapFull => &mut self.site_map_full,
            CounterId::RingbufLost => &mut self.ringbuf_lost,
            CounterId::Nested => &mut self.nested,
            CounterId::AllocFailed => &mut self.alloc_failed,
            CounterId::Replaced => &mut self.replaced,
            CounterId::UnmatchedReturn => &mut self.unmatched_return,
            CounterId::InflightStale => &mut self.inflight_stale,
            CounterId::UntrackedUnmaps => &mut self.untracked_unmaps,
            CounterId::AllocatorCalls => &mut self.allocator_calls,
            CounterId::AllocatorFrees => &mut self.allocator_frees,
            CounterId::AllocatorMapped => &mut self.allocator_mapped,
            CounterId::AllocatorUnmapped => &mut self.allocator_unmapped,
            CounterId::ExecReleased => &mut self.exec_released,
            CounterId::ExecReleasedBytes => &mut self.exec_released_bytes,
            CounterId::ExitReleased => &mut self.exit_released,
            CounterId::ExitReleasedBytes => &mut self.exit_released_bytes,
            CounterId::UntrackedAllocs => &mut self.untracked_allocs,
            CounterId::UntrackedBytes => &mut self.untracked_bytes,
            CounterId::NoLayout => &mut self.no_layout,
            CounterId::EnteredBeforeProbes => &mut self.entered_before_probes,
        };
        *field = v;
    }

    /// Every counter with its value, in the table's order (counted, then
    /// lost): what the report, the JSON API and `/metrics` list.
    pub fn entries(&self) -> impl Iterator<Item = (&'static CounterDef, u64)> + '_ {
        COUNTERS.iter().map(move |d| (d, self.get(d.id)))
    }

    /// Sum of the counters of one section.
    pub fn section_total(&self, section: CounterSection) -> u64 {
        self.entries()
            .filter(|(d, _)| d.section == section)
            .fold(0u64, |a, (_, v)| a.saturating_add(v))
    }

    /// Allocated − freed bytes over every allocation seen: the exact live
    /// heap (since attach), never a sampled estimate.
    pub fn live_bytes(&self) -> u64 {
        self.alloc_bytes.saturating_sub(self.free_bytes)
    }

    /// Allocations − frees seen: the exact number of live blocks (since attach).
    pub fn live_blocks(&self) -> u64 {
        self.allocs.saturating_sub(self.frees)
    }
}

/// The exact live heap at one moment: allocated − freed since attach, over
/// every allocation (what the headline of every output shows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveHeap {
    pub bytes: u64,
    pub blocks: u64,
}

impl LiveHeap {
    /// The live heap that cumulative totals (since attach) describe.
    pub fn of(totals: &Totals) -> LiveHeap {
        LiveHeap {
            bytes: totals.live_bytes(),
            blocks: totals.live_blocks(),
        }
    }
}

/// Which number a view weighs stacks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Metric {
    #[default]
    LiveBytes,
    AllocBytes,
    Allocs,
}

impl Metric {
    /// The value of this metric for a site.
    pub fn of(self, s: &SiteStats) -> u64 {
        match self {
            Metric::LiveBytes => s.live_bytes,
            Metric::AllocBytes => s.alloc_bytes,
            Metric::Allocs => s.alloc_count,
        }
    }
}

/// A symbolized snapshot of a profiling session.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    pub pid: u32,
    /// Target command name (from /proc/PID/comm).
    pub comm: String,
    /// Seconds between attach and this snapshot.
    pub duration_secs: f64,
    pub sites: Vec<Site>,
    /// Counters over the window (differences between its ends).
    pub totals: Totals,
    /// The exact live heap at the window's end (cumulative since attach).
    pub live_heap: LiveHeap,
    /// Mean bytes between sampled allocations; 0 when every allocation was
    /// captured. When sampled, per-site numbers are unbiased estimates.
    pub sample_rate: u64,
    /// `allocator: jemalloc 5.3.0, preloaded; 26 entry points` (empty when unknown).
    pub allocator: String,
    /// What heapscope could not see in this process, and probe costs.
    pub allocator_notes: Vec<String>,
    /// Every profiled process, the first one first (one entry for a
    /// single-process session).
    pub processes: Vec<ProcessInfo>,
}

impl Profile {
    /// True when sites of more than one process are in the profile (or
    /// more than one process was profiled): views then break stacks down
    /// per process.
    pub fn several_processes(&self) -> bool {
        let first = self.sites.first().map(|s| s.pid);
        self.processes.len() > 1 || self.sites.iter().any(|s| Some(s.pid) != first)
    }

    /// The process `pid` as the profile knows it; one named after the
    /// profile's own process (or `?`) when it is not in the table.
    pub fn process(&self, pid: u32) -> ProcessInfo {
        self.processes
            .iter()
            .find(|p| p.pid == pid)
            .cloned()
            .unwrap_or_else(|| ProcessInfo {
                pid,
                comm: if pid == self.pid {
                    self.comm.clone()
                } else {
                    "?".to_string()
                },
                ..ProcessInfo::default()
            })
    }

    /// Each process's sum of sites (processes of the table first, in its
    /// order, then any other pid a site names, by pid); every number is
    /// the sum of its sites, so the shares add up to the sites' total.
    pub fn by_process(&self) -> Vec<ProcessShare> {
        let mut out: Vec<ProcessShare> = self
            .processes
            .iter()
            .map(|p| ProcessShare {
                process: p.clone(),
                ..ProcessShare::default()
            })
            .collect();
        let mut others: std::collections::BTreeMap<u32, ProcessShare> = Default::default();
        for site in &self.sites {
            let share = match out.iter_mut().find(|s| s.process.pid == site.pid) {
                Some(s) => s,
                None => others.entry(site.pid).or_insert_with(|| ProcessShare {
                    process: self.process(site.pid),
                    ..ProcessShare::default()
                }),
            };
            let (t, s) = (&mut share.stats, &site.stats);
            t.live_bytes += s.live_bytes;
            t.live_count += s.live_count;
            t.alloc_bytes += s.alloc_bytes;
            t.alloc_count += s.alloc_count;
            share.sites += 1;
        }
        out.extend(others.into_values());
        out
    }

    /// Sum of live bytes over all sites: an estimate when sampled (the
    /// exact figure is [`Profile::live_heap`]).
    pub fn sites_live_bytes(&self) -> u64 {
        self.sites.iter().map(|s| s.stats.live_bytes).sum()
    }

    /// Sum of live blocks over all sites (an estimate when sampled).
    pub fn sites_live_count(&self) -> u64 {
        self.sites.iter().map(|s| s.stats.live_count).sum()
    }

    /// True when per-site numbers are sampled estimates.
    pub fn sampled(&self) -> bool {
        self.sample_rate != 0
    }
}

#[cfg(test)]
mod counter_table_tests {
    use super::*;

    /// Every `Totals` field is a row of the counter table: destructuring
    /// makes a new field a compile error here until it is mapped.
    #[test]
    fn every_field_is_a_counter_of_the_table() {
        let mut t = Totals::default();
        for (i, d) in COUNTERS.iter().enumerate() {
            t.set(d.id, i as u64 + 1);
        }
        let Totals {
            allocs,
            alloc_bytes,
            frees,
            free_bytes,
            frees_unknown,
            live_map_full,
            stack_failed,
            inflight_full,
            site_map_full,
            ringbuf_lost,
            nested,
            alloc_failed,
            replaced,
            unmatched_return,
            inflight_stale,
            untracked_unmaps,
            allocator_calls,
            allocator_frees,
            allocator_mapped,
            allocator_unmapped,
            exec_released,
            exec_released_bytes,
            exit_released,
            exit_released_bytes,
            untracked_allocs,
            untracked_bytes,
            no_layout,
            entered_before_probes,
        } = t;
        let mut fields = vec![
            allocs,
            alloc_bytes,
            frees,
            free_bytes,
            frees_unknown,
            live_map_full,
            stack_failed,
            inflight_full,
            site_map_full,
            ringbuf_lost,
            nested,
            alloc_failed,
            replaced,
            unmatched_return,
            inflight_stale,
            untracked_unmaps,
            allocator_calls,
            allocator_frees,
            allocator_mapped,
            allocator_unmapped,
            exec_released,
            exec_released_bytes,
            exit_released,
            exit_released_bytes,
            untracked_allocs,
            untracked_bytes,
            no_layout,
            entered_before_probes,
        ];
        fields.sort_unstable();
        let expected: Vec<u64> = (1..=COUNTERS.len() as u64).collect();
        assert_eq!(fields, expected, "each field set once, by its own row");
        for (d, v) in t.entries() {
            assert_eq!(t.get(d.id), v);
        }
        assert_eq!(
            t.section_total(CounterSection::Lost),
            COUNTERS
                .iter()
                .enumerate()
                .filter(|(_, d)| d.section == CounterSection::Lost)
                .map(|(i, _)| i as u64 + 1)
                .sum::<u64>()
        );
    }
}
