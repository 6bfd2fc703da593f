//! Synthetic-timeline tests of the ranking and the retention finding.

use super::*;
use crate::timeline::testutil::{timeline_of, timeline_with_mem, Rng};
use crate::timeline::MemSample;

const N: usize = 120;

/// Per-tick noise in 0..amp, the same sequence for a given seed.
fn noise(seed: u64, amp: u64) -> impl Fn(usize) -> u64 {
    let mut rng = Rng(seed);
    let values: Vec<u64> = (0..N * 4).map(|_| rng.below(amp)).collect();
    move |i| values.get(i).copied().unwrap_or(0)
}

fn leaf_of(tl: &Timeline, s: &Suspect) -> String {
    tl.site(s.site)
        .and_then(|i| i.frames.last())
        .map(|f| f.label())
        .unwrap_or_default()
}

fn find<'a>(tl: &Timeline, suspects: &'a [Suspect], leaf: &str) -> Option<(usize, &'a Suspect)> {
    suspects
        .iter()
        .enumerate()
        .find(|(_, s)| leaf_of(tl, s) == leaf)
}

#[test]
fn steady_leak_ranks_above_sawtooth_plateau_and_stopped_leak() {
    let n1 = noise(1, 1500);
    let n2 = noise(2, 1500);
    let n3 = noise(3, 1500);
    let steady = move |i: usize| 10_000 + 2_000 * i as u64 + n1(i);
    let slower = move |i: usize| 10_000 + 700 * i as u64 + n2(i);
    // Rises 6 KB per tick for 20 ticks, then everything is freed: a big
    // sawtooth whose in-tooth slope is three times the steady leak's.
    let sawtooth = |i: usize| (i % 20) as u64 * 6_000;
    // A cache warming up for 10 ticks, then full.
    let plateau = move |i: usize| (i.min(10) as u64) * 30_000 + n3(i);
    // Leaks as fast as `steady` for half the window, then stops.
    let stopped = |i: usize| 2_000 * i.min(N / 2) as u64;
    let flat = |_: usize| 50_000;
    let tl = timeline_of(
        N,
        &[
            ("flat", &flat),
            ("sawtooth", &sawtooth),
            ("plateau", &plateau),
            ("stopped", &stopped),
            ("slower", &slower),
            ("steady", &steady),
        ],
    );
    let suspects = rank_suspects(&tl, Window::ALL);
    let names: Vec<String> = suspects.iter().map(|s| leaf_of(&tl, s)).collect();

    let (rank, top) = find(&tl, &suspects, "steady").expect("steady leak is a suspect");
    assert_eq!(rank, 0, "ranking: {names:?}");
    assert!(top.is_leak() && top.confidence > 0.8, "{top:?}");
    // 2000 B/s = 7.2 MB/h, within the noise.
    assert!(
        (top.slope_bytes_per_hour / 7.2e6 - 1.0).abs() < 0.05,
        "{top:?}"
    );
    assert!(top.grew_share > 0.95, "{top:?}");
    assert_eq!(top.live_bytes_start, steady(0));
    assert_eq!(top.live_bytes_end, steady(N - 1));

    let (slow_rank, slow) = find(&tl, &suspects, "slower").expect("slower leak");
    assert_eq!(slow_rank, 1, "ranking: {names:?}");
    assert!(slow.is_leak(), "{slow:?}");

    for weak in ["sawtooth", "plateau", "stopped"] {
        if let Some((r, s)) = find(&tl, &suspects, weak) {
            assert!(r > slow_rank, "{weak} ranks {r}: {names:?}");
            assert!(!s.is_leak(), "{weak} is not a leak: {s:?}");
        }
    }
    assert!(find(&tl, &suspects, "flat").is_none(), "{names:?}");
    let (_, stop) = find(&tl, &suspects, "stopped").expect("a stopped leak is still a suspect");
    assert!(stop.confidence < top.confidence / 2.0, "{stop:?}");
}

#[test]
fn leak_that_stops_ranks_below_the_same_leak_continuing() {
    let cont = |i: usize| 1_000 * i as u64;
    let stops = |i: usize| 1_000 * i.min(80) as u64;
    let tl = timeline_of(N, &[("stops", &stops), ("continues", &cont)]);
    let s = rank_suspects(&tl, Window::ALL);
    assert_eq!(leaf_of(&tl, &s[0]), "continues");
    let (_, stopped) = find(&tl, &s, "stops").expect("suspect");
    assert!(stopped.confidence < s[0].confidence);
    // Restricted to the part where it still leaked, it is a leak again.
    let early = rank_suspects(&tl, Window::parse("..70s").expect("window"));
    let (_, e) = find(&tl, &early, "stops").expect("suspect");
    assert!(e.is_leak(), "{e:?}");
}

/// A leak slower than the tick (one 64 KiB block every 10 ticks): it rises
/// at every one of its changes, in a tenth of the ticks. "Grew in 10% of
/// ticks" would read as an unsteady site; the share is over its changes.
#[test]
fn a_leak_slower_than_the_tick_rose_at_every_change() {
    let slow = |i: usize| 65_536 * (i / 10) as u64;
    let tl = timeline_of(N, &[("slow", &slow)]);
    let s = rank_suspects(&tl, Window::ALL);
    let (_, top) = find(&tl, &s, "slow").expect("suspect");
    assert!(top.is_leak(), "{top:?}");
    assert_eq!(top.changes, (N as u64 - 1) / 10);
    assert_eq!((top.rises, top.grew_share), (top.changes, 1.0));
}

