//! Per-thread entry state: which allocator call of a thread is its outermost
//! one. The decisions are `profiler_common::nesting`'s; this module reads the
//! registers, the stack slot and the maps they need.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    counter,
    nesting::{self, Caller, Relation, Return},
    AllocKind, Inflight, ALLOC_TEXT_RANGES,
};

use crate::maps::{bump, ALLOC_TEXT, ARMED, INFLIGHT, XOL};

/// The stack pointer of the probed context.
#[inline(always)]
pub(crate) fn sp_of(regs: *mut aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the pt_regs the kernel passed to this program.
    unsafe { (*regs).rsp }
}

/// Who made the call whose return address is at `sp`.
#[inline(always)]
fn caller(sp: u64) -> Caller {
    // SAFETY: reads one word of the thread's stack; a fault is an error.
    let ra = unsafe { bpf_probe_read_user(sp as *const u64) }.ok();
    let xol = XOL.get(0).copied().unwrap_or(0);
    nesting::classify_caller(ra, xol, ALLOC_TEXT_RANGES, |i| {
        (
            ALLOC_TEXT.get(2 * i).copied().unwrap_or(0),
            ALLOC_TEXT.get(2 * i + 1).copied().unwrap_or(0),
        )
    })
}

#[inline(always)]
fn relation(st: &Inflight, sp: u64, now: u64) -> Relation {
    nesting::relation(st.entry_sp, st.ts_ns, sp, now, || caller(sp))
}

/// Records entry into an allocator function. Returns without saving when the
/// thread is already inside one (the call is the allocator's own).
#[inline(always)]
pub(crate) fn enter(ctx: &ProbeContext, kind: AllocKind, args: [u64; 3]) {
    let tid = bpf_get_current_pid_tgid();
    let sp = sp_of(ctx.regs);
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(st) = INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: the entry is only touched by its own thread, which is here.
        match relation(unsafe { &*st }, sp, now) {
            Relation::Nested => {
                bump(counter::NESTED, 1);
                return;
            }
            Relation::Chained => {
                // SAFETY: as above.
                unsafe { (*st).depth += 1 };
                bump(counter::NESTED, 1);
                return;
            }
            Relation::Stale(_) => bump(counter::INFLIGHT_STALE, 1),
        }
    }
    let st = Inflight {
        kind: kind as u32,
        depth: 1,
        arg0: args[0],
        arg1: args[1],
        arg2: args[2],
        ts_ns: now,
        entry_sp: sp,
    };
    if INFLIGHT.insert(tid, st, 0).is_err() {
        bump(counter::INFLIGHT_FULL, 1);
    }
}

/// Leaves an allocator function: `Some(state)` only for the return of the
/// recorded call (stack pointer one slot above its entry), once per chain.
#[inline(always)]
pub(crate) fn leave(ctx: &RetProbeContext) -> Option<Inflight> {
    let tid = bpf_get_current_pid_tgid();
    let Some(st) = INFLIGHT.get_ptr_mut(tid) else {
        if ARMED.get(0).copied().unwrap_or(0) != 0 {
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

/// True while this thread is inside a probed allocator function (`free` or
/// `munmap` called by the allocator itself). A stale state is dropped.
#[inline(always)]
pub(crate) fn nested(ctx: &ProbeContext) -> bool {
    let tid = bpf_get_current_pid_tgid();
    let Some(st) = INFLIGHT.get_ptr(tid) else {
        return false;
    };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the entry is only touched by its own thread, which is here.
    match relation(unsafe { &*st }, sp_of(ctx.regs), now) {
        Relation::Nested | Relation::Chained => true,
        Relation::Stale(_) => {
            let _ = INFLIGHT.remove(tid);
            bump(counter::INFLIGHT_STALE, 1);
            false
        }
    }
}
