//! The probes' per-thread stack ends (`STACK_ENDS`): how much stack a DWARF
//! sample of each thread copies, as learned by the unwinder.

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;

use super::ProbeError;

/// Sets (`Some(end)`) or forgets (`None`) threads' stack ends, in order.
pub fn push(ebpf: &mut Ebpf, updates: &[(u32, Option<u64>)]) -> Result<(), ProbeError> {
    let name = "STACK_ENDS";
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut ends: BpfHashMap<&mut MapData, u32, u64> =
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    for &(tid, end) in updates {
        match end {
            Some(end) => ends
                .insert(tid, end, 0)
                .map_err(|source| ProbeError::Map { name, source })?,
            // Already evicted (the map is LRU) is fine.
            None => {
                let _ = ends.remove(&tid);
            }
        }
    }
    Ok(())
}
