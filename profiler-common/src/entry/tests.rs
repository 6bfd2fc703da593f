use super::*;

#[test]
fn every_row_round_trips_through_its_cookie() {
    for e in ENTRY_POINTS {
        assert_eq!(
            EntrySpec::from_cookie(e.spec.cookie()),
            Some(e.spec),
            "{}",
            e.symbol
        );
    }
}

#[test]
fn every_kind_has_a_row_and_every_symbol_one() {
    for k in AllocKind::ALL {
        let n = ENTRY_POINTS.iter().filter(|e| e.spec.kind == k).count();
        assert!(n >= 1, "{k:?}");
    }
    for (i, a) in ENTRY_POINTS.iter().enumerate() {
        for b in &ENTRY_POINTS[i + 1..] {
            assert_ne!(a.symbol, b.symbol, "a symbol appears twice");
        }
    }
    // Frees first, so that within a module aliases resolve to free.
    assert_eq!(ENTRY_POINTS[0].spec.kind, AllocKind::Free);
}

#[test]
fn new_and_jemalloc_kinds() {
    use AllocKind as K;
    for k in [K::New, K::NewArray, K::Mallocx] {
        assert_eq!(
            outcome(k, [48, 0, 0], 0x1000),
            Outcome::Alloc {
                ptr: 0x1000,
                size: 48
            }
        );
        assert_eq!(outcome(k, [48, 0, 0], 0), Outcome::Failed);
    }
    assert_eq!(
        outcome(K::Rallocx, [0x10, 64, 0], 0x20),
        Outcome::Realloc {
            old: 0x10,
            new: 0x20,
            size: 64
        }
    );
    assert_eq!(outcome(K::Rallocx, [0x10, 0, 0], 0), Outcome::Failed);
}

#[test]
fn bad_cookies_decode_to_nothing() {
    assert_eq!(EntrySpec::from_cookie(0), None, "cookie not set");
    let malloc = EntrySpec::new(AllocKind::Malloc, [0, N, N]).cookie();
    assert_eq!(EntrySpec::from_cookie(malloc & !COOKIE_VALID), None);
    assert_eq!(EntrySpec::from_cookie(malloc | 1 << 40), None, "stray bits");
    assert_eq!(
        EntrySpec::from_cookie(COOKIE_VALID | 99),
        None,
        "unknown kind"
    );
    let pool = EntrySpec::new(AllocKind::Realloc, [1, 2, N]).in_pool();
    assert_eq!(EntrySpec::from_cookie(pool.cookie()), Some(pool));
    assert!(EntrySpec::from_cookie(pool.cookie()).is_some_and(|s| s.pool));
    let bad_arg = EntrySpec::new(AllocKind::Malloc, [6, N, N]).cookie();
    assert_eq!(EntrySpec::from_cookie(bad_arg), None, "no seventh register");
}

#[test]
fn only_free_and_munmap_skip_the_return_probe() {
    for k in AllocKind::ALL {
        let spec = EntrySpec::new(k, [0, N, N]);
        assert_eq!(
            spec.has_return_probe(),
            !matches!(k, AllocKind::Free | AllocKind::Munmap),
            "{k:?}"
        );
    }
}

#[test]
fn allocations_and_failures() {
    use AllocKind as K;
    for k in [K::Malloc, K::AlignedAlloc, K::Memalign, K::Valloc] {
        assert_eq!(
            outcome(k, [100, 0, 0], 0x1000),
            Outcome::Alloc {
                ptr: 0x1000,
                size: 100
            }
        );
        assert_eq!(outcome(k, [100, 0, 0], 0), Outcome::Failed);
    }
    assert_eq!(
        outcome(K::Pvalloc, [1, 0, 0], 0x1000),
        Outcome::Alloc {
            ptr: 0x1000,
            size: 4096
        }
    );
    assert_eq!(
        outcome(K::Pvalloc, [4096, 0, 0], 0x1000),
        Outcome::Alloc {
            ptr: 0x1000,
            size: 4096
        }
    );
    assert_eq!(
        outcome(K::Pvalloc, [0, 0, 0], 0x1000),
        Outcome::Alloc {
            ptr: 0x1000,
            size: 0
        }
    );
    assert_eq!(
        outcome(K::Calloc, [10, 24, 0], 0x1000),
        Outcome::Alloc {
            ptr: 0x1000,
            size: 240
        }
    );
    assert_eq!(outcome(K::Calloc, [10, 24, 0], 0), Outcome::Failed);
}

