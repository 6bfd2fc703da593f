//! Each profiled process's allocator layout for the eBPF `LAYOUTS` map
//! (tgid → trampoline page, allocator code ranges): unrelated processes, and
//! a process after exec, map their allocator at other addresses.

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use profiler_common::nesting::AllocLayout;
use profiler_common::ALLOC_INTERNAL_RANGES;

use super::target::AllocatorTarget;
use super::{internals, merge_adjacent, text_ranges, ProbeError};

const MAP: &str = "LAYOUTS";

/// The layout of a process whose memory map is `maps` and whose allocator
/// is `target`, and how many of its ranges did not fit (calls from those are
/// judged the program's).
pub fn layout_of(
    maps: &crate::process::maps::MemoryMap,
    target: &AllocatorTarget,
) -> (AllocLayout, usize) {
    let mut l = AllocLayout::EMPTY;
    l.xol = maps
        .regions
        .iter()
        .find(|r| r.path.as_deref() == Some(crate::unwind::UPROBES_MAPPING))
        .map_or(0, |r| r.start);
    let (text, mut dropped) = text_ranges(maps, &target.modules);
    let internal = merge_adjacent(internals::runtime_ranges(&target.internal, maps));
    dropped += internal
        .len()
        .saturating_sub(ALLOC_INTERNAL_RANGES as usize);
    for (slot, v) in l
        .text
        .iter_mut()
        .zip(text.iter().flat_map(|&(s, e)| [s, e]))
    {
        *slot = v;
    }
    for (slot, v) in l
        .internal
        .iter_mut()
        .zip(internal.iter().flat_map(|&(s, e)| [s, e]))
    {
        *slot = v;
    }
    (l, dropped)
}

fn map(ebpf: &mut Ebpf) -> Result<BpfHashMap<&mut MapData, u32, AllocLayout>, ProbeError> {
    let m = ebpf.map_mut(MAP).ok_or(ProbeError::MissingMap(MAP))?;
    BpfHashMap::try_from(m).map_err(|source| ProbeError::Map { name: MAP, source })
}

/// Writes the layout of `pid` (one update: the probes see the old ranges or
/// the new ones, never a mix).
pub fn set(ebpf: &mut Ebpf, pid: u32, layout: &AllocLayout) -> Result<(), ProbeError> {
    map(ebpf)?
        .insert(pid, *layout, 0)
        .map_err(|source| ProbeError::Map { name: MAP, source })
}

/// Takes the tgid the probes asked a layout for (see `LAYOUT_WANTED`).
pub fn take_wanted(ebpf: &mut Ebpf) -> Result<Option<u32>, ProbeError> {
    let name = "LAYOUT_WANTED";
    let m = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut arr: aya::maps::Array<&mut MapData, u32> =
        aya::maps::Array::try_from(m).map_err(|source| ProbeError::Map { name, source })?;
    let pid = arr
        .get(&0, 0)
        .map_err(|source| ProbeError::Map { name, source })?;
    if pid == 0 {
        return Ok(None);
    }
    arr.set(0, 0, 0)
        .map_err(|source| ProbeError::Map { name, source })?;
    Ok(Some(pid))
}

/// Removes the layout of a process that exited (its tgid may be reused by
/// an unrelated one). Absent already is fine.
pub fn remove(ebpf: &mut Ebpf, pid: u32) -> Result<(), ProbeError> {
    let mut m = map(ebpf)?;
    match m.remove(&pid) {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        // A delete of a missing key fails with ENOENT (a process that exited
        // before its layout went in, or whose exit the probes saw first).
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(source) => Err(ProbeError::Map { name: MAP, source }),
    }
}
