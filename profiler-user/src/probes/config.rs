//! What a session asks of the probes: the mode, what is captured per
//! allocation, and the sizes of the bounded kernel maps.

use profiler_common::{defaults, StackMode};

/// What the attached programs do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProbeMode {
    /// Full bookkeeping.
    #[default]
    Profile,
    /// Programs that return at once, at the same places: the benchmark's
    /// measure of what the traps alone cost.
    Bare,
}

/// What is captured per allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Mean bytes between sampled allocations; 0 captures every allocation.
    pub sample_rate: u64,
    /// How stacks are captured.
    pub stack_mode: StackMode,
    /// Bytes of user stack copied per DWARF sample (one of `STACK_COPY_SIZES`).
    pub stack_copy: u32,
    /// Follow the children of profiled processes (fork, clone, vfork).
    pub follow: bool,
    /// Attach the allocation entry points as uprobe sessions where the
    /// kernel has them (6.13+) and allocations are sampled: an unsampled
    /// call's return probe is skipped, and the live heap becomes an estimate.
    pub sessions: bool,
    /// Hold the first process at `_exit` until its memory map is read (a
    /// `run` command, heapscope's own child; see `exit_hold`).
    pub hold_exit: bool,
    /// Userspace holds the live blocks, and the kernel keeps no live map
    /// (`USER_LIVE` in profiler-ebpf): only for every allocation sampled
    /// with DWARF stacks, whose samples already carry each block.
    pub user_live: bool,
}

impl CaptureConfig {
    /// Whether userspace holds the live blocks: asked for, and possible
    /// (every allocation sampled, so no uprobe sessions; DWARF stacks).
    /// `HEAPSCOPE_KERNEL_LIVE=1` keeps the kernel's live map (comparisons).
    pub fn user_live(&self) -> bool {
        self.user_live
            && self.sample_rate == 0
            && self.stack_mode == StackMode::Dwarf
            && std::env::var_os("HEAPSCOPE_KERNEL_LIVE").is_none()
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            sample_rate: defaults::SAMPLE_RATE,
            stack_mode: StackMode::Dwarf,
            stack_copy: defaults::STACK_COPY,
            follow: true,
            sessions: true,
            hold_exit: false,
            user_live: false,
        }
    }
}

/// Sizes of the bounded kernel maps.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub live: u32,
    pub sites: u32,
    pub stacks: u32,
    pub inflight: u32,
    pub ringbuf_bytes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            live: defaults::LIVE_MAP_ENTRIES,
            sites: defaults::SITE_MAP_ENTRIES,
            stacks: defaults::STACK_MAP_ENTRIES,
            inflight: defaults::INFLIGHT_ENTRIES,
            ringbuf_bytes: defaults::RINGBUF_BYTES,
        }
    }
}
