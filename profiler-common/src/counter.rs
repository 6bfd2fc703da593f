//! Indices into the global per-CPU counter array.

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
/// Per-thread entry states discarded because their return probe never
/// fired (seen from the stack pointer, or older than INFLIGHT_STALE_NS):
/// that call's allocation is not recorded.
pub const INFLIGHT_STALE: u32 = 14;
/// Allocations sampled (their stack captured and attributed to a site).
pub const SAMPLED: u32 = 15;
/// Frees of sampled allocations that could not be reported (ring buffer full).
pub const SAMPLED_FREE_LOST: u32 = 16;
/// Stack copies that could not be read at all (stack_len 0).
pub const STACK_COPY_FAILED: u32 = 17;
/// Allocator calls made by the allocator's own code while no program
/// call was in flight (arenas created in free, trims, thread exit).
pub const ALLOCATOR_CALLS: u32 = 18;
/// Frees by the allocator's own code of blocks the program never had
/// (its thread caches): not frees of pre-attach blocks.
pub const ALLOCATOR_FREES: u32 = 19;
/// Bytes the allocator mapped outside any program call (arena heaps).
pub const ALLOCATOR_MAPPED: u32 = 20;
/// Bytes the allocator unmapped outside any program call.
pub const ALLOCATOR_UNMAPPED: u32 = 21;
/// Allocations seen at entry only: with uprobe sessions an unsampled
/// call's return probe is skipped, so its block is not in the live map
/// (its free is then counted in [`FREES_UNKNOWN`]).
pub const UNTRACKED_ALLOCS: u32 = 22;
/// Bytes those allocations asked for.
pub const UNTRACKED_BYTES: u32 = 23;
/// Allocator calls of a process whose allocator layout userspace had
/// not set yet (see `nesting::AllocLayout`): judged with no ranges known.
pub const NO_LAYOUT: u32 = 24;
/// Returns of calls that entered before the entry probes went in: the
/// thread has no per-thread state at all (an entry always makes one, and
/// only a dead thread's is removed), so its call began before the session
/// could see it. Counted, not lost: like an allocation made before attach,
/// its block is not counted and its free is a pre-attach free. (A call
/// whose entry did not fit is counted in [`INFLIGHT_FULL`].)
pub const RETURNS_BEFORE_ENTRY: u32 = 25;
/// Number of counters.
pub const COUNT: u32 = 26;
