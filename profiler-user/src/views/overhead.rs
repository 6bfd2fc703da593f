//! What the overhead guard (`--max-overhead`) did, in words: the status
//! line's part, one line per action, and the report's section.

use std::io::Write;

use crate::overhead::{Action, OverheadStatus, OverheadSummary};
use crate::timeline::{GuardLog, GuardPoint};

use super::human_bytes;

/// "every allocation" or "1 per 64.0 KiB".
fn sampling(rate: u64) -> String {
    if rate == 0 {
        "every allocation".to_string()
    } else {
        format!("1 per {}", human_bytes(rate))
    }
}

/// The guard's part of the status line.
pub fn status_part(o: &OverheadStatus) -> String {
    format!(
        "probes ~{:.1}% of target CPU (budget {}%), sampling {}",
        o.percent,
        o.budget,
        sampling(o.rate)
    )
}

/// One action, as a sentence.
pub fn describe_action(a: &Action, budget: f64) -> String {
    match a {
        Action::SampledLess { from, to, est } => format!(
            "overhead guard: probes ~{:.1}% of the target's CPU (budget {budget}%), stack \
             captures ~{:.0}% of that: sampling lowered from {} to {}; per-site numbers \
             from here on are sampled estimates, the live heap and process totals stay exact",
            est.percent,
            100.0 * est.captures.as_secs_f64() / est.probes.as_secs_f64().max(1e-12),
            sampling(*from),
            sampling(*to)
        ),
        Action::SampledMore {
            from,
            to,
            est,
            predicted,
        } => format!(
            "overhead guard: probes ~{:.1}% of the target's CPU (budget {budget}%) for {} \
             windows in a row: sampling raised back from {} to {} (expected ~{predicted:.1}% \
             there){}",
            est.percent,
            crate::overhead::CALM_WINDOWS,
            sampling(*from),
            sampling(*to),
            if *to == 0 {
                "; every allocation is captured again, per-site numbers stay estimates for \
                 the sampled stretch"
            } else {
                ""
            }
        ),
        Action::Floor { est } => format!(
            "overhead guard: probes ~{:.1}% of the target's CPU (budget {budget}%), almost \
             all of it the traps of every probed call, which counting needs; sampling less \
             would not lower it (stop the session, or use --duration, to stop paying it)",
            est.percent
        ),
    }
}

/// The report's section: the budget, the last estimate, every action with
/// its time, and what it means for the numbers.
pub fn write_overhead(o: &OverheadSummary, out: &mut impl Write) -> std::io::Result<()> {
    let last = o
        .last_percent
        .map_or("not estimated (too little CPU time)".to_string(), |p| {
            format!("~{p:.1}% of the target's CPU in the last window")
        });
    writeln!(
        out,
        "overhead guard (--max-overhead {}%): probes {last} (hits × calibrated per-hit cost)",
        o.budget
    )?;
    for (t_ms, a) in &o.actions {
        writeln!(
            out,
            "  at {:.1}s: {}",
            *t_ms as f64 / 1000.0,
            describe_action(a, o.budget)
        )?;
    }
    let coarsest = o
        .actions
        .iter()
        .filter_map(|(_, a)| match a {
            Action::SampledLess { to, .. } => Some(*to),
            _ => None,
        })
        .max();
    if let Some(coarsest) = coarsest {
        let before = if o.start_rate == 0 {
            "exact (every allocation captured)".to_string()
        } else {
            format!("sampled 1 per {}", human_bytes(o.start_rate))
        };
        let end = if o.end_rate == o.start_rate {
            "back at the start's rate at the end".to_string()
        } else {
            format!("sampled 1 per {} at the end", human_bytes(o.end_rate))
        };
        writeln!(
            out,
            "  per-site numbers: {before} before the first back-off, at most 1 per {} \
             between, {end}; together they are estimates (each sample weighed at the rate it \
             was taken at); the live heap, process totals and counters are exact",
            human_bytes(coarsest)
        )?;
    } else if o.actions.is_empty() {
        writeln!(out, "  within budget: nothing changed")?;
    }
    writeln!(out)
}

/// One recorded change of the guard, as a sentence (the report of a
/// session or of its recording).
fn describe_point(p: &GuardPoint) -> String {
    let head = format!(
        "overhead guard: probes ~{:.1}% of the target's CPU (budget {}%)",
        p.percent(),
        p.budget()
    );
    if p.from == p.rate {
        return format!(
            "{head}, almost all of it the traps of every probed call, which counting needs; \
             sampling less would not lower it"
        );
    }
    // A coarser rate samples less: 0 (every allocation) is the finest.
    let less = p.from == 0 || (p.rate != 0 && p.rate > p.from);
    if less {
        format!(
            "{head}: sampling lowered from {} to {}",
            sampling(p.from),
            sampling(p.rate)
        )
    } else {
        format!(
            "{head}, well under it for {} windows in a row: sampling raised back from {} to {}",
            crate::overhead::CALM_WINDOWS,
            sampling(p.from),
            sampling(p.rate)
        )
    }
}

