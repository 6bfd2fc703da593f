//! The session's process set over time: following children and cgroup
//! members as they appear, exits and execs, and each process's allocator
//! layout for the probes.

use super::*;

impl Worker {
    /// Attaches probes to one more process (a child of `parent`, or with
    /// `target` one that joined the cgroup) and says so.
    pub(super) fn follow(
        &mut self,
        pid: u32,
        parent: u32,
        forked_ns: Option<u64>,
        target: Option<&crate::probes::target::AllocatorTarget>,
    ) {
        let comm = crate::session::capture::read_comm(pid).unwrap_or_default();
        let added = match target {
            Some(t) => self.probes.add_process(pid, Some(t)),
            None => self.probes.add_child(pid, parent),
        };
        match added {
            Ok(0) => {}
            Ok(_) => {
                self.note_layout_of(pid, true);
                let probes_after_ms =
                    forked_ns.map_or(0, |t| ages::monotonic_ns().saturating_sub(t) / 1_000_000);
                self.comms.insert(pid, comm.clone());
                self.timeline
                    .set_process(crate::session::tree::process_info(pid, parent, &comm));
                let f = crate::session::tree::Followed {
                    pid,
                    parent,
                    comm,
                    forked: forked_ns.is_some(),
                    probes_after_ms,
                    joined: target.is_some(),
                };
                self.outputs.event(&SessionEvent::Followed(f));
            }
            // Gone already (a short-lived child) or refused: its allocations
            // are not seen, and the user is told.
            Err(e) if target.is_some() => self.warn(format!(
                "pid {pid} ({comm}) joined the cgroup but could not be followed: {e}; \
                 its allocations are not counted"
            )),
            // A short-lived child (a shell's, a build's): gone before its
            // probes went in. Said once, then counted (a shell script forks
            // dozens).
            Err(_) if !crate::process::procfs::alive(pid) => {
                self.gone_before_probes += 1;
                if self.gone_before_probes == 1 {
                    self.warn(format!(
                        "pid {pid}, child of pid {parent}, exited before its probes went in: \
                         its allocations are not counted (others like it are counted at the end)"
                    ));
                }
            }
            Err(e) => self.warn(format!(
                "pid {pid} ({comm}), child of pid {parent}, could not be followed: {e}; \
                 its allocations are not counted"
            )),
        }
    }

    /// Profiles the processes found in the cgroup that have no probes yet
    /// (moved in, or forked before their parent was followed); one that
    /// cannot be profiled is said once and not tried again.
    pub(super) fn rescan_cgroup(&mut self) {
        let Some(watch) = self.cgroup.clone() else {
            return;
        };
        let members = match crate::process::cgroup::procs(&watch.dir) {
            Ok(m) => m,
            Err(e) => {
                self.warn(format!("rescanning the cgroup: {e}"));
                return;
            }
        };
        for pid in members {
            if self.probes.pids().contains(&pid) || !self.refused.insert(pid) {
                continue;
            }
            match crate::probes::target::discover(pid, watch.skip_prologue, &watch.custom) {
                Ok(t) => {
                    self.refused.remove(&pid);
                    self.follow(pid, 0, None, Some(&t));
                }
                Err(e) => {
                    let comm = crate::session::capture::read_comm(pid).unwrap_or_default();
                    self.warn(format!(
                        "pid {pid} ({comm}) is in the cgroup but cannot be profiled: {e}"
                    ));
                }
            }
        }
    }

    /// Sends the exits applied since the last call.
    pub(super) fn exits(&mut self) {
        for mut n in std::mem::take(&mut self.cap.exit_notes) {
            n.comm = self.comms.get(&n.pid).cloned().unwrap_or_default();
            if let Err(e) = self.probes.forget_layout(n.pid) {
                self.warn(format!("forgetting the layout of pid {}: {e}", n.pid));
            }
            self.exited.push(n.pid);
            self.outputs.event(&SessionEvent::Exited(n));
        }
    }

    /// Follows the children forked since the last call.
    pub(super) fn follow_forks(&mut self) {
        for ev in std::mem::take(&mut self.cap.forks) {
            self.follow(ev.tgid, ev.parent, Some(ev.ts_ns), None);
        }
    }