#[test]
fn realloc_frees_the_old_block() {
    use AllocKind as K;
    let r = |old, size, ret| outcome(K::Realloc, [old, size, 0], ret);
    assert_eq!(
        r(0x10, 64, 0x20),
        Outcome::Realloc {
            old: 0x10,
            new: 0x20,
            size: 64
        }
    );
    assert_eq!(
        r(0, 64, 0x20),
        Outcome::Realloc {
            old: 0,
            new: 0x20,
            size: 64
        },
        "realloc(NULL, n)"
    );
    assert_eq!(r(0x10, 0, 0), Outcome::Free { ptr: 0x10 }, "realloc(p, 0)");
    assert_eq!(r(0x10, 64, 0), Outcome::Failed, "failure keeps the block");
    assert_eq!(r(0, 0, 0), Outcome::Failed);
    assert_eq!(
        outcome(K::Reallocarray, [0x10, 3, 8], 0x20),
        Outcome::Realloc {
            old: 0x10,
            new: 0x20,
            size: 24
        }
    );
    assert_eq!(
        outcome(K::Reallocarray, [0x10, 0, 8], 0),
        Outcome::Free { ptr: 0x10 }
    );
}

#[test]
fn posix_memalign_reports_through_its_out_pointer() {
    let k = AllocKind::PosixMemalign;
    assert_eq!(
        outcome(k, [0x7ff0, 256, 0], 0),
        Outcome::AllocAt {
            memptr: 0x7ff0,
            size: 256
        }
    );
    assert_eq!(
        outcome(k, [0x7ff0, 256, 0], 12 /* ENOMEM */),
        Outcome::Failed
    );
}

#[test]
fn only_anonymous_non_stack_mappings_are_heap() {
    let k = AllocKind::Mmap;
    let anon = MAP_ANONYMOUS | 0x02; // MAP_PRIVATE
    assert_eq!(
        outcome(k, [8192, anon, 0], 0x5000),
        Outcome::Map {
            addr: 0x5000,
            len: 8192
        }
    );
    assert_eq!(
        outcome(k, [8192, 0x02, 0], 0x5000),
        Outcome::Ignore,
        "file-backed"
    );
    assert_eq!(
        outcome(k, [8192, anon | MAP_STACK, 0], 0x5000),
        Outcome::Ignore,
        "thread stack"
    );
    assert_eq!(outcome(k, [8192, anon, 0], MAP_FAILED), Outcome::Ignore);
    assert_eq!(
        outcome(AllocKind::Mremap, [0x5000, 8192, 16384], 0x9000),
        Outcome::Remap {
            old: 0x5000,
            old_len: 8192,
            new: 0x9000,
            new_len: 16384
        }
    );
    assert_eq!(
        outcome(AllocKind::Mremap, [0x5000, 8192, 16384], MAP_FAILED),
        Outcome::Ignore
    );
}

#[test]
fn entry_judged_kinds_have_no_outcome() {
    assert_eq!(outcome(AllocKind::Free, [0x10, 0, 0], 0), Outcome::Ignore);
    assert_eq!(
        outcome(AllocKind::Munmap, [0x10, 4096, 0], 0),
        Outcome::Ignore
    );
}

#[test]
fn the_request_known_at_entry_is_what_the_return_records() {
    // For every heap-block kind, the size and the freed block known at
    // entry are those a successful return records.
    for kind in AllocKind::ALL {
        let args = [0x5000, 24, 3];
        let Some(r) = requested(kind, args) else {
            assert!(matches!(
                kind,
                AllocKind::Mmap | AllocKind::Mremap | AllocKind::Free | AllocKind::Munmap
            ));
            continue;
        };
        let ret = if kind == AllocKind::PosixMemalign {
            0
        } else {
            0x9000
        };
        let (size, old) = match outcome(kind, args, ret) {
            Outcome::Alloc { size, .. } | Outcome::AllocAt { size, .. } => (size, 0),
            Outcome::Realloc { size, old, .. } => (size, old),
            o => panic!("{kind:?}: {o:?}"),
        };
        assert_eq!(r, Request { size, old }, "{kind:?}");
    }
}

#[test]
fn sessions_skip_only_calls_that_enter_no_other_entry_point() {
    let r = |size, old| Request { size, old };
    for k in [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::New,
        AllocKind::NewArray,
        AllocKind::Mallocx,
    ] {
        assert!(may_skip_return(k, r(64, 0)), "{k:?}");
    }
    // realloc(NULL, n) is malloc(n), realloc(p, 0) is free(p): both enter
    // another entry point.
    assert!(!may_skip_return(AllocKind::Realloc, r(64, 0)));
    assert!(!may_skip_return(AllocKind::Realloc, r(0, 0x1000)));
    assert!(may_skip_return(AllocKind::Realloc, r(64, 0x1000)));
    assert!(may_skip_return(AllocKind::Rallocx, r(64, 0x1000)));
    for k in [
        AllocKind::Reallocarray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Memalign,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
    ] {
        assert!(!may_skip_return(k, r(64, 0x1000)), "{k:?}");
    }
}

#[test]
fn the_hold_cookie_is_no_entry_spec() {
    // The entry program holds a `run` command at this cookie instead of
    // counting a call: no entry spec may ever encode to it.
    assert_eq!(EntrySpec::from_cookie(HOLD_COOKIE), None);
}
