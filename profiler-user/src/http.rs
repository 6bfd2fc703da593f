//! A minimal HTTP/1.1 client for one request per connection (push to
//! Pyroscope, debuginfod downloads): plain `http://` only, every step
//! bounded by a timeout, responses read up to a cap.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

/// Errors of HTTP requests; each names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot push to {url}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} answered with something that is not HTTP")]
    BadResponse { url: String },
    #[error("{url} answered HTTP {status} {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url} sent more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url} did not answer within the {millis} ms allowed")]
    Deadline { url: String, millis: u128 },
}

/// Longest response kept (status line, headers and the start of the body,
/// for the error message): a misbehaving server cannot make us buffer more.
const MAX_RESPONSE: usize = 16 << 10;

/// Where profiles go: host, port and the path prefix of the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (`""` for the server root).
    pub base_path: String,
    /// The URL as given, for messages.
    pub url: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Endpoint, HttpError> {
        let bad = |reason: &str| HttpError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.starts_with("https://") {
            return Err(bad(
                "https is not supported by this build; push to http:// (e.g. a local \
                 Grafana Alloy `pyroscope.receive_http` that forwards over TLS)",
            ));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://HOST[:PORT][/PATH]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let port_of = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| bad("the port is not a number"))
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, port_of(p)?),
                None if after.is_empty() => (h, 80),
                None => return Err(bad("unexpected text after ']'")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, port_of(p)?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if path.contains(['?', '#']) {
            return Err(bad("give the server's base URL, without query or fragment"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
            url: url.to_string(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Connects to the first address of `ep` that answers within `timeout`.
fn connect(ep: &Endpoint, timeout: Duration) -> Result<TcpStream, HttpError> {
    let io = |e: std::io::Error| HttpError::Io {
        url: ep.url.clone(),
        source: e,
    };
    let addrs: Vec<SocketAddr> = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(io)?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(io(last.unwrap_or_else(|| {
        std::io::Error::other("the host has no address")
    })))
}

/// The error and its sources on one line (for the notes of the push and debuginfod clients).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Sends one POST of `body` to `path_and_query` (appended to the base path)
/// and succeeds on a 2xx status. Connecting, each write and each read wait
/// at most `timeout`.
pub fn post(
    ep: &Endpoint,
    path_and_query: &str,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), HttpError> {
    let io = |e: std::io::Error| HttpError::Io {
        url: ep.url.clone(),
        source: e,
    };
    let mut stream = connect(ep, timeout)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let head = format!(
        "POST {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: heapscope/{}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ep.base_path,
        path_and_query,
        ep.host_header(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    stream.flush().map_err(io)?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE as u64)
        .read_to_end(&mut response)
        .map_err(io)?;
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::BadResponse {
            url: ep.url.clone(),
        })?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body_start = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
    let detail: String = text[body_start..].chars().take(200).collect();
    Err(HttpError::Status {
        url: ep.url.clone(),
        status,
        detail: detail.trim().to_string(),
    })
}

/// Reads from `r` with every read bounded by `deadline`.
struct DeadlineReader<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
    /// The whole time allowed, for the message.
    allowed: Duration,
    url: &'a str,
}

impl DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, HttpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let late = || HttpError::Deadline {
            url: self.url.to_string(),
            millis: self.allowed.as_millis(),
        };
        if left.is_zero() {
            return Err(late());
        }
        let io = |e: std::io::Error| HttpError::Io {
            url: self.url.to_string(),
            source: e,
        };
        self.stream.set_read_timeout(Some(left)).map_err(io)?;
        match self.stream.read(buf) {
            Ok(n) => Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(late())
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Body framing of a response.
enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// GETs `path` into the file `dest` (created), reading at most `max_bytes`
/// of body, everything done by `deadline`. `Ok(false)` on 404 (nothing is
/// written); other non-2xx statuses are errors.
pub fn get_to_file(
    ep: &Endpoint,
    path: &str,
    dest: &Path,
    deadline: Instant,
    max_bytes: u64,
) -> Result<bool, HttpError> {
    let io = |e: std::io::Error| HttpError::Io {
        url: ep.url.clone(),
        source: e,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::Deadline {
            url: ep.url.clone(),
            millis: 0,
        });
    }
    let mut stream = connect(ep, left)?;
    stream.set_write_timeout(Some(left)).map_err(io)?;
    let head = format!(
        "GET {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: heapscope/{}\r\nConnection: close\r\n\r\n",
        ep.base_path,
        ep.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(head.as_bytes()).map_err(io)?;
    let mut r = DeadlineReader {
        stream: &mut stream,
        deadline,
        allowed: left,
        url: &ep.url,
    };
    // Headers, up to the blank line (bounded).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_RESPONSE * 4 {
            return Err(HttpError::BadResponse {
                url: ep.url.clone(),
            });
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::BadResponse {
                url: ep.url.clone(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut rest = buf[end + 4..].to_vec();
    let status: u16 = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::BadResponse {
            url: ep.url.clone(),
        })?;
    if status == 404 {
        return Ok(false);
    }
    if !(200..300).contains(&status) {
        return Err(HttpError::Status {
            url: ep.url.clone(),
            status,
            detail: String::new(),
        });
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let framing = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        Framing::Chunked
    } else if let Some(n) = header("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let too_large = || HttpError::TooLarge {
        url: ep.url.clone(),
        limit: max_bytes,
    };
    if let Framing::Length(n) = framing {
        if n > max_bytes {
            return Err(too_large());
        }
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest).map_err(io)?);
    let mut written: u64 = 0;
    // Raw body bytes (still chunk-framed when chunked) into `rest`, on demand.
    let mut fill = |rest: &mut Vec<u8>, r: &mut DeadlineReader<'_>| -> Result<bool, HttpError> {
        let n = r.read(&mut chunk)?;
        rest.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    match framing {
        Framing::Length(_) | Framing::UntilClose => {
            let want = match framing {
                Framing::Length(n) => n,
                _ => u64::MAX,
            };
            loop {
                let take = (rest.len() as u64).min(want - written) as usize;
                written += take as u64;
                if written > max_bytes {
                    return Err(too_large());
                }
                out.write_all(&rest[..take]).map_err(io)?;
                rest.clear();
                if written == want || !fill(&mut rest, &mut r)? {
                    break;
                }
            }
            if want != u64::MAX && written < want {
                return Err(HttpError::BadResponse {
                    url: ep.url.clone(),
                });
            }
        }
        Framing::Chunked => loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                if rest.len() > 1024 || !fill(&mut rest, &mut r)? {
                    return Err(HttpError::BadResponse {
                        url: ep.url.clone(),
                    });
                }
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = u64::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| HttpError::BadResponse {
                    url: ep.url.clone(),
                })?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            written += size;
            if written > max_bytes {
                return Err(too_large());
            }
            let mut left = size;
            while left > 0 {
                if rest.is_empty() && !fill(&mut rest, &mut r)? {
                    return Err(HttpError::BadResponse {
                        url: ep.url.clone(),
                    });
                }
                let take = (rest.len() as u64).min(left) as usize;
                out.write_all(&rest[..take]).map_err(io)?;
                rest.drain(..take);
                left -= take as u64;
            }
            while rest.len() < 2 {
                if !fill(&mut rest, &mut r)? {
                    return Err(HttpError::BadResponse {
                        url: ep.url.clone(),
                    });
                }
            }
            rest.drain(..2);
        },
    }
    out.flush().map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let e = Endpoint::parse("http://pyroscope:4040").expect("parse");
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("pyroscope", 4040, "")
        );
        let e = Endpoint::parse("http://127.0.0.1/prefix/").expect("parse");
        assert_eq!(
            (e.host.as_str(), e.port, e.base_path.as_str()),
            ("127.0.0.1", 80, "/prefix")
        );
        let e = Endpoint::parse("http://[::1]:9/").expect("parse");
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        assert_eq!(e.host_header(), "[::1]:9");
    }

    #[test]
    fn rejects_what_it_cannot_do() {
        for bad in [
            "https://x",
            "ftp://x",
            "pyroscope:4040",
            "http://:80",
            "http://h:port",
            "http://u:p@h",
            "http://h/ingest?x=1",
        ] {
            let err = Endpoint::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn connection_refused_is_an_error_not_a_hang() {
        // Bind then drop: nothing listens on the port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("parse");
        let err = post(&ep, "/ingest", "text/plain", b"x", Duration::from_secs(2));
        assert!(matches!(err, Err(HttpError::Io { .. })), "{err:?}");
    }

    /// Serves one connection with `response` (after reading the request).
    fn serve_once(response: Vec<u8>, delay: Duration) -> Endpoint {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                std::thread::sleep(delay);
                let _ = c.write_all(&response);
            }
        });
        Endpoint::parse(&url).expect("url")
    }

    fn get(response: &[u8], delay: Duration, max: u64) -> (Result<bool, HttpError>, Vec<u8>) {
        let ep = serve_once(response.to_vec(), delay);
        let dir = std::env::temp_dir().join(format!(
            "heapscope-http-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::create_dir_all(&dir);
        let dest = dir.join("body");
        let r = get_to_file(
            &ep,
            "/x",
            &dest,
            Instant::now() + Duration::from_secs(2),
            max,
        );
        let body = std::fs::read(&dest).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (r, body)
    }

    #[test]
    fn get_reads_length_chunked_and_close_framed_bodies() {
        let zero = Duration::ZERO;
        let (r, b) = get(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            zero,
            100,
        );
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!(b, b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let (r, b) = get(chunked, zero, 100);
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!(b, b"abcde");
        let (r, b) = get(b"HTTP/1.0 200 OK\r\n\r\nuntil close", zero, 100);
        assert!(matches!(r, Ok(true)), "{r:?}");
        assert_eq!(b, b"until close");
        let (r, _) = get(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            zero,
            100,
        );
        assert!(matches!(r, Ok(false)), "{r:?}");
    }

    #[test]
    fn get_bounds_size_and_time() {
        let zero = Duration::ZERO;
        let (r, _) = get(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n", zero, 100);
        assert!(matches!(r, Err(HttpError::TooLarge { .. })), "{r:?}");
        let (r, _) = get(b"HTTP/1.0 200 OK\r\n\r\n0123456789", zero, 4);
        assert!(matches!(r, Err(HttpError::TooLarge { .. })), "{r:?}");
        // The server answers after the deadline.
        let (r, _) = get(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(4), 100);
        assert!(matches!(r, Err(HttpError::Deadline { .. })), "{r:?}");
    }
}
