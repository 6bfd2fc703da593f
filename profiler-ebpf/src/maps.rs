//! The maps and load-time settings shared by the probe programs and userspace.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, ProgramArray},
};
use profiler_common::nesting::AllocLayout;
use profiler_common::{
    counter, defaults, entry_ip_slot, EntryIp, FpStack, LiveAlloc, LiveKey, PendingCalls,
    SiteCounters, SiteKey, StackEnd, StackMode, ENTRY_IP_SLOTS, MAX_PROFILED, STACK_END_SLOTS,
    TABLE_LEN,
};

/// Mean bytes between sampled allocations; 0 samples every allocation.
/// Set by userspace at load time.
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_RATE: u64 = 0;

/// The sampling rate in force when not 0, set by userspace while the
/// session runs (`--max-overhead` samples less when the probes cost too
/// much); 0: `SAMPLE_RATE`.
#[map]
pub(crate) static RATE_NOW: Array<u64> = Array::with_max_entries(1, 0);

/// The sampling rate in force: `RATE_NOW` once set, else `SAMPLE_RATE`.
#[inline(always)]
pub(crate) fn sample_rate() -> u64 {
    match RATE_NOW.get(0).copied() {
        Some(r) if r != 0 => r,
        _ => config_u64(&SAMPLE_RATE),
    }
}

/// A `StackMode` discriminant, set by userspace at load time.
#[unsafe(no_mangle)]
pub(crate) static STACK_MODE: u32 = StackMode::FramePointer as u32;

/// Bytes of user stack copied per DWARF sample: one of `STACK_COPY_SIZES`.
#[unsafe(no_mangle)]
pub(crate) static STACK_COPY: u32 = defaults::STACK_COPY;

/// Per CPU: records submitted, to look at the ring's fill only every
/// few records (see `ring::Ring::wake_flags`).
#[map]
pub(crate) static WAKE_TICK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn config_u64(v: &u64) -> u64 {
    // SAFETY: reading a global the loader patched; volatile so the compiler
    // does not fold the default value.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub(crate) fn config_u32(v: &u32) -> u32 {
    // SAFETY: as config_u64.
    unsafe { core::ptr::read_volatile(v) }
}

/// Exponential quantiles (16.16) for sampling intervals, filled by userspace.
#[map]
pub(crate) static EXP_TABLE: Array<u32> = Array::with_max_entries(TABLE_LEN, 0);

/// g(x) = x/(1-e^-x) (16.16) for unbiased weights, filled by userspace.
#[map]
pub(crate) static WEIGHT_TABLE: Array<u32> = Array::with_max_entries(TABLE_LEN, 0);

/// Bytes left until the next sample, per CPU (0: not started). A per-CPU
/// countdown over the bytes allocated on that CPU is as unbiased as a
/// per-thread one (the intervals are memoryless, so whose bytes come next
/// does not matter) and costs an array slot instead of an LRU hash lookup
/// per call; a fresh thread never starts a countdown of its own.
#[map]
pub(crate) static COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// 1 when the allocation entry points may go in as uprobe sessions
/// (`--sessions`), set by userspace at load time: frees then first ask
/// `TRACKED` whether their block can be tracked at all, and threads with
/// pending calls are counted in `PENDING_THREADS`.
#[unsafe(no_mangle)]
pub(crate) static SESSIONS: u32 = 0;

/// True in session mode (see `SESSIONS`).
#[inline(always)]
pub(crate) fn sessions() -> bool {
    config_u32(&SESSIONS) != 0
}

/// 1 when userspace holds the live blocks, set at load time for `--exact`
/// with DWARF stacks: every allocation already goes to userspace as a
/// sample, with its pointer and size, so the kernel's `LIVE` map is not
/// written; every free goes to userspace as a record, which matches it
/// (and counts frees and freed bytes). The live map's insert, lookup and
/// delete were ~300 ns of each malloc/free pair.
#[unsafe(no_mangle)]
pub(crate) static USER_LIVE: u32 = 0;

/// True when userspace holds the live blocks (see `USER_LIVE`).
#[inline(always)]
pub(crate) fn user_live() -> bool {
    config_u32(&USER_LIVE) != 0
}

/// Slots of `TRACKED` (a power of two).
const TRACKED_SLOTS: u32 = 1 << 15;

/// In session mode, a counting filter over the live map: how many blocks
/// in `LIVE` hash to each slot (by pointer). Only sampled blocks are
/// tracked there, so most frees find their slot at 0 and stop, without the
/// live-map lookup (a cache miss in a table of a million buckets), the
/// return-address read and the nesting judgement. Counts only ever err
/// high (an entry userspace removed stays counted): a slot at 0 means no
/// tracked block.
#[map]
pub(crate) static TRACKED: Array<u64> = Array::with_max_entries(TRACKED_SLOTS, 0);

