//! Types shared by the eBPF programs (`profiler-ebpf`) and userspace (`profiler-user`).
//!
//! Every type is `#[repr(C)]`, `Copy`, has explicit padding fields, and a
//! compile-time size assert so that both sides agree on the layout.
#![cfg_attr(not(test), no_std)]

pub mod counters;
pub mod entry;
pub mod nesting;
pub mod sampling;

pub use entry::{
    entry_ip_slot, EntryIp, EntryModule, EntryPoint, EntrySpec, Outcome, ENTRY_IP_SLOTS,
    ENTRY_POINTS,
};

/// Which allocator entry point produced an allocation or an event.
///
/// Stored as `u32` in maps; [`AllocKind::from_u32`] decodes it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AllocKind {
    Malloc = 0,
    Calloc = 1,
    Realloc = 2,
    Reallocarray = 3,
    PosixMemalign = 4,
    AlignedAlloc = 5,
    Memalign = 6,
    Valloc = 7,
    Pvalloc = 8,
    Mmap = 9,
    Mremap = 10,
    Free = 11,
    Munmap = 12,
    /// C++ `operator new` (plain, nothrow, aligned): a size, like malloc.
    New = 13,
    /// C++ `operator new[]`.
    NewArray = 14,
    /// jemalloc's `mallocx(size, flags)`.
    Mallocx = 15,
    /// jemalloc's `rallocx(ptr, size, flags)`: realloc without realloc(p, 0).
    Rallocx = 16,
}

impl AllocKind {
    /// Every kind, in discriminant order.
    pub const ALL: [AllocKind; 17] = [
        AllocKind::Malloc,
        AllocKind::Calloc,
        AllocKind::Realloc,
        AllocKind::Reallocarray,
        AllocKind::PosixMemalign,
        AllocKind::AlignedAlloc,
        AllocKind::Memalign,
        AllocKind::Valloc,
        AllocKind::Pvalloc,
        AllocKind::Mmap,
        AllocKind::Mremap,
        AllocKind::Free,
        AllocKind::Munmap,
        AllocKind::New,
        AllocKind::NewArray,
        AllocKind::Mallocx,
        AllocKind::Rallocx,
    ];

    /// Decodes a kind stored in a map; `None` for values this build does not know.
    pub fn from_u32(v: u32) -> Option<AllocKind> {
        AllocKind::ALL.get(v as usize).copied()
    }

    /// The C symbol name of the entry point.
    pub fn symbol(self) -> &'static str {
        match self {
            AllocKind::Malloc => "malloc",
            AllocKind::Calloc => "calloc",
            AllocKind::Realloc => "realloc",
            AllocKind::Reallocarray => "reallocarray",
            AllocKind::PosixMemalign => "posix_memalign",
            AllocKind::AlignedAlloc => "aligned_alloc",
            AllocKind::Memalign => "memalign",
            AllocKind::Valloc => "valloc",
            AllocKind::Pvalloc => "pvalloc",
            AllocKind::Mmap => "mmap",
            AllocKind::Mremap => "mremap",
            AllocKind::Free => "free",
            AllocKind::Munmap => "munmap",
            AllocKind::New => "operator new",
            AllocKind::NewArray => "operator new[]",
            AllocKind::Mallocx => "mallocx",
            AllocKind::Rallocx => "rallocx",
        }
    }
}

/// Key of the live map: one outstanding allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LiveKey {
    pub tgid: u32,
    pub _pad: u32,
    pub ptr: u64,
}

/// Value of the live map. Every allocation is kept (so process totals and
/// pre-attach frees stay exact); only sampled ones carry a stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    pub size: u64,
    /// `bpf_ktime_get_ns()` at allocation (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Id in heapscope's stack table, or [`STACK_NONE`], [`STACK_UNSAMPLED`], [`STACK_USER`].
    pub stack_id: i32,
    /// An [`AllocKind`] discriminant.
    pub kind: u32,
    /// Bytes this allocation stands for in the call-site estimates (0 if unsampled).
    pub est_bytes: u64,
    /// Allocations it stands for, in units of 1/[`COUNT_SCALE`].
    pub est_count: u64,
    /// The allocating thread: a free by another one is a cross-thread free.
    pub tid: u32,
    pub _pad: u32,
}

