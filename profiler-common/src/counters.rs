//! The one table of heapscope's counters: stable id, name, report label,
//! help text, section, and the kernel counters each one sums. The report's
//! counter sections, the recording's totals order, the status line, the JSON
//! API and the Prometheus `/metrics` are all generated from it.
//!
//! To add a counter: append a [`CounterId`] (its discriminant is its stable
//! id and its slot in recordings, so ids are never reused or reordered), add
//! its row to [`COUNTERS`] where it should be listed, and map it to its
//! `Totals` field in profiler-user (a compile error points there).

use crate::counter;

/// Whether a counter counts what happened or what could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    Counted,
    Lost,
}

impl Section {
    /// Lower-case name (`counted`, `lost`).
    pub const fn name(self) -> &'static str {
        match self {
            Section::Counted => "counted",
            Section::Lost => "lost",
        }
    }
}

/// A counter's stable id: its discriminant is its slot in recordings.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterId {
    Allocs = 0,
    AllocBytes = 1,
    Frees = 2,
    FreeBytes = 3,
    FreesUnknown = 4,
    LiveMapFull = 5,
    StackFailed = 6,
    InflightFull = 7,
    SiteMapFull = 8,
    RingbufLost = 9,
    Nested = 10,
    AllocFailed = 11,
    Replaced = 12,
    UnmatchedReturn = 13,
    InflightStale = 14,
    UntrackedUnmaps = 15,
    AllocatorCalls = 16,
    AllocatorFrees = 17,
    AllocatorMapped = 18,
    AllocatorUnmapped = 19,
    ExecReleased = 20,
    ExecReleasedBytes = 21,
    ExitReleased = 22,
    ExitReleasedBytes = 23,
    UntrackedAllocs = 24,
    UntrackedBytes = 25,
    NoLayout = 26,
    EnteredBeforeProbes = 27,
}

/// Number of counters (and of recording slots).
pub const COUNTER_COUNT: usize = 28;

impl CounterId {
    /// The slot in a recording's totals (the stable id).
    pub const fn slot(self) -> usize {
        self as usize
    }

    /// This counter's row of [`COUNTERS`].
    pub fn def(self) -> &'static CounterDef {
        // Every id has exactly one row (a unit test checks it).
        COUNTERS
            .iter()
            .find(|d| d.id == self)
            .unwrap_or(&COUNTERS[0])
    }
}

/// One row of the counter table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterDef {
    pub id: CounterId,
    /// Stable snake_case name: JSON keys and metric names.
    pub name: &'static str,
    /// The line label in text reports.
    pub label: &'static str,
    /// One sentence for `/metrics` HELP and the API.
    pub help: &'static str,
    pub section: Section,
    /// Kernel counters (indices of [`counter`]) summed into it; userspace
    /// adds its own part (mapped regions) on top.
    pub kernel: &'static [u32],
}

const fn row(
    id: CounterId,
    name: &'static str,
    label: &'static str,
    help: &'static str,
    section: Section,
    kernel: &'static [u32],
) -> CounterDef {
    CounterDef {
        id,
        name,
        label,
        help,
        section,
        kernel,
    }
}

