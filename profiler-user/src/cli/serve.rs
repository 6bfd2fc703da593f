//! `serve FILE` and the `--serve` options of `attach`/`run`: starting the
//! web server and printing the URL to open.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::offline::open;
use crate::api::SessionInfo;
use crate::server::{self, ServeConfig, Server, Source, DEFAULT_METRICS_TOP};

/// Token and metrics options of every serving command.
#[derive(Args, Debug, Clone)]
pub struct ServeOpts {
    /// Access token every request must carry (default: a random one per
    /// start, printed in the URL). Required to listen beyond loopback.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the access token from the first line of this file.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Call sites exported as labelled series by /metrics.
    #[arg(long, default_value_t = DEFAULT_METRICS_TOP, value_parser = super::ranges::top_range())]
    pub metrics_top: usize,
}

impl ServeOpts {
    fn token(&self) -> Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        if meta.len() > 4096 {
            bail!(
                "token file {} is {} bytes: expected one short line",
                path.display(),
                meta.len()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        let line = text.lines().next().unwrap_or("").trim().to_string();
        if line.is_empty() {
            bail!("token file {} is empty", path.display());
        }
        Ok(Some(line))
    }

    /// Starts the server on `listen` for `source`.
    pub(super) fn start(
        &self,
        listen: SocketAddr,
        source: Source,
    ) -> Result<(Server, Option<server::LiveFeed>)> {
        let config = ServeConfig {
            listen,
            token: self.token()?,
            metrics_top: self.metrics_top,
        };
        Ok(server::start(config, source)?)
    }
}

/// `heapscope serve FILE`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A recording written by `--record`.
    pub file: PathBuf,
    /// Address to listen on; a non-loopback address needs --token or --token-file.
    #[arg(long, default_value = server::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Read a recording damaged in the middle (skipped stretches are listed).
    #[arg(long)]
    pub allow_damaged: bool,
    #[command(flatten)]
    pub opts: ServeOpts,
}

/// Serves a recording until Ctrl-C or SIGTERM.
pub(super) async fn serve(args: ServeArgs) -> Result<i32> {
    use tokio::signal::unix::{signal, SignalKind};

    let rec = open(&args.file, args.allow_damaged)?;
    let info = SessionInfo {
        pid: rec.header.pid,
        comm: rec.header.comm.clone(),
        start_unix_ms: rec.header.start_unix_ms,
        tick_ms: rec.header.tick_ms,
        sample_rate: rec.header.sample_rate,
        heapscope_version: rec.header.heapscope_version.clone(),
        live: false,
        truncated: rec.truncated,
        damage: rec.damage_summary(),
    };
    let (pid, comm) = (info.pid, info.comm.clone());
    let source = Source::Recording {
        info,
        timeline: rec.timeline,
    };
    let (server, _) = args.opts.start(args.listen, source)?;
    eprintln!(
        "heapscope: serving {} (pid {pid}, {comm}) at {}",
        args.file.display(),
        server.url()
    );
    eprintln!("heapscope: open that URL in a browser; Ctrl-C to stop");
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    server.stop();
    eprintln!("heapscope: stopped serving");
    Ok(0)
}

/// With `--serve`: starts the live server before anything is attached (a
/// bad address or token fails first) and prints the URL to open.
pub(super) fn start_live(
    common: &super::CommonArgs,
    pid: Option<u32>,
) -> Result<(Option<Server>, Option<server::LiveFeed>)> {
    let Some(listen) = common.serve else {
        return Ok((None, None));
    };
    let info = SessionInfo {
        pid: pid.unwrap_or(0),
        live: true,
        heapscope_version: env!("CARGO_PKG_VERSION").to_string(),
        ..SessionInfo::default()
    };
    let (server, feed) = common.serve_opts.start(listen, Source::Live { info })?;
    super::note(&format!(
        "web UI (live) at {} ; /metrics and /api/v1 need the same token",
        server.url()
    ));
    Ok((Some(server), feed))
}
