use super::*;

const XOL: u64 = 0x7fff_0000_0000;
const LIBC: (u64, u64) = (0x7f00_0010_0000, 0x7f00_0020_0000);
const JEMALLOC: (u64, u64) = (0x7f00_0050_0000, 0x7f00_0060_0000);
const PROGRAM_RA: u64 = 0x5555_0000_1234;

fn ranges(i: u32) -> (u64, u64) {
    [LIBC, (0, 0), JEMALLOC]
        .get(i as usize)
        .copied()
        .unwrap_or((0, 0))
}

fn classify(ra: Option<u64>) -> Caller {
    classify_caller(ra, XOL, 3, ranges)
}

#[test]
fn callers_by_return_address() {
    assert_eq!(classify(Some(XOL)), Caller::Trampoline);
    assert_eq!(classify(Some(XOL + XOL_PAGE - 1)), Caller::Trampoline);
    assert_eq!(classify(Some(XOL + XOL_PAGE)), Caller::Program);
    assert_eq!(classify(Some(LIBC.0)), Caller::Allocator);
    assert_eq!(classify(Some(LIBC.1 - 1)), Caller::Allocator);
    assert_eq!(classify(Some(LIBC.1)), Caller::Program, "end is exclusive");
    assert_eq!(
        classify(Some(JEMALLOC.0 + 5)),
        Caller::Allocator,
        "after an empty slot"
    );
    assert_eq!(classify(Some(PROGRAM_RA)), Caller::Program);
    assert_eq!(classify(None), Caller::Unknown, "unreadable slot");
}

#[test]
fn without_the_layout_nothing_is_the_programs() {
    // No trampoline page yet: an allocator range still counts, the rest is unknown.
    assert_eq!(
        classify_caller(Some(PROGRAM_RA), 0, 3, ranges),
        Caller::Unknown
    );
    assert_eq!(
        classify_caller(Some(LIBC.0), 0, 3, ranges),
        Caller::Allocator
    );
    // No ranges yet.
    let none = |_| (0, 0);
    assert_eq!(
        classify_caller(Some(PROGRAM_RA), XOL, 3, none),
        Caller::Unknown
    );
    assert_eq!(
        classify_caller(Some(XOL + 8), XOL, 3, none),
        Caller::Trampoline
    );
    assert_eq!(
        classify_caller(Some(PROGRAM_RA), XOL, 0, ranges),
        Caller::Unknown
    );
}

#[test]
fn all_ranges_are_searched() {
    // Ranges past the fourth are seen too (they used to be dropped).
    let many = |i: u32| {
        (
            0x1000 + u64::from(i) * 0x1000,
            0x1800 + u64::from(i) * 0x1000,
        )
    };
    assert_eq!(
        classify_caller(Some(0x10_100), XOL, 16, many),
        Caller::Allocator
    );
    assert_eq!(
        classify_caller(Some(0x10_900), XOL, 16, many),
        Caller::Program
    );
}

const SP: u64 = 0x7ffc_0000_1000;
const T0: u64 = 1_000_000_000;

fn rel(sp: u64, now: u64, caller: Caller) -> Relation {
    relation(SP, T0, sp, now, || caller)
}

#[test]
fn nested_call_from_the_allocator() {
    // malloc → mmap: deeper stack, called from libc.
    assert_eq!(rel(SP - 0x40, T0 + 10, Caller::Allocator), Relation::Nested);
    // realloc(NULL, n) → malloc through a pending uretprobe's trampoline, deeper.
    assert_eq!(
        rel(SP - 0x40, T0 + 10, Caller::Trampoline),
        Relation::Nested
    );
    // Unknown layout: deeper is nested.
    assert_eq!(rel(SP - 8, T0 + 10, Caller::Unknown), Relation::Nested);
}

#[test]
fn chained_tail_call() {
    // aligned_alloc jumping to memalign: same return slot, which now holds
    // the trampoline address of the first call's pending return probe.
    assert_eq!(rel(SP, T0 + 10, Caller::Trampoline), Relation::Chained);
    assert_eq!(rel(SP, T0 + 10, Caller::Unknown), Relation::Chained);
    // At the same slot but called from allocator code: a nested call that
    // happens to reuse the slot is still the allocator's.
    assert_eq!(rel(SP, T0 + 10, Caller::Allocator), Relation::Nested);
}

