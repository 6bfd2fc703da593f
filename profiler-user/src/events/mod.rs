//! Draining the event ring buffer: mmap-family events, DWARF stack samples
//! and frees of sampled allocations, applied in the order the kernel wrote them.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use profiler_common::{AllocKind, EventKind, MapEvent, ProcEvent, SampleHeader, SampledFree};

use crate::aggregate::regions::ProcessRegions;
use crate::aggregate::samples::SampleTable;
use crate::aggregate::{SiteRef, StackRef};
use crate::process::arenas::{ChunkHead, Home};
use crate::process::maps::MemoryMap;
use crate::process::vm::VmRead;
use crate::unwind::extent::{StackExtents, UnwoundCopy};
use crate::unwind::{ModulePaths, PendingReturn, Regs, UnwindStop, Unwinder};

pub mod chunks;
pub mod pump;
pub mod rings;

/// One decoded ring-buffer record.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Map(MapEvent),
    Sample(SampleHeader, &'a [u8]),
    SampledFree(SampledFree),
    /// An exec, a fork or the exit of a profiled process.
    Proc(ProcEvent),
}

fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; T is one of profiler_common's
    // #[repr(C)] integer structs, valid for every bit pattern; read_unaligned
    // copes with the buffer's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one record by its leading kind; `None` if malformed.
pub fn decode(bytes: &[u8]) -> Option<Event<'_>> {
    let kind: u32 = read_pod(bytes)?;
    match EventKind::from_u32(kind)? {
        EventKind::Sample => {
            let h: SampleHeader = read_pod(bytes)?;
            let start = std::mem::size_of::<SampleHeader>();
            let stack = bytes.get(start..start.checked_add(h.stack_len as usize)?)?;
            Some(Event::Sample(h, stack))
        }
        EventKind::SampledFree => read_pod(bytes).map(Event::SampledFree),
        EventKind::Exec | EventKind::Fork | EventKind::Exit => read_pod(bytes).map(Event::Proc),
        EventKind::Mmap | EventKind::Munmap | EventKind::Mremap => read_pod(bytes).map(Event::Map),
    }
}

/// Where events are applied.
pub struct EventSink<'a> {
    pub regions: &'a mut ProcessRegions,
    pub samples: &'a mut SampleTable,
    pub unwinder: &'a mut Unwinder,
    /// Learns each thread's stack end from the unwinds (see `unwind::extent`).
    pub extents: &'a mut StackExtents,
    pub maps: &'a mut MemoryMap,
    /// The maps of the other profiled processes (their samples unwind
    /// against their own layout).
    pub others: &'a mut crate::process::maps::OtherMaps,
    pub files: &'a dyn ModulePaths,
    /// Re-reads the memory map when a sample's ip is in no known mapping
    /// (a library loaded, or the command just exec'd); once per drain.
    pub refresh: &'a mut dyn FnMut() -> Option<MemoryMap>,
    pub refreshed: bool,
    /// Where glibc put sampled blocks; `None` for other allocators.
    pub home: Option<Homes<'a>>,
    /// Execs and forks of profiled processes, handled by the session after
    /// the drain (it needs the live map and the probes).
    pub execs: &'a mut Vec<ExecSeen>,
    /// The session's own target: its exit ends the session, and what it
    /// still held then (its leaks at exit) stays for the final report.
    pub target: u32,
}

/// How sampled glibc blocks are placed: by address when it tells
/// (`place(tgid, ptr, None)`), else by their chunk headers, read through
/// `memory` for a whole batch before it is applied
/// ([`chunks::ChunkReads`]): `place(tgid, ptr, header)` gives the block's
/// home (`None` header: unreadable).
#[derive(Clone, Copy)]
pub struct Homes<'a> {
    pub memory: &'a dyn VmRead,
    pub place: &'a dyn Fn(u32, u64, Option<ChunkHead>) -> Option<Home>,
}

/// An exec (with the mapped regions of the old image released at that
/// point of the stream) or a fork seen in the event stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSeen {
    pub ev: ProcEvent,
    pub regions: u64,
    pub region_bytes: u64,
}

