//! A minimal HTTP/1.1 client for one request per connection: plain `http://`
//! only, every step bounded by a timeout, the response read up to a cap.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::PushError;

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
    pub fn parse(url: &str) -> Result<Endpoint, PushError> {
        let bad = |reason: &str| PushError::BadUrl {
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

/// Sends one POST of `body` to `path_and_query` (appended to the base path)
/// and succeeds on a 2xx status. Connecting, each write and each read wait
/// at most `timeout`.
pub fn post(
    ep: &Endpoint,
    path_and_query: &str,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), PushError> {
    let io = |e: std::io::Error| PushError::Io {
        url: ep.url.clone(),
        source: e,
    };
    let addrs: Vec<SocketAddr> = (ep.host.as_str(), ep.port)
        .to_socket_addrs()
        .map_err(io)?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        io(last.unwrap_or_else(|| std::io::Error::other("the host has no address")))
    })?;
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
        .ok_or_else(|| PushError::BadResponse {
            url: ep.url.clone(),
        })?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body_start = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
    let detail: String = text[body_start..].chars().take(200).collect();
    Err(PushError::Status {
        url: ep.url.clone(),
        status,
        detail: detail.trim().to_string(),
    })
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
        assert!(matches!(err, Err(PushError::Io { .. })), "{err:?}");
    }
}
