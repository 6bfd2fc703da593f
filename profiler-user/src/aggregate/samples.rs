//! Sampled allocations whose stacks were unwound in userspace: interned
//! stacks, the live samples by pointer, and per-site counters (the same
//! fixed-point counters the kernel keeps for frame-pointer stacks).

use std::collections::{BTreeMap, HashMap};

use profiler_common::SiteCounters;

use super::{SiteRef, StackRef};

/// Most distinct unwound stacks kept; beyond it samples are attributed to
/// "stack unavailable" and counted in [`SampleTable::stacks_dropped`].
pub const MAX_STACKS: usize = 1 << 20;

/// Live samples and their sites.
#[derive(Debug, Default)]
pub struct SampleTable {
    stacks: Vec<Vec<u64>>,
    index: HashMap<Vec<u64>, u32>,
    live: HashMap<(u32, u64), (SiteRef, u64, u64)>,
    sites: BTreeMap<SiteRef, SiteCounters>,
    /// Sampled frees whose allocation was not in the table (a lost sample record).
    pub unmatched_frees: u64,
    /// Samples not given their own stack because [`MAX_STACKS`] was reached.
    pub stacks_dropped: u64,
}

impl SampleTable {
    /// The id of a stack (return addresses, leaf first).
    pub fn intern(&mut self, frames: Vec<u64>) -> StackRef {
        if let Some(&id) = self.index.get(&frames) {
            return StackRef::User(id);
        }
        if self.stacks.len() >= MAX_STACKS {
            self.stacks_dropped += 1;
            return StackRef::Kernel(profiler_common::STACK_NONE);
        }
        let id = self.stacks.len() as u32;
        self.stacks.push(frames.clone());
        self.index.insert(frames, id);
        StackRef::User(id)
    }

    /// The return addresses of an interned stack, leaf first.
    pub fn stack(&self, id: u32) -> Option<&[u64]> {
        self.stacks.get(id as usize).map(Vec::as_slice)
    }

    /// A sampled allocation standing for `est_bytes` bytes and `est_count`
    /// (fixed-point) allocations.
    pub fn alloc(&mut self, tgid: u32, ptr: u64, site: SiteRef, est_bytes: u64, est_count: u64) {
        if let Some((old, b, c)) = self.live.insert((tgid, ptr), (site, est_bytes, est_count)) {
            // The free of the previous sample at this address was lost.
            self.retire(old, b, c);
        }
        let s = self.sites.entry(site).or_default();
        s.alloc_bytes += est_bytes;
        s.alloc_count += est_count;
    }

    /// The free of a sampled allocation.
    pub fn free(&mut self, tgid: u32, ptr: u64) {
        match self.live.remove(&(tgid, ptr)) {
            Some((site, b, c)) => self.retire(site, b, c),
            None => self.unmatched_frees += 1,
        }
    }

    fn retire(&mut self, site: SiteRef, bytes: u64, count: u64) {
        let s = self.sites.entry(site).or_default();
        s.free_bytes += bytes;
        s.free_count += count;
    }

    /// The site of a live sample.
    pub fn site_of(&self, tgid: u32, ptr: u64) -> Option<SiteRef> {
        self.live.get(&(tgid, ptr)).map(|(s, _, _)| *s)
    }

    /// Counters per site.
    pub fn sites(&self) -> &BTreeMap<SiteRef, SiteCounters> {
        &self.sites
    }

    /// Live samples.
    pub fn live_samples(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use profiler_common::COUNT_SCALE;

    #[test]
    fn interning_and_matching() {
        let mut t = SampleTable::default();
        let a = t.intern(vec![1, 2, 3]);
        let b = t.intern(vec![1, 2, 3]);
        let c = t.intern(vec![4]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let site = SiteRef {
            pid: 7,
            stack: a,
            kind: 0,
        };
        t.alloc(7, 0x1000, site, 4096, 4 * COUNT_SCALE);
        t.alloc(7, 0x2000, site, 4096, 4 * COUNT_SCALE);
        t.free(7, 0x1000);
        t.free(7, 0x9999);
        let s = t.sites()[&site];
        assert_eq!(s.alloc_bytes - s.free_bytes, 4096);
        assert_eq!((s.alloc_count - s.free_count) / COUNT_SCALE, 4);
        assert_eq!(t.unmatched_frees, 1);
        assert_eq!(t.live_samples(), 1);
        assert_eq!(t.stack(0), Some(&[1u64, 2, 3][..]));
    }

    #[test]
    fn reused_address_retires_the_old_sample() {
        let mut t = SampleTable::default();
        let s1 = SiteRef {
            pid: 1,
            stack: t.intern(vec![1]),
            kind: 0,
        };
        let s2 = SiteRef {
            pid: 1,
            stack: t.intern(vec![2]),
            kind: 0,
        };
        t.alloc(1, 0x10, s1, 100, COUNT_SCALE);
        t.alloc(1, 0x10, s2, 200, COUNT_SCALE);
        assert_eq!(t.sites()[&s1].alloc_bytes - t.sites()[&s1].free_bytes, 0);
        assert_eq!(t.sites()[&s2].alloc_bytes, 200);
    }
}