/// Every counter, in the order outputs list them: counted ones first.
pub const COUNTERS: [CounterDef; COUNTER_COUNT] = {
    use CounterId as I;
    use Section::{Counted as C, Lost as L};
    [
        row(I::Allocs, "allocations", "allocations seen", "Allocations seen.", C, &[counter::ALLOCS]),
        row(I::AllocBytes, "allocated_bytes", "allocated bytes", "Bytes allocated.", C, &[counter::ALLOC_BYTES]),
        row(I::Frees, "frees", "frees seen", "Frees of tracked allocations seen.", C, &[counter::FREES]),
        row(I::FreeBytes, "freed_bytes", "freed bytes", "Bytes freed (tracked allocations).", C, &[counter::FREE_BYTES]),
        row(
            I::FreesUnknown,
            "frees_unknown",
            "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)",
            "Frees of pointers not tracked: allocated before attach, or (uprobe sessions) by an unsampled call whose return probe was skipped.",
            C,
            &[counter::FREES_UNKNOWN],
        ),
        row(I::Nested, "nested", "nested allocator calls (counted once)", "Nested allocator calls (counted once).", C, &[counter::NESTED]),
        row(I::AllocFailed, "alloc_failed", "failed allocations", "Failed allocations.", C, &[counter::ALLOC_FAILED]),
        row(I::UntrackedUnmaps, "untracked_unmaps", "untracked munmap/mremap", "munmap/mremap of ranges not tracked.", C, &[]),
        row(
            I::AllocatorCalls,
            "allocator_calls",
            "allocator's own calls (outside program calls)",
            "Allocator calls made by the allocator itself outside program calls.",
            C,
            &[counter::ALLOCATOR_CALLS],
        ),
        row(
            I::AllocatorFrees,
            "allocator_frees",
            "allocator's own frees (its caches)",
            "Frees by the allocator itself of blocks the program never had.",
            C,
            &[counter::ALLOCATOR_FREES],
        ),
        row(
            I::AllocatorMapped,
            "allocator_mapped_bytes",
            "bytes mapped by the allocator itself (or a pool's own blocks)",
            "Bytes the allocator mapped for itself (arena heaps), and blocks a custom pool's own code took: footprint, not program allocations.",
            C,
            &[counter::ALLOCATOR_MAPPED],
        ),
        row(
            I::AllocatorUnmapped,
            "allocator_unmapped_bytes",
            "bytes unmapped by the allocator itself",
            "Bytes unmapped by the allocator itself.",
            C,
            &[counter::ALLOCATOR_UNMAPPED],
        ),
        row(
            I::ExecReleased,
            "exec_released",
            "released by exec (old image's live blocks, in frees)",
            "Live blocks and mappings of a program image that exec replaced, counted as freed.",
            C,
            &[],
        ),
        row(
            I::ExecReleasedBytes,
            "exec_released_bytes",
            "bytes released by exec (in freed bytes)",
            "Bytes of a program image that exec replaced, counted as freed.",
            C,
            &[],
        ),
        row(
            I::ExitReleased,
            "exit_released",
            "released by exit (exited processes' live blocks, in frees)",
            "Live blocks and mappings of profiled processes that exited, counted as freed.",
            C,
            &[],
        ),
        row(
            I::ExitReleasedBytes,
            "exit_released_bytes",
            "bytes released by exit (in freed bytes)",
            "Bytes of profiled processes that exited, counted as freed.",
            C,
            &[],
        ),
        row(
            I::UntrackedAllocs,
            "untracked_allocs",
            "allocations seen at entry only (uprobe sessions; their frees are in frees_unknown)",
            "Unsampled allocations counted at entry only: uprobe sessions skip their return probe, so their blocks are not tracked and the live heap is an estimate.",
            C,
            &[counter::UNTRACKED_ALLOCS],
        ),
        row(
            I::UntrackedBytes,
            "untracked_bytes",
            "bytes of allocations seen at entry only",
            "Bytes requested by the allocations counted at entry only.",
            C,
            &[counter::UNTRACKED_BYTES],
        ),
        row(
            I::NoLayout,
            "no_layout",
            "allocator calls before their process's allocator layout was known",
            "Allocator calls judged before userspace had set the process's allocator code ranges: allocator-internal calls among them may be counted as the program's.",
            C,
            &[counter::NO_LAYOUT],
        ),
        row(
            I::EnteredBeforeProbes,
            "entered_before_probes",
            "returns of calls entered before the probes went in (not counted)",
            "Returns of allocator calls that began before the entry probes went in (attaching to a running process): their blocks are not counted, like those allocated before attach.",
            C,
            &[counter::RETURNS_BEFORE_ENTRY],
        ),
        row(I::LiveMapFull, "live_map_full", "live map full", "Allocations not tracked: live map full.", L, &[counter::LIVE_MAP_FULL]),
        row(
            I::StackFailed,
            "stack_failed",
            "stack capture failed",
            "Stack captures that failed.",
            L,
            &[counter::STACK_FAILED, counter::STACK_COPY_FAILED],
        ),
        row(I::InflightFull, "inflight_full", "per-thread state full", "Calls not tracked: per-thread state full.", L, &[counter::INFLIGHT_FULL]),
        row(I::SiteMapFull, "site_map_full", "site map full", "Call sites not tracked: site map full.", L, &[counter::SITE_MAP_FULL]),
        row(
            I::RingbufLost,
            "ringbuf_lost",
            "ring buffer lost",
            "Ring-buffer records lost.",
            L,
            &[counter::RINGBUF_LOST, counter::SAMPLED_FREE_LOST],
        ),
        row(I::Replaced, "replaced", "replaced (free not seen)", "Live entries replaced (free not seen).", L, &[counter::REPLACED]),
        row(I::UnmatchedReturn, "unmatched_return", "unmatched returns", "Returns whose thread had calls pending but none this return matched.", L, &[counter::UNMATCHED_RETURN]),
        row(
            I::InflightStale,
            "inflight_stale",
            "per-thread state stale (return not seen)",
            "Per-thread states discarded (return not seen).",
            L,
            &[counter::INFLIGHT_STALE],
        ),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_id_has_one_row_and_slots_are_dense() {
        let mut seen = [false; COUNTER_COUNT];
        for d in COUNTERS {
            assert!(!seen[d.id.slot()], "{:?} twice", d.id);
            seen[d.id.slot()] = true;
            assert_eq!(d.id.def(), &d);
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn names_are_unique_snake_case() {
        for (i, a) in COUNTERS.iter().enumerate() {
            assert!(
                a.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                a.name
            );
            assert!(!a.label.is_empty() && !a.help.is_empty());
            for b in &COUNTERS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.label, b.label);
            }
        }
    }

    #[test]
    fn counted_before_lost() {
        let first_lost = COUNTERS
            .iter()
            .position(|d| d.section == Section::Lost)
            .unwrap_or(COUNTER_COUNT);
        assert!(COUNTERS[first_lost..]
            .iter()
            .all(|d| d.section == Section::Lost));
    }

    #[test]
    fn every_kernel_counter_feeds_exactly_one_row() {
        // SAMPLED is informational (the samples themselves are the output).
        for k in 0..counter::COUNT {
            let n = COUNTERS.iter().filter(|d| d.kernel.contains(&k)).count();
            let expected = usize::from(k != counter::SAMPLED);
            assert_eq!(n, expected, "kernel counter {k}");
        }
    }

    #[test]
    fn recording_slots_never_move() {
        // The order of recordings written since the format's first version.
        let names: [&str; COUNTER_COUNT] = [
            "allocations",
            "allocated_bytes",
            "frees",
            "freed_bytes",
            "frees_unknown",
            "live_map_full",
            "stack_failed",
            "inflight_full",
            "site_map_full",
            "ringbuf_lost",
            "nested",
            "alloc_failed",
            "replaced",
            "unmatched_return",
            "inflight_stale",
            "untracked_unmaps",
            "allocator_calls",
            "allocator_frees",
            "allocator_mapped_bytes",
            "allocator_unmapped_bytes",
            "exec_released",
            "exec_released_bytes",
            "exit_released",
            "exit_released_bytes",
            "untracked_allocs",
            "untracked_bytes",
            "no_layout",
            "entered_before_probes",
        ];
        for d in COUNTERS {
            assert_eq!(names[d.id.slot()], d.name);
        }
    }
}
