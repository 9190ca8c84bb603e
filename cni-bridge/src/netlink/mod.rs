//! A small netlink layer shared by rtnetlink (links, addresses, routes) and nf_tables:
//! a blocking socket, a message builder with nested attributes, and an attribute parser.
//! One request = one `send`; no exec of `ip` or `nft`.

mod msg;
mod socket;

pub use msg::{attrs, Attr, MsgBuilder, RecvMsg};
pub use socket::{NlError, NlSocket};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_ECHO: u16 = 0x08;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

pub const NLMSG_HDRLEN: usize = 16;

/// Netlink alignment (4 bytes) for headers and attributes.
pub const fn align(len: usize) -> usize {
    (len + 3) & !3
}