#[inline(always)]
fn tracked_slot(ptr: u64) -> u32 {
    // Fibonacci hashing of the pointer without its alignment bits.
    ((ptr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 49) as u32 & (TRACKED_SLOTS - 1)
}

/// False when no tracked block can be at `ptr` (session mode only; always
/// true otherwise).
#[inline(always)]
pub(crate) fn maybe_tracked(ptr: u64) -> bool {
    if !sessions() {
        return true;
    }
    TRACKED.get(tracked_slot(ptr)).is_none_or(|n| *n != 0)
}

/// Counts a block put into (`by` = 1) or taken out of (`by` = u64::MAX,
/// i.e. -1) the live map, in session mode.
#[inline(always)]
pub(crate) fn tracked_add(ptr: u64, by: u64) {
    if !sessions() {
        return;
    }
    if let Some(p) = TRACKED.get_ptr_mut(tracked_slot(ptr)) {
        // SAFETY: `p` points at a live, aligned u64 map value.
        unsafe { atomic_add(p, by) };
    }
}

/// In session mode, how many threads have a pending call in `INFLIGHT`
/// (each thread adds 1 as its count leaves 0 and takes it back as it
/// returns to 0; an entry userspace prunes stays counted, erring high).
/// While it is 0 no thread can be inside a kept call, and a session entry
/// skips the `INFLIGHT` lookup.
#[map]
pub(crate) static PENDING_THREADS: Array<u64> = Array::with_max_entries(1, 0);

/// Adjusts `PENDING_THREADS` for a thread whose pending count goes from
/// `old` to `new`.
#[inline(always)]
pub(crate) fn pending_moved(old: u32, new: u32) {
    if !sessions() || (old == 0) == (new == 0) {
        return;
    }
    if let Some(p) = PENDING_THREADS.get_ptr_mut(0) {
        let by = if new == 0 { u64::MAX } else { 1 };
        // SAFETY: `p` points at a live, aligned u64 map value.
        unsafe { atomic_add(p, by) };
    }
}

/// False when no thread has a pending call (session mode only; always true
/// otherwise).
#[inline(always)]
pub(crate) fn any_pending() -> bool {
    !sessions() || PENDING_THREADS.get(0).is_none_or(|n| *n != 0)
}

/// Hash maps are allocated as they fill (`BPF_F_NO_PREALLOC`): preallocating
/// a million live entries and 65,536 per-CPU sites took 0.5 s of every attach
/// and ~100 MB of kernel memory whether the target allocates or not.
const NO_PREALLOC: u32 = aya_ebpf::bindings::BPF_F_NO_PREALLOC;

/// Outstanding allocations: (tgid, ptr) → size, stack, time.
#[map]
pub(crate) static LIVE: HashMap<LiveKey, LiveAlloc> =
    HashMap::with_max_entries(defaults::LIVE_MAP_ENTRIES, NO_PREALLOC);

/// Per call site (stack, entry point) counters, per CPU.
#[map]
pub(crate) static SITES: PerCpuHashMap<SiteKey, SiteCounters> =
    PerCpuHashMap::with_max_entries(defaults::SITE_MAP_ENTRIES, NO_PREALLOC);

/// Captured user stacks (frame-pointer walks), keyed by stack id (the low
/// bits of the stack's hash). Sized by userspace (`--max-stacks`); a full
/// table or a clash of two stacks on one id counts "stack capture failed".
#[map]
pub(crate) static STACK_TABLE: HashMap<u32, FpStack> =
    HashMap::with_max_entries(defaults::STACK_MAP_ENTRIES, NO_PREALLOC);

/// Per-CPU scratch for the stack being captured (too large for the eBPF stack).
#[map]
pub(crate) static STACK_SCRATCH: PerCpuArray<FpStack> = PerCpuArray::with_max_entries(1, 0);

/// Pending calls per thread (pid_tgid): entry → return state. Bounded;
/// entries of threads that died are pruned by userspace.
#[map]
pub(crate) static INFLIGHT: HashMap<u64, PendingCalls> =
    HashMap::with_max_entries(defaults::INFLIGHT_ENTRIES, NO_PREALLOC);

/// One all-zero `PendingCalls`, never written: the initial value of a
/// thread's `INFLIGHT` entry (too large to build on the eBPF stack).
#[map]
pub(crate) static EMPTY_CALLS: Array<PendingCalls> = Array::with_max_entries(1, 0);

/// Per thread (slot `stack_end_slot(tid)`): one past the highest stack
/// address its complete unwinds read, set by userspace. A sample of that
/// thread copies only up to there (its outermost frames do not move);
/// threads not in their slot get the full copy.
#[map]
pub(crate) static STACK_ENDS: Array<StackEnd> = Array::with_max_entries(STACK_END_SLOTS, 0);

/// Global counters, see `profiler_common::counter`.
#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Atomically adds `by` to `*p` (BPF's atomic add; its old value is not
/// used, which BPF before cpu v3 could not return).
///
/// # Safety
/// `p` must point at a live, aligned u64 inside a map value.
#[inline(always)]
pub(crate) unsafe fn atomic_add(p: *mut u64, by: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, by,
        );
    }
}

