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
use profiler_common::{
    counter,
    entry::{may_skip_return, requested},
    AllocKind, EntrySpec, EventKind, LiveKey, INTERNAL_AT_RETURN, KFUNC_SESSION_IS_RETURN,
    STACK_NONE,
};

use crate::live::{
    account, account_allocator, emit_map_event, map_event, record_allocator_free, record_free,
    record_outermost_free,
};
use crate::maps::{armed, bump, entry_cookie, maybe_tracked, LIVE, SESSION_RETURN};
use crate::sample::sample;
use crate::thread::{
    allocator_at, allocator_called, enter, judge_entry_only, leave, thread_has_pending, EntryOnly,
};

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

/// The probe's attach cookie, from the kernel.
#[inline(always)]
fn cookie_of(ctx: &ProbeContext) -> u64 {
    // SAFETY: the context pointer is the one the kernel passed to this program.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// The address the program was hit at: at an entry, the probe's (the kernel
/// sets it back from the trap before running the program); at a return,
/// where the call returns to.
#[inline(always)]
fn hit_ip(ctx: &ProbeContext) -> u64 {
    // SAFETY: `regs` is the pt_regs the kernel passed to this program; a
    // volatile load at a constant offset.
    unsafe { core::ptr::read_volatile(&(*ctx.regs).rip) }
}

/// [`spec_and_args`] of a cookie already read.
#[inline(always)]
fn spec_and_args_of(ctx: &ProbeContext, cookie: u64) -> Option<(EntrySpec, [u64; 3])> {
    let spec = EntrySpec::from_cookie(cookie)?;
    let regs = arg_registers(ctx);
    let args = [
        arg(&regs, spec.args[0]),
        arg(&regs, spec.args[1]),
        arg(&regs, spec.args[2]),
    ];
    Some((spec, args))
}

/// Entry of any allocator function, described by its attach cookie.
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let cookie = entry_cookie(hit_ip(&ctx)).unwrap_or_else(|| cookie_of(&ctx));
    let Some((spec, args)) = spec_and_args_of(&ctx, cookie) else {
        // `_exit` of a `run` command, in its first file's entry link (no
        // link of its own: each link's close costs the detach a grace period).
        if cookie == profiler_common::entry::HOLD_COOKIE {
            crate::hold::hold();
        }
        return 0;
    };
    entry_of(&ctx, spec, args);
    0
}

/// What every entry does (a session entry that keeps its return, too).
#[inline(always)]
fn entry_of(ctx: &ProbeContext, spec: EntrySpec, args: [u64; 3]) {
    match spec.kind {
        // free has no return probe: it returns nothing, and skipping the
        // return trap halves its cost.
        AllocKind::Free => {
            if args[0] == 0 || !armed() {
                return;
            }
            if !maybe_tracked(args[0]) {
                // Session mode, and no tracked block there: whoever frees
                // it, nothing tracked changes (an unsampled block's free,
                // or one from before attach).
                bump(counter::FREES_UNKNOWN, 1);
                return;
            }
            match judge_entry_only(ctx) {
                EntryOnly::Program => record_free(tgid(), args[0]),
                EntryOnly::Allocator => record_allocator_free(tgid(), args[0]),
                // Who freed a tracked block does not matter: it is freed.
                // Only a free of something untracked is counted by who
                // made it, so the return address is read only then.
                EntryOnly::Outermost => {
                    record_outermost_free(tgid(), args[0], || allocator_called(ctx))
                }
                EntryOnly::Nested => {}
            }
        }
        AllocKind::Munmap if !armed() => {}
        AllocKind::Munmap => match judge_entry_only(ctx) {
            EntryOnly::Outermost if !allocator_called(ctx) => emit_map_event(map_event(
                EventKind::Munmap,
                tgid(),
                args[0],
                args[1],
                STACK_NONE,
            )),
            EntryOnly::Outermost => bump(counter::ALLOCATOR_UNMAPPED, args[1]),
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
        kind => enter(ctx, kind, args, spec.pool, 0),
    }
}

/// Return of any allocator function that has a return probe: the outermost
/// call's saved state and its result.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    return_of(&ctx);
    0
}

