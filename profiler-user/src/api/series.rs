//! Session metadata and the per-tick series of the timeline chart.

use serde::Serialize;

use crate::exactness::Exactness;
use crate::profile::{SiteStats, Totals};
use crate::timeline::{MemSample, SiteId, Timeline};

use super::counters::{counters, lost_total, Counter};
use super::API_VERSION;

/// What the server knows about the session besides its timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionInfo {
    pub pid: u32,
    pub comm: String,
    /// Attach time, ms since the Unix epoch (0 when unknown).
    pub start_unix_ms: u64,
    pub tick_ms: u64,
    /// Mean bytes between samples; 0 when every allocation was captured.
    pub sample_rate: u64,
    /// The heapscope version that captured the session.
    pub heapscope_version: String,
    /// The session is running (a `--serve`), not a recording.
    pub live: bool,
    /// The recording ended with a partial record that was ignored.
    pub truncated: bool,
    /// What was skipped of a recording damaged in the middle (served with
    /// `--allow-damaged`).
    pub damage: Option<String>,
}

/// `/api/v1/meta`: identity, span and counters at the newest tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Meta {
    pub api_version: u32,
    pub pid: u32,
    pub comm: String,
    pub live: bool,
    pub heapscope_version: String,
    pub start_unix_ms: u64,
    pub tick_ms: u64,
    pub sample_rate: u64,
    /// Every per-site number is exact (no sampling, nothing lost).
    pub exact: bool,
    /// The live heap is an estimate from the samples (uprobe sessions left
    /// unsampled blocks untracked), at the newest tick.
    pub live_estimated: bool,
    pub truncated: bool,
    /// What was skipped of a damaged recording; `null` when whole.
    pub damage: Option<String>,
    /// Ticks held, and ticks thinned out to keep memory bounded.
    pub ticks: usize,
    pub dropped_ticks: u64,
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    /// Counters at the newest tick, counted ones then lost ones.
    pub counters: Vec<Counter>,
    /// Ticks the live server could not take in time (its queue was full).
    pub server_dropped_ticks: u64,
}

/// Builds [`Meta`].
pub fn meta(info: &SessionInfo, timeline: &Timeline, last: &Totals, server_dropped: u64) -> Meta {
    let span = timeline.span_ms();
    Meta {
        api_version: API_VERSION,
        pid: info.pid,
        comm: info.comm.clone(),
        live: info.live,
        heapscope_version: info.heapscope_version.clone(),
        start_unix_ms: info.start_unix_ms,
        tick_ms: info.tick_ms,
        sample_rate: info.sample_rate,
        exact: Exactness::new(info.sample_rate, last).sites_exact(),
        live_estimated: Exactness::new(info.sample_rate, last).live_estimated(),
        truncated: info.truncated,
        damage: info.damage.clone(),
        ticks: timeline.len(),
        dropped_ticks: timeline.dropped_ticks(),
        first_ms: span.map(|s| s.0),
        last_ms: span.map(|s| s.1),
        counters: counters(last),
        server_dropped_ticks: server_dropped,
    }
}

/// One point of the timeline chart (and one SSE `tick` event).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimelinePoint {
    pub t_ms: u64,
    /// The live heap: allocated minus freed bytes since attach, exact
    /// (every allocation); with uprobe sessions (`live_estimated`) the
    /// sites' sampled estimate, the only live figure there is.
    pub live_heap: u64,
    /// Allocations minus frees since attach, exact; with uprobe sessions
    /// the sites' estimate.
    pub live_blocks: u64,
    /// `live_heap` and `live_blocks` are estimates: uprobe sessions skipped
    /// the returns of unsampled allocations, whose blocks are not tracked.
    pub live_estimated: bool,
    /// Sum of the sites' live bytes (estimates when sampled).
    pub sites_live_bytes: u64,
    pub sites_live_blocks: u64,
    /// `null` when /proc could not be read at that tick.
    pub rss_anon: Option<u64>,
    pub rss_file: Option<u64>,
    /// `[heap]` + glibc arena heaps + what the allocator mapped itself.
    pub allocator_footprint: Option<u64>,
    /// glibc's footprint split at this tick (from smaps; 0 when not read,
    /// e.g. another allocator): resident bytes of `[heap]`, the number of
    /// non-main arenas, their heaps' reserved and resident bytes, and the
    /// resident bytes of the chunks glibc mmapped on its own.
    pub main_heap_resident: Option<u64>,
    pub arenas: Option<u64>,
    pub arena_reserved: Option<u64>,
    pub arena_resident: Option<u64>,
    pub mmapped_resident: Option<u64>,
    /// Every allocation, tracked or counted at entry only (exact either way).
    pub allocs_per_s: f64,
    pub frees_per_s: f64,
    /// Sum of the lost counters (cumulative).
    pub lost: u64,
    /// The sampling rate in force at this tick when the overhead guard ran
    /// (`--max-overhead`; absent otherwise): mean bytes between samples, 0
    /// for every allocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<u64>,
}

