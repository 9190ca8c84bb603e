//! podnet's in-process CNI engine: bridge + host-local IPAM + portmap + masquerade + loopback,
//! all over netlink (rtnetlink for links, addresses, routes, neighbours; nf_tables for rules).

pub mod args;
pub mod atomic_file;
pub mod config;
pub mod error;
pub mod ipam;
pub mod netlink;
pub mod nft;
pub mod result;
pub mod rtnl;

pub use error::{CniError, ErrorList, Result};
pub use node_facts::{NodeFacts, NodeFactsError, DEFAULT_NODE_FACTS};
pub mod attachment;
pub mod bridge;
mod dad;
pub mod engine;
pub mod loopback;
pub mod names;
pub mod node_facts;
pub mod plugin;
pub mod portmap;
pub mod sysctl;
