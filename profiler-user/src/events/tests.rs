use super::testing::{bytes_of, Queue};
use super::*;

#[test]
fn decodes_each_kind_and_rejects_short_records() {
    let ev = MapEvent {
        kind: EventKind::Mmap as u32,
        tgid: 42,
        addr: 0x7000_0000,
        len: 8192,
        new_addr: 0,
        new_len: 0,
        ts_ns: 5,
        stack_id: 3,
        _pad: 0,
    };
    let b = bytes_of(&ev);
    assert_eq!(decode(&b), Some(Event::Map(ev)));
    assert_eq!(decode(&b[..10]), None);
    let mut t = ProcessRegions::default();
    assert!(apply_map(&ev, &mut t));
    assert_eq!(t.of(ev.tgid).stats()[&StackRef::Kernel(3)].live_bytes, 8192);

    let free = SampledFree {
        kind: EventKind::SampledFree as u32,
        tgid: 1,
        ptr: 2,
        tid: 4,
        who: 0,
        ts_ns: 6,
    };
    assert_eq!(decode(&bytes_of(&free)), Some(Event::SampledFree(free)));

    let h = SampleHeader {
        kind: EventKind::Sample as u32,
        tgid: 1,
        alloc_kind: AllocKind::Malloc as u32,
        stack_len: 16,
        ptr: 0x10,
        size: 8,
        est_bytes: 8,
        est_count: 1024,
        ts_ns: 0,
        ip: 1,
        sp: 2,
        bp: 3,
        pending_ret: [0; profiler_common::MAX_PENDING],
        pending_slot: [0; profiler_common::MAX_PENDING],
        n_pending: 0,
        tid: 0,
        chunk: 0,
    };
    let mut rec = bytes_of(&h);
    rec.extend_from_slice(&[7u8; 32]);
    match decode(&rec) {
        Some(Event::Sample(got, stack)) => {
            assert_eq!(got, h);
            assert_eq!(stack, &[7u8; 16][..]);
        }
        other => panic!("{other:?}"),
    }
    // A stack_len beyond the record is malformed, not a panic.
    let bad = SampleHeader {
        stack_len: 4096,
        ..h
    };
    assert_eq!(decode(&bytes_of(&bad)), None);
    assert_eq!(decode(&99u32.to_le_bytes()), None);
}

fn mmap_record(i: u64) -> Vec<u8> {
    bytes_of(&MapEvent {
        kind: EventKind::Mmap as u32,
        tgid: 1,
        addr: 0x1000_0000 + i * 0x10_0000,
        len: 4096,
        new_addr: 0,
        new_len: 0,
        ts_ns: i,
        stack_id: (i % 7) as i32,
        _pad: 0,
    })
}

#[test]
fn drain_is_bounded_per_batch_and_applies_everything_in_order() {
    let n = 10_000u64;
    let mut queue: std::collections::VecDeque<Vec<u8>> = (0..n).map(mmap_record).collect();
    queue.push_back(vec![1, 2, 3]); // malformed: counted, not applied
    let limits = DrainLimits {
        max_records: 64,
        max_bytes: 1 << 20,
    };
    let mut reader = EventReader::new(Queue(queue), limits);
    let mut regions = ProcessRegions::default();
    let mut samples = SampleTable::default();
    let mut unwinder = Unwinder::default();
    let mut extents = StackExtents::new(8192);
    let mut maps = MemoryMap::default();
    struct NoFiles;
    impl ModulePaths for NoFiles {
        fn open_path(
            &self,
            _: &MemoryMap,
            _: &crate::process::maps::Region,
        ) -> Option<std::path::PathBuf> {
            None
        }
    }
    let mut refresh = || None;
    let mut execs = Vec::new();
    let mut sink = EventSink {
        regions: &mut regions,
        samples: &mut samples,
        unwinder: &mut unwinder,
        extents: &mut extents,
        maps: &mut maps,
        others: &mut crate::process::maps::OtherMaps::default(),
        files: &NoFiles,
        refresh: &mut refresh,
        refreshed: false,
        home: None,
        execs: &mut execs,
        target: 0,
    };
    let mut batches = 0;
    let mut applied_before = 0;
    while reader.drain_batch(&mut sink) {
        batches += 1;
        // Never more than one batch of records is copied or applied at once.
        assert!(reader.batch.len() <= limits.max_records);
        assert_eq!(
            reader.stats.applied - applied_before,
            limits.max_records as u64
        );
        applied_before = reader.stats.applied;
    }
    // 10,001 records in batches of 64: 156 full batches, then a last one.
    assert_eq!(batches, 156);
    assert!(!reader.drain(&mut sink, 3), "the source is empty");
    assert_eq!(reader.stats.applied, n);
    assert_eq!(reader.stats.malformed, 1);
    assert_eq!(
        regions.stats().map(|(_, _, r)| r.alloc_count).sum::<u64>(),
        n
    );
}

