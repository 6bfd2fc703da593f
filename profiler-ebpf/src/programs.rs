//! The probe programs: thin wrappers that read the context and hand over to
//! `thread` (nesting) and `live` (accounting).
//!
//! One entry program serves every allocator entry point: the attach cookie
//! carries the row of `profiler_common::ENTRY_POINTS` (kind and argument
//! positions) it was attached for.

use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use profiler_common::{counter, AllocKind, EntrySpec, EventKind, STACK_NONE};

use crate::live::{
    account, account_allocator, emit_map_event, map_event, record_allocator_free, record_free,
};
use crate::maps::{armed, bump};
use crate::thread::{enter, judge_entry_only, leave, EntryOnly};

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The six argument registers of the probed call (x86-64 SysV order).
#[inline(always)]
fn arg_registers(ctx: &ProbeContext) -> [u64; 6] {
    let r = ctx.regs;
    // SAFETY: `regs` is the pt_regs the kernel passed to this program. The
    // loads are volatile and at constant offsets: the verifier refuses a
    // context load through a computed pointer, which a selected field would become.
    unsafe {
        [
            core::ptr::read_volatile(&(*r).rdi),
            core::ptr::read_volatile(&(*r).rsi),
            core::ptr::read_volatile(&(*r).rdx),
            core::ptr::read_volatile(&(*r).rcx),
            core::ptr::read_volatile(&(*r).r8),
            core::ptr::read_volatile(&(*r).r9),
        ]
    }
}

/// Argument `n` (0-based) of the call; 0 for `entry::ARG_NONE`.
#[inline(always)]
fn arg(regs: &[u64; 6], n: u8) -> u64 {
    match n {
        0 => regs[0],
        1 => regs[1],
        2 => regs[2],
        3 => regs[3],
        4 => regs[4],
        5 => regs[5],
        _ => 0,
    }
}

/// Entry of any allocator function, described by its attach cookie.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: the context pointer is the one the kernel passed to this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(spec) = EntrySpec::from_cookie(cookie) else {
        return 0;
    };
    let regs = arg_registers(&ctx);
    let args = [
        arg(&regs, spec.args[0]),
        arg(&regs, spec.args[1]),
        arg(&regs, spec.args[2]),
    ];
    match spec.kind {
        // free has no return probe: it returns nothing, and skipping the
        // return trap halves its cost.
        AllocKind::Free => {
            if args[0] == 0 || !armed() {
                return 0;
            }
            match judge_entry_only(&ctx) {
                EntryOnly::Program => record_free(tgid(), args[0]),
                EntryOnly::Allocator => record_allocator_free(tgid(), args[0]),
                EntryOnly::Nested => {}
            }
        }
        AllocKind::Munmap if !armed() => {}
        AllocKind::Munmap => match judge_entry_only(&ctx) {
            EntryOnly::Program => emit_map_event(map_event(
                EventKind::Munmap,
                tgid(),
                args[0],
                args[1],
                STACK_NONE,
            )),
            EntryOnly::Allocator => bump(counter::ALLOCATOR_UNMAPPED, args[1]),
            EntryOnly::Nested => {}
        },
        kind => enter(&ctx, kind, args, spec.pool),
    }
    0
}

/// Return of any allocator function that has a return probe: the outermost
/// call's saved state and its result.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let Some(st) = leave(&ctx) else { return 0 };
    if !armed() {
        return 0;
    }
    let Some(kind) = AllocKind::from_u32(st.kind) else {
        return 0;
    };
    let outcome = profiler_common::entry::outcome(kind, [st.arg0, st.arg1, st.arg2], ctx.ret());
    if st.internal != 0 {
        account_allocator(outcome);
    } else {
        account(&ctx, tgid(), kind, outcome);
    }
    0
}

// ---- bare probes (benchmark baseline: the trap alone) -------------------

#[uprobe]
pub fn noop_enter(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn noop_return(_ctx: RetProbeContext) -> u32 {
    0
}
