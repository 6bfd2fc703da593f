//! The glibc chunk headers of a batch's sampled blocks, read in one go
//! before the batch is applied: the probe no longer reads them (that read
//! cost the target ~57 ns per sample), heapscope reads them all with one
//! `process_vm_readv` per process (see `process::vm`). A block may have
//! been freed by then; `process::arenas::home_from_head` explains why its
//! home is still right, or not given. A block its address places (inside a
//! non-main heap or `[heap]`: nearly all of them) needs no header, and its
//! header is not read (the reads were ~12% of the capture thread's CPU
//! under `--exact`).

use profiler_common::AllocKind;

use super::{decode, Batch, Event};
use crate::process::arenas::{ChunkHead, Home};
use crate::process::vm::{read_pieces, Piece, VmRead};

/// What is known of a sampled block's home before its record is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Known {
    /// Nothing: not a sample, an mmap, or its header was unreadable.
    #[default]
    Nothing,
    /// Its address placed it.
    Home(Home),
    /// Its chunk header, read for the batch.
    Head(ChunkHead),
}

/// Chunk headers of one batch, by record index; buffers reused between
/// batches.
#[derive(Debug, Default)]
pub struct ChunkReads {
    /// Record index and (process, `ptr - 16`) of each sampled heap block
    /// its address does not place.
    index: Vec<usize>,
    wanted: Vec<(u32, u64)>,
    got: Vec<Option<Piece>>,
    /// Per record: its home or its header, when known.
    known: Vec<Known>,
}

impl ChunkReads {
    /// Places the batch's samples of heap blocks (not the mmap family:
    /// those are no chunks) by address with `by_address`, and reads the
    /// headers of the others through `mem`; returns the number of calls.
    pub fn prefetch(
        &mut self,
        batch: &Batch,
        mem: &dyn VmRead,
        by_address: &dyn Fn(u32, u64) -> Option<Home>,
    ) -> u64 {
        self.clear();
        self.known.resize(batch.len(), Known::Nothing);
        for (i, rec) in batch.records().enumerate() {
            let Some(Event::Sample(h, _)) = decode(rec) else {
                continue;
            };
            if h.alloc_kind == AllocKind::Mmap as u32 {
                continue;
            }
            if let Some(home) = by_address(h.tgid, h.ptr) {
                self.known[i] = Known::Home(home);
                continue;
            }
            if let Some(addr) = h.ptr.checked_sub(16) {
                self.index.push(i);
                self.wanted.push((h.tgid, addr));
            }
        }
        if self.wanted.is_empty() {
            return 0;
        }
        let calls = read_pieces(mem, &self.wanted, &mut self.got);
        for (&i, piece) in self.index.iter().zip(&self.got) {
            if let Some([prev_size, size]) = *piece {
                self.known[i] = Known::Head(ChunkHead { prev_size, size });
            }
        }
        calls
    }

    /// Forgets the last batch's headers.
    pub fn clear(&mut self) {
        self.index.clear();
        self.wanted.clear();
        self.got.clear();
        self.known.clear();
    }

    /// What is known of record `i` of the last prefetched batch.
    pub fn known(&self, i: usize) -> Known {
        self.known.get(i).copied().unwrap_or_default()
    }

