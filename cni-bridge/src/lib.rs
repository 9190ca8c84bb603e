//! podnet's in-process CNI engine: bridge + host-local IPAM + portmap + masquerade + loopback,
//! all over netlink (rtnetlink for links, addresses and routes; nf_tables for rules).

pub mod error;

pub use error::{CniError, ErrorList, Result};
