//! A blocking client for containerd CRI's streaming server (the URLs that the CRI `Exec`,
//! `Attach` and `PortForward` RPCs return), over WebSocket.
//!
//! containerd 2.1 serves the kubelet streaming protocols, vendored from
//! `k8s.io/kubelet/pkg/cri/streaming` (v0.32): `remotecommand/websocket.go` for exec/attach and
//! `portforward/websocket.go` for port-forward, on top of
//! `k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go`. containerd 1.7 (1.7.24) serves
//! its own copy of the same code (`pkg/cri/streaming/{remotecommand,portforward}/websocket.go`,
//! `pkg/cri/streaming/internal/wsstream`), with the same subprotocols (v4 at most, no v5;
//! the CRI tests run against both). What this client relies on:
//!
//! - The URL (`http://127.0.0.1:<port>/{exec,attach,portforward}/<token>`) is the whole request:
//!   the token maps to the cached CRI request (command, stdin/stdout/stderr/tty flags, ports).
//!   No query parameters are read for CRI (`server.go` builds the options from the cached
//!   request; `?ports=` is only read by the kubelet's `NewV4Options`). A token is single-use.
//! - Exec/attach subprotocols: `""`, `channel.k8s.io`, `base64.channel.k8s.io`,
//!   `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`. No `v5.channel.k8s.io` (the stdin close
//!   signal), not even on containerd's main branch; the server picks the first protocol of the
//!   client's list it knows, so offering v5 first is harmless and used when some server has it.
//! - Every binary message is `[channel, payload...]`: 0 stdin, 1 stdout, 2 stderr, 3 error,
//!   4 resize (JSON `{"Width":w,"Height":h}`). v5 adds `[255, channel]` = close that channel.
//! - On open the server writes ONE empty message: on stdout if requested, else stderr, else the
//!   error channel.
//! - v4 error channel: one JSON `metav1.Status` when the command ends: `{"status":"Success"}`,
//!   or `"Failure"` with `"reason":"NonZeroExitCode"` and
//!   `"details":{"causes":[{"reason":"ExitCode","message":"<n>"}]}`, or `"Failure"` with
//!   `"reason":"InternalError"` when the exec/attach itself failed. Then the server closes.
//! - v4 has no way to close stdin alone: the server closes every channel (and the socket)
//!   as soon as the client closes the WebSocket. So with v4, [`exec`] sends stdin and leaves it
//!   open; a command that waits for EOF (`cat`) never ends: use a tty and send `^D`, or use
//!   [`Session`] and read the output you expect.
//! - Port-forward subprotocols: `""`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io` (not
//!   `portforward.k8s.io`, which is the SPDY one). Two channels per port of the CRI request,
//!   data `2i` (both ways) and error `2i+1` (server to client); the first 2 bytes the server
//!   sends on each are the port, little endian. The client sends raw bytes on `2i` (no header).
//!   After the pod side closes, containerd waits up to 1 s for the other direction, then closes.
//!
//! The server listens on 127.0.0.1 inside the node network namespace where containerd runs:
//! every entry point takes a `connect` function that opens the TCP connection; [`in_ns`] makes
//! one that connects from inside a [`crate::Ns`].

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// remotecommand v4 over WebSocket (binary).
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
/// remotecommand v5: v4 plus the stdin close signal (not served by containerd 2.1).
pub const V5_CHANNEL: &str = "v5.channel.k8s.io";

pub const CH_STDIN: u8 = 0;
pub const CH_STDOUT: u8 = 1;
pub const CH_STDERR: u8 = 2;
pub const CH_ERROR: u8 = 3;
pub const CH_RESIZE: u8 = 4;
/// v5: `[CH_CLOSE, channel]` half-closes `channel`.
pub const CH_CLOSE: u8 = 255;

/// How long [`in_ns`] waits for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What an exec or attach wrote, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The command's exit code; 0 when the server reported Success (always for attach).
    pub exit_code: i32,
}

impl StreamOutput {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A `connect` function that opens the TCP connection from inside `ns` (the socket stays in
/// that namespace after the thread that created it is gone).
pub fn in_ns(ns: &crate::Ns) -> impl FnOnce(&str) -> io::Result<TcpStream> + '_ {
    move |addr: &str| {
        let addr = resolve(addr)?;
        ns.enter(move || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
    }
}

/// A `connect` function for the current namespace.
pub fn direct(addr: &str) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&resolve(addr)?, CONNECT_TIMEOUT)
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address")))
}

