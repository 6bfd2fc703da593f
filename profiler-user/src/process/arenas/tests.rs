//! The footprint split on a synthetic smaps and memory, and on this process.

use std::collections::HashMap;

use super::*;

const MIB: u64 = 1 << 20;

/// Words at addresses.
struct FakeMemory(HashMap<u64, u64>);

impl TargetMemory for FakeMemory {
    fn word(&self, addr: u64) -> Option<u64> {
        self.0.get(&addr).copied()
    }
}

const ARENA_A: u64 = 0x7f2c_1c00_0020;
const ARENA_B: u64 = 0x7f2c_2800_0020;

/// `[heap]`, arena A with two heaps (one merged full 64 MiB mapping after
/// a growing one), arena B with one heap, a 1 MiB mmapped chunk, a
/// program mapping that looks like nothing, and a file mapping.
const SMAPS: &str = "\
5581d0a00000-5581d0a21000 r--p 00000000 08:01 1311 /usr/bin/app
Rss:                 132 kB
5581d1c6e000-5581d2c6e000 rw-p 00000000 00:00 0                          [heap]
Size:              16384 kB
Rss:               12288 kB
7f2c1c000000-7f2c1c400000 rw-p 00000000 00:00 0 
Rss:                4096 kB
7f2c1c400000-7f2c20000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f2c20000000-7f2c24000000 rw-p 00000000 00:00 0 
Rss:               65536 kB
7f2c28000000-7f2c28200000 rw-p 00000000 00:00 0 
Rss:                1024 kB
7f2c28200000-7f2c2c000000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f2c30000000-7f2c30100000 rw-p 00000000 00:00 0 
Rss:                1024 kB
7f2c30200000-7f2c30300000 rw-p 00000000 00:00 0 
Rss:                 512 kB
7f2c31000000-7f2c31100000 rw-p 00000000 08:01 99 /data/file
Rss:                1024 kB
";

fn memory() -> FakeMemory {
    let mut m = HashMap::new();
    // heap_info of each arena heap: ar_ptr at +0, size at +16.
    for (heap, ar, size) in [
        (0x7f2c_1c00_0000u64, ARENA_A, 4 * MIB),
        (0x7f2c_2000_0000, ARENA_A, 64 * MIB),
        (0x7f2c_2800_0000, ARENA_B, 2 * MIB),
    ] {
        m.insert(heap, ar);
        m.insert(heap + 16, size);
    }
    // An mmapped chunk: prev_size 0, size 1 MiB | IS_MMAPPED.
    m.insert(0x7f2c_3000_0000, 0);
    m.insert(0x7f2c_3000_0008, MIB | IS_MMAPPED);
    // The program's own mapping: zeros.
    m.insert(0x7f2c_3020_0000, 0);
    m.insert(0x7f2c_3020_0008, 0);
    FakeMemory(m)
}

#[test]
fn smaps_entries_carry_rss() {
    let e = parse_smaps(SMAPS);
    assert_eq!(e.len(), 10);
    assert_eq!(e[1].path, "[heap]");
    assert_eq!(e[1].rss, 12288 * 1024);
    assert!(e[2].anonymous && !e[0].anonymous);
    assert!(parse_smaps("garbage\nRss: 12 kB\n").is_empty());
}

#[test]
fn footprint_splits_main_heap_arenas_and_mmapped_chunks() {
    let fp = footprint(&parse_smaps(SMAPS), &memory());
    assert_eq!(
        fp.main_heap,
        Usage {
            reserved: 16 * MIB,
            resident: 12 * MIB
        }
    );
    assert_eq!(fp.arenas.len(), 2);
    let a = fp
        .arenas
        .iter()
        .find(|a| a.arena == ARENA_A)
        .expect("arena A");
    assert_eq!(a.heaps, 2);
    assert_eq!(
        a.usage,
        Usage {
            reserved: 68 * MIB,
            resident: 68 * MIB
        }
    );
    let b = fp
        .arenas
        .iter()
        .find(|a| a.arena == ARENA_B)
        .expect("arena B");
    assert_eq!(
        (b.heaps, b.usage.reserved, b.usage.resident),
        (1, 2 * MIB, MIB)
    );
    assert_eq!(fp.mmapped_chunks, 1);
    assert_eq!(
        fp.mmapped,
        Usage {
            reserved: MIB,
            resident: MIB
        }
    );
    assert_eq!(fp.total().resident, 12 * MIB + 69 * MIB + MIB);
}

