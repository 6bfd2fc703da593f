//! Draining the event ring buffer: mmap-family events, DWARF stack samples
//! and frees of sampled allocations, applied in the order the kernel wrote them.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use aya::Ebpf;
use profiler_common::{AllocKind, EventKind, MapEvent, SampleHeader, SampledFree};
use tokio::io::unix::AsyncFd;

use crate::aggregate::regions::RegionTracker;
use crate::aggregate::samples::SampleTable;
use crate::aggregate::{SiteRef, StackRef};
use crate::process::maps::MemoryMap;
use crate::unwind::{ModuleFiles, PendingReturn, Regs, StopReason, Unwinder};

/// One decoded ring-buffer record.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    Map(MapEvent),
    Sample(SampleHeader, &'a [u8]),
    SampledFree(SampledFree),
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
        EventKind::Mmap | EventKind::Munmap | EventKind::Mremap => read_pod(bytes).map(Event::Map),
    }
}

/// Where events are applied.
pub struct EventSink<'a> {
    pub regions: &'a mut RegionTracker,
    pub samples: &'a mut SampleTable,
    pub unwinder: &'a mut Unwinder,
    pub maps: &'a mut MemoryMap,
    pub files: &'a dyn ModuleFiles,
    /// Re-reads the memory map when a sample's ip is in no known mapping
    /// (a library loaded, or the command just exec'd); once per drain.
    pub refresh: &'a mut dyn FnMut() -> Option<MemoryMap>,
    pub refreshed: bool,
}

/// Applies one mmap-family event (frame-pointer mode: the owner is a kernel stack id).
pub fn apply_map(ev: &MapEvent, regions: &mut RegionTracker) -> bool {
    match EventKind::from_u32(ev.kind) {
        Some(EventKind::Mmap) => regions.mmap(ev.addr, ev.len, StackRef::Kernel(ev.stack_id)),
        Some(EventKind::Munmap) => regions.munmap(ev.addr, ev.len),
        Some(EventKind::Mremap) => regions.mremap(ev.addr, ev.len, ev.new_addr, ev.new_len),
        _ => return false,
    }
    true
}

impl EventSink<'_> {
    /// Applies one event; false for a record of an unknown kind.
    pub fn apply(&mut self, ev: Event<'_>, stats: &mut EventStats) -> bool {
        match ev {
            Event::Map(m) => apply_map(&m, self.regions),
            Event::SampledFree(f) => {
                self.samples.free(f.tgid, f.ptr);
                true
            }
            Event::Sample(h, stack) => {
                let started = Instant::now();
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
                let (mut frames, mut stop) = self
                    .unwinder
                    .unwind(regs, stack, &pending, self.maps, self.files);
                if stop == StopReason::NoModule && frames.len() == 1 && !self.refreshed {
                    self.refreshed = true;
                    if let Some(m) = (self.refresh)() {
                        *self.maps = m;
                        (frames, stop) = self
                            .unwinder
                            .unwind(regs, stack, &pending, self.maps, self.files);
                    }
                }
                let _ = stop;
                stats.unwind_time += started.elapsed();
                stats.samples += 1;
                let stack = self.samples.intern(frames);
                if h.alloc_kind == AllocKind::Mmap as u32 {
                    self.regions.mmap(h.ptr, h.size, stack);
                } else {
                    let site = SiteRef {
                        stack,
                        kind: h.alloc_kind,
                    };
                    self.samples
                        .alloc(h.tgid, h.ptr, site, h.est_bytes, h.est_count);
                }
                true
            }
        }
    }
}

/// What draining has done so far.
#[derive(Debug, Default, Clone)]
pub struct EventStats {
    /// Records applied.
    pub applied: u64,
    /// Records too short or of an unknown kind (a build mismatch; never expected).
    pub malformed: u64,
    /// Stack samples unwound, and the time spent unwinding them.
    pub samples: u64,
    pub unwind_time: Duration,
}

/// Reads records from the `EVENTS` ring buffer, woken by epoll when data arrives.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    pub stats: EventStats,
}

impl EventReader {
    /// Takes the ring buffer out of the loaded object.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<EventReader> {
        let map = ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow::anyhow!("ring buffer EVENTS missing from the eBPF object"))?;
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the ring buffer owns its map fd, which stays open and the
        // same for as long as the RingBuf lives, i.e. inside this AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("cannot poll the event ring buffer: {e}"))?;
        Ok(EventReader {
            ring,
            stats: EventStats::default(),
        })
    }

    /// Waits until the ring buffer has data.
    pub async fn readable(&mut self) -> std::io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Applies every pending record, in order. Records are copied out first
    /// and applied after, so the kernel gets its ring space back before the
    /// (slower) unwinding starts.
    pub fn drain(&mut self, sink: &mut EventSink<'_>) {
        let ring: &mut RingBuf<MapData> = self.ring.get_mut();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        loop {
            while let Some(item) = ring.next() {
                pending.push(item.to_vec());
            }
            if pending.is_empty() {
                return;
            }
            for rec in pending.drain(..) {
                let applied = match decode(&rec) {
                    Some(ev) => sink.apply(ev, &mut self.stats),
                    None => false,
                };
                if applied {
                    self.stats.applied += 1;
                } else {
                    self.stats.malformed += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: T is a #[repr(C)] struct with explicit padding fields, so
        // all of its bytes are initialised.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_each_kind_and_rejects_short_records() {
        let ev = MapEvent {
            kind: EventKind::Mmap as u32,
            tgid: 42,
            addr: 0x7000_0000,
            len: 8192,
            new_addr: 0,
            new_len: 0,
            ts_ns: 5,
            stack_id: 3,
            _pad: 0,
        };
        let b = bytes_of(&ev);
        assert_eq!(decode(&b), Some(Event::Map(ev)));
        assert_eq!(decode(&b[..10]), None);
        let mut t = RegionTracker::default();
        assert!(apply_map(&ev, &mut t));
        assert_eq!(t.stats()[&StackRef::Kernel(3)].live_bytes, 8192);

        let free = SampledFree {
            kind: EventKind::SampledFree as u32,
            tgid: 1,
            ptr: 2,
            ts_ns: 3,
        };
        assert_eq!(decode(&bytes_of(&free)), Some(Event::SampledFree(free)));

        let h = SampleHeader {
            kind: EventKind::Sample as u32,
            tgid: 1,
            alloc_kind: AllocKind::Malloc as u32,
            stack_len: 16,
            ptr: 0x10,
            size: 8,
            est_bytes: 8,
            est_count: 1024,
            ts_ns: 0,
            ip: 1,
            sp: 2,
            bp: 3,
            pending_ret: [0; profiler_common::MAX_PENDING],
            pending_slot: [0; profiler_common::MAX_PENDING],
            n_pending: 0,
            _pad: 0,
        };
        let mut rec = bytes_of(&h);
        rec.extend_from_slice(&[7u8; 32]);
        match decode(&rec) {
            Some(Event::Sample(got, stack)) => {
                assert_eq!(got, h);
                assert_eq!(stack, &[7u8; 16][..]);
            }
            other => panic!("{other:?}"),
        }
        // A stack_len beyond the record is malformed, not a panic.
        let bad = SampleHeader {
            stack_len: 4096,
            ..h
        };
        assert_eq!(decode(&bytes_of(&bad)), None);
        assert_eq!(decode(&99u32.to_le_bytes()), None);
    }
}
