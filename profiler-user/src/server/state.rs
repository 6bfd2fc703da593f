//! What the server holds: the session's timeline (its own copy), the live
//! feed that keeps it current, and the tick broadcast for event streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::{broadcast, mpsc};

use crate::api::series::PointBuilder;
use crate::api::SessionInfo;
use crate::profile::{Profile, Totals};
use crate::session::output::{SessionEvent, SessionOutput, TickUpdate};
use crate::timeline::{GuardPoint, MemSample, ProfileMeta, SiteInfo, Tick, Timeline, Window};

use super::Source;

/// Ticks queued between the session and the server before new ones are
/// dropped (for the server only; the session and its recording keep them).
const FEED_QUEUE: usize = 64;

/// Tick events buffered per event-stream client; a client that falls
/// further behind is told to reload (`lagged`).
const BROADCAST_BUFFER: usize = 256;

/// What the session sends the server.
pub(super) enum Update {
    /// The session's identity, known once it has attached.
    Info(SessionInfo),
    /// One tick, with the call sites registered since the previous
    /// delivered tick.
    /// Boxed: a tick (with its memory sample) is far larger than the other variant.
    Tick {
        sites: Vec<SiteInfo>,
        tick: Box<Tick>,
        /// The overhead guard's newest window (`--max-overhead`).
        guard: Option<GuardPoint>,
    },
}

/// The session's data as the server sees it.
pub(super) struct Data {
    pub info: SessionInfo,
    pub timeline: Timeline,
    /// Totals and memory sample at the newest tick.
    pub last: Totals,
    pub last_mem: Option<MemSample>,
    /// The whole-session profile at the newest tick, computed once per tick.
    latest: Option<Arc<Profile>>,
    points: PointBuilder,
}

impl Data {
    pub fn meta(&self) -> ProfileMeta {
        ProfileMeta {
            pid: self.info.pid,
            comm: self.info.comm.clone(),
            // The overhead guard may have changed the rate since the start.
            sample_rate: self.timeline.guard().map_or(self.info.sample_rate, |g| {
                g.describing_rate(self.info.sample_rate)
            }),
            ..ProfileMeta::default()
        }
    }

    pub fn profile(&self, window: Window) -> Profile {
        self.timeline.profile_for(window, &self.meta())
    }
}

/// State shared by every request handler.
pub(super) struct Shared {
    data: RwLock<Data>,
    pub token: String,
    /// The cookie that carries the token (named by port: cookies ignore ports).
    pub cookie: String,
    pub metrics_top: usize,
    pub ticks: broadcast::Sender<Arc<str>>,
    /// Ticks the feed could not queue.
    pub dropped: Arc<AtomicU64>,
    feed_tx: Option<mpsc::Sender<Update>>,
}

impl Shared {
    /// The state for `source`, and the receiving end of the live feed.
    pub fn new(
        source: Source,
        token: String,
        port: u16,
        metrics_top: usize,
    ) -> (Shared, Option<mpsc::Receiver<Update>>) {
        let (info, timeline, feed) = match source {
            Source::Recording { info, timeline } => (info, timeline, None),
            Source::Live { info } => (info, Timeline::default(), Some(mpsc::channel(FEED_QUEUE))),
        };
        let (mut last, mut last_mem) = (Totals::default(), None);
        let n = timeline.len();
        timeline.replay(n.saturating_sub(1)..n, |v| {
            last = v.totals.clone();
            last_mem = v.mem.copied();
        });
        let (tx, _) = broadcast::channel(BROADCAST_BUFFER);
        let (feed_tx, feed_rx) = match feed {
            Some((t, r)) => (Some(t), Some(r)),
            None => (None, None),
        };
        let shared = Shared {
            data: RwLock::new(Data {
                info,
                timeline,
                last,
                last_mem,
                latest: None,
                points: PointBuilder::default(),
            }),
            token,
            cookie: format!("heapscope_token_{port}"),
            metrics_top,
            ticks: tx,
            dropped: Arc::new(AtomicU64::new(0)),
            feed_tx,
        };
        (shared, feed_rx)
    }

    /// Reads the data; a poisoned lock (a handler panicked) still holds
    /// consistent data: every write is a whole tick.
    pub fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole-session profile at the newest tick, cached per tick.
    pub fn latest(&self) -> Arc<Profile> {
        if let Some(p) = self.read().latest.clone() {
            return p;
        }
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = d.latest.clone() {
            return p;
        }
        let p = Arc::new(d.profile(Window::ALL));
        d.latest = Some(p.clone());
        p
    }

    pub fn feed(&self) -> LiveFeed {
        LiveFeed {
            tx: self.feed_tx.clone(),
            pending: Vec::new(),
            dropped: self.dropped.clone(),
            guard: None,
        }
    }
}

