//! Probes for more processes than the first: children, other `-p` PIDs and
//! cgroup members, and a process's new program after an exec.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use super::{multi, single, AllocatorTarget, Links, ProbeError, Probes};

/// A probed function: its file (device, inode: the paths a target names
/// differ, `/lib/…` and `/usr/lib/…`) and offset there.
pub(super) type Probed = (u64, u64, u64);

fn key(p: &super::target::AttachPoint) -> Option<Probed> {
    let m = std::fs::metadata(&p.file).ok()?;
    Some((m.dev(), m.ino(), p.func_offset))
}

/// The functions `target` probes.
pub(super) fn probed(target: &AllocatorTarget) -> HashSet<Probed> {
    target.points.iter().filter_map(key).collect()
}

impl Probes {
    /// Attaches the same probes to another process: a child of a profiled
    /// one (same image) or, with `target`, another program. Returns the
    /// number of probes attached (0 when it already has them).
    pub fn add_process(
        &mut self,
        pid: u32,
        target: Option<&AllocatorTarget>,
    ) -> Result<usize, ProbeError> {
        if self.pids.contains(&pid) {
            return Ok(0);
        }
        super::procs::profile_pid(&mut self.ebpf, pid)?;
        if let Some(t) = target {
            self.targets.insert(pid, t.clone());
        }
        let target = target.unwrap_or(&self.target).clone();
        let n = self.attach_more(pid, &target)?;
        self.pids.push(pid);
        Ok(n)
    }

    /// Attaches probes to a child of a profiled process: its image is its
    /// parent's, so are its allocator's code and probe offsets.
    pub fn add_child(&mut self, pid: u32, parent: u32) -> Result<usize, ProbeError> {
        let target = self.targets.get(&parent).cloned();
        self.add_process(pid, target.as_ref())
    }

    /// Attaches the probes of `pid` again after an exec. With `old_alive`
    /// (the main thread exec'd) its probes still fire in the new program,
    /// on every file it still maps (libc): only the new target's other
    /// functions are probed, or a call there would count twice. Otherwise
    /// (another thread exec'd) the old probes were bound to the old main
    /// thread, gone with it, and all go in again. With `target`, the new
    /// program's allocator is probed (and kept for the children it forks).
    pub fn reattach(
        &mut self,
        pid: u32,
        target: Option<AllocatorTarget>,
        old_alive: bool,
    ) -> Result<usize, ProbeError> {
        if let Some(t) = target {
            self.targets.insert(pid, t);
        }
        if !old_alive {
            self.probed.remove(&pid);
        }
        let target = self.target_of(pid).clone();
        self.attach_more(pid, &target)
    }

    /// Attaches `target`'s probes for one more process, but for functions
    /// already probed in it: with the first process's `uprobe_multi`
    /// programs when it has them (a few links, detached in one grace period
    /// each: one probe at a time took ~115 ms a probe, 5.7 s for an exec'd
    /// redis-server's 48), else one at a time.
    fn attach_more(&mut self, pid: u32, target: &AllocatorTarget) -> Result<usize, ProbeError> {
        let known = self.probed.entry(pid).or_default();
        let mut fresh = target.clone();
        let mut keys = Vec::new();
        fresh.points.retain(|p| match key(p) {
            Some(k) if known.contains(&k) => false,
            k => {
                keys.extend(k);
                true
            }
        });
        if fresh.points.is_empty() {
            return Ok(0);
        }
        let n = self.link_more(pid, &fresh)?;
        self.probed.entry(pid).or_default().extend(keys);
        Ok(n)
    }

    fn link_more(&mut self, pid: u32, target: &AllocatorTarget) -> Result<usize, ProbeError> {
        self.keep_entry_table_for(pid, target)?;
        if let Links::Multi(m) = &self.links {
            // Plain entry and return links, as one at a time: uprobe
            // sessions are the first process's only.
            if let Ok(l) = multi::attach(m.programs(), pid, target, false, None) {
                let n = l.probes;
                self.extra_multi.push(l);
                self.count += n;
                return Ok(n);
            }
        }
        let (entry, ret) = self.programs;
        let links = single::attach(&mut self.ebpf, pid, target, entry, ret)?;
        let n = links.len();
        self.extra.extend(links);
        self.count += n;
        Ok(n)
    }

    /// Before `pid`'s probes of `target` go in: the entry table stays on
    /// only if none of them would sit at an address it gives another cookie
    /// (a child forked without exec, or a library loaded later, agree; a
    /// program with another layout does not).
    /// Failing to turn it off, the process is not linked.
    fn keep_entry_table_for(
        &mut self,
        pid: u32,
        target: &AllocatorTarget,
    ) -> Result<(), ProbeError> {
        let Some(table) = &self.entry_table else {
            return Ok(());
        };
        let agrees = crate::process::maps::MemoryMap::read_regions(pid).is_ok_and(|map| {
            table.agrees_with(&super::entry_table::EntryTable::of(target, &map, |p| {
                p.entry_offset
            }))
        });
        if !agrees {
            super::entry_table::turn_off(&mut self.ebpf)?;
            log::debug!("entry table off: pid {pid} maps its allocator elsewhere");
            self.entry_table = None;
        }
        Ok(())
    }

    /// After an exec of `pid` (which turned the entry table off): when its
    /// probes stayed as they were (`same_probes`) and it is the only process
    /// profiled, the table is filled again for its new image; else it stays
    /// off for the rest of the session.
    pub fn entry_table_after_exec(&mut self, pid: u32, same_probes: bool) {
        if !same_probes || self.pids != [pid] || self.entry_table.is_none() {
            self.entry_table = None;
            return;
        }
        let previous = self.entry_table.take();
        self.entry_table = super::entry_table::EntryTable::fill_for(
            &mut self.ebpf,
            pid,
            &self.target,
            self.entry_offset,
            previous.as_ref(),
        );
    }

    /// The allocator target `pid` was probed with.
    pub fn target_of(&self, pid: u32) -> &AllocatorTarget {
        self.targets.get(&pid).unwrap_or(&self.target)
    }
}
