//! The overhead guard (`--max-overhead PCT`): estimates the CPU the probes
//! add to the target from their hit counts and a per-hit cost, and decides
//! when to back off by sampling less (fewer stack captures), and when to
//! step back toward the user's rate once the target has calmed down (never
//! sampling more than the user asked for). Pure: fed with counter deltas and
//! the target's CPU time, tested without root.
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
    /// Constants measured with `cargo xtask bench` (malloc(64)/free pairs,
    /// one thread, this 2-vCPU VM kind; the bench prints them beside these):
    /// bare probes − no profiler over 3 hits a pair (612 ns); the sampled
    /// `--stacks fp` mode − bare probes over 2 calls a pair (833 ns: the
    /// live-map, counter, sampling-countdown and layout work of every call);
    /// `--exact` − sampled per capture, frame pointers 661 ns, DWARF 906 ns
    /// (a copy sized to the thread's stack, ~300 B). An earlier, more loaded
    /// run gave 955 / 901 / 787 / 729 ns; the first calibration (before the
    /// stack copies were sized) 560 / 184 / 520 / 4,460 ns. Entry points the
    /// kernel single-steps (~10 µs a hit) are not told apart.
    pub fn calibrated(mode: StackMode) -> Costs {
        Costs {
            trap_ns: 612.0,
            call_ns: 833.0,
            capture_ns: match mode {
                StackMode::FramePointer => 661.0,
                StackMode::Dwarf => 906.0,
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
/// A window also closes after this much session time whatever CPU the
/// target used, its CPU counted as at least [`MIN_WINDOW_CPU`]: an idle or
/// light target would otherwise never complete a window, and the guard could
/// never step back. (Counting at least that much only lowers the estimate
/// of a target that used less than a tenth of a CPU.)
pub const QUIET_WINDOW_MS: u64 = 2_000;
/// Consecutive windows well under budget before sampling more again.
pub const CALM_WINDOWS: u32 = 3;
/// "Well under budget": the estimate below this share of the budget.
pub const CALM_SHARE: f64 = 0.5;
/// Sampling more again only when the estimate predicted at the finer rate
/// (captures scaled by the rate ratio) stays below this share of the budget,
/// so a step back is not undone by the next window.
pub const STEP_BACK_HEADROOM: f64 = 0.8;

/// What the guard did at one decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Sampling lowered: from `from` (0: every allocation) to one sample per
    /// `to` bytes on average.
    SampledLess { from: u64, to: u64, est: Estimate },
    /// Sampling raised back toward the user's rate after [`CALM_WINDOWS`]
    /// windows well under budget: from `from` to `to` (0: every
    /// allocation), `predicted` the estimate expected at `to`, in percent.
    SampledMore {
        from: u64,
        to: u64,
        est: Estimate,
        predicted: f64,
    },
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
    /// The rate the user asked for: the guard never samples more.
    user_rate: u64,
    window: Activity,
    /// Session time the current window started at.
    window_start_ms: Option<u64>,
    /// Consecutive windows well under budget.
    calm: u32,
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
            user_rate: rate,
            window: Activity::default(),
            window_start_ms: None,
            calm: 0,
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
    /// target's CPU time (or [`QUIET_WINDOW_MS`] passed), estimates and
    /// decides. Returns the action taken, if any (the caller applies a new
    /// rate).
    pub fn observe(&mut self, t_ms: u64, a: &Activity) -> Option<Action> {
        self.window.add(a);
        let start = *self.window_start_ms.get_or_insert(t_ms);
        let quiet = t_ms.saturating_sub(start) >= QUIET_WINDOW_MS;
        if self.window.target_cpu < MIN_WINDOW_CPU && !quiet {
            return None;
        }
        let mut window = std::mem::take(&mut self.window);
        self.window_start_ms = Some(t_ms);
        window.target_cpu = window.target_cpu.max(MIN_WINDOW_CPU);
        let est = estimate(&window, &self.costs);
        self.last = Some(est);
        self.windows += 1;
        let action = if est.percent > self.budget_percent {
            self.calm = 0;
            self.back_off(est)?
        } else if self.rate != self.user_rate && est.percent < CALM_SHARE * self.budget_percent {
            self.calm += 1;
            if self.calm < CALM_WINDOWS {
                return None;
            }
            self.calm = 0;
            self.step_back(est, &window)?
        } else {
            self.calm = 0;
            return None;
        };
        self.actions.push((t_ms, action.clone()));
        Some(action)
    }

    /// Above budget: sample less while the captures are worth cutting, else
    /// say once that the traps are the floor.
    fn back_off(&mut self, est: Estimate) -> Option<Action> {
        let probes = est.probes.as_nanos() as f64;
        // Raising the rate only lowers the captures' share: worth it while
        // they are a tenth of the cost or more.
        let captures_matter = probes > 0.0 && est.captures.as_nanos() as f64 >= 0.1 * probes;
        if captures_matter && self.rate < MAX_RATE {
            let to = if self.rate == 0 {
                FIRST_RATE
            } else {
                (self.rate.saturating_mul(STEP)).min(MAX_RATE)
            };
            let from = std::mem::replace(&mut self.rate, to);
            Some(Action::SampledLess { from, to, est })
        } else if !self.floor_said {
            self.floor_said = true;
            Some(Action::Floor { est })
        } else {
            None
        }
    }

    /// Calm for long enough: one step toward the user's rate, if the
    /// estimate predicted there leaves headroom.
    fn step_back(&mut self, est: Estimate, window: &Activity) -> Option<Action> {
        let to = next_finer(self.rate, self.user_rate);
        let predicted = predict(&est, window, &self.costs, self.rate, to);
        if predicted > STEP_BACK_HEADROOM * self.budget_percent {
            return None;
        }
        let from = std::mem::replace(&mut self.rate, to);
        Some(Action::SampledMore {
            from,
            to,
            est,
            predicted,
        })
    }

    /// The user's sampling rate (0: every allocation).
    pub fn user_rate(&self) -> u64 {
        self.user_rate
    }

    /// True once the guard has changed the sampling rate.
    pub fn backed_off(&self) -> bool {
        self.actions
            .iter()
            .any(|(_, a)| matches!(a, Action::SampledLess { .. }))
    }
}

impl Guard {
    /// The rate that describes the session's per-site numbers: the rate in
    /// force, except that a session back at every allocation after sampling
    /// is described by the coarsest rate it sampled at (its numbers are
    /// estimates for that stretch, not exact).
    pub fn describing_rate(&self) -> u64 {
        let coarsest = self
            .actions
            .iter()
            .filter_map(|(_, a)| match a {
                Action::SampledLess { to, .. } => Some(*to),
                _ => None,
            })
            .max();
        match (self.rate, coarsest) {
            (0, Some(c)) => c,
            (r, _) => r,
        }
    }
}

/// One step finer than `rate`, never finer than `user_rate`: a quarter of
/// the rate; below [`FIRST_RATE`] from an exact session, every allocation.
pub fn next_finer(rate: u64, user_rate: u64) -> u64 {
    let to = rate / STEP;
    if to <= user_rate || (user_rate == 0 && to < FIRST_RATE) {
        user_rate
    } else {
        to
    }
}

/// The estimate (percent) expected in a window like `window` had it been
/// sampled at `to` instead of `from`: captures scale with the rate ratio (all
/// counted calls at most; every one of them at rate 0), the rest stays.
pub fn predict(est: &Estimate, window: &Activity, costs: &Costs, from: u64, to: u64) -> f64 {
    let captures = window.captures as f64;
    let more = match (from, to) {
        (_, 0) => window.calls as f64,
        (0, _) => captures,
        (f, t) => captures * f as f64 / t as f64,
    }
    .min(window.calls as f64)
    .max(captures);
    let probes = est.probes.as_nanos() as f64;
    let new_probes = probes + (more - captures) * costs.capture_ns;
    let cpu = window.target_cpu.as_nanos() as f64;
    if cpu <= 0.0 {
        return 0.0;
    }
    // The added capture time runs on the target's threads: it adds to
    // their CPU time too.
    (100.0 * new_probes / (cpu + new_probes - probes)).min(100.0)
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
mod tests;
