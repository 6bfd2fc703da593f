//! Exec of a profiled process: the old image's live blocks are gone with its
//! address space. They are taken out of the live map and counted as
//! "released by exec" (as frees, so allocated − freed stays the live heap),
//! and the change of program is kept for the report.

use std::collections::BTreeMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use profiler_common::{LiveAlloc, LiveKey, SiteCounters, SiteKey, STACK_UNSAMPLED, STACK_USER};

use crate::aggregate::samples::SampleTable;
use crate::events::ExecSeen;
use crate::probes::ProbeError;

/// One exec of a profiled process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecNote {
    pub pid: u32,
    /// Milliseconds since attach when the session noticed it.
    pub t_ms: u64,
    pub old_comm: String,
    pub new_comm: String,
    /// Live blocks (and mapped regions) of the old image released.
    pub blocks: u64,
    pub bytes: u64,
    /// The thread that exec'd, when not the main one: the probes, bound to
    /// the old main thread, died with it and were attached again.
    pub from_thread: Option<u32>,
    /// Probes attached again (from another thread), or why they could not be.
    pub reattached: Option<Result<usize, String>>,
    /// The new program's allocator when it is not the old one's (another
    /// library, a static binary): its probes were attached (count), or why not.
    pub new_allocator: Option<(String, Result<usize, String>)>,
}

impl ExecNote {
    /// One line for the report and the status output.
    pub fn describe(&self) -> String {
        // A short-lived process (a shell script's helpers) can exec and exit
        // before its name is read: say so rather than print blanks.
        let programs = if self.old_comm.is_empty() && self.new_comm.is_empty() {
            "(it exited before its program's name could be read)".to_string()
        } else {
            let name = |s: &str| if s.is_empty() { "?" } else { s }.to_string();
            format!("{} → {}", name(&self.old_comm), name(&self.new_comm))
        };
        let mut line = format!(
            "pid {} exec'd at {:.1}s: {programs}; {} live blocks ({} B) of the old image released by exec",
            self.pid,
            self.t_ms as f64 / 1000.0,
            self.blocks,
            self.bytes
        );
        if let Some(tid) = self.from_thread {
            match &self.reattached {
                Some(Ok(n)) => line.push_str(&format!(
                    "; exec'd from thread {tid}, not the main one: its {n} probes were attached \
                     again (the old ones went with the old main thread)"
                )),
                Some(Err(e)) => line.push_str(&format!(
                    "; exec'd from thread {tid}, not the main one: its probes could not be \
                     attached again ({e}): its allocations are no longer seen"
                )),
                None => {}
            }
        }
        match &self.new_allocator {
            Some((what, Ok(n))) => line.push_str(&format!(
                "; the new program has another allocator ({what}): {n} probes attached for it"
            )),
            Some((what, Err(e))) => line.push_str(&format!(
                "; the new program has another allocator ({what}) that could not be probed \
                 ({e}): its allocations are not seen"
            )),
            None => {}
        }
        line
    }
}

/// One profiled process that exited: its live blocks were released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitNote {
    pub pid: u32,
    /// Milliseconds since attach when the session noticed it.
    pub t_ms: u64,
    pub comm: String,
    /// Live blocks (and mapped regions) released.
    pub blocks: u64,
    pub bytes: u64,
}

impl ExitNote {
    /// One line for the status output.
    pub fn describe(&self) -> String {
        format!(
            "pid {} ({}) exited at {:.1}s: its {} live blocks ({} B) released by exit",
            self.pid,
            self.comm,
            self.t_ms as f64 / 1000.0,
            self.blocks,
            self.bytes
        )
    }
}

/// Everything released so far by execs (the old images' blocks), or by
/// exits (the blocks of processes that ended).
#[derive(Clone, Debug, Default)]
pub struct Released {
    /// Per kernel call site: the released blocks as frees (estimates, as the
    /// site counters hold them).
    pub sites: BTreeMap<SiteKey, SiteCounters>,
    /// Live-map blocks released (not counting regions: those are unmapped
    /// in the region tracker, which counts them as frees itself).
    pub blocks: u64,
    pub bytes: u64,
    /// Regions released.
    pub regions: u64,
    pub region_bytes: u64,
    pub notes: Vec<ExecNote>,
}

impl Released {
    /// Adds one release of `blocks` live blocks (`bytes`) and the regions
    /// `seen` released; returns what this one released, regions included.
    fn add(&mut self, blocks: u64, bytes: u64, seen: &ExecSeen) -> (u64, u64) {
        self.blocks += blocks;
        self.bytes += bytes;
        self.regions += seen.regions;
        self.region_bytes += seen.region_bytes;
        (blocks + seen.regions, bytes + seen.region_bytes)
    }

    /// The program names of process `pid` in order ("old → new") when it
    /// exec'd, else `current`.
    pub fn program_names(&self, pid: u32, current: &str) -> String {
        let mut own = self.notes.iter().filter(|n| n.pid == pid).peekable();
        match own.peek() {
            None => current.to_string(),
            Some(first) => {
                let mut names = vec![first.old_comm.as_str()];
                names.extend(own.map(|n| n.new_comm.as_str()));
                names.join(" → ")
            }
        }
    }

