//! A blocking NETLINK_NETFILTER socket: one request, its replies, its ack; nfnetlink batches.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::msg::{split, MsgBuilder, RecvMsg, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP};
use crate::netlink::NlError;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
const NLM_F_DUMP_INTR: u16 = 0x10;
const RECV_BUF: usize = 64 * 1024;

pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Opens a socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER) in the calling thread's
    /// network namespace; it stays bound to that namespace whichever thread uses it later.
    pub fn new(protocol: libc::c_int) -> io::Result<NlSocket> {
        // SAFETY: plain socket(2) call; the result is checked before it is wrapped.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        for opt in [NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK] {
            // SAFETY: setsockopt with a c_int option value that lives across the call. Failure is
            // harmless (older kernels): errors just lose their extended text.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    SOL_NETLINK,
                    opt,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value (pid 0 = kernel assigns).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NlSocket { fd, seq: 1, buf: vec![0u8; RECV_BUF] })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NlError> {
        // SAFETY: kernel address (zeroed sockaddr_nl) and a valid buffer.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: bytes and sa are valid for the duration of the call.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr() as *const libc::c_void,
                    bytes.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NlError::io(e));
            }
        }
    }

    fn recv(&mut self) -> Result<Vec<RecvMsg>, NlError> {
        loop {
            // SAFETY: self.buf is a valid writable buffer of its length.
            let n = unsafe {
                libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr() as *mut libc::c_void, self.buf.len(), 0)
            };
            if n >= 0 {
                return Ok(split(&self.buf[..n as usize]));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(NlError::io(e));
            }
        }
    }

    /// Sends one request and returns the messages it produced (a dump's entries, an echo).
    /// A non-dump request is sent with NLM_F_ACK and completes at its ack.
    pub fn request(&mut self, msg: MsgBuilder) -> Result<Vec<RecvMsg>, NlError> {
        for _ in 0..3 {
            match self.request_once(msg.clone()) {
                Err(e) if e.errno == libc::EINTR && e.ext.as_deref() == Some("dump interrupted") => continue,
                r => return r,
            }
        }
        Err(NlError { errno: libc::EINTR, ext: Some("dump interrupted three times".into()) })
    }

    fn request_once(&mut self, mut msg: MsgBuilder) -> Result<Vec<RecvMsg>, NlError> {
        let flags = msg.flags();
        let is_dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        if !is_dump {
            msg = msg.with_flags(flags | NLM_F_ACK);
        }
        let seq = self.next_seq();
        self.send(&msg.finish(seq))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            for m in self.recv()? {
                if m.seq != seq {
                    continue; // a late reply to an earlier, abandoned request
                }
                match m.msg_type {
                    NLMSG_ERROR => {
                        let errno = error_code(&m.body);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(nack(&m));
                    }
                    NLMSG_DONE => {
                        if interrupted {
                            return Err(NlError { errno: libc::EINTR, ext: Some("dump interrupted".into()) });
                        }
                        return Ok(out);
                    }
                    _ => {
                        interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                        out.push(m);
                    }
                }
            }
        }
    }

    /// Sends an nfnetlink batch (begin, messages, end) in one datagram. Every message gets
    /// NLM_F_ACK, so the kernel answers each one; the first error is returned with the index
    /// of the message that caused it.
    pub fn batch(
        &mut self,
        begin: MsgBuilder,
        msgs: Vec<MsgBuilder>,
        end: MsgBuilder,
    ) -> Result<Vec<RecvMsg>, (usize, NlError)> {
        let mut bytes = Vec::new();
        let begin_seq = self.next_seq();
        bytes.extend(begin.finish(begin_seq));
        let mut seqs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let f = m.flags();
            let seq = self.next_seq();
            seqs.push(seq);
            bytes.extend(m.with_flags(f | NLM_F_ACK).finish(seq));
        }
        let end_seq = self.next_seq();
        bytes.extend(end.finish(end_seq));
        self.send(&bytes).map_err(|e| (0, e))?;

        let mut pending = seqs.len();
        let mut first_err: Option<(usize, NlError)> = None;
        let mut out = Vec::new();
        while pending > 0 {
            for m in self.recv().map_err(|e| (0, e))? {
                if m.seq == begin_seq || m.seq == end_seq {
                    if m.msg_type == NLMSG_ERROR && error_code(&m.body) != 0 {
                        // The batch itself was refused (e.g. no permission): nothing else comes.
                        return Err((0, nack(&m)));
                    }
                    continue;
                }
                let Some(idx) = seqs.iter().position(|&s| s == m.seq) else { continue };
                if m.msg_type == NLMSG_ERROR {
                    pending -= 1;
                    let errno = error_code(&m.body);
                    if errno != 0 && first_err.is_none() {
                        first_err = Some((idx, nack(&m)));
                    }
                } else {
                    out.push(m);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// The (negated) errno of an NLMSG_ERROR body.
fn error_code(body: &[u8]) -> i32 {
    match body.get(..4) {
        Some(b) => -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => libc::EIO,
    }
}

/// The error an NLMSG_ERROR with a non-zero code carries, with its extended-ack text.
fn nack(m: &RecvMsg) -> NlError {
    NlError::from_ack(-error_code(&m.body), m.flags, m.body.get(4..).unwrap_or_default())
}
