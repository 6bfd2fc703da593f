//! The entry table (`ENTRY_IPS` in profiler-ebpf): each probe's runtime
//! address in the first process, with its attach cookie, so the entry
//! programs find their cookie (and the session program that it runs at an
//! entry) without a helper call.
//!
//! It is right only for processes that map the allocator where the first
//! one does: the first process and its children forked without exec. The
//! kernel side turns it off at any exec of a profiled process (userspace
//! fills it again for the new image when that process is the only one
//! profiled: `heapscope run` execs its command after attaching); userspace
//! turns it off before linking a process whose probes would sit at an
//! address the table gives another cookie.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use aya::maps::Array;
use aya::Ebpf;
use profiler_common::{entry_ip_slot, EntryIp, ENTRY_IP_SLOTS};

use super::target::{AllocatorTarget, AttachPoint};
use super::ProbeError;
use crate::process::maps::{Device, MemoryMap};

/// Runtime address → cookie of the probes the table was filled with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryTable {
    entries: BTreeMap<u64, u64>,
}

impl EntryTable {
    /// The probes of `target` at their runtime addresses in `map`: each
    /// point at `offset(point)` of its file, found by device and inode among
    /// the executable mappings. Points whose file is not mapped there are
    /// left out (their programs ask the kernel).
    pub fn of(
        target: &AllocatorTarget,
        map: &MemoryMap,
        offset: fn(&AttachPoint) -> u64,
    ) -> EntryTable {
        let mut entries = BTreeMap::new();
        for p in &target.points {
            let Ok(meta) = std::fs::metadata(&p.file) else {
                continue;
            };
            let dev = Device {
                major: libc::major(meta.dev()),
                minor: libc::minor(meta.dev()),
            };
            if let Some(ip) = runtime_addr(map, dev, meta.ino(), offset(p)) {
                entries.insert(ip, p.spec.cookie());
            }
        }
        EntryTable { entries }
    }

    /// Reads `pid`'s map (after the exec generation) and fills the table
    /// with `target`'s probes there, replacing `previous`; `None` when it
    /// could not (the programs then ask the kernel), said at debug level.
    pub fn fill_for(
        ebpf: &mut Ebpf,
        pid: u32,
        target: &AllocatorTarget,
        offset: fn(&AttachPoint) -> u64,
        previous: Option<&EntryTable>,
    ) -> Option<EntryTable> {
        let filled = generation(ebpf).and_then(|gen| {
            let map = MemoryMap::read_regions(pid).map_err(|e| e.to_string())?;
            let table = EntryTable::of(target, &map, offset);
            fill(ebpf, &table, previous, gen).map(|left_out| (table, left_out))
        });
        match filled {
            Ok((table, left_out)) => {
                log::debug!(
                    "entry table for pid {pid}: {} probes, {left_out} left out (slot taken)",
                    table.len()
                );
                Some(table)
            }
            Err(e) => {
                log::debug!("entry table not filled for pid {pid}: {e}");
                None
            }
        }
    }

    /// True when `other`'s probes can share the table: none of them sits at
    /// an address the table gives another cookie.
    pub fn agrees_with(&self, other: &EntryTable) -> bool {
        other
            .entries
            .iter()
            .all(|(ip, c)| self.entries.get(ip).is_none_or(|mine| mine == c))
    }

    /// The slots to write: one probe per slot; a probe whose slot another
    /// took is left out (it asks the kernel). Returns the slots and how many
    /// were left out.
    pub fn slots(&self) -> (Vec<(u32, EntryIp)>, usize) {
        let mut taken: BTreeMap<u32, EntryIp> = BTreeMap::new();
        let mut left_out = 0;
        for (&ip, &cookie) in &self.entries {
            let slot = entry_ip_slot(ip);
            match taken.entry(slot) {
                std::collections::btree_map::Entry::Occupied(_) => left_out += 1,
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(EntryIp { ip, cookie });
                }
            }
        }
        (taken.into_iter().collect(), left_out)
    }

    /// Probes in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The runtime address of `offset` in the file (`dev`, `inode`), when an
/// executable mapping of that file covers it.
fn runtime_addr(map: &MemoryMap, dev: Device, inode: u64, offset: u64) -> Option<u64> {
    map.regions.iter().find_map(|r| {
        let len = r.end - r.start;
        (r.perms.execute
            && r.dev == dev
            && r.inode == inode
            && offset >= r.file_offset
            && offset - r.file_offset < len)
            .then(|| r.start + (offset - r.file_offset))
    })
}

