//! The mechanism behind glibc's retention: what each arena keeps at the end
//! of a window (resident − live), which call sites' blocks were freed by
//! other threads into arenas those threads do not allocate from (the ksqlDB
//! story: memory freed into a producer's arena that nobody reuses), and
//! remedies chosen from those numbers.

use crate::process::arenas::Home;
use crate::profile::Frame;
use crate::timeline::{ArenaSample, ProfileMeta, Timeline, Window};

/// Cross-thread sites listed in a finding.
pub const TOP_CROSS_SITES: usize = 5;

/// Below this, retained bytes are page-granular noise: no remedy for them.
pub const MIN_RETAINED: u64 = 8 << 20;

/// glibc's default `M_MMAP_THRESHOLD` (and its `M_TRIM_THRESHOLD`).
const MMAP_THRESHOLD: u64 = 128 << 10;

/// One call site whose blocks were freed across threads in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossThreadSite {
    /// Root first, leaf last.
    pub frames: std::sync::Arc<[Frame]>,
    pub api: &'static str,
    /// Bytes and blocks freed across threads (estimates when sampled).
    pub bytes: u64,
    pub count: u64,
    /// What the site allocated in the window, for the share.
    pub alloc_bytes: u64,
}

/// The per-arena picture and its mechanism.
#[derive(Clone, Debug, PartialEq)]
pub struct Mechanism {
    /// Time of the arena sample used (ms since attach).
    pub t_ms: u64,
    /// Main heap, each arena, mmapped chunks.
    pub arenas: Vec<ArenaSample>,
    /// The sites with most bytes freed across threads, largest first.
    pub cross_sites: Vec<CrossThreadSite>,
    /// Over every site.
    pub cross_bytes: u64,
    pub cross_count: u64,
    /// Concrete advice with the numbers, most specific first.
    pub remedies: Vec<Remedy>,
}

impl Mechanism {
    /// Cross-thread frees were judged by arena (glibc, DWARF samples);
    /// otherwise by thread alone (frame-pointer sites, other allocators).
    pub fn arenas_compared(&self) -> bool {
        !self.arenas.is_empty()
    }

    /// Non-main arenas.
    pub fn arena_rows(&self) -> impl Iterator<Item = &ArenaSample> {
        self.arenas
            .iter()
            .filter(|a| matches!(a.home, Home::Arena(_)))
    }
}

/// The mechanism of `window`, when the timeline has glibc arenas or
/// cross-thread frees in it.
pub fn mechanism(timeline: &Timeline, window: Window) -> Option<Mechanism> {
    let (t_ms, arenas) = match timeline.last_arenas(window) {
        Some((t, a)) => (t, a),
        None => (timeline.span_ms().map_or(0, |(_, last)| last), &[][..]),
    };
    let profile = timeline.profile_for(window, &ProfileMeta::default());
    let mut cross_sites: Vec<CrossThreadSite> = profile
        .sites
        .iter()
        .filter(|s| s.stats.cross_free_bytes > 0)
        .map(|s| CrossThreadSite {
            frames: s.frames.clone(),
            api: s.api,
            bytes: s.stats.cross_free_bytes,
            count: s.stats.cross_free_count,
            alloc_bytes: s.stats.alloc_bytes,
        })
        .collect();
    let cross_bytes: u64 = cross_sites.iter().map(|s| s.bytes).sum();
    let cross_count = cross_sites.iter().map(|s| s.count).sum();
    if arenas.is_empty() && cross_bytes == 0 {
        return None;
    }
    cross_sites.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    cross_sites.truncate(TOP_CROSS_SITES);
    // Call sites whose mean block is at least the default mmap threshold
    // (mapped regions are the program's own, not glibc's).
    let mut large: Vec<LargeSite<'_>> = profile
        .sites
        .iter()
        .filter(|s| s.api != "mmap" && s.stats.alloc_count > 0)
        .map(|s| LargeSite {
            frames: &s.frames,
            api: s.api,
            mean: s.stats.alloc_bytes / s.stats.alloc_count,
        })
        .filter(|l| l.mean >= MMAP_THRESHOLD)
        .collect();
    large.sort_by_key(|l| std::cmp::Reverse(l.mean));
    let mut m = Mechanism {
        t_ms,
        arenas: arenas.to_vec(),
        cross_sites,
        cross_bytes,
        cross_count,
        remedies: Vec::new(),
    };
    m.remedies = remedies(&m, &large);
    Some(m)
}

