//! Which allocator calls are the program's and which are the allocator's own.
//!
//! glibc calls itself (`realloc(NULL, n)` → malloc, large chunks → mmap,
//! `realloc(p, 0)` → free), tail-calls between entry points, and the kernel
//! sometimes skips a return probe, and a signal handler may allocate while
//! the thread is inside an allocator call. Each thread keeps a small stack of
//! pending calls (its outermost allocator call and those of signal handlers
//! that interrupted it, see [`crate::PendingCalls`]); these pure functions
//! decide, from the stack pointer, the state's age and who made the call,
//! how a new call or a return relates to it. The eBPF programs only read
//! registers and maps and act on the answer.

use crate::INFLIGHT_STALE_NS;

/// Who made a call, from the return address in its slot at entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The uretprobe trampoline: a tail call of a call whose return is pending.
    Trampoline,
    /// Code of the allocator's modules: the allocator calling itself.
    Allocator,
    /// The program.
    Program,
    /// Not known (layout not set yet, or the slot unreadable).
    Unknown,
}

/// Bytes of the `[uprobes]` trampoline page.
pub const XOL_PAGE: u64 = 4096;

/// Classifies the return address `ra` of a call (`None`: the slot could not
/// be read). `xol` is the start of the trampoline page (0: not known yet);
/// `range(i)` for `i < n` gives the allocator's code ranges `[start, end)`,
/// `start == 0` marking an unused slot. Without both the trampoline and at
/// least one range, nothing is called the program's.
#[inline(always)]
pub fn classify_caller(
    ra: Option<u64>,
    xol: u64,
    n: u32,
    range: impl Fn(u32) -> (u64, u64),
) -> Caller {
    let Some(ra) = ra else {
        return Caller::Unknown;
    };
    if xol != 0 && ra >= xol && ra < xol.wrapping_add(XOL_PAGE) {
        return Caller::Trampoline;
    }
    let mut known = false;
    let mut i = 0;
    while i < n {
        let (start, end) = range(i);
        if start != 0 {
            known = true;
            if ra >= start && ra < end {
                return Caller::Allocator;
            }
        }
        i += 1;
    }
    if known && xol != 0 {
        Caller::Program
    } else {
        Caller::Unknown
    }
}

/// Why a thread's entry state was found stale (its return was never seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// Older than [`INFLIGHT_STALE_NS`].
    Age,
    /// The new call is at a shallower stack: the recorded call has returned.
    StackPointer,
    /// The program made the new call at the recorded call's own return slot:
    /// it only runs there again once the recorded call has returned.
    ProgramCaller,
}

/// How a call entering at stack pointer `sp` relates to the thread's recorded call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// Deeper in the stack: the allocator calling itself.
    Nested,
    /// At the same return slot: a tail call from the recorded call (its
    /// return probe fires once for the whole chain).
    Chained,
    /// The recorded call is gone; this call is a new outermost one.
    Stale(Stale),
    /// The program made the call on a deeper stack: a signal handler
    /// interrupted the recorded call, which is still pending underneath.
    Interrupted,
}

/// Whether `ra` lies in one of `n` ranges `range(i)` = `[start, end)`
/// (`start == 0`: an unused slot).
#[inline(always)]
pub fn in_ranges(ra: u64, n: u32, range: impl Fn(u32) -> (u64, u64)) -> bool {
    let mut i = 0;
    while i < n {
        let (start, end) = range(i);
        if start != 0 && ra >= start && ra < end {
            return true;
        }
        i += 1;
    }
    false
}

/// Pending calls a thread can hold: its outermost allocator call and the
/// call of a signal handler that interrupted it. A handler is not
/// re-entered by its own signal, so deeper stacks need two different
/// allocating handlers interrupting each other; their calls are counted as
/// "per-thread state full". (Verification time grows steeply with this
/// bound: 2 loads in 0.2 s here, 3 and 4 took over 100 s.)
pub const MAX_PENDING_CALLS: usize = 2;

/// What an entry into an allocator function is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The program's own call: push it as a new pending call.
    Program,
    /// Inside the thread's top pending call: the allocator calling itself.
    Nested,
    /// A tail call of the top pending call.
    Chained,
    /// Made by the allocator's own code while no call of the program is in
    /// flight: an arena created inside `free`, a heap trimmed in `free`,
    /// `malloc_trim`, a thread's cache released at its exit. Pushed too (its
    /// return must be matched), but its mappings are the allocator's
    /// footprint and its frees are not the program's.
    Allocator,
}

