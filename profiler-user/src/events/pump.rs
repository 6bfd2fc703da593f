//! A thread that only moves records from the ring buffer into a bounded
//! userspace queue; the capture thread applies them from there.
//!
//! The capture thread also unwinds, ticks and symbolizes: while it does, a
//! ring it alone read could fill up and lose records (measured: a target
//! whose two threads saturate both CPUs lost 0.14–1.6% of its `--exact`
//! records). Moving records is cheap and bounded by the rate the probes
//! write them, so this thread can run ahead of a saturating target
//! (`process::priority`, unless `--no-attach-priority`) without taking CPU
//! from it beyond that. The queue is bounded in bytes; when it is full the
//! pump stops reading, records wait in the ring, and what does not fit
//! there is counted by the kernel (`ring buffer lost`), never dropped here.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Batch, DrainLimits, RecordSource};

/// The most bytes the queue holds: half the default ring's size (ring and
/// queue together buffer 1.5 times what the ring alone did). Both count in
/// heapscope's memory bound (RSS <= 50 MB + 64 B per tracked allocation,
/// `crate::selfmem`): the default 8 MiB ring is mapped twice by the kernel
/// (16 MB of RSS once its pages were read), so 8 MiB more here left too
/// little for the rest (an `--exact` session on python3.11 peaked at 58.6 MB).
pub const MAX_QUEUE_BYTES: usize = 4 << 20;

/// Longest the pump sleeps between two looks at the ring: the probes wake
/// it only once an eighth of the ring is waiting.
const POLL: Duration = Duration::from_millis(10);

/// One chunk moved from the ring at a time: small enough that the capture
/// thread gets records soon, large enough that locking is rare.
const CHUNK: DrainLimits = DrainLimits {
    max_records: 512,
    max_bytes: 256 << 10,
};

/// Spare chunks kept for reuse (their buffers keep their capacity): as many
/// as a full queue holds (4 MiB of 264 KiB chunks). With 4, each burst had
/// the ring thread map and zero fresh chunks (heapscope's mmap threshold is
/// 128 KiB): page faults on the thread that must keep up with the probes
/// (load.c bursts of 50,000 under --exact, 30 s: 0-249 records lost -> 0 in
/// 3 runs; peak RSS 46-48 MB against a 53 MB bound either way).
const SPARES: usize = 16;

/// The largest record: a sample header and the largest stack copy.
const MAX_RECORD: usize = std::mem::size_of::<profiler_common::SampleHeader>()
    + profiler_common::STACK_COPY_SIZES[profiler_common::STACK_COPY_SIZES.len() - 1] as usize;

#[derive(Default)]
struct State {
    chunks: VecDeque<Batch>,
    bytes: usize,
    spares: Vec<Batch>,
    /// Times a chunk waited for room (records stayed in the ring meanwhile).
    full: u64,
    /// Most bytes queued at once.
    peak: usize,
}

/// Chunks of records in ring order, holding at most `cap` bytes of buffers
/// (one chunk more when the pump is told to stop, so that nothing it took
/// is dropped).
pub struct RecordQueue {
    state: Mutex<State>,
    room: Condvar,
    cap: usize,
}

