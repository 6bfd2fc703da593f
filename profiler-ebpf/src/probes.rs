//! The probe programs: per-thread entry state, the live map and call-site
//! counters, realloc/posix_memalign/mmap semantics.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{tracing::StackIdContext, ProbeContext, RetProbeContext},
};
use profiler_common::{
    counter, stack_mode, AllocKind, Inflight, LiveAlloc, LiveKey, MapEvent, SampledFree,
    SiteCounters, SiteKey, COUNT_SCALE, EVENT_SAMPLED_FREE, INFLIGHT_STALE_NS, MAP_ANONYMOUS,
    MAP_STACK, STACK_NONE, STACK_UNSAMPLED, STACK_USER,
};

use crate::maps::{
    bump, config_u32, ALLOC_TEXT, ALLOC_TEXT_SLOTS, EVENTS, INFLIGHT, LIVE, MAP_FAILED, SITES,
    STACKS, STACK_MODE, XOL,
};
use crate::sample::{emit_sample, sample, sample_header};

#[inline(always)]
fn tgid_of(pid_tgid: u64) -> u32 {
    (pid_tgid >> 32) as u32
}

/// The stack pointer of the probed context.
#[inline(always)]
fn sp_of(regs: *mut aya_ebpf::bindings::pt_regs) -> u64 {
    // SAFETY: `regs` is the pt_regs the kernel passed to this program.
    unsafe { (*regs).rsp }
}

/// How a call relates to the thread's recorded allocator call.
enum Relation {
    /// Deeper in the stack: the allocator calling itself.
    Nested,
    /// At the same return slot: a tail call from the recorded call.
    Chained,
    /// The recorded call is gone (returned unseen, or too old).
    Stale,
}

/// Who made a call, from the return address in its slot at entry.
enum Caller {
    /// The uretprobe trampoline: a tail call of a call whose return is pending.
    Trampoline,
    /// Code of the allocator's modules: the allocator calling itself.
    Allocator,
    /// The program.
    Program,
    /// Not known (layout not set yet, or the slot unreadable).
    Unknown,
}

#[inline(always)]
fn caller(sp: u64) -> Caller {
    // SAFETY: reads one word of the thread's stack; a fault is an error.
    let Ok(ra) = (unsafe { bpf_probe_read_user(sp as *const u64) }) else {
        return Caller::Unknown;
    };
    let xol = XOL.get(0).copied().unwrap_or(0);
    if xol != 0 && ra >= xol && ra < xol + 4096 {
        return Caller::Trampoline;
    }
    let mut known = false;
    for i in 0..(ALLOC_TEXT_SLOTS / 2) {
        let start = ALLOC_TEXT.get(2 * i).copied().unwrap_or(0);
        let end = ALLOC_TEXT.get(2 * i + 1).copied().unwrap_or(0);
        if start != 0 {
            known = true;
            if ra >= start && ra < end {
                return Caller::Allocator;
            }
        }
    }
    if known && xol != 0 {
        Caller::Program
    } else {
        Caller::Unknown
    }
}

#[inline(always)]
fn relation(st: &Inflight, sp: u64, now: u64) -> Relation {
    if now.wrapping_sub(st.ts_ns) >= INFLIGHT_STALE_NS || sp > st.entry_sp {
        return Relation::Stale;
    }
    match caller(sp) {
        // The program only runs again once the recorded call has returned:
        // its return probe was skipped.
        Caller::Program => Relation::Stale,
        Caller::Trampoline if sp == st.entry_sp => Relation::Chained,
        Caller::Trampoline => Relation::Nested,
        Caller::Allocator => Relation::Nested,
        // Without the layout, judge by the stack alone.
        Caller::Unknown if sp == st.entry_sp => Relation::Chained,
        Caller::Unknown => Relation::Nested,
    }
}