#[test]
fn blocks_find_their_arena_from_the_chunk_header() {
    let mut m = memory().0;
    let main = 0x5581_d1c7_0010u64;
    m.insert(main - 8, 0x41 | 0x1); // PREV_INUSE
    let in_a = 0x7f2c_2000_1010u64;
    m.insert(in_a - 8, 0x101 | NON_MAIN_ARENA);
    let big = 0x7f2c_3000_0010u64;
    m.insert(big - 8, MIB | IS_MMAPPED);
    let mem = FakeMemory(m);
    assert_eq!(home_of(main, &mem), Some(Home::Main));
    assert_eq!(home_of(in_a, &mem), Some(Home::Arena(ARENA_A)));
    assert_eq!(home_of(big, &mem), Some(Home::Mmapped));
    assert_eq!(home_of(0x1234_5678, &mem), None, "unreadable");
    assert_eq!(home_of(4, &mem), None);
}

#[test]
fn reads_this_process() {
    // Our own memory and smaps: no privileges needed. A block we allocate
    // with the system allocator is in the main heap or mmapped.
    let v: Vec<u8> = vec![7; 100];
    let mem = ProcessMemory {
        pid: std::process::id(),
    };
    let home = home_of(v.as_ptr() as u64, &mem);
    assert!(home.is_some(), "chunk header readable");
    let fp = read_footprint(std::process::id()).expect("read own smaps");
    assert!(fp.total().reserved > 0);
}

/// A heap_info's first four words: ar_ptr, prev, size, mprotect_size.
fn info_words(arena: u64, size: u64) -> [u64; 4] {
    [arena, 0, size, size]
}

#[test]
fn heap_info_is_recognised_and_lookalikes_are_not() {
    assert_eq!(
        heap_info(info_words(ARENA_A, 4 * MIB)),
        Some(HeapInfo {
            arena: ARENA_A,
            size: 4 * MIB
        })
    );
    // A later heap of the arena points at the one before.
    assert!(heap_info([ARENA_A, 0x7f2c_1c00_0000, 64 * MIB, 64 * MIB]).is_some());
    // Chunk data: sizes not page-aligned, beyond 64 MiB, out of order, a
    // `prev` that is no heap, no arena.
    assert_eq!(heap_info([ARENA_A, 0, 0x1010, 0x2000]), None);
    assert_eq!(heap_info(info_words(ARENA_A, 128 * MIB)), None);
    assert_eq!(heap_info([ARENA_A, 0, 8 * MIB, 4 * MIB]), None);
    assert_eq!(heap_info([ARENA_A, 0x5581_d1c7_0010, MIB, MIB]), None);
    assert_eq!(heap_info(info_words(0, MIB)), None);
    assert_eq!(heap_info([0x4141_4141_4141_4141; 4]), None);
}

