//! The kernel side, over netlink (cni-bridge's `rtnl`): the underlay the node IP is on, the
//! VXLAN device, and the routes, neighbours and FDB entries of a [`PeerPlan`] list.
//!
//! Ownership: a route is podnet's if its protocol is [`RTPROT_PODNET`] (any device); a neighbour
//! or FDB entry is podnet's if it is on podnet's VXLAN device, which the agent alone creates.
//! A reconcile adds what a plan lacks and removes podnet's entries no plan wants; it never
//! replaces or removes anything else (a foreign route to a peer subnet is reported, not
//! overwritten).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use cni_bridge::rtnl::{Link, RouteInfo, RouteOpts, RouteSpec, Rtnl, VxlanSpec, NUD_PERMANENT};
use ipnet::{IpNet, Ipv4Net};

use crate::config::ClusterSettings;
use crate::error::{Error, Errors, Result};
use crate::lease::vtep_mac;
use crate::plan::{PeerPlan, WantRoute};

/// The route protocol podnet's node agent marks its routes with (`ip route show proto 97`).
/// Free in iproute2's `rt_protos` (which names 0-4, 8-16, 18, 42, 99, 186-192); documented in
/// docs/cluster.md.
pub const RTPROT_PODNET: u8 = 97;

const AF_INET: u8 = libc::AF_INET as u8;

/// The link the node IP is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// The node IP with its prefix: the node's L2 network.
    pub net: Ipv4Net,
}

/// What one peer's entries look like in the kernel (`podnet node status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InPlace {
    pub route: bool,
    /// None: the peer's backend has no such entry.
    pub neigh: Option<bool>,
    pub fdb: Option<bool>,
}

pub struct Dataplane {
    rtnl: Rtnl,
    pub underlay: Underlay,
}

fn v4(n: &IpNet) -> Option<Ipv4Net> {
    match n {
        IpNet::V4(n) => Some(*n),
        IpNet::V6(_) => None,
    }
}

/// The main routing table, where the agent's routes go.
const RT_TABLE_MAIN: u32 = 254;

fn route_matches(r: &RouteInfo, w: &WantRoute) -> bool {
    r.table == RT_TABLE_MAIN
        && v4(&r.dst) == Some(w.dst)
        && r.gw == Some(IpAddr::V4(w.gw))
        && r.oif == w.oif
        && r.onlink == w.onlink
}

impl Dataplane {
    /// Opens rtnetlink in the calling thread's namespace and finds the node IP's link.
    pub fn open(node_ip: Ipv4Addr) -> Result<Dataplane> {
        let mut rtnl = Rtnl::new().map_err(|e| Error::nl("open rtnetlink", e))?;
        let underlay = find_underlay(&mut rtnl, node_ip)?;
        Ok(Dataplane { rtnl, underlay })
    }

    /// The VXLAN device of the cluster's VNI, up, with this node's VTEP settings and its
    /// subnet's network address (the source of node-to-remote-pod traffic, the next hop peers
    /// use). An existing device of that name with other tunnel settings is replaced (the name
    /// is podnet's). Returns its index and MAC.
    pub fn ensure_vxlan(&mut self, s: &ClusterSettings, node: &str, subnet: Ipv4Net) -> Result<(u32, [u8; 6])> {
        let name = s.vxlan_device();
        let mac = vtep_mac(node, s.vni);
        let want_mtu = s.pod_mtu(self.underlay.mtu);
        let mut link = self.link(&name)?;
        if let Some(l) = &link {
            if l.kind.as_deref() != Some("vxlan") {
                return Err(Error::Other(format!(
                    "a link named {name} exists and is not a VXLAN device ({}): podnet will not replace it",
                    l.kind.as_deref().unwrap_or("unknown kind")
                )));
            }
            let v = l.vxlan.clone().unwrap_or_default();
            let same = v.vni == Some(s.vni)
                && v.local == Some(IpAddr::V4(self.underlay_ip()))
                && v.port == Some(s.port)
                && v.learning == Some(false)
                && l.mac == mac
                && l.mtu == want_mtu;
            if !same {
                self.rtnl.delete_link_by_name(&name).map_err(|e| Error::nl(format!("replace {name}: delete it"), e))?;
                link = None;
            }
        }
        let link = match link {
            Some(l) => l,
            None => {
                let spec = VxlanSpec {
                    name: &name,
                    vni: s.vni,
                    local: Some(IpAddr::V4(self.underlay_ip())),
                    port: s.port,
                    underlay: Some(self.underlay.index),
                    mtu: Some(want_mtu),
                    mac: Some(mac),
                };
                self.rtnl.create_vxlan(&spec).map_err(|e| Error::nl(format!("create VXLAN device {name}"), e))?;
                self.link(&name)?.ok_or_else(|| Error::Other(format!("{name} vanished after it was created")))?
            }
        };
        if !link.is_up() {
            self.rtnl.set_up(link.index).map_err(|e| Error::nl(format!("set {name} up"), e))?;
        }
        let want = IpNet::V4(Ipv4Net::new(subnet.network(), 32).map_err(|e| Error::Other(e.to_string()))?);
        let addrs =
            self.rtnl.addrs(link.index, Some(AF_INET)).map_err(|e| Error::nl(format!("list {name}'s addresses"), e))?;
        for a in addrs.iter().filter(|a| a.addr != want) {
            self.rtnl
                .del_addr(link.index, a.addr)
                .map_err(|e| Error::nl(format!("remove {} from {name}", a.addr), e))?;
        }
        if !addrs.iter().any(|a| a.addr == want) {
            self.rtnl.add_addr(link.index, want, false).map_err(|e| Error::nl(format!("add {want} to {name}"), e))?;
        }
        Ok((link.index, mac))
    }

    fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay.net.addr()
    }

    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.rtnl.link_by_name(name).map_err(|e| Error::nl(format!("look up {name}"), e))
    }

    /// Makes podnet's routes, neighbours and FDB entries exactly those of `plans`; keeps going
    /// past a failure and reports all of them.
    pub fn reconcile(&mut self, plans: &[PeerPlan], vxlan: Option<u32>) -> Result<()> {
        let mut errs = Errors::new();
        let want: BTreeMap<Ipv4Net, WantRoute> = plans.iter().filter_map(|p| p.route.map(|r| (r.dst, r))).collect();
        let have = self.podnet_routes()?;
        for r in &have {
            let keep = v4(&r.dst).and_then(|d| want.get(&d)).is_some_and(|w| route_matches(r, w));
            if !keep {
                errs.push(
                    self.rtnl.del_route(r).map(drop).map_err(|e| Error::nl(format!("remove route to {}", r.dst), e)),
                );
            }
        }
        for w in want.values() {
            if have.iter().any(|r| route_matches(r, w)) {
                continue;
            }
            // A route of ours that differed was deleted above: this one is added, never a
            // replace, so anyone else's route to the destination stays (EEXIST says so).
            let spec = RouteSpec {
                dst: IpNet::V4(w.dst),
                gw: Some(IpAddr::V4(w.gw)),
                oif: w.oif,
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            };
            let opts = RouteOpts { protocol: RTPROT_PODNET, onlink: w.onlink, replace: false };
            errs.push(self.rtnl.add_route_with(&spec, &opts).map_err(|e| {
                let what = if e.is(libc::EEXIST) {
                    format!("add route {} via {}: a route to it not made by podnet is in the way", w.dst, w.gw)
                } else {
                    format!("add route {} via {}", w.dst, w.gw)
                };
                Error::nl(what, e)
            }));
        }
        if let Some(dev) = vxlan {
            errs.push(self.reconcile_vxlan(dev, plans));
        }
        errs.into_result()
    }

    fn reconcile_vxlan(&mut self, dev: u32, plans: &[PeerPlan]) -> Result<()> {
        let mut errs = Errors::new();
        let want_n: BTreeSet<(Ipv4Addr, [u8; 6])> = plans.iter().filter_map(|p| p.neigh).collect();
        let have_n = self.rtnl.neighbours(dev, Some(AF_INET)).map_err(|e| Error::nl("list the VXLAN neighbours", e))?;
        let mut present = BTreeSet::new();
        for n in &have_n {
            let IpAddr::V4(ip) = n.ip else { continue };
            let mac = n.mac.as_deref().and_then(|m| <[u8; 6]>::try_from(m).ok());
            match mac {
                Some(mac) if want_n.contains(&(ip, mac)) && n.state & NUD_PERMANENT != 0 => {
                    present.insert((ip, mac));
                }
                _ => errs.push(
                    self.rtnl
                        .del_neighbour(dev, n.ip)
                        .map(drop)
                        .map_err(|e| Error::nl(format!("remove neighbour {ip}"), e)),
                ),
            }
        }
        for (ip, mac) in want_n.difference(&present) {
            errs.push(
                self.rtnl
                    .add_neighbour(dev, IpAddr::V4(*ip), *mac, true)
                    .map_err(|e| Error::nl(format!("add neighbour {ip}"), e)),
            );
        }
        let want_f: BTreeSet<([u8; 6], Ipv4Addr)> = plans.iter().filter_map(|p| p.fdb).collect();
        let have_f = self.rtnl.fdb(dev).map_err(|e| Error::nl("list the VXLAN FDB", e))?;
        let mut present = BTreeSet::new();
        for f in &have_f {
            match f.dst {
                Some(IpAddr::V4(dst)) if want_f.contains(&(f.mac, dst)) => {
                    present.insert((f.mac, dst));
                }
                dst => errs.push(
                    self.rtnl
                        .del_fdb(dev, f.mac, dst)
                        .map(drop)
                        .map_err(|e| Error::nl(format!("remove FDB entry {}", crate::lease::format_mac(f.mac)), e)),
                ),
            }
        }
        for (mac, dst) in want_f.difference(&present) {
            errs.push(
                self.rtnl
                    .add_fdb(dev, *mac, Some(IpAddr::V4(*dst)), true)
                    .map_err(|e| Error::nl(format!("add FDB entry {} dst {dst}", crate::lease::format_mac(*mac)), e)),
            );
        }
        errs.into_result()
    }

    fn podnet_routes(&mut self) -> Result<Vec<RouteInfo>> {
        self.rtnl.routes_by_protocol(AF_INET, RTPROT_PODNET).map_err(|e| Error::nl("list podnet's routes", e))
    }

    /// Whether each plan's entries are in the kernel.
    pub fn in_place(&mut self, plans: &[PeerPlan], vxlan: Option<u32>) -> Result<Vec<InPlace>> {
        let routes = self.podnet_routes()?;
        let (neigh, fdb) = match vxlan {
            Some(dev) => (
                self.rtnl.neighbours(dev, Some(AF_INET)).map_err(|e| Error::nl("list the VXLAN neighbours", e))?,
                self.rtnl.fdb(dev).map_err(|e| Error::nl("list the VXLAN FDB", e))?,
            ),
            None => (Vec::new(), Vec::new()),
        };
        Ok(plans
            .iter()
            .map(|p| InPlace {
                route: p.route.is_some_and(|w| routes.iter().any(|r| route_matches(r, &w))),
                neigh: p.neigh.map(|(ip, mac)| {
                    neigh.iter().any(|n| {
                        n.ip == IpAddr::V4(ip) && n.mac.as_deref() == Some(&mac[..]) && n.state & NUD_PERMANENT != 0
                    })
                }),
                fdb: p.fdb.map(|(mac, dst)| fdb.iter().any(|f| f.mac == mac && f.dst == Some(IpAddr::V4(dst)))),
            })
            .collect())
    }
}

