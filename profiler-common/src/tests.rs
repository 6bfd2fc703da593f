use super::*;

/// The 4,096 stacks of `tests/fixtures/many_stacks.c` (12 levels of a()
/// or b() return addresses) get 4,096 distinct hashes and stack ids, and
/// the hash depends on the order and the number of frames.
#[test]
fn stack_ids_of_distinct_stacks_do_not_clash() {
    let (a, b, leaf) = (
        0x5555_0000_1234u64,
        0x5555_0000_1300u64,
        0x5555_0000_1100u64,
    );
    let mut ids = std::collections::BTreeSet::new();
    for i in 0u32..4096 {
        let mut ips = vec![leaf];
        for level in 0..12 {
            ips.push(if i >> level & 1 == 1 { a } else { b });
        }
        ips.push(0x5555_0000_2000);
        assert!(stack_id_of_hash(stack_hash(&ips)) >= 0);
        ids.insert(stack_id_of_hash(stack_hash(&ips)));
    }
    assert_eq!(ids.len(), 4096);
    assert_ne!(stack_hash(&[1, 2]), stack_hash(&[2, 1]));
    assert_ne!(stack_hash(&[1]), stack_hash(&[1, 0]));
    assert_eq!(core::mem::size_of::<FpStack>(), 1024);
}

#[test]
fn kinds_round_trip() {
    for k in AllocKind::ALL {
        assert_eq!(AllocKind::from_u32(k as u32), Some(k));
    }
    assert_eq!(AllocKind::from_u32(99), None);
}

#[test]
fn event_kinds_round_trip() {
    for k in EventKind::ALL {
        assert_eq!(EventKind::from_u32(k as u32), Some(k));
    }
    assert_eq!(EventKind::from_u32(AllocKind::Malloc as u32), None);
    assert_eq!(EventKind::of_map(AllocKind::Mmap), Some(EventKind::Mmap));
    assert_eq!(EventKind::of_map(AllocKind::Free), None);
}