/// Fixed-point scale of estimated allocation counts.
pub const COUNT_SCALE: u64 = 1024;
/// Stack id of an allocation that was not sampled (no stack, no site).
pub const STACK_UNSAMPLED: i32 = -2;
/// Stack id of a sampled allocation whose stack went to userspace for DWARF
/// unwinding; its site lives in userspace and its free is reported as an event.
pub const STACK_USER: i32 = -3;

/// Key of the per-call-site counters: a captured stack and the entry point
/// used, in one process (a stack id alone is shared by every process whose
/// walk gave the same addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    /// Id in heapscope's stack table; [`STACK_NONE`] when the stack could not be captured.
    pub stack_id: i32,
    /// An [`AllocKind`] discriminant.
    pub kind: u32,
    /// The process that allocated.
    pub tgid: u32,
    pub _pad: u32,
}

/// Stack id used for allocations whose stack could not be captured.
pub const STACK_NONE: i32 = -1;

/// Return addresses kept per frame-pointer stack (the kernel's
/// `perf_event_max_stack` default).
pub const MAX_FP_FRAMES: usize = 127;

/// One frame-pointer stack, innermost first, zero-filled after the last frame.
///
/// heapscope keeps its own stack table (`STACK_TABLE`, keyed by the low 31
/// bits of the stack's 64-bit hash) instead of the kernel's stack-trace map:
/// `bpf_get_stackid` fails with `-EEXIST` whenever two different stacks fall
/// into the same bucket, which lost 451 of 4,096 distinct stacks (11%) in a
/// 16,384-bucket map. Here two stacks share a slot only if their hashes agree
/// on 31 bits (~n²/2³² pairs: 0.06 expected at 16,384 stacks); the full hash
/// is stored so such a clash is detected and counted, never merged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpStack {
    /// [`stack_hash`] of the frames.
    pub hash: u64,
    pub ips: [u64; MAX_FP_FRAMES],
}

/// The stack id of a stack hash: its low 31 bits (a non-negative `i32`).
#[inline(always)]
pub const fn stack_id_of_hash(hash: u64) -> i32 {
    (hash & 0x7fff_ffff) as i32
}

/// The hash that names a frame-pointer stack: one step per frame, then
/// [`stack_hash_finish`] with the frame count. Collisions between two
/// different stacks are ~n²/2⁶⁵ for n stacks.
#[inline(always)]
pub const fn stack_hash_step(h: u64, ip: u64) -> u64 {
    (h ^ ip).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29)
}

/// Seed of [`stack_hash_step`].
pub const STACK_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// Final mixing of a stack hash (frame count in, then a 64-bit finaliser).
#[inline(always)]
pub const fn stack_hash_finish(h: u64, frames: u64) -> u64 {
    let mut x = h ^ frames.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The hash of a whole stack (host side of what the eBPF program computes).
pub fn stack_hash(ips: &[u64]) -> u64 {
    let mut h = STACK_HASH_SEED;
    for &ip in ips {
        h = stack_hash_step(h, ip);
    }
    stack_hash_finish(h, ips.len() as u64)
}

/// Per-CPU counters of one call site; userspace sums them over CPUs. Bytes are
/// (estimated) bytes; counts are in units of 1/[`COUNT_SCALE`] allocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteCounters {
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub free_bytes: u64,
    pub free_count: u64,
    /// Frees by another thread than the allocating one (frame-pointer
    /// sites; the arenas are not compared in the kernel).
    pub cross_bytes: u64,
    pub cross_count: u64,
}

/// Per-thread state between an entry probe and its return probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    /// An [`AllocKind`] discriminant of the outermost allocator call.
    pub kind: u32,
    /// How many probed allocator functions this thread is inside; >1 means nested.
    pub depth: u32,
    pub arg0: u64,
    pub arg1: u64,
    pub arg2: u64,
    /// `bpf_ktime_get_ns()` at entry: state older than [`INFLIGHT_STALE_NS`] is
    /// from a call whose return was never seen, and is discarded.
    pub ts_ns: u64,
    /// Stack pointer at entry (the return-address slot). A call at a deeper
    /// stack is nested; one at the same slot is a tail call of this one; one
    /// at a shallower stack means this call returned without its return
    /// probe firing (the kernel skips some), so the state is stale.
    pub entry_sp: u64,
    /// 1 when the call is the allocator's own (see `nesting::Entry::Allocator`):
    /// its result is footprint, not a program allocation;
    /// [`INTERNAL_AT_RETURN`] when the entry left it to the return.
    pub internal: u32,
    /// 1 when the call is one of a custom pool allocator's entry points
    /// (`--alloc`): every allocator call beneath it is the pool's own.
    pub pool: u32,
    /// 1 when a uprobe session's entry already drew this call's sample (see
    /// [`KFUNC_SESSION_IS_RETURN`]): the return records it without drawing again.
    pub sampled: u32,
    pub _pad: u32,
}