/// Turns ticks into points; keeps the previous tick for rates and a running
/// sum of the sites' live bytes.
#[derive(Default)]
pub struct PointBuilder {
    prev: Option<(u64, u64, u64)>,
    live_sites: u64,
    live_blocks: u64,
    /// Live bytes and blocks per site id, to apply stored changes.
    per_site: Vec<(u64, u64)>,
}

impl PointBuilder {
    /// The point of one stored tick, given the sites that changed since the
    /// previous one (absolute values, as [`Timeline::stored_ticks`] gives them).
    pub fn point(
        &mut self,
        t_ms: u64,
        changes: &[(SiteId, SiteStats)],
        totals: &Totals,
        mem: Option<&MemSample>,
    ) -> TimelinePoint {
        for (id, s) in changes {
            let i = id.0 as usize;
            if i >= self.per_site.len() {
                self.per_site.resize(i + 1, (0, 0));
            }
            let (b, n) = std::mem::replace(&mut self.per_site[i], (s.live_bytes, s.live_count));
            self.live_sites = self
                .live_sites
                .saturating_add(s.live_bytes)
                .saturating_sub(b);
            self.live_blocks = self
                .live_blocks
                .saturating_add(s.live_count)
                .saturating_sub(n);
        }
        self.point_of(t_ms, totals, mem)
    }

    /// A point from totals with the site sums given directly (live ticks).
    pub fn point_with(
        &mut self,
        t_ms: u64,
        totals: &Totals,
        mem: Option<&MemSample>,
        live_sites: u64,
        live_blocks: u64,
    ) -> TimelinePoint {
        self.live_sites = live_sites;
        self.live_blocks = live_blocks;
        self.point_of(t_ms, totals, mem)
    }

    fn point_of(&mut self, t_ms: u64, t: &Totals, mem: Option<&MemSample>) -> TimelinePoint {
        let frees = t.frees.saturating_add(t.frees_unknown);
        // Calls counted at entry only (uprobe sessions) are allocations too.
        let allocs = t.allocs.saturating_add(t.untracked_allocs);
        let (allocs_per_s, frees_per_s) = match self.prev {
            Some((pt, pa, pf)) if t_ms > pt => {
                let dt = (t_ms - pt) as f64 / 1000.0;
                (
                    allocs.saturating_sub(pa) as f64 / dt,
                    frees.saturating_sub(pf) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        };
        self.prev = Some((t_ms, allocs, frees));
        let live_estimated = t.untracked_allocs > 0;
        let (live_heap, live_blocks) = if live_estimated {
            (self.live_sites, self.live_blocks)
        } else {
            (t.live_bytes(), t.live_blocks())
        };
        TimelinePoint {
            t_ms,
            live_heap,
            live_blocks,
            live_estimated,
            sites_live_bytes: self.live_sites,
            sites_live_blocks: self.live_blocks,
            rss_anon: mem.map(|m| m.rss_anon),
            rss_file: mem.map(|m| m.rss_file),
            allocator_footprint: mem.map(|m| m.heap_mappings.saturating_add(m.allocator_mapped)),
            main_heap_resident: mem.map(|m| m.main_heap_resident),
            arenas: mem.map(|m| m.arenas),
            arena_reserved: mem.map(|m| m.arena_reserved),
            arena_resident: mem.map(|m| m.arena_resident),
            mmapped_resident: mem.map(|m| m.mmapped_resident),
            allocs_per_s: super::r3(allocs_per_s),
            frees_per_s: super::r3(frees_per_s),
            lost: lost_total(t),
            sample_rate: None,
        }
    }
}

/// Every stored tick as a point, oldest first.
pub fn series(timeline: &Timeline) -> Vec<TimelinePoint> {
    let mut b = PointBuilder::default();
    let guard = timeline.guard();
    let start = guard.and_then(|g| {
        g.changes
            .iter()
            .find(|p| p.from != p.rate)
            .map(|p| p.from)
            .or(g.last.map(|p| p.rate))
    });
    timeline
        .stored_ticks()
        .map(|(t, changes, totals, mem)| {
            let mut p = b.point(t, changes, totals, mem);
            p.sample_rate = guard.zip(start).map(|(g, s)| g.rate_at(t, s));
            p
        })
        .collect()
}
