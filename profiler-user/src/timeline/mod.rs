//! The session over time: the cumulative numbers of every call site at every
//! tick, process totals and memory samples, with bounded memory.
//!
//! Ticks are stored sparsely: each stored tick keeps only the sites whose
//! numbers changed since the previous stored tick (absolute values, not
//! deltas), so idle sites cost nothing per tick. [`Timeline::replay`]
//! rebuilds the full state tick by tick.

pub mod guard;
mod memory;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;

use profiler_common::counters::{COUNTERS, COUNTER_COUNT};
use std::ops::Range;

use crate::profile::{Frame, LiveHeap, ProcessInfo, Profile, Site, SiteStats, Totals};

pub use guard::{GuardLog, GuardPoint};
pub use memory::{ArenaSample, MemSample, MAX_ARENAS_PER_TICK};
pub use window::{EmptyWindow, Window, WindowError};

/// Ticks kept by default: one hour at the default 1 s tick.
pub const DEFAULT_MAX_TICKS: usize = 3600;

/// Below this, downsampling would thin out the newest ticks too.
const MIN_MAX_TICKS: usize = 8;

/// Index of a call site in [`Timeline::sites`] (and in a recording).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId(pub u32);

/// What identifies a call site: its process, symbolized stack and
/// allocator entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteInfo {
    /// The process that allocated (recordings from before processes were
    /// told apart: the header's pid).
    pub pid: u32,
    /// Root first, leaf last (as in [`Site::frames`]); shared with every
    /// profile taken of the timeline.
    pub frames: Arc<[Frame]>,
    /// The allocator entry point (`malloc`, `mmap`, ...).
    pub api: &'static str,
}

/// One snapshot as the session produces it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Milliseconds since attach.
    pub t_ms: u64,
    /// Cumulative numbers per site at this tick. A site that is absent has
    /// all-zero numbers; duplicates: the last entry wins.
    pub sites: Vec<(SiteId, SiteStats)>,
    /// Cumulative process counters at this tick.
    pub totals: Totals,
    /// RSS split and allocator footprint, when /proc could be read.
    pub mem: Option<MemSample>,
    /// glibc's arenas (empty for other allocators and older recordings).
    pub arenas: Vec<ArenaSample>,
}

/// One site whose numbers changed at a tick (see [`Timeline::replay`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub site: SiteId,
    pub before: SiteStats,
    pub after: SiteStats,
}

/// One tick as [`Timeline::replay`] shows it.
pub struct TickView<'a> {
    /// Index among the stored ticks.
    pub index: usize,
    pub t_ms: u64,
    pub totals: &'a Totals,
    pub mem: Option<&'a MemSample>,
    pub arenas: &'a [ArenaSample],
    /// Sites changed since the previous stored tick (sorted by id).
    pub changes: &'a [Change],
    /// Every site with non-zero numbers after this tick.
    pub state: &'a BTreeMap<SiteId, SiteStats>,
}

impl TickView<'_> {
    /// The live heap at this tick: allocated − freed (exact), or with uprobe
    /// sessions (unsampled blocks untracked) the sites' estimate.
    pub fn live_heap(&self) -> u64 {
        if self.totals.untracked_allocs > 0 {
            self.state.values().map(|s| s.live_bytes).sum()
        } else {
            self.totals.live_bytes()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredTick {
    t_ms: u64,
    /// Sorted by id; absolute values; all-zero means the site went away.
    changes: Vec<(SiteId, SiteStats)>,
    totals: Totals,
    mem: Option<MemSample>,
    arenas: Vec<ArenaSample>,
}

/// Process identity for [`Timeline::profile_for`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileMeta {
    pub pid: u32,
    pub comm: String,
    /// Mean bytes between samples (0: every allocation captured).
    pub sample_rate: u64,
    /// The allocator line and its warnings (see `record::Header`).
    pub allocator: String,
    pub allocator_notes: Vec<String>,
}

/// Call sites and ticks of a session.
///
/// **Memory bound:** at most `max_ticks` ticks are stored. When a push
/// exceeds it, every other tick of the older half is dropped (its changes are
/// folded into the next kept tick, so replayed values stay exact at every
/// kept tick), which brings the count to about ¾ of `max_ticks`. The newest
/// ticks keep full resolution while older ones get coarser geometrically;
/// the first tick is always kept. Memory is therefore
/// O(`max_ticks` × sites changed per tick + sites).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    sites: Vec<SiteInfo>,
    /// Every profiled process, in the order first seen.
    processes: Vec<ProcessInfo>,
    ticks: Vec<StoredTick>,
    /// Numbers after the newest tick, to derive the next tick's changes.
    current: BTreeMap<SiteId, SiteStats>,
    max_ticks: usize,
    dropped: u64,
    /// The overhead guard's windows (`--max-overhead`), when it ran.
    guard: Option<GuardLog>,
}

