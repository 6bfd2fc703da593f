//! Anonymous memory regions the program mapped itself, as allocations.
//!
//! mmap adds a region (page-rounded) owned by its call site; munmap may remove
//! any sub-range (splitting a region); mremap moves/resizes the region that
//! contains the old address, keeping its owner. Ranges never mapped through a
//! tracked mmap (allocator-internal, or before attach) are counted as untracked.

use std::collections::{BTreeMap, HashMap};

use super::StackRef;
use crate::profile::SiteStats;

pub const PAGE: u64 = 4096;

/// Rounds a length up to whole pages, as the kernel does.
pub fn page_round(len: u64) -> u64 {
    len.div_ceil(PAGE).saturating_mul(PAGE)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    stack_id: StackRef,
}

/// Tracks live regions by start address.
#[derive(Debug, Default)]
pub struct RegionTracker {
    regions: BTreeMap<u64, Region>,
    /// Per-owner (stack id) totals of mapped regions.
    stats: HashMap<StackRef, SiteStats>,
    /// munmap/mremap calls that touched no tracked region.
    pub untracked: u64,
}

impl RegionTracker {
    /// A new anonymous mapping of `len` bytes at `addr`, made at `stack_id`.
    pub fn mmap(&mut self, addr: u64, len: u64, stack_id: StackRef) {
        let len = page_round(len);
        if len == 0 {
            return;
        }
        // MAP_FIXED over a tracked range replaces it.
        self.remove_range(addr, len);
        self.insert(addr, len, stack_id);
        let s = self.stats.entry(stack_id).or_default();
        s.alloc_bytes += len;
        s.alloc_count += 1;
    }

    /// munmap of `[addr, addr+len)`.
    pub fn munmap(&mut self, addr: u64, len: u64) {
        if self.remove_range(addr, page_round(len)) == 0 {
            self.untracked += 1;
        }
    }

    /// mremap of the region at `old` (old_len bytes) to `new` (new_len bytes).
    pub fn mremap(&mut self, old: u64, old_len: u64, new: u64, new_len: u64) {
        let Some(owner) = self.owner_of(old) else {
            self.untracked += 1;
            return;
        };
        let old_len = page_round(old_len);
        let new_len = page_round(new_len);
        self.remove_range(old, old_len);
        self.remove_range(new, new_len);
        self.insert(new, new_len, owner);
        if new_len > old_len {
            self.stats.entry(owner).or_default().alloc_bytes += new_len - old_len;
        }
    }

    /// The process exec'd: its old address space is gone with every region.
    /// Returns the regions and bytes released.
    pub fn release_all(&mut self) -> (u64, u64) {
        let starts: Vec<(u64, u64)> = self.regions.iter().map(|(s, r)| (*s, r.end - s)).collect();
        let mut bytes = 0;
        for (start, len) in &starts {
            bytes += self.remove_range(*start, *len);
        }
        (starts.len() as u64, bytes)
    }

    /// Totals per owning stack id.
    pub fn stats(&self) -> &HashMap<StackRef, SiteStats> {
        &self.stats
    }

    fn owner_of(&self, addr: u64) -> Option<StackRef> {
        self.regions
            .range(..=addr)
            .next_back()
            .filter(|(_, r)| addr < r.end)
            .map(|(_, r)| r.stack_id)
    }

    fn insert(&mut self, addr: u64, len: u64, stack_id: StackRef) {
        self.regions.insert(
            addr,
            Region {
                end: addr.saturating_add(len),
                stack_id,
            },
        );
        let s = self.stats.entry(stack_id).or_default();
        s.live_bytes += len;
        s.live_count += 1;
    }

    /// Removes `[addr, addr+len)` from all regions, splitting at the edges.
    /// Returns the number of bytes that were tracked.
    fn remove_range(&mut self, addr: u64, len: u64) -> u64 {
        let end = addr.saturating_add(len);
        // Regions starting before `end` that may overlap: the one containing
        // `addr` (starts before it) and all starting inside the range.
        let first = self
            .regions
            .range(..addr)
            .next_back()
            .filter(|(_, r)| r.end > addr)
            .map(|(s, _)| *s);
        let mut starts: Vec<u64> = first.into_iter().collect();
        starts.extend(self.regions.range(addr..end).map(|(s, _)| *s));
        let mut removed = 0;
        for start in starts {
            let Some(r) = self.regions.remove(&start) else {
                continue;
            };
            let cut_start = start.max(addr);
            let cut_end = r.end.min(end);
            let cut = cut_end - cut_start;
            removed += cut;
            let s = self.stats.entry(r.stack_id).or_default();
            s.live_bytes -= r.end - start;
            s.live_count -= 1;
            if start < cut_start {
                self.insert(start, cut_start - start, r.stack_id);
            }
            if cut_end < r.end {
                self.insert(cut_end, r.end - cut_end, r.stack_id);
            }
        }
        removed
    }
}