/// Records entry into an allocator function. Returns without saving when the
/// thread is already inside one (the call is the allocator's own).
#[inline(always)]
fn enter(ctx: &ProbeContext, kind: AllocKind, arg0: u64, arg1: u64, arg2: u64) {
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
            Relation::Stale => bump(counter::INFLIGHT_STALE, 1),
        }
    }
    let st = Inflight {
        kind: kind as u32,
        depth: 1,
        arg0,
        arg1,
        arg2,
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
fn leave(ctx: &RetProbeContext) -> Option<Inflight> {
    let tid = bpf_get_current_pid_tgid();
    let Some(st) = INFLIGHT.get_ptr_mut(tid) else {
        bump(counter::UNMATCHED_RETURN, 1);
        return None;
    };
    let sp = sp_of(ctx.regs);
    // SAFETY: the entry is only touched by its own thread, which is here.
    let st_val = unsafe { *st };
    let ret_sp = st_val.entry_sp.wrapping_add(8);
    if sp < ret_sp {
        // The return of a nested call.
        return None;
    }
    if sp > ret_sp {
        // The recorded call returned unseen; this return is not ours to match.
        let _ = INFLIGHT.remove(tid);
        bump(counter::INFLIGHT_STALE, 1);
        bump(counter::UNMATCHED_RETURN, 1);
        return None;
    }
    if st_val.depth > 1 {
        // SAFETY: as above.
        unsafe { (*st).depth -= 1 };
        return None;
    }
    let _ = INFLIGHT.remove(tid);
    Some(st_val)
}

/// True while this thread is inside a probed allocator function (`free` or
/// `munmap` called by the allocator itself). A stale state is dropped.
#[inline(always)]
fn nested(ctx: &ProbeContext) -> bool {
    let tid = bpf_get_current_pid_tgid();
    let Some(st) = INFLIGHT.get_ptr(tid) else {
        return false;
    };
    // SAFETY: a plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the entry is only touched by its own thread, which is here.
    match relation(unsafe { &*st }, sp_of(ctx.regs), now) {
        Relation::Nested | Relation::Chained => true,
        Relation::Stale => {
            let _ = INFLIGHT.remove(tid);
            bump(counter::INFLIGHT_STALE, 1);
            false
        }
    }
}

#[inline(always)]
fn site_add(key: &SiteKey, alloc_bytes: u64, alloc_count: u64, free_bytes: u64, free_count: u64) {
    let mut p = SITES.get_ptr_mut(key);
    if p.is_none() {
        if SITES
            .insert(key, SiteCounters::default(), 1 /* BPF_NOEXIST */)
            .is_err()
        {
            // Another CPU may have created it meanwhile; look again before counting a loss.
        }
        p = SITES.get_ptr_mut(key);
    }
    match p {
        Some(c) => {
            // SAFETY: a per-CPU value, only this CPU writes it while this program runs.
            unsafe {
                (*c).alloc_bytes += alloc_bytes;
                (*c).alloc_count += alloc_count;
                (*c).free_bytes += free_bytes;
                (*c).free_count += free_count;
            }
        }
        None => bump(counter::SITE_MAP_FULL, 1),
    }
}

#[inline(always)]
fn stack_of(ctx: &RetProbeContext) -> i32 {
    match ctx.get_stackid(&STACKS, BPF_F_USER_STACK as u64) {
        Ok(id) => id as i32,
        Err(_) => {
            bump(counter::STACK_FAILED, 1);
            STACK_NONE
        }
    }
}

#[inline(always)]
fn record_free(tgid: u32, ptr: u64) {
    let key = LiveKey { tgid, _pad: 0, ptr };
    // SAFETY: the value is copied out at once; a concurrent remove of the same
    // pointer would be a double free in the target.
    let Some(a) = (unsafe { LIVE.get(&key) }).copied() else {
        bump(counter::FREES_UNKNOWN, 1);
        return;
    };
    let _ = LIVE.remove(&key);
    bump(counter::FREES, 1);
    bump(counter::FREE_BYTES, a.size);
    match a.stack_id {
        STACK_UNSAMPLED => {}
        STACK_USER => {
            let ev = SampledFree {
                kind: EVENT_SAMPLED_FREE,
                tgid,
                ptr,
                // SAFETY: a plain helper call without arguments.
                ts_ns: unsafe { bpf_ktime_get_ns() },
            };
            if EVENTS.output::<SampledFree>(&ev, 0).is_err() {
                bump(counter::SAMPLED_FREE_LOST, 1);
            }
        }
        stack_id => {
            let site = SiteKey {
                stack_id,
                kind: a.kind,
            };
            site_add(&site, 0, 0, a.est_bytes, a.est_count);
        }
    }
}

#[inline(always)]
fn record_alloc(ctx: &RetProbeContext, tgid: u32, ptr: u64, size: u64, kind: AllocKind) {
    let key = LiveKey { tgid, _pad: 0, ptr };
    // SAFETY: copied out at once, see record_free.
    if unsafe { LIVE.get(&key) }.is_some() {
        // Its free was never seen (e.g. the entry state did not fit); retire it.
        bump(counter::REPLACED, 1);
        record_free(tgid, ptr);
    }
    let est = sample(size);
    let dwarf = config_u32(&STACK_MODE) == stack_mode::DWARF;
    let stack_id = match est {
        None => STACK_UNSAMPLED,
        Some(_) if dwarf => STACK_USER,
        Some(_) => stack_of(ctx),
    };
    let (est_bytes, est_count) = est.unwrap_or((0, 0));
    // SAFETY: a plain helper call without arguments.
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let val = LiveAlloc {
        size,
        ts_ns,
        stack_id,
        kind: kind as u32,
        est_bytes,
        est_count,
    };
    if LIVE.insert(&key, &val, 0).is_err() {
        bump(counter::LIVE_MAP_FULL, 1);
        return;
    }
    bump(counter::ALLOCS, 1);
    bump(counter::ALLOC_BYTES, size);
    if est.is_none() {
        return;
    }
    bump(counter::SAMPLED, 1);
    let mut site_stack = stack_id;
    if dwarf {
        let h = sample_header(ctx, tgid, kind, ptr, size, (est_bytes, est_count));
        if emit_sample(h) {
            return;
        }
        bump(counter::RINGBUF_LOST, 1);
        // Keep the estimate, unattributed, rather than lose it.
        site_stack = STACK_NONE;
        if let Some(e) = LIVE.get_ptr_mut(&key) {
            // SAFETY: the entry was inserted above by this thread.
            unsafe { (*e).stack_id = STACK_NONE };
        }
    }
    let site = SiteKey {
        stack_id: site_stack,
        kind: kind as u32,
    };
    site_add(&site, est_bytes, est_count, 0, 0);
}

#[inline(always)]
fn emit_map_event(ev: MapEvent) {
    if EVENTS.output::<MapEvent>(&ev, 0).is_err() {
        bump(counter::RINGBUF_LOST, 1);
    }
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

// ---- entry probes -------------------------------------------------------

#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Malloc, arg(&ctx, 0), 0, 0);
    0
}

#[uprobe]
pub fn calloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Calloc, arg(&ctx, 0), arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn realloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Realloc, arg(&ctx, 0), arg(&ctx, 1), 0);
    0
}

