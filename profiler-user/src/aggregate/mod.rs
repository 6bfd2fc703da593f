//! Reading the kernel's counters into per-call-site numbers.

pub mod regions;
pub mod samples;

use std::collections::BTreeMap;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::Ebpf;
use profiler_common::counters::{CounterId, COUNTERS};
use profiler_common::{counter, AllocKind, PendingCalls, SiteCounters, SiteKey, COUNT_SCALE};

use crate::probes::ProbeError;
use crate::profile::{SiteStats, Totals};
use regions::ProcessRegions;
use samples::SampleTable;

/// Where a site's stack lives: in the kernel's stack-trace map (frame-pointer
/// walks; negative ids mean no stack) or in userspace (DWARF-unwound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackRef {
    Kernel(i32),
    User(u32),
}

/// A call site: a stack and the allocator entry point used, in one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteRef {
    /// The process that allocated (first: sites sort by process).
    pub pid: u32,
    pub stack: StackRef,
    /// An `AllocKind` discriminant.
    pub kind: u32,
}

/// Per-site numbers and process totals before symbolization.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawSnapshot {
    pub sites: BTreeMap<SiteRef, SiteStats>,
    pub totals: Totals,
}

impl RawSnapshot {
    /// Live bytes over all sites.
    pub fn live_bytes(&self) -> u64 {
        self.sites.values().map(|s| s.live_bytes).sum()
    }
}

/// Sums the global per-CPU counters.
pub fn read_counters(ebpf: &Ebpf) -> Result<[u64; counter::COUNT as usize], ProbeError> {
    let name = "COUNTERS";
    let err = |source| ProbeError::Map { name, source };
    let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(err)?;
    let mut out = [0u64; counter::COUNT as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = arr.get(&(i as u32), 0).map_err(err)?.iter().sum();
    }
    Ok(out)
}

/// Sums the per-CPU call-site counters.
pub fn read_sites(ebpf: &Ebpf) -> Result<BTreeMap<SiteKey, SiteCounters>, ProbeError> {
    let name = "SITES";
    let err = |source| ProbeError::Map { name, source };
    let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let sites: PerCpuHashMap<&MapData, SiteKey, SiteCounters> =
        PerCpuHashMap::try_from(map).map_err(err)?;
    let mut out = BTreeMap::new();
    for entry in sites.iter() {
        let (key, per_cpu) = entry.map_err(err)?;
        let mut sum = SiteCounters::default();
        for c in per_cpu.iter() {
            sum.alloc_bytes += c.alloc_bytes;
            sum.alloc_count += c.alloc_count;
            sum.free_bytes += c.free_bytes;
            sum.free_count += c.free_count;
            sum.cross_bytes += c.cross_bytes;
            sum.cross_count += c.cross_count;
        }
        out.insert(key, sum);
    }
    Ok(out)
}

/// Fixed-point counters → whole numbers (counts are in 1/COUNT_SCALE units).
fn stats_of(c: &SiteCounters) -> SiteStats {
    let scale = |v: u64| (v + COUNT_SCALE / 2) / COUNT_SCALE;
    SiteStats {
        live_bytes: c.alloc_bytes.saturating_sub(c.free_bytes),
        live_count: scale(c.alloc_count.saturating_sub(c.free_count)),
        alloc_bytes: c.alloc_bytes,
        alloc_count: scale(c.alloc_count),
        cross_free_bytes: c.cross_bytes,
        cross_free_count: scale(c.cross_count),
    }
}

/// Adds `stats` to the numbers of `site`: one site can come from several
/// sources (the "no stack" site from the kernel's counters and from samples
/// whose stack did not fit the table), and none may hide another.
fn add(out: &mut BTreeMap<SiteRef, SiteStats>, site: SiteRef, stats: SiteStats) {
    let e = out.entry(site).or_default();
    e.live_bytes += stats.live_bytes;
    e.live_count += stats.live_count;
    e.alloc_bytes += stats.alloc_bytes;
    e.alloc_count += stats.alloc_count;
    e.cross_free_bytes += stats.cross_free_bytes;
    e.cross_free_count += stats.cross_free_count;
}

