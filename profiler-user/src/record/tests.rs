//! Round trip, golden file, truncation and fuzzing of the recording format.

use std::path::{Path, PathBuf};

use super::format::{self, Header};
use super::*;
use crate::process::arenas::Home;
use crate::profile::{SiteStats, Totals};
use crate::timeline::testutil::{frame, frame_src, frame_unknown, stats, Rng};
use crate::timeline::{ArenaSample, MemSample, SiteId, SiteInfo, Tick, DEFAULT_MAX_TICKS};

pub(super) const NAME: &str = "test.heapscope";

pub(super) fn header() -> Header {
    Header {
        pid: 4242,
        comm: "leaky".into(),
        start_unix_ms: 1_700_000_000_123,
        tick_ms: 1000,
        heapscope_version: "0.1.0".into(),
        sample_rate: 4096,
        allocator: "allocator: jemalloc 5.3.0, preloaded; 48 entry points".into(),
        allocator_notes: vec!["calloc is single-stepped".into()],
    }
}

pub(super) fn sites() -> Vec<SiteInfo> {
    vec![
        SiteInfo {
            pid: 4242,
            frames: vec![frame("main"), frame("leak_malloc")].into(),
            api: "malloc",
        },
        SiteInfo {
            pid: 4242,
            frames: vec![
                frame("main"),
                frame_src("vector<int>::push_back", "/src/v.h", 42, true),
                frame_unknown("libplugin.so", 0x1234),
            ]
            .into(),
            api: "realloc",
        },
        SiteInfo {
            pid: 4242,
            frames: vec![].into(),
            api: "mmap",
        },
    ]
}

pub(super) fn ticks() -> Vec<Tick> {
    let mem = |i: u64| MemSample {
        rss_anon: 10 << 20 | i,
        rss_file: 3 << 20,
        rss_shmem: 4096,
        heap_mappings: 8 << 20,
        arena_heaps: 2,
        allocator_mapped: i * 7,
        main_heap_resident: 5 << 20,
        arenas: 1,
        arena_reserved: 4 << 20,
        arena_resident: 3 << 20 | i,
        mmapped_chunks: i,
        mmapped_bytes: i << 20,
        mmapped_resident: i << 20,
    };
    (0..6u64)
        .map(|i| {
            let mut sites = vec![(SiteId(0), stats(100 * i, 150 * i))];
            // Site 1 is busy, then gone (all freed, counters reset: evicted).
            if (1..4).contains(&i) {
                sites.push((SiteId(1), stats(7, 300 * i)));
            }
            if i >= 2 {
                // Blocks of this site were freed by other threads.
                let mut s = stats(1 << 20, 1 << 20);
                s.cross_free_bytes = 4096 * (i - 1);
                s.cross_free_count = i - 1;
                sites.push((SiteId(2), s));
            }
            Tick {
                t_ms: i * 1000,
                sites: sites
                    .into_iter()
                    .filter(|(_, s)| *s != SiteStats::default())
                    .collect(),
                totals: Totals {
                    allocs: 10 * i,
                    alloc_bytes: 1000 * i,
                    frees: 9 * i,
                    untracked_unmaps: i,
                    ..Totals::default()
                },
                mem: (i % 2 == 0).then(|| mem(i)),
                arenas: if i % 2 == 0 { arenas(i) } else { Vec::new() },
            }
        })
        .collect()
}

/// glibc's arenas at tick `i`.
fn arenas(i: u64) -> Vec<ArenaSample> {
    vec![
        ArenaSample {
            home: Home::Main,
            heaps: 1,
            reserved: 5 << 20,
            resident: 5 << 20,
            live: 100 * i,
        },
        ArenaSample {
            home: Home::Arena(0x7f00_0000_0020),
            heaps: 2,
            reserved: 4 << 20,
            resident: 3 << 20 | i,
            live: 1 << 20,
        },
    ]
}

/// Today's ticks as a writer without cross-thread frees and arenas wrote them.
fn ticks_without_extras() -> Vec<Tick> {
    let mut out = ticks();
    for t in &mut out {
        t.arenas.clear();
        for (_, s) in &mut t.sites {
            s.cross_free_bytes = 0;
            s.cross_free_count = 0;
        }
    }
    out
}