#[uprobe]
pub fn reallocarray_enter(ctx: ProbeContext) -> u32 {
    enter(
        &ctx,
        AllocKind::Reallocarray,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
    );
    0
}

#[uprobe]
pub fn posix_memalign_enter(ctx: ProbeContext) -> u32 {
    // (memptr, alignment, size)
    enter(
        &ctx,
        AllocKind::PosixMemalign,
        arg(&ctx, 0),
        arg(&ctx, 2),
        0,
    );
    0
}

#[uprobe]
pub fn aligned_alloc_enter(ctx: ProbeContext) -> u32 {
    // (alignment, size)
    enter(&ctx, AllocKind::AlignedAlloc, arg(&ctx, 1), 0, 0);
    0
}

#[uprobe]
pub fn memalign_enter(ctx: ProbeContext) -> u32 {
    // (alignment, size)
    enter(&ctx, AllocKind::Memalign, arg(&ctx, 1), 0, 0);
    0
}

#[uprobe]
pub fn valloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Valloc, arg(&ctx, 0), 0, 0);
    0
}

#[uprobe]
pub fn pvalloc_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, AllocKind::Pvalloc, arg(&ctx, 0), 0, 0);
    0
}

#[uprobe]
pub fn mmap_enter(ctx: ProbeContext) -> u32 {
    // (addr, length, prot, flags, fd, offset)
    enter(&ctx, AllocKind::Mmap, arg(&ctx, 1), arg(&ctx, 3), 0);
    0
}

#[uprobe]
pub fn mremap_enter(ctx: ProbeContext) -> u32 {
    // (old_address, old_size, new_size, flags, ...)
    enter(
        &ctx,
        AllocKind::Mremap,
        arg(&ctx, 0),
        arg(&ctx, 1),
        arg(&ctx, 2),
    );
    0
}

/// free has no return probe: it returns nothing, and skipping the return trap halves its cost.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let ptr = arg(&ctx, 0);
    if ptr == 0 || nested(&ctx) {
        return 0;
    }
    record_free(tgid_of(bpf_get_current_pid_tgid()), ptr);
    0
}

#[uprobe]
pub fn munmap_enter(ctx: ProbeContext) -> u32 {
    if nested(&ctx) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    emit_map_event(MapEvent {
        kind: AllocKind::Munmap as u32,
        tgid: tgid_of(pid_tgid),
        addr: arg(&ctx, 0),
        len: arg(&ctx, 1),
        new_addr: 0,
        new_len: 0,
        // SAFETY: a plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        stack_id: STACK_NONE,
        _pad: 0,
    });
    0
}

