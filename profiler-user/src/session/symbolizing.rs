//! The symbolizer thread: a tick's new call sites are symbolized apart from
//! the capture thread. A cold module costs seconds of DWARF parsing (a large
//! debug file read for the first time); done on the capture thread, the ring
//! buffer was not drained meanwhile and records were lost (python3.11 under
//! `--exact`: 107k of 670k in the first 3 s). Here the capture thread reads
//! each new site's return addresses (quick), hands them over with a copy of
//! the process's memory map, and drains on; the tick goes out once its sites
//! come back, in order.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::aggregate::{RawSnapshot, StackRef};
use crate::process::maps::MemoryMap;
use crate::profile::Site;
use crate::symbolize::{Symbolizer, SymbolizerOptions};

use super::resolve::Resolver;

/// The symbolizer thread's nice value.
const SYMBOLIZER_NICE: i32 = 10;

/// One process's new sites of a tick, with what symbolizing them needs.
pub(super) struct Group {
    pub pid: u32,
    /// The process's memory map when the tick was taken.
    pub maps: MemoryMap,
    pub sites: RawSnapshot,
    pub ips_by_ref: HashMap<StackRef, Vec<u64>>,
}

/// The new sites of one tick, symbolized, in the order of its groups.
pub(super) type Done = Vec<Site>;

/// The thread and the two ends of its queue (jobs are done in order).
pub(super) struct SymbolizerThread {
    jobs: Option<Sender<Vec<Group>>>,
    done: Receiver<Done>,
    handle: Option<JoinHandle<()>>,
}

impl SymbolizerThread {
    /// Starts the thread; the symbolizer is built on it (its caches are not
    /// shared between threads).
    pub fn start() -> std::io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Vec<Group>>();
        let (done_tx, done) = mpsc::channel();
        // Started with the capture thread's priority, so it lowers itself
        // at once: a thread born at the normal policy can wait long for its
        // first instruction under a saturating target, and lowering itself
        // after the session raised every thread for the exit starved that
        // exit (`process::priority`).
        let handle = crate::process::priority::inheriting(|| {
            std::thread::Builder::new()
                .name("heapscope-symbol".into())
                .spawn(move || {
                    // Below the capture thread: a tick may wait, records cannot
                    // (the ring holds ~30 ms of deep stacks at 150k samples/s).
                    crate::process::priority::lower_this_thread(SYMBOLIZER_NICE);
                    // Debug files fetched by debuginfod clients (heapscope's or
                    // elfutils' `debuginfod-find`) are read from their cache;
                    // nothing is fetched here.
                    let mut symbolizer = Symbolizer::with_options(SymbolizerOptions {
                        debuginfod_caches: vec![crate::debuginfod::default_cache_dir()],
                        ..SymbolizerOptions::default()
                    });
                    for groups in job_rx {
                        let mut sites = Vec::new();
                        for g in groups {
                            let mut resolver = Resolver::new(g.pid, &g.maps, &mut symbolizer);
                            sites.extend(resolver.sites_from(&g.sites, &g.ips_by_ref));
                        }
                        if done_tx.send(sites).is_err() {
                            return;
                        }
                    }
                })
        })?;
        Ok(SymbolizerThread {
            jobs: Some(jobs),
            done,
            handle: Some(handle),
        })
    }

    /// Queues the new sites of a tick; `false` when the thread is gone.
    pub fn submit(&self, groups: Vec<Group>) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(groups).is_ok())
    }

    /// The oldest job's sites if done (waiting up to `wait`); `Err` when the
    /// thread is gone (it panicked).
    pub fn take(&self, wait: Duration) -> Result<Option<Done>, ()> {
        match self.done.recv_timeout(wait) {
            Ok(d) => Ok(Some(d)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }
}

impl Drop for SymbolizerThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.jobs = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::SiteRef;
    use crate::profile::SiteStats;

    /// A group of one site per stack, against a map with no mappings.
    fn group(pid: u32, stacks: &[(i32, &[u64])]) -> Group {
        let mut sites = RawSnapshot::default();
        let mut ips_by_ref = HashMap::new();
        for (id, ips) in stacks {
            let stack = StackRef::Kernel(*id);
            let key = SiteRef {
                pid,
                stack,
                kind: 0,
            };
            sites.sites.insert(key, SiteStats::default());
            ips_by_ref.insert(stack, ips.to_vec());
        }
        Group {
            pid,
            maps: MemoryMap::default(),
            sites,
            ips_by_ref,
        }
    }

    #[test]
    fn jobs_come_back_in_order_with_a_site_each() {
        let t = SymbolizerThread::start().unwrap();
        assert!(t.submit(vec![group(7, &[(1, &[0x10, 0x20]), (2, &[0x30])])]));
        assert!(t.submit(vec![]));
        assert!(t.submit(vec![group(8, &[(3, &[0x40])]), group(9, &[(4, &[])])]));
        let wait = Duration::from_secs(60);
        let first = t.take(wait).unwrap().unwrap();
        assert_eq!(first.iter().map(|s| s.pid).collect::<Vec<_>>(), [7, 7]);
        // Unmapped addresses become one unknown frame each, root first.
        assert_eq!(first[0].frames.len(), 2);
        assert!(t.take(wait).unwrap().unwrap().is_empty());
        let third = t.take(wait).unwrap().unwrap();
        assert_eq!(third.iter().map(|s| s.pid).collect::<Vec<_>>(), [8, 9]);
        assert!(third[1].frames.is_empty());
        assert!(t.take(Duration::ZERO).unwrap().is_none());
    }
}
