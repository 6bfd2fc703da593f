//! The one-line status printed on stderr every tick while attached.

use std::time::Instant;

use profiler_common::counters::Section as CounterSection;

use crate::aggregate::RawSnapshot;
use crate::views::human_bytes;

/// Remembers the previous tick to turn counters into rates.
pub struct StatusLine {
    started: Instant,
    last: Option<(Instant, u64, u64)>,
}

impl StatusLine {
    pub fn new(started: Instant) -> Self {
        StatusLine {
            started,
            last: None,
        }
    }

    /// Formats the line for the snapshot read at `now`. Rates divide by the
    /// time between two snapshot reads, not between two lines: symbolizing
    /// new sites between a read and its line can take seconds, after which
    /// the next (late) tick comes at once.
    pub fn line(&mut self, snap: &RawSnapshot, now: Instant) -> String {
        let t = &snap.totals;
        let (allocs_s, frees_s) = match self.last {
            Some((at, a, f)) => {
                let dt = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
                (
                    (t.allocs.saturating_sub(a)) as f64 / dt,
                    ((t.frees + t.frees_unknown).saturating_sub(f)) as f64 / dt,
                )
            }
            None => {
                let dt = now
                    .saturating_duration_since(self.started)
                    .as_secs_f64()
                    .max(1e-3);
                (
                    t.allocs as f64 / dt,
                    (t.frees + t.frees_unknown) as f64 / dt,
                )
            }
        };
        self.last = Some((now, t.allocs, t.frees + t.frees_unknown));
        // Every lost counter of the table; failed stacks are shown apart
        // (the allocation itself is counted).
        let lost = t
            .section_total(CounterSection::Lost)
            .saturating_sub(t.stack_failed);
        format!(
            "[{:>6.1}s] live {} in {} blocks | {:.0} allocs/s {:.0} frees/s | lost {} (stack failed {})",
            now.saturating_duration_since(self.started).as_secs_f64(),
            // Exact (allocated − freed), not the sum of sampled sites.
            human_bytes(t.live_bytes()),
            t.live_blocks(),
            allocs_s,
            frees_s,
            lost,
            t.stack_failed,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{SiteRef, StackRef};
    use crate::profile::{SiteStats, Totals};

    #[test]
    fn live_is_the_exact_total_not_the_sampled_sites() {
        let mut snap = RawSnapshot::default();
        // One sample standing for 512 KiB, while 68 KB are really live.
        snap.sites.insert(
            SiteRef {
                stack: StackRef::User(0),
                kind: 0,
            },
            SiteStats {
                live_bytes: 512 * 1024,
                live_count: 500,
                ..SiteStats::default()
            },
        );
        snap.totals = Totals {
            allocs: 30,
            alloc_bytes: 100_000,
            frees: 10,
            free_bytes: 32_000,
            ..Totals::default()
        };
        let now = Instant::now();
        let line = StatusLine::new(now).line(&snap, now);
        assert!(line.contains("live 66.4 KiB in 20 blocks"), "{line}");
    }

    #[test]
    fn rates_divide_by_the_time_between_snapshot_reads() {
        use std::time::Duration;
        let t0 = Instant::now();
        let mut status = StatusLine::new(t0);
        let mut snap = RawSnapshot::default();
        snap.totals.allocs = 1000;
        let _ = status.line(&snap, t0 + Duration::from_millis(500));
        // 14,000 allocations in the 1.5 s between two reads; the lines
        // themselves may be printed 10 ms apart (a late tick after a slow one).
        snap.totals.allocs = 15_000;
        snap.totals.frees = 7000;
        let line = status.line(&snap, t0 + Duration::from_millis(2000));
        assert!(line.contains("| 9333 allocs/s 4667 frees/s |"), "{line}");
    }
}
