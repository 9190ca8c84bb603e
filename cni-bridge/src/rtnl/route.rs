//! Routes: the pod's (main table, protocol boot, as `ip route add` makes them) and, for
//! routes a podnet component owns and syncs, ones marked with a protocol value of its own.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::socket::{family_of, Rtnl};
use crate::netlink::NlError;

const RT_TABLE_MAIN: u32 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;

/// A route to add: destination, optional gateway, output link and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

/// How [`Rtnl::add_route_with`] adds a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteOpts {
    /// The route's protocol (RTPROT_*; values above 4 are free for routing daemons), which
    /// [`Rtnl::routes_by_protocol`] filters on.
    pub protocol: u8,
    /// RTNH_F_ONLINK: the gateway is on the link even though no address's subnet covers it
    /// (a remote VTEP's address on a VXLAN device).
    pub onlink: bool,
    /// Replace a route with the same destination (and table, priority) instead of failing
    /// with EEXIST.
    pub replace: bool,
}

impl Default for RouteOpts {
    fn default() -> Self {
        RouteOpts { protocol: RTPROT_BOOT, onlink: false, replace: false }
    }
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    pub table: u32,
    pub protocol: u8,
    pub onlink: bool,
    pub priority: Option<u32>,
}

fn header(family: u8, dst_len: u8, table: u32, protocol: u8, scope: u8, kind: RouteType) -> RouteHeader {
    RouteHeader {
        address_family: AddressFamily::from(family),
        destination_prefix_length: dst_len,
        table: if table < 256 { table as u8 } else { 0 },
        protocol: RouteProtocol::from(protocol),
        scope: RouteScope::from(scope),
        kind,
        ..Default::default()
    }
}

fn unspecified(family: u8) -> IpAddr {
    if family == libc::AF_INET6 as u8 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn parse_route(m: &RouteMessage) -> Option<RouteInfo> {
    let h = &m.header;
    let family = u8::from(h.address_family);
    let mut r = RouteInfo {
        dst: IpNet::new(unspecified(family), 0).ok()?,
        gw: None,
        oif: 0,
        table: h.table as u32,
        protocol: u8::from(h.protocol),
        onlink: h.flags.contains(RouteFlags::Onlink),
        priority: None,
    };
    let mut dst = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => r.gw = route_ip(g),
            RouteAttribute::Oif(i) => r.oif = *i,
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            _ => {}
        }
    }
    r.dst = IpNet::new(dst.unwrap_or(unspecified(family)), h.destination_prefix_length).ok()?;
    Some(r)
}

impl Rtnl {
    pub fn add_route(&mut self, r: &RouteSpec) -> Result<(), NlError> {
        self.add_route_with(r, &RouteOpts::default())
    }

    /// Adds a route with a protocol value, the onlink flag and replace semantics.
    pub fn add_route_with(&mut self, r: &RouteSpec, o: &RouteOpts) -> Result<(), NlError> {
        let fam = family_of(&r.dst.addr());
        let scope = r.scope.unwrap_or(if r.gw.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK });
        let table = r.table.unwrap_or(RT_TABLE_MAIN);
        let mut m = RouteMessage::default();
        m.header = header(fam, r.dst.prefix_len(), table, o.protocol, scope, RouteType::Unicast);
        if o.onlink {
            m.header.flags |= RouteFlags::Onlink;
        }
        if r.dst.prefix_len() > 0 {
            m.attributes.push(RouteAttribute::Destination(r.dst.network().into()));
        }
        if let Some(gw) = r.gw {
            m.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        m.attributes.push(RouteAttribute::Oif(r.oif));
        if let Some(p) = r.priority {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        if table >= 256 {
            m.attributes.push(RouteAttribute::Table(table));
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = r.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(mss) = r.advmss {
            metrics.push(RouteMetric::Advmss(mss));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        let flags = NLM_F_CREATE | if o.replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.sock.request(RouteNetlinkMessage::NewRoute(m), flags).map(drop)
    }

    /// Deletes a route (one [`Rtnl::routes_by_protocol`] returned); Ok(false) when it was gone.
    pub fn del_route(&mut self, r: &RouteInfo) -> Result<bool, NlError> {
        let fam = family_of(&r.dst.addr());
        let mut m = RouteMessage::default();
        // Scope RT_SCOPE_NOWHERE (255) and type unspec match any on a delete.
        m.header = header(fam, r.dst.prefix_len(), r.table, r.protocol, 255, RouteType::Unspec);
        if r.dst.prefix_len() > 0 {
            m.attributes.push(RouteAttribute::Destination(r.dst.network().into()));
        }
        if let Some(gw) = r.gw {
            m.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        if r.oif != 0 {
            m.attributes.push(RouteAttribute::Oif(r.oif));
        }
        if let Some(p) = r.priority {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        if r.table >= 256 {
            m.attributes.push(RouteAttribute::Table(r.table));
        }
        match self.sock.request(RouteNetlinkMessage::DelRoute(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every route of a family, all tables (a dump's header may carry only filters).
    fn route_dump(&mut self, family: u8, protocol: u8) -> Result<Vec<RouteInfo>, NlError> {
        let mut m = RouteMessage::default();
        m.header = header(family, 0, 0, protocol, 0, RouteType::Unspec);
        let msgs = self.sock.request(RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => None,
            })
            .collect())
    }

    /// Routes of the main table for a family: (destination, gateway, output link).
    pub fn routes(&mut self, family: u8) -> Result<Vec<(IpNet, Option<IpAddr>, u32)>, NlError> {
        Ok(self
            .route_dump(family, 0)?
            .into_iter()
            .filter(|r| r.table == RT_TABLE_MAIN)
            .map(|r| (r.dst, r.gw, r.oif))
            .collect())
    }

    /// The routes of a family (`libc::AF_INET`/`AF_INET6`) with protocol `protocol`, in any
    /// table (the kernel filters by protocol; so does this, for kernels that do not).
    pub fn routes_by_protocol(&mut self, family: u8, protocol: u8) -> Result<Vec<RouteInfo>, NlError> {
        Ok(self.route_dump(family, protocol)?.into_iter().filter(|r| r.protocol == protocol).collect())
    }

    /// The output link the kernel would use to reach `ip` (RTM_GETROUTE lookup).
    pub fn route_oif(&mut self, ip: IpAddr) -> Result<Option<u32>, NlError> {
        let fam = family_of(&ip);
        let plen = if ip.is_ipv4() { 32 } else { 128 };
        // A get request must leave table, protocol, scope and type zero: with strict checking
        // (NETLINK_GET_STRICT_CHK) the kernel rejects anything else with EINVAL.
        let mut m = RouteMessage::default();
        m.header = header(fam, plen, 0, 0, 0, RouteType::Unspec);
        m.attributes.push(RouteAttribute::Destination(ip.into()));
        let msgs = self.sock.request(RouteNetlinkMessage::GetRoute(m), 0)?;
        Ok(msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            }),
            _ => None,
        }))
    }
}