    /// The header of record `i` of the last prefetched batch, if read.
    pub fn head(&self, i: usize) -> Option<ChunkHead> {
        match self.known(i) {
            Known::Head(h) => Some(h),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use profiler_common::{EventKind, MapEvent, SampleHeader};

    use super::*;
    use crate::events::testing::{bytes_of, Queue};
    use crate::events::DrainLimits;
    use crate::process::vm::IOV_MAX;

    fn sample(tgid: u32, ptr: u64, kind: AllocKind) -> Vec<u8> {
        bytes_of(&SampleHeader {
            kind: EventKind::Sample as u32,
            tgid,
            alloc_kind: kind as u32,
            stack_len: 0,
            ptr,
            size: 8,
            est_bytes: 8,
            est_count: 1,
            ts_ns: 0,
            ip: 0,
            sp: 0,
            bp: 0,
            pending_ret: [0; profiler_common::MAX_PENDING],
            pending_slot: [0; profiler_common::MAX_PENDING],
            n_pending: 0,
            tid: tgid,
            chunk: 0,
        })
    }

    /// Memory holding header `[ptr - 16, ptr]` for every 16-aligned address
    /// below 0x100_0000 except multiples of 0x1000 (unmapped); records
    /// each call's (pid, pieces).
    struct FakeVm(RefCell<Vec<(u32, usize)>>);

    impl VmRead for FakeVm {
        fn read(&self, pid: u32, addrs: &[u64], out: &mut [Piece]) -> std::io::Result<usize> {
            self.0.borrow_mut().push((pid, addrs.len()));
            for (n, &a) in addrs.iter().enumerate() {
                if a % 0x1000 == 0 || a >= 0x100_0000 {
                    return match n {
                        0 => Err(std::io::Error::from_raw_os_error(libc::EFAULT)),
                        _ => Ok(n),
                    };
                }
                out[n] = [a, a + 16];
            }
            Ok(addrs.len())
        }
    }

    fn batch_of(records: Vec<Vec<u8>>) -> Batch {
        let n = records.len();
        let mut batch = Batch::default();
        let limits = DrainLimits {
            max_records: n,
            max_bytes: usize::MAX,
        };
        assert!(batch.fill(&mut Queue(records.into()), limits) || batch.len() == n);
        assert_eq!(batch.len(), n);
        batch
    }

    #[test]
    fn reads_the_headers_of_heap_samples_only() {
        let map = bytes_of(&MapEvent {
            kind: EventKind::Mmap as u32,
            tgid: 1,
            addr: 0x7000_0000,
            len: 8192,
            new_addr: 0,
            new_len: 0,
            ts_ns: 0,
            stack_id: 0,
            _pad: 0,
        });
        let batch = batch_of(vec![
            sample(1, 0x2030, AllocKind::Malloc),
            map,
            sample(1, 0x3010, AllocKind::Mmap),
            sample(1, 0x1010, AllocKind::Calloc),
            sample(2, 0x4030, AllocKind::Malloc),
            sample(1, 0x8, AllocKind::Malloc),
        ]);
        let vm = FakeVm(RefCell::new(Vec::new()));
        let mut reads = ChunkReads::default();
        assert_eq!(reads.prefetch(&batch, &vm, &|_, _| None), 3);
        let head = |prev_size, size| Some(ChunkHead { prev_size, size });
        assert_eq!(reads.head(0), head(0x2020, 0x2030));
        assert_eq!(reads.head(1), None, "not a sample");
        assert_eq!(reads.head(2), None, "an mmap is no chunk");
        assert_eq!(reads.head(3), None, "unmapped");
        assert_eq!(reads.head(4), head(0x4020, 0x4030));
        assert_eq!(reads.head(5), None, "no header below address 16");
        assert_eq!(reads.head(6), None);
        // Process 1: both pieces (by address) in one call, stopped at the
        // unmapped first one, then the other; process 2: one call.
        assert_eq!(*vm.0.borrow(), vec![(1, 2), (1, 1), (2, 1)]);
    }

    #[test]
    fn a_batch_larger_than_iov_max_takes_a_call_per_1024() {
        let n = IOV_MAX + 300;
        let batch = batch_of(
            (0..n as u64)
                .map(|i| sample(9, 0x10_0020 + 0x20 * i, AllocKind::Malloc))
                .collect(),
        );
        let vm = FakeVm(RefCell::new(Vec::new()));
        let mut reads = ChunkReads::default();
        assert_eq!(reads.prefetch(&batch, &vm, &|_, _| None), 2);
        assert_eq!(*vm.0.borrow(), vec![(9, IOV_MAX), (9, 300)]);
        for i in 0..n {
            let a = 0x10_0010 + 0x20 * i as u64;
            assert_eq!(
                reads.head(i),
                Some(ChunkHead {
                    prev_size: a,
                    size: a + 16
                })
            );
        }
        // The next batch starts afresh.
        let empty = batch_of(vec![sample(9, 0x10_0010, AllocKind::Mmap)]);
        assert_eq!(reads.prefetch(&empty, &vm, &|_, _| None), 0);
        assert_eq!(reads.head(0), None);
        assert_eq!(reads.head(1), None);
    }

    #[test]
    fn blocks_placed_by_address_are_not_read() {
        let batch = batch_of(vec![
            sample(1, 0x2030, AllocKind::Malloc),
            sample(1, 0x5030, AllocKind::Malloc),
            sample(1, 0x2050, AllocKind::Malloc),
        ]);
        let vm = FakeVm(RefCell::new(Vec::new()));
        let mut reads = ChunkReads::default();
        let arena = Home::Arena(0x7f00_0000_0020);
        let by_address = |_: u32, ptr: u64| (ptr >= 0x5000).then_some(arena);
        assert_eq!(reads.prefetch(&batch, &vm, &by_address), 1);
        assert_eq!(*vm.0.borrow(), vec![(1, 2)], "two headers read, not three");
        assert!(matches!(reads.known(0), Known::Head(_)));
        assert_eq!(reads.known(1), Known::Home(arena));
        assert_eq!(reads.head(1), None);
        assert!(matches!(reads.known(2), Known::Head(_)));
    }
}
