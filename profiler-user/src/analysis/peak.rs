//! Memory not returned after a peak (the fragmentation seed, Kurento): the
//! live heap falls well below its peak while RSS stays near the peak's.
//!
//! The live heap is the exact allocated − freed figure of each tick. A peak
//! that was freed should give its pages back; with glibc the main heap can
//! only shrink from its top, so one live block above the freed ones keeps
//! every page below it (that block's call site is named by `attach`, see
//! `session::arenas`), and arena heaps shrink only from their top too.

use crate::timeline::{MemSample, Timeline, Window};

/// Thresholds of [`peak_finding_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeakParams {
    /// The live heap must fall by at least this much from its peak...
    pub min_drop_bytes: u64,
    /// ...to at most this share of it...
    pub max_live_share_after: f64,
    /// ...while RSS (anon) keeps at least this share of its value at the peak.
    pub min_rss_kept_share: f64,
}

impl Default for PeakParams {
    fn default() -> PeakParams {
        PeakParams {
            min_drop_bytes: 8 << 20,
            max_live_share_after: 0.5,
            min_rss_kept_share: 0.75,
        }
    }
}

/// Remedies for memory kept after a peak.
pub const REMEDY_TRIM_AFTER_PEAK: &str = "call malloc_trim(0) after load peaks: glibc \
returns the free pages inside its heaps (madvise), not only the top";
/// Remedy: keep long-lived blocks out of the transient ones' heap.
pub const REMEDY_SEPARATE_LONG_LIVED: &str = "allocate long-lived objects apart from \
transient ones (a pool, or allocate them before the peak): one long-lived block at the \
top of the heap keeps glibc from trimming everything below it";
/// Remedy: mmap threshold.
pub const REMEDY_MMAP_THRESHOLD: &str = "lower MALLOC_MMAP_THRESHOLD_ (e.g. 65536) so \
large transient buffers are mmapped and unmapped on free";

/// The live heap fell after a peak and RSS did not.
#[derive(Clone, Debug, PartialEq)]
pub struct PeakFinding {
    /// Time (ms since attach) of the peak and of the last sample.
    pub peak_ms: u64,
    pub end_ms: u64,
    pub live_peak: u64,
    pub live_end: u64,
    pub rss_anon_peak: u64,
    pub rss_anon_end: u64,
    /// Memory sample at the end (glibc's footprint split when read).
    pub mem_end: MemSample,
    pub remedies: Vec<&'static str>,
    /// Per arena and across threads, when arenas were recorded.
    pub mechanism: Option<super::Mechanism>,
}

impl PeakFinding {
    /// RSS (anon) − live heap at the end: what the allocator keeps.
    pub fn retained(&self) -> u64 {
        self.rss_anon_end.saturating_sub(self.live_end)
    }
}

/// [`peak_finding_with`] with the default thresholds.
pub fn peak_finding(timeline: &Timeline, window: Window) -> Option<PeakFinding> {
    peak_finding_with(timeline, window, &PeakParams::default())
}

/// The finding of `window`, if the exact live heap fell from its peak by at
/// least `min_drop_bytes` to at most `max_live_share_after` of it while RSS
/// kept `min_rss_kept_share` of its value at the peak and exceeds the live
/// heap by at least `min_drop_bytes`.
pub fn peak_finding_with(
    timeline: &Timeline,
    window: Window,
    p: &PeakParams,
) -> Option<PeakFinding> {
    let mut samples: Vec<(u64, u64, MemSample)> = Vec::new();
    timeline.replay(timeline.range(window), |v| {
        if let Some(m) = v.mem {
            samples.push((v.t_ms, v.live_heap(), *m));
        }
    });
    let (peak_i, peak) = samples
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (s.1, std::cmp::Reverse(*i)))?;
    let end = samples.last()?;
    if peak_i + 1 >= samples.len() {
        return None;
    }
    let dropped = peak.1.saturating_sub(end.1);
    let kept = end.2.rss_anon as f64 >= p.min_rss_kept_share * peak.2.rss_anon as f64;
    let fell = (end.1 as f64) <= p.max_live_share_after * peak.1 as f64;
    let retained = end.2.rss_anon.saturating_sub(end.1);
    if dropped < p.min_drop_bytes || !fell || !kept || retained < p.min_drop_bytes {
        return None;
    }
    Some(PeakFinding {
        peak_ms: peak.0,
        end_ms: end.0,
        live_peak: peak.1,
        live_end: end.1,
        rss_anon_peak: peak.2.rss_anon,
        rss_anon_end: end.2.rss_anon,
        mem_end: end.2,
        remedies: vec![
            REMEDY_TRIM_AFTER_PEAK,
            REMEDY_SEPARATE_LONG_LIVED,
            REMEDY_MMAP_THRESHOLD,
        ],
        mechanism: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Totals;
    use crate::timeline::Tick;

    const MIB: u64 = 1 << 20;

    /// Ticks of (live heap, RSS anon) one second apart.
    fn timeline(points: &[(u64, u64)]) -> Timeline {
        let mut tl = Timeline::default();
        let mut freed = 0;
        for (i, (live, rss)) in points.iter().enumerate() {
            // Allocated − freed is the live heap.
            freed += 1;
            tl.push(Tick {
                t_ms: i as u64 * 1000,
                sites: Vec::new(),
                totals: Totals {
                    alloc_bytes: live + freed,
                    free_bytes: freed,
                    ..Totals::default()
                },
                mem: Some(MemSample {
                    rss_anon: *rss,
                    main_heap_resident: *rss,
                    ..MemSample::default()
                }),
                arenas: Vec::new(),
            });
        }
        tl
    }

    #[test]
    fn freed_peak_with_rss_kept_is_a_finding() {
        let tl = timeline(&[
            (MIB, 5 * MIB),
            (40 * MIB, 44 * MIB),
            (41 * MIB, 45 * MIB),
            (MIB / 50, 45 * MIB),
            (MIB / 50, 45 * MIB),
        ]);
        let f = peak_finding(&tl, Window::ALL).expect("finding");
        assert_eq!((f.peak_ms, f.end_ms), (2000, 4000));
        assert_eq!(f.live_peak, 41 * MIB);
        assert_eq!(f.live_end, MIB / 50);
        assert_eq!(f.retained(), 45 * MIB - MIB / 50);
        assert_eq!(f.mem_end.main_heap_resident, 45 * MIB);
    }

    #[test]
    fn returned_memory_or_a_growing_heap_is_not() {
        // RSS followed the live heap down.
        let returned = timeline(&[(40 * MIB, 44 * MIB), (MIB, 6 * MIB), (MIB, 6 * MIB)]);
        assert_eq!(peak_finding(&returned, Window::ALL), None);
        // Still at the peak.
        let growing = timeline(&[(MIB, 5 * MIB), (20 * MIB, 24 * MIB), (40 * MIB, 44 * MIB)]);
        assert_eq!(peak_finding(&growing, Window::ALL), None);
        // A small dip is no peak.
        let dip = timeline(&[(40 * MIB, 44 * MIB), (36 * MIB, 44 * MIB)]);
        assert_eq!(peak_finding(&dip, Window::ALL), None);
        assert_eq!(peak_finding(&Timeline::default(), Window::ALL), None);
    }
}