    /// Adds the released blocks to the kernel site counters as frees.
    pub fn apply_to_sites(&self, sites: &mut BTreeMap<SiteKey, SiteCounters>) {
        for (key, r) in &self.sites {
            let c = sites.entry(*key).or_default();
            c.free_bytes += r.free_bytes;
            c.free_count += r.free_count;
        }
    }
}

/// The live blocks of `pid` allocated before `before_ns` (the old image's):
/// pure selection, so it is testable without a kernel.
pub fn old_image_blocks<'a>(
    entries: impl Iterator<Item = (LiveKey, LiveAlloc)> + 'a,
    pid: u32,
    before_ns: u64,
) -> impl Iterator<Item = (LiveKey, LiveAlloc)> + 'a {
    entries.filter(move |(k, a)| k.tgid == pid && a.ts_ns < before_ns)
}

/// Releases the old image's live blocks of one exec (or every block of a
/// process that exited: all are older than its exit) from the kernel's
/// live map into `out`. Returns the blocks and bytes released.
pub fn release(
    ebpf: &mut Ebpf,
    seen: &ExecSeen,
    samples: &mut SampleTable,
    out: &mut Released,
) -> Result<(u64, u64), ProbeError> {
    if samples.holds_live() {
        let (blocks, bytes) = samples.release_older(seen.ev.tgid, seen.ev.ts_ns);
        return Ok(out.add(blocks, bytes, seen));
    }
    let name = "LIVE";
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut live: BpfHashMap<&mut MapData, LiveKey, LiveAlloc> =
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    let old: Vec<(LiveKey, LiveAlloc)> = old_image_blocks(
        live.iter().filter_map(Result::ok),
        seen.ev.tgid,
        seen.ev.ts_ns,
    )
    .collect();
    let (mut blocks, mut bytes) = (0, 0);
    for (key, a) in old {
        // Gone already: the new image freed a block at the same address,
        // and the free was counted then.
        if live.remove(&key).is_err() {
            continue;
        }
        blocks += 1;
        bytes += a.size;
        match a.stack_id {
            STACK_UNSAMPLED => {}
            STACK_USER => samples.free(key.tgid, key.ptr),
            stack_id => {
                let c = out.sites.entry(SiteKey {
                    stack_id,
                    kind: a.kind,
                    tgid: key.tgid,
                    _pad: 0,
                });
                let c = c.or_default();
                c.free_bytes += a.est_bytes;
                c.free_count += a.est_count;
            }
        }
    }
    Ok(out.add(blocks, bytes, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tgid: u32, ptr: u64, ts_ns: u64) -> (LiveKey, LiveAlloc) {
        (
            LiveKey { tgid, _pad: 0, ptr },
            LiveAlloc {
                size: 100,
                ts_ns,
                stack_id: 1,
                kind: 0,
                est_bytes: 100,
                est_count: 1,
                tid: 1,
                _pad: 0,
            },
        )
    }

    #[test]
    fn an_exec_whose_names_were_not_read_says_so() {
        let note = ExecNote {
            pid: 7,
            t_ms: 1200,
            old_comm: String::new(),
            new_comm: String::new(),
            blocks: 0,
            bytes: 0,
            from_thread: None,
            reattached: None,
            new_allocator: None,
        };
        assert_eq!(
            note.describe(),
            "pid 7 exec'd at 1.2s: (it exited before its program's name could be read); \
             0 live blocks (0 B) of the old image released by exec"
        );
        let named = ExecNote {
            old_comm: "bash".into(),
            ..note
        };
        assert!(named.describe().contains(": bash → ?;"));
    }

    #[test]
    fn only_the_exec_processes_older_blocks_are_the_old_image() {
        let all = vec![
            entry(7, 0x10, 100),
            entry(7, 0x20, 200),
            entry(8, 0x30, 100),
            entry(7, 0x40, 300),
        ];
        let old: Vec<u64> = old_image_blocks(all.into_iter(), 7, 250)
            .map(|(k, _)| k.ptr)
            .collect();
        assert_eq!(old, vec![0x10, 0x20]);
    }

    #[test]
    fn released_blocks_count_as_site_frees() {
        let mut r = Released::default();
        let key = SiteKey {
            stack_id: 3,
            kind: 0,
            tgid: 7,
            _pad: 0,
        };
        r.sites.insert(
            key,
            SiteCounters {
                free_bytes: 500,
                free_count: 5,
                ..SiteCounters::default()
            },
        );
        let mut sites = BTreeMap::new();
        sites.insert(
            key,
            SiteCounters {
                alloc_bytes: 800,
                alloc_count: 8,
                free_bytes: 100,
                free_count: 1,
                ..SiteCounters::default()
            },
        );
        r.apply_to_sites(&mut sites);
        assert_eq!(sites[&key].free_bytes, 600);
        assert_eq!(sites[&key].free_count, 6);
    }
}