/// Applies one mmap-family event (frame-pointer mode: the owner is a kernel stack id).
pub fn apply_map(ev: &MapEvent, regions: &mut ProcessRegions) -> bool {
    let regions = regions.of(ev.tgid);
    match EventKind::from_u32(ev.kind) {
        Some(EventKind::Mmap) => regions.mmap(ev.addr, ev.len, StackRef::Kernel(ev.stack_id)),
        Some(EventKind::Munmap) => regions.munmap(ev.addr, ev.len),
        Some(EventKind::Mremap) => regions.mremap(ev.addr, ev.len, ev.new_addr, ev.new_len),
        _ => return false,
    }
    true
}

impl EventSink<'_> {
    /// Applies one event; false for a record of an unknown kind. A sample
    /// applied this way has no chunk header: see [`EventSink::apply_with`].
    pub fn apply(&mut self, ev: Event<'_>, stats: &mut EventStats) -> bool {
        self.apply_with(ev, chunks::Known::Nothing, stats)
    }

    /// Applies one event, a sample with what is `known` of its block's
    /// home ([`chunks::ChunkReads`]).
    pub fn apply_with(
        &mut self,
        ev: Event<'_>,
        known: chunks::Known,
        stats: &mut EventStats,
    ) -> bool {
        match ev {
            Event::Map(m) => apply_map(&m, self.regions),
            Event::SampledFree(f) => {
                self.samples.free_from(f.tgid, f.tid, f.ptr, f.who);
                true
            }
            Event::Proc(ev) => {
                // After an exec, regions mapped from here on belong to the
                // new image; after an exit there are none; a fork changes
                // nothing here.
                let exit_of_other = ev.kind == EventKind::Exit as u32 && ev.tgid != self.target;
                let (regions, region_bytes) = if ev.kind == EventKind::Exec as u32 || exit_of_other
                {
                    self.regions.of(ev.tgid).release_all()
                } else {
                    (0, 0)
                };
                self.execs.push(ExecSeen {
                    ev,
                    regions,
                    region_bytes,
                });
                true
            }
            Event::Sample(h, stack) => {
                let started = stats.samples.is_multiple_of(TIME_ONE_IN).then(Instant::now);
                let regs = Regs {
                    ip: h.ip,
                    sp: h.sp,
                    bp: h.bp,
                };
                let n = (h.n_pending as usize).min(profiler_common::MAX_PENDING);
                let pending: Vec<PendingReturn> = (0..n)
                    .map(|i| PendingReturn {
                        slot: h.pending_slot[i],
                        ret: h.pending_ret[i],
                    })
                    .collect();
                let other = h.tgid != self.target;
                let maps = match other {
                    true => self.others.get(h.tgid, false).unwrap_or(self.maps),
                    false => self.maps,
                };
                let (mut frames, mut stop) = self
                    .unwinder
                    .walk_memo(h.tgid, regs, stack, &pending, maps, self.files);
                if stop == UnwindStop::NoModule && frames.len() == 1 && other && !self.refreshed {
                    // A library loaded (or an exec) since its map was read.
                    self.refreshed = true;
                    if let Some(m) = self.others.get(h.tgid, true) {
                        (frames, stop) = self.unwinder.walk(regs, stack, &pending, m, self.files);
                    }
                } else if stop == UnwindStop::NoModule && frames.len() == 1 && !self.refreshed {
                    self.refreshed = true;
                    if let Some(m) = (self.refresh)() {
                        *self.maps = m;
                        (frames, stop) = self
                            .unwinder
                            .walk(regs, stack, &pending, self.maps, self.files);
                    }
                }
                // Once per stack, whatever the number of attempts.
                self.unwinder.count_stop(stop);
                self.extents.observe(UnwoundCopy {
                    tid: h.tid,
                    sp: h.sp,
                    stack_len: h.stack_len,
                    read_end: self.unwinder.last_read_end(),
                    stop,
                });
                if let Some(t) = started {
                    stats.unwind_time += t.elapsed();
                    stats.timed += 1;
                }
                stats.samples += 1;
                let stack = self.samples.intern(frames);
                if h.alloc_kind == AllocKind::Mmap as u32 {
                    self.regions.of(h.tgid).mmap(h.ptr, h.size, stack);
                } else {
                    let site = SiteRef {
                        pid: h.tgid,
                        stack,
                        kind: h.alloc_kind,
                    };
                    let home = self.home.and_then(|homes| {
                        let home = match known {
                            chunks::Known::Home(home) => Some(home),
                            chunks::Known::Head(head) => (homes.place)(h.tgid, h.ptr, Some(head)),
                            chunks::Known::Nothing => (homes.place)(h.tgid, h.ptr, None),
                        };
                        stats.homes_unknown += u64::from(home.is_none());
                        home
                    });
                    self.samples.alloc_at(
                        h.tgid,
                        h.tid,
                        h.ptr,
                        site,
                        (h.est_bytes, h.est_count),
                        home,
                        h.ts_ns,
                    );
                }
                true
            }
        }
    }
}

