use super::*;
use crate::events::testing::Queue;
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// A chunk of `records` in buffers of exactly their size.
fn chunk_of(records: &[&[u8]]) -> Batch {
    let mut src = Queue(records.iter().map(|r| r.to_vec()).collect());
    let mut b = Batch::default();
    b.fill(&mut src, DrainLimits::default());
    b.compact()
}

#[test]
fn the_queue_keeps_order_and_counts_bytes() {
    let q = RecordQueue::new(1 << 20);
    let stop = AtomicBool::new(false);
    q.push(chunk_of(&[b"ab", b"c"]), &stop);
    q.push(chunk_of(&[b"defg"]), &stop);
    let first = q.pop().unwrap();
    let second_size = q.bytes();
    assert!(second_size >= 4 + 8, "buffers counted: {second_size}");
    assert_eq!(first.record(0), Some(&b"ab"[..]));
    assert_eq!(first.record(1), Some(&b"c"[..]));
    assert_eq!(first.record(2), None);
    assert_eq!(q.pop().unwrap().record(0), Some(&b"defg"[..]));
    assert!(q.pop().is_none());
    assert_eq!((q.bytes(), q.full_waits()), (0, 0));
    assert!(q.peak_bytes() >= 7);
}

#[test]
fn a_full_queue_holds_the_pusher_until_there_is_room_and_counts_it() {
    let first = chunk_of(&[b"12345678"]);
    let cap = first.capacity();
    let q = Arc::new(RecordQueue::new(cap));
    let stop = Arc::new(AtomicBool::new(false));
    q.push(first, &stop);
    let (q2, stop2) = (Arc::clone(&q), Arc::clone(&stop));
    let pusher = std::thread::spawn(move || q2.push(chunk_of(&[b"9"]), &stop2));
    // The second chunk cannot be in before the first is out.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(q.bytes(), cap, "bound held");
    assert_eq!(q.pop().unwrap().record(0), Some(&b"12345678"[..]));
    pusher.join().unwrap();
    assert_eq!(q.pop().unwrap().record(0), Some(&b"9"[..]));
    assert_eq!(q.full_waits(), 1);
    assert_eq!(q.peak_bytes(), cap);
}

#[test]
fn an_empty_queue_takes_a_chunk_larger_than_its_bound_and_stop_never_waits() {
    let q = RecordQueue::new(4);
    let stop = AtomicBool::new(false);
    let big = chunk_of(&[b"0123456789"]);
    let size = big.capacity();
    q.push(big, &stop);
    assert_eq!(q.bytes(), size);
    stop.store(true, Ordering::Release);
    // Over the bound, but the pump is stopping: kept, not dropped.
    q.push(chunk_of(&[b"x"]), &stop);
    assert_eq!(q.pop().unwrap().record(0), Some(&b"0123456789"[..]));
    assert_eq!(q.pop().unwrap().record(0), Some(&b"x"[..]));
    assert_eq!(q.full_waits(), 0);
}

/// A ring stand-in shared with the test, readable through a pipe.
struct FakeRing {
    records: Arc<Mutex<VecDeque<Vec<u8>>>>,
    fd: std::io::PipeReader,
}

impl RecordSource for FakeRing {
    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        match self.records.lock().unwrap().pop_front() {
            Some(r) => {
                buf.extend_from_slice(&r);
                true
            }
            None => false,
        }
    }
}

impl AsFd for FakeRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl WaitReady for FakeRing {
    fn wait_ready(&self, timeout: Duration) {
        wait_readable(&[self.fd.as_fd()], timeout);
    }
}

type Records = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// A ring stand-in, always readable as a ring with records is (while the
/// returned writer lives), and the queue of its records.
fn fake_ring() -> (Records, FakeRing, std::io::PipeWriter) {
    let records = Arc::new(Mutex::new(VecDeque::new()));
    let (r, mut w) = std::io::pipe().unwrap();
    std::io::Write::write_all(&mut w, b"x").unwrap();
    let ring = FakeRing {
        records: Arc::clone(&records),
        fd: r,
    };
    (records, ring, w)
}