/// `http://h:p/path` -> (`ws://h:p/path`, `h:p`). TLS (https) is not supported.
pub fn ws_url(url: &str) -> Result<(String, String), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if let Some(r) = url.strip_prefix("ws://") {
        r
    } else {
        return Err(format!("{url}: only http:// (plain) streaming URLs are supported"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((format!("ws://{rest}"), authority.to_string()))
}

/// Splits a binary message into its channel and payload.
pub fn demux(frame: &[u8]) -> Option<(u8, &[u8])> {
    frame.split_first().map(|(c, rest)| (*c, rest))
}

/// A message for `channel`.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(channel);
    v.extend_from_slice(payload);
    v
}

/// The payload of a resize message (channel 4).
pub fn resize_payload(width: u16, height: u16) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"Width": width, "Height": height})).expect("encode resize")
}

/// The 2-byte port header of a port-forward channel.
pub fn port_header(port: u16) -> [u8; 2] {
    port.to_le_bytes()
}

/// Reads a port header.
pub fn parse_port_header(b: &[u8]) -> Option<u16> {
    (b.len() == 2).then(|| u16::from_le_bytes([b[0], b[1]]))
}

/// The exit code a v4 error-channel `metav1.Status` reports: 0 for Success, the `ExitCode`
/// cause for NonZeroExitCode; any other failure (or garbage) is an `Err` with its message.
pub fn exit_code_from_status(status: &[u8]) -> Result<i32, String> {
    let v: serde_json::Value = serde_json::from_slice(status)
        .map_err(|e| format!("error channel is not a JSON Status ({e}): {}", String::from_utf8_lossy(status)))?;
    match v.get("status").and_then(|s| s.as_str()) {
        Some("Success") => return Ok(0),
        Some("Failure") => {}
        _ => return Err(format!("unexpected Status: {v}")),
    }
    let causes = v.pointer("/details/causes").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    for c in causes {
        if c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode") {
            let msg = c.get("message").and_then(|m| m.as_str()).unwrap_or_default();
            return msg.trim().parse::<i32>().map_err(|e| format!("bad ExitCode cause {msg:?} ({e}) in {v}"));
        }
    }
    Err(format!(
        "stream failed: {} ({})",
        v.get("message").and_then(|m| m.as_str()).unwrap_or("no message"),
        v.get("reason").and_then(|m| m.as_str()).unwrap_or("no reason")
    ))
}

/// Opens the WebSocket: `connect(host:port)`, then the handshake offering `protocols`
/// (in order of preference). Returns the socket and the protocol the server chose.
fn open(
    connect: impl FnOnce(&str) -> io::Result<TcpStream>,
    url: &str,
    protocols: &[&str],
    deadline: Instant,
) -> Result<(WebSocket<TcpStream>, String), String> {
    let (ws, authority) = ws_url(url)?;
    let tcp = connect(&authority).map_err(|e| format!("connect {authority}: {e}"))?;
    let left = remaining(deadline).ok_or_else(|| format!("{url}: timed out before the handshake"))?;
    tcp.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut req = ws.as_str().into_client_request().map_err(|e| format!("{url}: {e}"))?;
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(&protocols.join(", ")).map_err(|e| e.to_string())?);
    }
    let (sock, resp) = tungstenite::client(req, tcp).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => format!(
            "{url}: handshake refused: HTTP {}: {}",
            r.status(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
        ),
        tungstenite::HandshakeError::Failure(e) => format!("{url}: handshake failed: {e}"),
        tungstenite::HandshakeError::Interrupted(_) => format!("{url}: handshake timed out"),
    })?;
    let chosen =
        resp.headers().get("Sec-WebSocket-Protocol").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
    Ok((sock, chosen))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let now = Instant::now();
    (deadline > now).then(|| deadline - now)
}