/// One sample in this many is timed (see [`EventStats::unwind_time`]).
pub const TIME_ONE_IN: u64 = 64;

/// What draining has done so far.
#[derive(Debug, Default, Clone)]
pub struct EventStats {
    /// Records applied.
    pub applied: u64,
    /// Records too short or of an unknown kind (a build mismatch; never expected).
    pub malformed: u64,
    /// Stack samples unwound; the time spent unwinding the `timed` ones
    /// (one in [`TIME_ONE_IN`]: a clock read per sample was ~4% of the
    /// capture thread).
    pub samples: u64,
    pub unwind_time: Duration,
    pub timed: u64,
    /// Records still in the ring when the session stopped: never applied,
    /// so their allocations and frees are missing from per-site numbers.
    pub unread_at_stop: u64,
    /// Sampled glibc blocks not placed in an arena: their chunk header was
    /// unreadable when heapscope read it (an mmapped block already freed,
    /// a heap trimmed) or made no sense. They are missing from the
    /// per-arena live bytes, and a free of one by another thread counts as
    /// cross-thread.
    pub homes_unknown: u64,
    /// `process_vm_readv` calls that read those headers.
    pub header_reads: u64,
}

/// Where records are read from: the kernel's ring buffer, or a queue in tests.
pub trait RecordSource {
    /// Appends the next record's bytes to `buf` and returns true; false when
    /// there is none.
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool;

    /// Puts a whole batch of records into `batch` without copying them,
    /// when the source holds one within `limits` (a chunk the pump filled)
    /// and nothing of it was taken yet; returns false otherwise, and then
    /// records are copied one by one ([`RecordSource::pop_into`]).
    fn take_batch(&mut self, batch: &mut Batch, limits: DrainLimits) -> bool {
        let _ = (batch, limits);
        false
    }
}

impl RecordSource for RingBuf<MapData> {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        match self.next() {
            Some(item) => {
                buf.extend_from_slice(&item);
                true
            }
            None => false,
        }
    }
}

/// How much one drain step copies out of the ring at most. Bounded so that a
/// flooded ring never grows heapscope's memory and ticks, signals and the
/// duration are served between steps; what does not fit in the ring
/// meanwhile is counted by the kernel (`ring buffer lost`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainLimits {
    /// Most records per batch.
    pub max_records: usize,
    /// Bytes per batch after which no further record is copied.
    pub max_bytes: usize,
}

impl Default for DrainLimits {
    fn default() -> Self {
        // 512 DWARF samples of up to 8 KiB (4 MiB) and, at ~15 µs for a
        // first unwind each, a few milliseconds of work per batch (a
        // repeated stack takes ~0.1 µs). As many records as a chunk of the
        // pump's, which is then taken whole (`RecordSource::take_batch`).
        DrainLimits {
            max_records: 512,
            max_bytes: 4 << 20,
        }
    }
}

/// Records copied out of the ring, applied after: the kernel gets its ring
/// space back before the (slower) unwinding starts. Reused between batches,
/// so its memory stays at about `max_bytes`.
#[derive(Debug, Default)]
pub struct Batch {
    data: Vec<u8>,
    /// End offset of each record in `data`.
    ends: Vec<usize>,
}

impl Batch {
    /// Empties the batch and copies records from `source` until it is empty
    /// or a limit is reached. Returns true when a limit stopped it (more
    /// records may be waiting).
    pub fn fill(&mut self, source: &mut impl RecordSource, limits: DrainLimits) -> bool {
        self.data.clear();
        self.ends.clear();
        self.fill_more(source, limits)
    }

    /// [`Batch::fill`] without emptying the batch first.
    pub fn fill_more(&mut self, source: &mut impl RecordSource, limits: DrainLimits) -> bool {
        while self.ends.len() < limits.max_records.max(1) && self.data.len() < limits.max_bytes {
            if !source.pop_into(&mut self.data) {
                return false;
            }
            self.ends.push(self.data.len());
        }
        true
    }

    /// Empties the batch (its buffers keep their capacity).
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// Appends one record.
    pub fn push(&mut self, rec: &[u8]) {
        self.data.extend_from_slice(rec);
        self.ends.push(self.data.len());
    }

