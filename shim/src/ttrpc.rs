//! ttrpc framing (containerd's RPC over unix sockets), enough for a single-threaded server and
//! a blocking client: a 10-byte header (length, stream id, type, flags) before a protobuf
//! `ttrpc.Request` or `ttrpc.Response`.
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::ttrpc::proto::{Code, Request, Response, Status};
use protobuf::Message;

pub const HEADER_LEN: usize = 10;
/// ttrpc's limit on one message.
pub const MAX_LEN: usize = 4 << 20;
pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;

/// One frame off the wire.
#[derive(Debug)]
pub struct Frame {
    pub stream_id: u32,
    pub kind: u8,
    pub payload: Vec<u8>,
}

pub fn encode(stream_id: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind);
    out.push(0);
    out.extend_from_slice(payload);
    out
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, String> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_LEN {
        return Err(format!("ttrpc message of {len} bytes exceeds the {MAX_LEN}-byte limit"));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let stream_id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let kind = buf[8];
    let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some(Frame { stream_id, kind, payload }))
}

/// A failed call, as a gRPC status.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }
    pub fn invalid(m: impl Into<String>) -> RpcError {
        RpcError::new(Code::INVALID_ARGUMENT, m)
    }
    pub fn internal(m: impl Into<String>) -> RpcError {
        RpcError::new(Code::INTERNAL, m)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RpcError {}

/// `Response{status: Status{code: INTERNAL}}` as protobuf bytes: the reply when not even a
/// short error reply could be encoded.
const INTERNAL_REPLY: [u8; 4] = [0x0a, 0x02, 0x08, 0x0d];

/// A response frame's payload for a result. A reply that cannot go out as one ttrpc message
/// (over [`MAX_LEN`], or not encodable) becomes an error reply saying so, as ttrpc-go's server
/// does, never an empty frame the peer would take for an answer.
pub fn response(result: Result<Vec<u8>, RpcError>) -> Vec<u8> {
    let failure = match encode_response(result) {
        Ok(bytes) if bytes.len() <= MAX_LEN => return bytes,
        Ok(bytes) => RpcError::new(
            Code::RESOURCE_EXHAUSTED,
            format!("the reply of {} bytes exceeds ttrpc's {MAX_LEN}-byte message limit", bytes.len()),
        ),
        Err(e) => RpcError::internal(format!("encoding the reply: {e}")),
    };
    encode_response(Err(failure)).unwrap_or_else(|_| INTERNAL_REPLY.to_vec())
}

fn encode_response(result: Result<Vec<u8>, RpcError>) -> protobuf::Result<Vec<u8>> {
    let mut resp = Response::new();
    let mut st = Status::new();
    match result {
        Ok(payload) => {
            st.code = Code::OK.into();
            resp.payload = payload;
        }
        Err(e) => {
            st.code = e.code.into();
            st.message = e.message;
        }
    }
    resp.status = Some(st).into();
    resp.write_to_bytes()
}

/// `unix:///path` or a plain path: the socket path.
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// A blocking client over one connection, one call at a time.
pub struct Client {
    stream: UnixStream,
    next_stream: u32,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        Ok(Client { stream, next_stream: 1, buf: Vec::new() })
    }

    /// Calls `service`/`method` and decodes the reply as `R`. `timeout` bounds the wait for the
    /// reply (None: forever).
    pub fn call<R: Message>(
        &mut self,
        service: &str,
        method: &str,
        req: &impl Message,
        timeout: Option<Duration>,
    ) -> Result<R, RpcError> {
        let payload = req.write_to_bytes().map_err(|e| RpcError::internal(format!("encoding the request: {e}")))?;
        let reply = self.call_raw(service, method, payload, timeout)?;
        R::parse_from_bytes(&reply).map_err(|e| RpcError::internal(format!("decoding the {method} reply: {e}")))
    }

    /// Calls `service`/`method` with an encoded payload; returns the reply's payload.
    pub fn call_raw(
        &mut self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, RpcError> {
        let io_err =
            |what: &str, e: io::Error| RpcError::new(Code::UNAVAILABLE, format!("{what} {service}/{method}: {e}"));
        let mut r = Request::new();
        r.service = service.to_string();
        r.method = method.to_string();
        r.payload = payload;
        r.timeout_nano = timeout.map(|t| t.as_nanos().min(i64::MAX as u128) as i64).unwrap_or(0);
        let id = self.next_stream;
        self.next_stream += 2;
        let bytes = r.write_to_bytes().map_err(|e| RpcError::internal(format!("encoding the request: {e}")))?;
        self.stream.set_read_timeout(timeout).map_err(|e| io_err("setting a timeout on", e))?;
        self.stream.write_all(&encode(id, TYPE_REQUEST, &bytes)).map_err(|e| io_err("sending", e))?;
        loop {
            match decode(&mut self.buf).map_err(RpcError::internal)? {
                Some(f) if f.stream_id == id && f.kind == TYPE_RESPONSE => {
                    let resp = Response::parse_from_bytes(&f.payload)
                        .map_err(|e| RpcError::internal(format!("decoding the response: {e}")))?;
                    let code = resp.status.code.enum_value_or(Code::UNKNOWN);
                    if code != Code::OK {
                        return Err(RpcError::new(code, resp.status.message.clone()));
                    }
                    return Ok(resp.payload);
                }
                Some(_) => continue,
                None => {}
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).map_err(|e| io_err("waiting for the reply to", e))?;
            if n == 0 {
                return Err(RpcError::new(Code::UNAVAILABLE, format!("{service}/{method}: connection closed")));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_wait_for_the_rest() {
        let mut buf = encode(7, TYPE_REQUEST, b"hello");
        buf.extend_from_slice(&encode(9, TYPE_RESPONSE, b"")[..4]);
        let f = decode(&mut buf).unwrap().unwrap();
        assert_eq!((f.stream_id, f.kind, f.payload.as_slice()), (7, TYPE_REQUEST, &b"hello"[..]));
        assert!(decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 4);
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
        assert!(decode(&mut buf).unwrap_err().contains("exceeds"));
    }

    #[test]
    fn a_reply_over_the_message_limit_is_an_error_reply() {
        let bytes = response(Ok(vec![7; MAX_LEN]));
        assert!(bytes.len() <= MAX_LEN, "{} bytes", bytes.len());
        let r = Response::parse_from_bytes(&bytes).unwrap();
        assert_eq!(r.status.code.enum_value_or(Code::OK), Code::RESOURCE_EXHAUSTED);
        assert!(r.status.message.contains("limit"), "{}", r.status.message);
        assert!(r.payload.is_empty());
        // An error too long to send is cut to a status that fits.
        let r = Response::parse_from_bytes(&response(Err(RpcError::internal("x".repeat(MAX_LEN))))).unwrap();
        assert_eq!(r.status.code.enum_value_or(Code::OK), Code::RESOURCE_EXHAUSTED);
        // Right at the limit the reply goes out as it is.
        let fits = response(Ok(vec![7; MAX_LEN - 16]));
        let r = Response::parse_from_bytes(&fits).unwrap();
        assert_eq!((r.status.code.enum_value_or(Code::UNKNOWN), r.payload.len()), (Code::OK, MAX_LEN - 16));
    }

    #[test]
    fn the_last_resort_reply_is_internal() {
        let r = Response::parse_from_bytes(&INTERNAL_REPLY).unwrap();
        assert_eq!(r.status.code.enum_value_or(Code::OK), Code::INTERNAL);
    }

    #[test]
    fn error_responses_carry_code_and_message() {
        let bytes = response(Err(RpcError::new(Code::NOT_FOUND, "no such task")));
        let r = Response::parse_from_bytes(&bytes).unwrap();
        assert_eq!(r.status.code.enum_value_or(Code::OK), Code::NOT_FOUND);
        assert_eq!(r.status.message, "no such task");
    }
}
