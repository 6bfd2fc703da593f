//! Per-thread entry state: a small stack of a thread's pending allocator
//! calls (its outermost one, and those of signal handlers that interrupted it). The decisions are `profiler_common::nesting`'s; this module reads the
//! registers, the stack slot and the maps they need.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::{ProbeContext, RetProbeContext},
};
use profiler_common::{
    counter,
    nesting::{self, AllocLayout, Caller, Entry, Return, MAX_PENDING_CALLS},
    AllocKind, Inflight, PendingCalls, INTERNAL_AT_RETURN,
};

use crate::maps::{
    any_pending, armed, bump, pending_moved, EMPTY_CALLS, INFLIGHT, LAYOUTS, LAYOUT_WANTED,
};

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

/// The calling process's allocator layout (see `LAYOUTS`), looked up once
/// per call; `None` (counted) while userspace has not set it: nothing is
/// then judged the allocator's own or the program's.
#[inline(always)]
fn layout() -> Option<&'static AllocLayout> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: userspace replaces an entry whole; a reader sees old or new ranges.
    let l = unsafe { LAYOUTS.get(&tgid) };
    if l.is_none() {
        bump(counter::NO_LAYOUT, 1);
    }
    if l.is_none_or(|l| l.xol == 0) {
        if let Some(w) = LAYOUT_WANTED.get_ptr_mut(0) {
            // SAFETY: a plain store into the map's one slot.
            unsafe { *w = tgid };
        }
    }
    l
}

/// Who made the call whose return address is `ra`.
#[inline(always)]
fn caller(l: Option<&AllocLayout>, ra: Option<u64>) -> Caller {
    l.map_or(Caller::Unknown, |l| l.caller(ra))
}

/// Whether `ra` is in the allocator's own implementation.
#[inline(always)]
fn internal(l: Option<&AllocLayout>, ra: Option<u64>) -> bool {
    l.is_some_and(|l| l.internal(ra))
}

/// A slot index the verifier can bound: read back through a volatile load,
/// LLVM cannot prove it in range and drop the bounds check of the `get` that
/// follows, which the verifier needs to see (it loses the range of a
/// spilled loop counter).
#[inline(always)]
fn slot(i: u32) -> usize {
    // SAFETY: a volatile read of a local.
    unsafe { core::ptr::read_volatile(&i) as usize }
}

/// Sets the thread's count of pending calls (see `PENDING_THREADS`).
#[inline(always)]
fn set_n(s: &mut PendingCalls, n: u32) {
    pending_moved(s.n, n);
    s.n = n;
}

/// The thread's pending calls, `n` bounded for the verifier.
#[inline(always)]
fn pending_n(p: &PendingCalls) -> u32 {
    p.n.min(MAX_PENDING_CALLS as u32)
}

/// An entry's judgement.
pub(crate) enum Judged {
    /// Decided against the thread's pending calls (see `nesting::judge_entry`).
    Entry(Entry),
    /// The thread has no pending call: the call is the program's, or the
    /// allocator's own, by its return address alone, which was not read
    /// (see [`allocator_at`]).
    Outermost,
}

/// Judges an entry against the thread's pending calls `p` (see
/// `nesting::judge_entry`). Stale pending calls are counted and dropped here.
#[inline(always)]
fn judge(ctx: &ProbeContext, p: Option<*mut PendingCalls>, now: u64) -> Judged {
    let Some(p) = p else {
        return Judged::Outermost;
    };
    // SAFETY: the entry is only touched by its own thread, which is here.
    let s = unsafe { &*p };
    let n = pending_n(s);
    if n == 0 {
        return Judged::Outermost;
    }
    let sp = sp_of(ctx.regs);
    let ra = return_address(sp);
    let l = layout();
    // Classified once, before the loop over pending calls: asked lazily
    // inside it, the verifier walks the range loop once per pending call
    // and path, and verification explodes.
    let who = caller(l, ra);
    // A custom pool's code is the program's: beneath a pending pool call it
    // is the pool taking memory for itself.
    let top = n
        .checked_sub(1)
        .and_then(|i| s.calls.get(slot(i)))
        .map_or((false, 0), |c| (c.pool != 0, c.entry_sp));
    let who = nesting::beneath_pool(who, top.0, top.1, sp);
    let j = nesting::judge_entry(
        n,
        |i| {
            s.calls
                .get(slot(i))
                .map_or((0, 0), |c| (c.entry_sp, c.ts_ns))
        },
        sp,
        now,
        || who,
        || internal(l, ra),
    );
    if j.stale > 0 {
        // SAFETY: as above.
        let s = unsafe { &mut *p };
        set_n(s, pending_n(s).saturating_sub(j.stale));
        bump(counter::INFLIGHT_STALE, u64::from(j.stale));
    }
    match j.entry {
        Entry::Nested | Entry::Chained => bump(counter::NESTED, 1),
        Entry::Allocator => bump(counter::ALLOCATOR_CALLS, 1),
        Entry::Program => {}
    }
    Judged::Entry(j.entry)
}

/// Whether the allocator's own code made a call whose return address is
/// `ra` (counted when it did): the rest of [`Judged::Outermost`].
#[inline(always)]
pub(crate) fn allocator_at(ra: Option<u64>) -> bool {
    let own = internal(layout(), ra);
    if own {
        bump(counter::ALLOCATOR_CALLS, 1);
    }
    own
}

/// [`allocator_at`] the return address of a call that just entered.
#[inline(always)]
pub(crate) fn allocator_called(ctx: &ProbeContext) -> bool {
    allocator_at(return_address(sp_of(ctx.regs)))
}