/// One read with the deadline: `Ok(None)` when the connection ended.
fn read_msg(ws: &mut WebSocket<TcpStream>, deadline: Instant) -> Result<Option<Message>, String> {
    loop {
        let left = remaining(deadline).ok_or("timed out")?;
        ws.get_mut().set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match ws.read() {
            Ok(Message::Close(_)) => {
                // tungstenite queued the close reply; the server may already be gone.
                let _ = ws.flush();
                return Ok(None);
            }
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
            Ok(m) => return Ok(Some(m)),
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => return Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                if remaining(deadline).is_none() {
                    return Err("timed out".into());
                }
            }
            // The server closes the socket right after its close frame.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(None)
            }
            Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)) => {
                return Ok(None)
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn send(ws: &mut WebSocket<TcpStream>, data: Vec<u8>) -> Result<(), String> {
    ws.send(Message::binary(data)).map_err(|e| format!("send: {e}"))
}

/// An exec or attach stream: send stdin, resize, read output as it comes.
pub struct Session {
    ws: WebSocket<TcpStream>,
    protocol: String,
    deadline: Instant,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<Vec<u8>>,
    closed: bool,
}

impl Session {
    /// Connects to an exec or attach URL, offering v5 then v4; every read of this session
    /// fails once `timeout` (from now) has passed.
    pub fn open(
        connect: impl FnOnce(&str) -> io::Result<TcpStream>,
        url: &str,
        timeout: Duration,
    ) -> Result<Session, String> {
        Self::open_with(connect, url, &[V5_CHANNEL, V4_CHANNEL], timeout)
    }

    /// Like `open`, with an explicit subprotocol list (binary protocols only).
    pub fn open_with(
        connect: impl FnOnce(&str) -> io::Result<TcpStream>,
        url: &str,
        protocols: &[&str],
        timeout: Duration,
    ) -> Result<Session, String> {
        let deadline = Instant::now() + timeout;
        let (ws, protocol) = open(connect, url, protocols, deadline)?;
        if protocol.contains("base64") {
            return Err(format!("server chose the base64 protocol {protocol:?}"));
        }
        Ok(Session { ws, protocol, deadline, stdout: vec![], stderr: vec![], status: None, closed: false })
    }

    /// The subprotocol the server chose.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Whether the protocol can close stdin without closing the connection (v5).
    pub fn can_close_stdin(&self) -> bool {
        self.protocol == V5_CHANNEL
    }

    pub fn send_stdin(&mut self, data: &[u8]) -> Result<(), String> {
        send(&mut self.ws, frame(CH_STDIN, data))
    }

    /// Closes stdin (v5 only; with v4 the process sees EOF only when the connection closes).
    pub fn close_stdin(&mut self) -> Result<(), String> {
        if !self.can_close_stdin() {
            return Err(format!("{} cannot close stdin alone", self.protocol));
        }
        send(&mut self.ws, vec![CH_CLOSE, CH_STDIN])
    }

    /// Resizes the tty.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        send(&mut self.ws, frame(CH_RESIZE, &resize_payload(width, height)))
    }

    pub fn stdout(&self) -> &[u8] {
        &self.stdout
    }
    pub fn stderr(&self) -> &[u8] {
        &self.stderr
    }

    /// Whether the server has closed the stream.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn context(&self) -> String {
        format!(
            "protocol {:?}, stdout so far {:?}, stderr so far {:?}, status {:?}",
            self.protocol,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr),
            self.status.as_deref().map(String::from_utf8_lossy)
        )
    }

    /// Reads one message and files it; `Ok(false)` once the server has closed.
    fn pump(&mut self) -> Result<bool, String> {
        if self.closed {
            return Ok(false);
        }
        match read_msg(&mut self.ws, self.deadline).map_err(|e| format!("{e} ({})", self.context()))? {
            None => {
                self.closed = true;
                Ok(false)
            }
            Some(Message::Binary(b)) => {
                match demux(&b) {
                    Some((CH_STDOUT, p)) => self.stdout.extend_from_slice(p),
                    Some((CH_STDERR, p)) => self.stderr.extend_from_slice(p),
                    Some((CH_ERROR, p)) if !p.is_empty() => {
                        self.status.get_or_insert_with(Vec::new).extend_from_slice(p)
                    }
                    Some((CH_ERROR, _)) => {}
                    Some((c, _)) => return Err(format!("message on unexpected channel {c} ({})", self.context())),
                    None => {} // an empty message: nothing to file
                }
                Ok(true)
            }
            Some(m) => Err(format!("unexpected message {m:?} ({})", self.context())),
        }
    }

    /// Reads until `needle` appears in what `channel` (stdout or stderr) wrote so far.
    pub fn read_until(&mut self, channel: u8, needle: &[u8]) -> Result<(), String> {
        loop {
            let buf = if channel == CH_STDERR { &self.stderr } else { &self.stdout };
            if contains(buf, needle) {
                return Ok(());
            }
            if !self.pump()? {
                return Err(format!(
                    "stream ended before {:?} appeared ({})",
                    String::from_utf8_lossy(needle),
                    self.context()
                ));
            }
        }
    }

    /// Reads until the server closes the stream; returns the output and the exit code.
    pub fn finish(mut self) -> Result<StreamOutput, String> {
        while self.pump()? {}
        let exit_code = match &self.status {
            Some(s) => exit_code_from_status(s).map_err(|e| format!("{e} ({})", self.context()))?,
            None => return Err(format!("stream closed without a status ({})", self.context())),
        };
        Ok(StreamOutput { stdout: self.stdout, stderr: self.stderr, exit_code })
    }

    /// Closes the connection from our side (with v4 this also closes the process's stdin).
    /// Returns what was read.
    pub fn disconnect(mut self) -> StreamOutput {
        if !self.closed {
            let _ = self.ws.close(None);
            // Read what was in flight until the server's close (bounded by the deadline).
            while let Ok(true) = self.pump() {}
        }
        StreamOutput { stdout: self.stdout, stderr: self.stderr, exit_code: 0 }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs the exec behind `url` (from CRI `Exec`): sends `stdin` (when given) and, with v5,
/// closes it — with v4 (containerd 2.1) stdin stays open until the command ends, see the
/// module docs; reads stdout/stderr until the command ends. `tty` must match the CRI request
/// (it only decides whether to send an initial resize to 80x24).
pub fn exec(
    connect: impl FnOnce(&str) -> io::Result<TcpStream>,
    url: &str,
    stdin: Option<&[u8]>,
    tty: bool,
    timeout: Duration,
) -> Result<StreamOutput, String> {
    let mut s = Session::open(connect, url, timeout)?;
    if tty {
        s.resize(80, 24)?;
    }
    if let Some(data) = stdin {
        if !data.is_empty() {
            s.send_stdin(data)?;
        }
        if s.can_close_stdin() {
            s.close_stdin()?;
        }
    }
    s.finish()
}

/// Attaches to the container behind `url` (from CRI `Attach`) and reads until the container
/// exits (the server then reports Success; `exit_code` is 0: attach carries no exit code).
pub fn attach(
    connect: impl FnOnce(&str) -> io::Result<TcpStream>,
    url: &str,
    stdin: Option<&[u8]>,
    tty: bool,
    timeout: Duration,
) -> Result<StreamOutput, String> {
    exec(connect, url, stdin, tty, timeout)
}

/// Attaches, sends `stdin` (when given), reads stdout until `needle` appears, then detaches.
/// Returns the stdout read (attach only sees output written after it connected).
pub fn attach_until(
    connect: impl FnOnce(&str) -> io::Result<TcpStream>,
    url: &str,
    stdin: Option<&[u8]>,
    needle: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let mut s = Session::open(connect, url, timeout)?;
    if let Some(data) = stdin {
        s.send_stdin(data)?;
    }
    s.read_until(CH_STDOUT, needle)?;
    // Detach without waiting: the container keeps running.
    let _ = s.ws.close(None);
    let _ = s.ws.flush();
    Ok(s.stdout)
}

/// Port-forwards through `url` (from CRI `PortForward`, whose request listed `port`): sends
/// `request` to the pod's `port` and returns everything it answered until the pod side closed.
/// An error reported on the port's error channel is an `Err`.
pub fn port_forward(
    connect: impl FnOnce(&str) -> io::Result<TcpStream>,
    url: &str,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let (mut ws, protocol) = open(connect, url, &[V4_CHANNEL], deadline)?;
    let mut pf = PortForwardDemux::new(port);
    let mut sent = false;
    loop {
        let ctx = |pf: &PortForwardDemux| {
            format!(
                "protocol {protocol:?}, data so far {:?}, error {:?}",
                String::from_utf8_lossy(&pf.data),
                String::from_utf8_lossy(&pf.error)
            )
        };
        let m = read_msg(&mut ws, deadline).map_err(|e| format!("port-forward {port}: {e} ({})", ctx(&pf)))?;
        match m {
            None => break,
            Some(Message::Binary(b)) => pf.push(&b).map_err(|e| format!("port-forward {port}: {e} ({})", ctx(&pf)))?,
            Some(other) => return Err(format!("port-forward {port}: unexpected message {other:?}")),
        }
        if !sent {
            if let Some(ch) = pf.data_channel {
                send(&mut ws, frame(ch, request))?;
                sent = true;
            }
        }
    }
    if pf.data_channel.is_none() {
        return Err(format!(
            "port-forward: the server offered no channel for port {port} (ports seen: {:?}; \
             the CRI PortForwardRequest must list the port)",
            pf.seen
        ));
    }
    if !pf.error.is_empty() {
        return Err(format!(
            "port-forward {port}: {} (data: {:?})",
            String::from_utf8_lossy(&pf.error),
            String::from_utf8_lossy(&pf.data)
        ));
    }
    Ok(pf.data)
}

/// The client side of the port-forward channels: finds the pair for a port from the port
/// headers and collects its data and error bytes.
#[derive(Debug, Default)]
pub struct PortForwardDemux {
    pub port: u16,
    /// Header bytes read so far per channel (until 2).
    headers: std::collections::BTreeMap<u8, Vec<u8>>,
    /// Ports announced, by data channel.
    pub seen: Vec<(u8, u16)>,
    /// The data channel of `port`, once announced.
    pub data_channel: Option<u8>,
    pub data: Vec<u8>,
    pub error: Vec<u8>,
}

impl PortForwardDemux {
    pub fn new(port: u16) -> Self {
        PortForwardDemux { port, ..Default::default() }
    }

    /// Files one binary message.
    pub fn push(&mut self, msg: &[u8]) -> Result<(), String> {
        let Some((ch, mut payload)) = demux(msg) else { return Ok(()) };
        // The first two bytes of every channel are its port.
        let h = self.headers.entry(ch).or_default();
        if h.len() < 2 {
            let take = (2 - h.len()).min(payload.len());
            h.extend_from_slice(&payload[..take]);
            payload = &payload[take..];
            if h.len() < 2 {
                return Ok(());
            }
            let p = parse_port_header(h).expect("two bytes");
            if ch % 2 == 0 {
                self.seen.push((ch, p));
                if p == self.port && self.data_channel.is_none() {
                    self.data_channel = Some(ch);
                }
            } else if let Some(&(_, dp)) = self.seen.iter().find(|(c, _)| *c + 1 == ch) {
                if dp != p {
                    return Err(format!("error channel {ch} announces port {p}, its data channel {dp}"));
                }
            }
        }
        if payload.is_empty() {
            return Ok(());
        }
        match self.data_channel {
            Some(d) if ch == d => self.data.extend_from_slice(payload),
            Some(d) if ch == d + 1 => self.error.extend_from_slice(payload),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // tungstenite's server callback type
mod tests {
    use super::*;

    #[test]
    fn status_success_is_zero() {
        assert_eq!(exit_code_from_status(br#"{"metadata":{},"status":"Success"}"#), Ok(0));
    }

    #[test]
    fn status_exit_code() {
        // What ServeExec writes for a non-zero exit (json.Marshal of metav1.Status).
        let s = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code_from_status(s), Ok(3));
    }

    #[test]
    fn status_internal_error_is_err() {
        let s = br#"{"metadata":{},"status":"Failure","message":"Internal error occurred: error executing command in container: failed to exec in container: starting container process caused: exec: \"nope\": executable file not found in $PATH","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#;
        let e = exit_code_from_status(s).unwrap_err();
        assert!(e.contains("executable file not found") && e.contains("InternalError"), "{e}");
        assert!(exit_code_from_status(b"not json").is_err());
        assert!(exit_code_from_status(
            br#"{"status":"Failure","details":{"causes":[{"reason":"ExitCode","message":"x"}]}}"#
        )
        .is_err());
    }

    #[test]
    fn demux_and_frame() {
        assert_eq!(demux(&[1, b'h', b'i']), Some((CH_STDOUT, &b"hi"[..])));
        assert_eq!(demux(&[2]), Some((CH_STDERR, &b""[..])));
        assert_eq!(demux(&[]), None);
        assert_eq!(frame(CH_STDIN, b"x\n"), vec![0, b'x', b'\n']);
        let r: serde_json::Value = serde_json::from_slice(&resize_payload(80, 24)).unwrap();
        assert_eq!(r, serde_json::json!({"Width": 80, "Height": 24}));
    }

    #[test]
    fn port_header_is_little_endian() {
        assert_eq!(port_header(8080), [0x90, 0x1f]);
        assert_eq!(parse_port_header(&[0x90, 0x1f]), Some(8080));
        assert_eq!(parse_port_header(&[1]), None);
    }

    #[test]
    fn port_forward_demux() {
        let mut d = PortForwardDemux::new(8080);
        // Pair 0 is port 80, pair 1 is 8080 (headers as separate messages, as the server sends).
        d.push(&[0, 80, 0]).unwrap();
        d.push(&[1, 80, 0]).unwrap();
        assert_eq!(d.data_channel, None);
        d.push(&[2, 0x90, 0x1f]).unwrap();
        d.push(&[3, 0x90]).unwrap(); // a header split across messages
        d.push(&[3, 0x1f]).unwrap();
        assert_eq!(d.data_channel, Some(2));
        d.push(&[0, b'n', b'o']).unwrap();
        d.push(&[2, b'H', b'T']).unwrap();
        d.push(&[2, b'T', b'P']).unwrap();
        d.push(&[2]).unwrap();
        assert_eq!(d.data, b"HTTP");
        assert!(d.error.is_empty());
        d.push(&[3, b'e', b'r', b'r']).unwrap();
        assert_eq!(d.error, b"err");
        assert_eq!(d.seen, vec![(0, 80), (2, 8080)]);
        let mut bad = PortForwardDemux::new(1);
        bad.push(&[0, 1, 0]).unwrap();
        assert!(bad.push(&[1, 2, 0]).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            ws_url("http://127.0.0.1:35555/exec/AbC").unwrap(),
            ("ws://127.0.0.1:35555/exec/AbC".to_string(), "127.0.0.1:35555".to_string())
        );
        assert!(ws_url("https://127.0.0.1:1/exec/x").is_err());
    }

    /// A local WebSocket server speaking the v4 framing, to run the client end to end.
    #[test]
    fn exec_against_fake_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (tcp, _) = l.accept().unwrap();
            let cb = |req: &tungstenite::handshake::server::Request,
                      mut resp: tungstenite::handshake::server::Response| {
                let offered = req.headers().get("Sec-WebSocket-Protocol").unwrap().to_str().unwrap().to_string();
                assert_eq!(offered, "v5.channel.k8s.io, v4.channel.k8s.io");
                resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(V4_CHANNEL));
                Ok(resp)
            };
            let mut ws = tungstenite::accept_hdr(tcp, cb).unwrap();
            ws.send(Message::binary(vec![CH_STDOUT])).unwrap();
            let m = ws.read().unwrap().into_data();
            assert_eq!(&m[..], b"\x00in\n");
            ws.send(Message::binary(frame(CH_STDOUT, b"got in\n"))).unwrap();
            ws.send(Message::binary(frame(CH_STDERR, b"err\n"))).unwrap();
            ws.send(Message::binary(frame(
                CH_ERROR,
                br#"{"metadata":{},"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#,
            )))
            .unwrap();
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
        });
        let out =
            exec(direct, &format!("http://{addr}/exec/tok"), Some(b"in\n"), false, Duration::from_secs(10)).unwrap();
        srv.join().unwrap();
        assert_eq!(out, StreamOutput { stdout: b"got in\n".to_vec(), stderr: b"err\n".to_vec(), exit_code: 7 });
    }

    #[test]
    fn read_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            let (tcp, _) = l.accept().unwrap();
            let mut ws = tungstenite::accept_hdr(tcp, |_: &_, mut resp: tungstenite::handshake::server::Response| {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(V4_CHANNEL));
                Ok(resp)
            })
            .unwrap();
            // Never answers; wait for the client to go away.
            while ws.read().is_ok() {}
        });
        let t = Instant::now();
        let e = exec(direct, &format!("http://{addr}/exec/tok"), None, false, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        srv.join().unwrap();
    }
}
