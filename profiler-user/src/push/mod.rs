//! Continuous push: one pprof profile per interval to a Pyroscope-compatible
//! ingest endpoint, from a thread of its own.
//!
//! The session only hands over a finished [`Profile`] with
//! [`Pusher::offer`], which never blocks: a full queue drops the profile
//! and counts it. The push thread encodes, sends, and retries with
//! exponential backoff; a profile that still fails after
//! [`MAX_ATTEMPTS`] is dropped and counted. Memory is bounded by
//! [`QUEUE`] profiles waiting plus the one being sent, so a backend that is
//! down costs neither memory nor capture time.

pub mod ingest;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::profile::Profile;
use crate::views::pprof::{write_pprof, PprofOptions};

pub use crate::http::{Endpoint, HttpError};

/// Profiles waiting to be sent; more are dropped (and counted).
pub const QUEUE: usize = 4;
/// Sends of one profile before it is dropped.
pub const MAX_ATTEMPTS: u32 = 3;
/// Wait before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Per connect, write and read.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end of a session waits for queued profiles to go out.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// What to push where.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub endpoint: Endpoint,
    pub interval: Duration,
    /// The application name (Pyroscope's `service_name`).
    pub service: String,
    /// Labels after `service_name`, in order (host, pid, comm, then the user's).
    pub labels: Vec<(String, String)>,
}

/// Counters of a pusher, shared with its thread.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Profiles the session handed over.
    pub offered: AtomicU64,
    /// Profiles the backend accepted.
    pub sent: AtomicU64,
    /// Profiles given up: queue full, every attempt failed, or still
    /// unsent when the session ended.
    pub dropped: AtomicU64,
    /// Failed sends, including those retried successfully.
    pub failed_attempts: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`PushStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushSummary {
    pub url: String,
    pub offered: u64,
    pub sent: u64,
    pub dropped: u64,
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

impl PushSummary {
    /// Short counts for the status line.
    pub fn counts(&self) -> String {
        format!("push {} sent, {} dropped", self.sent, self.dropped)
    }

    /// One line for the end of a session.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "push {}: {} sent, {} dropped",
            self.url, self.sent, self.dropped
        );
        if let Some(e) = &self.last_error {
            s.push_str(&format!(" (last error: {e})"));
        }
        s
    }
}

/// One profile to send.
struct Job {
    profile: Profile,
    opts: PprofOptions,
    from_s: u64,
    until_s: u64,
}

/// The session's side of the push thread.
pub struct Pusher {
    opts: PushOptions,
    tx: Option<SyncSender<Job>>,
    stats: Arc<PushStats>,
    stop: Arc<AtomicBool>,
    done: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

impl Pusher {
    /// Starts the push thread.
    pub fn start(opts: PushOptions) -> std::io::Result<Pusher> {
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let stats = Arc::new(PushStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let name = ingest::app_name(&opts.service, &all_labels(&opts));
        let worker = Worker {
            endpoint: opts.endpoint.clone(),
            name,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
        };
        let handle = std::thread::Builder::new()
            .name("heapscope-push".into())
            .spawn(move || {
                worker.run(rx);
                let _ = done_tx.send(());
            })?;
        Ok(Pusher {
            opts,
            tx: Some(tx),
            stats,
            stop,
            done,
            handle: Some(handle),
        })
    }

    /// The push interval.
    pub fn interval(&self) -> Duration {
        self.opts.interval
    }

    /// Queues `profile` (covering `from_unix_ms..until_unix_ms`) for sending;
    /// never blocks. A full queue drops it and counts it.
    pub fn offer(
        &self,
        profile: Profile,
        opts: PprofOptions,
        from_unix_ms: u64,
        until_unix_ms: u64,
    ) {
        self.stats.offered.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            profile,
            opts,
            // Whole seconds, both truncated, so consecutive windows meet
            // instead of overlapping by a rounded-up second.
            from_s: from_unix_ms / 1000,
            until_s: until_unix_ms / 1000,
        };
        let full = match &self.tx {
            Some(tx) => matches!(
                tx.try_send(job),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
            ),
            None => true,
        };
        if full {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn summary(&self) -> PushSummary {
        summary(&self.opts.endpoint.url, &self.stats)
    }

    /// Lets queued profiles go out for at most a few seconds, then stops the
    /// thread; whatever was not sent by then counts as dropped.
    pub fn finish(mut self) -> PushSummary {
        self.tx = None;
        if self.done.recv_timeout(FLUSH_WAIT).is_err() {
            self.stop.store(true, Ordering::Relaxed);
            // One more HTTP timeout at most: the thread checks `stop` between steps.
            let _ = self.done.recv_timeout(HTTP_TIMEOUT * 2);
        }
        if let Some(h) = self.handle.take() {
            if h.is_finished() {
                let _ = h.join();
            }
        }
        let mut s = self.summary();
        // A thread still stuck in a send: its profiles are lost with it.
        let settled = s.sent + s.dropped;
        if s.offered > settled {
            s.dropped += s.offered - settled;
        }
        s
    }
}

fn summary(url: &str, stats: &PushStats) -> PushSummary {
    PushSummary {
        url: url.to_string(),
        offered: stats.offered.load(Ordering::Relaxed),
        sent: stats.sent.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
        failed_attempts: stats.failed_attempts.load(Ordering::Relaxed),
        last_error: stats.last_error.lock().ok().and_then(|e| e.clone()),
    }
}

/// `service_name` first, then the other labels.
fn all_labels(opts: &PushOptions) -> Vec<(String, String)> {
    let mut v = vec![("service_name".to_string(), opts.service.clone())];
    v.extend(
        opts.labels
            .iter()
            .filter(|(k, _)| k != "service_name")
            .cloned(),
    );
    v
}

/// The push thread.
struct Worker {
    endpoint: Endpoint,
    name: String,
    stats: Arc<PushStats>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(&self, rx: Receiver<Job>) {
        let mut seq: u64 = 0;
        while let Ok(job) = rx.recv() {
            seq += 1;
            if self.stop.load(Ordering::Relaxed) || !self.send(&job, seq) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends one profile, retrying with backoff; false when it was given up.
    fn send(&self, job: &Job, seq: u64) -> bool {
        let mut gz = Vec::new();
        if let Err(e) = write_pprof(&job.opts, &job.profile, &mut gz) {
            self.note_error(format!("encoding the profile: {e}"));
            return false;
        }
        let req = ingest::ingest_request(&self.name, job.from_s, job.until_s, &gz, seq);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let r = crate::http::post(
                &self.endpoint,
                &req.path_and_query,
                &req.content_type,
                &req.body,
                HTTP_TIMEOUT,
            );
            match r {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    self.note_error(crate::http::error_chain(&e));
                }
            }
            if attempt < MAX_ATTEMPTS && !self.wait(backoff) {
                return false;
            }
            backoff *= 2;
        }
        false
    }

    /// Sleeps `d` unless told to stop; false when stopping.
    fn wait(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        true
    }

    fn note_error(&self, e: String) {
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = Some(e);
        }
    }
}

#[cfg(test)]
mod tests;