    /// The records, in ring order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.data[s..e])
    }

    /// Record `i`, in ring order.
    pub fn record(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        self.data.get(start..end)
    }

    /// Bytes of the records in the batch.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Bytes the batch's buffers hold (what it costs in memory).
    pub fn capacity(&self) -> usize {
        self.data.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }

    /// Makes room for `bytes` of records without growing again.
    pub fn reserve(&mut self, bytes: usize) {
        self.data.reserve(bytes.saturating_sub(self.data.len()));
    }

    /// A copy of the batch in buffers of exactly its size.
    pub fn compact(&self) -> Batch {
        Batch {
            data: self.data.clone(),
            ends: self.ends.clone(),
        }
    }

    /// Number of records in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// Reads records in bounded batches and applies them in order.
pub struct EventReader<S = rings::RingSet> {
    source: S,
    batch: Batch,
    /// The chunk headers of the batch's samples (glibc only).
    chunks: chunks::ChunkReads,
    limits: DrainLimits,
    pub stats: EventStats,
}

impl<S: RecordSource> EventReader<S> {
    /// A reader of `source` copying at most `limits` per batch.
    pub fn new(source: S, limits: DrainLimits) -> Self {
        EventReader {
            source,
            batch: Batch::default(),
            chunks: chunks::ChunkReads::default(),
            limits,
            stats: EventStats::default(),
        }
    }

    /// The record source (the ring buffer, to poll its descriptor).
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The record source, to stop its pump.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.source
    }

    /// Copies one bounded batch and applies it. Returns true when more
    /// records may be waiting.
    pub fn drain_batch(&mut self, sink: &mut EventSink<'_>) -> bool {
        // A whole chunk from the pump when there is one: every record
        // copied once more was ~10% of the capture thread under --exact.
        // A small chunk (the pump keeps up, and queues what the ring has
        // each time) is topped up with copies of the next records: each
        // batch costs the capture loop a few system calls besides.
        let more = match self.source.take_batch(&mut self.batch, self.limits) {
            true if self.batch.len() * 4 < self.limits.max_records => {
                self.batch.fill_more(&mut self.source, self.limits)
            }
            true => true,
            false => self.batch.fill(&mut self.source, self.limits),
        };
        // All headers first, in one call per process, then the records.
        match &sink.home {
            Some(homes) => {
                let by_address = |tgid: u32, ptr: u64| (homes.place)(tgid, ptr, None);
                self.stats.header_reads +=
                    self.chunks.prefetch(&self.batch, homes.memory, &by_address);
            }
            None => self.chunks.clear(),
        }
        for (i, rec) in self.batch.records().enumerate() {
            let applied = match decode(rec) {
                Some(ev) => sink.apply_with(ev, self.chunks.known(i), &mut self.stats),
                None => false,
            };
            if applied {
                self.stats.applied += 1;
            } else {
                self.stats.malformed += 1;
            }
        }
        more
    }

    /// Applies at most `max_batches` batches; true when records may remain.
    pub fn drain(&mut self, sink: &mut EventSink<'_>, max_batches: usize) -> bool {
        for _ in 0..max_batches {
            if !self.drain_batch(sink) {
                return false;
            }
        }
        true
    }

    /// Discards the records still waiting (at most `max`: the probes may
    /// still be writing), counting them in [`EventStats::unread_at_stop`];
    /// the number discarded is returned.
    pub fn discard_rest(&mut self, max: u64) -> u64 {
        let mut n = 0;
        let mut scratch = Vec::new();
        while n < max && self.source.pop_into(&mut scratch) {
            scratch.clear();
            n += 1;
        }
        self.stats.unread_at_stop += n;
        n
    }
}

/// Test helpers shared by the event tests: a queue standing in for the
/// ring, and the bytes of a record.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::VecDeque;

    use super::RecordSource;

    /// A ring stand-in: a queue of records.
    pub struct Queue(pub VecDeque<Vec<u8>>);

    impl RecordSource for Queue {
        fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
            match self.0.pop_front() {
                Some(r) => {
                    buf.extend_from_slice(&r);
                    true
                }
                None => false,
            }
        }
    }

    /// The bytes of a record struct, as the probes write them.
    pub fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a #[repr(C)] struct with explicit padding fields, so
        // all of its bytes are initialised.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }
}

#[cfg(test)]
mod tests;