/// Applies the session's ticks to the server's timeline and broadcasts each
/// as a timeline point, until the session drops its feed.
pub(super) async fn apply_updates(shared: Arc<Shared>, mut rx: mpsc::Receiver<Update>) {
    while let Some(u) = rx.recv().await {
        let (sites, tick) = match u {
            Update::Info(info) => {
                let mut d = shared.data.write().unwrap_or_else(|e| e.into_inner());
                d.info = info;
                continue;
            }
            Update::Tick { sites, tick, guard } => {
                if let Some(p) = guard {
                    let mut d = shared.data.write().unwrap_or_else(|e| e.into_inner());
                    if d.timeline.guard().and_then(|g| g.last) != Some(p) {
                        d.timeline.guard_window(p);
                    }
                }
                (sites, *tick)
            }
        };
        let live_bytes: u64 = tick.sites.iter().map(|(_, s)| s.live_bytes).sum();
        let live_blocks: u64 = tick.sites.iter().map(|(_, s)| s.live_count).sum();
        let point = {
            let mut d = shared.data.write().unwrap_or_else(|e| e.into_inner());
            for s in sites {
                d.timeline.add_site(s);
            }
            let mut point = d.points.point_with(
                tick.t_ms,
                &tick.totals,
                tick.mem.as_ref(),
                live_bytes,
                live_blocks,
            );
            if let Some(g) = d.timeline.guard().and_then(|g| g.last) {
                point.sample_rate = Some(g.rate);
            }
            d.last = tick.totals.clone();
            d.last_mem = tick.mem;
            d.timeline.push(tick);
            d.latest = None;
            point
        };
        if let Ok(json) = serde_json::to_string(&point) {
            // No subscriber is not an error.
            let _ = shared.ticks.send(json.into());
        }
    }
}

/// The session's end of the live server: nothing here ever blocks.
pub struct LiveFeed {
    tx: Option<mpsc::Sender<Update>>,
    /// New call sites of ticks the server could not take yet: they travel
    /// with the next tick that fits, so site ids stay aligned.
    pending: Vec<SiteInfo>,
    dropped: Arc<AtomicU64>,
    /// The overhead guard's newest window, sent with each tick.
    guard: Option<GuardPoint>,
}

impl LiveFeed {
    /// Hands one tick and the call sites first seen in it (in id order) to
    /// the server. When the server's queue is full the tick is dropped for
    /// the server only and counted.
    pub fn tick(&mut self, new_sites: impl IntoIterator<Item = SiteInfo>, tick: &Tick) {
        let Some(tx) = &self.tx else { return };
        self.pending.extend(new_sites);
        let update = Update::Tick {
            sites: std::mem::take(&mut self.pending),
            tick: Box::new(tick.clone()),
            guard: self.guard,
        };
        match tx.try_send(update) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Update::Tick { sites, .. })) => {
                self.pending = sites;
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(Update::Info(_))) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => self.tx = None,
        }
    }

    /// Tells the server who is profiled (sent when the session attached).
    pub fn info(&mut self, info: SessionInfo) {
        if let Some(tx) = &self.tx {
            // Sent first, into an empty queue: it cannot be full.
            let _ = tx.try_send(Update::Info(info));
        }
    }

    /// Ticks the server could not take.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl SessionOutput for LiveFeed {
    fn tick(&mut self, update: &TickUpdate<'_>) {
        self.guard = update.timeline.guard().and_then(|g| g.last);
        LiveFeed::tick(
            self,
            update.new_sites.iter().map(|(_, info)| info.clone()),
            update.tick,
        );
    }

    fn event(&mut self, event: &SessionEvent) {
        if let SessionEvent::Attached { header } = event {
            self.info(SessionInfo {
                pid: header.pid,
                comm: header.comm.clone(),
                start_unix_ms: header.start_unix_ms,
                tick_ms: header.tick_ms,
                sample_rate: header.sample_rate,
                heapscope_version: header.heapscope_version.clone(),
                live: true,
                ..SessionInfo::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, SiteStats};
    use crate::timeline::SiteId;

    fn site(name: &str) -> SiteInfo {
        SiteInfo {
            pid: 0,
            frames: vec![Frame::function(name, "a.out")].into(),
            api: "malloc",
        }
    }

    fn tick(t_ms: u64, n: u32) -> Tick {
        let stats = SiteStats {
            live_bytes: 8,
            live_count: 1,
            alloc_bytes: 8,
            alloc_count: 1,
            ..Default::default()
        };
        Tick {
            t_ms,
            sites: (0..n).map(|i| (SiteId(i), stats.clone())).collect(),
            ..Tick::default()
        }
    }

    #[test]
    fn a_full_queue_drops_ticks_counts_them_and_keeps_their_sites() {
        let info = SessionInfo::default();
        let (shared, rx) = Shared::new(Source::Live { info }, "t".into(), 1, 10);
        let mut rx = rx.expect("a live source has a feed");
        let mut feed = shared.feed();
        feed.tick([site("a")], &tick(0, 1));
        for t in 1..FEED_QUEUE as u64 {
            feed.tick([], &tick(t, 1));
        }
        assert_eq!(feed.dropped(), 0);
        // The queue is full: this tick and its new site wait.
        feed.tick([site("b")], &tick(100, 2));
        assert_eq!(feed.dropped(), 1);
        let mut sites = Vec::new();
        while let Ok(u) = rx.try_recv() {
            if let Update::Tick { sites: s, .. } = u {
                sites.extend(s);
            }
        }
        assert_eq!(sites, vec![site("a")]);
        feed.tick([site("c")], &tick(101, 3));
        match rx.try_recv() {
            Ok(Update::Tick { sites, tick, .. }) => {
                assert_eq!(sites, vec![site("b"), site("c")], "ids stay aligned");
                assert_eq!(tick.t_ms, 101);
            }
            _ => panic!("the next tick goes through"),
        }
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
    }
}