/// A recording written before cross-thread frees and arenas were stored
/// reads as today's without them.
#[test]
fn recordings_without_tick_extras_still_read() {
    let old = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/recording_v1_no_arenas.bin"),
    )
    .expect("old golden");
    let old = read_bytes(&old).expect("old recording reads");
    assert_eq!(old.timeline.ticks(), ticks_without_extras());
    assert_eq!(old.skipped_records, 0);
}

/// The bytes of the sample recording, with or without the end record.
/// The processes of the golden recording: the header's, and a child.
pub(super) fn processes() -> Vec<crate::profile::ProcessInfo> {
    vec![
        crate::profile::ProcessInfo {
            pid: 4242,
            parent: 0,
            comm: "leaky".into(),
            cmdline: "./leaky --size 4096".into(),
        },
        crate::profile::ProcessInfo {
            pid: 4250,
            parent: 4242,
            comm: "leaky".into(),
            cmdline: String::new(),
        },
    ]
}

pub(super) fn recording_bytes(finish: bool) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), Path::new(NAME), &header()).expect("writer");
    for p in processes() {
        w.process(&p).expect("process");
    }
    for s in sites() {
        w.site(&s).expect("site");
    }
    for t in ticks() {
        w.tick(&t).expect("tick");
    }
    if finish {
        w.finish(5500).expect("finish")
    } else {
        w.into_inner().expect("flush")
    }
}

pub(super) fn read_bytes(b: &[u8]) -> Result<Recording, RecordError> {
    read(b, Path::new(NAME), DEFAULT_MAX_TICKS)
}

/// End offsets of the records of a valid file: (type, end offset).
pub(super) fn record_ends(b: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut at = format::FILE_HEADER_LEN;
    while at + 5 <= b.len() {
        let len = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        let end = at + 9 + len;
        out.push((b[at + 4], end));
        at = end;
    }
    assert_eq!(at, b.len(), "test walker out of sync");
    out
}

/// A recording written before the allocator-footprint totals existed
/// (16 totals per tick) reads as today's, the new totals 0.
#[test]
fn recordings_with_fewer_totals_still_read() {
    let old = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/recording_v1_16_totals.bin"),
    )
    .expect("old golden");
    let old = read_bytes(&old).expect("old recording reads");
    // The old file also predates the allocator line and glibc's footprint
    // split, which read as empty: compare with today's writer given none.
    let mut h = header();
    h.allocator.clear();
    h.allocator_notes.clear();
    let mut w = Writer::new(Vec::new(), Path::new(NAME), &h).expect("writer");
    for s in sites() {
        w.site(&s).expect("site");
    }
    for mut t in ticks_without_extras() {
        if let Some(m) = &mut t.mem {
            *m = MemSample {
                rss_anon: m.rss_anon,
                rss_file: m.rss_file,
                rss_shmem: m.rss_shmem,
                heap_mappings: m.heap_mappings,
                arena_heaps: m.arena_heaps,
                allocator_mapped: m.allocator_mapped,
                ..MemSample::default()
            };
        }
        w.tick(&t).expect("tick");
    }
    let new = read_bytes(&w.finish(5500).expect("finish")).expect("new recording reads");
    assert_eq!(format!("{old:?}"), format!("{new:?}"));
}

#[test]
fn round_trip_golden() {
    let bytes = recording_bytes(true);
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/recording_v1.bin");
    if std::env::var("HEAPSCOPE_BLESS").as_deref() == Ok("1") {
        std::fs::write(&golden, &bytes).expect("bless golden");
    }
    let expected = std::fs::read(&golden).expect("golden (HEAPSCOPE_BLESS=1 creates it)");
    assert!(
        expected == bytes,
        "writer output differs from {}",
        golden.display()
    );

    // The golden file reads back to exactly what was written.
    let rec = open(&golden).expect("open golden");
    assert_eq!(rec.header, header());
    assert_eq!(rec.timeline.sites(), sites().as_slice());
    assert_eq!(rec.timeline.processes(), processes().as_slice());
    assert_eq!(rec.timeline.ticks(), ticks());
    assert_eq!(rec.end_ms, Some(5500));
    assert!(!rec.truncated);
    assert_eq!(rec.skipped_records, 0);
}

/// A recording written before sites had a process (no pid in site
/// records, no process records) reads with every site in the header's
/// process, and that process as the only one.
#[test]
fn recordings_before_processes_still_read() {
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/recording_v1_before_pids.bin");
    let rec = open(&golden).expect("open the old golden");
    assert_eq!(rec.timeline.sites(), sites().as_slice());
    assert_eq!(
        rec.timeline.processes(),
        &[crate::profile::ProcessInfo {
            pid: 4242,
            comm: "leaky".into(),
            ..Default::default()
        }]
    );
    assert_eq!(rec.timeline.ticks(), ticks_without_extras());
    assert_eq!(rec.skipped_records, 0);
    assert!(rec.damage.is_empty());
}

