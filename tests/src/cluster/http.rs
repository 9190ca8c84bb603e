//! A minimal HTTP/1.0 client that runs inside a network namespace: enough for etcd's `/health`
//! and its v3 JSON gateway, without curl in the namespace.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use podnet_netns::NetNs;

use crate::Ns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A response: status code and body (lossy UTF-8).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON; an error (with the body) when it is not JSON.
    pub fn json(&self) -> io::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not JSON ({e}): {}", self.body)))
    }
}

/// `method url` from inside `ns`, with `body` as `application/json` when given. `url` is
/// `http://<ipv4>:<port><path>` (no names: nothing resolves in a test namespace). Connecting
/// times out after 2 s, reading and writing after 5 s each.
pub fn http(ns: &Ns, method: &str, url: &str, body: Option<&str>) -> io::Result<HttpResponse> {
    request(&ns.ns, method, url, body)
}

pub(crate) fn request(ns: &NetNs, method: &str, url: &str, body: Option<&str>) -> io::Result<HttpResponse> {
    let (addr, path) = parse_url(url)?;
    let body = body.unwrap_or("");
    let len = body.len();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n\r\n{body}"
    );
    let raw = ns
        .run(move || -> io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.write_all(req.as_bytes())?;
            // HTTP/1.0: the server closes the connection after the body (no chunking).
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            Ok(raw)
        })
        .map_err(io::Error::other)??;
    parse_response(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{method} {url}: {e}")))
}

fn parse_url(url: &str) -> io::Result<(SocketAddr, String)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("not an http://<ip>:<port>/<path> URL: {url}"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = host.parse().map_err(|_| bad())?;
    Ok((addr, path.to_string()))
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    Ok(HttpResponse { status, body: body.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_responses_parse() {
        let (addr, path) = parse_url("http://10.99.0.100:2379/v3/kv/range").unwrap();
        assert_eq!((addr.to_string().as_str(), path.as_str()), ("10.99.0.100:2379", "/v3/kv/range"));
        assert_eq!(parse_url("http://10.0.0.1:80").unwrap().1, "/");
        assert!(parse_url("https://10.0.0.1:80/").is_err());
        assert!(parse_url("http://etcd:2379/").is_err());
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 17\r\n\r\n{\"health\":\"true\"}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{\"health\":\"true\"}"));
        assert!(parse_response(b"HTTP/1.0 200 OK\r\n").is_err());
    }
}
