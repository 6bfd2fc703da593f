//! The session's one output interface.
//!
//! A session produces two kinds of things while it runs:
//!
//! - **ticks** ([`TickUpdate`]): every tick interval, and once more right
//!   before the probes are detached, the cumulative numbers of every call
//!   site, the process totals and the target's memory, plus the call sites
//!   seen for the first time (symbolized once, when first seen);
//! - **events** ([`SessionEvent`]): attached, warnings, unwinder statistics,
//!   stopped.
//!
//! Everything that consumes them implements [`SessionOutput`]: the session's
//! own [`Timeline`] (the basis of the final report), the recording file
//! ([`super::recording::RecordingOutput`]), the terminal status line (in the
//! CLI), and a live publisher or metrics for a web server. The library never
//! prints: whoever implements the trait decides how to show an event.
//!
//! # Threading
//!
//! Outputs are called on the session's capture thread, never on the async
//! runtime's thread, one call at a time, in order. An output must not block
//! for long (the capture thread also drains the kernel's ring buffer): to
//! hand data to a server running on another thread, clone what it needs and
//! publish it cheaply, e.g. with
//!
//! ```
//! use std::sync::{Arc, RwLock};
//! use heapscope::session::output::{SessionOutput, TickUpdate};
//! use heapscope::timeline::Timeline;
//!
//! /// Keeps a copy of the timeline that request handlers read.
//! struct Live(Arc<RwLock<Timeline>>);
//!
//! impl SessionOutput for Live {
//!     fn tick(&mut self, update: &TickUpdate<'_>) {
//!         // A poisoned lock only means a reader panicked; the data is whole.
//!         let mut t = self.0.write().unwrap_or_else(|e| e.into_inner());
//!         t.apply(update);
//!     }
//! }
//! ```
//!
//! or by sending an owned copy ([`TickUpdate::to_owned`]) over a bounded
//! channel with `try_send`, counting what did not fit.
//!
//! # Site ids
//!
//! Every call site gets a [`SiteId`] the first time a tick contains it; ids
//! are dense and increasing (0, 1, 2, ...), in the order the sites appear in
//! [`TickUpdate::new_sites`]. [`Timeline::add_site`] hands out the same ids
//! when fed the new sites in that order, which is what
//! [`Timeline::apply`] does.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::record::Header;
use crate::timeline::{SiteId, SiteInfo, Tick, Timeline};
use crate::unwind::UnwindStop;

use super::StopReason;

/// One tick as the session publishes it: borrowed, so an output copies only
/// what it keeps.
#[derive(Clone, Copy, Debug)]
pub struct TickUpdate<'a> {
    /// Call sites seen for the first time at this tick, with their ids, in
    /// increasing id order. Later ticks refer to them by id only.
    pub new_sites: &'a [(SiteId, SiteInfo)],
    /// Cumulative numbers of every known site (absent: all zero), process
    /// totals, and the target's memory when /proc could be read.
    pub tick: &'a Tick,
    /// The session's whole timeline, this tick included (for profiles of a
    /// window, as the push output makes). Clone or query it here; it is not
    /// `Sync`-shared.
    pub timeline: &'a Timeline,
    /// True for the session's last tick, read after it was told to stop and
    /// before the probes are detached.
    pub last: bool,
}

/// An owned copy of a [`TickUpdate`] without the timeline, to send to
/// another thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedTickUpdate {
    pub new_sites: Vec<(SiteId, SiteInfo)>,
    pub tick: Tick,
    pub last: bool,
}

impl OwnedTickUpdate {
    /// Borrows it back as a [`TickUpdate`] of `timeline`.
    pub fn as_update<'a>(&'a self, timeline: &'a Timeline) -> TickUpdate<'a> {
        TickUpdate {
            new_sites: &self.new_sites,
            tick: &self.tick,
            timeline,
            last: self.last,
        }
    }
}