/// A later record of a process replaces the earlier one (a name after exec).
#[test]
fn a_later_process_record_replaces_the_earlier() {
    let mut w = Writer::new(Vec::new(), Path::new(NAME), &header()).expect("writer");
    let mut p = processes()[1].clone();
    w.process(&p).expect("process");
    p.comm = "leaky → helper".into();
    w.process(&p).expect("process");
    let rec = read_bytes(&w.finish(1).expect("finish")).expect("reads");
    assert_eq!(rec.timeline.processes(), &[p]);
}

#[test]
fn file_writer_creates_a_readable_file() {
    let path =
        std::env::temp_dir().join(format!("heapscope-test-{}.heapscope", std::process::id()));
    let mut w = Writer::create(&path, &header()).expect("create");
    for s in sites() {
        w.site(&s).expect("site");
    }
    w.tick(&ticks()[1]).expect("tick");
    // No finish: as if the profiler were killed after the tick's flush.
    let rec = open(&path).expect("open");
    drop(w);
    let _ = std::fs::remove_file(&path);
    assert_eq!(rec.timeline.len(), 1);
    assert_eq!(rec.end_ms, None);
    assert!(!rec.truncated);
}

#[test]
fn every_prefix_opens_up_to_its_last_whole_tick() {
    let bytes = recording_bytes(true);
    let ends = record_ends(&bytes);
    let header_end = ends[0].1;
    let all_ticks = ticks();
    for len in 0..=bytes.len() {
        let result = read_bytes(&bytes[..len]);
        if len < header_end {
            let err = result.expect_err("no header yet");
            let msg = err.to_string();
            assert!(msg.contains(NAME), "{msg}");
            continue;
        }
        let rec = result.unwrap_or_else(|e| panic!("prefix {len}: {e}"));
        let whole: Vec<u8> = ends
            .iter()
            .filter(|(_, e)| *e <= len)
            .map(|(t, _)| *t)
            .collect();
        let n_ticks = whole.iter().filter(|t| **t == format::TYPE_TICK).count();
        assert_eq!(rec.timeline.ticks(), all_ticks[..n_ticks], "prefix {len}");
        let at_boundary = len == format::FILE_HEADER_LEN || ends.iter().any(|(_, e)| *e == len);
        assert_eq!(rec.truncated, !at_boundary, "prefix {len}");
        assert_eq!(rec.end_ms.is_some(), len == bytes.len(), "prefix {len}");
    }
}

#[test]
fn random_mutations_never_panic() {
    let bytes = recording_bytes(true);
    let mut rng = Rng(0x5eed);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..5000 {
        let mut b = bytes.clone();
        match rng.below(4) {
            // Flip 1-4 random bytes.
            0 | 1 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] = rng.next() as u8;
                }
            }
            // Cut at a random point and append garbage.
            2 => {
                b.truncate(rng.below(b.len() as u64) as usize);
                for _ in 0..rng.below(40) {
                    b.push(rng.next() as u8);
                }
            }
            // Overwrite a record length with a random (often huge) value.
            _ => {
                let ends = record_ends(&bytes);
                let (_, end) = ends[rng.below(ends.len() as u64) as usize];
                let start = ends.iter().map(|(_, e)| *e).filter(|e| *e < end).max();
                let at = start.unwrap_or(format::FILE_HEADER_LEN);
                b[at..at + 4].copy_from_slice(&(rng.next() as u32).to_le_bytes());
            }
        }
        match read_bytes(&b) {
            Ok(rec) => {
                ok += 1;
                assert!(rec.timeline.len() <= ticks().len());
                assert!(rec.timeline.sites().len() <= sites().len());
                for d in &rec.damage {
                    assert!(d.offset + d.bytes <= b.len() as u64, "{d:?}");
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().contains(NAME), "{e}");
            }
        }
    }
    // Both outcomes occur: the test exercises the error paths (a damaged
    // header) and the tolerated paths (a damaged tail, skipped damage).
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
    // Pure garbage too.
    for len in [0usize, 1, 11, 12, 13, 100, 4096] {
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert!(read_bytes(&junk).is_err());
    }
}

