//! rtnetlink: links (bridge, veth, vlan, vxlan, bridge ports), addresses, routes, neighbours
//! and FDB entries in the namespace the socket was opened in. Messages are built and parsed
//! with netlink-packet-route; the socket loop (`socket.rs`) is synchronous, one round trip
//! per request.

mod addr;
mod link;
mod neigh;
mod route;
mod socket;
mod vxlan;

#[cfg(test)]
mod tests;

pub use addr::{AddrInfo, IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_TENTATIVE};
pub use link::VxlanInfo;
pub use link::{Link, VethSpec, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED};
pub use neigh::{FdbEntry, Neighbour, NUD_PERMANENT};
pub use route::{RouteInfo, RouteOpts, RouteSpec};
pub use socket::Rtnl;
pub use vxlan::VxlanSpec;
