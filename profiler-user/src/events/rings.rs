//! The per-CPU event rings, read as one stream in the order things happened.
//!
//! The probes write each record to the ring of the CPU they run on (one
//! ring for all CPUs made them contend for its lock: see `ring` in
//! profiler-ebpf). Each ring is in the order its CPU wrote it; across
//! rings, records are merged by the time they carry.
//!
//! Time alone is not enough: a ring that looks empty may get, a moment
//! later, a record older than one already read from another ring. What
//! matters is the order of records that depend on each other, and there the
//! probes help: a record that another one depends on is committed before
//! the call it describes returns to the program (an allocation's record
//! before `malloc` returns the block, a free's before `free` releases it),
//! so before the later record is even reserved. So the earliest record at
//! hand is given out only after every ring without one was looked at again
//! since it was read: whatever it depends on is then at hand too. Records
//! that do not depend on each other may come out of time order by the
//! moment it takes a CPU to reserve and commit a record, which changes
//! nothing.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use aya::maps::{MapData, RingBuf};

use super::{decode, Event, RecordSource};

/// The time a record carries (`bpf_ktime_get_ns`); 0 for a malformed one
/// (given out first, and counted as malformed where it is applied).
pub fn record_time(rec: &[u8]) -> u64 {
    match decode(rec) {
        Some(Event::Map(m)) => m.ts_ns,
        Some(Event::Sample(h, _)) => h.ts_ns,
        Some(Event::SampledFree(f)) => f.ts_ns,
        Some(Event::Proc(p)) => p.ts_ns,
        None => 0,
    }
}

/// A record read from a ring and not given out yet.
struct Head {
    ts: u64,
    rec: Vec<u8>,
}

/// Several rings read as one stream (see the module's text).
pub struct Merged<R> {
    rings: Vec<R>,
    heads: Vec<Option<Head>>,
    /// Buffers of records given out, for the next heads.
    spare: Vec<Vec<u8>>,
}

impl<R: RecordSource> Merged<R> {
    /// The rings, in any order.
    pub fn new(rings: Vec<R>) -> Merged<R> {
        let heads = rings.iter().map(|_| None).collect();
        Merged {
            rings,
            heads,
            spare: Vec::new(),
        }
    }

    /// Number of rings.
    pub fn len(&self) -> usize {
        self.rings.len()
    }

    /// True without rings.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// The rings.
    pub fn rings(&self) -> &[R] {
        &self.rings
    }

    /// Reads the next record of every ring that has none at hand; true when
    /// one was found.
    fn refill(&mut self) -> bool {
        let mut found = false;
        for (ring, head) in self.rings.iter_mut().zip(self.heads.iter_mut()) {
            if head.is_some() {
                continue;
            }
            let mut rec = self.spare.pop().unwrap_or_default();
            rec.clear();
            if ring.pop_into(&mut rec) {
                *head = Some(Head {
                    ts: record_time(&rec),
                    rec,
                });
                found = true;
            } else {
                self.spare.push(rec);
            }
        }
        found
    }

    /// The ring whose record at hand is the earliest.
    fn earliest(&self) -> Option<usize> {
        self.heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|h| (h.ts, i)))
            .min()
            .map(|(_, i)| i)
    }
}

impl<R: RecordSource> RecordSource for Merged<R> {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        if let [ring] = self.rings.as_mut_slice() {
            return ring.pop_into(buf);
        }
        self.refill();
        loop {
            let Some(k) = self.earliest() else {
                return false;
            };
            // Rings without a record may have been looked at before this
            // one was read: look again, then what it depends on is here.
            if self.refill() {
                continue;
            }
            let Some(head) = self.heads[k].take() else {
                return false;
            };
            buf.extend_from_slice(&head.rec);
            self.spare.push(head.rec);
            return true;
        }
    }
}

/// The kernel's rings with one descriptor that is readable while any of
/// them is (an epoll set of theirs).
pub struct RingSet {
    merged: Merged<RingBuf<MapData>>,
    epoll: OwnedFd,
}

impl RingSet {
    /// Reads `rings` as one stream.
    pub fn new(rings: Vec<RingBuf<MapData>>) -> std::io::Result<RingSet> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        for ring in &rings {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            // SAFETY: both descriptors are open; `ev` lives for the call.
            let r = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ring.as_fd().as_raw_fd(),
                    &mut ev,
                )
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(RingSet {
            merged: Merged::new(rings),
            epoll,
        })
    }

    /// Number of rings.
    pub fn len(&self) -> usize {
        self.merged.len()
    }

    /// True without rings.
    pub fn is_empty(&self) -> bool {
        self.merged.is_empty()
    }
}

impl RecordSource for RingSet {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        self.merged.pop_into(buf)
    }
}

impl AsFd for RingSet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

/// How the ring memory is split: `count` rings of `bytes_each`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPlan {
    pub count: u32,
    pub bytes_each: u32,
}

impl RingPlan {
    /// `total` bytes (a power of two) split over one ring per CPU of
    /// `cpus`, at most `profiler_common::MAX_RINGS` rings (CPUs beyond that
    /// share them), each a power of two of at least `page` bytes. The total
    /// stays what was asked: the kernel maps each ring's pages twice into
    /// heapscope, all of it counted in its memory bound.
    pub fn new(total: u32, cpus: u32, page: u32) -> RingPlan {
        let page = page.max(1).next_power_of_two();
        let mut count = cpus.clamp(1, profiler_common::MAX_RINGS);
        // Each ring at least 64 pages: a ring smaller than a few stack
        // samples would lose records at the first burst.
        while count > 1 && total / count < page * 64 {
            count -= 1;
        }
        let each = (total / count).max(page);
        let bytes_each = match each.is_power_of_two() {
            true => each,
            false => each.next_power_of_two() / 2,
        };
        RingPlan {
            count,
            bytes_each: bytes_each.max(page),
        }
    }

    /// The plan for this machine (its configured CPUs and page size).
    pub fn for_machine(total: u32) -> RingPlan {
        // SAFETY: sysconf takes no pointers.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let cpus = u32::try_from(cpus).unwrap_or(1);
        RingPlan::new(total, cpus, crate::process::arenas::page_size() as u32)
    }
}

#[cfg(test)]
mod tests;