#[test]
fn short_or_tiny_growth_is_not_a_suspect() {
    let leak = |i: usize| 100_000 * i as u64;
    let tl = timeline_of(N, &[("leak", &leak)]);
    // Four ticks: not enough points.
    assert!(rank_suspects(&tl, Window::parse("..3s").expect("w")).is_empty());
    // Growing a few bytes per tick: below one page over the window.
    let tiny = |i: usize| 10 * i as u64;
    let tl = timeline_of(N, &[("tiny", &tiny)]);
    assert!(rank_suspects(&tl, Window::ALL).is_empty());
    assert!(rank_suspects(&Timeline::default(), Window::ALL).is_empty());
}

#[test]
fn shrinking_site_is_not_a_suspect() {
    let shrink = |i: usize| 1_000_000 - 5_000 * i as u64;
    let tl = timeline_of(N, &[("shrink", &shrink)]);
    assert!(rank_suspects(&tl, Window::ALL).is_empty());
}

const MIB: u64 = 1 << 20;

fn mem(rss_anon: u64, heap: u64, arenas: u64) -> Option<MemSample> {
    Some(MemSample {
        rss_anon,
        rss_file: 10 * MIB,
        rss_shmem: 0,
        heap_mappings: heap,
        arena_heaps: arenas,
        ..MemSample::default()
    })
}

#[test]
fn rising_rss_with_flat_live_heap_is_retention_not_a_leak() {
    let n = noise(9, 64 * 1024);
    let live = move |i: usize| 4 * MIB + n(i);
    // RSS climbs 1 MiB per tick: arenas keep what was freed.
    let tl = timeline_with_mem(N, &[("cache", &live)], &|i, _| {
        mem(50 * MIB + i as u64 * MIB, 20 * MIB + i as u64 * MIB, 3)
    });
    let a = analyze(&tl, Window::ALL);
    assert!(a.suspects.iter().all(|s| !s.is_leak()), "{:?}", a.suspects);
    let r = a.retention.clone().expect("retention finding");
    assert_eq!(r.rss_anon_start, 50 * MIB);
    assert_eq!(r.rss_anon_end, 50 * MIB + (N as u64 - 1) * MIB);
    assert_eq!(
        r.gap_start,
        r.rss_anon_start as i64 - r.live_heap_start as i64
    );
    assert!(r.gap_end - r.gap_start > 100 * MIB as i64, "{r:?}");
    // 1 MiB/s = 3.5 GiB/h.
    let per_hour = (MIB * 3600) as f64;
    assert!(
        (r.gap_growth_bytes_per_hour / per_hour - 1.0).abs() < 0.05,
        "{r:?}"
    );
    assert!(
        r.live_growth_bytes_per_hour.abs() < per_hour / 100.0,
        "{r:?}"
    );
    assert_eq!(r.arena_heaps, 3);
    assert_eq!(r.heap_mappings_end, 20 * MIB + (N as u64 - 1) * MIB);
    assert_eq!(r.remedies.first(), Some(&retention::REMEDY_ARENA_MAX));
    assert_eq!(r.remedies.len(), 3);
    let kinds: Vec<&str> = a.findings.iter().map(Finding::kind).collect();
    assert_eq!(kinds, vec!["allocator-retention"]);
}

#[test]
fn real_leak_moves_rss_with_the_heap_and_is_not_retention() {
    // Leaks 1 MiB per tick; RSS follows with 10% allocator overhead, so the
    // gap grows too, but far less than the live heap.
    let leak = |i: usize| i as u64 * MIB;
    let tl = timeline_with_mem(N, &[("leak", &leak)], &|_, live| {
        mem(50 * MIB + live + live / 10, 20 * MIB + live, 0)
    });
    let a = analyze(&tl, Window::ALL);
    assert!(a.retention.is_none(), "{:?}", a.retention);
    let kinds: Vec<&str> = a.findings.iter().map(Finding::kind).collect();
    assert_eq!(kinds, vec!["leak"]);
    let Some(Finding::Leak(l)) = a.findings.first() else {
        panic!("no leak finding");
    };
    assert_eq!(l.frames.last().map(|f| f.label()).as_deref(), Some("leak"));
    assert_eq!(l.api, "malloc");
    assert_eq!(l.live_bytes_end, (N as u64 - 1) * MIB);
}

#[test]
fn flat_or_small_rss_growth_is_not_retention() {
    let live = |_: usize| 4 * MIB;
    let flat = timeline_with_mem(N, &[("x", &live)], &|_, _| mem(50 * MIB, 8 * MIB, 0));
    assert!(retention_finding(&flat, Window::ALL).is_none());
    // +2 MiB over two minutes: below the 8 MiB floor.
    let small = timeline_with_mem(N, &[("x", &live)], &|i, _| {
        mem(50 * MIB + i as u64 * MIB / 60, 8 * MIB, 0)
    });
    assert!(retention_finding(&small, Window::ALL).is_none());
    // No memory samples at all.
    let none = timeline_of(N, &[("x", &live)]);
    assert!(retention_finding(&none, Window::ALL).is_none());
    // A swinging RSS (up and down by 64 MiB) has no trend.
    let swing = timeline_with_mem(N, &[("x", &live)], &|i, _| {
        mem(50 * MIB + (i as u64 % 2) * 64 * MIB, 8 * MIB, 0)
    });
    assert!(retention_finding(&swing, Window::ALL).is_none());
}

#[test]
fn retention_without_arenas_suggests_trim_first() {
    let live = |_: usize| 4 * MIB;
    let tl = timeline_with_mem(N, &[("x", &live)], &|i, _| {
        mem(50 * MIB + i as u64 * MIB, 8 * MIB + i as u64 * MIB, 0)
    });
    let r = retention_finding(&tl, Window::ALL).expect("finding");
    assert_eq!(r.remedies.first(), Some(&retention::REMEDY_TRIM));
}
