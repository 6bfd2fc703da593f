//! `aya::Pod` for the types userspace reads from maps and the ring buffer.

use super::*;
// SAFETY: all of these are #[repr(C)], Copy, contain only integers, and have
// explicit padding fields, so every bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for LiveKey {}
// SAFETY: as above.
unsafe impl aya::Pod for LiveAlloc {}
// SAFETY: as above.
unsafe impl aya::Pod for SiteKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FpStack {}
// SAFETY: as above.
unsafe impl aya::Pod for SiteCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for Inflight {}
// SAFETY: as above.
unsafe impl aya::Pod for PendingCalls {}
// SAFETY: as above.
unsafe impl aya::Pod for MapEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for SampleHeader {}
// SAFETY: as above.
unsafe impl aya::Pod for StackEnd {}
// SAFETY: as above.
unsafe impl aya::Pod for SampledFree {}
// SAFETY: as above (integers only, no padding).
unsafe impl aya::Pod for crate::nesting::AllocLayout {}
// SAFETY: repr(C), two u64 fields, no padding.
unsafe impl aya::Pod for crate::EntryIp {}
