//! The flame-graph service: the web UI, the JSON API (`/api/v1/...`) and
//! Prometheus `/metrics`, on a recording or on a live session.
//!
//! The server runs on a thread of its own with its own tokio runtime, so
//! the capture never waits for HTTP clients: a live session hands each tick
//! to a [`LiveFeed`], which queues it without blocking (a full queue drops
//! the tick for the server only and counts it). The server depends on the
//! model (timeline, profile, analysis) and the API types, never on probes.

mod assets;
mod auth;
mod metrics;
mod query;
mod routes;
mod state;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::api::SessionInfo;
use crate::timeline::Timeline;

pub use auth::{random_token, MAX_TOKEN_LEN};
pub use state::LiveFeed;

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Call sites exported by `/metrics` unless told otherwise.
pub const DEFAULT_METRICS_TOP: usize = 10;

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// The access token; `None`: a random one, only allowed on loopback.
    pub token: Option<String>,
    /// Call sites exported as labelled series by `/metrics`.
    pub metrics_top: usize,
}

/// What is served.
pub enum Source {
    /// A recording, read once into memory.
    Recording {
        info: SessionInfo,
        timeline: Timeline,
    },
    /// A live session: ticks arrive through the returned [`LiveFeed`].
    Live { info: SessionInfo },
}

/// Errors of starting the server; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(
        "refusing to serve on {addr} without a token: it is reachable from other hosts; \
         give --token or --token-file, or listen on 127.0.0.1"
    )]
    NoToken { addr: SocketAddr },
    #[error("invalid token: {reason}")]
    BadToken { reason: String },
    #[error("cannot listen on {addr} (in use, or not an address of this host?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the web server's thread")]
    Start(#[source] std::io::Error),
    #[error("cannot generate a random token")]
    Random(#[source] getrandom::Error),
}

/// A running server; stops when [`Server::stop`] is called or it is dropped.
pub struct Server {
    addr: SocketAddr,
    token: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The address actually bound (the port is known when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to open, token included.
    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token)
    }

    /// Stops serving and waits for the server thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Checks the token rules, binds, and starts serving `source` on a thread of
/// its own. For a live source, also returns the feed the session publishes to.
pub fn start(
    config: ServeConfig,
    source: Source,
) -> Result<(Server, Option<LiveFeed>), ServerError> {
    let token = match config.token {
        Some(t) => auth::check_token(&t)?,
        None if !config.listen.ip().is_loopback() => {
            return Err(ServerError::NoToken {
                addr: config.listen,
            })
        }
        None => random_token().map_err(ServerError::Random)?,
    };
    let listener = TcpListener::bind(config.listen).map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr = listener.local_addr().map_err(ServerError::Start)?;
    listener.set_nonblocking(true).map_err(ServerError::Start)?;
    let (shared, feed_rx) =
        state::Shared::new(source, token.clone(), addr.port(), config.metrics_top);
    let shared = Arc::new(shared);
    let feed = feed_rx.as_ref().map(|_| shared.feed());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("heapscope-http")
        .enable_all()
        .build()
        .map_err(ServerError::Start)?;
    let thread = std::thread::Builder::new()
        .name("heapscope-server".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Some(rx) = feed_rx {
                    tokio::spawn(state::apply_updates(shared.clone(), rx));
                }
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = routes::router(shared);
                // Not a graceful shutdown: open event streams never end by
                // themselves. Stop accepting, then drop every connection.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = rx => {}
                }
            });
            runtime.shutdown_background();
        })
        .map_err(ServerError::Start)?;
    Ok((
        Server {
            addr,
            token,
            shutdown: Some(tx),
            thread: Some(thread),
        },
        feed,
    ))
}
