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

use std::os::fd::{AsFd, BorrowedFd};

use aya::maps::{MapData, RingBuf};

use profiler_common::{EventKind, MapEvent, ProcEvent, SampleHeader, SampledFree};

use super::RecordSource;

/// The time a record carries (`bpf_ktime_get_ns`); 0 for a malformed one
/// (given out first, and counted as malformed where it is applied).
pub fn record_time(rec: &[u8]) -> u64 {
    use std::mem::offset_of;
    let Some(kind) = rec.get(..4).and_then(|b| b.try_into().ok()) else {
        return 0;
    };
    let at = match EventKind::from_u32(u32::from_ne_bytes(kind)) {
        Some(EventKind::Sample) => offset_of!(SampleHeader, ts_ns),
        Some(EventKind::SampledFree) => offset_of!(SampledFree, ts_ns),
        Some(EventKind::Exec | EventKind::Fork | EventKind::Exit) => offset_of!(ProcEvent, ts_ns),
        Some(EventKind::Mmap | EventKind::Munmap | EventKind::Mremap) => {
            offset_of!(MapEvent, ts_ns)
        }
        None => return 0,
    };
    rec.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Most records read from one ring ahead of the merge: one look at the
/// other rings then covers them all (a look per record was a fifth of the
/// ring thread's time).
const READ_AHEAD: usize = 32;

/// Bytes after which no further record is read ahead from a ring: what is
/// held here stays small beside the queue's bound (8 rings at most).
const READ_AHEAD_BYTES: usize = 64 << 10;

/// A record read from a ring and not given out yet: where its bytes are in
/// the ring's `data`, its time, and when it was read (a count of reads and
/// looks).
#[derive(Clone, Copy)]
struct Held {
    start: usize,
    end: usize,
    ts: u64,
    read: u64,
}

/// What was read from one ring and not given out yet.
#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    recs: std::collections::VecDeque<Held>,
    /// When the ring was last found empty.
    empty_at: u64,
}

impl Pending {
    /// Holds the record at `data[start..]`, read at `read`.
    fn hold(&mut self, start: usize, read: u64) {
        let end = self.data.len();
        self.recs.push_back(Held {
            start,
            end,
            ts: record_time(&self.data[start..end]),
            read,
        });
    }
}

/// Several rings read as one stream (see the module's text).
pub struct Merged<R> {
    rings: Vec<R>,
    pending: Vec<Pending>,
    /// Reads and looks so far: orders them.
    clock: u64,
    /// The ring read first when nothing is held (the last one that had a
    /// record).
    next: usize,
}

impl<R: RecordSource> Merged<R> {
    /// The rings, in any order.
    pub fn new(rings: Vec<R>) -> Merged<R> {
        let pending = rings.iter().map(|_| Pending::default()).collect();
        Merged {
            rings,
            pending,
            clock: 0,
            next: 0,
        }
    }

    /// Reads up to [`READ_AHEAD`] records of ring `i` (it holds none).
    fn read(&mut self, i: usize) {
        let p = &mut self.pending[i];
        p.data.clear();
        while p.recs.len() < READ_AHEAD && p.data.len() < READ_AHEAD_BYTES {
            let start = p.data.len();
            self.clock += 1;
            if !self.rings[i].pop_into(&mut p.data) {
                p.empty_at = self.clock;
                return;
            }
            p.hold(start, self.clock);
        }
    }

    /// The ring whose first record at hand is the earliest, and that record.
    fn earliest(&self) -> Option<(usize, Held)> {
        self.pending
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.recs.front().map(|h| (h.ts, i, *h)))
            .min_by_key(|(ts, i, _)| (*ts, *i))
            .map(|(_, i, h)| (i, h))
    }
}

impl<R: RecordSource> RecordSource for Merged<R> {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        if let [ring] = self.rings.as_mut_slice() {
            return ring.pop_into(buf);
        }
        if self.pending.iter().all(|p| p.recs.is_empty()) {
            // Nothing held: a record read straight into `buf` goes out as
            // it is if the other rings are still empty after it was read
            // (one copy, where holding it took two).
            let n = self.rings.len();
            for i in (0..n).map(|i| (i + self.next) % n) {
                let start = buf.len();
                self.clock += 1;
                if !self.rings[i].pop_into(buf) {
                    self.pending[i].empty_at = self.clock;
                    continue;
                }
                let read = self.clock;
                for j in 0..n {
                    if j != i && self.pending[j].empty_at < read {
                        self.read(j);
                    }
                }
                if self.pending.iter().all(|p| p.recs.is_empty()) {
                    self.next = i;
                    return true;
                }
                // Another ring has records now: this one waits its turn.
                let p = &mut self.pending[i];
                p.data.clear();
                p.data.extend_from_slice(&buf[start..]);
                buf.truncate(start);
                p.hold(0, read);
                break;
            }
        }
        for i in 0..self.rings.len() {
            if self.pending[i].recs.is_empty() {
                self.read(i);
            }
        }
        loop {
            let Some((k, head)) = self.earliest() else {
                return false;
            };
            // A ring with nothing at hand that was last looked at before
            // this record was read is looked at again: then what the record
            // depends on is here.
            let mut looked = false;
            for j in 0..self.rings.len() {
                let p = &self.pending[j];
                if p.recs.is_empty() && p.empty_at < head.read {
                    self.read(j);
                    looked = true;
                }
            }
            if looked {
                continue;
            }
            let p = &mut self.pending[k];
            p.recs.pop_front();
            buf.extend_from_slice(&p.data[head.start..head.end]);
            return true;
        }
    }
}

/// The kernel's rings, read as one stream.
pub struct RingSet {
    merged: Merged<RingBuf<MapData>>,
}

impl RingSet {
    /// Reads `rings` as one stream.
    pub fn new(rings: Vec<RingBuf<MapData>>) -> RingSet {
        RingSet {
            merged: Merged::new(rings),
        }
    }
}

impl RecordSource for RingSet {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        self.merged.pop_into(buf)
    }
}

impl super::pump::WaitReady for RingSet {
    fn wait_ready(&self, timeout: std::time::Duration) {
        let fds: Vec<BorrowedFd<'_>> = self.merged.rings.iter().map(|r| r.as_fd()).collect();
        super::pump::wait_readable(&fds, timeout);
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
