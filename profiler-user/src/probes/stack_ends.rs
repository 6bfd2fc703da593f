//! The probes' per-thread stack ends (`STACK_ENDS`): how much stack a DWARF
//! sample of each thread copies, as learned by the unwinder.

use aya::maps::{Array, MapData};
use aya::Ebpf;
use profiler_common::{stack_end_slot, StackEnd};

use super::ProbeError;

/// The slot value after one update, given what the slot holds: `Some(end)`
/// puts `tid` in its slot (a thread sharing it leaves: it gets full copies);
/// `None` forgets `tid`, leaving another thread's slot alone.
pub fn updated(slot: StackEnd, tid: u32, end: Option<u64>) -> StackEnd {
    match end {
        Some(end) => StackEnd { tid, _pad: 0, end },
        None if slot.tid == tid => StackEnd::default(),
        None => slot,
    }
}

/// Sets (`Some(end)`) or forgets (`None`) threads' stack ends, in order.
pub fn push(ebpf: &mut Ebpf, updates: &[(u32, Option<u64>)]) -> Result<(), ProbeError> {
    let name = "STACK_ENDS";
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut ends: Array<&mut MapData, StackEnd> =
        Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    for &(tid, end) in updates {
        let i = stack_end_slot(tid);
        let old = match end {
            // Setting does not depend on the old value: no read.
            Some(_) => StackEnd::default(),
            None => ends
                .get(&i, 0)
                .map_err(|source| ProbeError::Map { name, source })?,
        };
        let new = updated(old, tid, end);
        if end.is_some() || new != old {
            ends.set(i, new, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_takes_its_slot_and_forgets_only_itself() {
        let empty = StackEnd::default();
        let a = updated(empty, 7, Some(0x7000));
        assert_eq!(
            a,
            StackEnd {
                tid: 7,
                _pad: 0,
                end: 0x7000
            }
        );
        // Another thread of the same slot takes it over.
        let b_tid = 7 + profiler_common::STACK_END_SLOTS;
        assert_eq!(stack_end_slot(b_tid), stack_end_slot(7));
        let b = updated(a, b_tid, Some(0x9000));
        assert_eq!(b.tid, b_tid);
        // Forgetting thread 7 leaves the other thread's end in place.
        assert_eq!(updated(b, 7, None), b);
        assert_eq!(updated(b, b_tid, None), empty);
    }
}
