//! Allocator retention: resident anonymous memory that grows while the live
//! heap does not.
//!
//! The gap is `RssAnon − live heap` (the exact allocated − freed bytes). Its
//! level means little (memory allocated before attach, thread stacks and
//! JIT code are in it); its growth does: when the program's live heap stays
//! flat but RSS climbs, the allocator keeps memory that was freed (glibc
//! arenas that cannot shrink, fragmentation) — the ksqlDB and Kurento stories.
//! A real leak moves RSS and the live heap together, so the gap stays flat.

use crate::timeline::{MemSample, Timeline, Window};

use super::fit::{kendall_tau, subsample, theil_sen};

/// Thresholds of [`retention_finding_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionParams {
    /// Memory samples the window needs.
    pub min_points: usize,
    /// Window length needed, in ms.
    pub min_span_ms: u64,
    /// Fitted growth of the gap over the window below which nothing is said:
    /// thread stacks, TLS and page-granular RSS move by a few MiB on their own.
    pub min_gap_growth_bytes: u64,
    /// The gap must also grow by this share of the starting RssAnon, so a
    /// 30 GiB process is not flagged for a few MiB.
    pub min_gap_growth_share: f64,
    /// "The live heap is flat": its fitted growth is at most this share of
    /// the gap's. Allocator overhead of a real leak (chunk headers, rounding)
    /// grows the gap by a fraction of the leak, well below this.
    pub max_live_share: f64,
    /// Kendall's tau of the gap: it must rise rather than swing.
    pub min_trend: f64,
    /// Points given to the O(n²) fits.
    pub max_points: usize,
}

impl Default for RetentionParams {
    fn default() -> RetentionParams {
        RetentionParams {
            min_points: 5,
            min_span_ms: 5_000,
            min_gap_growth_bytes: 8 << 20,
            min_gap_growth_share: 0.05,
            max_live_share: 0.25,
            min_trend: 0.3,
            max_points: 200,
        }
    }
}

/// Remedies for memory that glibc's per-thread arenas keep.
pub const REMEDY_ARENA_MAX: &str = "cap glibc's arenas with MALLOC_ARENA_MAX=2 (or 1-4): \
memory freed into one thread's arena can then be reused by the others instead of \
staying in a 64 MiB arena heap (the ksqlDB case)";
/// Remedy: give free pages back.
pub const REMEDY_TRIM: &str = "return free memory to the kernel: call malloc_trim(0) \
after load peaks, or lower MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ so glibc \
trims by itself and serves large blocks with mmap";
/// Remedy: another allocator.
pub const REMEDY_ALLOCATOR: &str = "use an allocator that fragments less and returns \
memory, e.g. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (jemalloc) or \
tcmalloc (what fixed ksqlDB and Kurento)";

/// RSS growing away from the live heap, with the numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionFinding {
    /// Times (ms since attach) of the first and last memory sample used.
    pub start_ms: u64,
    pub end_ms: u64,
    pub live_heap_start: u64,
    pub live_heap_end: u64,
    pub rss_anon_start: u64,
    pub rss_anon_end: u64,
    /// `rss_anon − live heap`; negative when the live heap is not resident yet.
    pub gap_start: i64,
    pub gap_end: i64,
    /// Growth of the robust fit of the gap over the window.
    pub gap_growth_bytes: i64,
    pub gap_growth_bytes_per_hour: f64,
    pub live_growth_bytes_per_hour: f64,
    /// `[heap]` + arena heaps at the start and the end.
    pub heap_mappings_start: u64,
    pub heap_mappings_end: u64,
    /// glibc arena heaps at the end.
    pub arena_heaps: u64,
    /// What the allocator mapped itself at the end (0 if unknown).
    pub allocator_mapped: u64,
    /// The memory sample at the end (glibc's footprint split when read).
    pub mem_end: MemSample,
    pub remedies: Vec<&'static str>,
    /// Per arena and across threads, when arenas were recorded.
    pub mechanism: Option<super::Mechanism>,
}