/// The report's section from the session's guard windows: the budget, the
/// last estimate, every change with its time, and what it means for the
/// numbers. The same for a live session and for its recording.
pub fn write_guard_log(log: &GuardLog, out: &mut impl Write) -> std::io::Result<()> {
    let Some(last) = log.last else {
        return Ok(());
    };
    writeln!(
        out,
        "overhead guard (--max-overhead {}%): probes ~{:.1}% of the target's CPU in the last \
         window (hits × calibrated per-hit cost); sampling {} now",
        last.budget(),
        last.percent(),
        sampling(last.rate)
    )?;
    for p in &log.changes {
        writeln!(
            out,
            "  at {:.1}s: {}",
            p.t_ms as f64 / 1000.0,
            describe_point(p)
        )?;
    }
    if log.changes_dropped > 0 {
        writeln!(out, "  ({} more changes not kept)", log.changes_dropped)?;
    }
    let start = log
        .changes
        .iter()
        .find(|p| p.from != p.rate)
        .map_or(last.rate, |p| p.from);
    match (log.coarsest(), log.first_change_ms()) {
        (Some(coarsest), Some(t)) => {
            let before = if start == 0 {
                "exact (every allocation captured)".to_string()
            } else {
                format!("sampled 1 per {}", human_bytes(start))
            };
            let end = if last.rate == start {
                "back at the start's rate at the end".to_string()
            } else {
                format!("{} at the end", sampling(last.rate))
            };
            writeln!(
                out,
                "  per-site numbers: {before} before the first back-off (at {:.1}s), at most 1 \
                 per {} after it, {end}; together they are estimates (each sample weighed at \
                 the rate it was taken at)",
                t as f64 / 1000.0,
                human_bytes(coarsest)
            )?;
        }
        _ => writeln!(out, "  sampling unchanged")?,
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overhead::Estimate;
    use std::time::Duration;

    fn est(percent: f64) -> Estimate {
        Estimate {
            probes: Duration::from_millis(100),
            captures: Duration::from_millis(80),
            percent,
        }
    }

    #[test]
    fn report_says_what_changed_and_what_it_means() {
        let o = OverheadSummary {
            budget: 1.0,
            last_percent: Some(40.0),
            start_rate: 0,
            end_rate: 256 * 1024,
            actions: vec![
                (
                    1200,
                    Action::SampledLess {
                        from: 0,
                        to: 64 * 1024,
                        est: est(90.0),
                    },
                ),
                (
                    2400,
                    Action::SampledLess {
                        from: 64 * 1024,
                        to: 256 * 1024,
                        est: est(60.0),
                    },
                ),
            ],
        };
        let mut out = Vec::new();
        write_overhead(&o, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("--max-overhead 1%"), "{text}");
        assert!(
            text.contains("at 1.2s: overhead guard: probes ~90.0%"),
            "{text}"
        );
        assert!(
            text.contains("from every allocation to 1 per 64.0 KiB"),
            "{text}"
        );
        assert!(text.contains("stack captures ~80% of that"), "{text}");
        assert!(
            text.contains("exact (every allocation captured) before"),
            "{text}"
        );
        assert!(
            text.contains("process totals and counters are exact"),
            "{text}"
        );
    }

    #[test]
    fn a_step_back_is_said_with_its_prediction() {
        let o = OverheadSummary {
            budget: 5.0,
            last_percent: Some(0.2),
            start_rate: 0,
            end_rate: 0,
            actions: vec![
                (
                    1000,
                    Action::SampledLess {
                        from: 0,
                        to: 64 * 1024,
                        est: est(30.0),
                    },
                ),
                (
                    9000,
                    Action::SampledMore {
                        from: 64 * 1024,
                        to: 0,
                        est: est(0.2),
                        predicted: 1.5,
                    },
                ),
            ],
        };
        let mut out = Vec::new();
        write_overhead(&o, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains(
                "at 9.0s: overhead guard: probes ~0.2% of the target's CPU (budget 5%) for 3 \
                 windows in a row: sampling raised back from 1 per 64.0 KiB to every \
                 allocation (expected ~1.5% there)"
            ),
            "{text}"
        );
        assert!(
            text.contains("at most 1 per 64.0 KiB between, back at the start's rate"),
            "{text}"
        );
        assert!(!text.contains("nothing changed"), "{text}");
    }

    #[test]
    fn the_recorded_guard_says_what_changed() {
        let point = |t_ms, percent_centi, from, rate, floor| GuardPoint {
            t_ms,
            budget_centi: 100,
            percent_centi,
            from,
            rate,
            floor,
        };
        let mut log = GuardLog::default();
        log.push(point(3000, 10_000, 0, 0, true));
        log.push(point(4000, 3150, 0, 65536, false));
        log.push(point(5000, 10, 65536, 65536, false));
        log.push(point(7000, 10, 65536, 0, false));
        let mut out = Vec::new();
        write_guard_log(&log, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        for want in [
            "overhead guard (--max-overhead 1%): probes ~0.1% of the target's CPU in the last \
             window (hits × calibrated per-hit cost); sampling every allocation now",
            "at 3.0s: overhead guard: probes ~100.0% of the target's CPU (budget 1%), almost all",
            "at 4.0s: overhead guard: probes ~31.5% of the target's CPU (budget 1%): sampling \
             lowered from every allocation to 1 per 64.0 KiB",
            "at 7.0s: overhead guard: probes ~0.1% of the target's CPU (budget 1%), well under \
             it for 3 windows in a row: sampling raised back from 1 per 64.0 KiB to every \
             allocation",
            "per-site numbers: exact (every allocation captured) before the first back-off (at \
             4.0s), at most 1 per 64.0 KiB after it, back at the start's rate at the end",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert_eq!(text.matches("  at ").count(), 3, "{text}");
    }

    #[test]
    fn within_budget_says_so() {
        let o = OverheadSummary {
            budget: 50.0,
            last_percent: Some(3.0),
            ..OverheadSummary::default()
        };
        let mut out = Vec::new();
        write_overhead(&o, &mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("~3.0% of the target's CPU"), "{text}");
        assert!(text.contains("nothing changed"), "{text}");
    }
}
