//! Hands the push thread one profile per push interval: the window since
//! the previous push (allocations during it, in-use at its end). A session
//! output ([`PushOutput`]).

use std::sync::{Arc, Mutex};

use super::output::{SessionEvent, SessionOutput, TickUpdate};
use crate::exactness::Exactness;
use crate::push::{PushOptions, PushSummary, Pusher};
use crate::timeline::{ProfileMeta, Timeline, Window};
use crate::views::pprof::PprofOptions;

/// The push counters as last seen by [`PushOutput`], for whoever shows them
/// (the status line); the final ones once the session stopped.
pub type PushStatus = Arc<Mutex<Option<PushSummary>>>;

/// Pushes a profile per interval while a session runs: the push thread
/// starts when the session is attached and is flushed (bounded) when it has
/// stopped, after the probes are detached, so waiting for the backend never
/// keeps probes in the target.
pub struct PushOutput {
    opts: Option<PushOptions>,
    ticker: Option<PushTicker>,
    status: PushStatus,
    error: Option<String>,
}

impl PushOutput {
    /// An output pushing with `opts`, and the handle its counters are read from.
    pub fn new(opts: PushOptions) -> (PushOutput, PushStatus) {
        let status = PushStatus::default();
        let out = PushOutput {
            opts: Some(opts),
            ticker: None,
            status: Arc::clone(&status),
            error: None,
        };
        (out, status)
    }

    fn set_status(&self, summary: PushSummary) {
        // A poisoned lock only means a reader panicked; the value is whole.
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(summary);
    }
}

impl SessionOutput for PushOutput {
    fn event(&mut self, event: &SessionEvent) {
        match event {
            SessionEvent::Attached { header } => {
                let Some(opts) = self.opts.take() else { return };
                let meta = ProfileMeta {
                    pid: header.pid,
                    comm: header.comm.clone(),
                    sample_rate: header.sample_rate,
                    allocator: header.allocator.clone(),
                    allocator_notes: header.allocator_notes.clone(),
                };
                match PushTicker::start(opts, header.start_unix_ms, meta) {
                    Ok(t) => self.ticker = Some(t),
                    Err(e) => self.error = Some(format!("cannot start the push thread: {e}")),
                }
            }
            SessionEvent::Stopped { .. } => {
                if let Some(t) = self.ticker.take() {
                    self.set_status(t.finish());
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, update: &TickUpdate<'_>) {
        if let Some(t) = self.ticker.as_mut() {
            t.tick(update.timeline, update.tick.t_ms, update.last);
            let summary = t.summary();
            self.set_status(summary);
        }
    }

    fn finish(&mut self, _end_ms: u64) -> Option<String> {
        self.error.take()
    }
}

/// The session's push schedule around a [`Pusher`].
pub struct PushTicker {
    pusher: Pusher,
    /// Session time of the last push (`None`: none yet, the next covers
    /// the session from attach).
    last_ms: Option<u64>,
    start_unix_ms: u64,
    meta: ProfileMeta,
}

impl PushTicker {
    /// Starts the push thread.
    pub fn start(
        opts: PushOptions,
        start_unix_ms: u64,
        meta: ProfileMeta,
    ) -> std::io::Result<PushTicker> {
        Ok(PushTicker {
            pusher: Pusher::start(with_process_labels(opts, &meta))?,
            last_ms: None,
            start_unix_ms,
            meta,
        })
    }

    /// Offers a profile when an interval has passed since the last one (or,
    /// with `last`, whatever was not pushed yet).
    pub fn tick(&mut self, timeline: &Timeline, t_ms: u64, last: bool) {
        let interval = self.pusher.interval().as_millis() as u64;
        let from_ms = self.last_ms.unwrap_or(0);
        let due = t_ms >= from_ms.saturating_add(interval.max(1));
        if !(due || last && t_ms > from_ms) {
            return;
        }
        let window = Window {
            start_ms: self.last_ms.map(|l| l + 1),
            end_ms: None,
        };
        let profile = timeline.profile_for(window, &self.meta);
        let opts = PprofOptions::for_window(
            self.start_unix_ms,
            t_ms,
            t_ms - from_ms,
            Exactness::of(&profile),
            self.meta.pid,
            &self.meta.comm,
        );
        self.pusher.offer(
            profile,
            opts,
            self.start_unix_ms + from_ms,
            self.start_unix_ms + t_ms,
        );
        self.last_ms = Some(t_ms);
    }

    /// The counters now.
    pub fn summary(&self) -> PushSummary {
        self.pusher.summary()
    }

    /// Flushes (bounded) and stops the push thread.
    pub fn finish(self) -> PushSummary {
        self.pusher.finish()
    }
}

/// `opts` with the service name defaulting to the target's command name and
/// the labels `host`, `pid` and `comm` ahead of the user's (a user label of
/// the same name wins).
fn with_process_labels(mut opts: PushOptions, meta: &ProfileMeta) -> PushOptions {
    if opts.service.is_empty() {
        opts.service = meta.comm.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut labels: Vec<(String, String)> = [
        ("host", host),
        ("pid", meta.pid.to_string()),
        ("comm", meta.comm.clone()),
    ]
    .into_iter()
    .filter(|(k, v)| !v.is_empty() && !opts.labels.iter().any(|(uk, _)| uk == k))
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    labels.append(&mut opts.labels);
    opts.labels = labels;
    opts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Endpoint;

    #[test]
    fn process_labels_come_first_and_user_labels_win() {
        let opts = PushOptions {
            endpoint: Endpoint::parse("http://127.0.0.1:1").expect("url"),
            interval: std::time::Duration::from_secs(15),
            service: String::new(),
            labels: vec![("env".into(), "prod".into()), ("host".into(), "h1".into())],
        };
        let meta = ProfileMeta {
            pid: 42,
            comm: "memcached".into(),
            ..ProfileMeta::default()
        };
        let o = with_process_labels(opts, &meta);
        assert_eq!(o.service, "memcached");
        let keys: Vec<&str> = o.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["pid", "comm", "env", "host"]);
        assert_eq!(o.labels[3].1, "h1");
    }
}
