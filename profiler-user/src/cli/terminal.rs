//! How a live session shows on the terminal: the "attached" line, one status
//! line per tick, the unwinder's statistics, and the stop reason followed by
//! the warnings, all on stderr.

use profiler_common::counters::Section as CounterSection;

use super::note;
use crate::overhead::OverheadStatus;
use crate::session::output::{SessionEvent, SessionOutput, TickUpdate};
use crate::session::publish::PushStatus;
use crate::timeline::Tick;
use crate::views::human_bytes;
use crate::views::overhead::{describe_action, status_part};

/// A line on stderr. After SIGHUP the terminal is gone and `eprintln!`
/// would panic; the line is lost instead.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Turns counters into rates between status lines.
#[derive(Default)]
pub struct StatusLine {
    /// Time, allocations and frees at the previous line.
    last: Option<(u64, u64, u64)>,
}

impl StatusLine {
    /// Formats the line for this tick. Rates divide by the time between two
    /// snapshot reads (`t_ms`), not between two lines: symbolizing new sites
    /// between a read and its line can take seconds, after which the next
    /// (late) tick comes at once.
    pub fn line(&mut self, tick: &Tick) -> String {
        let t = &tick.totals;
        let frees = t.frees + t.frees_unknown;
        // Calls counted at entry only (uprobe sessions) are allocations too.
        let allocs = t.allocs + t.untracked_allocs;
        let (t0, a0, f0) = self.last.unwrap_or((0, 0, 0));
        let dt = (tick.t_ms.saturating_sub(t0) as f64 / 1000.0).max(1e-3);
        let allocs_s = allocs.saturating_sub(a0) as f64 / dt;
        let frees_s = frees.saturating_sub(f0) as f64 / dt;
        self.last = Some((tick.t_ms, allocs, frees));
        // Every lost counter of the table; failed stacks are shown apart
        // (the allocation itself is counted).
        let lost = t
            .section_total(CounterSection::Lost)
            .saturating_sub(t.stack_failed);
        // With uprobe sessions only sampled blocks are tracked: the live
        // figure is the sites' estimate, and the line says so.
        let (tilde, live, blocks, how) = if t.untracked_allocs > 0 {
            let (bytes, blocks) = tick.sites.iter().fold((0u64, 0u64), |(b, n), (_, s)| {
                (
                    b.saturating_add(s.live_bytes),
                    n.saturating_add(s.live_count),
                )
            });
            (
                "~",
                bytes,
                blocks,
                " (estimate from the samples: uprobe sessions)",
            )
        } else {
            // Exact (allocated − freed), not the sum of sampled sites.
            ("", t.live_bytes(), t.live_blocks(), "")
        };
        format!(
            "[{:>6.1}s] live {tilde}{} in {tilde}{blocks} blocks{how} | {:.0} allocs/s {:.0} frees/s | lost {} (stack failed {})",
            tick.t_ms as f64 / 1000.0,
            human_bytes(live),
            allocs_s,
            frees_s,
            lost,
            t.stack_failed,
        )
    }
}

/// Prints a session's events on stderr. Warnings are held back and printed
/// after the "stopped" line, with the end-of-session summary.
pub struct Terminal {
    /// Printed when the session has read the target's map (`attach`); `None`
    /// when it was printed before the session (`run`).
    pub announce: Option<String>,
    /// Print a status line every tick.
    pub status: bool,
    /// With `--push`: its counters, shown on the status line and at the end.
    pub push: Option<PushStatus>,
    line: StatusLine,
    warnings: Vec<String>,
    /// The overhead guard's last estimate (`--max-overhead`).
    overhead: Option<OverheadStatus>,
}

impl Terminal {
    /// A terminal output printing `announce` once attached.
    pub fn new(announce: Option<String>, status: bool) -> Terminal {
        Terminal {
            announce,
            status,
            push: None,
            line: StatusLine::default(),
            warnings: Vec::new(),
            overhead: None,
        }
    }
}