#[test]
fn clear_errors_for_bad_files() {
    let bytes = recording_bytes(true);

    let mut b = bytes.clone();
    b[0] = b'X';
    let e = read_bytes(&b).expect_err("bad magic");
    assert_eq!(
        e.to_string(),
        format!("{NAME} is not a heapscope recording (bad magic)")
    );

    let e = read_bytes(b"HEAPS").expect_err("short");
    assert!(matches!(e, RecordError::TooShort { len: 5, .. }), "{e}");

    let mut b = bytes.clone();
    b[8] = 9;
    let e = read_bytes(&b).expect_err("version");
    assert!(e.to_string().contains("version 9"), "{e}");

    // A damaged byte inside the third tick: skipped, named by its offset.
    let ends = record_ends(&bytes);
    let tick_starts: Vec<usize> = ends
        .windows(2)
        .filter(|w| w[1].0 == format::TYPE_TICK)
        .map(|w| w[0].1)
        .collect();
    let at = tick_starts[2];
    let mut b = bytes.clone();
    b[at + 6] ^= 0xff;
    let rec = read_bytes(&b).expect("damage is skipped");
    assert_eq!(
        rec.damage_summary().as_deref(),
        Some(format!("damaged at byte {at}: record checksum mismatch; 1 record skipped").as_str())
    );
    assert_eq!(rec.timeline.len(), ticks().len() - 1);
    assert_eq!(rec.end_ms, Some(5500));

    // The same damage in the last record is a cut-off tail.
    let last = ends[ends.len() - 2].1;
    let mut b = bytes.clone();
    b[last + 5] ^= 0xff;
    let rec = read_bytes(&b).expect("damaged tail");
    assert!(rec.truncated && rec.end_ms.is_none());
    assert_eq!(rec.timeline.len(), ticks().len());

    let e = open(Path::new("/nonexistent/x.heapscope")).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "cannot read recording /nonexistent/x.heapscope"
    );
}

#[test]
fn unknown_record_types_are_skipped() {
    let mut bytes = recording_bytes(false);
    format::frame_record(99, b"from the future", &mut bytes);
    let rec = read_bytes(&bytes).expect("read");
    assert_eq!(rec.skipped_records, 1);
    assert_eq!(rec.timeline.ticks(), ticks());
}

#[test]
fn writer_rejects_misuse() {
    let mut w = Writer::new(Vec::new(), Path::new(NAME), &header()).expect("writer");
    let unknown_site = Tick {
        t_ms: 0,
        sites: vec![(SiteId(0), stats(1, 1))],
        ..Tick::default()
    };
    let e = w.tick(&unknown_site).expect_err("site not written");
    assert!(
        e.to_string().contains("site 0 before it was written"),
        "{e}"
    );
    w.site(&sites()[0]).expect("site");
    w.tick(&Tick {
        t_ms: 2000,
        ..Tick::default()
    })
    .expect("tick");
    let e = w
        .tick(&Tick {
            t_ms: 1000,
            ..Tick::default()
        })
        .expect_err("back in time");
    assert!(e.to_string().contains("1000 ms"), "{e}");
}

/// The overhead guard's windows read back into the timeline; the rest of
/// the recording reads as without them (older readers skip type 7).
#[test]
fn guard_windows_round_trip() {
    use crate::timeline::GuardPoint;
    let point = |t_ms, from, rate| GuardPoint {
        t_ms,
        budget_centi: 200,
        percent_centi: 3150,
        from,
        rate,
        floor: false,
    };
    let mut w = Writer::new(Vec::new(), Path::new(NAME), &header()).expect("writer");
    for s in sites() {
        w.site(&s).expect("site");
    }
    let ticks = ticks();
    let points: Vec<_> = ticks
        .iter()
        .enumerate()
        .map(|(i, t)| point(t.t_ms, 256 << i, 256 << (i + 1)))
        .collect();
    for (t, p) in ticks.iter().zip(&points) {
        w.guard(p).expect("guard");
        w.tick(t).expect("tick");
    }
    let bytes = w.finish(9000).expect("finish");
    let rec = read_bytes(&bytes).expect("read");
    assert_eq!(rec.timeline.ticks(), ticks);
    let g = rec.timeline.guard().expect("guard windows");
    assert_eq!(g.changes, points);
    assert_eq!(g.windows, points.len() as u64);
    assert_eq!(rec.skipped_records, 0);
}
