//! Where attaching and stopping spend their time: `-v` logs each phase's
//! duration (process discovery, symbols, program load, links, arming, final
//! drain, report, detach), so a slow attach on a busy target can be told
//! apart from a slow kernel.

use std::time::{Duration, Instant};

/// Times consecutive phases of one operation ("attach", "stop").
pub struct Phases {
    what: &'static str,
    start: Instant,
    last: Instant,
}

impl Phases {
    /// Starts timing `what`.
    pub fn new(what: &'static str) -> Phases {
        let now = Instant::now();
        Phases {
            what,
            start: now,
            last: now,
        }
    }

    /// Logs (at debug level) the time since the previous mark as `phase`
    /// and returns it.
    pub fn mark(&mut self, phase: &str) -> Duration {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        log::debug!("{}", line(self.what, phase, took, now - self.start));
        took
    }
}

/// One log line: the phase, its time and the running total, in ms.
fn line(what: &str, phase: &str, took: Duration, total: Duration) -> String {
    format!(
        "{what}: {phase} {:.1} ms (total {:.1} ms)",
        took.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_phase_and_total() {
        let l = line(
            "attach",
            "program load",
            Duration::from_micros(12_345),
            Duration::from_millis(200),
        );
        assert_eq!(l, "attach: program load 12.3 ms (total 200.0 ms)");
    }
}
