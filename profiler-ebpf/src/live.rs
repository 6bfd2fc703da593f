//! Live accounting: the live map, the call-site counters and the
//! mapping events, updated from the outcome of one outermost allocator call.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_pid_tgid, bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_user},
    programs::RetProbeContext,
    EbpfContext as _,
};
use profiler_common::{
    counter, stack_hash_finish, stack_hash_step, stack_id_of_hash, AllocKind, EventKind, LiveAlloc,
    LiveKey, MapEvent, Outcome, SampledFree, SiteCounters, SiteKey, StackMode, COUNT_SCALE,
    FREED_BY_ALLOCATOR, FREED_BY_EITHER, FREED_BY_PROGRAM, MAX_FP_FRAMES, STACK_HASH_SEED,
    STACK_NONE, STACK_UNSAMPLED, STACK_USER,
};

use crate::maps::{
    atomic_add, bump, config_u32, tracked_add, user_live, LIVE, SITES, STACK_MODE, STACK_SCRATCH,
    STACK_TABLE,
};
use crate::sample::{emit_sample, estimate_drawn, sample, sample_header};

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;
/// The error an insert with `BPF_NOEXIST` returns for a present key.
const EEXIST: i32 = 17;

#[inline(always)]
fn dwarf() -> bool {
    config_u32(&STACK_MODE) == StackMode::Dwarf as u32
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a plain helper call without arguments.
    unsafe { bpf_ktime_get_ns() }
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
            // Atomic adds: a preempted program on this CPU may be updating
            // the same per-CPU value (see `bump`).
            // SAFETY: `c` points at a live, aligned map value; the field
            // pointers are taken without creating references.
            unsafe {
                add(core::ptr::addr_of_mut!((*c).alloc_bytes), alloc_bytes);
                add(core::ptr::addr_of_mut!((*c).alloc_count), alloc_count);
                add(core::ptr::addr_of_mut!((*c).free_bytes), free_bytes);
                add(core::ptr::addr_of_mut!((*c).free_count), free_count);
            }
        }
        None => bump(counter::SITE_MAP_FULL, 1),
    }
}

/// Adds to a u64 in a map value.
///
/// # Safety
/// `p` must point at a live, aligned u64 inside a map value.
#[inline(always)]
unsafe fn add(p: *mut u64, by: u64) {
    if by != 0 {
        // SAFETY: guaranteed by the caller.
        unsafe { atomic_add(p, by) };
    }
}

/// The id of the current user stack (frame-pointer walk) in heapscope's
/// stack table, storing it on first sight; [`STACK_NONE`] (counted) when
/// it cannot be captured or the table is full.
#[inline(always)]
fn stack_of(ctx: &RetProbeContext) -> i32 {
    let id = capture_stack(ctx);
    if id < 0 {
        bump(counter::STACK_FAILED, 1);
    }
    id
}

#[inline(always)]
fn capture_stack(ctx: &RetProbeContext) -> i32 {
    let Some(buf) = STACK_SCRATCH.get_ptr_mut(0) else {
        return STACK_NONE;
    };
    // SAFETY: `ips` lies inside this CPU's scratch value and is
    // MAX_FP_FRAMES u64s long; the helper zero-fills what the walk does not use.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            core::ptr::addr_of_mut!((*buf).ips) as *mut core::ffi::c_void,
            (MAX_FP_FRAMES * 8) as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if n <= 0 {
        return STACK_NONE;
    }
    let frames = (n as usize) / 8;
    let mut h = STACK_HASH_SEED;
    for i in 0..MAX_FP_FRAMES {
        if i >= frames {
            break;
        }
        // SAFETY: `i` < MAX_FP_FRAMES, inside the scratch value.
        h = stack_hash_step(h, unsafe { (*buf).ips[i] });
    }
    let h = stack_hash_finish(h, frames as u64);
    // SAFETY: inside this CPU's scratch value.
    unsafe { (*buf).hash = h };
    let id = stack_id_of_hash(h);
    let key = id as u32;
    // SAFETY: the hash is copied out at once.
    if let Some(stored) = unsafe { STACK_TABLE.get(&key) } {
        return if stored.hash == h { id } else { STACK_NONE };
    }
    // SAFETY: `buf` is a valid FpStack for the duration of the call.
    if STACK_TABLE
        .insert(&key, unsafe { &*buf }, 1 /* BPF_NOEXIST */)
        .is_ok()
    {
        return id;
    }
    // Another CPU stored a stack under this id meanwhile (the same one, or
    // a clash), or the table is full.
    // SAFETY: as above.
    match unsafe { STACK_TABLE.get(&key) } {
        Some(stored) if stored.hash == h => id,
        _ => STACK_NONE,
    }
}

