//! Debug files by build-id from debuginfod servers (`DEBUGINFOD_URLS`), kept
//! in the on-disk cache layout of elfutils' client
//! (`<cache>/<build-id hex>/debuginfo`), so heapscope, gdb and others share it.
//!
//! Every lookup is bounded (`DEBUGINFOD_TIMEOUT` seconds in all, default 5),
//! every download too (`DEBUGINFOD_MAXSIZE` bytes, default 2 GiB), and a
//! build-id no server has is asked for once per run. Lookups block their
//! caller: call them off the capture loop (`report --resymbolize`, the end
//! of a session).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::http::{self, Endpoint};

/// Default bound of one lookup, over all servers.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound of one download.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// The outcome of one lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The debug file, in the cache.
    Found(PathBuf),
    /// No server has it.
    NotFound,
    /// Servers could not be asked (down, too slow, bad answer): why.
    Failed(String),
}

/// A debuginfod client.
#[derive(Debug)]
pub struct Debuginfod {
    servers: Vec<Endpoint>,
    /// Servers in `DEBUGINFOD_URLS` this build cannot use (https), for messages.
    pub skipped: Vec<String>,
    cache: PathBuf,
    timeout: Duration,
    max_size: u64,
    /// Build-ids asked for in this run and not found (or failed).
    asked: HashMap<String, Lookup>,
    /// Why each server that could not be reached (or was too slow) failed:
    /// it is not asked again this run, so many modules cost one wait.
    down: HashMap<String, String>,
}

/// The cache directory elfutils' client uses: `$DEBUGINFOD_CACHE_PATH`,
/// `$XDG_CACHE_HOME/debuginfod_client`, or `~/.cache/debuginfod_client`.
pub fn default_cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("DEBUGINFOD_CACHE_PATH") {
        return PathBuf::from(p);
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("debuginfod_client");
    }
    let home = var("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("debuginfod_client")
}

impl Debuginfod {
    /// A client for the space-separated server URLs `urls`.
    pub fn new(urls: &str, cache: PathBuf, timeout: Duration, max_size: u64) -> Debuginfod {
        let mut servers = Vec::new();
        let mut skipped = Vec::new();
        for u in urls.split_whitespace() {
            match Endpoint::parse(u) {
                Ok(e) => servers.push(e),
                Err(e) => {
                    log::debug!("debuginfod server skipped: {e}");
                    skipped.push(u.to_string());
                }
            }
        }
        Debuginfod {
            servers,
            skipped,
            cache,
            timeout,
            max_size,
            asked: HashMap::new(),
            down: HashMap::new(),
        }
    }

