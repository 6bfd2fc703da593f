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

use crate::{ALLOC_INTERNAL_RANGES, ALLOC_TEXT_RANGES, INFLIGHT_STALE_NS};

/// One process's allocator layout, as the eBPF side holds it (keyed by
/// tgid): unrelated processes map their allocator at other addresses, so
/// each has its own. A process without one is judged with no ranges known
/// (its callers are [`Caller::Unknown`], nothing is internal).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocLayout {
    /// Start of the process's `[uprobes]` trampoline page (0: not known yet).
    pub xol: u64,
    /// The allocator modules' executable ranges `[start, end)` as pairs
    /// (`start == 0`: unused slot).
    pub text: [u64; 2 * ALLOC_TEXT_RANGES as usize],
    /// The allocator's own implementation ranges, as pairs.
    pub internal: [u64; 2 * ALLOC_INTERNAL_RANGES as usize],
}

impl AllocLayout {
    /// No ranges known.
    pub const EMPTY: AllocLayout = AllocLayout {
        xol: 0,
        text: [0; 2 * ALLOC_TEXT_RANGES as usize],
        internal: [0; 2 * ALLOC_INTERNAL_RANGES as usize],
    };

    /// Who made the call whose return address is `ra` (see [`classify_caller`]).
    #[inline(always)]
    pub fn caller(&self, ra: Option<u64>) -> Caller {
        classify_caller(ra, self.xol, ALLOC_TEXT_RANGES, |i| {
            let i = i as usize;
            (
                self.text.get(2 * i).copied().unwrap_or(0),
                self.text.get(2 * i + 1).copied().unwrap_or(0),
            )
        })
    }

    /// Whether `ra` is in the allocator's own implementation.
    #[inline(always)]
    pub fn internal(&self, ra: Option<u64>) -> bool {
        let Some(ra) = ra else { return false };
        in_ranges(ra, ALLOC_INTERNAL_RANGES, |i| {
            let i = i as usize;
            (
                self.internal.get(2 * i).copied().unwrap_or(0),
                self.internal.get(2 * i + 1).copied().unwrap_or(0),
            )
        })
    }
}

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

/// A custom pool allocator (`--alloc`) lives in the program's own code, so
/// the allocator's ranges cannot tell its calls apart from the program's:
/// while a pool call is the thread's top pending call, a program call made
/// deeper in the stack is the pool taking memory for itself (the pool's
/// footprint, counted once as the pool call), not a signal handler's.
#[inline(always)]
pub fn beneath_pool(who: Caller, top_pool: bool, top_entry_sp: u64, sp: u64) -> Caller {
    if top_pool && sp < top_entry_sp && matches!(who, Caller::Program) {
        Caller::Allocator
    } else {
        who
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
mod tests;