impl RecordQueue {
    /// An empty queue of at most `cap` bytes.
    pub fn new(cap: usize) -> RecordQueue {
        RecordQueue {
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `chunk`, waiting while it does not fit (an empty queue takes
    /// any chunk) unless `stop` is set.
    pub fn push(&self, chunk: Batch, stop: &AtomicBool) {
        let size = chunk.capacity();
        let mut s = self.lock();
        let mut waited = false;
        while s.bytes > 0 && s.bytes + size > self.cap && !stop.load(Ordering::Acquire) {
            waited = true;
            s = match self.room.wait_timeout(s, POLL) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        s.full += u64::from(waited);
        s.bytes += size;
        s.peak = s.peak.max(s.bytes);
        s.chunks.push_back(chunk);
    }

    /// The oldest chunk, if any.
    pub fn pop(&self) -> Option<Batch> {
        let mut s = self.lock();
        let c = s.chunks.pop_front()?;
        s.bytes -= c.capacity();
        drop(s);
        self.room.notify_one();
        Some(c)
    }

    /// Gives a chunk back for reuse.
    pub fn recycle(&self, chunk: Batch) {
        let mut s = self.lock();
        if s.spares.len() < SPARES {
            s.spares.push(chunk);
        }
    }

    /// An empty chunk (a recycled one when there is one).
    pub fn spare(&self) -> Batch {
        self.lock().spares.pop().unwrap_or_default()
    }

    /// Times a chunk had to wait for room.
    pub fn full_waits(&self) -> u64 {
        self.lock().full
    }

    /// Most bytes queued at once.
    pub fn peak_bytes(&self) -> usize {
        self.lock().peak
    }

    /// Bytes of buffers queued now.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// An eventfd the pump writes after each chunk: readable while records wait.
struct Ready(OwnedFd);

impl Ready {
    fn new() -> std::io::Result<Ready> {
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Ready(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn set(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64 to the eventfd we own; it
        // fails only when the counter would overflow (already readable).
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn reset(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from the non-blocking
        // eventfd we own; a failure means it was not set.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// Waits until one of `fds` is readable or `timeout` passes.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout: Duration) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p.len()` valid pollfds for the call's duration. An error
    // (EINTR) only ends this wait early.
    unsafe {
        libc::poll(
            p.as_mut_ptr(),
            p.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
}

/// A record source the pump can wait on.
pub trait WaitReady {
    /// Returns once records may be waiting, or after `timeout`. The ring
    /// buffers are polled themselves: an epoll set of them is readable
    /// only after a wakeup, which the probes send once an eighth of a ring
    /// is full, so records that came without one waited out the timeout.
    fn wait_ready(&self, timeout: Duration);
}

struct Shared {
    queue: RecordQueue,
    ready: Ready,
    stop: AtomicBool,
}

/// The records of a ring, read through the pump thread while it runs and
/// straight from the ring once it was stopped.
pub struct Pumped<R> {
    shared: Arc<Shared>,
    current: Option<Batch>,
    /// Index of the next record of `current`.
    next: usize,
    pump: Option<JoinHandle<R>>,
    ring: Option<R>,
}

/// Starts the pump thread on `ring` with a queue of `queue_bytes`; `raise`:
/// the thread runs at raised priority (see `process::priority`).
pub fn start<R>(ring: R, queue_bytes: usize, raise: bool) -> std::io::Result<Pumped<R>>
where
    R: RecordSource + WaitReady + Send + 'static,
{
    let shared = Arc::new(Shared {
        queue: RecordQueue::new(queue_bytes),
        ready: Ready::new()?,
        stop: AtomicBool::new(false),
    });
    let s = Arc::clone(&shared);
    let pump = crate::process::priority::inheriting(|| {
        std::thread::Builder::new()
            .name("heapscope-ring".into())
            .spawn(move || {
                let _raised = raise
                    .then(|| crate::process::priority::raise().ok())
                    .flatten();
                pump(ring, &s)
            })
    })?;
    Ok(Pumped {
        shared,
        current: None,
        next: 0,
        pump: Some(pump),
        ring: None,
    })
}

/// The pump's loop: until told to stop, moves whatever the ring holds into
/// the queue, chunk by chunk; returns the ring.
fn pump<R: RecordSource + WaitReady>(mut ring: R, s: &Shared) -> R {
    let mut chunk = s.queue.spare();
    while !s.stop.load(Ordering::Acquire) {
        ring.wait_ready(POLL);
        loop {
            // Filled to its limit plus one record: never reallocated.
            chunk.reserve(CHUNK.max_bytes + MAX_RECORD);
            let more = chunk.fill(&mut ring, CHUNK);
            if chunk.is_empty() {
                break;
            }
            // A chunk mostly empty (the ring ran dry) is queued as a copy
            // of its size: the queue's bound is on memory, not records.
            let ready = if chunk.bytes() * 2 < chunk.capacity() {
                chunk.compact()
            } else {
                std::mem::replace(&mut chunk, s.queue.spare())
            };
            s.queue.push(ready, &s.stop);
            s.ready.set();
            if !more {
                break;
            }
        }
    }
    ring
}

impl<R> Pumped<R> {
    /// Readable while the pump has queued records (its eventfd). Once the
    /// pump was stopped the ring is read directly and this says nothing
    /// more: read until `pop_into` finds nothing, as the session's final
    /// drain does.
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.shared.ready.0.as_fd()
    }

    /// Stops the pump thread (within its poll interval) and reads the ring
    /// directly from then on, after what the queue holds. Idempotent.
    pub fn stop_pump(&mut self) {
        let Some(pump) = self.pump.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::Release);
        self.shared.queue.room.notify_all();
        // A panicked pump leaves its records in the ring: counted as unread.
        self.ring = pump.join().ok();
    }

    /// The queue between the pump and the reader.
    pub fn queue(&self) -> &RecordQueue {
        &self.shared.queue
    }
}

impl<R> Drop for Pumped<R> {
    fn drop(&mut self) {
        self.stop_pump();
    }
}

impl<R: RecordSource> RecordSource for Pumped<R> {
    fn take_batch(&mut self, batch: &mut Batch, limits: DrainLimits) -> bool {
        if let Some(c) = &self.current {
            if self.next < c.len() {
                // The rest of a chunk begun record by record, copied: the
                // next batch is a whole chunk again.
                batch.clear();
                while batch.len() < limits.max_records.max(1) && batch.bytes() < limits.max_bytes {
                    let Some(rec) = c.record(self.next) else {
                        break;
                    };
                    batch.push(rec);
                    self.next += 1;
                }
                return true;
            }
            if let Some(done) = self.current.take() {
                self.shared.queue.recycle(done);
            }
            self.next = 0;
        }
        let Some(c) = self.shared.queue.pop() else {
            return false;
        };
        if c.len() > limits.max_records.max(1) || c.bytes() > limits.max_bytes + MAX_RECORD {
            // Taken record by record.
            self.current = Some(c);
            self.next = 0;
            return false;
        }
        let done = std::mem::replace(batch, c);
        self.shared.queue.recycle(done);
        true
    }

    fn pop_into(&mut self, buf: &mut Vec<u8>) -> bool {
        loop {
            if let Some(c) = &self.current {
                if let Some(rec) = c.record(self.next) {
                    buf.extend_from_slice(rec);
                    self.next += 1;
                    return true;
                }
            }
            if let Some(done) = self.current.take() {
                self.shared.queue.recycle(done);
            }
            self.next = 0;
            self.current = self.shared.queue.pop();
            if self.current.is_some() {
                continue;
            }
            // Empty: clear the wake-up, then look once more, so that a
            // chunk pushed meanwhile either is seen now or sets it again.
            self.shared.ready.reset();
            self.current = self.shared.queue.pop();
            if self.current.is_some() {
                continue;
            }
            return match &mut self.ring {
                Some(ring) => ring.pop_into(buf),
                None => false,
            };
        }
    }
}

#[cfg(test)]
mod tests;