/// Removes every route of podnet's and the VXLAN device `name` (with its neighbours and FDB),
/// or with no name every VXLAN device named `podnet.<vni>`, in this namespace, keeping going
/// past failures. Needs no underlay: a node whose uplink is already gone can still be cleaned.
/// A link of that name that is not a VXLAN device stays.
pub fn remove_all(vxlan_name: Option<&str>) -> Result<()> {
    let mut rtnl = Rtnl::new().map_err(|e| Error::nl("open rtnetlink", e))?;
    let mut errs = Errors::new();
    match rtnl.routes_by_protocol(AF_INET, RTPROT_PODNET) {
        Ok(routes) => {
            for r in &routes {
                errs.push(rtnl.del_route(r).map(drop).map_err(|e| Error::nl(format!("remove route to {}", r.dst), e)));
            }
        }
        Err(e) => errs.add(Error::nl("list podnet's routes", e)),
    }
    let names: Vec<String> = match vxlan_name {
        Some(n) => vec![n.to_string()],
        None => match rtnl.links() {
            Ok(links) => links
                .into_iter()
                .filter(|l| {
                    l.kind.as_deref() == Some("vxlan")
                        && l.name
                            .strip_prefix("podnet.")
                            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|l| l.name)
                .collect(),
            Err(e) => {
                errs.add(Error::nl("list links", e));
                Vec::new()
            }
        },
    };
    for name in &names {
        let name = name.as_str();
        match rtnl.link_by_name(name) {
            Ok(Some(l)) if l.kind.as_deref() == Some("vxlan") => {
                errs.push(rtnl.delete_link_by_name(name).map(drop).map_err(|e| Error::nl(format!("delete {name}"), e)))
            }
            Ok(Some(l)) => errs.add(Error::Other(format!(
                "{name} is not a VXLAN device ({}): left alone",
                l.kind.as_deref().unwrap_or("unknown kind")
            ))),
            Ok(None) => {}
            Err(e) => errs.add(Error::nl(format!("look up {name}"), e)),
        }
    }
    errs.into_result()
}

fn find_underlay(rtnl: &mut Rtnl, node_ip: Ipv4Addr) -> Result<Underlay> {
    let addrs = rtnl.addrs(0, Some(AF_INET)).map_err(|e| Error::nl("list this node's addresses", e))?;
    let a = addrs.iter().find(|a| a.addr.addr() == IpAddr::V4(node_ip)).ok_or_else(|| {
        Error::config("node_ip", format!("{node_ip} is not an address of this node (no interface has it)"))
    })?;
    let net = match a.addr {
        IpNet::V4(n) => n,
        IpNet::V6(_) => return Err(Error::config("node_ip", "not IPv4")),
    };
    let link = rtnl
        .link_by_index(a.index)
        .map_err(|e| Error::nl(format!("look up link {}", a.index), e))?
        .ok_or_else(|| Error::Other(format!("the link of {node_ip} (index {}) vanished", a.index)))?;
    Ok(Underlay { index: link.index, name: link.name, mtu: link.mtu, net })
}

/// Turns IPv4 forwarding on in this namespace: a node routes its pods' traffic.
pub fn enable_forwarding() -> Result<()> {
    cni_bridge::sysctl::ensure("net.ipv4.ip_forward", "1").map_err(|e| Error::Other(e.msg))
}
