//! The target's memory at one tick: the kernel's numbers and glibc's
//! footprint per arena.

use crate::process::arenas::Home;

/// The target's memory as the kernel reports it at one tick, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemSample {
    /// `RssAnon` of /proc/PID/status: resident anonymous memory.
    pub rss_anon: u64,
    /// `RssFile`: resident file-backed pages (code, mapped files).
    pub rss_file: u64,
    /// `RssShmem`: resident shared memory.
    pub rss_shmem: u64,
    /// Mapped, accessible bytes of `[heap]` plus glibc's non-main arena heaps.
    pub heap_mappings: u64,
    /// How many glibc arena heaps (64 MiB reservations) were found; an arena
    /// spans one or more of them.
    pub arena_heaps: u64,
    /// Bytes the allocator itself obtained with mmap/brk; 0 when unknown.
    pub allocator_mapped: u64,
    /// glibc's footprint split (from /proc/PID/smaps, 0 for other
    /// allocators): resident bytes of `[heap]` (the main arena)...
    pub main_heap_resident: u64,
    /// ...the number of non-main arenas (each one or more heaps)...
    pub arenas: u64,
    /// ...reserved (`rw`) and resident bytes of their heaps together...
    pub arena_reserved: u64,
    pub arena_resident: u64,
    /// ...and the chunks glibc mmapped on its own: count, bytes, resident.
    pub mmapped_chunks: u64,
    pub mmapped_bytes: u64,
    pub mmapped_resident: u64,
}

impl MemSample {
    /// glibc's resident footprint: main heap, arenas, mmapped chunks (0 when
    /// the split was not read).
    pub fn footprint_resident(&self) -> u64 {
        self.main_heap_resident
            .saturating_add(self.arena_resident)
            .saturating_add(self.mmapped_resident)
    }
}

/// One glibc arena (or the main heap, or the mmapped chunks) at one tick:
/// its footprint from /proc/PID/smaps and the live bytes of the sampled
/// blocks whose chunk headers place them there (an estimate when sampled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaSample {
    pub home: Home,
    /// Heaps of an arena; chunks of the mmapped row; 1 for the main heap.
    pub heaps: u32,
    pub reserved: u64,
    pub resident: u64,
    pub live: u64,
}

impl ArenaSample {
    /// Resident − live: what the allocator keeps here.
    pub fn retained(&self) -> u64 {
        self.resident.saturating_sub(self.live)
    }
}

/// Arenas kept per tick; glibc makes at most 8 per CPU.
pub const MAX_ARENAS_PER_TICK: usize = 512;
