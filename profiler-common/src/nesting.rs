//! Which allocator calls are the program's and which are the allocator's own.
//!
//! glibc calls itself (`realloc(NULL, n)` → malloc, large chunks → mmap,
//! `realloc(p, 0)` → free), tail-calls between entry points, and the kernel
//! sometimes skips a return probe. Each thread keeps one entry state (its
//! outermost allocator call, see [`crate::Inflight`]); these pure functions
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
    /// The program made the new call: it only runs again once the recorded
    /// call has returned.
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

/// What an entry into an allocator function is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The program's own call: record it as the thread's outermost call
    /// (replacing a stale state, if there was one).
    Program { stale: Option<Stale> },
    /// Inside the thread's recorded call: the allocator calling itself.
    Nested,
    /// A tail call of the recorded call.
    Chained,
    /// Made by the allocator's own code while no call of the program is in
    /// flight: an arena created inside `free`, a heap trimmed in `free`,
    /// `malloc_trim`, a thread's cache released at its exit. Its mappings
    /// are the allocator's footprint and its frees are not the program's.
    Allocator { stale: Option<Stale> },
}

/// Judges an entry at stack pointer `sp`, time `now`. `recorded` is the
/// thread's recorded call as `(entry_sp, entry_ts)`, if any; `caller`
/// classifies the return address against the allocator's modules (see
/// [`classify_caller`]); `internal` says whether it lies in the allocator's
/// own implementation (its malloc code, not the rest of libc: `strdup`
/// calling malloc is the program's allocation). Each is asked at most once.
#[inline(always)]
pub fn judge_entry(
    recorded: Option<(u64, u64)>,
    sp: u64,
    now: u64,
    caller: impl FnOnce() -> Caller,
    internal: impl FnOnce() -> bool,
) -> Entry {
    let stale = match recorded {
        None => None,
        Some((entry_sp, entry_ts)) => match relation(entry_sp, entry_ts, sp, now, caller) {
            Relation::Nested => return Entry::Nested,
            Relation::Chained => return Entry::Chained,
            Relation::Stale(s) => Some(s),
        },
    };
    if internal() {
        Entry::Allocator { stale }
    } else {
        Entry::Program { stale }
    }
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
        Caller::Program => Relation::Stale(Stale::ProgramCaller),
        Caller::Trampoline | Caller::Unknown if sp == entry_sp => Relation::Chained,
        // Without the layout, judge by the stack alone.
        Caller::Trampoline | Caller::Allocator | Caller::Unknown => Relation::Nested,
    }
}

/// How a return (stack pointer `sp` after the return) relates to the
/// recorded call that entered at `entry_sp` with chain depth `depth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// The return of a call nested inside the recorded one: ignore it.
    Nested,
    /// The recorded call returned unseen earlier; this return is another
    /// call's: drop the state, match nothing.
    Stale,
    /// One link of a tail-call chain returned: decrement the depth.
    Chained,
    /// The recorded call itself returned: its result is the allocation.
    Outermost,
}

/// Relates a return to the recorded call. A call's return pops its return
/// address: the stack pointer is one slot above its entry's.
#[inline(always)]
pub fn on_return(entry_sp: u64, depth: u32, sp: u64) -> Return {
    let ret_sp = entry_sp.wrapping_add(8);
    if sp < ret_sp {
        Return::Nested
    } else if sp > ret_sp {
        Return::Stale
    } else if depth > 1 {
        Return::Chained
    } else {
        Return::Outermost
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
    fn stale_when_the_program_calls_again() {
        // A deeper call made by the program means the recorded call's return
        // probe was skipped (the program runs only after it returned).
        assert_eq!(
            rel(SP - 0x40, T0 + 10, Caller::Program),
            Relation::Stale(Stale::ProgramCaller)
        );
        assert_eq!(
            rel(SP, T0 + 10, Caller::Program),
            Relation::Stale(Stale::ProgramCaller)
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

    fn judge(recorded: Option<(u64, u64)>, sp: u64, now: u64, c: Caller, internal: bool) -> Entry {
        judge_entry(recorded, sp, now, || c, || internal)
    }

    #[test]
    fn allocator_internal_without_an_outer_call() {
        // free → tcache_init → arena_get2 → _int_new_arena → alloc_new_heap → mmap:
        // free has no return probe, so no call is recorded when mmap enters.
        assert_eq!(
            judge(None, SP, T0, Caller::Allocator, true),
            Entry::Allocator { stale: None }
        );
        // strdup → malloc: libc's code, but not the allocator's implementation.
        assert_eq!(
            judge(None, SP, T0, Caller::Allocator, false),
            Entry::Program { stale: None }
        );
        assert_eq!(
            judge(None, SP, T0, Caller::Program, false),
            Entry::Program { stale: None }
        );
        assert_eq!(
            judge(None, SP, T0, Caller::Unknown, false),
            Entry::Program { stale: None }
        );
    }

    #[test]
    fn a_recorded_call_decides_first() {
        let rec = Some((SP, T0));
        assert_eq!(
            judge(rec, SP - 0x40, T0 + 1, Caller::Allocator, true),
            Entry::Nested
        );
        assert_eq!(
            judge(rec, SP, T0 + 1, Caller::Trampoline, false),
            Entry::Chained
        );
        // Internal after a stale state: the state goes, the call is still the allocator's.
        assert_eq!(
            judge(rec, SP + 0x40, T0 + 1, Caller::Allocator, true),
            Entry::Allocator {
                stale: Some(Stale::StackPointer)
            }
        );
        assert_eq!(
            judge(
                rec,
                SP - 0x40,
                T0 + INFLIGHT_STALE_NS,
                Caller::Program,
                false
            ),
            Entry::Program {
                stale: Some(Stale::Age)
            }
        );
        assert_eq!(
            judge(rec, SP - 0x40, T0 + 1, Caller::Program, false),
            Entry::Program {
                stale: Some(Stale::ProgramCaller)
            }
        );
    }

    #[test]
    fn internal_is_not_asked_inside_a_recorded_call() {
        let mut asked = false;
        let e = judge_entry(
            Some((SP, T0)),
            SP - 8,
            T0 + 1,
            || Caller::Allocator,
            || {
                asked = true;
                true
            },
        );
        assert_eq!(e, Entry::Nested);
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

    #[test]
    fn returns() {
        assert_eq!(on_return(SP, 1, SP + 8), Return::Outermost);
        assert_eq!(on_return(SP, 2, SP + 8), Return::Chained);
        assert_eq!(on_return(SP, 1, SP - 0x38), Return::Nested);
        assert_eq!(
            on_return(SP, 1, SP),
            Return::Nested,
            "a nested call at the same slot"
        );
        assert_eq!(on_return(SP, 1, SP + 16), Return::Stale);
        assert_eq!(on_return(SP, 3, SP + 0x100), Return::Stale);
    }
}
