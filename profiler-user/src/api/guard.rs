//! The overhead guard's windows (`--max-overhead`) as JSON: the budget, the
//! rate now, every change of rate, and from when per-site numbers are
//! sampled estimates.

use serde::Serialize;

use crate::timeline::{GuardLog, GuardPoint};

/// What the guard did over the session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuardJson {
    /// `--max-overhead`, percent of the target's CPU.
    pub budget_percent: f64,
    /// The probes' estimated share of the target's CPU in the last window.
    pub estimated_percent: f64,
    /// The rate the session started at (mean bytes between samples; 0:
    /// every allocation).
    pub start_rate: u64,
    /// The rate in force at the end.
    pub current_rate: u64,
    /// Decision windows.
    pub windows: u64,
    /// Every change of rate and floor note, in order.
    pub changes: Vec<GuardChangeJson>,
    /// Changes beyond those kept.
    pub changes_dropped: u64,
    /// Per-site numbers from this session time on were taken at a rate the
    /// guard chose (estimates, whatever the rate later); absent: never.
    pub estimated_from_ms: Option<u64>,
    /// The coarsest rate the guard sampled at.
    pub coarsest_rate: Option<u64>,
}

/// One change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GuardChangeJson {
    pub t_ms: u64,
    /// `sampled_less`, `sampled_more` or `floor` (the traps alone exceed
    /// the budget; the rate stays).
    pub kind: &'static str,
    pub estimated_percent: f64,
    pub from_rate: u64,
    pub to_rate: u64,
}

fn kind(p: &GuardPoint) -> &'static str {
    if p.from == p.rate {
        "floor"
    } else if p.from == 0 || (p.rate != 0 && p.rate > p.from) {
        "sampled_less"
    } else {
        "sampled_more"
    }
}

/// The guard's JSON, when it completed a window.
pub fn guard_json(log: &GuardLog) -> Option<GuardJson> {
    let last = log.last?;
    let start_rate = log
        .changes
        .iter()
        .find(|p| p.from != p.rate)
        .map_or(last.rate, |p| p.from);
    Some(GuardJson {
        budget_percent: last.budget(),
        estimated_percent: last.percent(),
        start_rate,
        current_rate: last.rate,
        windows: log.windows,
        changes: log
            .changes
            .iter()
            .map(|p| GuardChangeJson {
                t_ms: p.t_ms,
                kind: kind(p),
                estimated_percent: p.percent(),
                from_rate: p.from,
                to_rate: p.rate,
            })
            .collect(),
        changes_dropped: log.changes_dropped,
        estimated_from_ms: log.first_change_ms(),
        coarsest_rate: log.coarsest(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_what_became_estimates() {
        let point = |t_ms, from, rate| GuardPoint {
            t_ms,
            budget_centi: 500,
            percent_centi: 120,
            from,
            rate,
            floor: false,
        };
        let mut log = GuardLog::default();
        assert_eq!(guard_json(&log), None);
        log.push(point(1000, 256, 1024));
        log.push(point(2000, 1024, 4096));
        log.push(point(3000, 4096, 4096));
        log.push(point(9000, 4096, 1024));
        let j = guard_json(&log).expect("windows");
        assert_eq!((j.start_rate, j.current_rate, j.windows), (256, 1024, 4));
        assert_eq!(j.budget_percent, 5.0);
        assert_eq!(j.estimated_percent, 1.2);
        let kinds: Vec<_> = j.changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["sampled_less", "sampled_less", "sampled_more"]);
        assert_eq!(j.estimated_from_ms, Some(1000));
        assert_eq!(j.coarsest_rate, Some(4096));
    }
}