#[inline(always)]
pub(crate) fn bump(idx: u32, by: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // An atomic add: uprobe_multi programs run with migration disabled
        // but may be preempted, so another program can update the same
        // per-CPU slot between a plain load and store.
        // SAFETY: `p` points at a live, aligned u64 map value.
        unsafe { atomic_add(p, by) };
    }
}

/// Slot 0 is set to 1 by userspace once every probe is attached and the
/// session has taken its starting point. Before that nothing is counted: the
/// probes go in while the target runs, and what they saw before the session
/// knew it had started would be reported as happening after it (frees of
/// blocks allocated before attach, half-probed calls). Entries still save
/// their state, so a call that straddles the arming is seen whole.
#[map]
pub(crate) static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// True once userspace has armed the probes (see `ARMED`).
#[inline(always)]
pub(crate) fn armed() -> bool {
    ARMED.get(0).copied().unwrap_or(0) != 0
}

/// Each profiled process's allocator layout (tgid → trampoline page and
/// allocator code ranges), set by userspace as it attaches to the process
/// (and again after an exec), removed when it exits: unrelated processes map
/// their allocator at other addresses. A process without one is judged with
/// no ranges known.
#[map]
pub(crate) static LAYOUTS: HashMap<u32, AllocLayout> = HashMap::with_max_entries(MAX_PROFILED, 0);

/// The tgid of a process that made an allocator call while its layout was
/// incomplete (no entry, or its trampoline page not known: the page appears
/// at its first probe hit), for userspace to read its map now rather than at
/// the next tick; 0 when none.
#[map]
pub(crate) static LAYOUT_WANTED: Array<u32> = Array::with_max_entries(1, 0);

/// The processes being profiled (tgid → 1), set by userspace: process
/// tracepoints only report these.
#[map]
pub(crate) static PROFILED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROFILED, 0);

/// The entry table: the probes' runtime addresses in the first process and
/// their cookies (`profiler_common::EntryIp`), filled by userspace before
/// its links go in, and changed only while off (`ENTRY_TABLE_GEN`). Looking the hit address up here
/// replaces two calls on the hot path, `bpf_session_is_return` and
/// `bpf_get_attach_cookie` (each ~20 ns on this VM kind, whose kernel
/// returns through a mitigation thunk), by two inlined array reads.
#[map]
pub(crate) static ENTRY_IPS: Array<EntryIp> = Array::with_max_entries(ENTRY_IP_SLOTS, 0);

/// Slot 0: the exec generation, one more at every exec of a profiled process
/// (`procs::on_exec`, before the new image runs). Slot 1: the generation the
/// table was filled for, plus one (0: off). The table is read only while
/// they agree, so an exec turns it off at once, and a fill made from a map
/// read before an exec never turns on for the new image. Userspace fills it
/// again after the exec when the process is the only one profiled, and sets
/// slot 1 to 0 before linking a process whose probes would sit elsewhere.
#[map]
pub(crate) static ENTRY_TABLE_GEN: Array<u64> = Array::with_max_entries(2, 0);

/// The cookie of the probe at `ip` when the entry table has it: then the
/// program runs at that probe's entry. `None`: ask the kernel.
#[inline(always)]
pub(crate) fn entry_cookie(ip: u64) -> Option<u64> {
    let generation = ENTRY_TABLE_GEN.get(0).copied()?;
    if ENTRY_TABLE_GEN.get(1).copied()? != generation.wrapping_add(1) {
        return None;
    }
    let e = ENTRY_IPS.get(entry_ip_slot(ip))?;
    (ip != 0 && e.ip == ip).then_some(e.cookie)
}

/// An exec of a profiled process: the table's addresses are the old image's.
#[inline(always)]
pub(crate) fn entry_table_exec() {
    if let Some(p) = ENTRY_TABLE_GEN.get_ptr_mut(0) {
        // SAFETY: `p` points at a live, aligned u64 map value.
        unsafe { atomic_add(p, 1) };
    }
}

/// The return half of the session program (`alloc_return`, loaded with the
/// session attach type, which a tail call requires), tail-called at a kept
/// call's return: verified beside the session program instead of inside it,
/// it takes ~40 ms off an idle attach on two CPUs.
#[map]
pub(crate) static SESSION_RETURN: ProgramArray = ProgramArray::with_max_entries(1, 0);
