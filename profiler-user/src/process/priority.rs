//! heapscope's own scheduling priority while it attaches and detaches.
//!
//! A target whose threads saturate the CPUs leaves a nice-0 heapscope
//! thread about 1/(threads+1) of a CPU. Measured with 200 threads spinning
//! malloc/free on 2 CPUs: every phase of attaching took ~100× its idle time
//! (program verification 0.25 s → 29 s, map creation 0.16 s → 9 s, reading
//! symbols 0.05 s → 2.2 s): CPU starvation, not kernel work. Those phases are
//! short and bounded, so heapscope runs them ahead of the target: at the
//! lowest real-time priority (SCHED_FIFO 1) when allowed, else at nice -20.
//! In between, only the ring thread and the thread that serves signals and
//! ticks stay raised; the capture work goes back to heapscope's own
//! priority and the symbolizer below it (`--no-attach-priority` keeps
//! heapscope's own priority throughout). Threads started by a raised one do
//! not inherit the raise unless started through [`inheriting`]. The
//! kernel's real-time throttling still leaves the rest of the machine 5% of
//! every second.

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

/// Puts the thread back to heapscope's own scheduling when dropped.
pub struct Raised {
    /// How the thread was raised.
    pub how: How,
}

impl Drop for Raised {
    fn drop(&mut self) {
        // Back to the scheduling heapscope started with, not to what this
        // thread had before: a thread started by a raised one (see
        // `inheriting`) had the raise already. Once raised for good (see
        // `raise_all_for_exit`) it stays so.
        if FOR_GOOD.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Some(original) = ORIGINAL.get() {
            original.apply();
        }
    }
}

/// A thread's scheduling: policy (with its flags), real-time priority, nice.
#[derive(Clone, Copy)]
struct Sched {
    policy: i32,
    param: libc::sched_param,
    nice: i32,
}

impl Sched {
    /// The calling thread's scheduling.
    fn current() -> std::io::Result<Sched> {
        // SAFETY: with pid/who 0 these read the calling thread only; the
        // param pointer is to a live local. getpriority can legitimately
        // return -1, so errno is cleared first.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            let err = std::io::Error::last_os_error();
            if nice == -1 && err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            let mut param: libc::sched_param = std::mem::zeroed();
            libc::sched_getparam(0, &mut param);
            Ok(Sched {
                policy: libc::sched_getscheduler(0),
                param,
                nice,
            })
        }
    }

    /// Gives the calling thread this scheduling, as far as allowed.
    fn apply(self) {
        if self.policy < 0 {
            return;
        }
        // SAFETY: as in `current`, changing the calling thread only; going
        // back to a policy and nice value heapscope had is allowed.
        unsafe {
            libc::sched_setscheduler(0, self.policy, &self.param);
            libc::setpriority(libc::PRIO_PROCESS, 0, self.nice);
        }
    }
}

/// Set by [`raise_all_for_exit`]: no guard lowers a thread any more.
static FOR_GOOD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The scheduling heapscope started with, taken at the first raise (no
/// thread had been raised before it).
static ORIGINAL: std::sync::OnceLock<Sched> = std::sync::OnceLock::new();

/// Raises the calling thread (Linux scheduling is per thread) until the
/// guard is dropped: SCHED_FIFO 1, else nice [`NICE`]. Needs CAP_SYS_NICE
/// (root has it); without it the priority stays and the error says why.
///
/// With SCHED_RESET_ON_FORK: a thread the raised one starts (the web
/// server's, the symbolizer, a push) begins at the normal policy and a nice
/// value of at least 0 instead of inheriting the raise; the ones that must
/// run ahead from their first instruction are started through [`inheriting`].
pub fn raise() -> std::io::Result<Raised> {
    let now = Sched::current()?;
    ORIGINAL.get_or_init(|| Sched {
        policy: now.policy & !libc::SCHED_RESET_ON_FORK,
        ..now
    });
    let rt = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: sched_setscheduler/setpriority with pid/who 0 change the
    // calling thread only; the param pointers are to live locals.
    unsafe {
        if now.policy >= 0
            && libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &rt) == 0
        {
            return Ok(Raised { how: How::RealTime });
        }
        if libc::setpriority(libc::PRIO_PROCESS, 0, NICE) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // As above, for the nice value (best effort: setting the flag is
        // always allowed; without it threads inherit nice -20).
        if now.policy == libc::SCHED_OTHER {
            libc::sched_setscheduler(0, libc::SCHED_OTHER | libc::SCHED_RESET_ON_FORK, &now.param);
        }
    }
    Ok(Raised { how: How::Nice })
}

