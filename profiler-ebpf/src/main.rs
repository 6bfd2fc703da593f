//! heapscope's in-kernel half: uprobes and uretprobes on the allocator.
//!
//! Entry probes save the arguments per thread; return probes see the result,
//! capture the caller's stack (at return the caller's frame is complete) and
//! update the live map and the per-call-site counters. Nested allocator calls
//! (realloc → malloc, malloc → mmap) are recognised per thread so each
//! allocation is counted once, at the outermost call.
//!
//! Modules: `programs` (the thin probe programs), `thread` (per-thread entry
//! state), `live` (live map, site counters, mapping events), `sample`
//! (sampling and stack samples), `maps`. The decisions themselves are pure
//! functions of `profiler_common` (`nesting`, `entry`, `sampling`), unit-tested
//! on the host.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// fetch_add; the intrinsic lowers to BPF's atomic add.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod hold;
#[cfg(target_arch = "bpf")]
mod live;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod procs;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod ring;
#[cfg(target_arch = "bpf")]
mod sample;
#[cfg(target_arch = "bpf")]
mod thread;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // As aya's own handler: an endless loop, which the verifier rejects in any
    // program that can reach it, so a reachable panic fails at load time.
    // (`unreachable_unchecked` would instead let LLVM delete the path and
    // whatever led to it, silently.)
    #[allow(clippy::empty_loop)]
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
