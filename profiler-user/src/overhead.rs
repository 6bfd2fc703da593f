//! The overhead guard (`--max-overhead PCT`): estimates the CPU the probes
//! add to the target from their hit counts and a per-hit cost, and decides
//! when to back off by sampling less (fewer stack captures). Pure: fed with
//! counter deltas and the target's CPU time, tested without root.
//!
//! What it can lower is the probes' *work* beyond the trap: stack captures
//! and their ring-buffer records. The trap of every probed call stays (the
//! process totals are counted from it); when the traps alone exceed the
//! budget the guard says so instead of pretending.

use std::time::Duration;

use profiler_common::StackMode;

/// Cost per probe event, in nanoseconds of the target's CPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Costs {
    /// One probe hit: the breakpoint trap and the program's dispatch.
    pub trap_ns: f64,
    /// The live-map and counter work of one counted call.
    pub call_ns: f64,
    /// One stack capture (a frame-pointer walk, or a copied stack).
    pub capture_ns: f64,
}

impl Costs {
    /// Constants calibrated with `cargo xtask bench` (malloc(64)/free pairs,
    /// one thread, this 2-vCPU VM kind): bare probes 1,676 ns per pair of
    /// 3 hits; default mode +368 ns per pair of 2 calls; a frame-pointer
    /// capture +520 ns, a DWARF capture (8 KiB copied) +4,460 ns. Entry
    /// points the kernel single-steps (~10 µs a hit) are not told apart.
    pub fn calibrated(mode: StackMode) -> Costs {
        Costs {
            trap_ns: 560.0,
            call_ns: 184.0,
            capture_ns: match mode {
                StackMode::FramePointer => 520.0,
                StackMode::Dwarf => 4_460.0,
            },
        }
    }
}

/// What the probes saw over an interval, and the target's CPU time in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Calls with a return probe (entry + return: two hits each).
    pub calls: u64,
    /// Calls probed at their entry only (free, munmap).
    pub entry_only: u64,
    /// Stack captures (sampled allocations).
    pub captures: u64,
    /// CPU time the target used (user + system, probes included).
    pub target_cpu: Duration,
}

impl Activity {
    /// Adds another interval.
    pub fn add(&mut self, o: &Activity) {
        self.calls += o.calls;
        self.entry_only += o.entry_only;
        self.captures += o.captures;
        self.target_cpu += o.target_cpu;
    }
}

/// The estimated cost of the probes over an interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// CPU time the probes took in the target.
    pub probes: Duration,
    /// Of which stack captures.
    pub captures: Duration,
    /// The probes' share of the target's CPU time, in percent (at most 100:
    /// the probes run on the target's threads, so they are part of it).
    pub percent: f64,
}

/// Estimates the probes' cost in `a` at per-event `costs`.
pub fn estimate(a: &Activity, costs: &Costs) -> Estimate {
    let hits = 2.0 * a.calls as f64 + a.entry_only as f64;
    let capture_ns = a.captures as f64 * costs.capture_ns;
    let probe_ns =
        hits * costs.trap_ns + (a.calls + a.entry_only) as f64 * costs.call_ns + capture_ns;
    let cpu_ns = a.target_cpu.as_nanos() as f64;
    // No CPU time measured (clock-tick resolution): no estimate, 0.
    let percent = if cpu_ns > 0.0 {
        (100.0 * probe_ns / cpu_ns).min(100.0)
    } else {
        0.0
    };
    Estimate {
        probes: Duration::from_nanos(probe_ns as u64),
        captures: Duration::from_nanos(capture_ns as u64),
        percent,
    }
}

/// The rate the guard starts sampling at when the session began with
/// `--exact` (every allocation captured).
pub const FIRST_RATE: u64 = 64 * 1024;
/// Each back-off samples this many times less.
pub const STEP: u64 = 4;
/// The guard never samples less than one per this many bytes.
pub const MAX_RATE: u64 = 1 << 30;
/// CPU time of the target observed before a decision: the kernel counts it
/// in clock ticks (10 ms), so shorter windows are noise.
pub const MIN_WINDOW_CPU: Duration = Duration::from_millis(200);

