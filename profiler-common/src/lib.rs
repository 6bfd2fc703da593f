//! Types shared by the eBPF programs (`profiler-ebpf`) and userspace (`profiler-user`).
//!
//! Every type is `#[repr(C)]`, `Copy`, has explicit padding fields, and a
//! compile-time size assert so that both sides agree on the layout.
#![no_std]

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
}

impl AllocKind {
    /// Every kind, in discriminant order.
    pub const ALL: [AllocKind; 13] = [
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

/// Value of the live map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveAlloc {
    pub size: u64,
    /// `bpf_ktime_get_ns()` at allocation (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Id in the stack-trace map, or a negative errno when capture failed.
    pub stack_id: i32,
    /// An [`AllocKind`] discriminant.
    pub kind: u32,
}

/// Key of the per-call-site counters: a captured stack and the entry point used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    /// Id in the stack-trace map; [`STACK_NONE`] when the stack could not be captured.
    pub stack_id: i32,
    /// An [`AllocKind`] discriminant.
    pub kind: u32,
}

/// Stack id used for allocations whose stack could not be captured.
pub const STACK_NONE: i32 = -1;

/// Per-CPU counters of one call site; userspace sums them over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteCounters {
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub free_bytes: u64,
    pub free_count: u64,
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
}

/// Age after which a per-thread entry state is taken as stale (its return was lost).
pub const INFLIGHT_STALE_NS: u64 = 10_000_000_000;

/// A memory-mapping event sent through the ring buffer (mmap, munmap, mremap
/// made by the program itself, not by the allocator). Userspace tracks the
/// regions, because partial unmaps need interval arithmetic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEvent {
    /// [`AllocKind::Mmap`], [`AllocKind::Munmap`] or [`AllocKind::Mremap`].
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

/// Indices into the global per-CPU counter array.
pub mod counter {
    /// Allocations recorded in the live map.
    pub const ALLOCS: u32 = 0;
    /// Bytes of those allocations.
    pub const ALLOC_BYTES: u32 = 1;
    /// Frees that matched a live allocation.
    pub const FREES: u32 = 2;
    /// Bytes of those frees.
    pub const FREE_BYTES: u32 = 3;
    /// Frees of pointers not in the live map (allocated before attach, or dropped).
    pub const FREES_UNKNOWN: u32 = 4;
    /// Allocations not recorded because the live map was full.
    pub const LIVE_MAP_FULL: u32 = 5;
    /// Allocations whose stack could not be captured (kept under [`super::STACK_NONE`]).
    pub const STACK_FAILED: u32 = 6;
    /// Entry probes whose per-thread state did not fit.
    pub const INFLIGHT_FULL: u32 = 7;
    /// Allocator calls made by the allocator itself (counted once, at the outermost call).
    pub const NESTED: u32 = 8;
    /// Call-site counters that did not fit in the site map.
    pub const SITE_MAP_FULL: u32 = 9;
    /// mmap-family events lost because the ring buffer was full.
    pub const RINGBUF_LOST: u32 = 10;
    /// Allocation calls that returned NULL / failed.
    pub const ALLOC_FAILED: u32 = 11;
    /// An allocation at an address already live (its free was not seen); the old one is retired.
    pub const REPLACED: u32 = 12;
    /// Return probes with no matching entry state (e.g. dropped at entry).
    pub const UNMATCHED_RETURN: u32 = 13;
    /// Per-thread entry states discarded as stale (a return probe never fired).
    pub const INFLIGHT_STALE: u32 = 14;
    /// Number of counters.
    pub const COUNT: u32 = 15;
}

/// Default sizes of the bounded kernel maps (overridable by flags).
pub mod defaults {
    pub const LIVE_MAP_ENTRIES: u32 = 1 << 20;
    pub const SITE_MAP_ENTRIES: u32 = 1 << 16;
    pub const STACK_MAP_ENTRIES: u32 = 1 << 14;
    pub const INFLIGHT_ENTRIES: u32 = 1 << 14;
    pub const RINGBUF_BYTES: u32 = 1 << 18;
}

/// `MAP_ANONYMOUS` on Linux.
pub const MAP_ANONYMOUS: u64 = 0x20;

const _: () = assert!(core::mem::size_of::<LiveKey>() == 16);
const _: () = assert!(core::mem::size_of::<LiveAlloc>() == 24);
const _: () = assert!(core::mem::size_of::<SiteKey>() == 8);
const _: () = assert!(core::mem::size_of::<SiteCounters>() == 32);
const _: () = assert!(core::mem::size_of::<Inflight>() == 40);
const _: () = assert!(core::mem::size_of::<MapEvent>() == 56);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers, and have
    // explicit padding fields, so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for LiveKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LiveAlloc {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SiteCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MapEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in AllocKind::ALL {
            assert_eq!(AllocKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(AllocKind::from_u32(99), None);
    }
}
