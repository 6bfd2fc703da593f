//! Synthetic timelines shared by the tests of timeline, analysis, record and views.

use crate::profile::{Frame, SiteStats};

use super::{MemSample, SiteId, SiteInfo, Tick, Timeline};

/// A function frame; the only place tests build a `Frame`, so a new field is
/// a one-line fix.
pub(crate) fn frame(name: &str) -> Frame {
    Frame::function(name, "app")
}

/// A frame with DWARF source information.
pub(crate) fn frame_src(name: &str, file: &str, line: u32, inlined: bool) -> Frame {
    Frame::Function {
        name: name.into(),
        module: "app".into(),
        file: Some(file.into()),
        line: Some(line),
        inlined,
        pc: None,
    }
}

/// An unresolved frame.
pub(crate) fn frame_unknown(module: &str, offset: u64) -> Frame {
    Frame::Unknown {
        module: module.into(),
        offset,
        pc: None,
    }
}

/// A site with frames `main` → ... → `leaf` calling `api`.
pub(crate) fn site_info(leaf: &str, api: &'static str) -> SiteInfo {
    SiteInfo {
        pid: 0,
        frames: vec![frame("main"), frame("handle_request"), frame(leaf)].into(),
        api,
    }
}

/// Stats of a site holding `live` bytes, having allocated `alloc` bytes.
/// Blocks are 100 bytes each.
pub(crate) fn stats(live: u64, alloc: u64) -> SiteStats {
    SiteStats {
        live_bytes: live,
        live_count: live / 100,
        alloc_bytes: alloc,
        alloc_count: alloc / 100,
        ..Default::default()
    }
}

/// A timeline with one site per `(leaf, live(tick index))` entry, `n` ticks
/// one second apart; allocated bytes = live + 1000 × tick (some churn).
pub(crate) fn timeline_of(n: usize, series: &[(&str, &dyn Fn(usize) -> u64)]) -> Timeline {
    timeline_with_mem(n, series, &|_, _| None)
}

/// As [`timeline_of`], with `mem(tick, live heap)` as each tick's memory sample.
pub(crate) fn timeline_with_mem(
    n: usize,
    series: &[(&str, &dyn Fn(usize) -> u64)],
    mem: &dyn Fn(usize, u64) -> Option<MemSample>,
) -> Timeline {
    let mut tl = Timeline::default();
    let ids: Vec<SiteId> = series
        .iter()
        .map(|(leaf, _)| tl.add_site(site_info(leaf, "malloc")))
        .collect();
    for i in 0..n {
        let sites: Vec<(SiteId, SiteStats)> = ids
            .iter()
            .zip(series)
            .map(|(id, (_, f))| (*id, stats(f(i), f(i) + 1000 * i as u64)))
            .collect();
        let live: u64 = sites.iter().map(|(_, s)| s.live_bytes).sum();
        tl.push(Tick {
            t_ms: i as u64 * 1000,
            sites,
            totals: crate::profile::Totals {
                allocs: i as u64 * 10,
                alloc_bytes: live + 1000 * i as u64,
                // So that allocated − freed is the sites' live total.
                free_bytes: 1000 * i as u64,
                ..Default::default()
            },
            mem: mem(i, live),
            arenas: Vec::new(),
        });
    }
    tl
}

/// A deterministic PRNG (xorshift64*) for noise and fuzzing in tests.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