#[test]
fn stale_by_stack_pointer() {
    for c in [
        Caller::Allocator,
        Caller::Trampoline,
        Caller::Unknown,
        Caller::Program,
    ] {
        assert_eq!(
            rel(SP + 8, T0 + 10, c),
            Relation::Stale(Stale::StackPointer)
        );
    }
}

#[test]
fn stale_by_age() {
    let old = T0 + INFLIGHT_STALE_NS;
    assert_eq!(
        rel(SP - 0x40, old, Caller::Allocator),
        Relation::Stale(Stale::Age)
    );
    assert_eq!(rel(SP - 0x40, old - 1, Caller::Allocator), Relation::Nested);
    // A clock that went backwards by wrapping is as good as old.
    assert_eq!(
        rel(SP - 0x40, T0 - 1, Caller::Allocator),
        Relation::Stale(Stale::Age)
    );
}

#[test]
fn program_calls_at_the_same_slot_or_deeper() {
    // At the recorded call's own return slot, a program call means that
    // call returned unseen (the program runs there only after it returned).
    assert_eq!(
        rel(SP, T0 + 10, Caller::Program),
        Relation::Stale(Stale::ProgramCaller)
    );
    // Deeper: a signal handler interrupted the recorded call.
    assert_eq!(
        rel(SP - 0x400, T0 + 10, Caller::Program),
        Relation::Interrupted
    );
}

#[test]
fn caller_is_read_only_when_needed() {
    let asked = |sp, now| {
        let mut n = 0;
        relation(SP, T0, sp, now, || {
            n += 1;
            Caller::Allocator
        });
        n
    };
    assert_eq!(asked(SP + 8, T0), 0, "stack pointer decides");
    assert_eq!(asked(SP - 8, T0 + INFLIGHT_STALE_NS), 0, "age decides");
    assert_eq!(asked(SP - 8, T0), 1);
}

/// Judges against `pending` = [(entry_sp, entry_ts)], top last.
fn judge(pending: &[(u64, u64)], sp: u64, now: u64, c: Caller, internal: bool) -> EntryJudgement {
    judge_entry(
        pending.len() as u32,
        |i| pending[i as usize],
        sp,
        now,
        || c,
        || internal,
    )
}

fn ej(entry: Entry, stale: u32) -> EntryJudgement {
    EntryJudgement { entry, stale }
}

#[test]
fn allocator_internal_without_an_outer_call() {
    // free → tcache_init → arena_get2 → _int_new_arena → alloc_new_heap → mmap:
    // free has no return probe, so no call is pending when mmap enters.
    assert_eq!(
        judge(&[], SP, T0, Caller::Allocator, true),
        ej(Entry::Allocator, 0)
    );
    // strdup → malloc: libc's code, but not the allocator's implementation.
    assert_eq!(
        judge(&[], SP, T0, Caller::Allocator, false),
        ej(Entry::Program, 0)
    );
    assert_eq!(
        judge(&[], SP, T0, Caller::Program, false),
        ej(Entry::Program, 0)
    );
    assert_eq!(
        judge(&[], SP, T0, Caller::Unknown, false),
        ej(Entry::Program, 0)
    );
}

#[test]
fn the_top_pending_call_decides_first() {
    let rec = [(SP, T0)];
    assert_eq!(
        judge(&rec, SP - 0x40, T0 + 1, Caller::Allocator, true),
        ej(Entry::Nested, 0)
    );
    assert_eq!(
        judge(&rec, SP, T0 + 1, Caller::Trampoline, false),
        ej(Entry::Chained, 0)
    );
    // Internal after a stale state: the state goes, the call is still the allocator's.
    assert_eq!(
        judge(&rec, SP + 0x40, T0 + 1, Caller::Allocator, true),
        ej(Entry::Allocator, 1)
    );
    assert_eq!(
        judge(
            &rec,
            SP - 0x40,
            T0 + INFLIGHT_STALE_NS,
            Caller::Program,
            false
        ),
        ej(Entry::Program, 1)
    );
    assert_eq!(
        judge(&rec, SP, T0 + 1, Caller::Program, false),
        ej(Entry::Program, 1)
    );
}

const HANDLER_SP: u64 = SP - 0x1000;