/// Reads `n` records through `p`, waiting on its descriptor as the capture
/// thread does.
fn read_n(p: &mut Pumped<FakeRing>, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n && Instant::now() < deadline {
        let mut buf = Vec::new();
        if p.pop_into(&mut buf) {
            out.push(buf);
        } else {
            wait_readable(&[p.ready_fd()], Duration::from_millis(20));
        }
    }
    out
}

#[test]
fn records_arrive_in_ring_order_through_the_pump_and_after_it_stopped() {
    let (records, ring, _w) = fake_ring();
    let want: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    records.lock().unwrap().extend(want[..2000].iter().cloned());
    let mut p = start(ring, 1024, false).unwrap();
    let mut got = read_n(&mut p, 1000);
    records
        .lock()
        .unwrap()
        .extend(want[2000..2500].iter().cloned());
    got.extend(read_n(&mut p, 1500));
    p.stop_pump();
    // Written after the pump stopped: read from the ring itself.
    records.lock().unwrap().extend(want[2500..].iter().cloned());
    got.extend(read_n(&mut p, 500));
    assert_eq!(got, want);
    let mut buf = Vec::new();
    assert!(!p.pop_into(&mut buf));
    assert!(
        p.queue().peak_bytes() <= 1024 + CHUNK.max_bytes + MAX_RECORD + 8 * CHUNK.max_records,
        "bounded"
    );
}

#[test]
fn whole_chunks_are_taken_without_copies_and_mixed_reads_keep_ring_order() {
    let (records, ring, _w) = fake_ring();
    let want: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
    records.lock().unwrap().extend(want.iter().cloned());
    let mut p = start(ring, 1 << 20, false).unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut whole = 0;
    let mut batch = Batch::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut turn = 0u32;
    while got.len() < want.len() && Instant::now() < deadline {
        turn += 1;
        // Every third turn a record copied (a chunk begun), else batches:
        // the rest of a begun chunk, or whole chunks.
        let mut buf = Vec::new();
        if turn.is_multiple_of(3) && p.pop_into(&mut buf) {
            got.push(buf);
        } else if p.take_batch(&mut batch, DrainLimits::default()) {
            whole += 1;
            got.extend(batch.records().map(<[u8]>::to_vec));
        } else {
            wait_readable(&[p.ready_fd()], Duration::from_millis(20));
        }
    }
    assert_eq!(got, want);
    assert!(whole > 1, "batches taken");
    // A chunk over the limits is refused, then read record by record.
    records.lock().unwrap().extend(want.iter().cloned());
    let one = DrainLimits {
        max_records: 1,
        max_bytes: 1,
    };
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want.len() && Instant::now() < deadline {
        let mut buf = Vec::new();
        if p.take_batch(&mut batch, one) {
            assert_eq!(batch.len(), 1, "within the limits");
            got.extend(batch.records().map(<[u8]>::to_vec));
        } else if p.pop_into(&mut buf) {
            got.push(buf);
        } else {
            wait_readable(&[p.ready_fd()], Duration::from_millis(20));
        }
    }
    assert_eq!(got, want);
}

#[test]
fn fill_more_appends_after_what_the_batch_holds() {
    let mut b = Batch::default();
    let mut src = Queue((0..5u8).map(|i| vec![i]).collect());
    let two = DrainLimits {
        max_records: 2,
        max_bytes: usize::MAX,
    };
    assert!(b.fill(&mut src, two), "stopped at the limit");
    let four = DrainLimits {
        max_records: 4,
        ..two
    };
    assert!(b.fill_more(&mut src, four));
    let got: Vec<&[u8]> = b.records().collect();
    assert_eq!(got, vec![&[0u8][..], &[1], &[2], &[3]]);
    assert!(
        !b.fill_more(&mut src, DrainLimits::default()),
        "source empty"
    );
    assert_eq!(b.len(), 5);
}