/// `Inflight::internal` of a call that entered while its thread had no
/// pending call: whether the allocator made it depends only on its return
/// address, which the return probe has in its registers (the kernel puts
/// the original return address back before running it). The entry then
/// skips reading the stack slot, a ~150 ns user-memory read.
pub const INTERNAL_AT_RETURN: u32 = 2;

/// The helper id the eBPF session program calls in place of the kfunc
/// `bpf_session_is_return` (Rust eBPF cannot name a kfunc): userspace
/// rewrites every such call into a kfunc call before loading the program.
/// No kernel helper has this id, so a call left unrewritten fails to load.
pub const KFUNC_SESSION_IS_RETURN: i32 = 0x5e55_0001;

/// The per-thread stack of pending allocator calls (value of the `INFLIGHT`
/// map): the outermost call and those of signal handlers that interrupted
/// it, the top at `n - 1` (see `nesting`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCalls {
    /// Pending calls, at most [`nesting::MAX_PENDING_CALLS`].
    pub n: u32,
    pub _pad: u32,
    pub calls: [Inflight; nesting::MAX_PENDING_CALLS],
}

/// Age after which a per-thread entry state is taken as stale (its return was lost).
pub const INFLIGHT_STALE_NS: u64 = 10_000_000_000;

/// A memory-mapping event sent through the ring buffer (mmap, munmap, mremap
/// made by the program itself, not by the allocator). Userspace tracks the
/// regions, because partial unmaps need interval arithmetic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEvent {
    /// [`EventKind::Mmap`], [`EventKind::Munmap`] or [`EventKind::Mremap`].
    pub kind: u32,
    pub tgid: u32,
    /// mmap: the new region; munmap/mremap: the old address.
    pub addr: u64,
    /// mmap: length; munmap/mremap: old length.
    pub len: u64,
    /// mremap: the new address.
    pub new_addr: u64,
    /// mremap: the new length.
    pub new_len: u64,
    pub ts_ns: u64,
    /// mmap: the stack id of the caller, else unused.
    pub stack_id: i32,
    pub _pad: u32,
}

/// The kind of a ring-buffer record: the leading `u32` of every record.
/// The mapping kinds keep their [`AllocKind`] discriminants.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A [`MapEvent`] of an mmap.
    Mmap = AllocKind::Mmap as u32,
    /// A [`MapEvent`] of an mremap.
    Mremap = AllocKind::Mremap as u32,
    /// A [`MapEvent`] of an munmap.
    Munmap = AllocKind::Munmap as u32,
    /// A [`SampleHeader`] and its stack copy.
    Sample = 100,
    /// A [`SampledFree`].
    SampledFree = 101,
    /// A [`ProcEvent`]: a profiled process exec'd a new program.
    Exec = 102,
    /// A [`ProcEvent`]: a profiled process forked a child (now profiled too).
    Fork = 103,
    /// A [`ProcEvent`]: the last thread of a profiled process exited.
    Exit = 104,
}

impl EventKind {
    /// Every kind, in discriminant order.
    pub const ALL: [EventKind; 8] = [
        EventKind::Mmap,
        EventKind::Mremap,
        EventKind::Munmap,
        EventKind::Sample,
        EventKind::SampledFree,
        EventKind::Exec,
        EventKind::Fork,
        EventKind::Exit,
    ];

    /// Decodes the leading `u32` of a record; `None` for values this build does not know.
    pub fn from_u32(v: u32) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    /// The record kind of a mapping call; `None` for the malloc family.
    pub fn of_map(kind: AllocKind) -> Option<EventKind> {
        match kind {
            AllocKind::Mmap => Some(EventKind::Mmap),
            AllocKind::Mremap => Some(EventKind::Mremap),
            AllocKind::Munmap => Some(EventKind::Munmap),
            _ => None,
        }
    }
}

/// Stack-copy sizes the eBPF side supports; the flag rounds up to one of them.
pub const STACK_COPY_SIZES: [u32; 3] = [4096, 8192, 16384];

/// Threads whose stack end userspace remembers: how far up from the stack
/// pointer a thread's complete unwinds read, learned in userspace so later
/// samples copy only that much.
pub const STACK_END_ENTRIES: u32 = 1 << 14;