impl Default for Timeline {
    fn default() -> Timeline {
        Timeline::new(DEFAULT_MAX_TICKS)
    }
}

fn is_zero(s: &SiteStats) -> bool {
    *s == SiteStats::default()
}

/// `Totals` as a flat list in the recording's order: each counter at its
/// stable id (`profiler_common::counters::CounterId::slot`).
pub(crate) fn totals_to_array(t: &Totals) -> [u64; COUNTER_COUNT] {
    let mut out = [0u64; COUNTER_COUNT];
    for d in COUNTERS.iter() {
        out[d.id.slot()] = t.get(d.id);
    }
    out
}

/// The inverse of [`totals_to_array`]; missing values are 0, extra ones ignored
/// (recordings from other builds).
pub(crate) fn totals_from_slice(v: &[u64]) -> Totals {
    let mut t = Totals::default();
    for d in COUNTERS.iter() {
        t.set(d.id, v.get(d.id.slot()).copied().unwrap_or(0));
    }
    t
}

/// Merges two sorted change lists; `newer` wins for a site in both.
fn merge_changes(
    older: Vec<(SiteId, SiteStats)>,
    newer: Vec<(SiteId, SiteStats)>,
) -> Vec<(SiteId, SiteStats)> {
    let mut map: BTreeMap<SiteId, SiteStats> = older.into_iter().collect();
    map.extend(newer);
    map.into_iter().collect()
}

impl Timeline {
    /// An empty timeline keeping at most `max_ticks` ticks (at least 8).
    pub fn new(max_ticks: usize) -> Timeline {
        Timeline {
            sites: Vec::new(),
            processes: Vec::new(),
            ticks: Vec::new(),
            current: BTreeMap::new(),
            max_ticks: max_ticks.max(MIN_MAX_TICKS),
            dropped: 0,
            guard: None,
        }
    }

    /// Takes one decision window of the overhead guard.
    pub fn guard_window(&mut self, p: GuardPoint) {
        self.guard.get_or_insert_with(GuardLog::default).push(p);
    }

    /// What the overhead guard did, when it ran (`--max-overhead`).
    pub fn guard(&self) -> Option<&GuardLog> {
        self.guard.as_ref()
    }

    /// Registers a call site; ids are handed out in order 0, 1, 2...
    pub fn add_site(&mut self, info: SiteInfo) -> SiteId {
        // More than 4 billion sites cannot come from bounded kernel maps.
        let id = SiteId(u32::try_from(self.sites.len()).unwrap_or(u32::MAX));
        self.sites.push(info);
        id
    }

    /// Adds a process, or replaces the entry of its pid (a new name after
    /// an exec). Returns true when something changed.
    pub fn set_process(&mut self, info: ProcessInfo) -> bool {
        match self.processes.iter_mut().find(|p| p.pid == info.pid) {
            Some(p) if *p == info => false,
            Some(p) => {
                *p = info;
                true
            }
            None => {
                self.processes.push(info);
                true
            }
        }
    }

    /// Every profiled process, in the order first seen.
    pub fn processes(&self) -> &[ProcessInfo] {
        &self.processes
    }

