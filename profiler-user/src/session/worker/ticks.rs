//! Ticks: a snapshot's new call sites go to the symbolizer thread, and the
//! tick goes out, in order, once they come back (see `symbolizing`).

use std::time::Duration;

use crate::aggregate::{RawSnapshot, SiteRef};
use crate::process::memory;
use crate::timeline::Tick;

use super::super::output::{SessionEvent, SessionOutput as _, TickUpdate};
use super::super::symbolizing::Group;
use super::super::{resolve, SessionError};
use super::Worker;

/// Most ticks waiting for their new sites' symbols (each holds a snapshot);
/// a tick due beyond them is not taken, and counted.
pub(super) const MAX_PENDING_TICKS: usize = 8;

/// A tick taken whose new sites are being symbolized: it goes out, in
/// order, once they are back.
pub(super) struct PendingTick {
    /// Everything but the per-site numbers, which need the sites' ids.
    tick: Tick,
    snap: RawSnapshot,
    last: bool,
    /// The new sites handed to the symbolizer thread, in its order.
    refs: Option<Vec<SiteRef>>,
}

impl Worker {
    /// Takes a tick: the guard's window, the sites of `snap` seen for the
    /// first time handed to the symbolizer thread, the memory read now. It
    /// goes out (see [`Worker::finish_ticks`]) once its sites are symbolized.
    pub(super) fn tick(
        &mut self,
        t_ms: u64,
        snap: RawSnapshot,
        last: bool,
    ) -> Result<(), SessionError> {
        // The guard first: its CPU time and capture count are read now, next
        // to the snapshot's counters.
        if let Some(g) = &mut self.guard {
            if let Some((status, error)) = g.tick(t_ms, &snap.totals, &mut self.probes) {
                // In the timeline before the tick goes out: the recording
                // and the server take the guard's newest window from it.
                self.timeline
                    .guard_window(super::super::guard::SessionGuard::point(t_ms, &status));
                self.outputs.event(&SessionEvent::Overhead(status));
                if let Some(e) = error {
                    self.warn(e);
                }
            }
        }
        if !last && self.pending.len() >= MAX_PENDING_TICKS {
            self.ticks_skipped += 1;
            return Ok(());
        }
        let mut new = self.ids.new_sites(&snap);
        new.sites.retain(|k, _| !self.in_flight.contains(k));
        let refs = if new.sites.is_empty() {
            None
        } else {
            // Each process's stacks against its own memory map (ASLR gives
            // unrelated processes other layouts); sites are ordered by pid,
            // so the groups keep the order of `new.sites`.
            let mut groups = Vec::new();
            let mut pids: Vec<u32> = new.sites.keys().map(|k| k.pid).collect();
            pids.dedup();
            for pid in pids {
                let group = RawSnapshot {
                    sites: new
                        .sites
                        .iter()
                        .filter(|(k, _)| k.pid == pid)
                        .map(|(k, v)| (*k, v.clone()))
                        .collect(),
                    totals: new.totals.clone(),
                };
                let maps = match pid == self.cap.pid {
                    true => &self.cap.maps,
                    false => self.cap.others.get(pid, false).unwrap_or(&self.cap.maps),
                };
                let raw = resolve::raw_stacks(maps, &group, &self.probes.ebpf, &self.cap.samples)?;
                for (module, n) in raw.fp_cut {
                    *self.fp_cut.entry(module).or_insert(0) += n;
                }
                self.missing_stacks += raw.missing_stacks;
                groups.push(Group {
                    pid,
                    maps: maps.clone(),
                    sites: group,
                    ips_by_ref: raw.ips_by_ref,
                });
            }
            // Their maps went with the groups.
            for pid in std::mem::take(&mut self.exited) {
                self.cap.others.forget(pid);
            }
            if !self.symbolizing.submit(groups) {
                return Err(self.symbolizer_gone());
            }
            let refs: Vec<SiteRef> = new.sites.keys().copied().collect();
            self.in_flight.extend(refs.iter().copied());
            Some(refs)
        };
        let (mem, split) = match memory::sample_and_footprint(self.cap.pid, self.glibc) {
            Ok((m, fp)) => (Some(m), fp),
            Err(_) => (None, None),
        };
        // Without placed blocks an arena's live bytes are unknown, not 0.
        let split = split.filter(|_| self.cap.glibc);
        let arenas = split.map_or_else(Vec::new, |fp| {
            super::super::arenas::arena_samples(&fp, &self.cap.samples.live_by_home(self.cap.pid))
        });
        let tick = Tick {
            t_ms,
            sites: Vec::new(),
            totals: snap.totals.clone(),
            mem,
            arenas,
        };
        self.pending.push_back(PendingTick {
            tick,
            snap,
            last,
            refs,
        });
        self.finish_ticks(false)
    }

    fn symbolizer_gone(&self) -> SessionError {
        SessionError::Thread {
            pid: self.cap.pid,
            source: std::io::Error::other("the symbolizer thread ended"),
        }
    }

    /// Sends the waiting ticks whose sites are symbolized, oldest first;
    /// with `wait`, all of them (the end of the session).
    pub(super) fn finish_ticks(&mut self, wait: bool) -> Result<(), SessionError> {
        while let Some(waits) = self.pending.front().map(|p| p.refs.is_some()) {
            let sites = if waits {
                let got = loop {
                    let poll = if wait {
                        Duration::from_millis(100)
                    } else {
                        Duration::ZERO
                    };
                    match self.symbolizing.take(poll) {
                        Ok(Some(sites)) => break sites,
                        Ok(None) if wait => continue,
                        Ok(None) => return Ok(()),
                        Err(()) => return Err(self.symbolizer_gone()),
                    }
                };
                Some(got)
            } else {
                None
            };
            let Some(mut p) = self.pending.pop_front() else {
                break;
            };
            let new_sites = match (p.refs.take(), sites) {
                (Some(refs), Some(sites)) => {
                    for r in &refs {
                        self.in_flight.remove(r);
                    }
                    self.ids.add(refs, sites)
                }
                _ => Vec::new(),
            };
            p.tick.sites = self.ids.stats(&p.snap);
            for (_, info) in &new_sites {
                self.timeline.add_site(info.clone());
            }
            self.timeline.push(p.tick.clone());
            // Memory freed since the last tick (queue chunks after a burst,
            // symbolization's temporaries) goes back to the system, not kept
            // in glibc's arenas: it counts against heapscope's bound until then.
            crate::selfmem::trim();
            // After the tick's snapshot and symbolization, its largest moment.
            let peak = self.cap.samples.take_peak() as u64;
            self.memory
                .observe_self(p.tick.t_ms, self.cap.samples.live_samples() as u64, peak);
            self.outputs.tick(&TickUpdate {
                new_sites: &new_sites,
                tick: &p.tick,
                timeline: &self.timeline,
                last: p.last,
            });
        }
        Ok(())
    }
}
