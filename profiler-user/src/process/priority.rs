//! heapscope's own scheduling priority while it attaches and detaches.
//!
//! A target whose threads saturate the CPUs leaves a nice-0 heapscope
//! thread about 1/(threads+1) of a CPU. Measured with 200 threads spinning
//! malloc/free on 2 CPUs: every phase of attaching took ~100× its idle time
//! (program verification 0.25 s → 29 s, map creation 0.16 s → 9 s, reading
//! symbols 0.05 s → 2.2 s): CPU starvation, not kernel work. Those phases are
//! short and bounded, so heapscope runs them ahead of the target: at the
//! lowest real-time priority (SCHED_FIFO 1) when allowed, else at nice -20,
//! and goes back to its own priority in between (`--no-attach-priority`
//! keeps it throughout). The kernel's real-time throttling still leaves the
//! rest of the machine 5% of every second.

/// The nice value heapscope asks for when real-time scheduling is refused.
pub const NICE: i32 = -20;

/// The SCHED_FIFO priority heapscope asks for (the lowest one).
const RT_PRIORITY: i32 = 1;

/// How a thread was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// SCHED_FIFO at the lowest real-time priority.
    RealTime,
    /// Nice -20 (real-time scheduling was refused).
    Nice,
}

impl How {
    /// For the status output.
    pub fn describe(self) -> &'static str {
        match self {
            How::RealTime => "real-time priority (SCHED_FIFO 1)",
            How::Nice => "nice -20",
        }
    }
}

/// Restores the thread's previous scheduling when dropped.
pub struct Raised {
    previous_nice: i32,
    previous_policy: i32,
    previous_param: libc::sched_param,
    /// How the thread was raised.
    pub how: How,
}

impl Drop for Raised {
    fn drop(&mut self) {
        // SAFETY: as in `raise`; going back to the previous policy and nice
        // value of the calling thread is always allowed.
        unsafe {
            if self.how == How::RealTime {
                libc::sched_setscheduler(0, self.previous_policy, &self.previous_param);
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, self.previous_nice);
        }
    }
}

/// Raises the calling thread (Linux scheduling is per thread) until the
/// guard is dropped: SCHED_FIFO 1, else nice [`NICE`]. Needs CAP_SYS_NICE
/// (root has it); without it the priority stays and the error says why.
pub fn raise() -> std::io::Result<Raised> {
    // SAFETY: getpriority/setpriority/sched_* with who = 0 read and change
    // the calling thread only; the param pointers are to live locals.
    // getpriority can legitimately return -1, so errno is cleared first.
    unsafe {
        *libc::__errno_location() = 0;
        let previous_nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let err = std::io::Error::last_os_error();
        if previous_nice == -1 && err.raw_os_error().unwrap_or(0) != 0 {
            return Err(err);
        }
        let previous_policy = libc::sched_getscheduler(0);
        let mut previous_param: libc::sched_param = std::mem::zeroed();
        libc::sched_getparam(0, &mut previous_param);
        let rt = libc::sched_param {
            sched_priority: RT_PRIORITY,
        };
        if previous_policy >= 0 && libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) == 0 {
            return Ok(Raised {
                previous_nice,
                previous_policy,
                previous_param,
                how: How::RealTime,
            });
        }
        if libc::setpriority(libc::PRIO_PROCESS, 0, NICE) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Raised {
            previous_nice,
            previous_policy,
            previous_param,
            how: How::Nice,
        })
    }
}

/// Lowers the calling thread (only it: Linux keeps a nice value per
/// thread) to `nice`, for work that can wait while the capture cannot.
/// Returns whether it was changed.
pub fn lower_this_thread(nice: i32) -> bool {
    // A thread started by a raised one inherits its real-time policy, on
    // which a nice value has no effect: the symbolizer, started by the
    // capture thread while it attached at SCHED_FIFO, ran its first
    // symbolization at real-time priority and kept the capture thread off
    // the CPU for ~65 ms (redis-server under redis-benchmark lost ~12,000
    // records then, in most runs). Back to the normal policy first.
    let normal = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `normal` lives for the call.
    let policy = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal) } == 0;
    // SAFETY: with who = 0, changes the nice value of the calling thread only.
    policy && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) == 0 }
}

/// The thread ids of this process (from /proc/self/task).
fn own_threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Raises every thread of heapscope for good, as [`raise`] does one: once
/// a session is told to stop, its remaining work (final drain, last
/// snapshot, detach, report) is bounded and the process then exits.
/// Returns how, or None when neither was allowed.
pub fn raise_all_for_exit() -> Option<How> {
    let rt = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    let mut how = None;
    for tid in own_threads() {
        // SAFETY: changes the scheduling of one of our own threads; the
        // param pointer is to a live local.
        let done = unsafe {
            if libc::sched_setscheduler(tid, libc::SCHED_FIFO, &rt) == 0 {
                Some(How::RealTime)
            } else if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) == 0 {
                Some(How::Nice)
            } else {
                None
            }
        };
        how = how.or(done);
    }
    how
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_own_threads() {
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        assert!(own_threads().contains(&me));
    }

    #[test]
    fn describes_how() {
        assert_eq!(How::Nice.describe(), "nice -20");
        assert!(How::RealTime.describe().contains("SCHED_FIFO"));
    }

    #[test]
    fn a_thread_started_by_a_raised_one_is_lowered_to_the_normal_policy() {
        // Needs the right to raise (root); elsewhere there is nothing to undo.
        let Ok(raised) = raise() else {
            return;
        };
        if raised.how != How::RealTime {
            return;
        }
        let policy = std::thread::spawn(|| {
            assert!(lower_this_thread(10));
            // SAFETY: pid 0 is the calling thread.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .unwrap();
        drop(raised);
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