impl TickUpdate<'_> {
    /// Copies the update (cost: the tick's sites plus the new sites' frames).
    pub fn to_owned(&self) -> OwnedTickUpdate {
        OwnedTickUpdate {
            new_sites: self.new_sites.to_vec(),
            tick: self.tick.clone(),
            last: self.last,
        }
    }
}

/// Something that happened in a session, for outputs to show or record.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// The session has read the target's memory map and starts ticking:
    /// allocations from now on resolve. Carries the recording's header
    /// (pid, process name, start time, tick interval, sample rate).
    Attached { header: Header },
    /// A non-fatal problem (an unreadable map, a detach error, records left
    /// unread). Sent when it happens; a problem that repeats every tick is
    /// sent once.
    Warning(String),
    /// What the DWARF unwinder did over the whole session: sent once, after
    /// the last tick, when at least one stack was unwound.
    UnwindStats {
        /// Stacks unwound.
        stacks: u64,
        /// Of them, given by the memo of repeated stacks (not walked).
        repeated: u64,
        /// Time spent unwinding them (estimated from one sample in 64).
        time: Duration,
        /// Stacks per reason the unwind stopped.
        stops: BTreeMap<UnwindStop, u64>,
        /// How many stack copies were sized by their thread's learned end.
        copies: StackCopies,
    },
    /// A profiled process exec'd another program: the old image's live
    /// blocks were released (sent when the session applies it).
    Exec(super::exec::ExecNote),
    /// A profiled process exited; its blocks were released.
    Exited(super::exec::ExitNote),
    /// Another process is profiled: a child of a profiled one (existing at
    /// attach or forked since), or one more `-p` process.
    Followed(super::tree::Followed),
    /// The overhead guard finished a decision window: its estimate, and
    /// what it did, if anything (`--max-overhead`).
    Overhead(crate::overhead::OverheadStatus),
    /// The session ended (sent last, after the probes were detached).
    Stopped {
        reason: StopReason,
        /// How long detaching every probe took.
        detached_in: Duration,
    },
}

/// Receives every tick and event of a session. All methods have empty
/// defaults, so an output implements only what it uses.
///
/// Called on the session's capture thread (hence `Send`), in order:
/// `event(Attached)`, then `tick` per tick and `event(Warning)` as they
/// come, then the last `tick` (with `last` set), `finish`, the remaining
/// events, and `event(Stopped)` last.
pub trait SessionOutput: Send {
    /// One tick (see [`TickUpdate`]).
    fn tick(&mut self, _update: &TickUpdate<'_>) {}
    /// One event (see [`SessionEvent`]).
    fn event(&mut self, _event: &SessionEvent) {}
    /// The session ends at `end_ms` after its start, right after the last
    /// tick. A problem the output met on the way (a write that failed) is
    /// returned here; the session reports it as a warning.
    fn finish(&mut self, _end_ms: u64) -> Option<String> {
        None
    }
}

/// Several outputs fed in order, as one.
#[derive(Default)]
pub struct Outputs(pub Vec<Box<dyn SessionOutput>>);

impl Outputs {
    /// Adds an output after the others.
    pub fn push(&mut self, output: impl SessionOutput + 'static) {
        self.0.push(Box::new(output));
    }
}

impl SessionOutput for Outputs {
    fn tick(&mut self, update: &TickUpdate<'_>) {
        for o in &mut self.0 {
            o.tick(update);
        }
    }

    fn event(&mut self, event: &SessionEvent) {
        for o in &mut self.0 {
            o.event(event);
        }
    }