/// A block freed by the program: out of the live map, into the counters.
#[inline(always)]
pub(crate) fn record_free(tgid: u32, ptr: u64) {
    if user_live() {
        return send_free(tgid, ptr, FREED_BY_PROGRAM);
    }
    free_counted_as(tgid, ptr, || counter::FREES_UNKNOWN)
}

/// A free by the program or by the allocator on its own, not told yet:
/// `allocator` tells, and is asked only when `ptr` is not tracked.
#[inline(always)]
pub(crate) fn record_outermost_free(tgid: u32, ptr: u64, allocator: impl FnOnce() -> bool) {
    if user_live() {
        return send_free(tgid, ptr, FREED_BY_EITHER);
    }
    free_counted_as(tgid, ptr, || {
        if allocator() {
            counter::ALLOCATOR_FREES
        } else {
            counter::FREES_UNKNOWN
        }
    })
}

/// A free for userspace to match against the blocks it holds (see
/// `USER_LIVE`), `who` one of the `FREED_BY_*` values.
#[inline(always)]
fn send_free(tgid: u32, ptr: u64, who: u32) {
    let ev = SampledFree {
        kind: EventKind::SampledFree as u32,
        tgid,
        ptr,
        tid: bpf_get_current_pid_tgid() as u32,
        who,
        ts_ns: now(),
    };
    if !crate::ring::output(&ev) {
        bump(counter::SAMPLED_FREE_LOST, 1);
    }
}

/// A free made by the allocator's own code (its thread cache at thread
/// exit): a block of the program's is still freed; anything else was never
/// the program's, so it is not a pre-attach free.
#[inline(always)]
pub(crate) fn record_allocator_free(tgid: u32, ptr: u64) {
    if user_live() {
        return send_free(tgid, ptr, FREED_BY_ALLOCATOR);
    }
    free_counted_as(tgid, ptr, || counter::ALLOCATOR_FREES)
}

/// Frees `ptr`; a pointer not in the live map bumps the counter `unknown` names.
#[inline(always)]
fn free_counted_as(tgid: u32, ptr: u64, unknown: impl FnOnce() -> u32) {
    let key = LiveKey { tgid, _pad: 0, ptr };
    // SAFETY: the value is copied out at once; a concurrent remove of the same
    // pointer would be a double free in the target.
    let Some(a) = (unsafe { LIVE.get(&key) }).copied() else {
        bump(unknown(), 1);
        return;
    };
    if LIVE.remove(&key).is_ok() {
        tracked_add(ptr, u64::MAX);
    }
    bump(counter::FREES, 1);
    bump(counter::FREE_BYTES, a.size);
    match a.stack_id {
        STACK_UNSAMPLED => {}
        STACK_USER => send_free(tgid, ptr, FREED_BY_PROGRAM),
        stack_id => {
            let site = SiteKey {
                stack_id,
                kind: a.kind,
                tgid,
                _pad: 0,
            };
            site_add(&site, 0, 0, a.est_bytes, a.est_count);
            if a.tid != bpf_get_current_pid_tgid() as u32 {
                site_cross(&site, a.est_bytes, a.est_count);
            }
        }
    }
}