    /// Every registered site, mutable: re-symbolization replaces frames
    /// (ids and numbers stay).
    pub fn sites_mut(&mut self) -> &mut [SiteInfo] {
        &mut self.sites
    }

    /// Every registered site, indexed by [`SiteId`].
    pub fn sites(&self) -> &[SiteInfo] {
        &self.sites
    }

    /// The site registered under `id`.
    pub fn site(&self, id: SiteId) -> Option<&SiteInfo> {
        self.sites.get(id.0 as usize)
    }

    /// Number of stored ticks.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    /// True before the first tick.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// The tick limit given to [`Timeline::new`].
    pub fn max_ticks(&self) -> usize {
        self.max_ticks
    }

    /// Ticks dropped by downsampling so far.
    pub fn dropped_ticks(&self) -> u64 {
        self.dropped
    }

    /// Times (ms since attach) of the stored ticks, oldest first.
    pub fn tick_times(&self) -> impl Iterator<Item = u64> + '_ {
        self.ticks.iter().map(|t| t.t_ms)
    }

    /// First and last tick time, `None` when empty.
    pub fn span_ms(&self) -> Option<(u64, u64)> {
        Some((self.ticks.first()?.t_ms, self.ticks.last()?.t_ms))
    }

    /// Appends a tick. Ticks must come in time order; an earlier `t_ms` is
    /// raised to the previous tick's so the order invariant always holds.
    pub fn push(&mut self, tick: Tick) {
        let next: BTreeMap<SiteId, SiteStats> = tick.sites.into_iter().collect();
        // Sites that were there and are absent now went away.
        let mut changes: Vec<(SiteId, SiteStats)> = self
            .current
            .keys()
            .filter(|id| !next.contains_key(id))
            .map(|id| (*id, SiteStats::default()))
            .collect();
        changes.extend(next);
        self.push_changes_with_arenas(tick.t_ms, changes, tick.totals, tick.mem, tick.arenas);
    }

    /// Appends a tick given only the sites that changed since the previous
    /// one (all-zero numbers: the site went away), as a recording stores it;
    /// cheaper than [`Timeline::push`] with the full list. Unsorted or
    /// repeated entries are fine (the last one per site wins).
    pub fn push_changes(
        &mut self,
        t_ms: u64,
        changes: Vec<(SiteId, SiteStats)>,
        totals: Totals,
        mem: Option<MemSample>,
    ) {
        self.push_changes_with_arenas(t_ms, changes, totals, mem, Vec::new());
    }

    /// [`Timeline::push_changes`] with the tick's arenas (at most
    /// [`MAX_ARENAS_PER_TICK`] are kept).
    pub fn push_changes_with_arenas(
        &mut self,
        t_ms: u64,
        changes: Vec<(SiteId, SiteStats)>,
        totals: Totals,
        mem: Option<MemSample>,
        mut arenas: Vec<ArenaSample>,
    ) {
        arenas.truncate(MAX_ARENAS_PER_TICK);
        let t_ms = self.ticks.last().map_or(t_ms, |l| t_ms.max(l.t_ms));
        let wanted: BTreeMap<SiteId, SiteStats> = changes.into_iter().collect();
        let mut real = Vec::with_capacity(wanted.len());
        for (id, s) in wanted {
            let zero = is_zero(&s);
            let differs = match self.current.get(&id) {
                Some(old) => *old != s,
                None => !zero,
            };
            if !differs {
                continue;
            }
            if zero {
                self.current.remove(&id);
            } else {
                self.current.insert(id, s.clone());
            }
            real.push((id, s));
        }
        self.ticks.push(StoredTick {
            t_ms,
            changes: real,
            totals,
            mem,
            arenas,
        });
        if self.ticks.len() > self.max_ticks {
            self.downsample();
        }
    }

    /// Drops every other tick of the older half (see the type's doc).
    fn downsample(&mut self) {
        let half = self.ticks.len() / 2;
        let old = std::mem::take(&mut self.ticks);
        let mut kept = Vec::with_capacity(old.len());
        let mut carry: Vec<(SiteId, SiteStats)> = Vec::new();
        for (i, mut t) in old.into_iter().enumerate() {
            if !carry.is_empty() {
                t.changes = merge_changes(std::mem::take(&mut carry), t.changes);
            }
            // Odd indices only: index 0 (the session start) always stays,
            // and i < half keeps the newest half untouched.
            if i < half && i % 2 == 1 {
                carry = t.changes;
                self.dropped += 1;
                continue;
            }
            kept.push(t);
        }
        self.ticks = kept;
    }

    /// Indices of the stored ticks inside `window`.
    pub fn range(&self, window: Window) -> Range<usize> {
        let start = window
            .start_ms
            .map_or(0, |s| self.ticks.partition_point(|t| t.t_ms < s));
        let end = window.end_ms.map_or(self.ticks.len(), |e| {
            self.ticks.partition_point(|t| t.t_ms <= e)
        });
        start..end.max(start)
    }

    /// Fails when `window` holds no stored tick, naming the timeline's span
    /// (an empty timeline holds every window's nothing: the caller says so).
    pub fn check_window(&self, window: Window) -> Result<(), EmptyWindow> {
        match self.span_ms() {
            Some((first_ms, last_ms)) if self.range(window).is_empty() => Err(EmptyWindow {
                window,
                first_ms,
                last_ms,
            }),
            _ => Ok(()),
        }
    }

    /// Rebuilds the state from the first tick and calls `f` for every tick in
    /// `range` (clamped to the stored ticks), oldest first.
    pub fn replay(&self, range: Range<usize>, mut f: impl FnMut(&TickView<'_>)) {
        let end = range.end.min(self.ticks.len());
        let mut state: BTreeMap<SiteId, SiteStats> = BTreeMap::new();
        let mut changes: Vec<Change> = Vec::new();
        for (index, tick) in self.ticks.iter().enumerate().take(end) {
            let visible = index >= range.start;
            changes.clear();
            for (id, after) in &tick.changes {
                let before = if is_zero(after) {
                    state.remove(id)
                } else {
                    state.insert(*id, after.clone())
                };
                if visible {
                    changes.push(Change {
                        site: *id,
                        before: before.unwrap_or_default(),
                        after: after.clone(),
                    });
                }
            }
            if visible {
                f(&TickView {
                    index,
                    t_ms: tick.t_ms,
                    totals: &tick.totals,
                    mem: tick.mem.as_ref(),
                    arenas: &tick.arenas,
                    changes: &changes,
                    state: &state,
                });
            }
        }
    }

    /// The stored ticks with their full site lists, oldest first (what
    /// [`Timeline::push`] got, minus downsampled ticks and all-zero sites).
    pub fn ticks(&self) -> Vec<Tick> {
        let mut out = Vec::with_capacity(self.ticks.len());
        self.replay(0..self.ticks.len(), |v| {
            out.push(Tick {
                t_ms: v.t_ms,
                sites: v.state.iter().map(|(id, s)| (*id, s.clone())).collect(),
                totals: v.totals.clone(),
                mem: v.mem.copied(),
                arenas: v.arenas.to_vec(),
            })
        });
        out
    }

    /// The state of every site (indexed by id; all-zero = absent) after the
    /// stored tick `end`, and after `base` when given (empty otherwise), in
    /// one pass over the ticks: a dense vector, much cheaper than
    /// [`Timeline::replay`] for long sessions.
    fn dense_states(&self, base: Option<usize>, end: usize) -> (Vec<SiteStats>, Vec<SiteStats>) {
        let mut state = vec![SiteStats::default(); self.sites.len()];
        let mut base_state = Vec::new();
        for (i, tick) in self.ticks.iter().enumerate().take(end.saturating_add(1)) {
            for (id, s) in &tick.changes {
                let idx = id.0 as usize;
                if idx >= state.len() {
                    state.resize(idx + 1, SiteStats::default());
                }
                state[idx] = s.clone();
            }
            if Some(i) == base {
                base_state = state.clone();
            }
        }
        (base_state, state)
    }

    /// The arenas of the last stored tick inside `window` that has any.
    pub fn last_arenas(&self, window: Window) -> Option<(u64, &[ArenaSample])> {
        self.ticks[self.range(window)]
            .iter()
            .rev()
            .find(|t| !t.arenas.is_empty())
            .map(|t| (t.t_ms, t.arenas.as_slice()))
    }

    /// The arenas stored with each tick, oldest first (for a recording).
    pub fn stored_arenas(&self) -> impl Iterator<Item = &[ArenaSample]> + '_ {
        self.ticks.iter().map(|t| t.arenas.as_slice())
    }

    /// Every stored tick as stored: its time, the sites that changed since
    /// the previous stored tick (absolute values; all-zero: gone), totals and
    /// memory. Cheaper than [`Timeline::replay`] when the full state is not
    /// needed.
    pub fn stored_ticks(
        &self,
    ) -> impl Iterator<Item = (u64, &[(SiteId, SiteStats)], &Totals, Option<&MemSample>)> + '_ {
        self.ticks
            .iter()
            .map(|t| (t.t_ms, t.changes.as_slice(), &t.totals, t.mem.as_ref()))
    }

    /// A profile of `window`: live bytes and blocks at the window's last
    /// tick; allocated bytes and calls (and every total) as the difference
    /// between that tick and the last tick before the window's start (from
    /// zero for an open start, or when no tick precedes it). A window without
    /// ticks gives an empty profile. Sites unknown to the timeline render as
    /// an empty stack with API `?`.
    pub fn profile_for(&self, window: Window, meta: &ProfileMeta) -> Profile {
        let mut profile = Profile {
            pid: meta.pid,
            comm: meta.comm.clone(),
            sample_rate: meta.sample_rate,
            allocator: meta.allocator.clone(),
            allocator_notes: meta.allocator_notes.clone(),
            processes: self.processes.clone(),
            ..Profile::default()
        };
        let range = self.range(window);
        if range.is_empty() {
            return profile;
        }
        let base_index = match window.start_ms {
            Some(_) if range.start > 0 => Some(range.start - 1),
            _ => None,
        };
        let end_index = range.end - 1;
        let (base_state, end_state) = self.dense_states(base_index, end_index);
        let tick_of = |i: usize| self.ticks.get(i);
        let (end_t, end_totals) = match tick_of(end_index) {
            Some(t) => (t.t_ms, t.totals.clone()),
            None => return profile,
        };
        let (base_t, base_totals) = base_index
            .and_then(tick_of)
            .map_or((0, Totals::default()), |t| (t.t_ms, t.totals.clone()));
        profile.duration_secs = end_t.saturating_sub(base_t) as f64 / 1000.0;
        profile.live_heap = LiveHeap::of(&end_totals);
        let (e, b) = (totals_to_array(&end_totals), totals_to_array(&base_totals));
        let diff: Vec<u64> = e.iter().zip(b).map(|(e, b)| e.saturating_sub(b)).collect();
        profile.totals = totals_from_slice(&diff);
        let zero = SiteStats::default();
        for i in 0..end_state.len().max(base_state.len()) {
            let e = end_state.get(i).unwrap_or(&zero);
            let b = base_state.get(i).unwrap_or(&zero);
            let stats = SiteStats {
                live_bytes: e.live_bytes,
                live_count: e.live_count,
                alloc_bytes: e.alloc_bytes.saturating_sub(b.alloc_bytes),
                alloc_count: e.alloc_count.saturating_sub(b.alloc_count),
                cross_free_bytes: e.cross_free_bytes.saturating_sub(b.cross_free_bytes),
                cross_free_count: e.cross_free_count.saturating_sub(b.cross_free_count),
            };
            if is_zero(&stats) {
                continue;
            }
            let id = SiteId(u32::try_from(i).unwrap_or(u32::MAX));
            let (pid, frames, api) = self.site(id).map_or((meta.pid, Arc::from([]), "?"), |s| {
                (s.pid, Arc::clone(&s.frames), s.api)
            });
            profile.sites.push(Site {
                pid,
                frames,
                api,
                stats,
            });
        }
        profile
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod testutil;
