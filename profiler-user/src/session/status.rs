//! The one-line status printed on stderr every tick while attached.

use std::time::Instant;

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

    /// Formats the line for this tick.
    pub fn line(&mut self, snap: &RawSnapshot) -> String {
        let now = Instant::now();
        let t = &snap.totals;
        let (allocs_s, frees_s) = match self.last {
            Some((at, a, f)) => {
                let dt = now.duration_since(at).as_secs_f64().max(1e-3);
                (
                    (t.allocs.saturating_sub(a)) as f64 / dt,
                    ((t.frees + t.frees_unknown).saturating_sub(f)) as f64 / dt,
                )
            }
            None => {
                let dt = now.duration_since(self.started).as_secs_f64().max(1e-3);
                (
                    t.allocs as f64 / dt,
                    (t.frees + t.frees_unknown) as f64 / dt,
                )
            }
        };
        self.last = Some((now, t.allocs, t.frees + t.frees_unknown));
        let live_blocks: u64 = snap.sites.values().map(|s| s.live_count).sum();
        let lost = t.live_map_full
            + t.inflight_full
            + t.site_map_full
            + t.ringbuf_lost
            + t.replaced
            + t.inflight_stale;
        format!(
            "[{:>6.1}s] live {} in {} blocks | {:.0} allocs/s {:.0} frees/s | lost {} (stack failed {})",
            now.duration_since(self.started).as_secs_f64(),
            human_bytes(snap.live_bytes()),
            live_blocks,
            allocs_s,
            frees_s,
            lost,
            t.stack_failed,
        )
    }
}
