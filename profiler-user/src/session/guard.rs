//! The overhead guard in a session: counter deltas and the target's CPU
//! time per tick go into `overhead::Guard`; a new sampling rate goes to the
//! probes. Every decision window is reported (the status line shows the
//! estimate), every action once.

use std::time::Duration;

use profiler_common::counters::CounterId;
use profiler_common::{counter, StackMode};

use crate::overhead::{self, Activity, Costs, Guard, OverheadStatus, OverheadSummary};
use crate::probes::Probes;
use crate::profile::Totals;

/// The guard's state for one session, and what it needs from the last tick.
pub(super) struct SessionGuard {
    pid: u32,
    guard: Guard,
    /// Calls with a return probe, entry-only calls, stack captures and the
    /// target's CPU time, as of the last tick.
    prev: Option<(u64, u64, u64, Duration)>,
}

fn calls_of(t: &Totals, sampled: u64) -> (u64, u64, u64) {
    let g = |id| t.get(id);
    let calls = g(CounterId::Allocs)
        + g(CounterId::AllocFailed)
        + g(CounterId::Nested)
        + g(CounterId::AllocatorCalls);
    // Unsampled calls under uprobe sessions trap once, at their entry (their
    // map work is costed as a whole call's: an overestimate).
    let entry_only = g(CounterId::Frees)
        + g(CounterId::FreesUnknown)
        + g(CounterId::AllocatorFrees)
        + g(CounterId::UntrackedAllocs);
    (calls, entry_only, sampled)
}

impl SessionGuard {
    pub(super) fn new(pid: u32, budget: f64, mode: StackMode, rate: u64) -> SessionGuard {
        SessionGuard {
            pid,
            guard: Guard::new(budget, Costs::calibrated(mode), rate),
            prev: None,
        }
    }

    /// Takes one tick's totals; returns the status when a window completed.
    /// A new rate is written to the probes; failing to is an error the
    /// caller reports (the old rate stays in force).
    pub(super) fn tick(
        &mut self,
        t_ms: u64,
        totals: &Totals,
        probes: &mut Probes,
    ) -> Option<(OverheadStatus, Option<String>)> {
        let sampled = crate::aggregate::read_counters(&probes.ebpf)
            .map(|c| c[counter::SAMPLED as usize])
            .unwrap_or(0);
        let cpu = overhead::target_cpu(self.pid).ok()?;
        let (calls, entry_only, captures) = calls_of(totals, sampled);
        let prev = self.prev.replace((calls, entry_only, captures, cpu));
        let (c0, e0, s0, cpu0) = prev?;
        let a = Activity {
            calls: calls.saturating_sub(c0),
            entry_only: entry_only.saturating_sub(e0),
            captures: captures.saturating_sub(s0),
            target_cpu: cpu.saturating_sub(cpu0),
        };
        let before = self.guard.windows;
        let action = self.guard.observe(t_ms, &a);
        if self.guard.windows == before {
            return None;
        }
        let mut error = None;
        match &action {
            Some(overhead::Action::SampledLess { to, .. }) => {
                if let Err(e) = probes.set_sample_rate(*to) {
                    error = Some(format!("--max-overhead could not lower the sampling: {e}"));
                }
            }
            Some(overhead::Action::SampledMore { to, .. }) => {
                // 0 goes back to the rate the probes were loaded with: the
                // user's (every allocation with --exact).
                if let Err(e) = probes.set_sample_rate(*to) {
                    error = Some(format!("--max-overhead could not raise the sampling: {e}"));
                }
            }
            _ => {}
        }
        let status = OverheadStatus {
            percent: self.guard.last.map_or(0.0, |e| e.percent),
            budget: self.guard.budget_percent(),
            rate: self.guard.rate,
            action,
        };
        Some((status, error))
    }

    /// A decision window as the timeline and recordings keep it.
    pub(super) fn point(t_ms: u64, status: &OverheadStatus) -> crate::timeline::GuardPoint {
        let from = match &status.action {
            Some(overhead::Action::SampledLess { from, .. })
            | Some(overhead::Action::SampledMore { from, .. }) => *from,
            _ => status.rate,
        };
        crate::timeline::GuardPoint {
            t_ms,
            budget_centi: crate::timeline::GuardPoint::centi(status.budget),
            percent_centi: crate::timeline::GuardPoint::centi(status.percent),
            from,
            rate: status.rate,
            floor: matches!(status.action, Some(overhead::Action::Floor { .. })),
        }
    }

    /// What the guard did, for the report.
    pub(super) fn summary(&self, start_rate: u64) -> OverheadSummary {
        OverheadSummary {
            budget: self.guard.budget_percent(),
            last_percent: self.guard.last.map(|e| e.percent),
            start_rate,
            end_rate: self.guard.rate,
            actions: self.guard.actions.clone(),
        }
    }

    /// The sampling rate that describes the per-site numbers (see
    /// `Guard::describing_rate`).
    pub(super) fn rate(&self) -> u64 {
        self.guard.describing_rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_seen_at_entry_only_count_one_hit_each() {
        let t = Totals {
            allocs: 10,
            frees: 4,
            frees_unknown: 3,
            untracked_allocs: 50,
            ..Totals::default()
        };
        // 10 calls with both probes; 4 + 3 frees and 50 unsampled calls
        // under uprobe sessions with their entry alone.
        assert_eq!(calls_of(&t, 2), (10, 57, 2));
    }
}
