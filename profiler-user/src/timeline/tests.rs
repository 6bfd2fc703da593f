use super::testutil::{site_info, stats, Rng};
use super::*;

fn tick(t_ms: u64, sites: &[(u32, u64, u64)]) -> Tick {
    Tick {
        t_ms,
        sites: sites
            .iter()
            .map(|&(id, live, alloc)| (SiteId(id), stats(live, alloc)))
            .collect(),
        totals: Totals {
            allocs: t_ms / 100,
            alloc_bytes: t_ms,
            ..Totals::default()
        },
        mem: None,
        arenas: Vec::new(),
    }
}

fn two_site_timeline() -> Timeline {
    let mut tl = Timeline::default();
    assert_eq!(tl.add_site(site_info("a", "malloc")), SiteId(0));
    assert_eq!(tl.add_site(site_info("b", "calloc")), SiteId(1));
    tl.push(tick(0, &[(0, 100, 100)]));
    tl.push(tick(1000, &[(0, 200, 300), (1, 50, 50)]));
    tl.push(tick(2000, &[(0, 200, 300), (1, 0, 80)]));
    tl.push(tick(3000, &[(0, 500, 900)]));
    tl
}

fn site_stats(p: &Profile, leaf: &str) -> Option<SiteStats> {
    p.sites
        .iter()
        .find(|s| s.frames.last().is_some_and(|f| f.label() == leaf))
        .map(|s| s.stats.clone())
}

#[test]
fn ticks_round_trip_through_sparse_storage() {
    let tl = two_site_timeline();
    let ticks = tl.ticks();
    assert_eq!(ticks.len(), 4);
    assert_eq!(ticks[1].sites.len(), 2);
    assert_eq!(
        ticks[2].sites,
        vec![(SiteId(0), stats(200, 300)), (SiteId(1), stats(0, 80))]
    );
    // Site 1 is absent at 3 s: all zero, so it is gone.
    assert_eq!(ticks[3].sites, vec![(SiteId(0), stats(500, 900))]);
    assert_eq!(ticks[3].totals.alloc_bytes, 3000);
}

#[test]
fn profile_of_window_diffs_allocations_and_takes_live_at_end() {
    let tl = two_site_timeline();
    let meta = ProfileMeta {
        pid: 7,
        comm: "x".into(),
        ..ProfileMeta::default()
    };
    let all = tl.profile_for(Window::ALL, &meta);
    assert_eq!((all.pid, all.comm.as_str()), (7, "x"));
    assert_eq!(all.duration_secs, 3.0);
    assert_eq!(site_stats(&all, "a"), Some(stats(500, 900)));
    assert!(site_stats(&all, "b").is_none(), "site b ended with nothing");
    assert_eq!(all.totals.alloc_bytes, 3000);

    // 1.5s..2s holds the 2 s tick; the tick before its start is 1 s.
    let w = Window::parse("1.5s..2s").expect("window");
    let p = tl.profile_for(w, &meta);
    assert_eq!(p.duration_secs, 1.0);
    let a = site_stats(&p, "a").expect("a");
    assert_eq!((a.live_bytes, a.alloc_bytes), (200, 0));
    let b = site_stats(&p, "b").expect("b");
    assert_eq!((b.live_bytes, b.alloc_bytes), (0, 30));
    assert_eq!(p.totals.alloc_bytes, 1000);
    assert_eq!(p.totals.allocs, 10);

    // A start before the first tick counts from zero.
    let p = tl.profile_for(Window::parse("0s..1s").expect("window"), &meta);
    assert_eq!(site_stats(&p, "a").map(|s| s.alloc_bytes), Some(300));
    // A window without ticks is empty.
    let p = tl.profile_for(Window::parse("10s..").expect("window"), &meta);
    assert!(p.sites.is_empty());
    assert_eq!(p.duration_secs, 0.0);
}

#[test]
fn range_selects_ticks_inside_the_window() {
    let tl = two_site_timeline();
    assert_eq!(tl.range(Window::ALL), 0..4);
    assert_eq!(tl.range(Window::parse("1s..2s").expect("w")), 1..3);
    assert_eq!(tl.range(Window::parse("..0.5s").expect("w")), 0..1);
    assert_eq!(tl.range(Window::parse("3.5s..").expect("w")), 4..4);
    assert_eq!(tl.span_ms(), Some((0, 3000)));
}

#[test]
fn out_of_order_tick_is_clamped() {
    let mut tl = two_site_timeline();
    tl.push(tick(10, &[]));
    assert_eq!(tl.tick_times().last(), Some(3000));
}

#[test]
fn downsampling_bounds_memory_and_keeps_values_exact() {
    let max = 64;
    let mut tl = Timeline::new(max);
    let a = tl.add_site(site_info("a", "malloc"));
    let b = tl.add_site(site_info("b", "malloc"));
    let mut rng = Rng(7);
    let mut expected: BTreeMap<u64, Vec<(SiteId, SiteStats)>> = BTreeMap::new();
    for i in 0..1000u64 {
        // Site b changes rarely, so its changes must survive dropped ticks.
        let mut sites = vec![(a, stats(i * 10 + 1, i * 20 + 1))];
        let b_live = (i / 37) * 5 + rng.below(2);
        if b_live > 0 {
            sites.push((b, stats(b_live, b_live)));
        }
        expected.insert(i * 1000, sites.clone());
        tl.push(Tick {
            t_ms: i * 1000,
            sites,
            totals: Totals::default(),
            mem: None,
            ..Default::default()
        });
        assert!(tl.len() <= max, "{} ticks stored", tl.len());
    }
    assert!(tl.len() >= max / 2);
    assert_eq!(tl.dropped_ticks() as usize, 1000 - tl.len());
    let ticks = tl.ticks();
    assert_eq!(ticks.first().map(|t| t.t_ms), Some(0), "first tick kept");
    assert_eq!(
        ticks.last().map(|t| t.t_ms),
        Some(999_000),
        "last tick kept"
    );
    for t in &ticks {
        assert_eq!(Some(&t.sites), expected.get(&t.t_ms), "at {} ms", t.t_ms);
    }
    // The newest ticks keep full resolution; older ones are coarser.
    let times: Vec<u64> = tl.tick_times().collect();
    let last_gap = times[times.len() - 1] - times[times.len() - 2];
    let first_gap = times[1] - times[0];
    assert_eq!(last_gap, 1000);
    assert!(first_gap > 1000);
}

#[test]
fn windows_outside_the_timeline_name_its_span() {
    let mut tl = Timeline::default();
    for t in [1000u64, 2000, 10_200] {
        tl.push(Tick {
            t_ms: t,
            sites: Vec::new(),
            totals: Default::default(),
            mem: None,
            ..Default::default()
        });
    }
    assert!(tl.check_window(Window::ALL).is_ok());
    assert!(tl.check_window(Window::parse("2s..3s").unwrap()).is_ok());
    let e = tl
        .check_window(Window::parse("1h..").unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "window 3600s.. holds no tick of the recording, which spans 1s..10.2s"
    );
    assert!(tl.check_window(Window::parse("..0.5s").unwrap()).is_err());
    assert!(tl.check_window(Window::parse("3s..4s").unwrap()).is_err());
    let huge = Window::parse("3000000000..").unwrap();
    assert!(tl.check_window(huge).is_err());
}
