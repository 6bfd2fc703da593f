//! Per-thread entry state: which allocator call of a thread is its outermost
//! one. The decisions are `profiler_common::nesting`'s; this module reads the
//! registers, the stack slot and the maps they need.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    counter,
    nesting::{self, Caller, Entry, Return},
    AllocKind, Inflight, ALLOC_INTERNAL_RANGES, ALLOC_TEXT_RANGES,
};

use crate::maps::{armed, bump, ALLOC_INTERNAL, ALLOC_TEXT, INFLIGHT, XOL};

/// The stack pointer of the probed context.
#[inline(always)]
pub(crate) fn sp_of(regs: *mut aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the pt_regs the kernel passed to this program.
    unsafe { (*regs).rsp }
}

/// The return address of a call that just entered (its stack slot at `sp`).
#[inline(always)]
fn return_address(sp: u64) -> Option<u64> {
    // SAFETY: reads one word of the thread's stack; a fault is an error.
    unsafe { bpf_probe_read_user(sp as *const u64) }.ok()
}

/// Who made the call whose return address is `ra`.
#[inline(always)]
fn caller(ra: Option<u64>) -> Caller {
    let xol = XOL.get(0).copied().unwrap_or(0);
    nesting::classify_caller(ra, xol, ALLOC_TEXT_RANGES, |i| {
        (
            ALLOC_TEXT.get(2 * i).copied().unwrap_or(0),
            ALLOC_TEXT.get(2 * i + 1).copied().unwrap_or(0),
        )
    })
}

/// Whether `ra` is in the allocator's own implementation.
#[inline(always)]
fn internal(ra: Option<u64>) -> bool {
    let Some(ra) = ra else { return false };
    nesting::in_ranges(ra, ALLOC_INTERNAL_RANGES, |i| {
        (
            ALLOC_INTERNAL.get(2 * i).copied().unwrap_or(0),
            ALLOC_INTERNAL.get(2 * i + 1).copied().unwrap_or(0),
        )
    })
}

/// Judges an entry against the thread's recorded call (see
/// `nesting::judge_entry`). A stale state is counted and dropped here.
#[inline(always)]
fn judge(ctx: &ProbeContext, tid: u64, now: u64) -> Entry {
    let sp = sp_of(ctx.regs);
    let recorded = INFLIGHT.get_ptr(tid).map(|st| {
        // SAFETY: the entry is only touched by its own thread, which is here.
        let st = unsafe { &*st };
        (st.entry_sp, st.ts_ns)
    });
    let ra = return_address(sp);
    let e = nesting::judge_entry(recorded, sp, now, || caller(ra), || internal(ra));
    if let Entry::Program { stale: Some(_) } | Entry::Allocator { stale: Some(_) } = e {
        let _ = INFLIGHT.remove(tid);
        bump(counter::INFLIGHT_STALE, 1);
    }
    match e {
        Entry::Nested | Entry::Chained => bump(counter::NESTED, 1),
        Entry::Allocator { .. } => bump(counter::ALLOCATOR_CALLS, 1),
        Entry::Program { .. } => {}
    }
    e
}

/// Records entry into an allocator function with a return probe. A call
/// nested in the thread's recorded one is not recorded (the allocator's
/// own); a tail call deepens the chain.
#[inline(always)]
pub(crate) fn enter(ctx: &ProbeContext, kind: AllocKind, args: [u64; 3]) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let internal = match judge(ctx, tid, now) {
        Entry::Nested => return,
        Entry::Chained => {
            if let Some(st) = INFLIGHT.get_ptr_mut(tid) {
                // SAFETY: the entry is only touched by its own thread, which is here.
                unsafe { (*st).depth += 1 };
            }
            return;
        }
        Entry::Program { .. } => 0,
        Entry::Allocator { .. } => 1,
    };
    let st = Inflight {
        kind: kind as u32,
        depth: 1,
        arg0: args[0],
        arg1: args[1],
        arg2: args[2],
        ts_ns: now,
        entry_sp: sp_of(ctx.regs),
        internal,
        _pad: 0,
    };
    if INFLIGHT.insert(tid, st, 0).is_err() {
        bump(counter::INFLIGHT_FULL, 1);
    }
}

/// Who made a call judged at its entry only (`free`, `munmap`).
pub(crate) enum EntryOnly {
    /// The program.
    Program,
    /// The allocator, inside a program call (ignored: that call is counted).
    Nested,
    /// The allocator on its own (its caches, its heaps).
    Allocator,
}

/// Judges a call that has no return probe.
#[inline(always)]
pub(crate) fn judge_entry_only(ctx: &ProbeContext) -> EntryOnly {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match judge(ctx, tid, now) {
        Entry::Nested | Entry::Chained => EntryOnly::Nested,
        Entry::Program { .. } => EntryOnly::Program,
        Entry::Allocator { .. } => EntryOnly::Allocator,
    }
}
/// Leaves an allocator function: `Some(state)` only for the return of the
/// recorded call (stack pointer one slot above its entry), once per chain.
#[inline(always)]
pub(crate) fn leave(ctx: &RetProbeContext) -> Option<Inflight> {
    let tid = bpf_get_current_pid_tgid();
    let Some(st) = INFLIGHT.get_ptr_mut(tid) else {
        if armed() {
            bump(counter::UNMATCHED_RETURN, 1);
        }
        return None;
    };
    // SAFETY: the entry is only touched by its own thread, which is here.
    let st_val = unsafe { *st };
    match nesting::on_return(st_val.entry_sp, st_val.depth, sp_of(ctx.regs)) {
        Return::Nested => None,
        Return::Stale => {
            let _ = INFLIGHT.remove(tid);
            bump(counter::INFLIGHT_STALE, 1);
            bump(counter::UNMATCHED_RETURN, 1);
            None
        }
        Return::Chained => {
            // SAFETY: as above.
            unsafe { (*st).depth -= 1 };
            None
        }
        Return::Outermost => {
            let _ = INFLIGHT.remove(tid);
            Some(st_val)
        }
    }
}