/// Runs `f`, which starts threads that must run ahead from their first
/// instruction (the capture and ring threads, the programs' loaders, the
/// detach threads), with the calling thread's raise inherited by them. A
/// thread that raises itself first waits for a CPU at the normal priority:
/// under 200 saturating threads, ~150 ms before its first instruction, and
/// program verification took 0.25 s instead of 0.08 s.
pub fn inheriting<T>(f: impl FnOnce() -> T) -> T {
    let Ok(now) = Sched::current() else {
        return f();
    };
    if now.policy < 0 || now.policy & libc::SCHED_RESET_ON_FORK == 0 {
        return f();
    }
    let base = now.policy & !libc::SCHED_RESET_ON_FORK;
    // SAFETY: changes the calling thread's flags only; clearing the flag
    // needs CAP_SYS_NICE, and without it the threads start unraised.
    let cleared = unsafe { libc::sched_setscheduler(0, base, &now.param) } == 0;
    let out = f();
    if cleared {
        // SAFETY: as above; setting the flag back is always allowed.
        unsafe { libc::sched_setscheduler(0, now.policy, &now.param) };
    }
    out
}

/// Lowers the calling thread (only it: Linux keeps a nice value per
/// thread) to `nice`, for work that can wait while the capture cannot.
/// Returns whether it was changed.
pub fn lower_this_thread(nice: i32) -> bool {
    // Not once the session raised every thread for its exit.
    if FOR_GOOD.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
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
    FOR_GOOD.store(true, std::sync::atomic::Ordering::Relaxed);
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
    fn a_thread_started_by_a_raised_one_starts_at_the_normal_policy() {
        // Needs the right to raise (root); elsewhere nothing is inherited.
        let Ok(raised) = raise() else {
            return;
        };
        let (policy, nice) = std::thread::spawn(|| {
            // SAFETY: pid 0 / who 0 is the calling thread.
            unsafe {
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            }
        })
        .join()
        .unwrap();
        drop(raised);
        assert_eq!(policy, libc::SCHED_OTHER);
        assert!(nice >= 0, "nice {nice} inherited");
    }

    #[test]
    fn a_thread_started_inheriting_has_the_raise_and_gives_it_back() {
        let Ok(raised) = raise() else {
            return;
        };
        let how = raised.how;
        let read = || {
            // SAFETY: pid 0 / who 0 is the calling thread.
            unsafe {
                (
                    libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK,
                    libc::getpriority(libc::PRIO_PROCESS, 0),
                )
            }
        };
        let (inherited, after) = inheriting(|| {
            std::thread::spawn(move || {
                let inherited = read();
                // Its own raise and drop end at the normal policy, not at the
                // raise it was born with.
                drop(raise());
                (inherited, read())
            })
        })
        .join()
        .unwrap();
        // The flag is back on the raised thread.
        // SAFETY: pid 0 is the calling thread.
        let flags = unsafe { libc::sched_getscheduler(0) } & libc::SCHED_RESET_ON_FORK;
        drop(raised);
        match how {
            How::RealTime => {
                assert_eq!(inherited.0, libc::SCHED_FIFO);
                assert_ne!(flags, 0);
            }
            How::Nice => assert_eq!(inherited.1, NICE),
        }
        assert_eq!(after.0, libc::SCHED_OTHER);
        assert!(after.1 >= 0);
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
