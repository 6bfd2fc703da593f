use super::*;

/// Fixed per-event costs (an earlier calibration), so that the
/// scenarios below do not move when the calibration does.
fn costs(capture_ns: f64) -> Costs {
    Costs {
        trap_ns: 560.0,
        call_ns: 184.0,
        capture_ns,
    }
}

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
    let mut g = Guard::new(1.0, costs(4_460.0), 0);
    assert_eq!(g.observe(0, &busy(100_000, 100_000, 50)), None);
    assert_eq!(g.rate, 0);
    assert!(g.observe(200, &busy(100_000, 100_000, 200)).is_some());
}

#[test]
fn exact_mode_over_budget_starts_sampling_then_samples_less() {
    let mut g = Guard::new(5.0, costs(4_460.0), 0);
    // Every allocation captured: captures dominate.
    match g.observe(1000, &busy(100_000, 100_000, 1000)) {
        Some(Action::SampledLess { from: 0, to, .. }) => assert_eq!(to, FIRST_RATE),
        other => panic!("{other:?}"),
    }
    match g.observe(2000, &busy(100_000, 20_000, 1000)) {
        Some(Action::SampledLess { from, to, .. }) => {
            assert_eq!((from, to), (FIRST_RATE, FIRST_RATE * STEP));
        }
        other => panic!("{other:?}"),
    }
    assert!(g.backed_off());
    assert_eq!(g.actions.len(), 2);
}

#[test]
fn traps_alone_over_budget_are_said_once() {
    let mut g = Guard::new(1.0, costs(4_460.0), 512 * 1024);
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
    let mut g = Guard::new(50.0, costs(520.0), 0);
    assert_eq!(g.observe(1000, &busy(100, 100, 1000)), None);
    assert!(g.last.expect("estimated").percent < 50.0);
    assert_eq!(g.rate, 0);
}

#[test]
fn rate_stops_at_the_cap() {
    let mut g = Guard::new(0.1, costs(4_460.0), MAX_RATE / 2);
    assert!(matches!(
        g.observe(1, &busy(10, 1_000_000, 1000)),
        Some(Action::SampledLess { to: MAX_RATE, .. })
    ));
    assert!(matches!(
        g.observe(2, &busy(10, 1_000_000, 1000)),
        Some(Action::Floor { .. })
    ));
}

/// A guard of an `--exact` session backed off twice (to 256 KiB).
fn backed_off_twice(budget: f64) -> Guard {
    let mut g = Guard::new(budget, costs(4_460.0), 0);
    assert!(g.observe(1000, &busy(100_000, 100_000, 1000)).is_some());
    assert!(g.observe(2000, &busy(100_000, 20_000, 1000)).is_some());
    assert_eq!(g.rate, FIRST_RATE * STEP);
    g
}

/// A light interval: 1,000 pairs, a few captures, a full second of CPU.
fn light() -> Activity {
    busy(1_000, 4, 1000)
}

#[test]
fn calm_windows_step_back_to_the_users_rate_and_no_further() {
    let mut g = backed_off_twice(5.0);
    // Two calm windows are not enough.
    assert_eq!(g.observe(3000, &light()), None);
    assert_eq!(g.observe(4000, &light()), None);
    match g.observe(5000, &light()) {
        Some(Action::SampledMore {
            from,
            to,
            predicted,
            ..
        }) => {
            assert_eq!((from, to), (FIRST_RATE * STEP, FIRST_RATE));
            assert!(predicted < STEP_BACK_HEADROOM * 5.0, "{predicted}");
        }
        other => panic!("{other:?}"),
    }
    for t in [6000, 7000] {
        assert_eq!(g.observe(t, &light()), None);
    }
    // From the first back-off's rate, an exact session goes back to
    // capturing every allocation: its user's rate.
    assert!(matches!(
        g.observe(8000, &light()),
        Some(Action::SampledMore { to: 0, .. })
    ));
    assert_eq!(g.rate, 0);
    for t in 9..20 {
        assert_eq!(g.observe(t * 1000, &light()), None, "never finer");
    }
    assert_eq!(g.actions.len(), 4);
    assert!(g.backed_off());
    // Back at every allocation, but the numbers are not exact.
    assert_eq!(g.describing_rate(), FIRST_RATE * STEP);
}