/// A free of a frame-pointer site's block by another thread than the one
/// that allocated it (the site's entry exists: the free was just added).
#[inline(always)]
fn site_cross(key: &SiteKey, bytes: u64, count: u64) {
    if let Some(c) = SITES.get_ptr_mut(key) {
        // SAFETY: as in `site_add`.
        unsafe {
            add(core::ptr::addr_of_mut!((*c).cross_bytes), bytes);
            add(core::ptr::addr_of_mut!((*c).cross_count), count);
        }
    }
}

/// A block allocated by the program: into the live map, sampled or not.
/// `drawn`: a session entry already drew it as a sample.
#[inline(always)]
fn record_alloc(
    ctx: &RetProbeContext,
    tgid: u32,
    ptr: u64,
    size: u64,
    kind: AllocKind,
    drawn: bool,
) {
    if user_live() {
        return send_alloc(ctx, tgid, ptr, size, kind);
    }
    let key = LiveKey { tgid, _pad: 0, ptr };
    let est = if drawn {
        estimate_drawn(size)
    } else {
        sample(size)
    };
    let dwarf = dwarf();
    let stack_id = match est {
        None => STACK_UNSAMPLED,
        Some(_) if dwarf => STACK_USER,
        Some(_) => stack_of(ctx),
    };
    let (est_bytes, est_count) = est.unwrap_or((0, 0));
    let val = LiveAlloc {
        size,
        ts_ns: now(),
        stack_id,
        kind: kind as u32,
        est_bytes,
        est_count,
        tid: bpf_get_current_pid_tgid() as u32,
        _pad: 0,
    };
    // One map operation in the common case (a lookup first cost ~50 ns a call).
    match LIVE.insert(&key, &val, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            // Its free was never seen (e.g. the entry state did not fit):
            // retire the old block, then track this one.
            bump(counter::REPLACED, 1);
            record_free(tgid, ptr);
            if LIVE.insert(&key, &val, 0).is_err() {
                bump(counter::LIVE_MAP_FULL, 1);
                return;
            }
        }
        Err(_) => {
            bump(counter::LIVE_MAP_FULL, 1);
            return;
        }
    }
    tracked_add(ptr, 1);
    bump(counter::ALLOCS, 1);
    bump(counter::ALLOC_BYTES, size);
    if est.is_none() {
        return;
    }
    bump(counter::SAMPLED, 1);
    let mut site_stack = stack_id;
    if dwarf {
        let origin = (tgid, val.tid, val.ts_ns);
        let h = sample_header(ctx, origin, kind, ptr, size, (est_bytes, est_count));
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
        tgid,
        _pad: 0,
    };
    site_add(&site, est_bytes, est_count, 0, 0);
}

/// An allocation for userspace to hold (see `USER_LIVE`): counted, and sent
/// as a sample whose weight is the block itself.
#[inline(always)]
fn send_alloc(ctx: &RetProbeContext, tgid: u32, ptr: u64, size: u64, kind: AllocKind) {
    let origin = (tgid, bpf_get_current_pid_tgid() as u32, now());
    let h = sample_header(ctx, origin, kind, ptr, size, (size, COUNT_SCALE));
    if !emit_sample(h) {
        // Not counted as allocated either: its free will not match, and
        // counting it would leave it in allocated - freed for good (a
        // python3 run that lost 24k records showed a 46 MiB live heap
        // beside 3.4 MiB held). Lost, and the totals say so.
        bump(counter::RINGBUF_LOST, 1);
        return;
    }
    bump(counter::ALLOCS, 1);
    bump(counter::ALLOC_BYTES, size);
    bump(counter::SAMPLED, 1);
}

/// Sends a mapping event of the program to userspace, which tracks regions.
#[inline(always)]
pub(crate) fn emit_map_event(ev: MapEvent) {
    if !crate::ring::output(&ev) {
        bump(counter::RINGBUF_LOST, 1);
    }
}

/// A mapping event with only an old range (munmap) or a new one (mmap).
#[inline(always)]
pub(crate) fn map_event(
    kind: EventKind,
    tgid: u32,
    addr: u64,
    len: u64,
    stack_id: i32,
) -> MapEvent {
    MapEvent {
        kind: kind as u32,
        tgid,
        addr,
        len,
        new_addr: 0,
        new_len: 0,
        ts_ns: now(),
        stack_id,
        _pad: 0,
    }
}

