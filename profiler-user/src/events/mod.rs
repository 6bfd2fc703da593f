//! Draining the ring buffer of mmap-family events and applying them to the region tracker.

use aya::maps::{MapData, RingBuf};
use aya::Ebpf;
use profiler_common::{AllocKind, MapEvent};

use crate::aggregate::regions::RegionTracker;

/// Reads `MapEvent` records from the `MAP_EVENTS` ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Records too short or of an unknown kind (a build mismatch; never expected).
    pub malformed: u64,
    /// Records applied so far.
    pub applied: u64,
}

/// Decodes one ring-buffer record; `None` if it is not a whole `MapEvent`.
pub fn decode(bytes: &[u8]) -> Option<MapEvent> {
    if bytes.len() < std::mem::size_of::<MapEvent>() {
        return None;
    }
    // SAFETY: the length was checked above, MapEvent is a plain #[repr(C)]
    // integer struct for which every bit pattern is valid, and
    // read_unaligned copes with the buffer's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<MapEvent>()) })
}

/// Applies one event to the tracker; false for an unknown kind.
pub fn apply(ev: &MapEvent, tracker: &mut RegionTracker) -> bool {
    match AllocKind::from_u32(ev.kind) {
        Some(AllocKind::Mmap) => tracker.mmap(ev.addr, ev.len, ev.stack_id),
        Some(AllocKind::Munmap) => tracker.munmap(ev.addr, ev.len),
        Some(AllocKind::Mremap) => tracker.mremap(ev.addr, ev.len, ev.new_addr, ev.new_len),
        _ => return false,
    }
    true
}

impl EventReader {
    /// Takes the ring buffer out of the loaded object.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<EventReader> {
        let map = ebpf.take_map("MAP_EVENTS").ok_or_else(|| {
            anyhow::anyhow!("ring buffer MAP_EVENTS missing from the eBPF object")
        })?;
        Ok(EventReader {
            ring: RingBuf::try_from(map)?,
            malformed: 0,
            applied: 0,
        })
    }

    /// Applies every pending record, in order.
    pub fn drain(&mut self, tracker: &mut RegionTracker) {
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(ev) if apply(&ev, tracker) => self.applied += 1,
                _ => self.malformed += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(ev: &MapEvent) -> Vec<u8> {
        // SAFETY: MapEvent is #[repr(C)] with explicit padding, so all its bytes are initialised.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const MapEvent).cast::<u8>(),
                std::mem::size_of::<MapEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decode_round_trip_and_short_records() {
        let ev = MapEvent {
            kind: AllocKind::Mmap as u32,
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
        assert_eq!(decode(&b), Some(ev));
        assert_eq!(decode(&b[..10]), None);
        let mut t = RegionTracker::default();
        assert!(apply(&ev, &mut t));
        assert_eq!(t.stats()[&3].live_bytes, 8192);
        let bad = MapEvent { kind: 99, ..ev };
        assert!(!apply(&bad, &mut t));
    }
}
