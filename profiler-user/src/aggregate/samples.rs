//! Sampled allocations whose stacks were unwound in userspace: interned
//! stacks, the live samples by pointer, and per-site counters (the same
//! fixed-point counters the kernel keeps for frame-pointer stacks). Each
//! sample also keeps its allocating thread and, for glibc, the arena its
//! chunk header names: so frees by other threads into other arenas are
//! counted per site, and live bytes are known per arena at every tick.

use std::collections::BTreeMap;

// Every sample and sampled free hashes into these (millions per second
// under `--exact`): SipHash took ~20% of the capture thread.
use foldhash::{HashMap, HashSet};

use profiler_common::{SiteCounters, FREED_BY_ALLOCATOR, FREED_BY_PROGRAM};

use super::{SiteRef, StackRef};
use crate::process::arenas::Home;

/// Most threads whose arena is remembered; beyond, new threads' arenas are
/// not learned (counted in [`SampleTable::threads_dropped`]).
pub const MAX_THREADS: usize = 1 << 16;

/// Cross-thread frees of one site's sampled blocks, weighted like the
/// site's numbers (bytes; counts in 1/`COUNT_SCALE` units).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrossFrees {
    pub bytes: u64,
    pub count: u64,
}

/// A live sample.
#[derive(Clone, Copy, Debug)]
struct LiveSample {
    site: SiteRef,
    est_bytes: u64,
    est_count: u64,
    /// The allocating thread.
    tid: u32,
    /// Where glibc put it (`None`: not read, or not glibc).
    home: Option<Home>,
    /// When it was allocated (`bpf_ktime_get_ns`; 0: not known).
    ts_ns: u64,
}

/// What the kernel counts when it holds the live blocks, counted here when
/// userspace holds them (see [`SampleTable::hold_live`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldCounts {
    /// Frees of held blocks, and their bytes.
    pub frees: u64,
    pub free_bytes: u64,
    /// Frees of pointers not held (allocated before attach), by the program
    /// or by the allocator on its own, not told apart.
    pub frees_unknown: u64,
    /// Frees of pointers not held, by the allocator's own code.
    pub allocator_frees: u64,
    /// Held blocks replaced by a new block at their address: their free was
    /// not seen (a lost record); each also counts as freed.
    pub replaced: u64,
}

/// Whether a free by `free_tid` of a block `alloc_tid` allocated is a
/// cross-thread free in the sense that matters for glibc: another thread,
/// and a block that does not go back to the freeing thread's own arena
/// (which that thread would reuse). A block with its own mmap goes back to
/// the kernel; a freeing thread whose arena is not known (it made no
/// sampled allocation) counts, as does any block when the arena is not
/// known (other allocators).
pub fn is_cross_thread(
    alloc_tid: u32,
    free_tid: u32,
    block: Option<Home>,
    freeing_arena: Option<Home>,
) -> bool {
    if alloc_tid == free_tid || block == Some(Home::Mmapped) {
        return false;
    }
    match (block, freeing_arena) {
        (Some(b), Some(f)) => b != f,
        _ => true,
    }
}

/// Most distinct unwound stacks kept; beyond it samples are attributed to
/// "stack unavailable" and counted in [`SampleTable::stacks_dropped`].
pub const MAX_STACKS: usize = 1 << 20;

/// Most dropped samples remembered so that their late free records are not
/// counted as unmatched (see [`SampleTable::reconcile`]).
const MAX_LATE: usize = 1 << 16;