/// Pushes a pending call on the thread's stack `p` (creating it on first use).
#[inline(always)]
fn push(tid: u64, p: Option<*mut PendingCalls>, call: &Inflight) {
    let p = match p {
        Some(p) => p,
        None => {
            let Some(empty) = EMPTY_CALLS.get(0) else {
                return;
            };
            if INFLIGHT.insert(tid, empty, 0).is_err() {
                bump(counter::INFLIGHT_FULL, 1);
                return;
            }
            match INFLIGHT.get_ptr_mut(tid) {
                Some(p) => p,
                None => return,
            }
        }
    };
    // SAFETY: the entry is only touched by its own thread, which is here.
    let s = unsafe { &mut *p };
    let n = pending_n(s);
    match s.calls.get_mut(slot(n)) {
        Some(slot) => {
            *slot = *call;
            set_n(s, n + 1);
        }
        // Signal handlers nested deeper than the stack holds.
        None => bump(counter::INFLIGHT_FULL, 1),
    }
}

/// Records entry into an allocator function with a return probe. A call
/// nested in the thread's top pending one is not recorded (the allocator's
/// own); a tail call deepens the chain; a signal handler's call is pushed
/// over the call it interrupted. `sampled` is 1 when a session entry has
/// already drawn this call's sample.
#[inline(always)]
pub(crate) fn enter(ctx: &ProbeContext, kind: AllocKind, args: [u64; 3], pool: bool, sampled: u32) {
    let tid = bpf_get_current_pid_tgid();
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let p = INFLIGHT.get_ptr_mut(tid);
    let internal = match judge(ctx, p, now) {
        Judged::Outermost => INTERNAL_AT_RETURN,
        Judged::Entry(Entry::Nested) => return,
        Judged::Entry(Entry::Chained) => {
            if let Some(p) = p {
                // SAFETY: the entry is only touched by its own thread, which is here.
                let s = unsafe { &mut *p };
                if let Some(top) = pending_n(s)
                    .checked_sub(1)
                    .and_then(|i| s.calls.get_mut(slot(i)))
                {
                    top.depth += 1;
                }
            }
            return;
        }
        Judged::Entry(Entry::Program) => 0,
        Judged::Entry(Entry::Allocator) => 1,
    };
    let call = Inflight {
        kind: kind as u32,
        depth: 1,
        arg0: args[0],
        arg1: args[1],
        arg2: args[2],
        ts_ns: now,
        entry_sp: sp_of(ctx.regs),
        internal,
        pool: u32::from(pool),
        sampled,
        _pad: 0,
    };
    push(tid, p, &call);
}

/// True when the current thread has a pending (kept) allocator call: a
/// call entering now may be nested in it. Asks `INFLIGHT` only while some
/// thread has one (see `PENDING_THREADS`).
#[inline(always)]
pub(crate) fn thread_has_pending() -> bool {
    if !any_pending() {
        return false;
    }
    let tid = bpf_get_current_pid_tgid();
    match INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: the entry is only touched by its own thread, which is here.
        Some(p) => pending_n(unsafe { &*p }) > 0,
        None => false,
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
    /// The program or the allocator on its own, not told yet: the thread
    /// has no pending call (see [`allocator_called`]).
    Outermost,
}

/// Judges a call that has no return probe.
#[inline(always)]
pub(crate) fn judge_entry_only(ctx: &ProbeContext) -> EntryOnly {
    let tid = bpf_get_current_pid_tgid();
    let p = INFLIGHT.get_ptr_mut(tid);
    // SAFETY: the entry is only touched by its own thread, which is here.
    if p.is_none_or(|p| pending_n(unsafe { &*p }) == 0) {
        // No clock read either: only pending calls age.
        return EntryOnly::Outermost;
    }
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match judge(ctx, p, now) {
        Judged::Entry(Entry::Nested | Entry::Chained) => EntryOnly::Nested,
        Judged::Entry(Entry::Program) => EntryOnly::Program,
        Judged::Entry(Entry::Allocator) => EntryOnly::Allocator,
        Judged::Outermost => EntryOnly::Outermost,
    }
}

/// Leaves an allocator function: `Some(call)` only for the return of the
/// top pending call (stack pointer one slot above its entry), once per chain.
#[inline(always)]
pub(crate) fn leave(ctx: &RetProbeContext) -> Option<Inflight> {
    let tid = bpf_get_current_pid_tgid();
    let Some(p) = INFLIGHT.get_ptr_mut(tid) else {
        // No state at all: this thread has not entered a probed call since
        // the entry probes went in (see `counter::RETURNS_BEFORE_ENTRY`).
        if armed() {
            bump(counter::RETURNS_BEFORE_ENTRY, 1);
        }
        return None;
    };
    // SAFETY: the entry is only touched by its own thread, which is here.
    let s = unsafe { &mut *p };
    let j = nesting::on_return(
        pending_n(s),
        |i| {
            s.calls
                .get(slot(i))
                .map_or((0, 0), |c| (c.entry_sp, c.depth))
        },
        sp_of(ctx.regs),
    );
    let n = pending_n(s).saturating_sub(j.stale);
    set_n(s, n);
    if j.stale > 0 {
        bump(counter::INFLIGHT_STALE, u64::from(j.stale));
    }
    let top = n.checked_sub(1).map(slot);
    match j.ret {
        Return::Nested => None,
        Return::Chained => {
            if let Some(c) = top.and_then(|i| s.calls.get_mut(i)) {
                c.depth -= 1;
            }
            None
        }
        Return::Outermost => {
            let call = top.and_then(|i| s.calls.get(i)).copied();
            set_n(s, n.saturating_sub(1));
            call
        }
        Return::Unmatched => {
            if j.stale > 0 || armed() {
                bump(counter::UNMATCHED_RETURN, 1);
            }
            None
        }
    }
}
