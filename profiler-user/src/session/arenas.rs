//! At the end of a glibc session: each arena's resident bytes next to the
//! live bytes of the sampled blocks it holds (from their chunk headers), and
//! the live block at the top of `[heap]` that keeps glibc from trimming it.
//! Read while the target still runs.

use std::collections::BTreeMap;

use crate::analysis::age::OutstandingAlloc;
use crate::process::arenas::{
    footprint, home_of, parse_smaps, Footprint, Home, ProcessMemory, Usage,
};
use crate::process::maps::MemoryMap;
use crate::timeline::{ArenaSample, SiteId};

/// One arena (or the main heap, or the mmapped chunks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaUse {
    pub home: Home,
    pub heaps: u32,
    pub usage: Usage,
    /// Live bytes of the sampled blocks it holds, weighted like the call
    /// sites (an estimate when sampled).
    pub live: u64,
    /// Call sites with the most live bytes here: (site, bytes).
    pub top_sites: Vec<(SiteId, u64)>,
}

impl ArenaUse {
    /// Resident − live: what the allocator keeps here.
    pub fn retained(&self) -> u64 {
        self.usage.resident.saturating_sub(self.live)
    }
}

/// The live block highest in `[heap]`: glibc trims the main heap only from
/// its top, so nothing below it goes back to the kernel while it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopBlock {
    pub site: SiteId,
    pub size: u64,
    /// Bytes between its end and the end of `[heap]`.
    pub below_top: u64,
    /// Resident bytes of `[heap]` below it.
    pub heap_resident: u64,
}

/// The per-arena picture at the end of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArenaReport {
    pub rows: Vec<ArenaUse>,
    pub top_block: Option<TopBlock>,
    /// Sampled blocks whose header could not be read (freed meanwhile).
    pub unreadable: u64,
}

/// One tick's arenas: each one's footprint beside the live sampled bytes
/// whose chunk headers place them there (`live`, kept by the sample table).
pub fn arena_samples(fp: &Footprint, live: &BTreeMap<Home, u64>) -> Vec<ArenaSample> {
    let get = |h: Home| live.get(&h).copied().unwrap_or(0);
    let mut out = vec![ArenaSample {
        home: Home::Main,
        heaps: 1,
        reserved: fp.main_heap.reserved,
        resident: fp.main_heap.resident,
        live: get(Home::Main),
    }];
    for a in &fp.arenas {
        out.push(ArenaSample {
            home: Home::Arena(a.arena),
            heaps: a.heaps,
            reserved: a.usage.reserved,
            resident: a.usage.resident,
            live: get(Home::Arena(a.arena)),
        });
    }
    // Live bytes in an arena smaps did not show (freed meanwhile, or a
    // header misread) are not dropped silently: they keep a row.
    for (h, b) in live {
        if *h != Home::Mmapped && !out.iter().any(|a| a.home == *h) {
            out.push(ArenaSample {
                home: *h,
                heaps: 0,
                reserved: 0,
                resident: 0,
                live: *b,
            });
        }
    }
    out.push(ArenaSample {
        home: Home::Mmapped,
        heaps: u32::try_from(fp.mmapped_chunks).unwrap_or(u32::MAX),
        reserved: fp.mmapped.reserved,
        resident: fp.mmapped.resident,
        live: get(Home::Mmapped),
    });
    out
}

/// Attributes the sampled outstanding allocations to glibc's arenas.
pub fn arena_report(
    pid: u32,
    outstanding: &[OutstandingAlloc],
    maps: &MemoryMap,
) -> std::io::Result<ArenaReport> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mem = ProcessMemory { pid };
    let fp = footprint(&parse_smaps(&text), &mem);
    let mut rows: BTreeMap<Home, ArenaUse> = BTreeMap::new();
    let row = |home: Home, heaps: u32, usage: Usage| ArenaUse {
        home,
        heaps,
        usage,
        live: 0,
        top_sites: Vec::new(),
    };
    rows.insert(Home::Main, row(Home::Main, 1, fp.main_heap));
    for a in &fp.arenas {
        rows.insert(
            Home::Arena(a.arena),
            row(Home::Arena(a.arena), a.heaps, a.usage),
        );
    }
    let mmapped_chunks = u32::try_from(fp.mmapped_chunks).unwrap_or(u32::MAX);
    rows.insert(
        Home::Mmapped,
        row(Home::Mmapped, mmapped_chunks, fp.mmapped),
    );
    let heap = maps
        .regions
        .iter()
        .find(|r| r.path.as_deref() == Some("[heap]"))
        .map(|r| (r.start, r.end));
    let mut report = ArenaReport::default();
    let mut by_site: BTreeMap<Home, BTreeMap<SiteId, u64>> = BTreeMap::new();
    let mut top: Option<(u64, &OutstandingAlloc)> = None;
    for a in outstanding {
        let Some(home) = home_of(a.ptr, &mem) else {
            report.unreadable += 1;
            continue;
        };
        let r = rows
            .entry(home)
            .or_insert_with(|| row(home, 0, Usage::default()));
        r.live = r.live.saturating_add(a.est_bytes);
        *by_site.entry(home).or_default().entry(a.site).or_default() += a.est_bytes;
        if let (Home::Main, Some((start, end))) = (home, heap) {
            if a.ptr >= start && a.ptr < end && top.is_none_or(|(p, _)| a.ptr > p) {
                top = Some((a.ptr, a));
            }
        }
    }
    for (home, sites) in by_site {
        if let Some(r) = rows.get_mut(&home) {
            let mut v: Vec<(SiteId, u64)> = sites.into_iter().collect();
            v.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
            v.truncate(3);
            r.top_sites = v;
        }
    }
    if let (Some((ptr, a)), Some((_, end))) = (top, heap) {
        report.top_block = Some(TopBlock {
            site: a.site,
            size: a.size,
            below_top: end.saturating_sub(ptr.saturating_add(a.size)),
            heap_resident: fp.main_heap.resident,
        });
    }
    report.rows = rows
        .into_values()
        .filter(|r| r.usage.reserved > 0 || r.live > 0)
        .collect();
    Ok(report)
}
