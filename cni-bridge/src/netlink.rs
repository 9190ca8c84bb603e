//! What rtnetlink (`rtnl/`, messages from netlink-packet-route) and nf_tables (`nft/`, messages
//! built by hand) share: the kernel's error for one request, with its extended-ack text.

use std::fmt;
use std::io;

use netlink_packet_core::{NlaBuffer, NlasIterator, NLA_ALIGNTO, NLM_F_ACK_TLVS, NLM_F_CAPPED};

/// NLMSGERR_ATTR_MSG: the kernel's human-readable reason, a NUL-terminated string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// struct nlmsghdr, which the kernel echoes after the error code.
const NLMSG_HDRLEN: usize = 16;

/// A kernel error for one request, with the kernel's extended-ack text when it gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub errno: i32,
    pub ext: Option<String>,
}

impl NlError {
    pub fn io(e: io::Error) -> Self {
        NlError { errno: e.raw_os_error().unwrap_or(libc::EIO), ext: None }
    }
    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
    /// An NLMSG_ERROR with a negative code: `flags` are those of the error message's own
    /// header, `after_code` is what follows the code (the echoed request, then the
    /// extended-ack attributes).
    pub fn from_ack(code: i32, flags: u16, after_code: &[u8]) -> Self {
        NlError { errno: code.checked_neg().unwrap_or(libc::EIO), ext: ext_ack_text(flags, after_code) }
    }

    /// A dump's NLMSG_DONE with a negative code: the extended-ack attributes follow the code
    /// directly (nothing is echoed).
    pub fn from_done(code: i32, flags: u16, after_code: &[u8]) -> Self {
        let ext = if flags & NLM_F_ACK_TLVS != 0 { tlv_text(after_code) } else { None };
        NlError { errno: code.checked_neg().unwrap_or(libc::EIO), ext }
    }
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(ext) = &self.ext {
            write!(f, " ({ext})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NlError {}

/// The kernel's extended-ack message. With NLM_F_CAPPED the kernel echoed only the request's
/// header, otherwise the whole request (its length is in that header); the TLVs follow.
fn ext_ack_text(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || after_code.len() < NLMSG_HDRLEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = u32::from_ne_bytes(after_code[..4].try_into().ok()?) as usize;
        len.div_ceil(NLA_ALIGNTO) * NLA_ALIGNTO
    };
    tlv_text(after_code.get(echoed..)?)
}

/// The NLMSGERR_ATTR_MSG text among extended-ack attributes.
fn tlv_text(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs).map_while(Result::ok).find(|a: &NlaBuffer<&[u8]>| a.kind() == NLMSGERR_ATTR_MSG).map(|a| {
        let v = a.value();
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        String::from_utf8_lossy(&v[..end]).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error as the kernel sends it: code, the echoed request header (capped), then the
    /// NLMSGERR_ATTR_MSG attribute.
    fn nack(capped: bool, text: &str) -> (u16, Vec<u8>) {
        let mut b = Vec::new();
        let mut req = [0u8; 16];
        req[..4].copy_from_slice(&24u32.to_ne_bytes()); // a 24-byte request
        b.extend_from_slice(&req);
        if !capped {
            b.extend_from_slice(&[0u8; 8]); // its payload
        }
        let mut v = text.as_bytes().to_vec();
        v.push(0);
        b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        b.extend_from_slice(&v);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        let flags = NLM_F_ACK_TLVS | if capped { NLM_F_CAPPED } else { 0 };
        (flags, b)
    }

    #[test]
    fn ext_ack_text_capped_and_full() {
        for capped in [true, false] {
            let (flags, body) = nack(capped, "Unknown device type");
            let e = NlError::from_ack(-libc::EOPNOTSUPP, flags, &body);
            assert_eq!(e.errno, libc::EOPNOTSUPP);
            assert_eq!(e.ext.as_deref(), Some("Unknown device type"), "capped {capped}");
            assert!(e.to_string().ends_with("(Unknown device type)"), "{e}");
        }
    }

    #[test]
    fn done_text_follows_the_code() {
        let (_, body) = nack(true, "Invalid values in header for neighbor dump request");
        let e = NlError::from_done(-libc::EINVAL, NLM_F_ACK_TLVS, &body[16..]);
        assert_eq!(
            (e.errno, e.ext.as_deref()),
            (libc::EINVAL, Some("Invalid values in header for neighbor dump request"))
        );
        assert_eq!(NlError::from_done(-libc::EINVAL, 0, &body[16..]).ext, None);
    }

    #[test]
    fn no_tlvs_no_text() {
        let (_, body) = nack(true, "x");
        assert_eq!(NlError::from_ack(-libc::EEXIST, NLM_F_CAPPED, &body).ext, None);
        assert_eq!(NlError::from_ack(-libc::EEXIST, NLM_F_ACK_TLVS, &[0u8; 4]).ext, None);
    }
}
