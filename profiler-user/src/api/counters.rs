//! The session's counters as a list of (id, help, section, value): what the
//! API's `counters` and the Prometheus `/metrics` are generated from.

use serde::Serialize;

use crate::profile::Totals;

/// Whether a counter counts what happened or what could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Counted,
    Lost,
}

/// One counter with its stable id (snake_case, used in metric names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub id: &'static str,
    pub help: &'static str,
    pub section: Section,
    pub value: u64,
}

/// Every counter of `t`, counted ones first. Destructuring makes a new
/// `Totals` field a compile error here until it is listed.
pub fn counters(t: &Totals) -> Vec<Counter> {
    let Totals {
        allocs,
        alloc_bytes,
        frees,
        free_bytes,
        frees_unknown,
        live_map_full,
        stack_failed,
        inflight_full,
        site_map_full,
        ringbuf_lost,
        nested,
        alloc_failed,
        replaced,
        unmatched_return,
        inflight_stale,
        untracked_unmaps,
        allocator_calls,
        allocator_frees,
        allocator_mapped,
        allocator_unmapped,
    } = *t;
    use Section::{Counted, Lost};
    let rows: [(&'static str, &'static str, Section, u64); 20] = [
        ("allocations", "Allocations seen.", Counted, allocs),
        ("allocated_bytes", "Bytes allocated.", Counted, alloc_bytes),
        (
            "frees",
            "Frees of tracked allocations seen.",
            Counted,
            frees,
        ),
        (
            "freed_bytes",
            "Bytes freed (tracked allocations).",
            Counted,
            free_bytes,
        ),
        (
            "frees_unknown",
            "Frees of pointers allocated before attach.",
            Counted,
            frees_unknown,
        ),
        (
            "nested",
            "Nested allocator calls (counted once).",
            Counted,
            nested,
        ),
        ("alloc_failed", "Failed allocations.", Counted, alloc_failed),
        (
            "untracked_unmaps",
            "munmap/mremap of ranges not tracked.",
            Counted,
            untracked_unmaps,
        ),
        (
            "allocator_calls",
            "Allocator calls made by the allocator itself outside program calls.",
            Counted,
            allocator_calls,
        ),
        (
            "allocator_frees",
            "Frees by the allocator itself of blocks the program never had.",
            Counted,
            allocator_frees,
        ),
        (
            "allocator_mapped_bytes",
            "Bytes mapped by the allocator itself (arena heaps): footprint, not program allocations.",
            Counted,
            allocator_mapped,
        ),
        (
            "allocator_unmapped_bytes",
            "Bytes unmapped by the allocator itself.",
            Counted,
            allocator_unmapped,
        ),
        (
            "live_map_full",
            "Allocations not tracked: live map full.",
            Lost,
            live_map_full,
        ),
        (
            "stack_failed",
            "Stack captures that failed.",
            Lost,
            stack_failed,
        ),
        (
            "inflight_full",
            "Calls not tracked: per-thread state full.",
            Lost,
            inflight_full,
        ),
        (
            "site_map_full",
            "Call sites not tracked: site map full.",
            Lost,
            site_map_full,
        ),
        (
            "ringbuf_lost",
            "Ring-buffer records lost.",
            Lost,
            ringbuf_lost,
        ),
        (
            "replaced",
            "Live entries replaced (free not seen).",
            Lost,
            replaced,
        ),
        (
            "unmatched_return",
            "Returns without an entry.",
            Lost,
            unmatched_return,
        ),
        (
            "inflight_stale",
            "Per-thread states discarded (return not seen).",
            Lost,
            inflight_stale,
        ),
    ];
    rows.into_iter()
        .map(|(id, help, section, value)| Counter {
            id,
            help,
            section,
            value,
        })
        .collect()
}

/// Sum of the lost counters.
pub fn lost_total(t: &Totals) -> u64 {
    counters(t)
        .iter()
        .filter(|c| c.section == Section::Lost)
        .fold(0u64, |a, c| a.saturating_add(c.value))
}
