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

use crate::netlink::NlError;
use socket::RtSocket;

pub use addr::{AddrInfo, IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_TENTATIVE};
pub use link::VxlanInfo;
pub use link::{Link, VethSpec, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED};
pub use neigh::{FdbEntry, Neighbour, NUD_PERMANENT};
pub use route::{RouteInfo, RouteOpts, RouteSpec};
pub use vxlan::VxlanSpec;

/// A route-netlink socket bound to one network namespace.
pub struct Rtnl {
    sock: RtSocket,
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

fn family_of(ip: &std::net::IpAddr) -> u8 {
    match ip {
        std::net::IpAddr::V4(_) => libc::AF_INET as u8,
        std::net::IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}