#[test]
fn a_signal_handler_call_is_pushed_over_the_interrupted_one() {
    // malloc pending at SP; a SIGALRM handler (program code, deeper) calls malloc.
    assert_eq!(
        judge(&[(SP, T0)], HANDLER_SP, T0 + 1, Caller::Program, false),
        ej(Entry::Program, 0)
    );
    // While both are pending, the handler's malloc calling mmap is nested in it.
    let both = [(SP, T0), (HANDLER_SP, T0 + 1)];
    assert_eq!(
        judge(&both, HANDLER_SP - 0x80, T0 + 2, Caller::Allocator, false),
        ej(Entry::Nested, 0)
    );
    // A nested handler (another signal inside the handler's malloc) stacks again.
    assert_eq!(
        judge(&both, HANDLER_SP - 0x1000, T0 + 2, Caller::Program, false),
        ej(Entry::Program, 0)
    );
    // The handler's call returned unseen and the handler calls again at its
    // slot: that one is stale, the interrupted call stays.
    assert_eq!(
        judge(&both, HANDLER_SP, T0 + 2, Caller::Program, false),
        ej(Entry::Program, 1)
    );
    // Back in the interrupted code above both: both are stale.
    assert_eq!(
        judge(&both, SP + 0x100, T0 + 2, Caller::Program, false),
        ej(Entry::Program, 2)
    );
}

#[test]
fn the_caller_is_read_once() {
    let mut asked = 0;
    let both = [(SP, T0), (HANDLER_SP, T0)];
    let j = judge_entry(
        2,
        |i| both[i as usize],
        HANDLER_SP,
        T0 + 1,
        || {
            asked += 1;
            Caller::Program
        },
        || false,
    );
    assert_eq!(j, ej(Entry::Program, 1));
    assert_eq!(asked, 1);
}

#[test]
fn internal_is_not_asked_inside_a_pending_call() {
    let mut asked = false;
    let e = judge_entry(
        1,
        |_| (SP, T0),
        SP - 8,
        T0 + 1,
        || Caller::Allocator,
        || {
            asked = true;
            true
        },
    );
    assert_eq!(e.entry, Entry::Nested);
    assert!(!asked);
}

#[test]
fn in_ranges_bounds() {
    let r = |i: u32| [(0x1000, 0x2000), (0, 0), (0x5000, 0x6000)][i as usize];
    assert!(in_ranges(0x1000, 3, r));
    assert!(!in_ranges(0x2000, 3, r));
    assert!(in_ranges(0x5fff, 3, r));
    assert!(!in_ranges(0x5fff, 2, r));
    assert!(!in_ranges(0, 3, r), "unused slots match nothing");
}

fn ret(pending: &[(u64, u32)], sp: u64) -> ReturnJudgement {
    on_return(pending.len() as u32, |i| pending[i as usize], sp)
}

fn rj(ret: Return, stale: u32) -> ReturnJudgement {
    ReturnJudgement { ret, stale }
}

#[test]
fn returns() {
    assert_eq!(ret(&[(SP, 1)], SP + 8), rj(Return::Outermost, 0));
    assert_eq!(ret(&[(SP, 2)], SP + 8), rj(Return::Chained, 0));
    assert_eq!(ret(&[(SP, 1)], SP - 0x38), rj(Return::Nested, 0));
    assert_eq!(
        ret(&[(SP, 1)], SP),
        rj(Return::Nested, 0),
        "a nested call at the same slot"
    );
    assert_eq!(ret(&[(SP, 1)], SP + 16), rj(Return::Unmatched, 1));
    assert_eq!(ret(&[(SP, 3)], SP + 0x100), rj(Return::Unmatched, 1));
    assert_eq!(ret(&[], SP + 8), rj(Return::Unmatched, 0));
}

#[test]
fn returns_with_a_signal_handler_call_pending() {
    let both = [(SP, 1), (HANDLER_SP, 1)];
    // The handler's malloc returns first, then the interrupted one.
    assert_eq!(ret(&both, HANDLER_SP + 8), rj(Return::Outermost, 0));
    assert_eq!(ret(&both[..1], SP + 8), rj(Return::Outermost, 0));
    // The handler's return was never seen: the interrupted call still matches.
    assert_eq!(ret(&both, SP + 8), rj(Return::Outermost, 1));
    // A nested return inside the handler's call.
    assert_eq!(ret(&both, HANDLER_SP - 0x40), rj(Return::Nested, 0));
}