/// Applies the outcome of the program's outermost allocator call of `kind`
/// (`drawn`: its sample was drawn at a session entry).
#[inline(always)]
pub(crate) fn account(
    ctx: &RetProbeContext,
    tgid: u32,
    kind: AllocKind,
    outcome: Outcome,
    drawn: bool,
) {
    // One call site each for the free and the allocation: inlined once per
    // outcome, their paths multiplied the verifier's work (and the attach).
    let (old, new) = match outcome {
        Outcome::Alloc { ptr, size } => (None, Some((ptr, size))),
        // SAFETY: reads one pointer from the target's memory; a fault is an error, not a crash.
        Outcome::AllocAt { memptr, size } => {
            match unsafe { bpf_probe_read_user(memptr as *const u64) } {
                Ok(ptr) if ptr != 0 => (None, Some((ptr, size))),
                _ => {
                    bump(counter::ALLOC_FAILED, 1);
                    return;
                }
            }
        }
        // realloc is free(old) + alloc(new) attributed to realloc's caller.
        Outcome::Realloc { old, new, size } => ((old != 0).then_some(old), Some((new, size))),
        Outcome::Free { ptr } => (Some(ptr), None),
        other => return account_other(ctx, tgid, kind, other),
    };
    if let Some(old) = old {
        record_free(tgid, old);
    }
    if let Some((ptr, size)) = new {
        record_alloc(ctx, tgid, ptr, size, kind, drawn);
    }
}

/// [`account`] of the outcomes that are not heap blocks.
#[inline(always)]
fn account_other(ctx: &RetProbeContext, tgid: u32, kind: AllocKind, outcome: Outcome) {
    match outcome {
        Outcome::Map { addr, len } => {
            if dwarf() {
                // Mappings are few and large: always sampled, weight exact.
                let origin = (tgid, bpf_get_current_pid_tgid() as u32, now());
                let h = sample_header(ctx, origin, kind, addr, len, (len, COUNT_SCALE));
                if !emit_sample(h) {
                    bump(counter::RINGBUF_LOST, 1);
                }
                return;
            }
            emit_map_event(map_event(EventKind::Mmap, tgid, addr, len, stack_of(ctx)));
        }
        Outcome::Remap {
            old,
            old_len,
            new,
            new_len,
        } => emit_map_event(MapEvent {
            kind: EventKind::Mremap as u32,
            tgid,
            addr: old,
            len: old_len,
            new_addr: new,
            new_len,
            ts_ns: now(),
            stack_id: STACK_NONE,
            _pad: 0,
        }),
        Outcome::Failed => bump(counter::ALLOC_FAILED, 1),
        Outcome::Ignore
        | Outcome::Alloc { .. }
        | Outcome::AllocAt { .. }
        | Outcome::Realloc { .. }
        | Outcome::Free { .. } => {}
    }
}

/// Applies the outcome of an allocator call the allocator (or a custom
/// pool) made on its own: its mappings and blocks are footprint, never
/// program allocations.
#[inline(always)]
pub(crate) fn account_allocator(outcome: Outcome) {
    match outcome {
        Outcome::Map { len, .. } => bump(counter::ALLOCATOR_MAPPED, len),
        Outcome::Remap {
            old_len, new_len, ..
        } => {
            if new_len >= old_len {
                bump(counter::ALLOCATOR_MAPPED, new_len - old_len);
            } else {
                bump(counter::ALLOCATOR_UNMAPPED, old_len - new_len);
            }
        }
        // A block taken from the allocator below by a custom pool's own code
        // (its start-up chunk): the pool's footprint.
        Outcome::Alloc { size, .. } | Outcome::AllocAt { size, .. } => {
            bump(counter::ALLOCATOR_MAPPED, size)
        }
        _ => {}
    }
}