/// An entry's judgement, and how many of the top pending calls were found
/// stale (returned unseen) on the way and must be dropped first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryJudgement {
    pub entry: Entry,
    pub stale: u32,
}

/// Judges an entry at stack pointer `sp`, time `now`, against the thread's
/// `n` pending calls, `pending(i)` = `(entry_sp, entry_ts)` with the top at
/// `n - 1`. `caller` classifies the return address against the allocator's
/// modules (see [`classify_caller`]); `internal` says whether it lies in the
/// allocator's own implementation (its malloc code, not the rest of libc:
/// `strdup` calling malloc is the program's allocation).
#[inline(always)]
pub fn judge_entry(
    n: u32,
    pending: impl Fn(u32) -> (u64, u64),
    sp: u64,
    now: u64,
    mut caller: impl FnMut() -> Caller,
    internal: impl FnOnce() -> bool,
) -> EntryJudgement {
    let mut cached: Option<Caller> = None;
    let mut stale = 0;
    let mut i = n;
    while i > 0 {
        let (entry_sp, entry_ts) = pending(i - 1);
        let who = || *cached.get_or_insert_with(&mut caller);
        match relation(entry_sp, entry_ts, sp, now, who) {
            Relation::Nested => {
                return EntryJudgement {
                    entry: Entry::Nested,
                    stale,
                }
            }
            Relation::Chained => {
                return EntryJudgement {
                    entry: Entry::Chained,
                    stale,
                }
            }
            Relation::Interrupted => break,
            Relation::Stale(_) => {
                stale += 1;
                i -= 1;
            }
        }
    }
    let entry = if internal() {
        Entry::Allocator
    } else {
        Entry::Program
    };
    EntryJudgement { entry, stale }
}

/// Relates a new call (at `sp`, time `now`) to the recorded call that entered
/// at `entry_sp` at time `entry_ts`. `caller` is only asked when the stack and
/// the age leave the answer open (it reads user memory).
#[inline(always)]
pub fn relation(
    entry_sp: u64,
    entry_ts: u64,
    sp: u64,
    now: u64,
    caller: impl FnOnce() -> Caller,
) -> Relation {
    if now.wrapping_sub(entry_ts) >= INFLIGHT_STALE_NS {
        return Relation::Stale(Stale::Age);
    }
    if sp > entry_sp {
        return Relation::Stale(Stale::StackPointer);
    }
    match caller() {
        Caller::Program if sp < entry_sp => Relation::Interrupted,
        Caller::Program => Relation::Stale(Stale::ProgramCaller),
        Caller::Trampoline | Caller::Unknown if sp == entry_sp => Relation::Chained,
        // Without the layout, judge by the stack alone.
        Caller::Trampoline | Caller::Allocator | Caller::Unknown => Relation::Nested,
    }
}

/// How a return relates to the thread's pending calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// The return of a call nested inside the top pending call: ignore it.
    Nested,
    /// One link of a tail-call chain returned: decrement the top's depth.
    Chained,
    /// The top pending call itself returned: pop it; its result is the allocation.
    Outermost,
    /// No pending call is this return's: it matches nothing.
    Unmatched,
}

/// A return's judgement, and how many top pending calls were found stale
/// (returned unseen) and must be dropped first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReturnJudgement {
    pub ret: Return,
    pub stale: u32,
}

/// Relates a return (stack pointer `sp` after it) to the thread's `n` pending
/// calls, `pending(i)` = `(entry_sp, depth)`, top at `n - 1`. A call's
/// return pops its return address: the stack pointer is one slot above its
/// entry's. A pending call whose return slot lies below `sp` returned unseen.
#[inline(always)]
pub fn on_return(n: u32, pending: impl Fn(u32) -> (u64, u32), sp: u64) -> ReturnJudgement {
    let mut stale = 0;
    let mut i = n;
    while i > 0 {
        let (entry_sp, depth) = pending(i - 1);
        let ret_sp = entry_sp.wrapping_add(8);
        let ret = if sp < ret_sp {
            Return::Nested
        } else if sp > ret_sp {
            stale += 1;
            i -= 1;
            continue;
        } else if depth > 1 {
            Return::Chained
        } else {
            Return::Outermost
        };
        return ReturnJudgement { ret, stale };
    }
    ReturnJudgement {
        ret: Return::Unmatched,
        stale,
    }
}

#[cfg(test)]
mod tests {
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
    fn judge(
        pending: &[(u64, u64)],
        sp: u64,
        now: u64,
        c: Caller,
        internal: bool,
    ) -> EntryJudgement {
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
}