/// Combines kernel site counters, userspace samples, global counters and mapped regions.
pub fn merge(
    kernel_sites: &BTreeMap<SiteKey, SiteCounters>,
    samples: &SampleTable,
    counters: &[u64; counter::COUNT as usize],
    regions: &ProcessRegions,
) -> RawSnapshot {
    let mut out = BTreeMap::new();
    for (key, c) in kernel_sites {
        let site = SiteRef {
            pid: key.tgid,
            stack: StackRef::Kernel(key.stack_id),
            kind: key.kind,
        };
        add(&mut out, site, stats_of(c));
    }
    for (site, c) in samples.sites() {
        let mut stats = stats_of(c);
        if let Some(x) = samples.cross().get(site) {
            stats.cross_free_bytes = x.bytes;
            stats.cross_free_count = (x.count + COUNT_SCALE / 2) / COUNT_SCALE;
        }
        add(&mut out, *site, stats);
    }
    for (pid, stack, r) in regions.stats() {
        let key = SiteRef {
            pid,
            stack: *stack,
            kind: AllocKind::Mmap as u32,
        };
        add(&mut out, key, r.clone());
    }
    let c = |i: u32| counters[i as usize];
    let region_allocs: u64 = regions.stats().map(|(_, _, r)| r.alloc_count).sum();
    let region_bytes: u64 = regions.stats().map(|(_, _, r)| r.alloc_bytes).sum();
    // Unmapped bytes count as freed, so allocated − freed is the exact live total.
    let region_freed: u64 = regions
        .stats()
        .map(|(_, _, r)| r.alloc_bytes.saturating_sub(r.live_bytes))
        .sum();
    let region_frees: u64 = regions
        .stats()
        .map(|(_, _, r)| r.alloc_count.saturating_sub(r.live_count))
        .sum();
    // Kernel counters by the table; mapped regions are tracked in userspace.
    let mut totals = Totals::default();
    for d in COUNTERS.iter() {
        totals.set(d.id, d.kernel.iter().map(|&k| c(k)).sum());
    }
    // Frees of blocks userspace holds (`--exact` with DWARF stacks: the
    // kernel keeps no live map then, see `SampleTable::hold_live`).
    let held = samples.held_counts();
    for (id, add) in [
        (CounterId::Allocs, region_allocs),
        (CounterId::AllocBytes, region_bytes),
        (CounterId::Frees, region_frees + held.frees),
        (CounterId::FreeBytes, region_freed + held.free_bytes),
        (CounterId::FreesUnknown, held.frees_unknown),
        (CounterId::AllocatorFrees, held.allocator_frees),
        (CounterId::Replaced, held.replaced),
        (CounterId::UntrackedUnmaps, regions.untracked()),
    ] {
        totals.set(id, totals.get(id) + add);
    }
    RawSnapshot { sites: out, totals }
}

/// Removes per-thread entry states of threads that no longer exist (they died
/// inside an allocator call), so the bounded map never fills with them.
/// Each entry's thread is looked up in its own process (the key holds both):
/// looked up in the session's first process, every thread of the others
/// (`-p A -p B`, children) seemed dead, and a call of theirs in flight at a
/// tick lost its entry (an unmatched return, its block never counted).
/// Returns how many were removed.
pub fn prune_inflight(ebpf: &mut Ebpf) -> Result<usize, ProbeError> {
    let name = "INFLIGHT";
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut inflight: BpfHashMap<&mut MapData, u64, PendingCalls> =
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    let dead: Vec<u64> = inflight
        .keys()
        .filter_map(Result::ok)
        .filter(|&pid_tgid| {
            let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
            !crate::process::procfs::dir(tgid)
                .join("task")
                .join(tid.to_string())
                .exists()
        })
        .collect();
    for k in &dead {
        // Already gone is fine: the thread's own return removed it.
        let _ = inflight.remove(k);
    }
    Ok(dead.len())
}

/// Lookups in the kernel's live map, one block at a time.
pub struct LiveLookup<'a> {
    live: BpfHashMap<&'a MapData, profiler_common::LiveKey, profiler_common::LiveAlloc>,
}