/// A remedy chosen from the measured numbers (rendered by the views).
#[derive(Clone, Debug, PartialEq)]
pub enum Remedy {
    /// Several arenas retain: cap them (`MALLOC_ARENA_MAX`).
    ArenaMax {
        arenas: usize,
        resident: u64,
        live: u64,
        retained: u64,
        /// The arena retaining most: (address, retained, resident).
        worst: Option<(u64, u64, u64)>,
    },
    /// A site's blocks are freed by other threads: free them on the
    /// allocating thread.
    FreeOnAllocatingThread {
        /// Judged by arena (see [`Mechanism::arenas_compared`]).
        arenas_compared: bool,
        frames: std::sync::Arc<[Frame]>,
        api: &'static str,
        bytes: u64,
        count: u64,
        /// Share of what the site allocated in the window.
        share: Option<f64>,
    },
    /// Heaps keep free pages: `malloc_trim(0)`.
    Trim { total: u64, main: u64, arenas: u64 },
    /// `[heap]` keeps free pages at its top: `M_TRIM_THRESHOLD`.
    TrimThreshold { main: u64 },
    /// Large blocks served from heaps: a fixed `M_MMAP_THRESHOLD`.
    MmapThreshold {
        sites: usize,
        frames: Vec<Frame>,
        api: &'static str,
        mean: u64,
    },
}

impl Remedy {
    /// The tunable or call it is about, so a general remedy it covers is
    /// not repeated.
    pub fn key(&self) -> &'static str {
        match self {
            Remedy::ArenaMax { .. } => "MALLOC_ARENA_MAX",
            Remedy::FreeOnAllocatingThread { .. } => "free on the allocating thread",
            Remedy::Trim { .. } => "malloc_trim",
            Remedy::TrimThreshold { .. } => "MALLOC_TRIM_THRESHOLD_",
            Remedy::MmapThreshold { .. } => "MALLOC_MMAP_THRESHOLD_",
        }
    }
}

/// A site whose mean block is at least glibc's default mmap threshold.
pub struct LargeSite<'a> {
    pub frames: &'a [Frame],
    pub api: &'static str,
    pub mean: u64,
}