impl Terminal {
    fn push_summary(&self) -> Option<crate::push::PushSummary> {
        let status = self.push.as_ref()?;
        status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SessionOutput for Terminal {
    fn tick(&mut self, update: &TickUpdate<'_>) {
        if self.status && !update.last {
            let mut line = self.line.line(update.tick);
            if let Some(o) = &self.overhead {
                line = format!("{line} | {}", status_part(o));
            }
            match self.push_summary() {
                Some(p) => say(&format!("{line} | {}", p.counts())),
                None => say(&line),
            }
        }
    }

    fn event(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::Attached { .. } => {
                if let Some(line) = self.announce.take() {
                    say(&line);
                }
            }
            SessionEvent::Warning(w) => self.warnings.push(w.clone()),
            SessionEvent::UnwindStats {
                stacks,
                repeated,
                time,
                stops,
                copies,
            } => note(&format!(
                "{stacks} stacks unwound ({repeated} repeated ones from memory), {:.2} µs each \
                 (timed 1 in 64); stop reasons: {stops:?}; \
                 {} copies sized to their thread's stack ({:.0} B each), {} cut short",
                time.as_secs_f64() * 1e6 / (*stacks).max(1) as f64,
                copies.learned,
                copies.learned_bytes as f64 / copies.learned.max(1) as f64,
                copies.cut_short,
            )),
            SessionEvent::Overhead(o) => {
                if let Some(a) = &o.action {
                    note(&describe_action(a, o.budget));
                }
                self.overhead = Some(o.clone());
            }
            SessionEvent::Exec(x) => note(&x.describe()),
            SessionEvent::Exited(x) => note(&x.describe()),
            SessionEvent::Followed(f) => note(&f.describe()),
            SessionEvent::Stopped {
                reason,
                detached_in,
            } => {
                note(&format!(
                    "stopped: {}; probes detached in {:.0} ms",
                    reason.describe(),
                    detached_in.as_secs_f64() * 1e3
                ));
                for w in self.warnings.drain(..) {
                    note(&format!("warning: {w}"));
                }
                if let Some(p) = self.push_summary() {
                    note(&p.describe());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{SiteStats, Totals};
    use crate::timeline::SiteId;

    #[test]
    fn status_line_rates_losses_and_exact_live_heap() {
        let mut s = StatusLine::default();
        let tick = |t_ms, allocs, frees| Tick {
            t_ms,
            sites: vec![(
                SiteId(0),
                // A sampled site standing for more than is really live: the
                // line shows the exact allocated − freed instead.
                SiteStats {
                    live_bytes: 5 << 20,
                    live_count: 12,
                    alloc_bytes: 0,
                    alloc_count: 0,
                    ..Default::default()
                },
            )],
            totals: Totals {
                allocs,
                alloc_bytes: 3 << 20,
                frees,
                frees_unknown: 5,
                ringbuf_lost: 2,
                live_map_full: 1,
                stack_failed: 4,
                ..Totals::default()
            },
            mem: None,
            arenas: Vec::new(),
        };
        assert_eq!(
            s.line(&tick(2000, 1000, 495)),
            "[   2.0s] live 3.0 MiB in 505 blocks | 500 allocs/s 250 frees/s | lost 3 (stack failed 4)"
        );
        assert_eq!(
            s.line(&tick(2500, 2000, 995)),
            "[   2.5s] live 3.0 MiB in 1005 blocks | 2000 allocs/s 1000 frees/s | lost 3 (stack failed 4)"
        );
    }

    #[test]
    fn with_uprobe_sessions_the_line_shows_the_sites_estimate() {
        let mut tick = Tick {
            t_ms: 1000,
            ..Tick::default()
        };
        tick.totals.allocs = 10;
        tick.totals.alloc_bytes = 640;
        tick.totals.untracked_allocs = 630;
        let site = |bytes, count| crate::profile::SiteStats {
            live_bytes: bytes,
            live_count: count,
            ..Default::default()
        };
        tick.sites = vec![
            (crate::timeline::SiteId(1), site(3 << 20, 1000)),
            (crate::timeline::SiteId(2), site(1 << 20, 24)),
        ];
        let line = StatusLine::default().line(&tick);
        assert!(
            line.starts_with(
                "[   1.0s] live ~4.0 MiB in ~1024 blocks (estimate from the samples: uprobe sessions) | 640 allocs/s"
            ),
            "{line}"
        );
    }

    #[test]
    fn rates_divide_by_the_time_between_snapshot_reads() {
        let mut status = StatusLine::default();
        let mut tick = Tick {
            t_ms: 500,
            ..Tick::default()
        };
        tick.totals.allocs = 1000;
        let _ = status.line(&tick);
        // 14,000 allocations in the 1.5 s between two reads, whenever the
        // lines themselves are printed.
        tick.t_ms = 2000;
        tick.totals.allocs = 15_000;
        tick.totals.frees = 7000;
        let line = status.line(&tick);
        assert!(line.contains("| 9333 allocs/s 4667 frees/s |"), "{line}");
    }
}