/// Live samples and their sites.
#[derive(Debug, Default)]
pub struct SampleTable {
    stacks: Vec<Vec<u64>>,
    index: HashMap<Vec<u64>, u32>,
    live: HashMap<(u32, u64), LiveSample>,
    sites: BTreeMap<SiteRef, SiteCounters>,
    cross: BTreeMap<SiteRef, CrossFrees>,
    /// The arena of each thread's latest sampled allocation, by (tgid, tid).
    thread_arena: HashMap<(u32, u32), Home>,
    /// Live sampled bytes (weighted) per process and home.
    home_live: BTreeMap<(u32, Home), u64>,
    /// Sampled frees whose allocation was not in the table (a lost sample record).
    pub unmatched_frees: u64,
    /// Samples not given their own stack because [`MAX_STACKS`] was reached.
    pub stacks_dropped: u64,
    /// Threads whose arena was not remembered ([`MAX_THREADS`] reached).
    pub threads_dropped: u64,
    /// Samples dropped by [`SampleTable::reconcile`]: the kernel no longer
    /// held them live (their free record was lost).
    pub reconciled: u64,
    /// Most live samples at once since the last [`SampleTable::take_peak`].
    peak_live: usize,
    /// Samples dropped by the last reconcile, whose free record may still
    /// be on its way.
    late: HashSet<(u32, u64)>,
    /// Userspace holds every live block (`--exact` with DWARF stacks): the
    /// kernel keeps no live map, so frees are counted here.
    held: Option<HeldCounts>,
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
        self.alloc_by(tgid, 0, ptr, site, (est_bytes, est_count), None);
    }

    /// Makes this table the holder of every live block (see [`HeldCounts`]).
    pub fn hold_live(&mut self) {
        self.held.get_or_insert_with(HeldCounts::default);
    }

    /// What was counted while holding the live blocks (zero otherwise).
    pub fn held_counts(&self) -> HeldCounts {
        self.held.unwrap_or_default()
    }

    /// True when this table holds every live block.
    pub fn holds_live(&self) -> bool {
        self.held.is_some()
    }

    /// [`SampleTable::alloc`] by thread `tid`, in `home` when known.
    pub fn alloc_by(
        &mut self,
        tgid: u32,
        tid: u32,
        ptr: u64,
        site: SiteRef,
        est: (u64, u64),
        home: Option<Home>,
    ) {
        self.alloc_at(tgid, tid, ptr, site, est, home, 0);
    }

    /// [`SampleTable::alloc_by`] at time `ts_ns` (`bpf_ktime_get_ns`).
    #[allow(clippy::too_many_arguments)]
    pub fn alloc_at(
        &mut self,
        tgid: u32,
        tid: u32,
        ptr: u64,
        site: SiteRef,
        (est_bytes, est_count): (u64, u64),
        home: Option<Home>,
        ts_ns: u64,
    ) {
        let sample = LiveSample {
            site,
            est_bytes,
            est_count,
            tid,
            home,
            ts_ns,
        };
        if let Some(old) = self.live.insert((tgid, ptr), sample) {
            // The free of the previous sample at this address was lost.
            if let Some(h) = &mut self.held {
                h.replaced += 1;
                h.frees += 1;
                h.free_bytes += old.est_bytes;
            }
            self.retire(tgid, &old);
        }
        self.peak_live = self.peak_live.max(self.live.len());
        let s = self.sites.entry(site).or_default();
        s.alloc_bytes += est_bytes;
        s.alloc_count += est_count;
        if let Some(h) = home {
            *self.home_live.entry((tgid, h)).or_default() += est_bytes;
            if h != Home::Mmapped {
                self.learn_arena(tgid, tid, h);
            }
        }
    }

    fn learn_arena(&mut self, tgid: u32, tid: u32, home: Home) {
        if let Some(a) = self.thread_arena.get_mut(&(tgid, tid)) {
            *a = home;
        } else if self.thread_arena.len() < MAX_THREADS {
            self.thread_arena.insert((tgid, tid), home);
        } else {
            self.threads_dropped += 1;
        }
    }

    /// The free of a sampled allocation (released by an exec: no thread).
    pub fn free(&mut self, tgid: u32, ptr: u64) {
        match self.live.remove(&(tgid, ptr)) {
            Some(s) => self.retire(tgid, &s),
            None if self.late.remove(&(tgid, ptr)) => {}
            None => self.unmatched_frees += 1,
        }
    }

    /// Drops the samples the kernel no longer holds live: a lost free record
    /// (a full ring buffer) would otherwise leave their bytes at their site
    /// for good, and per-site live bytes could exceed the exact live heap.
    /// `still_live(tgid, ptr)` asks the kernel's live map. Each dropped sample
    /// is freed at its site; a free record for it read later (it was only
    /// late) is absorbed. Returns how many were dropped.
    pub fn reconcile(&mut self, mut still_live: impl FnMut(u32, u64) -> bool) -> u64 {
        let gone: Vec<(u32, u64)> = self
            .live
            .keys()
            .copied()
            .filter(|&(tgid, ptr)| !still_live(tgid, ptr))
            .collect();
        self.late.clear();
        for key in &gone {
            if let Some(sample) = self.live.remove(key) {
                self.retire(key.0, &sample);
            }
            if self.late.len() < MAX_LATE {
                self.late.insert(*key);
            }
        }
        self.reconciled += gone.len() as u64;
        gone.len() as u64
    }

    /// The free of a sampled allocation by thread `tid`: counted as a
    /// cross-thread free of its site when [`is_cross_thread`] says so.
    pub fn free_by(&mut self, tgid: u32, tid: u32, ptr: u64) {
        self.free_from(tgid, tid, ptr, FREED_BY_PROGRAM);
    }

    /// [`SampleTable::free_by`], `who` one of the `FREED_BY_*` values (it
    /// only matters for a pointer not held, when the table holds them all).
    pub fn free_from(&mut self, tgid: u32, tid: u32, ptr: u64, who: u32) {
        let Some(s) = self.live.remove(&(tgid, ptr)) else {
            if let Some(h) = &mut self.held {
                if who == FREED_BY_ALLOCATOR {
                    h.allocator_frees += 1;
                } else {
                    h.frees_unknown += 1;
                }
            } else if !self.late.remove(&(tgid, ptr)) {
                self.unmatched_frees += 1;
            }
            return;
        };
        if let Some(h) = &mut self.held {
            h.frees += 1;
            h.free_bytes += s.est_bytes;
        }
        let freeing = self.thread_arena.get(&(tgid, tid)).copied();
        if is_cross_thread(s.tid, tid, s.home, freeing) {
            let c = self.cross.entry(s.site).or_default();
            c.bytes += s.est_bytes;
            c.count += s.est_count;
        }
        self.retire(tgid, &s);
    }

    fn retire(&mut self, tgid: u32, sample: &LiveSample) {
        let s = self.sites.entry(sample.site).or_default();
        s.free_bytes += sample.est_bytes;
        s.free_count += sample.est_count;
        if let Some(h) = sample.home {
            if let Some(v) = self.home_live.get_mut(&(tgid, h)) {
                *v = v.saturating_sub(sample.est_bytes);
                if *v == 0 {
                    self.home_live.remove(&(tgid, h));
                }
            }
        }
    }

    /// The site of a live sample.
    pub fn site_of(&self, tgid: u32, ptr: u64) -> Option<SiteRef> {
        self.live.get(&(tgid, ptr)).map(|s| s.site)
    }

    /// Cross-thread frees per site.
    pub fn cross(&self) -> &BTreeMap<SiteRef, CrossFrees> {
        &self.cross
    }

    /// Live sampled bytes (weighted) of process `tgid` per home.
    pub fn live_by_home(&self, tgid: u32) -> BTreeMap<Home, u64> {
        self.home_live
            .range((tgid, Home::Main)..=(tgid, Home::Mmapped))
            .map(|((_, h), b)| (*h, *b))
            .collect()
    }

    /// Counters per site.
    pub fn sites(&self) -> &BTreeMap<SiteRef, SiteCounters> {
        &self.sites
    }

    /// Takes out process `tgid`'s blocks allocated before `before_ns` (an
    /// exec's old image, or every block of a process that exited), freed at
    /// their sites; returns how many, and their bytes. For a table that
    /// holds every live block (the kernel's live map is released otherwise).
    pub fn release_older(&mut self, tgid: u32, before_ns: u64) -> (u64, u64) {
        let old: Vec<u64> = self
            .live
            .iter()
            .filter(|(k, s)| k.0 == tgid && s.ts_ns < before_ns)
            .map(|(k, _)| k.1)
            .collect();
        let (mut blocks, mut bytes) = (0, 0);
        for ptr in old {
            if let Some(s) = self.live.remove(&(tgid, ptr)) {
                blocks += 1;
                bytes += s.est_bytes;
                self.retire(tgid, &s);
            }
        }
        (blocks, bytes)
    }

    /// Live blocks and their bytes per process (weighted).
    pub fn live_by_process(&self) -> BTreeMap<u32, (u64, u64)> {
        let mut out: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for ((tgid, _), s) in &self.live {
            let e = out.entry(*tgid).or_default();
            e.0 += 1;
            e.1 += s.est_bytes;
        }
        out
    }

    /// Every live sample: (tgid, ptr, site, allocation time, est bytes, est count).
    pub fn live_blocks(&self) -> impl Iterator<Item = (u32, u64, SiteRef, u64, u64, u64)> + '_ {
        self.live
            .iter()
            .map(|((tgid, ptr), s)| (*tgid, *ptr, s.site, s.ts_ns, s.est_bytes, s.est_count))
    }

    /// Live samples.
    pub fn live_samples(&self) -> usize {
        self.live.len()
    }

    /// The most live samples at once since the last call (a burst freed
    /// between two ticks is not in [`SampleTable::live_samples`] at either),
    /// and starts the next period at today's count.
    pub fn take_peak(&mut self) -> usize {
        let peak = self.peak_live.max(self.live.len());
        self.peak_live = self.live.len();
        peak
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
    fn cross_thread_rule() {
        let a = Some(Home::Arena(0x7f00_0000_0020));
        let b = Some(Home::Arena(0x7e00_0000_0020));
        assert!(!is_cross_thread(5, 5, a, b), "same thread");
        assert!(!is_cross_thread(5, 6, a, a), "same arena");
        assert!(is_cross_thread(5, 6, a, b));
        assert!(is_cross_thread(5, 6, Some(Home::Main), b));
        assert!(is_cross_thread(5, 6, a, None), "freeing arena unknown");
        assert!(is_cross_thread(5, 6, None, None), "not glibc");
        assert!(!is_cross_thread(5, 6, Some(Home::Mmapped), b), "own mmap");
    }

    #[test]
    fn cross_thread_frees_and_live_by_home() {
        let mut t = SampleTable::default();
        let site = SiteRef {
            pid: 1,
            stack: t.intern(vec![1]),
            kind: 0,
        };
        let other = SiteRef {
            pid: 1,
            stack: t.intern(vec![2]),
            kind: 0,
        };
        let (arena_p, arena_c) = (Home::Arena(0x1000), Home::Arena(0x2000));
        // Producer thread 10 in arena P, consumer 11 in arena C.
        t.alloc_by(1, 10, 0x10, site, (100, COUNT_SCALE), Some(arena_p));
        t.alloc_by(1, 10, 0x20, site, (300, COUNT_SCALE), Some(arena_p));
        t.alloc_by(1, 11, 0x30, other, (50, COUNT_SCALE), Some(arena_c));
        assert_eq!(t.live_by_home(1)[&arena_p], 400);
        t.free_by(1, 11, 0x10); // consumer frees the producer's block
        t.free_by(1, 10, 0x20); // the producer frees its own
        t.free_by(1, 10, 0x30); // producer frees the consumer's block
        assert_eq!(
            t.cross()[&site],
            CrossFrees {
                bytes: 100,
                count: COUNT_SCALE
            }
        );
        assert_eq!(t.cross()[&other].bytes, 50);
        assert!(t.live_by_home(1).is_empty());
        assert!(t.live_by_home(2).is_empty());
    }

    #[test]
    fn reconcile_frees_samples_the_kernel_no_longer_holds() {
        let mut t = SampleTable::default();
        let site = SiteRef {
            pid: 1,
            stack: t.intern(vec![1]),
            kind: 0,
        };
        for ptr in [0x10, 0x20, 0x30] {
            t.alloc(1, ptr, site, 100, COUNT_SCALE);
        }
        // 0x20's free record was lost; 0x30's is only late.
        assert_eq!(t.reconcile(|_, ptr| ptr == 0x10), 2);
        let s = t.sites()[&site];
        assert_eq!(s.alloc_bytes - s.free_bytes, 100, "only 0x10 is live");
        assert_eq!(t.live_samples(), 1);
        assert_eq!(t.reconciled, 2);
        t.free_by(1, 7, 0x30);
        assert_eq!(t.unmatched_frees, 0, "a late free is absorbed");
        t.free(1, 0x30);
        assert_eq!(t.unmatched_frees, 1, "once");
        let s = t.sites()[&site];
        assert_eq!(s.alloc_bytes - s.free_bytes, 100, "nothing freed twice");
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
    #[test]
    fn held_table_counts_frees_and_releases_an_old_image() {
        let mut t = SampleTable::default();
        t.hold_live();
        let site = SiteRef {
            pid: 1,
            stack: t.intern(vec![1]),
            kind: 0,
        };
        let w = |n| (n, COUNT_SCALE);
        t.alloc_at(1, 10, 0x10, site, w(100), None, 5);
        t.alloc_at(1, 10, 0x20, site, w(200), None, 6);
        t.alloc_at(1, 10, 0x30, site, w(300), None, 50);
        t.alloc_at(2, 20, 0x10, site, w(400), None, 7);
        t.free_from(1, 10, 0x10, FREED_BY_PROGRAM);
        t.free_from(1, 10, 0x99, FREED_BY_ALLOCATOR);
        t.free_from(1, 10, 0x98, profiler_common::FREED_BY_EITHER);
        // 0x20's free was lost: a new block at its address replaces it.
        t.alloc_at(1, 10, 0x20, site, w(20), None, 60);
        assert_eq!(
            t.held_counts(),
            HeldCounts {
                frees: 2,
                free_bytes: 300,
                frees_unknown: 1,
                allocator_frees: 1,
                replaced: 1,
            }
        );
        assert_eq!(
            t.unmatched_frees, 0,
            "counted as frees of pre-attach blocks"
        );
        assert_eq!(t.live_by_process()[&1], (2, 320));
        // Process 1 exec'd at t=55: its older blocks go, the newer stays.
        assert_eq!(t.release_older(1, 55), (1, 300));
        assert_eq!(t.live_by_process()[&1], (1, 20));
        assert_eq!(t.live_by_process()[&2], (1, 400), "another process kept");
        let s = t.sites()[&site];
        assert_eq!(s.alloc_bytes - s.free_bytes, 420);
        let live: Vec<_> = t.live_blocks().map(|b| (b.0, b.1, b.3)).collect();
        assert_eq!(live.len(), 2);
        assert!(live.contains(&(1, 0x20, 60)) && live.contains(&(2, 0x10, 7)));
    }

    #[test]
    fn a_table_not_holding_counts_nothing_held() {
        let mut t = SampleTable::default();
        assert!(!t.holds_live());
        t.free_from(1, 1, 0x10, FREED_BY_ALLOCATOR);
        assert_eq!(t.held_counts(), HeldCounts::default());
        assert_eq!(t.unmatched_frees, 1);
    }
}