/// Remedies from the numbers: fewer arenas when several retain, freeing on
/// the allocating thread when sites free across threads, malloc_trim and
/// the trim threshold when heaps keep free pages, a fixed mmap threshold
/// when large blocks are served from heaps.
pub fn remedies(m: &Mechanism, large: &[LargeSite<'_>]) -> Vec<Remedy> {
    let mut out = Vec::new();
    let arenas: Vec<&ArenaSample> = m.arena_rows().collect();
    let sum = |f: fn(&ArenaSample) -> u64| arenas.iter().map(|a| f(a)).sum::<u64>();
    let (resident, live, retained) = (
        sum(|a| a.resident),
        sum(|a| a.live),
        sum(ArenaSample::retained),
    );
    let main = m.arenas.iter().find(|a| a.home == Home::Main);
    let main_retained = main.map_or(0, ArenaSample::retained);
    if arenas.len() >= 2 && retained >= MIN_RETAINED.max(resident / 4) {
        let worst = arenas
            .iter()
            .max_by_key(|a| a.retained())
            .and_then(|a| match a.home {
                Home::Arena(addr) => Some((addr, a.retained(), a.resident)),
                _ => None,
            });
        out.push(Remedy::ArenaMax {
            arenas: arenas.len(),
            resident,
            live,
            retained,
            worst,
        });
    }
    if let Some(top) = m.cross_sites.first() {
        out.push(Remedy::FreeOnAllocatingThread {
            arenas_compared: m.arenas_compared(),
            frames: top.frames.clone(),
            api: top.api,
            bytes: top.bytes,
            count: top.count,
            share: (top.alloc_bytes > 0).then(|| top.bytes as f64 / top.alloc_bytes as f64),
        });
    }
    let all_retained = retained.saturating_add(main_retained);
    if all_retained >= MIN_RETAINED {
        out.push(Remedy::Trim {
            total: all_retained,
            main: main_retained,
            arenas: retained,
        });
    }
    if main_retained >= MIN_RETAINED {
        out.push(Remedy::TrimThreshold {
            main: main_retained,
        });
    }
    if let (Some(l), true) = (large.first(), all_retained >= MIN_RETAINED) {
        out.push(Remedy::MmapThreshold {
            sites: large.len(),
            frames: l.frames.to_vec(),
            api: l.api,
            mean: l.mean,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn arena(home: Home, resident: u64, live: u64) -> ArenaSample {
        ArenaSample {
            home,
            heaps: 1,
            reserved: resident,
            resident,
            live,
        }
    }

    fn mech(arenas: Vec<ArenaSample>, cross: Vec<CrossThreadSite>) -> Mechanism {
        Mechanism {
            t_ms: 0,
            arenas,
            cross_bytes: cross.iter().map(|c| c.bytes).sum(),
            cross_count: cross.iter().map(|c| c.count).sum(),
            cross_sites: cross,
            remedies: Vec::new(),
        }
    }

    #[test]
    fn retaining_arenas_and_cross_thread_frees_get_their_remedies() {
        let produce = vec![Frame::function("produce", "app")];
        let m = mech(
            vec![
                arena(Home::Main, MIB, MIB),
                arena(Home::Arena(0x7f00_0000_0020), 60 * MIB, 2 * MIB),
                arena(Home::Arena(0x7e00_0000_0020), 40 * MIB, 30 * MIB),
                arena(Home::Mmapped, 0, 0),
            ],
            vec![CrossThreadSite {
                frames: produce.clone().into(),
                api: "malloc",
                bytes: 48 * MIB,
                count: 12_288,
                alloc_bytes: 64 * MIB,
            }],
        );
        let r = remedies(&m, &[]);
        assert_eq!(
            r,
            vec![
                Remedy::ArenaMax {
                    arenas: 2,
                    resident: 100 * MIB,
                    live: 32 * MIB,
                    retained: 68 * MIB,
                    worst: Some((0x7f00_0000_0020, 58 * MIB, 60 * MIB)),
                },
                Remedy::FreeOnAllocatingThread {
                    arenas_compared: true,
                    frames: produce.into(),
                    api: "malloc",
                    bytes: 48 * MIB,
                    count: 12_288,
                    share: Some(0.75),
                },
                Remedy::Trim {
                    total: 68 * MIB,
                    main: 0,
                    arenas: 68 * MIB,
                },
            ]
        );
    }

    #[test]
    fn a_retaining_main_heap_gets_trim_and_mmap_thresholds() {
        let m = mech(
            vec![
                arena(Home::Main, 50 * MIB, 4 * MIB),
                arena(Home::Mmapped, 0, 0),
            ],
            Vec::new(),
        );
        let burst = vec![Frame::function("burst", "app")];
        let large = [LargeSite {
            frames: &burst,
            api: "malloc",
            mean: 256 << 10,
        }];
        let keys: Vec<&str> = remedies(&m, &large).iter().map(Remedy::key).collect();
        assert_eq!(
            keys,
            vec![
                "malloc_trim",
                "MALLOC_TRIM_THRESHOLD_",
                "MALLOC_MMAP_THRESHOLD_"
            ]
        );
    }

    #[test]
    fn nothing_retained_nothing_advised() {
        let m = mech(vec![arena(Home::Main, 2 * MIB, 2 * MIB)], Vec::new());
        let x = vec![Frame::function("x", "app")];
        let large = [LargeSite {
            frames: &x,
            api: "malloc",
            mean: 1 << 20,
        }];
        assert!(remedies(&m, &large).is_empty());
    }
}