    fn finish(&mut self, end_ms: u64) -> Option<String> {
        let problems: Vec<String> = self.0.iter_mut().filter_map(|o| o.finish(end_ms)).collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

impl<T: SessionOutput + ?Sized> SessionOutput for Box<T> {
    fn tick(&mut self, update: &TickUpdate<'_>) {
        (**self).tick(update)
    }
    fn event(&mut self, event: &SessionEvent) {
        (**self).event(event)
    }
    fn finish(&mut self, end_ms: u64) -> Option<String> {
        (**self).finish(end_ms)
    }
}

impl Timeline {
    /// Adds the update's new sites and pushes its tick: a timeline fed every
    /// update of a session equals the session's own.
    pub fn apply(&mut self, update: &TickUpdate<'_>) {
        for (id, info) in update.new_sites {
            let got = self.add_site(info.clone());
            debug_assert_eq!(got, *id, "site ids are handed out in order");
        }
        self.push(update.tick.clone());
    }
}

impl SessionOutput for Timeline {
    fn tick(&mut self, update: &TickUpdate<'_>) {
        self.apply(update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, SiteStats};
    use std::sync::{Arc, Mutex};

    /// Counts what it receives, shared with the test.
    #[derive(Clone, Default)]
    struct Probe(Arc<Mutex<Vec<String>>>);

    impl SessionOutput for Probe {
        fn tick(&mut self, u: &TickUpdate<'_>) {
            let mut log = self.0.lock().unwrap();
            log.push(format!("tick {} new {}", u.tick.t_ms, u.new_sites.len()));
        }
        fn event(&mut self, e: &SessionEvent) {
            let mut log = self.0.lock().unwrap();
            log.push(format!("{e:?}"));
        }
        fn finish(&mut self, end_ms: u64) -> Option<String> {
            Some(format!("finished at {end_ms}"))
        }
    }

    fn site(name: &str) -> SiteInfo {
        SiteInfo {
            pid: 0,
            frames: vec![Frame::function(name, "a.out")].into(),
            api: "malloc",
        }
    }

    #[test]
    fn fans_out_in_order_and_a_fed_timeline_equals_the_source() {
        let probe = Probe::default();
        let mut outs = Outputs::default();
        outs.push(probe.clone());
        outs.push(probe.clone());
        outs.push(Timeline::default());

        let stats = |b| SiteStats {
            live_bytes: b,
            live_count: 1,
            alloc_bytes: b,
            alloc_count: 1,
            ..Default::default()
        };
        let new = [(SiteId(0), site("a")), (SiteId(1), site("b"))];
        let t1 = Tick {
            t_ms: 1000,
            sites: vec![(SiteId(0), stats(10)), (SiteId(1), stats(20))],
            ..Tick::default()
        };
        let t2 = Tick {
            t_ms: 2000,
            sites: vec![(SiteId(1), stats(30))],
            ..Tick::default()
        };
        let mut expected = Timeline::default();
        let source = Timeline::default();
        for (new_sites, tick, last) in [(&new[..], &t1, false), (&[][..], &t2, true)] {
            let u = TickUpdate {
                new_sites,
                tick,
                timeline: &source,
                last,
            };
            outs.tick(&u);
            expected.apply(&u.to_owned().as_update(&source));
        }
        outs.event(&SessionEvent::Warning("w".into()));
        assert_eq!(
            outs.finish(2500).as_deref(),
            Some("finished at 2500; finished at 2500")
        );
        let log = probe.0.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                "tick 1000 new 2",
                "tick 1000 new 2",
                "tick 2000 new 0",
                "tick 2000 new 0",
                "Warning(\"w\")",
                "Warning(\"w\")"
            ]
        );
        assert_eq!(expected.sites().len(), 2);
        assert_eq!(expected.len(), 2);
    }
}

/// Stack copies sized by their thread's learned stack end (see
/// `unwind::extent`) rather than the full `--stack-size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCopies {
    /// Samples that copied only up to their thread's learned end.
    pub learned: u64,
    /// Bytes those samples copied.
    pub learned_bytes: u64,
    /// Samples cut short by an end that no longer held (a reused thread id);
    /// their stacks stop early, the thread is relearned.
    pub cut_short: u64,
}