#[test]
fn late_headers_place_blocks_by_address_first_or_nothing() {
    let heap_a = 0x7f2c_2000_0000u64;
    let heap = |base: u64| {
        (base == heap_a).then_some(HeapInfo {
            arena: ARENA_A,
            size: 8 * MIB,
        })
    };
    let brk = (0x5581_d1c6_e000, 0x5581_d2c6_e000);
    let at = Layout {
        page: 4096,
        main_heap: Some(brk),
        heap: &heap,
    };
    let place = |ptr: u64, prev_size: u64, size: u64| {
        home_from_head(ptr, Some(ChunkHead { prev_size, size }), &at)
    };
    let (main, in_a, big) = (0x5581_d1c7_0010u64, heap_a + 0x1010, 0x7f2c_3000_0010u64);
    // Live: the header as the allocation left it.
    assert_eq!(place(main, 0, 0x41), Some(Home::Main));
    assert_eq!(
        place(in_a, 0, 0x101 | NON_MAIN_ARENA),
        Some(Home::Arena(ARENA_A))
    );
    assert_eq!(place(big, 0, MIB | IS_MMAPPED), Some(Home::Mmapped));
    // memalign'd mmapped chunk: prev_size is its offset in the mapping.
    assert_eq!(
        place(big + 0x30, 0x30, (MIB - 0x30) | IS_MMAPPED),
        Some(Home::Mmapped)
    );
    // Freed into a bin or the top of its arena: glibc rewrote the head as
    // size | PREV_INUSE, without NON_MAIN_ARENA; the heap trimmed since
    // (zeros, unreadable, beyond its used part): still arena A.
    assert_eq!(place(in_a, 0, 0x5_0001), Some(Home::Arena(ARENA_A)));
    assert_eq!(place(in_a, 0, 0), Some(Home::Arena(ARENA_A)));
    assert_eq!(home_from_head(in_a, None, &at), Some(Home::Arena(ARENA_A)));
    assert_eq!(place(heap_a + 9 * MIB, 0, 0), Some(Home::Arena(ARENA_A)));
    // Freed and reused in [heap]: the old header inside another block's
    // data, or gone with a trimmed brk: still the main arena.
    assert_eq!(place(main, 0, 0x4141_4146), Some(Home::Main));
    assert_eq!(home_from_head(main, None, &at), Some(Home::Main));
    // Elsewhere the header decides, and garbage places nothing: the
    // NON_MAIN_ARENA bit outside any arena heap, IS_MMAPPED describing no
    // mapping, a zero size, an unreadable header (an mmapped block freed).
    assert_eq!(place(big, 0, 0x4141_4146), None);
    assert_eq!(place(big, 0, 0x4141_4142), None);
    assert_eq!(place(big, 0, 0x1), None);
    assert_eq!(home_from_head(big, None, &at), None);
    // Main-arena memory beyond the [heap] last read (grown since).
    assert_eq!(place(brk.1 + 0x1010, 0, 0x41), Some(Home::Main));
}

#[test]
fn the_cache_reads_each_heap_once() {
    use crate::process::vm::{Piece, VmRead};
    use std::cell::Cell;
    struct Vm(Cell<u32>);
    impl VmRead for Vm {
        fn read(&self, _: u32, addrs: &[u64], out: &mut [Piece]) -> std::io::Result<usize> {
            self.0.set(self.0.get() + 1);
            if addrs[0] != 0x7f2c_2000_0000 {
                return Err(std::io::Error::from_raw_os_error(libc::EFAULT));
            }
            let w = info_words(ARENA_A, 8 * MIB);
            out[0] = [w[0], w[1]];
            out[1] = [w[2], w[3]];
            Ok(2)
        }
    }
    let vm = Vm(Cell::new(0));
    let cache = HeapInfoCache::default();
    let head = Some(ChunkHead {
        prev_size: 0,
        size: 0x101 | NON_MAIN_ARENA,
    });
    for i in 0..10 {
        let ptr = 0x7f2c_2000_1010 + 0x100 * i;
        assert_eq!(
            cache.home(&vm, 1, ptr, head, None),
            Some(Home::Arena(ARENA_A))
        );
        let main = Some(ChunkHead {
            prev_size: 0,
            size: 0x41,
        });
        let ptr = 0x5581_d1c7_0010 + 0x40 * i;
        assert_eq!(cache.home(&vm, 1, ptr, main, None), Some(Home::Main));
        // Inside the [heap] known: no header needed.
        let brk = Some((0x5581_d1c0_0000, 0x5581_d200_0000));
        assert_eq!(cache.home(&vm, 1, ptr, None, brk), Some(Home::Main));
    }
    assert_eq!(vm.0.get(), 2, "one read per heap and process");
    cache.clear();
    cache.home(&vm, 1, 0x7f2c_2000_1010, head, None);
    assert_eq!(vm.0.get(), 3);
}
