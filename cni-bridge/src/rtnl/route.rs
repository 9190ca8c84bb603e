//! Routes in the main table.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{family_of, ip_bytes, ip_from_bytes, Rtnl, RTM_GETROUTE, RTM_NEWROUTE};
use crate::netlink::{attrs, MsgBuilder, NlError, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_METRICS: u16 = 8;
const RTA_TABLE: u16 = 15;
const RTAX_MTU: u16 = 2;
const RTAX_ADVMSS: u16 = 8;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

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

fn rtmsg(family: u8, dst_len: u8, table: u8, scope: u8) -> [u8; 12] {
    [family, dst_len, 0, 0, table, RTPROT_BOOT, scope, RTN_UNICAST, 0, 0, 0, 0]
}

impl Rtnl {
    pub fn add_route(&mut self, r: &RouteSpec) -> Result<(), NlError> {
        let fam = family_of(&r.dst.addr());
        let scope = r.scope.unwrap_or(if r.gw.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK });
        let table = r.table.unwrap_or(RT_TABLE_MAIN as u32);
        let mut m = MsgBuilder::new(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL).header(&rtmsg(
            fam,
            r.dst.prefix_len(),
            if table < 256 { table as u8 } else { 0 },
            scope,
        ));
        if r.dst.prefix_len() > 0 {
            m.attr(RTA_DST, &ip_bytes(&r.dst.network()));
        }
        if let Some(gw) = &r.gw {
            m.attr(RTA_GATEWAY, &ip_bytes(gw));
        }
        m.attr_u32(RTA_OIF, r.oif);
        if let Some(p) = r.priority {
            m.attr_u32(RTA_PRIORITY, p);
        }
        if table >= 256 {
            m.attr_u32(RTA_TABLE, table);
        }
        if r.mtu.is_some() || r.advmss.is_some() {
            let n = m.nest_start(RTA_METRICS);
            if let Some(mtu) = r.mtu {
                m.attr_u32(RTAX_MTU, mtu);
            }
            if let Some(mss) = r.advmss {
                m.attr_u32(RTAX_ADVMSS, mss);
            }
            m.nest_end(n);
        }
        self.sock.request(m).map(drop)
    }

    /// Routes of the main table for a family: (destination, gateway, output link).
    pub fn routes(&mut self, family: u8) -> Result<Vec<(IpNet, Option<IpAddr>, u32)>, NlError> {
        let m = MsgBuilder::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP).header(&rtmsg(family, 0, 0, 0));
        let mut out = Vec::new();
        for msg in self.sock.request(m)? {
            if msg.msg_type != RTM_NEWROUTE || msg.body.len() < 12 || msg.body[4] != RT_TABLE_MAIN {
                continue;
            }
            let dst_len = msg.body[1];
            let (mut dst, mut gw, mut oif) = (None, None, 0);
            for a in attrs(&msg.body[12..]) {
                match a.ty {
                    RTA_DST => dst = ip_from_bytes(a.payload),
                    RTA_GATEWAY => gw = ip_from_bytes(a.payload),
                    RTA_OIF => oif = a.u32().unwrap_or(0),
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(if family == libc::AF_INET6 as u8 {
                IpAddr::from([0u16; 8])
            } else {
                IpAddr::from([0u8; 4])
            });
            if let Ok(net) = IpNet::new(dst, dst_len) {
                out.push((net, gw, oif));
            }
        }
        Ok(out)
    }

    /// The output link the kernel would use to reach `ip` (RTM_GETROUTE lookup).
    pub fn route_oif(&mut self, ip: IpAddr) -> Result<Option<u32>, NlError> {
        let fam = family_of(&ip);
        let plen = if ip.is_ipv4() { 32 } else { 128 };
        // A get request must leave table, protocol, scope and type zero: with strict checking
        // (NETLINK_GET_STRICT_CHK) the kernel rejects anything else with EINVAL.
        let mut m = MsgBuilder::new(RTM_GETROUTE, NLM_F_REQUEST).header(&[fam, plen, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m.attr(RTA_DST, &ip_bytes(&ip));
        let msgs = self.sock.request(m)?;
        Ok(msgs
            .iter()
            .filter(|m| m.msg_type == RTM_NEWROUTE && m.body.len() >= 12)
            .flat_map(|m| attrs(&m.body[12..]).filter(|a| a.ty == RTA_OIF).filter_map(|a| a.u32()).collect::<Vec<_>>())
            .next())
    }
}