// ---- return probes ------------------------------------------------------

/// The common return path: the outermost call's saved state and its result.
#[inline(always)]
fn on_return(ctx: &RetProbeContext) -> u32 {
    let Some(st) = leave(ctx) else { return 0 };
    let ret: u64 = ctx.ret();
    let tgid = tgid_of(bpf_get_current_pid_tgid());
    let Some(kind) = AllocKind::from_u32(st.kind) else {
        return 0;
    };
    match kind {
        AllocKind::Malloc | AllocKind::AlignedAlloc | AllocKind::Memalign | AllocKind::Valloc => {
            alloc_result(ctx, tgid, ret, st.arg0, kind)
        }
        AllocKind::Pvalloc => {
            // pvalloc rounds the request up to whole pages.
            let size = (st.arg0 + 4095) & !4095u64;
            alloc_result(ctx, tgid, ret, size, kind)
        }
        AllocKind::Calloc => alloc_result(ctx, tgid, ret, st.arg0.wrapping_mul(st.arg1), kind),
        AllocKind::Realloc => realloc_result(ctx, tgid, ret, st.arg0, st.arg1, kind),
        AllocKind::Reallocarray => {
            realloc_result(ctx, tgid, ret, st.arg0, st.arg1.wrapping_mul(st.arg2), kind)
        }
        AllocKind::PosixMemalign => {
            // Returns 0 on success and stores the block through memptr.
            if ret as u32 != 0 {
                bump(counter::ALLOC_FAILED, 1);
                return 0;
            }
            // SAFETY: reads one pointer from the target's memory; a fault is an error, not a crash.
            match unsafe { bpf_probe_read_user(st.arg0 as *const u64) } {
                Ok(ptr) if ptr != 0 => record_alloc(ctx, tgid, ptr, st.arg1, kind),
                _ => bump(counter::ALLOC_FAILED, 1),
            }
        }
        AllocKind::Mmap => {
            // Only anonymous memory is heap; thread stacks are not.
            if ret == MAP_FAILED || st.arg1 & MAP_ANONYMOUS == 0 || st.arg1 & MAP_STACK != 0 {
                return 0;
            }
            if config_u32(&STACK_MODE) == stack_mode::DWARF {
                // Mappings are few and large: always sampled, weight exact.
                let h = sample_header(ctx, tgid, kind, ret, st.arg0, (st.arg0, COUNT_SCALE));
                if !emit_sample(h) {
                    bump(counter::RINGBUF_LOST, 1);
                }
                return 0;
            }
            emit_map_event(MapEvent {
                kind: AllocKind::Mmap as u32,
                tgid,
                addr: ret,
                len: st.arg0,
                new_addr: 0,
                new_len: 0,
                // SAFETY: a plain helper call without arguments.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                stack_id: stack_of(ctx),
                _pad: 0,
            });
        }
        AllocKind::Mremap => {
            if ret == MAP_FAILED {
                return 0;
            }
            emit_map_event(MapEvent {
                kind: AllocKind::Mremap as u32,
                tgid,
                addr: st.arg0,
                len: st.arg1,
                new_addr: ret,
                new_len: st.arg2,
                // SAFETY: a plain helper call without arguments.
                ts_ns: unsafe { bpf_ktime_get_ns() },
                stack_id: STACK_NONE,
                _pad: 0,
            });
        }
        AllocKind::Free | AllocKind::Munmap => {}
    }
    0
}

#[inline(always)]
fn alloc_result(ctx: &RetProbeContext, tgid: u32, ret: u64, size: u64, kind: AllocKind) {
    if ret == 0 {
        bump(counter::ALLOC_FAILED, 1);
        return;
    }
    record_alloc(ctx, tgid, ret, size, kind);
}

/// realloc is free(old) + alloc(new) attributed to realloc's caller. A failed
/// realloc keeps the old block; glibc's realloc(p, 0) frees p and returns NULL.
#[inline(always)]
fn realloc_result(
    ctx: &RetProbeContext,
    tgid: u32,
    ret: u64,
    old: u64,
    size: u64,
    kind: AllocKind,
) {
    if ret == 0 {
        if size == 0 && old != 0 {
            record_free(tgid, old);
        } else {
            bump(counter::ALLOC_FAILED, 1);
        }
        return;
    }
    if old != 0 {
        record_free(tgid, old);
    }
    record_alloc(ctx, tgid, ret, size, kind);
}

#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    on_return(&ctx)
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