#[test]
fn calls_beneath_a_pool_call_are_the_pools() {
    // pkg_malloc (a custom pool, in the program's code) is pending at SP;
    // its own malloc of a new chunk comes from program code, deeper.
    let who = beneath_pool(Caller::Program, true, SP, SP - 0x60);
    assert_eq!(who, Caller::Allocator);
    assert_eq!(
        judge(&[(SP, T0)], SP - 0x60, T0 + 10, who, false).entry,
        Entry::Nested,
        "the pool's chunk is not a program allocation"
    );
    // Without the pool mark the same call is a signal handler's.
    let plain = beneath_pool(Caller::Program, false, SP, SP - 0x60);
    assert_eq!(plain, Caller::Program);
    assert_eq!(
        judge(&[(SP, T0)], SP - 0x60, T0 + 10, plain, false).entry,
        Entry::Program
    );
    // Not deeper: the pool call has returned unseen; nothing changes.
    assert_eq!(beneath_pool(Caller::Program, true, SP, SP), Caller::Program);
    assert_eq!(
        beneath_pool(Caller::Program, true, SP, SP + 0x40),
        Caller::Program
    );
    // Other callers keep their classification.
    for c in [Caller::Trampoline, Caller::Allocator, Caller::Unknown] {
        assert_eq!(beneath_pool(c, true, SP, SP - 0x60), c);
    }
}

#[test]
fn each_process_is_judged_by_its_own_layout() {
    // Two processes with libc at other addresses (ASLR, other builds).
    let mut a = AllocLayout::EMPTY;
    a.xol = 0x7fff_0000;
    a.text[..2].copy_from_slice(&[0x7f00_1000, 0x7f00_9000]);
    a.internal[..2].copy_from_slice(&[0x7f00_2000, 0x7f00_3000]);
    let mut b = AllocLayout::EMPTY;
    b.xol = 0x7ffe_0000;
    b.text[..2].copy_from_slice(&[0x7e00_1000, 0x7e00_9000]);
    b.internal[..2].copy_from_slice(&[0x7e00_2000, 0x7e00_3000]);
    // B's malloc code calling free (an arena created inside free) is B's
    // allocator's own in B, a program call for A's layout.
    let ra = Some(0x7e00_2500);
    assert!(b.internal(ra));
    assert_eq!(b.caller(ra), Caller::Allocator);
    assert!(!a.internal(ra));
    assert_eq!(a.caller(ra), Caller::Program);
    // A's own.
    assert!(a.internal(Some(0x7f00_2fff)));
    assert!(!a.internal(Some(0x7f00_3000)));
    assert_eq!(a.caller(Some(0x7fff_0010)), Caller::Trampoline);
    assert_eq!(b.caller(Some(0x7fff_0010)), Caller::Program);
    assert_eq!(a.caller(None), Caller::Unknown);
    assert!(!a.internal(None));
}

#[test]
fn a_process_without_a_layout_knows_nothing() {
    let e = AllocLayout::EMPTY;
    for ra in [0x1000, 0x7e00_2500, 0x7fff_0010] {
        assert_eq!(e.caller(Some(ra)), Caller::Unknown);
        assert!(!e.internal(Some(ra)));
    }
    // Text known but not the trampoline yet: still unknown, never "program".
    let mut t = AllocLayout::EMPTY;
    t.text[..2].copy_from_slice(&[0x7e00_1000, 0x7e00_9000]);
    assert_eq!(t.caller(Some(0x1000)), Caller::Unknown);
    assert_eq!(t.caller(Some(0x7e00_1000)), Caller::Allocator);
}

#[test]
fn the_last_slots_are_searched() {
    let mut l = AllocLayout::EMPTY;
    l.xol = 0x9000_0000;
    let n = l.text.len();
    l.text[n - 2..].copy_from_slice(&[0x5000, 0x6000]);
    let m = l.internal.len();
    l.internal[m - 2..].copy_from_slice(&[0x5100, 0x5200]);
    assert_eq!(l.caller(Some(0x5fff)), Caller::Allocator);
    assert!(l.internal(Some(0x5100)));
}