#[test]
fn batch_stops_at_the_byte_limit_and_keeps_its_memory() {
    let big = vec![0u8; 10_000];
    let mut q = Queue((0..100).map(|_| big.clone()).collect());
    let limits = DrainLimits {
        max_records: 1000,
        max_bytes: 25_000,
    };
    let mut batch = Batch::default();
    assert!(batch.fill(&mut q, limits));
    assert_eq!(batch.len(), 3, "stops once 25,000 bytes are reached");
    assert!(batch.records().all(|r| r.len() == 10_000));
    let mut fills = 1;
    while batch.fill(&mut q, limits) {
        fills += 1;
        assert!(
            batch.data.capacity() <= 64 * 1024,
            "memory is reused, not grown"
        );
    }
    assert_eq!(fills, 33);
    assert_eq!(batch.len(), 1);
}

#[test]
fn records_left_at_stop_are_counted() {
    let q = Queue((0..10).map(mmap_record).collect());
    let mut reader = EventReader::new(q, DrainLimits::default());
    assert_eq!(reader.discard_rest(4), 4);
    assert_eq!(reader.discard_rest(100), 6);
    assert_eq!(reader.stats.unread_at_stop, 10);
}

#[test]
fn a_stack_unwound_again_after_a_refresh_counts_one_stop() {
    struct NoFiles;
    impl ModulePaths for NoFiles {
        fn open_path(
            &self,
            _: &MemoryMap,
            _: &crate::process::maps::Region,
        ) -> Option<std::path::PathBuf> {
            None
        }
    }
    let mut regions = ProcessRegions::default();
    let mut samples = SampleTable::default();
    let mut unwinder = Unwinder::default();
    let mut extents = StackExtents::new(8192);
    let mut maps = MemoryMap::default();
    let mut refreshes = 0;
    // An ip in no known mapping: the sink re-reads the map and unwinds again.
    let mut refresh = || {
        refreshes += 1;
        Some(MemoryMap::default())
    };
    let mut execs = Vec::new();
    let mut sink = EventSink {
        regions: &mut regions,
        samples: &mut samples,
        unwinder: &mut unwinder,
        extents: &mut extents,
        maps: &mut maps,
        others: &mut crate::process::maps::OtherMaps::default(),
        files: &NoFiles,
        refresh: &mut refresh,
        refreshed: false,
        home: None,
        execs: &mut execs,
        target: 1,
    };
    let h = SampleHeader {
        kind: EventKind::Sample as u32,
        tgid: 1,
        alloc_kind: AllocKind::Malloc as u32,
        stack_len: 0,
        ptr: 0x10,
        size: 8,
        est_bytes: 8,
        est_count: 1024,
        ts_ns: 0,
        ip: 0x1234,
        sp: 0x7000,
        bp: 0,
        pending_ret: [0; profiler_common::MAX_PENDING],
        pending_slot: [0; profiler_common::MAX_PENDING],
        n_pending: 0,
        tid: 0,
        chunk: 0,
    };
    let mut stats = EventStats::default();
    assert!(sink.apply(Event::Sample(h, &[]), &mut stats));
    assert_eq!(refreshes, 1, "the map was re-read once");
    assert_eq!(stats.samples, 1);
    assert_eq!(
        unwinder.stops.values().sum::<u64>(),
        1,
        "one stack, one stop reason: {:?}",
        unwinder.stops
    );
}
