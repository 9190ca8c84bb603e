//! Building and parsing nf_tables netlink messages by hand (no maintained crate covers
//! nf_tables): a message builder with nested attributes, and an attribute parser.

use netlink_packet_core::{NLA_F_NESTED, NLA_TYPE_MASK};
pub use netlink_packet_core::{
    NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};

pub const NLMSG_HDRLEN: usize = 16;

/// Netlink alignment (4 bytes) for headers and attributes.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// One netlink message under construction: header, fixed family header, attributes.
/// The length and sequence number are filled in by the socket when it is sent.
#[derive(Debug, Clone)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

impl MsgBuilder {
    pub fn new(msg_type: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in finish()
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid
        MsgBuilder { buf }
    }

    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }

    pub fn with_flags(mut self, flags: u16) -> Self {
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self
    }

    /// Appends a fixed header (ifinfomsg, ifaddrmsg, rtmsg, nfgenmsg ...), padded.
    pub fn header(mut self, bytes: &[u8]) -> Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        let n = align(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0u8, n));
    }

    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// Big-endian u32 (nf_tables uses network byte order for its integers).
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }
    pub fn attr_be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }
    /// NUL-terminated string, as the kernel's NLA_STRING/NLA_NUL_STRING expect.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Opens a nested attribute; close it with `nest_end` and the returned offset.
    pub fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub fn nest_end(&mut self, at: usize) -> &mut Self {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Finishes the message with a sequence number; returns its bytes.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// One parsed attribute: its type (flags masked off) and payload.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub ty: u16,
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.payload.get(..4)?.try_into().ok()?))
    }
    pub fn be64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.payload.get(..8)?.try_into().ok()?))
    }
    /// A string attribute without its trailing NUL.
    pub fn str(&self) -> Option<&'a str> {
        let end = self.payload.iter().position(|&b| b == 0).unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end]).ok()
    }
}

/// Iterates the attributes in `buf`, stopping at the first malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let a = Attr { ty, payload: &rest[4..len] };
        rest = &rest[align(len).min(rest.len())..];
        Some(a)
    })
}

/// A received message: type, flags, sequence and the body after the netlink header.
#[derive(Debug, Clone)]
pub struct RecvMsg {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: Vec<u8>,
}

/// Splits a datagram into messages.
pub(crate) fn split(buf: &[u8]) -> Vec<RecvMsg> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        out.push(RecvMsg {
            msg_type: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]),
            body: rest[NLMSG_HDRLEN..len].to_vec(),
        });
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_round_trip() {
        let mut m = MsgBuilder::new(16, 1).header(&[0u8; 16]);
        m.attr_str(3, "eth0");
        let n = m.nest_start(18);
        m.attr_str(1, "veth");
        m.attr_be32(2, 1500);
        m.nest_end(n);
        let bytes = m.finish(7);
        let msgs = split(&bytes);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        let all: Vec<_> = attrs(&msgs[0].body[16..]).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].str(), Some("eth0"));
        let inner: Vec<_> = attrs(all[1].payload).collect();
        assert_eq!(inner[0].str(), Some("veth"));
        assert_eq!(inner[1].be32(), Some(1500));
    }

    #[test]
    fn truncated_attribute_stops_iteration() {
        let buf = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(attrs(&buf).count(), 0);
    }
}