/// The exec generation now: read it before the map the table is made from
/// (see `ENTRY_TABLE_GEN` in profiler-ebpf).
pub fn generation(ebpf: &Ebpf) -> Result<u64, String> {
    let map = ebpf
        .map(GEN)
        .ok_or("the eBPF object has no ENTRY_TABLE_GEN map")?;
    let gen: Array<_, u64> = Array::try_from(map).map_err(|e| e.to_string())?;
    gen.get(&0, 0).map_err(|e| e.to_string())
}

/// Writes the table's slots (clearing those of `previous`) while it is off,
/// then turns it on for exec generation `generation`: if a profiled process
/// has exec'd since, it stays off. Returns the probes left out (slot taken).
pub fn fill(
    ebpf: &mut Ebpf,
    table: &EntryTable,
    previous: Option<&EntryTable>,
    generation: u64,
) -> Result<usize, String> {
    turn_off(ebpf).map_err(|e| e.to_string())?;
    let (slots, left_out) = table.slots();
    let mut ips: Array<_, EntryIp> = Array::try_from(
        ebpf.map_mut("ENTRY_IPS")
            .ok_or("the eBPF object has no ENTRY_IPS map")?,
    )
    .map_err(|e| e.to_string())?;
    for (slot, _) in previous.map(|p| p.slots().0).unwrap_or_default() {
        ips.set(slot, EntryIp::default(), 0)
            .map_err(|e| e.to_string())?;
    }
    for (slot, e) in slots {
        debug_assert!(slot < ENTRY_IP_SLOTS);
        ips.set(slot, e, 0).map_err(|e| e.to_string())?;
    }
    set_valid_for(ebpf, generation.wrapping_add(1)).map_err(|e| e.to_string())?;
    Ok(left_out)
}

/// Turns the table off (until the next fill).
pub fn turn_off(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    set_valid_for(ebpf, 0)
}

const GEN: &str = "ENTRY_TABLE_GEN";

fn set_valid_for(ebpf: &mut Ebpf, value: u64) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(GEN).ok_or(ProbeError::MissingMap(GEN))?;
    let mut gen: Array<_, u64> =
        Array::try_from(map).map_err(|source| ProbeError::Map { name: GEN, source })?;
    gen.set(1, value, 0)
        .map_err(|source| ProbeError::Map { name: GEN, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u64, u64)]) -> EntryTable {
        EntryTable {
            entries: entries.iter().copied().collect(),
        }
    }

    #[test]
    fn a_process_agrees_unless_an_address_has_another_cookie() {
        let first = table(&[(0x7f00_1000, 1), (0x7f00_2000, 2)]);
        // A child forked without exec: the same probes at the same places.
        assert!(first.agrees_with(&first));
        // Other probes elsewhere (a library loaded later): no conflict.
        assert!(first.agrees_with(&table(&[(0x7f00_3000, 7)])));
        // Another layout: an address of the table with another cookie.
        assert!(!first.agrees_with(&table(&[(0x7f00_2000, 1)])));
    }

    #[test]
    fn a_probe_whose_slot_is_taken_is_left_out() {
        let ip = 0x7f12_3456_7000u64;
        // Find a second address in the same slot.
        let other = (1..1 << 20)
            .map(|i| ip + i * 16)
            .find(|&a| entry_ip_slot(a) == entry_ip_slot(ip))
            .expect("a colliding address");
        let (slots, left_out) = table(&[(ip, 1), (other, 2), (0x1000, 3)]).slots();
        assert_eq!(left_out, 1);
        assert_eq!(slots.len(), 2);
        assert!(slots.iter().all(|(s, e)| *s == entry_ip_slot(e.ip)));
    }

    #[test]
    fn the_runtime_address_comes_from_the_mapping_of_that_file() {
        let map = MemoryMap::parse(
            "7f0000000000-7f0000028000 r--p 00000000 08:01 42 /usr/lib/libc.so.6\n\
             7f0000028000-7f00001bd000 r-xp 00028000 08:01 42 /usr/lib/libc.so.6\n\
             7f00001bd000-7f00001c0000 r-xp 00000000 08:01 43 /usr/lib/other.so\n",
        )
        .expect("parse");
        let dev = Device { major: 8, minor: 1 };
        assert_eq!(runtime_addr(&map, dev, 42, 0x9a0f0), Some(0x7f00_0009_a0f0));
        // Not in an executable mapping, another inode or another device.
        assert_eq!(runtime_addr(&map, dev, 42, 0x100), None);
        assert_eq!(runtime_addr(&map, dev, 44, 0x9a0f0), None);
        let other = Device { major: 8, minor: 2 };
        assert_eq!(runtime_addr(&map, other, 42, 0x9a0f0), None);
    }
}
