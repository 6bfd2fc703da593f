//! Requests from the session's async side (timers, signals) to its capture
//! thread: tick, refresh the memory map, stop. Each request is a flag, so
//! repeated requests coalesce and nothing queues up however busy the capture
//! thread is; an eventfd wakes the thread when it waits for the ring buffer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::StopReason;

/// The shared request flags and the wake-up descriptor.
pub struct Control {
    wake: OwnedFd,
    tick: AtomicBool,
    refresh: AtomicBool,
    /// 0 while running, else `1 + ` the index of the reason in [`STOPS`].
    stop: AtomicU8,
}

const STOPS: [StopReason; 5] = [
    StopReason::Duration,
    StopReason::Interrupted,
    StopReason::Terminated,
    StopReason::HangUp,
    StopReason::TargetExited,
];

/// What [`Control::wait`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The ring buffer has records.
    pub ring: bool,
}

/// Longest wait between two looks at the ring (see [`Control::wait`]).
pub const RING_POLL_MS: libc::c_int = 10;

impl Control {
    /// Creates the flags and the eventfd.
    pub fn new() -> io::Result<Control> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Control {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(fd) },
            tick: AtomicBool::new(false),
            refresh: AtomicBool::new(false),
            stop: AtomicU8::new(0),
        })
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd we own. It
        // can only fail when the counter would overflow, i.e. the thread is
        // already due to wake up.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Asks for a tick (snapshot, symbolize new sites, outputs).
    pub fn request_tick(&self) {
        self.tick.store(true, Ordering::Release);
        self.wake();
    }

    /// Asks for a re-read of the target's memory map.
    pub fn request_refresh(&self) {
        self.refresh.store(true, Ordering::Release);
        self.wake();
    }

    /// Asks the capture thread to stop; the first reason given wins.
    pub fn request_stop(&self, reason: StopReason) {
        let code = STOPS.iter().position(|r| *r == reason).unwrap_or(0) as u8 + 1;
        let _ = self
            .stop
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// Takes a pending tick request.
    pub fn take_tick(&self) -> bool {
        self.tick.swap(false, Ordering::AcqRel)
    }

    /// Takes a pending refresh request.
    pub fn take_refresh(&self) -> bool {
        self.refresh.swap(false, Ordering::AcqRel)
    }

    /// The reason to stop, once asked.
    pub fn stop(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::Acquire) {
            0 => None,
            c => STOPS.get(usize::from(c) - 1).copied(),
        }
    }

    /// Blocks until `ring` (the ring buffer, or the descriptor its pump
    /// thread sets, see `events::pump`) is readable or a request arrives
    /// (level-triggered: records left return at once), or for
    /// [`RING_POLL_MS`]: the probes wake the reader only once a batch is
    /// waiting, and a ring polled at the timeout reports the records below
    /// that mark.
    pub fn wait(&self, ring: BorrowedFd<'_>) -> io::Result<Ready> {
        let mut fds = [
            libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            let n =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, RING_POLL_MS) };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from the eventfd we own;
            // non-blocking, and a failure only means it was already reset.
            unsafe {
                libc::read(
                    self.wake.as_raw_fd(),
                    (&mut v as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
        Ok(Ready {
            ring: fds[0].revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn requests_coalesce_and_the_first_stop_wins() {
        let c = Control::new().unwrap();
        assert_eq!(c.stop(), None);
        c.request_tick();
        c.request_tick();
        // A pipe nobody writes to stands in for an empty ring.
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(c.wait(r.as_fd()).unwrap(), Ready { ring: false });
        assert!(c.take_tick());
        assert!(!c.take_tick(), "two requests, one tick");
        assert!(!c.take_refresh());
        c.request_stop(StopReason::Terminated);
        c.request_stop(StopReason::Duration);
        assert_eq!(c.stop(), Some(StopReason::Terminated));
        for r in STOPS {
            let c = Control::new().unwrap();
            c.request_stop(r);
            assert_eq!(c.stop(), Some(r));
        }
    }

    #[test]
    fn wait_returns_when_the_ring_has_data() {
        let c = Control::new().unwrap();
        let (r, mut w) = std::io::pipe().unwrap();
        std::io::Write::write_all(&mut w, b"x").unwrap();
        assert_eq!(c.wait(r.as_fd()).unwrap(), Ready { ring: true });
    }
}
