//! What one attachment asks of the firewall: its tag, masquerade, hostPort mappings and MAC
//! spoofing guard ([`FirewallPlan`]); `rules` turns it into nf_tables rules.
use std::net::IpAddr;

use ipnet::IpNet;

/// One hostPort mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    pub pod_ip: IpAddr,
    pub container_port: u16,
    pub host_port: u16,
    /// libc::IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP.
    pub protocol: u8,
    /// Only traffic to this host address is mapped; None (or an unspecified address) maps all.
    pub host_ip: Option<IpAddr>,
    /// The pod's subnet: hostPort traffic from it is masqueraded (hairpin), as the reference
    /// portmap does, or a pod's reply to another pod of the bridge would skip the un-DNAT.
    /// None: only the pod reaching itself is.
    pub pod_net: Option<IpNet>,
}

/// Everything one attachment needs from the firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallPlan {
    /// Opaque attachment tag, at most `TAG_MAX` bytes; every rule carries it as its comment.
    pub tag: String,
    /// ipMasq: (pod IP, pod subnet).
    pub masq: Vec<(IpAddr, ipnet::IpNet)>,
    pub port_maps: Vec<PortMap>,
    /// (host-side veth name, the pod interface's MAC): drop frames from that port with
    /// another source MAC.
    pub mac_spoof: Option<(String, [u8; 6])>,
}
