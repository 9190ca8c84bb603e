//! What this node's kernel should hold for its peers, computed from the leases alone (no
//! netlink here): per peer, the backend used and its route, neighbour and FDB entry.
//!
//! - host-gw: `<peer subnet> via <peer node IP> dev <underlay>`;
//! - vxlan: `<peer subnet> via <peer subnet's network address> dev podnet.<vni> onlink`, a
//!   permanent neighbour `<that address> lladdr <peer VTEP MAC>` and an FDB entry
//!   `<peer VTEP MAC> dst <peer node IP>` on the VXLAN device (learning is off, nothing floods);
//!   the network address is what the peer puts on its own VXLAN device, as flannel does;
//! - auto: host-gw for a peer whose node IP is on this node's L2 network, vxlan otherwise.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::config::{Backend, ClusterSettings};
use crate::lease::{parse_mac, SubnetRecord};

/// How a peer is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Via {
    #[serde(rename = "host-gw")]
    HostGw,
    #[serde(rename = "vxlan")]
    Vxlan,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::HostGw => "host-gw",
            Via::Vxlan => "vxlan",
        }
    }
}

/// A route the agent wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantRoute {
    pub dst: Ipv4Net,
    pub gw: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

/// Everything for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub name: String,
    pub subnet: Ipv4Net,
    pub node_ip: Ipv4Addr,
    pub via: Option<Via>,
    pub route: Option<WantRoute>,
    /// (neighbour IP, MAC) on the VXLAN device.
    pub neigh: Option<(Ipv4Addr, [u8; 6])>,
    /// (MAC, remote VTEP) in the VXLAN device's FDB.
    pub fdb: Option<([u8; 6], Ipv4Addr)>,
    /// Why nothing (or not everything) is planned for this peer.
    pub problem: Option<String>,
}

/// This node's side of the plan.
#[derive(Debug, Clone, Copy)]
pub struct Local<'a> {
    pub name: &'a str,
    pub subnet: Ipv4Net,
    pub node_ip: Ipv4Addr,
    /// The node IP's address with its prefix: the L2 network host-gw peers must be on.
    pub node_net: Ipv4Net,
    pub underlay: u32,
    /// The VXLAN device's index, when the backend has one.
    pub vxlan: Option<u32>,
}

/// The plan for every peer (by subnet), this node's own lease left out.
pub fn plan(settings: &ClusterSettings, me: &Local<'_>, peers: &BTreeMap<Ipv4Net, SubnetRecord>) -> Vec<PeerPlan> {
    peers
        .iter()
        .filter(|(subnet, rec)| **subnet != me.subnet && rec.node != me.name)
        .map(|(subnet, rec)| plan_peer(settings, me, *subnet, rec))
        .collect()
}