/// [`retention_finding_with`] with the default thresholds.
pub fn retention_finding(timeline: &Timeline, window: Window) -> Option<RetentionFinding> {
    retention_finding_with(timeline, window, &RetentionParams::default())
}

/// The retention finding of `window`, if its memory samples show one: the
/// gap grows by at least `max(min_gap_growth_bytes, min_gap_growth_share ×
/// RssAnon at start)`, rises (tau ≥ `min_trend`), and the live heap grows by
/// at most `max_live_share` of that.
pub fn retention_finding_with(
    timeline: &Timeline,
    window: Window,
    p: &RetentionParams,
) -> Option<RetentionFinding> {
    let range = timeline.range(window);
    let mut samples: Vec<(u64, i64, MemSample)> = Vec::new();
    timeline.replay(range, |v| {
        // The exact live heap, never the sampled per-site estimate, unless
        // uprobe sessions left the estimate the only live figure.
        let live = i64::try_from(v.live_heap()).unwrap_or(i64::MAX);
        if let Some(m) = v.mem {
            samples.push((v.t_ms, live, *m));
        }
    });
    if samples.len() < p.min_points.max(2) {
        return None;
    }
    let (first, last) = (samples.first()?, samples.last()?);
    if last.0.saturating_sub(first.0) < p.min_span_ms {
        return None;
    }
    let span_s = (last.0 - first.0) as f64 / 1000.0;
    let picks = subsample(samples.len(), p.max_points);
    let at = |k: usize| samples.get(k);
    let x = |t: u64| (t - first.0) as f64 / 1000.0;
    let gap_pts: Vec<(f64, f64)> = picks
        .iter()
        .filter_map(|&k| at(k))
        .map(|(t, l, m)| (x(*t), m.rss_anon as f64 - *l as f64))
        .collect();
    let live_pts: Vec<(f64, f64)> = picks
        .iter()
        .filter_map(|&k| at(k))
        .map(|(t, l, _)| (x(*t), *l as f64))
        .collect();
    let gap_fit = theil_sen(&gap_pts)?;
    let live_fit = theil_sen(&live_pts)?;
    let gap_growth = gap_fit.slope * span_s;
    let needed =
        (p.min_gap_growth_bytes as f64).max(p.min_gap_growth_share * first.2.rss_anon as f64);
    if gap_growth < needed || kendall_tau(&gap_pts) < p.min_trend {
        return None;
    }
    if live_fit.slope * span_s > p.max_live_share * gap_growth {
        return None;
    }
    let gap = |(_, l, m): &(u64, i64, MemSample)| m.rss_anon as i64 - l;
    let mut remedies = vec![REMEDY_TRIM, REMEDY_ALLOCATOR];
    // Arena heaps on the map point at the per-thread-arena case first.
    if last.2.arena_heaps > 0 {
        remedies.insert(0, REMEDY_ARENA_MAX);
    } else {
        remedies.push(REMEDY_ARENA_MAX);
    }
    Some(RetentionFinding {
        start_ms: first.0,
        end_ms: last.0,
        live_heap_start: first.1.max(0) as u64,
        live_heap_end: last.1.max(0) as u64,
        rss_anon_start: first.2.rss_anon,
        rss_anon_end: last.2.rss_anon,
        gap_start: gap(first),
        gap_end: gap(last),
        gap_growth_bytes: gap_growth as i64,
        gap_growth_bytes_per_hour: gap_fit.slope * 3600.0,
        live_growth_bytes_per_hour: live_fit.slope * 3600.0,
        heap_mappings_start: first.2.heap_mappings,
        heap_mappings_end: last.2.heap_mappings,
        arena_heaps: last.2.arena_heaps,
        allocator_mapped: last.2.allocator_mapped,
        mem_end: last.2,
        remedies,
        mechanism: None,
    })
}