    /// Sends the execs applied; the process is named after both programs.
    pub(super) fn execs(&mut self, notes: Vec<crate::session::exec::ExecNote>) {
        for mut n in notes {
            if n.old_comm.is_empty() {
                n.old_comm = self.comms.get(&n.pid).cloned().unwrap_or_default();
            }
            // The new program's allocator: another one (a static binary,
            // another library) is probed now; the old probes still fire on
            // the files it maps too (libc), so those are not probed again.
            let new_target = self.reprobe.as_ref().and_then(|spec| {
                crate::probes::target::discover(n.pid, spec.skip_prologue, &spec.custom).ok()
            });
            let changed = new_target.as_ref().filter(|t| {
                let old = self.probes.target_of(n.pid);
                t.modules != old.modules || t.allocator != old.allocator
            });
            if n.from_thread.is_some() {
                // The old probes died with the old main thread: all again.
                let t = changed.cloned();
                n.reattached = Some(
                    self.probes
                        .reattach(n.pid, t, false)
                        .map_err(|e| e.to_string()),
                );
            } else if let Some(t) = changed.cloned() {
                let what = t.headline();
                let r = self.probes.reattach(n.pid, Some(t), true);
                n.new_allocator = Some((what, r.map_err(|e| e.to_string())));
            }
            // The exec turned the entry table off; with the same probes
            // (`heapscope run`'s command, a program re-exec'ing itself) it
            // can be filled for the new image.
            let same_probes = n.from_thread.is_none() && changed.is_none();
            self.probes.entry_table_after_exec(n.pid, same_probes);
            // The new program maps its allocator elsewhere (its map was
            // read again when the exec was applied).
            self.note_layout_of(n.pid, false);
            self.comms.insert(n.pid, n.new_comm.clone());
            if let Some(p) = self.timeline.processes().iter().find(|p| p.pid == n.pid) {
                let mut p = p.clone();
                p.comm = format!("{} → {}", p.comm, n.new_comm);
                let fresh = crate::session::tree::process_info(n.pid, 0, "").cmdline;
                if !fresh.is_empty() {
                    p.cmdline = fresh;
                }
                self.timeline.set_process(p);
            }
            self.outputs.event(&SessionEvent::Exec(n));
        }
    }

    /// Drains, applies execs and reads one raw snapshot.
    pub(super) fn snapshot(&mut self, t_ms: u64) -> Result<RawSnapshot, SessionError> {
        let (snap, notes) = self.cap.snapshot(&mut self.probes, t_ms)?;
        self.execs(notes);
        self.exits();
        self.follow_forks();
        Ok(snap)
    }

    /// Tells the probes every profiled process's allocator layout: the
    /// target's from its map (re-read each tick), another process's read
    /// again while its trampoline page is not known yet.
    pub(super) fn note_layout(&mut self) {
        for pid in self.probes.pids().to_vec() {
            let fresh = !self.probes.layout_complete(pid);
            self.note_layout_of(pid, fresh);
        }
    }

    /// Reads the map of a process whose probes ran before its layout was
    /// complete (its trampoline page appears at its first probe hit): its
    /// calls are judged without it until then. At most every
    /// [`WANTED_LAYOUT_EVERY`], so a process whose page never shows costs
    /// little.
    pub(super) fn wanted_layout(&mut self) {
        match self.probes.take_wanted_layout() {
            Ok(Some(pid)) => {
                let now = Instant::now();
                if self
                    .layout_read
                    .is_some_and(|t| now.duration_since(t) < WANTED_LAYOUT_EVERY)
                {
                    return;
                }
                self.layout_read = Some(now);
                if pid == self.cap.pid {
                    self.cap.refresh();
                }
                self.note_layout_of(pid, true);
            }
            Ok(None) => {}
            Err(e) => self.warn(format!("reading the probes' layout requests: {e}")),
        }
    }

    /// Tells the probes the allocator layout of `pid` (its map read now when
    /// `fresh`: it was just attached, or exec'd).
    pub(super) fn note_layout_of(&mut self, pid: u32, fresh: bool) {
        let maps = if pid == self.cap.pid {
            Some(&self.cap.maps)
        } else {
            self.cap.others.get(pid, fresh)
        };
        let Some(maps) = maps else {
            // Gone already, or its map unreadable: its calls are counted
            // as judged without a layout.
            return;
        };
        let msg = match self.probes.note_layout(pid, maps) {
            Ok(0) => return,
            Ok(dropped) => format!(
                "{dropped} of the allocator's code ranges of pid {pid} did not fit the \
                 probes' table: allocator-internal calls from them may be counted as the \
                 program's"
            ),
            Err(e) => format!("telling the probes the layout of pid {pid}: {e}"),
        };
        self.warn(msg);
    }
}

/// Longest a command held at its exit waits for the ring to be applied.
const EXIT_HOLD_DRAIN: Duration = Duration::from_millis(500);

impl Worker {
    /// A command held at `_exit` (`heapscope run`): its memory map is read
    /// now, the last moment it exists, and what the ring holds is applied
    /// while its modules can still be opened through it; then it goes on.
    pub(super) fn release_held_exit(&mut self) {
        let Some(tgid) = self.probes.held_at_exit() else {
            return;
        };
        if tgid == self.cap.pid {
            self.cap.refresh();
            self.note_layout();
        }
        let deadline = Instant::now() + EXIT_HOLD_DRAIN;
        while Instant::now() < deadline && self.cap.drain(1) {}
        self.probes.release_exit(tgid);
    }
}
