//! heapscope's own scheduling priority while it attaches and detaches
//! (`--attach-priority`).
//!
//! A target whose threads saturate the CPUs leaves a nice-0 heapscope
//! thread about 1/(threads+1) of a CPU: with 200 busy threads, attaching
//! (reading symbols, loading and verifying the programs, linking) can take
//! seconds. Those two phases are short and bounded, so on request heapscope
//! runs them ahead of the target; in between it goes back to its own
//! priority. Not the default: while heapscope attaches, the target (and
//! everything else on the machine) waits for it.

/// The nice value heapscope asks for while attaching and detaching.
pub const NICE: i32 = -20;

/// Restores the thread's previous nice value when dropped.
pub struct Raised {
    previous: i32,
}

impl Drop for Raised {
    fn drop(&mut self) {
        // SAFETY: as in `raise`; lowering the priority back is always allowed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, self.previous) };
    }
}

/// Lowers the nice value of the calling thread (Linux nice values are per
/// thread) to [`NICE`] until the guard is dropped. Needs CAP_SYS_NICE (root
/// has it); without it the priority stays and the error says why.
pub fn raise() -> std::io::Result<Raised> {
    // SAFETY: getpriority/setpriority with PRIO_PROCESS and who = 0 read and
    // change the calling thread only; no pointers involved. getpriority can
    // legitimately return -1, so errno is cleared first and checked after.
    let previous = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let err = std::io::Error::last_os_error();
    if previous == -1 && err.raw_os_error().unwrap_or(0) != 0 {
        return Err(err);
    }
    // SAFETY: as above.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Raised { previous })
}
