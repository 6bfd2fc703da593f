//! The overhead guard's decisions over a session (`--max-overhead`), as the
//! timeline, recordings, the report and `/metrics` see them: the sampling
//! rate in force after each decision window and the window's estimate.
//! Bounded: the rate changes are kept up to [`MAX_GUARD_CHANGES`] (more are
//! counted), and only the newest window besides.

/// Rate changes (and floor notes) kept; more are counted, not stored.
pub const MAX_GUARD_CHANGES: usize = 1024;

/// One decision window of the guard. Percentages are kept in hundredths so
/// that timelines stay comparable (`Eq`) and recordings hold integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardPoint {
    /// Session time of the decision, in ms.
    pub t_ms: u64,
    /// The budget (`--max-overhead`), hundredths of a percent of the
    /// target's CPU.
    pub budget_centi: u64,
    /// The probes' estimated share of the target's CPU in the window,
    /// hundredths of a percent.
    pub percent_centi: u64,
    /// The sampling rate before the decision (0: every allocation).
    pub from: u64,
    /// The sampling rate in force after it.
    pub rate: u64,
    /// The guard said in this window that the traps alone exceed the
    /// budget (sampling less cannot lower them).
    pub floor: bool,
}

impl GuardPoint {
    /// Hundredths of a percent, from a percentage.
    pub fn centi(percent: f64) -> u64 {
        (percent * 100.0).round().max(0.0) as u64
    }

    /// The estimate, in percent.
    pub fn percent(&self) -> f64 {
        self.percent_centi as f64 / 100.0
    }

    /// The budget, in percent.
    pub fn budget(&self) -> f64 {
        self.budget_centi as f64 / 100.0
    }

    /// True when the guard changed the rate or said the floor here.
    pub fn is_change(&self) -> bool {
        self.from != self.rate || self.floor
    }
}

/// What the guard did over a session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardLog {
    /// Windows in which the rate changed or the floor was said, in order.
    pub changes: Vec<GuardPoint>,
    /// Such windows beyond [`MAX_GUARD_CHANGES`].
    pub changes_dropped: u64,
    /// The newest window.
    pub last: Option<GuardPoint>,
    /// Decision windows seen.
    pub windows: u64,
}

impl GuardLog {
    /// Takes one decision window.
    pub fn push(&mut self, p: GuardPoint) {
        if p.is_change() {
            if self.changes.len() < MAX_GUARD_CHANGES {
                self.changes.push(p);
            } else {
                self.changes_dropped += 1;
            }
        }
        self.last = Some(p);
        self.windows += 1;
    }

    /// The rate in force now (`start` when no window was seen yet).
    pub fn rate(&self, start: u64) -> u64 {
        self.last.map_or(start, |p| p.rate)
    }

    /// The rate in force at `t_ms` (`start` before the first change).
    pub fn rate_at(&self, t_ms: u64, start: u64) -> u64 {
        self.changes
            .iter()
            .take_while(|p| p.t_ms <= t_ms)
            .filter(|p| p.from != p.rate)
            .last()
            .map_or(start, |p| p.rate)
    }

    /// When per-site numbers stopped being taken at the start's rate: the
    /// first change of rate.
    pub fn first_change_ms(&self) -> Option<u64> {
        self.changes
            .iter()
            .find(|p| p.from != p.rate)
            .map(|p| p.t_ms)
    }

    /// The rate that describes a session's per-site numbers, `start` being
    /// the rate it began with: the rate at the end, except that a session
    /// back at every allocation after sampling is described by the coarsest
    /// rate it sampled at (as `overhead::Guard::describing_rate` does live).
    pub fn describing_rate(&self, start: u64) -> u64 {
        match (self.rate(start), self.coarsest()) {
            (0, Some(c)) => c,
            (r, _) => r,
        }
    }

    /// The coarsest rate the guard sampled at (`None`: it never changed it).
    pub fn coarsest(&self) -> Option<u64> {
        self.changes
            .iter()
            .filter(|p| p.from != p.rate)
            .map(|p| p.rate.max(p.from))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t_ms: u64, from: u64, rate: u64) -> GuardPoint {
        GuardPoint {
            t_ms,
            budget_centi: 100,
            percent_centi: 50,
            from,
            rate,
            floor: false,
        }
    }

    #[test]
    fn keeps_changes_and_the_newest_window() {
        let mut g = GuardLog::default();
        g.push(p(1000, 0, 0));
        g.push(p(2000, 0, 65536));
        g.push(p(3000, 65536, 65536));
        g.push(p(9000, 65536, 0));
        assert_eq!(g.windows, 4);
        assert_eq!(g.changes.len(), 2);
        assert_eq!(g.last.map(|l| l.t_ms), Some(9000));
        assert_eq!(g.rate(0), 0);
        assert_eq!(g.rate_at(1500, 0), 0);
        assert_eq!(g.rate_at(2500, 0), 65536);
        assert_eq!(g.rate_at(9000, 0), 0);
        assert_eq!(g.first_change_ms(), Some(2000));
        assert_eq!(g.coarsest(), Some(65536));
        assert_eq!(g.describing_rate(0), 65536, "not exact after sampling");
        assert_eq!(GuardLog::default().describing_rate(0), 0);
        assert_eq!(GuardPoint::centi(1.234), 123);
        assert_eq!(p(0, 0, 0).percent(), 0.5);
    }

    #[test]
    fn changes_are_bounded_and_counted() {
        let mut g = GuardLog::default();
        for i in 0..(MAX_GUARD_CHANGES as u64 + 10) {
            g.push(p(i, i % 2, (i + 1) % 2));
        }
        assert_eq!(g.changes.len(), MAX_GUARD_CHANGES);
        assert_eq!(g.changes_dropped, 10);
    }
}