/// Slots of the probes' stack-end table (`STACK_ENDS`), an array indexed by
/// [`stack_end_slot`]: an array lookup is a few instructions where a hash
/// map's costs a helper call on every sample. Thread ids are handed out in
/// order, so two live threads share a slot only 65,536 ids apart; the one
/// not in the slot gets full copies.
pub const STACK_END_SLOTS: u32 = 1 << 16;

/// The `STACK_ENDS` slot of thread `tid`.
#[inline(always)]
pub const fn stack_end_slot(tid: u32) -> u32 {
    tid & (STACK_END_SLOTS - 1)
}

/// One slot of `STACK_ENDS`: the thread it holds (0: none) and its stack end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackEnd {
    pub tid: u32,
    pub _pad: u32,
    pub end: u64,
}

/// How stacks are captured (the eBPF global `STACK_MODE` holds its `u32`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StackMode {
    /// `bpf_get_stackid` frame-pointer walk in the kernel.
    FramePointer = 0,
    /// Registers + a copy of the user stack, unwound in userspace with CFI.
    #[default]
    Dwarf = 1,
}

/// A sampled allocation with registers and the top of the user stack
/// (followed in the record by `stack_len` valid bytes of a fixed-size copy).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleHeader {
    /// [`EventKind::Sample`].
    pub kind: u32,
    pub tgid: u32,
    /// An [`AllocKind`] discriminant (Mmap for a program mmap).
    pub alloc_kind: u32,
    /// Valid bytes of the stack copy, starting at `sp`.
    pub stack_len: u32,
    pub ptr: u64,
    pub size: u64,
    pub est_bytes: u64,
    /// In units of 1/[`COUNT_SCALE`].
    pub est_count: u64,
    pub ts_ns: u64,
    /// Registers at the allocator's return: ip is the return address in the caller.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Return addresses of pending uretprobes (innermost first), as the kernel
    /// saved them when it replaced them on the stack with its trampoline...
    pub pending_ret: [u64; MAX_PENDING],
    /// ...and the stack slot each was replaced in.
    pub pending_slot: [u64; MAX_PENDING],
    pub n_pending: u32,
    /// The allocating thread (its stack's learned extent decides the copy's
    /// length; a later free by another thread is a cross-thread free).
    pub tid: u32,
    /// Unused, always 0: the probe no longer reads glibc's chunk header
    /// (~57 ns of the target's time per sample); userspace reads it for a
    /// whole batch of samples at once (profiler-user `events::chunks`).
    pub chunk: u64,
}

/// Most event rings (one per CPU, CPUs beyond this many sharing them).
pub const MAX_RINGS: u32 = 8;

/// Pending uretprobes recorded per sample.
pub const MAX_PENDING: usize = 4;

/// Free of an allocation whose sample lives in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampledFree {
    /// [`EventKind::SampledFree`].
    pub kind: u32,
    pub tgid: u32,
    pub ptr: u64,
    /// The freeing thread.
    pub tid: u32,
    /// Who freed it: one of the `FREED_BY_*` values. Only a free of a block
    /// userspace does not hold needs it (see `USER_LIVE` in profiler-ebpf).
    pub who: u32,
    /// When (`bpf_ktime_get_ns`): the records of the CPUs' rings are merged
    /// by time (one clock read per free, ~18 ns, where the one ring they
    /// shared had cost ~80 ns per free at two busy CPUs).
    pub ts_ns: u64,
}

/// [`SampledFree::who`]: the program.
pub const FREED_BY_PROGRAM: u32 = 0;
/// [`SampledFree::who`]: the allocator's own code (its caches).
pub const FREED_BY_ALLOCATOR: u32 = 1;
/// [`SampledFree::who`]: the program or the allocator's own code outside any
/// program call, not told apart (telling costs a user-memory read per free).
pub const FREED_BY_EITHER: u32 = 2;

/// A profiled process changed: it exec'd ([`EventKind::Exec`]), forked
/// ([`EventKind::Fork`]) or exited ([`EventKind::Exit`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    /// The process (its pid after an exec; the child of a fork; the one that exited).
    pub tgid: u32,
    /// The forking process; for an exec, the thread that called it (its id
    /// before it took over the leader's: another than `tgid` when a thread
    /// other than the main one exec'd); 0 for an exit.
    pub parent: u32,
    pub _pad: u32,
    /// When it happened (`bpf_ktime_get_ns`, as `LiveAlloc::ts_ns`): live
    /// blocks older than this belong to the old image.
    pub ts_ns: u64,
}