/// What the guard did at one decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Sampling lowered: from `from` (0: every allocation) to one sample per
    /// `to` bytes on average.
    Raised { from: u64, to: u64, est: Estimate },
    /// Above the budget with the stack captures no longer the cost: the
    /// traps of every probed call remain (said once).
    Floor { est: Estimate },
}

/// The guard's state over a session.
#[derive(Clone, Debug)]
pub struct Guard {
    budget_percent: f64,
    costs: Costs,
    /// The sampling rate in force (0: every allocation).
    pub rate: u64,
    window: Activity,
    floor_said: bool,
    /// Every action taken, with the session time (ms) it was taken at.
    pub actions: Vec<(u64, Action)>,
    /// The estimate of the last complete window.
    pub last: Option<Estimate>,
    /// Decision windows completed.
    pub windows: u64,
}

impl Guard {
    /// A guard holding the probes to `budget_percent` of the target's CPU,
    /// starting at sampling `rate` (0: every allocation).
    pub fn new(budget_percent: f64, costs: Costs, rate: u64) -> Guard {
        Guard {
            budget_percent,
            costs,
            rate,
            window: Activity::default(),
            floor_said: false,
            actions: Vec::new(),
            last: None,
            windows: 0,
        }
    }

    /// The budget, in percent of the target's CPU.
    pub fn budget_percent(&self) -> f64 {
        self.budget_percent
    }

    /// Takes one interval's activity; once the window holds enough of the
    /// target's CPU time, estimates and decides. Returns the action taken,
    /// if any (the caller applies a new rate).
    pub fn observe(&mut self, t_ms: u64, a: &Activity) -> Option<Action> {
        self.window.add(a);
        if self.window.target_cpu < MIN_WINDOW_CPU {
            return None;
        }
        let est = estimate(&self.window, &self.costs);
        self.window = Activity::default();
        self.last = Some(est);
        self.windows += 1;
        if est.percent <= self.budget_percent {
            return None;
        }
        let probes = est.probes.as_nanos() as f64;
        // Raising the rate only lowers the captures' share: worth it while
        // they are a tenth of the cost or more.
        let captures_matter = probes > 0.0 && est.captures.as_nanos() as f64 >= 0.1 * probes;
        let action = if captures_matter && self.rate < MAX_RATE {
            let to = if self.rate == 0 {
                FIRST_RATE
            } else {
                (self.rate.saturating_mul(STEP)).min(MAX_RATE)
            };
            let from = std::mem::replace(&mut self.rate, to);
            Action::Raised { from, to, est }
        } else if !self.floor_said {
            self.floor_said = true;
            Action::Floor { est }
        } else {
            return None;
        };
        self.actions.push((t_ms, action.clone()));
        Some(action)
    }

    /// True once the guard has changed the sampling rate.
    pub fn backed_off(&self) -> bool {
        self.actions
            .iter()
            .any(|(_, a)| matches!(a, Action::Raised { .. }))
    }
}

/// What the guard reports at the end of a decision window.
#[derive(Clone, Debug, PartialEq)]
pub struct OverheadStatus {
    /// The probes' estimated share of the target's CPU in the window, in percent.
    pub percent: f64,
    /// The budget (`--max-overhead`), in percent.
    pub budget: f64,
    /// The sampling rate in force (0: every allocation).
    pub rate: u64,
    /// What the guard did in this window, if anything.
    pub action: Option<Action>,
}

/// What the guard did over a session, for the report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverheadSummary {
    pub budget: f64,
    /// The estimate of the last window.
    pub last_percent: Option<f64>,
    /// The sampling rate at the start and at the end (0: every allocation).
    pub start_rate: u64,
    pub end_rate: u64,
    /// Actions, with the session time (ms) they were taken at.
    pub actions: Vec<(u64, Action)>,
}

