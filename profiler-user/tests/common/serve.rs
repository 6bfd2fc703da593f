//! Running `heapscope serve` (or a `--serve` session) and talking to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::driver::{interrupt, line_reader, wait_for};
use super::heapscope;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A server started by a test; stopped (SIGINT, then reaped) on drop.
pub struct Served {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub url: String,
    pub token: String,
    pub stderr: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Served {
    /// `path` with the token as a query parameter.
    pub fn with_token(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}token={}", self.token)
    }

    pub fn get(&self, path: &str) -> super::http::Resp {
        super::http::get(&self.addr, &self.with_token(path))
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        interrupt(&self.child);
        let _ = self.child.wait();
    }
}

/// Reads the URL line (`... at http://ADDR/?token=T`) from a server's stderr.
pub fn parse_url(line: &str) -> (String, String, String) {
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    let rest = url.trim_start_matches("http://");
    let (addr, q) = rest.split_once('/').expect("URL has a path");
    let token = q.trim_start_matches("?token=").to_string();
    (url.clone(), addr.to_string(), token)
}

/// Starts a heapscope command that serves, and waits for its URL line.
pub fn start_serving(mut cmd: Command) -> Served {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let stderr = line_reader(child.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    let line = wait_for(&stderr, "http://", &mut seen);
    let (url, addr, token) = parse_url(&line);
    Served {
        child,
        addr,
        url,
        token,
        stderr,
        seen,
    }
}

/// `heapscope serve FILE` on a free loopback port with [`TOKEN`].
pub fn serve(file: &Path) -> Served {
    let mut cmd = Command::new(heapscope());
    cmd.arg("serve")
        .arg(file)
        .args(["--listen", "127.0.0.1:0", "--token", TOKEN]);
    start_serving(cmd)
}

/// The recording of the growth fixture's leak (`growth leak`, `--exact
/// --stacks fp --tick 200ms`): `leak_slowly` leaks 30 x 16 x 4096 bytes.
pub fn leak_recording() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/growth_leak.rec")
}

pub const LEAK_BYTES: u64 = 30 * 16 * 4096;

/// A recording of the same leak under uprobe sessions (`growth leak`,
/// `--sessions --stacks fp --sample-rate 4096 --tick 200ms`): unsampled
/// blocks untracked, so the live heap is the samples' estimate.
pub fn sessions_recording() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/growth_sessions.rec")
}