impl<'a> LiveLookup<'a> {
    /// Opens the `LIVE` map of the loaded probes.
    pub fn new(ebpf: &'a Ebpf) -> Result<LiveLookup<'a>, ProbeError> {
        let name = "LIVE";
        let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
        let live = BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        Ok(LiveLookup { live })
    }

    /// True when `(tgid, ptr)` is live with its sample in userspace; an
    /// unreadable entry is assumed live (nothing is dropped on a doubt).
    pub fn holds_sample(&self, tgid: u32, ptr: u64) -> bool {
        let key = profiler_common::LiveKey { tgid, _pad: 0, ptr };
        match self.live.get(&key, 0) {
            Ok(a) => a.stack_id == profiler_common::STACK_USER,
            Err(aya::maps::MapError::KeyNotFound) => false,
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_computes_live_and_adds_regions() {
        let mut sites = BTreeMap::new();
        let k = SiteKey {
            stack_id: 1,
            kind: AllocKind::Malloc as u32,
            tgid: 1,
            _pad: 0,
        };
        sites.insert(
            k,
            SiteCounters {
                alloc_bytes: 1000,
                alloc_count: 10 * COUNT_SCALE,
                free_bytes: 300,
                free_count: 3 * COUNT_SCALE,
                ..SiteCounters::default()
            },
        );
        let k = SiteRef {
            pid: 1,
            stack: StackRef::Kernel(1),
            kind: AllocKind::Malloc as u32,
        };
        let mut counters = [0u64; counter::COUNT as usize];
        counters[counter::ALLOCS as usize] = 10;
        counters[counter::FREES_UNKNOWN as usize] = 4;
        let mut regions = ProcessRegions::default();
        regions.of(1).mmap(0x1000_0000, 5000, StackRef::Kernel(2));
        let mut samples = SampleTable::default();
        let user = SiteRef {
            pid: 1,
            stack: samples.intern(vec![1, 2]),
            kind: AllocKind::Calloc as u32,
        };
        samples.alloc(1, 0x50, user, 5000, COUNT_SCALE * 3 / 2);
        let snap = merge(&sites, &samples, &counters, &regions);
        assert_eq!(snap.sites[&user].live_bytes, 5000);
        assert_eq!(snap.sites[&user].live_count, 2, "1.5 rounds to 2");
        assert_eq!(snap.sites[&k].live_bytes, 700);
        assert_eq!(snap.sites[&k].live_count, 7);
        let mk = SiteRef {
            pid: 1,
            stack: StackRef::Kernel(2),
            kind: AllocKind::Mmap as u32,
        };
        assert_eq!(snap.sites[&mk].live_bytes, 8192);
        assert_eq!(snap.totals.allocs, 11);
        assert_eq!(snap.totals.frees_unknown, 4);
        assert_eq!(snap.live_bytes(), 700 + 8192 + 5000);
    }

    #[test]
    fn a_site_from_the_kernel_and_from_samples_adds_up() {
        // The "no stack" site: 1000 bytes counted by the kernel, 500 by a
        // sample whose stack did not fit the table (interned as no stack).
        let none = profiler_common::STACK_NONE;
        let mut sites = BTreeMap::new();
        sites.insert(
            SiteKey {
                stack_id: none,
                kind: AllocKind::Malloc as u32,
                tgid: 1,
                _pad: 0,
            },
            SiteCounters {
                alloc_bytes: 1000,
                alloc_count: COUNT_SCALE,
                free_bytes: 0,
                free_count: 0,
                ..SiteCounters::default()
            },
        );
        let mut samples = SampleTable::default();
        let site = SiteRef {
            pid: 1,
            stack: StackRef::Kernel(none),
            kind: AllocKind::Malloc as u32,
        };
        samples.alloc(1, 0x50, site, 500, COUNT_SCALE);
        let counters = [0u64; counter::COUNT as usize];
        let snap = merge(&sites, &samples, &counters, &ProcessRegions::default());
        assert_eq!(snap.sites[&site].live_bytes, 1500);
        assert_eq!(snap.sites[&site].alloc_count, 2);
    }
}
