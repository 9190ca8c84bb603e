//! The route-netlink socket: one request (a netlink-packet-route message), its replies, its
//! ack; synchronous, on netlink-sys. Multicast notifications for subscribers (DAD).

use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, DoneBuffer, DoneMessage, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkDeserializable,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netlink::NlError;

const RECV_BUF: usize = 64 * 1024;
const NLMSG_HDRLEN: usize = 16;

pub(super) struct RtSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> NlError {
    NlError { errno: libc::EIO, ext: Some(format!("decoding {what}: {e}")) }
}

impl RtSocket {
    /// Opens a socket in the calling thread's network namespace; it stays bound to that
    /// namespace whichever thread uses it later.
    pub(super) fn new() -> Result<RtSocket, NlError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NlError::io)?;
        // Failure of either is harmless (older kernels): errors just lose their text, dumps
        // their kernel-side filter (every dump is filtered here too).
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_netlink_get_strict_chk(true);
        sock.bind(&SocketAddr::new(0, 0)).map_err(NlError::io)?;
        Ok(RtSocket { sock, seq: 1, buf: vec![0u8; RECV_BUF] })
    }

    /// Joins a multicast group (e.g. RTNLGRP_IPV6_IFADDR) to receive its notifications.
    pub(super) fn join_group(&mut self, group: u32) -> Result<(), NlError> {
        self.sock.add_membership(group).map_err(NlError::io)
    }

    /// Blocks until a notification arrives or `timeout` passes, then consumes one datagram of
    /// them. Returns the notifications (empty when none arrived in time).
    pub(super) fn wait_notifications(&mut self, timeout: Duration) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let mut pfd = libc::pollfd { fd: self.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(NlError::io(e)) };
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let len = self.recv()?;
        let mut out = Vec::new();
        for (hdr, payload) in split(&self.buf[..len]) {
            // Replies to an abandoned request (seq != 0) are not notifications.
            if hdr.sequence_number == 0 && hdr.message_type >= 16 {
                let m = RouteNetlinkMessage::deserialize(&hdr, payload).map_err(|e| decode_err("a notification", e))?;
                out.push(m);
            }
        }
        Ok(out)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn recv(&mut self) -> Result<usize, NlError> {
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => return Ok(n.min(self.buf.len())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::io(e)),
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NlError> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(bytes, &kernel, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::io(e)),
            }
        }
    }

    /// Sends one request with `flags` (NLM_F_REQUEST is implied) and returns the messages it
    /// produced: a dump's entries, a get's answer. A non-dump request is sent with NLM_F_ACK
    /// and completes at its ack; a dump the kernel interrupted (it changed meanwhile) is
    /// retried, up to three times.
    pub(super) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.request_with(msg, flags, |hdr, payload| RouteNetlinkMessage::deserialize(hdr, payload).map(Some))
    }

    /// [`RtSocket::request`] with a parser of its own for the replies (None: skip one): link
    /// messages are large and the crate's full parse formats payloads for its error context
    /// eagerly, so links parse only the attributes podnet reads.
    pub(super) fn request_with<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        mut parse: impl FnMut(&NetlinkHeader, &[u8]) -> Result<Option<T>, DecodeError>,
    ) -> Result<Vec<T>, NlError> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        for _ in 0..3 {
            match self.request_once(&mut bytes, &mut parse) {
                Err(e) if e.errno == libc::EINTR && e.ext.as_deref() == Some("dump interrupted") => continue,
                r => return r,
            }
        }
        Err(NlError { errno: libc::EINTR, ext: Some("dump interrupted three times".into()) })
    }

    fn request_once<T>(
        &mut self,
        bytes: &mut [u8],
        parse: &mut impl FnMut(&NetlinkHeader, &[u8]) -> Result<Option<T>, DecodeError>,
    ) -> Result<Vec<T>, NlError> {
        let seq = self.next_seq();
        NetlinkBuffer::new(&mut bytes[..]).set_sequence_number(seq);
        self.send(bytes)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let len = self.recv()?;
            for (hdr, payload) in split(&self.buf[..len]) {
                if hdr.sequence_number != seq {
                    continue; // a notification, or a late reply to an earlier, abandoned request
                }
                match hdr.message_type {
                    NLMSG_ERROR => {
                        let err = ErrorBuffer::new_checked(&payload)
                            .and_then(|b| ErrorMessage::parse(&b))
                            .map_err(|e| decode_err("an ack", e))?;
                        return match err.code {
                            None => Ok(out),
                            Some(code) => Err(NlError::from_ack(code.get(), hdr.flags, &err.header)),
                        };
                    }
                    NLMSG_DONE => {
                        // A dump that failed part way reports its error in DONE.
                        if payload.len() >= 4 {
                            let done = DoneBuffer::new_checked(&payload)
                                .and_then(|b| DoneMessage::parse(&b))
                                .map_err(|e| decode_err("the end of a dump", e))?;
                            if done.code < 0 {
                                return Err(NlError::from_done(done.code, hdr.flags, &done.extended_ack));
                            }
                        }
                        if interrupted {
                            return Err(NlError { errno: libc::EINTR, ext: Some("dump interrupted".into()) });
                        }
                        return Ok(out);
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => {}
                    _ => {
                        interrupted |= hdr.flags & NLM_F_DUMP_INTR != 0;
                        if let Some(m) = parse(&hdr, payload).map_err(|e| decode_err("the kernel's reply", e))? {
                            out.push(m);
                        }
                    }
                }
            }
        }
    }
}

/// Splits a datagram into (header, payload) pairs, stopping at the first malformed message.
fn split(buf: &[u8]) -> Vec<(NetlinkHeader, &[u8])> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let Ok(nb) = NetlinkBuffer::new_checked(rest) else { break };
        let len = nb.length() as usize;
        let Ok(hdr) = NetlinkHeader::parse(&nb) else { break };
        out.push((hdr, &rest[NLMSG_HDRLEN..len]));
        rest = rest.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    out
}

/// An rtnetlink socket in the calling thread's network namespace; the object kinds' modules
/// add its requests.
pub struct Rtnl {
    pub(super) sock: RtSocket,
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace. Open it on a thread inside a pod's
    /// namespace (see `podnet_netns::NetNs::run`) to configure that pod from any thread.
    pub fn new() -> Result<Rtnl, NlError> {
        RtSocket::new().map(|sock| Rtnl { sock })
    }

    /// Subscribes this socket to an rtnetlink multicast group.
    pub fn subscribe(&mut self, group: u32) -> Result<(), NlError> {
        self.sock.join_group(group)
    }

    /// Waits for a notification of a subscribed group (see [`Rtnl::subscribe`]); returns
    /// whether any arrived.
    pub fn wait_event(&mut self, timeout: std::time::Duration) -> Result<bool, NlError> {
        Ok(!self.sock.wait_notifications(timeout)?.is_empty())
    }
}

pub(super) fn family_of(ip: &std::net::IpAddr) -> u8 {
    match ip {
        std::net::IpAddr::V4(_) => libc::AF_INET as u8,
        std::net::IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}
