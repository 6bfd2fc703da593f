//! heapscope's in-kernel half: uprobes and uretprobes on the allocator.
//!
//! Entry probes save the arguments per thread; return probes see the result,
//! capture the caller's stack (at return the caller's frame is complete) and
//! update the live map and the per-call-site counters. Nested allocator calls
//! (realloc → malloc, malloc → mmap) are recognised by a per-thread depth so
//! each allocation is counted once, at the outermost call.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod sample;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach this; it never runs.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