/// Regions of every profiled process: address spaces are separate, so a
/// child's munmap never touches its parent's region at the same address.
#[derive(Debug, Default)]
pub struct ProcessRegions {
    by_pid: BTreeMap<u32, RegionTracker>,
}

impl ProcessRegions {
    /// The regions of `pid`.
    pub fn of(&mut self, pid: u32) -> &mut RegionTracker {
        self.by_pid.entry(pid).or_default()
    }

    /// Totals per (process, owning stack).
    pub fn stats(&self) -> impl Iterator<Item = (u32, &StackRef, &SiteStats)> + '_ {
        self.by_pid
            .iter()
            .flat_map(|(pid, t)| t.stats().iter().map(move |(s, v)| (*pid, s, v)))
    }

    /// munmap/mremap calls that touched no tracked region, in every process.
    pub fn untracked(&self) -> u64 {
        self.by_pid.values().map(|t| t.untracked).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_have_separate_address_spaces() {
        let mut r = ProcessRegions::default();
        r.of(1).mmap(0x10000, PAGE, StackRef::Kernel(1));
        r.of(2).mmap(0x10000, PAGE, StackRef::Kernel(1));
        r.of(2).munmap(0x10000, PAGE);
        let live: Vec<(u32, u64)> = r.stats().map(|(p, _, s)| (p, s.live_bytes)).collect();
        assert_eq!(live, vec![(1, PAGE), (2, 0)]);
        assert_eq!(r.untracked(), 0);
    }

    #[test]
    fn release_all_frees_every_region() {
        let mut t = RegionTracker::default();
        t.mmap(0x10000, 5000, StackRef::Kernel(1));
        t.mmap(0x40000, 4096, StackRef::Kernel(2));
        assert_eq!(t.release_all(), (2, 8192 + 4096));
        assert!(t
            .stats()
            .values()
            .all(|s| s.live_bytes == 0 && s.live_count == 0));
        assert_eq!(t.stats()[&StackRef::Kernel(1)].alloc_bytes, 8192);
        assert_eq!(t.untracked, 0);
    }

    fn live(t: &RegionTracker, id: i32) -> (u64, u64) {
        t.stats()
            .get(&StackRef::Kernel(id))
            .map(|s| (s.live_bytes, s.live_count))
            .unwrap_or((0, 0))
    }

    #[test]
    fn mmap_is_page_rounded_and_munmap_frees() {
        let mut t = RegionTracker::default();
        t.mmap(0x10000, 10_000, StackRef::Kernel(1));
        assert_eq!(live(&t, 1), (3 * PAGE, 1));
        t.munmap(0x10000, 10_000);
        assert_eq!(live(&t, 1), (0, 0));
        assert_eq!(t.stats()[&StackRef::Kernel(1)].alloc_bytes, 3 * PAGE);
        assert_eq!(t.untracked, 0);
    }

    #[test]
    fn partial_unmaps_split_regions() {
        let mut t = RegionTracker::default();
        t.mmap(0x100000, 5 * PAGE, StackRef::Kernel(7));
        // Tail.
        t.munmap(0x100000 + 3 * PAGE, 2 * PAGE);
        assert_eq!(live(&t, 7), (3 * PAGE, 1));
        // Middle page: splits into two regions.
        t.munmap(0x100000 + PAGE, PAGE);
        assert_eq!(live(&t, 7), (2 * PAGE, 2));
        // Head.
        t.munmap(0x100000, PAGE);
        assert_eq!(live(&t, 7), (PAGE, 1));
        // A range spanning the rest and beyond.
        t.munmap(0x100000, 10 * PAGE);
        assert_eq!(live(&t, 7), (0, 0));
    }

    #[test]
    fn mremap_moves_and_grows_keeping_owner() {
        let mut t = RegionTracker::default();
        t.mmap(0x200000, 2 * PAGE, StackRef::Kernel(3));
        t.mremap(0x200000, 2 * PAGE, 0x900000, 6 * PAGE);
        assert_eq!(live(&t, 3), (6 * PAGE, 1));
        assert_eq!(t.stats()[&StackRef::Kernel(3)].alloc_bytes, 6 * PAGE);
        t.munmap(0x900000, 6 * PAGE);
        assert_eq!(live(&t, 3), (0, 0));
    }

    #[test]
    fn untracked_ranges_are_counted() {
        let mut t = RegionTracker::default();
        t.munmap(0x5000, PAGE);
        t.mremap(0x5000, PAGE, 0x6000, 2 * PAGE);
        assert_eq!(t.untracked, 2);
        assert!(t.stats().is_empty());
    }

    #[test]
    fn fixed_mapping_over_tracked_range_replaces_it() {
        let mut t = RegionTracker::default();
        t.mmap(0x100000, 4 * PAGE, StackRef::Kernel(1));
        t.mmap(0x100000 + PAGE, PAGE, StackRef::Kernel(2));
        assert_eq!(live(&t, 1), (3 * PAGE, 2));
        assert_eq!(live(&t, 2), (PAGE, 1));
    }
}
