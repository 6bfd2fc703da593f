//! The mechanism behind glibc's retention: what each arena keeps at the end
//! of a window (resident − live), which call sites' blocks were freed by
//! other threads into arenas those threads do not allocate from (the ksqlDB
//! story: memory freed into a producer's arena that nobody reuses), and
//! remedies chosen from those numbers.

use crate::process::arenas::Home;
use crate::profile::Frame;
use crate::timeline::{ArenaSample, ProfileMeta, Timeline, Window};
use crate::units::human_bytes;

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
    pub frames: Vec<Frame>,
    pub api: &'static str,
    /// Bytes and blocks freed across threads (estimates when sampled).
    pub bytes: u64,
    pub count: u64,
    /// What the site allocated in the window, for the share.
    pub alloc_bytes: u64,
}

/// The per-arena picture and its mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    pub remedies: Vec<String>,
}

impl Mechanism {
    /// Non-main arenas.
    pub fn arena_rows(&self) -> impl Iterator<Item = &ArenaSample> {
        self.arenas
            .iter()
            .filter(|a| matches!(a.home, Home::Arena(_)))
    }
}

/// The mechanism of `window`, when the timeline has glibc arenas in it.
pub fn mechanism(timeline: &Timeline, window: Window) -> Option<Mechanism> {
    let (t_ms, arenas) = timeline.last_arenas(window)?;
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
    let cross_bytes = cross_sites.iter().map(|s| s.bytes).sum();
    let cross_count = cross_sites.iter().map(|s| s.count).sum();
    cross_sites.sort_by_key(|s| std::cmp::Reverse(s.bytes));
    cross_sites.truncate(TOP_CROSS_SITES);
    // Call sites whose mean block is at least the default mmap threshold
    // (mapped regions are the program's own, not glibc's).
    let large: Vec<(String, u64)> = profile
        .sites
        .iter()
        .filter(|s| s.api != "mmap" && s.stats.alloc_count > 0)
        .map(|s| (s, s.stats.alloc_bytes / s.stats.alloc_count))
        .filter(|(_, mean)| *mean >= MMAP_THRESHOLD)
        .map(|(s, mean)| (site_name(&s.frames, s.api), mean))
        .collect();
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

/// `leaf <- caller (api)`.
pub fn site_name(frames: &[Frame], api: &str) -> String {
    let names: Vec<String> = frames.iter().rev().take(2).map(Frame::label).collect();
    if names.is_empty() {
        format!("[unknown stack] ({api})")
    } else {
        format!("{} ({api})", names.join(" <- "))
    }
}

/// Remedies from the numbers: fewer arenas when several retain, freeing on
/// the allocating thread when sites free across threads, malloc_trim and
/// the trim threshold when heaps keep free pages, a fixed mmap threshold
/// when large blocks are served from heaps. `large`: (site, mean block).
pub fn remedies(m: &Mechanism, large: &[(String, u64)]) -> Vec<String> {
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
        let worst = arenas.iter().max_by_key(|a| a.retained());
        let worst = worst.map_or(String::new(), |a| match a.home {
            Home::Arena(addr) => format!(
                " (arena {addr:#x} alone: {} of {})",
                human_bytes(a.retained()),
                human_bytes(a.resident)
            ),
            _ => String::new(),
        });
        out.push(format!(
            "MALLOC_ARENA_MAX=2 (or 1 for few threads): {} arenas hold {} resident for {} live, \
             {} retained{worst}; with fewer arenas, memory one thread frees is reused by the \
             others instead of staying in per-thread 64 MiB heaps",
            arenas.len(),
            human_bytes(resident),
            human_bytes(live),
            human_bytes(retained),
        ));
    }
    if let Some(top) = m.cross_sites.first() {
        let share = if top.alloc_bytes > 0 {
            format!(
                ", {:.0}% of what it allocated",
                100.0 * top.bytes as f64 / top.alloc_bytes as f64
            )
        } else {
            String::new()
        };
        out.push(format!(
            "free blocks on the thread that allocated them (or hand them back to it): {} had {} \
             in {} blocks freed by other threads into arenas those threads do not allocate \
             from{share}; freed there, the memory is reused only when the allocating thread \
             allocates again",
            site_name(&top.frames, top.api),
            human_bytes(top.bytes),
            top.count,
        ));
    }
    let all_retained = retained.saturating_add(main_retained);
    if all_retained >= MIN_RETAINED {
        out.push(format!(
            "call malloc_trim(0) after bursts: {} is resident but not live ([heap] {}, arenas \
             {}); glibc gives back free pages inside its heaps only in malloc_trim",
            human_bytes(all_retained),
            human_bytes(main_retained),
            human_bytes(retained),
        ));
    }
    if main_retained >= MIN_RETAINED {
        out.push(format!(
            "set MALLOC_TRIM_THRESHOLD_=131072 (M_TRIM_THRESHOLD): [heap] keeps {} it does not \
             use; glibc trims its top only past the trim threshold, which freeing a large \
             mmapped block raises to twice the mmap threshold (up to 64 MiB); setting it \
             fixes both",
            human_bytes(main_retained),
        ));
    }
    if let Some((site, mean)) = large.first() {
        if all_retained >= MIN_RETAINED {
            out.push(format!(
                "set MALLOC_MMAP_THRESHOLD_=131072 (M_MMAP_THRESHOLD): {} call site(s) allocate \
                 blocks of {}+ on average (e.g. {site}: {}); after the first such block is \
                 freed glibc raises its mmap threshold (up to 32 MiB) and serves them from \
                 heaps, where they fragment; a fixed threshold keeps each in its own mapping, \
                 unmapped at free",
                large.len(),
                human_bytes(MMAP_THRESHOLD),
                human_bytes(*mean),
            ));
        }
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
        let m = mech(
            vec![
                arena(Home::Main, MIB, MIB),
                arena(Home::Arena(0x7f00_0000_0020), 60 * MIB, 2 * MIB),
                arena(Home::Arena(0x7e00_0000_0020), 40 * MIB, 30 * MIB),
                arena(Home::Mmapped, 0, 0),
            ],
            vec![CrossThreadSite {
                frames: vec![Frame::function("produce", "app")],
                api: "malloc",
                bytes: 48 * MIB,
                count: 12_288,
                alloc_bytes: 64 * MIB,
            }],
        );
        let r = remedies(&m, &[]);
        assert_eq!(r.len(), 3, "{r:#?}");
        assert!(r[0].starts_with("MALLOC_ARENA_MAX=2"), "{}", r[0]);
        assert!(
            r[0].contains("2 arenas hold 100.0 MiB resident for 32.0 MiB live, 68.0 MiB retained"),
            "{}",
            r[0]
        );
        assert!(
            r[0].contains("arena 0x7f0000000020 alone: 58.0 MiB of 60.0 MiB"),
            "{}",
            r[0]
        );
        assert!(
            r[1].contains("produce (malloc) had 48.0 MiB in 12288 blocks"),
            "{}",
            r[1]
        );
        assert!(r[1].contains("75% of what it allocated"), "{}", r[1]);
        assert!(r[2].starts_with("call malloc_trim(0)"), "{}", r[2]);
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
        let r = remedies(&m, &[("burst (malloc)".into(), 256 << 10)]);
        assert_eq!(r.len(), 3, "{r:#?}");
        assert!(
            r[0].contains("46.0 MiB is resident but not live ([heap] 46.0 MiB"),
            "{}",
            r[0]
        );
        assert!(r[1].starts_with("set MALLOC_TRIM_THRESHOLD_"), "{}", r[1]);
        assert!(r[2].contains("e.g. burst (malloc): 256.0 KiB"), "{}", r[2]);
    }

    #[test]
    fn nothing_retained_nothing_advised() {
        let m = mech(vec![arena(Home::Main, 2 * MIB, 2 * MIB)], Vec::new());
        assert!(remedies(&m, &[("x (malloc)".into(), 1 << 20)]).is_empty());
    }
}
