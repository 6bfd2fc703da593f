//! What the overhead guard (`--max-overhead`) did, in words: the status
//! line's part, one line per action, and the report's section.

use std::io::Write;

use crate::overhead::{Action, OverheadStatus, OverheadSummary};

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
        Action::Raised { from, to, est } => format!(
            "overhead guard: probes ~{:.1}% of the target's CPU (budget {budget}%), stack \
             captures ~{:.0}% of that: sampling lowered from {} to {}; per-site numbers \
             from here on are sampled estimates, the live heap and process totals stay exact",
            est.percent,
            100.0 * est.captures.as_secs_f64() / est.probes.as_secs_f64().max(1e-12),
            sampling(*from),
            sampling(*to)
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
    if o.end_rate != o.start_rate {
        let before = if o.start_rate == 0 {
            "exact (every allocation captured)".to_string()
        } else {
            format!("sampled 1 per {}", human_bytes(o.start_rate))
        };
        writeln!(
            out,
            "  per-site numbers: {before} before the first back-off, sampled 1 per {} at the \
             end; together they are estimates (each sample weighed at the rate it was taken \
             at); the live heap, process totals and counters are exact",
            human_bytes(o.end_rate)
        )?;
    } else if o.actions.is_empty() {
        writeln!(out, "  within budget: nothing changed")?;
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
                    Action::Raised {
                        from: 0,
                        to: 64 * 1024,
                        est: est(90.0),
                    },
                ),
                (
                    2400,
                    Action::Raised {
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