    /// The client `DEBUGINFOD_URLS` asks for; `None` when it names no server.
    pub fn from_env() -> Option<Debuginfod> {
        let urls = std::env::var("DEBUGINFOD_URLS").ok()?;
        // Set but empty (or blank) names no server.
        urls.split_whitespace().next()?;
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let timeout = num("DEBUGINFOD_TIMEOUT").map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let max_size = num("DEBUGINFOD_MAXSIZE")
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_MAX_SIZE);
        Some(Debuginfod::new(
            &urls,
            default_cache_dir(),
            timeout,
            max_size,
        ))
    }

    /// Where downloaded files are kept.
    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// True when no usable server is configured.
    pub fn has_servers(&self) -> bool {
        !self.servers.is_empty()
    }

    /// The cached debug file of `build_id`, without asking any server.
    pub fn cached(&self, build_id: &[u8]) -> Option<PathBuf> {
        let p = self.cache.join(hex(build_id)).join("debuginfo");
        p.is_file().then_some(p)
    }

    /// The debug file of `build_id`: from the cache, or downloaded from the
    /// first server that has it, all within the lookup bound.
    pub fn debuginfo(&mut self, build_id: &[u8]) -> Lookup {
        if build_id.is_empty() {
            return Lookup::NotFound;
        }
        if let Some(p) = self.cached(build_id) {
            return Lookup::Found(p);
        }
        let h = hex(build_id);
        if let Some(prev) = self.asked.get(&h) {
            return prev.clone();
        }
        let result = self.download(&h);
        if !matches!(result, Lookup::Found(_)) {
            self.asked.insert(h, result.clone());
        }
        result
    }

    fn download(&mut self, h: &str) -> Lookup {
        if self.servers.is_empty() {
            return Lookup::Failed(format!(
                "no usable server in DEBUGINFOD_URLS (only http:// is supported; skipped: {})",
                self.skipped.join(" ")
            ));
        }
        let dir = self.cache.join(h);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Lookup::Failed(format!("cannot create {}: {e}", dir.display()));
        }
        let deadline = Instant::now() + self.timeout;
        let tmp = dir.join(format!(".debuginfo.{}.tmp", std::process::id()));
        let mut errors = Vec::new();
        for server in &self.servers {
            if let Some(why) = self.down.get(&server.url) {
                errors.push(format!("{why} (not asked again)"));
                continue;
            }
            let path = format!("/buildid/{h}/debuginfo");
            match http::get_to_file(server, &path, &tmp, deadline, self.max_size) {
                Ok(true) => {
                    let dest = dir.join("debuginfo");
                    return match std::fs::rename(&tmp, &dest) {
                        Ok(()) => Lookup::Found(dest),
                        Err(e) => Lookup::Failed(format!("cannot store {}: {e}", dest.display())),
                    };
                }
                Ok(false) => {}
                Err(e) => {
                    let why = crate::http::error_chain(&e);
                    if matches!(
                        e,
                        http::HttpError::Io { .. } | http::HttpError::Deadline { .. }
                    ) {
                        self.down.insert(server.url.clone(), why.clone());
                    }
                    errors.push(why);
                }
            }
        }
        let _ = std::fs::remove_file(&tmp);
        // An empty directory per miss would litter the cache.
        let _ = std::fs::remove_dir(&dir);
        if errors.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::Failed(errors.join("; "))
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("heapscope-dbgd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A server answering every request with `status` and `body`, `n` times.
    fn server(n: usize, status: &'static str, body: &'static [u8]) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for _ in 0..n {
                let Ok((mut c, _)) = l.accept() else { return };
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = write!(
                    c,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(body);
            }
        });
        url
    }

    #[test]
    fn downloads_into_the_elfutils_layout_once() {
        let cache = temp("ok");
        let url = server(1, "200 OK", b"ELF-ish");
        let mut d = Debuginfod::new(&url, cache.clone(), DEFAULT_TIMEOUT, 1 << 20);
        let found = d.debuginfo(&[0xab, 0xcd]);
        assert_eq!(found, Lookup::Found(cache.join("abcd").join("debuginfo")));
        // The second lookup is the cache: the server served only once.
        assert_eq!(d.debuginfo(&[0xab, 0xcd]), found);
        assert_eq!(
            std::fs::read(cache.join("abcd/debuginfo")).expect("file"),
            b"ELF-ish"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn misses_and_dead_servers_are_remembered() {
        let cache = temp("miss");
        let url = server(1, "404 Not Found", b"");
        let mut d = Debuginfod::new(&url, cache.clone(), DEFAULT_TIMEOUT, 1 << 20);
        assert_eq!(d.debuginfo(&[1, 2]), Lookup::NotFound);
        assert_eq!(d.debuginfo(&[1, 2]), Lookup::NotFound);
        assert!(!cache.join("0102").exists());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let mut d = Debuginfod::new(
            &format!("https://secure http://127.0.0.1:{port}"),
            cache.clone(),
            DEFAULT_TIMEOUT,
            1 << 20,
        );
        assert_eq!(d.skipped, ["https://secure"]);
        assert!(matches!(d.debuginfo(&[3, 4]), Lookup::Failed(e) if e.contains("127.0.0.1")));
        // An unreachable server is not asked again for the next module.
        assert!(matches!(d.debuginfo(&[5, 6]), Lookup::Failed(e) if e.contains("not asked again")));
        let _ = std::fs::remove_dir_all(&cache);
    }
}