#[inline(always)]
fn return_of(ctx: &RetProbeContext) {
    let Some(st) = leave(ctx) else { return };
    if !armed() {
        return;
    }
    // Read once, through a volatile load: LLVM otherwise reloads the kind
    // from its spill slot after checking it, and the verifier sees an
    // unchecked table index.
    // SAFETY: a volatile read of a local.
    let Some(kind) = AllocKind::from_u32(unsafe { core::ptr::read_volatile(&st.kind) }) else {
        return;
    };
    let outcome = profiler_common::entry::outcome(kind, [st.arg0, st.arg1, st.arg2], ctx.ret());
    let own = match st.internal {
        // The return address is where this return goes: the kernel has put
        // it back into the registers before running the program.
        // SAFETY: `regs` is the pt_regs the kernel passed to this program.
        INTERNAL_AT_RETURN => allocator_at(Some(unsafe { (*ctx.regs).rip })),
        internal => internal != 0,
    };
    if own {
        account_allocator(outcome);
    } else {
        account(ctx, tgid(), kind, outcome, st.sampled != 0);
    }
}

// ---- uprobe sessions (kernel 6.13+) -------------------------------------

/// `bpf_session_is_return()`: true when a session program runs for the
/// return of the call.
#[inline(always)]
fn session_is_return() -> bool {
    // SAFETY: a call of helper id KFUNC_SESSION_IS_RETURN, which no kernel
    // has: userspace rewrites it into a call of the kfunc (no arguments,
    // returns a bool) before loading this program, and loads it only then.
    let f: unsafe extern "C" fn() -> u64 =
        unsafe { core::mem::transmute(KFUNC_SESSION_IS_RETURN as usize) };
    // SAFETY: see above.
    (unsafe { f() }) & 0xff != 0
}

/// Entry and return of a heap allocator function attached as a uprobe
/// session. The entry draws the sample: an unsampled outermost program call
/// is counted and returns 1, so the kernel skips its return probe (and the
/// return trap); every other call returns 0 and is seen whole, as with
/// `alloc_enter` and `alloc_return`.
///
/// Written without `#[uprobe]`, whose wrapper returns 0 whatever the
/// program returns: here the return value is the point.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut core::ffi::c_void) -> u32 {
    session(ProbeContext::new(ctx))
}

#[inline(always)]
fn session(ctx: ProbeContext) -> u32 {
    // A hit address in the entry table is an entry: a return address is
    // where a call returns to, never a probe of an allocator's prologue.
    let cookie = match entry_cookie(hit_ip(&ctx)) {
        Some(cookie) => cookie,
        None if session_is_return() => {
            // SAFETY: a tail call with this program's own context; it
            // does not return when the slot holds the return program.
            unsafe { SESSION_RETURN.tail_call(&ctx, 0) };
            // The slot is filled before any link: never empty here.
            bump(counter::UNMATCHED_RETURN, 1);
            return 0;
        }
        None => cookie_of(&ctx),
    };
    let Some((spec, args)) = spec_and_args_of(&ctx, cookie) else {
        return 0;
    };
    let Some(req) = requested(spec.kind, args) else {
        entry_of(&ctx, spec, args);
        return 0;
    };
    // Kept whole: pool calls, calls before arming, calls that may enter
    // another entry point, and any call while the thread has a pending one
    // (it may be nested in it). The rest is the program's outermost call:
    // the common case costs no return-address read, no per-thread lookup
    // while no thread has a pending call, and no clock read.
    if spec.pool || !armed() || !may_skip_return(spec.kind, req) || thread_has_pending() {
        enter(&ctx, spec.kind, args, spec.pool, 0);
        return 0;
    }
    if req.old != 0 && maybe_tracked(req.old) {
        let key = LiveKey {
            tgid: tgid(),
            _pad: 0,
            ptr: req.old,
        };
        // SAFETY: only whether the key is present is looked at.
        if unsafe { LIVE.get(&key) }.is_some() {
            // It frees a tracked block: its return must be seen.
            enter(&ctx, spec.kind, args, spec.pool, 0);
            return 0;
        }
    }
    if sample(req.size).is_some() {
        enter(&ctx, spec.kind, args, spec.pool, 1);
        return 0;
    }
    bump(counter::UNTRACKED_ALLOCS, 1);
    bump(counter::UNTRACKED_BYTES, req.size);
    1
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

/// Bare session entry: skips every return (the floor of session probes).
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn noop_session(_ctx: *mut core::ffi::c_void) -> u32 {
    1
}
