use std::collections::VecDeque;

use profiler_common::{EventKind, ProcEvent, SampledFree};

use super::*;
use crate::events::testing::{bytes_of, Queue};

fn free(ptr: u64, ts_ns: u64) -> Vec<u8> {
    bytes_of(&SampledFree {
        kind: EventKind::SampledFree as u32,
        tgid: 1,
        ptr,
        tid: 1,
        who: 0,
        ts_ns,
    })
}

fn exit(tgid: u32, ts_ns: u64) -> Vec<u8> {
    bytes_of(&ProcEvent {
        kind: EventKind::Exit as u32,
        tgid,
        parent: 0,
        _pad: 0,
        ts_ns,
    })
}

fn queue(recs: Vec<Vec<u8>>) -> Queue {
    Queue(VecDeque::from(recs))
}

fn drain(m: &mut Merged<Queue>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while m.pop_into(&mut buf) {
        out.push(record_time(&buf));
        buf.clear();
    }
    out
}

#[test]
fn rings_come_out_in_time_order_each_in_its_own_order() {
    let mut m = Merged::new(vec![
        queue(vec![free(1, 10), exit(7, 30), free(3, 31)]),
        queue(vec![free(2, 20), free(4, 40)]),
        queue(vec![]),
    ]);
    assert_eq!(drain(&mut m), vec![10, 20, 30, 31, 40]);
}

#[test]
fn one_ring_is_passed_through_untouched() {
    // Out of time order within a ring (a program preempted between its
    // clock read and its reservation): the ring's order stands.
    let mut m = Merged::new(vec![queue(vec![free(1, 50), free(2, 10)])]);
    assert_eq!(drain(&mut m), vec![50, 10]);
}

/// A ring stand-in whose records appear only after it was looked at a
/// number of times (a record committed while the reader was at work).
struct Late {
    looks: usize,
    after: usize,
    recs: VecDeque<Vec<u8>>,
}

impl RecordSource for Late {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        self.looks += 1;
        if self.looks <= self.after {
            return false;
        }
        match self.recs.pop_front() {
            Some(r) => {
                buf.extend_from_slice(&r);
                true
            }
            None => false,
        }
    }
}

#[test]
fn an_empty_ring_is_looked_at_again_after_the_record_given_out_was_read() {
    // The allocation (ts 5) reaches its ring only after the first look at
    // it; its free (ts 9) is already in the other ring. The free must not
    // come first.
    let alloc_ring = Late {
        looks: 0,
        after: 1,
        recs: VecDeque::from(vec![free(0xa, 5)]),
    };
    let free_ring = Late {
        looks: 0,
        after: 0,
        recs: VecDeque::from(vec![free(0xa, 9)]),
    };
    let mut m = Merged::new(vec![alloc_ring, free_ring]);
    let mut buf = Vec::new();
    let mut order = Vec::new();
    while m.pop_into(&mut buf) {
        order.push(record_time(&buf));
        buf.clear();
    }
    assert_eq!(order, vec![5, 9]);
}

#[test]
fn a_malformed_record_goes_first_and_is_not_lost() {
    let mut m = Merged::new(vec![queue(vec![free(1, 10)]), queue(vec![vec![1, 2, 3]])]);
    let mut buf = Vec::new();
    assert!(m.pop_into(&mut buf));
    assert_eq!(buf, vec![1, 2, 3]);
    buf.clear();
    assert!(m.pop_into(&mut buf));
    assert_eq!(record_time(&buf), 10);
    buf.clear();
    assert!(!m.pop_into(&mut buf));
}

#[test]
fn the_ring_memory_is_split_over_the_cpus() {
    let page = 4096;
    // 2 CPUs: two rings of half the total.
    assert_eq!(
        RingPlan::new(8 << 20, 2, page),
        RingPlan {
            count: 2,
            bytes_each: 4 << 20
        }
    );
    // 3 CPUs: each ring rounded down to a power of two.
    assert_eq!(
        RingPlan::new(8 << 20, 3, page),
        RingPlan {
            count: 3,
            bytes_each: 2 << 20
        }
    );
    // 64 CPUs: at most MAX_RINGS rings.
    assert_eq!(
        RingPlan::new(8 << 20, 64, page).count,
        profiler_common::MAX_RINGS
    );
    // A small total keeps rings of at least 64 pages.
    assert_eq!(
        RingPlan::new(256 << 10, 8, page),
        RingPlan {
            count: 1,
            bytes_each: 256 << 10
        }
    );
    assert_eq!(RingPlan::new(8 << 20, 0, page).count, 1);
}

#[test]
fn more_records_than_are_read_ahead_still_merge_in_time_order() {
    let odd = (0..100).map(|i| free(i, 2 * i + 1)).collect();
    let even = (0..70).map(|i| free(i, 2 * i)).collect();
    let mut m = Merged::new(vec![queue(odd), queue(even), queue(vec![exit(9, 77)])]);
    let got = drain(&mut m);
    let mut want: Vec<u64> = (0..100)
        .map(|i| 2 * i + 1)
        .chain((0..70).map(|i| 2 * i))
        .collect();
    want.push(77);
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn large_records_are_read_ahead_by_bytes_and_still_merge_in_time_order() {
    let big = |ts: u64| {
        let mut r = free(ts, ts);
        r.resize(10 << 10, 0);
        r
    };
    let a = (0..20).map(|i| big(2 * i + 1)).collect();
    let b = (0..20).map(|i| big(2 * i)).collect();
    let mut m = Merged::new(vec![queue(a), queue(b)]);
    assert_eq!(drain(&mut m), (0..40).collect::<Vec<u64>>());
}