/// Reads the CPU time (user + system) the process has used so far, from
/// `/proc/PID/stat` (all its threads, living and exited).
pub fn target_cpu(pid: u32) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu(&stat, clock_ticks()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: no utime/stime fields"),
        )
    })
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, at `hz`
/// ticks per second. The command name (field 2) may hold spaces and
/// parentheses: fields are counted after its closing parenthesis.
pub fn parse_cpu(stat: &str, hz: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz.max(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(calls: u64, captures: u64, cpu_ms: u64) -> Activity {
        Activity {
            calls,
            entry_only: calls,
            captures,
            target_cpu: Duration::from_millis(cpu_ms),
        }
    }

    #[test]
    fn estimate_is_hits_times_cost() {
        let c = Costs {
            trap_ns: 500.0,
            call_ns: 100.0,
            capture_ns: 1000.0,
        };
        // 1000 pairs: 3000 hits, 2000 calls, 10 captures.
        let e = estimate(&busy(1000, 10, 10), &c);
        let want_ns = 3000.0 * 500.0 + 2000.0 * 100.0 + 10.0 * 1000.0;
        assert_eq!(e.probes, Duration::from_nanos(want_ns as u64));
        assert_eq!(e.captures, Duration::from_nanos(10_000));
        assert!((e.percent - 100.0 * want_ns / 10e6).abs() < 1e-9);
        // Never above 100%: the probes run inside the target's CPU time.
        assert_eq!(estimate(&busy(1_000_000, 0, 1), &c).percent, 100.0);
        assert_eq!(estimate(&busy(5, 0, 0), &c).percent, 0.0);
    }

    #[test]
    fn guard_waits_for_enough_cpu_time() {
        let mut g = Guard::new(1.0, Costs::calibrated(StackMode::Dwarf), 0);
        assert_eq!(g.observe(0, &busy(100_000, 100_000, 50)), None);
        assert_eq!(g.rate, 0);
        assert!(g.observe(200, &busy(100_000, 100_000, 200)).is_some());
    }

    #[test]
    fn exact_mode_over_budget_starts_sampling_then_samples_less() {
        let mut g = Guard::new(5.0, Costs::calibrated(StackMode::Dwarf), 0);
        // Every allocation captured: captures dominate.
        match g.observe(1000, &busy(100_000, 100_000, 1000)) {
            Some(Action::Raised { from: 0, to, .. }) => assert_eq!(to, FIRST_RATE),
            other => panic!("{other:?}"),
        }
        match g.observe(2000, &busy(100_000, 20_000, 1000)) {
            Some(Action::Raised { from, to, .. }) => {
                assert_eq!((from, to), (FIRST_RATE, FIRST_RATE * STEP));
            }
            other => panic!("{other:?}"),
        }
        assert!(g.backed_off());
        assert_eq!(g.actions.len(), 2);
    }

    #[test]
    fn traps_alone_over_budget_are_said_once() {
        let mut g = Guard::new(1.0, Costs::calibrated(StackMode::Dwarf), 512 * 1024);
        // Few captures: the traps are the cost; sampling less cannot help.
        assert!(matches!(
            g.observe(1000, &busy(1_000_000, 1, 1000)),
            Some(Action::Floor { .. })
        ));
        assert_eq!(g.observe(2000, &busy(1_000_000, 1, 1000)), None);
        assert_eq!(g.rate, 512 * 1024, "unchanged");
        assert!(!g.backed_off());
    }

    #[test]
    fn under_budget_changes_nothing() {
        let mut g = Guard::new(50.0, Costs::calibrated(StackMode::FramePointer), 0);
        assert_eq!(g.observe(1000, &busy(100, 100, 1000)), None);
        assert!(g.last.expect("estimated").percent < 50.0);
        assert_eq!(g.rate, 0);
    }

    #[test]
    fn rate_stops_at_the_cap() {
        let mut g = Guard::new(0.1, Costs::calibrated(StackMode::Dwarf), MAX_RATE / 2);
        assert!(matches!(
            g.observe(1, &busy(10, 1_000_000, 1000)),
            Some(Action::Raised { to: MAX_RATE, .. })
        ));
        assert!(matches!(
            g.observe(2, &busy(10, 1_000_000, 1000)),
            Some(Action::Floor { .. })
        ));
    }

    #[test]
    fn cpu_time_from_proc_stat() {
        let line = "4242 (a (weird) name) R 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 100 1000 100";
        assert_eq!(parse_cpu(line, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_cpu("garbage", 100), None);
        assert_eq!(parse_cpu("1 (x) R 1", 100), None);
    }
}
