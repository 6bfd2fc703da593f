use std::path::PathBuf;

use super::*;

use profiler_common::{AllocKind, EntrySpec};

fn point(kind: AllocKind, offset: u64) -> AttachPoint {
    AttachPoint {
        spec: EntrySpec::new(kind, [0, 1, 2]),
        symbol: kind.symbol().to_string(),
        file: PathBuf::from("/lib/libc.so.6"),
        func_offset: offset,
        entry_offset: offset,
        stepped: None,
    }
}

#[test]
fn frees_are_probed_before_allocations() {
    let points = vec![
        point(AllocKind::Malloc, 1),
        point(AllocKind::Calloc, 2),
        point(AllocKind::Free, 3),
        point(AllocKind::Mmap, 4),
        point(AllocKind::Munmap, 5),
    ];
    let kinds: Vec<AllocKind> = attach_order(&points).iter().map(|p| p.spec.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AllocKind::Free,
            AllocKind::Munmap,
            AllocKind::Malloc,
            AllocKind::Calloc,
            AllocKind::Mmap
        ]
    );
}

fn maps_with_text(ranges: &[(u64, u64, &str)]) -> crate::process::maps::MemoryMap {
    let text: String = ranges
        .iter()
        .map(|(s, e, path)| format!("{s:x}-{e:x} r-xp 00000000 08:01 1234 {path}\n"))
        .collect();
    crate::process::maps::MemoryMap::parse(&text).expect("parse maps")
}

#[test]
fn every_allocator_code_range_is_kept() {
    // Six separate executable ranges (two modules, split mappings): all
    // must reach the eBPF side, not only the first four.
    let libc = "/lib/libc.so.6";
    let jem = "/lib/libjemalloc.so.2";
    let maps = maps_with_text(&[
        (0x1000, 0x2000, libc),
        (0x3000, 0x4000, libc),
        (0x5000, 0x6000, libc),
        (0x7000, 0x8000, jem),
        (0x9000, 0xa000, jem),
        (0xb000, 0xc000, jem),
        (0xd000, 0xe000, "/usr/bin/program"),
    ]);
    let modules = vec![libc.to_string(), jem.to_string()];
    let (ranges, dropped) = text_ranges(&maps, &modules);
    assert_eq!(ranges.len(), 6, "{ranges:x?}");
    assert_eq!(dropped, 0);
    assert!(
        !ranges.contains(&(0xd000, 0xe000)),
        "the program is not the allocator"
    );
}

#[test]
fn adjacent_ranges_merge_and_overflow_is_counted() {
    let libc = "/lib/libc.so.6";
    let adjacent = maps_with_text(&[(0x1000, 0x2000, libc), (0x2000, 0x3000, libc)]);
    let (ranges, dropped) = text_ranges(&adjacent, &[libc.to_string()]);
    assert_eq!((ranges, dropped), (vec![(0x1000, 0x3000)], 0));
    let n = ALLOC_TEXT_RANGES as u64 + 3;
    let many: Vec<(u64, u64, &str)> = (0..n)
        .map(|i| (0x10000 * (i + 1), 0x10000 * (i + 1) + 0x1000, libc))
        .collect();
    let (ranges, dropped) = text_ranges(&maps_with_text(&many), &[libc.to_string()]);
    assert_eq!(ranges.len(), ALLOC_TEXT_RANGES as usize);
    assert_eq!(dropped, 3, "what did not fit is counted");
}

#[test]
fn pool_functions_laid_out_together_take_one_slot() {
    // pool_init, pkg_malloc, pkg_free: 16-byte aligned, padding between.
    let ranges = vec![(0x13c0, 0x13f8), (0x1400, 0x1448), (0x1450, 0x1460)];
    assert_eq!(merge_adjacent(ranges), vec![(0x13c0, 0x1460)]);
    // A function between two of them keeps them apart (its calls are the program's).
    let apart = vec![(0x1400, 0x1448), (0x1500, 0x1520)];
    assert_eq!(merge_adjacent(apart.clone()), apart);
}
