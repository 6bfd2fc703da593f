//! Holding a command heapscope started (`heapscope run`) at its exit.
//!
//! Its memory map is what symbolizes its stacks, and the kernel tears it
//! down as the process exits: a command that ends before userspace has read
//! the map (a short run, or a busy machine) would leave every frame as a bare
//! address. A probe on `_exit` (where glibc's `exit` and a return from `main`
//! end) stops the process there, before the exit syscall; userspace reads the
//! map, applies what the ring holds, and lets it go on (SIGCONT).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{map, uprobe},
    maps::Array,
    programs::ProbeContext,
};

/// Slot 0: the tgid to hold, written by userspace (0: none); cleared here
/// when the hold is taken, so a process is held at most once. Slot 1: the
/// tgid held, until userspace has read its map and cleared it.
#[map]
pub(crate) static EXIT_HOLD: Array<u32> = Array::with_max_entries(2, 0);

const SIGSTOP: u32 = 19;

/// `_exit(status)` entry: stops the process to be held (other processes
/// sharing the code, a vfork child among them, have another tgid).
#[uprobe]
pub fn hold_at_exit(_ctx: ProbeContext) -> u32 {
    hold();
    0
}

/// Stops the current process if it is the one to hold (the entry program
/// calls this at the `_exit` point of its `uprobe_multi` link).
#[inline(always)]
pub(crate) fn hold() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(want) = EXIT_HOLD.get_ptr_mut(0) else {
        return;
    };
    let Some(held) = EXIT_HOLD.get_ptr_mut(1) else {
        return;
    };
    // SAFETY: both pointers are to slots of an array map, valid for the
    // program's run; userspace writes slot 0 once before the command runs.
    unsafe {
        if tgid == 0 || *want != tgid {
            return;
        }
        *want = 0;
        *held = tgid;
        // The signal is delivered as the probe returns to user space: the
        // process stops before `_exit` runs.
        bpf_send_signal(SIGSTOP);
    }
}