#[test]
fn never_finer_than_the_users_rate() {
    let user = 512 * 1024;
    let mut g = Guard::new(1.0, costs(4_460.0), user);
    assert!(matches!(
        g.observe(1000, &busy(10, 1_000_000, 1000)),
        Some(Action::SampledLess { to, .. }) if to == user * STEP
    ));
    for t in 2..4 {
        assert_eq!(g.observe(t * 1000, &busy(0, 0, 1000)), None);
    }
    assert!(matches!(
        g.observe(4000, &busy(0, 0, 1000)),
        Some(Action::SampledMore { from, to, .. }) if from == user * STEP && to == user
    ));
    for t in 5..12 {
        assert_eq!(g.observe(t * 1000, &busy(0, 0, 1000)), None);
    }
    assert_eq!(g.rate, user);
    assert_eq!(next_finer(user * STEP, user), user);
    assert_eq!(next_finer(user * STEP * STEP, user), user * STEP);
    assert_eq!(next_finer(FIRST_RATE, 0), 0);
    assert_eq!(next_finer(FIRST_RATE * STEP, 0), FIRST_RATE);
}

#[test]
fn a_busy_window_restarts_the_count() {
    let mut g = backed_off_twice(5.0);
    assert_eq!(g.observe(3000, &light()), None);
    assert_eq!(g.observe(4000, &light()), None);
    // Under budget but not well under (about 3.5% of a 5% budget).
    let warm = busy(16_000, 16, 1000);
    let p = estimate(&warm, &costs(4_460.0)).percent;
    assert!(p > CALM_SHARE * 5.0 && p < 5.0, "{p}");
    assert_eq!(g.observe(5000, &warm), None);
    assert_eq!(g.observe(6000, &light()), None);
    assert_eq!(g.observe(7000, &light()), None);
    assert!(g.observe(8000, &light()).is_some());
}

#[test]
fn no_step_back_when_the_finer_rate_would_cross_the_budget() {
    let mut g = backed_off_twice(5.0);
    // Calm at 256 KiB (~2.3% of a 5% budget), but a quarter of the calls
    // are captured: four times as many would be ~4.6%, over the headroom.
    let w = busy(7_300, 1_825, 1000);
    let c = costs(4_460.0);
    let e = estimate(&w, &c);
    assert!(e.percent < CALM_SHARE * 5.0, "{}", e.percent);
    let p = predict(&e, &w, &c, FIRST_RATE * STEP, FIRST_RATE);
    assert!(p > STEP_BACK_HEADROOM * 5.0, "{p}");
    for t in 3..12 {
        assert_eq!(g.observe(t * 1000, &w), None);
    }
    assert_eq!(g.rate, FIRST_RATE * STEP);
}

#[test]
fn an_idle_target_completes_windows_by_session_time() {
    let mut g = backed_off_twice(5.0);
    // No CPU at all: a window closes every QUIET_WINDOW_MS of session time.
    let idle = Activity::default();
    let mut t = 2000;
    let mut windows = 0;
    while g.rate != FIRST_RATE {
        t += 500;
        let before = g.windows;
        g.observe(t, &idle);
        windows += g.windows - before;
        assert!(t < 60_000, "stepped back by {t} ms");
    }
    assert_eq!(windows, u64::from(CALM_WINDOWS));
    assert_eq!(g.last.expect("estimated").percent, 0.0);
}

#[test]
fn prediction_scales_the_captures() {
    let c = Costs {
        trap_ns: 0.0,
        call_ns: 0.0,
        capture_ns: 1000.0,
    };
    let w = busy(10_000, 100, 1000);
    let e = estimate(&w, &c);
    // 100 µs of captures in 1 s: 0.01%; four times as many: ~0.04%.
    let p = predict(&e, &w, &c, 4096, 1024);
    assert!((p - 0.04).abs() < 1e-3, "{p}");
    // Every allocation: all 10,000 calls captured, 10 ms.
    let all = predict(&e, &w, &c, 4096, 0);
    assert!((all - 100.0 * 0.01 / 1.0099).abs() < 1e-2, "{all}");
}

#[test]
fn cpu_time_from_proc_stat() {
    let line = "4242 (a (weird) name) R 1 4242 4242 0 -1 4194560 100 0 0 0 \
                250 50 0 0 20 0 3 0 100 1000 100";
    assert_eq!(parse_cpu(line, 100), Some(Duration::from_secs(3)));
    assert_eq!(parse_cpu("garbage", 100), None);
    assert_eq!(parse_cpu("1 (x) R 1", 100), None);
}
