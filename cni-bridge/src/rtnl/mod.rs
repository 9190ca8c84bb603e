//! rtnetlink: links, addresses and routes in the namespace the socket was opened in.
//! Requests are built by hand on the shared netlink layer; each is one round trip.

mod addr;
mod link;
mod route;

use crate::netlink::{NlError, NlSocket};

pub use addr::{AddrInfo, IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_TENTATIVE};
pub use link::{Link, VethSpec, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED};
pub use route::RouteSpec;

pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
pub(crate) const RTM_GETLINK: u16 = 18;
pub(crate) const RTM_SETLINK: u16 = 19;
pub(crate) const RTM_NEWADDR: u16 = 20;
pub(crate) const RTM_DELADDR: u16 = 21;
pub(crate) const RTM_GETADDR: u16 = 22;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_GETROUTE: u16 = 26;

/// A route-netlink socket bound to one network namespace.
pub struct Rtnl {
    sock: NlSocket,
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace. Open it on a thread inside a pod's
    /// namespace (see `podnet_netns::NetNs::run`) to configure that pod from any thread.
    pub fn new() -> Result<Rtnl, NlError> {
        NlSocket::new(libc::NETLINK_ROUTE)
            .map(|sock| Rtnl { sock })
            .map_err(|e| NlError { errno: e.raw_os_error().unwrap_or(libc::EIO), ext: None })
    }
}

impl Rtnl {
    /// Subscribes this socket to an rtnetlink multicast group.
    pub fn subscribe(&mut self, group: u32) -> Result<(), NlError> {
        self.sock.join_group(group)
    }

    /// Waits for a notification of a subscribed group (see [`Rtnl::subscribe`]).
    pub fn wait_event(&mut self, timeout: std::time::Duration) -> Result<bool, NlError> {
        self.sock.wait_notification(timeout)
    }
}

fn family_of(ip: &std::net::IpAddr) -> u8 {
    match ip {
        std::net::IpAddr::V4(_) => libc::AF_INET as u8,
        std::net::IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: &std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podnet_netns::NetNs;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    #[ignore = "needs root"]
    fn bridge_veth_addr_route_in_namespaces() {
        let dir = std::env::temp_dir().join(format!("podnet-rtnl-{}", std::process::id()));
        let node = NetNs::create("node", Some(&dir)).unwrap();
        let pod = NetNs::create("pod", Some(&dir)).unwrap();
        let res = node.run(|| {
            let mut nl = Rtnl::new().unwrap();
            nl.create_bridge("br-t", [2, 0, 0, 0, 0, 1], Some(1400), false, false).unwrap();
            let br = nl.link_by_name("br-t").unwrap().unwrap();
            assert_eq!(br.kind.as_deref(), Some("bridge"));
            assert_eq!(br.mtu, 1400);
            assert!(br.is_up());
            nl.create_veth(&VethSpec {
                host_name: "vh0",
                host_mac: [2, 0, 0, 0, 0, 2],
                peer_name: "eth0",
                peer_mac: [2, 0, 0, 0, 0, 3],
                peer_netns: pod.as_fd().as_raw_fd(),
                mtu: Some(1400),
                master: Some(br.index),
                alias: None,
            })
            .unwrap();
            let vh = nl.link_by_name("vh0").unwrap().unwrap();
            assert_eq!(vh.master, Some(br.index));
            nl.set_bridge_port(vh.index, true, false).unwrap();
            nl.add_addr(br.index, "10.9.0.1/24".parse().unwrap(), true).unwrap();
            nl.add_addr(br.index, "fd00:9::1/64".parse().unwrap(), true).unwrap();
            let addrs = nl.addrs(br.index, None).unwrap();
            assert!(addrs.iter().any(|a| a.addr.to_string() == "10.9.0.1/24"), "{addrs:?}");
            assert!(addrs.iter().any(|a| a.addr.to_string() == "fd00:9::1/64"), "{addrs:?}");
            assert!(nl.add_addr(br.index, "10.9.0.1/24".parse().unwrap(), true).unwrap_err().is(libc::EEXIST));
            assert!(nl.delete_link_by_name("vh0").unwrap());
            assert!(!nl.delete_link_by_name("vh0").unwrap());
        });
        let _ = pod.run(|| {
            let nl = Rtnl::new();
            nl.map(|mut nl| nl.link_by_name("eth0").unwrap())
        });
        drop((node, pod));
        podnet_netns::delete(dir.join("node")).unwrap();
        podnet_netns::delete(dir.join("pod")).unwrap();
        // NetNs::create made the directory a (shared) mount point of itself: undo that too.
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0, "unmount {}", dir.display());
        std::fs::remove_dir(&dir).unwrap();
        res.unwrap();
    }
}