fn plan_peer(settings: &ClusterSettings, me: &Local<'_>, subnet: Ipv4Net, rec: &SubnetRecord) -> PeerPlan {
    let mut p = PeerPlan {
        name: rec.node.clone(),
        subnet,
        node_ip: rec.node_ip,
        via: None,
        route: None,
        neigh: None,
        fdb: None,
        problem: None,
    };
    if !settings.cluster_cidr.contains(&subnet) {
        p.problem = Some(format!("subnet {subnet} is outside the cluster CIDR {}", settings.cluster_cidr));
        return p;
    }
    if rec.node_ip == me.node_ip {
        p.problem = Some(format!("claims this node's IP {}", me.node_ip));
        return p;
    }
    let on_l2 = me.node_net.contains(&rec.node_ip);
    let via = match settings.backend {
        Backend::HostGw => Via::HostGw,
        Backend::Vxlan => Via::Vxlan,
        Backend::Auto if on_l2 => Via::HostGw,
        Backend::Auto => Via::Vxlan,
    };
    p.via = Some(via);
    match via {
        Via::HostGw if !on_l2 => {
            p.problem = Some(format!(
                "node IP {} is not on this node's network {}: host-gw cannot reach it (use vxlan or auto)",
                rec.node_ip, me.node_net
            ));
        }
        Via::HostGw => {
            p.route = Some(WantRoute { dst: subnet, gw: rec.node_ip, oif: me.underlay, onlink: false });
        }
        Via::Vxlan => {
            let Some(dev) = me.vxlan else {
                p.problem = Some("this node has no VXLAN device".into());
                return p;
            };
            let Some(mac) = rec.vtep_mac.as_deref().and_then(parse_mac) else {
                p.problem = Some(format!("its record has no valid vtepMAC ({:?})", rec.vtep_mac));
                return p;
            };
            let gw = subnet.network();
            p.route = Some(WantRoute { dst: subnet, gw, oif: dev, onlink: true });
            p.neigh = Some((gw, mac));
            p.fdb = Some((mac, rec.node_ip));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: &str, ip: &str, mac: Option<&str>) -> SubnetRecord {
        SubnetRecord { node: node.into(), node_ip: ip.parse().unwrap(), vtep_mac: mac.map(String::from) }
    }

    fn settings(backend: &str) -> ClusterSettings {
        ClusterSettings::from_flags("10.244.0.0/16", None, Some(backend), None, None).unwrap()
    }

    fn me() -> Local<'static> {
        Local {
            name: "a",
            subnet: "10.244.1.0/24".parse().unwrap(),
            node_ip: "10.99.1.1".parse().unwrap(),
            node_net: "10.99.1.0/24".parse().unwrap(),
            underlay: 2,
            vxlan: Some(9),
        }
    }

    fn peers() -> BTreeMap<Ipv4Net, SubnetRecord> {
        [
            ("10.244.1.0/24", rec("a", "10.99.1.1", Some("02:00:00:00:00:0a"))),
            ("10.244.2.0/24", rec("b", "10.99.1.2", Some("02:00:00:00:00:0b"))),
            ("10.244.3.0/24", rec("c", "10.99.2.3", Some("02:00:00:00:00:0c"))),
        ]
        .into_iter()
        .map(|(s, r)| (s.parse().unwrap(), r))
        .collect()
    }

    #[test]
    fn auto_picks_host_gw_on_the_l2_and_vxlan_across_l3() {
        let p = plan(&settings("auto"), &me(), &peers());
        assert_eq!(p.len(), 2, "own lease left out");
        assert_eq!(p[0].via, Some(Via::HostGw));
        assert_eq!(
            p[0].route,
            Some(WantRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                gw: "10.99.1.2".parse().unwrap(),
                oif: 2,
                onlink: false
            })
        );
        assert_eq!((p[0].neigh, p[0].fdb), (None, None));
        assert_eq!(p[1].via, Some(Via::Vxlan));
        let mac = [2, 0, 0, 0, 0, 0x0c];
        assert_eq!(
            p[1].route,
            Some(WantRoute {
                dst: "10.244.3.0/24".parse().unwrap(),
                gw: "10.244.3.0".parse().unwrap(),
                oif: 9,
                onlink: true
            })
        );
        assert_eq!(p[1].neigh, Some(("10.244.3.0".parse().unwrap(), mac)));
        assert_eq!(p[1].fdb, Some((mac, "10.99.2.3".parse().unwrap())));
        assert!(p.iter().all(|p| p.problem.is_none()));
    }

    #[test]
    fn host_gw_cannot_reach_off_l2_peers_and_says_so() {
        let mut m = me();
        m.vxlan = None;
        let p = plan(&settings("host-gw"), &m, &peers());
        assert!(p[0].route.is_some());
        assert_eq!(p[1].route, None);
        assert!(p[1].problem.as_deref().unwrap().contains("host-gw cannot reach it"), "{:?}", p[1].problem);
    }

    #[test]
    fn vxlan_everywhere_and_bad_records() {
        let mut peers = peers();
        peers.insert("10.244.4.0/24".parse().unwrap(), rec("d", "10.99.1.4", None));
        peers.insert("10.245.0.0/24".parse().unwrap(), rec("e", "10.99.1.5", Some("02:00:00:00:00:0e")));
        peers.insert("10.244.6.0/24".parse().unwrap(), rec("f", "10.99.1.1", Some("02:00:00:00:00:0f")));
        let p = plan(&settings("vxlan"), &me(), &peers);
        let by: BTreeMap<&str, &PeerPlan> = p.iter().map(|p| (p.name.as_str(), p)).collect();
        assert_eq!(by["b"].via, Some(Via::Vxlan));
        assert!(by["b"].route.unwrap().onlink);
        assert!(by["d"].problem.as_deref().unwrap().contains("vtepMAC"));
        assert!(by["e"].problem.as_deref().unwrap().contains("outside the cluster CIDR"));
        assert!(by["f"].problem.as_deref().unwrap().contains("this node's IP"));
        assert!(by["d"].route.is_none() && by["e"].route.is_none() && by["f"].route.is_none());
    }
}