/// Processes profiled at once (the `PROFILED` map).
pub const MAX_PROFILED: u32 = 4096;

/// Size of the lookup tables shared with userspace (see `tables`).
pub const TABLE_LEN: u32 = 1024;

pub mod counter;

/// Default sizes of the bounded kernel maps (overridable by flags).
pub mod defaults {
    pub const LIVE_MAP_ENTRIES: u32 = 1 << 20;
    pub const SITE_MAP_ENTRIES: u32 = 1 << 16;
    pub const STACK_MAP_ENTRIES: u32 = 1 << 14;
    pub const INFLIGHT_ENTRIES: u32 = 1 << 14;
    /// Large enough for ~1000 DWARF samples of 8 KiB between two drains.
    pub const RINGBUF_BYTES: u32 = 1 << 23;
    /// Mean bytes between samples (as tcmalloc, jemalloc and Go).
    pub const SAMPLE_RATE: u64 = 512 * 1024;
    pub const STACK_COPY: u32 = 8192;
}

/// `MAP_ANONYMOUS` on Linux.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_STACK` on Linux: thread stacks (glibc's pthread_create) are not heap.
pub const MAP_STACK: u64 = 0x20000;
/// `MAP_FAILED` as mmap/mremap return it.
pub const MAP_FAILED: u64 = u64::MAX;

/// Executable ranges of the allocator's modules the eBPF side can hold (the
/// `ALLOC_TEXT` map has two slots per range). Userspace merges adjacent
/// ranges and counts any that still do not fit.
pub const ALLOC_TEXT_RANGES: u32 = 16;

/// Ranges of the allocator's own implementation (its malloc code, not the
/// rest of libc; a custom pool's functions) the eBPF side can hold
/// (`ALLOC_INTERNAL`, two slots each).
pub const ALLOC_INTERNAL_RANGES: u32 = 8;

const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);
const _: () = assert!(core::mem::size_of::<LiveAlloc>() == 48);
const _: () = assert!(core::mem::size_of::<SampleHeader>() == 160);
const _: () = assert!(core::mem::size_of::<SampledFree>() == 32);
const _: () = assert!(core::mem::size_of::<StackEnd>() == 16);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 24);
const _: () = assert!(core::mem::size_of::<SiteKey>() == 16);
const _: () = assert!(core::mem::size_of::<SiteCounters>() == 48);
const _: () = assert!(core::mem::size_of::<Inflight>() == 64);
const _: () = assert!(core::mem::size_of::<PendingCalls>() == 136);
const _: () = assert!(core::mem::size_of::<MapEvent>() == 56);

/// The fixed-point tables the eBPF side uses instead of floating point.
/// Userspace computes them with `f64` and fills the maps at load time.
pub mod tables {
    #[cfg(any(test, feature = "user"))]
    use super::TABLE_LEN;

    /// Fixed-point scale of table entries (16.16).
    pub const ONE: u64 = 1 << 16;
    /// x = size/rate is quantised in steps of 1/X_STEPS; beyond
    /// TABLE_LEN/X_STEPS (= 16) the weight is 1 to within 1e-7.
    pub const X_STEPS: u64 = 64;

    /// Entry i of the exponential quantile table: -ln(1 - i/N), 16.16, at
    /// the bucket edges (entry 0 is 0). `sampling::interval` interpolates
    /// between edges, so intervals are continuous, not N discrete values.
    #[cfg(any(test, feature = "user"))]
    pub fn exp_quantile(i: u32) -> u32 {
        let u = f64::from(i) / f64::from(TABLE_LEN);
        ((-(1.0 - u).ln()) * ONE as f64).round() as u32
    }

    /// Entry i of the weight table: g(x) = x / (1 - e^-x) at x = i/X_STEPS
    /// (the edges; g(0) = 1), 16.16. A sample of size s at rate R stands for
    /// R*g(s/R) = s/(1-e^(-s/R)) bytes; `sampling::estimate` interpolates.
    #[cfg(any(test, feature = "user"))]
    pub fn weight(i: u32) -> u32 {
        if i == 0 {
            return ONE as u32;
        }
        let x = f64::from(i) / X_STEPS as f64;
        ((x / (1.0 - (-x).exp())) * ONE as f64).round() as u32
    }
}

#[cfg(feature = "user")]
mod pod;

#[cfg(test)]
mod tests;
