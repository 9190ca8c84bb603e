//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::socket::{family_of, Rtnl};
use crate::netlink::NlError;

/// Skip duplicate address detection: the address is usable at once, no tentative wait.
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_DADFAILED: u32 = 0x08;

fn addr_msg(family: u8, prefix: u8, index: u32) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::from(family);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m
}

/// An address as the kernel reports it, with its flags (tentative, dadfailed ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: IpNet,
    pub flags: u32,
}

/// An address message (a dump entry or a notification) of link `index` (0: any link).
fn parse_addr(m: &AddressMessage, index: u32) -> Option<AddrInfo> {
    if index != 0 && m.header.index != index {
        return None;
    }
    let mut flags = m.header.flags.bits() as u32;
    let (mut ip, mut local): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(a) => ip = Some(*a),
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    let addr = IpNet::new(local.or(ip)?, m.header.prefix_len).ok()?;
    Some(AddrInfo { index: m.header.index, addr, flags })
}

impl Rtnl {
    /// Adds `addr` (an IP with its subnet prefix) to a link. IPv4 gets its broadcast address.
    pub fn add_addr(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<(), NlError> {
        let ip = addr.addr();
        let mut m = addr_msg(family_of(&ip), addr.prefix_len(), index);
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if let IpNet::V4(v4) = addr {
            if v4.prefix_len() < 31 {
                m.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        if nodad && ip.is_ipv6() {
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.sock.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<(), NlError> {
        let ip = addr.addr();
        let mut m = addr_msg(family_of(&ip), addr.prefix_len(), index);
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        self.sock.request(RouteNetlinkMessage::DelAddress(m), 0).map(drop)
    }

    /// Addresses of one link (or of all links with `index` 0), of one family or both (`None`).
    pub fn addrs(&mut self, index: u32, family: Option<u8>) -> Result<Vec<AddrInfo>, NlError> {
        // With strict checking on (the socket enables it) the kernel filters the dump by index.
        let m = addr_msg(family.unwrap_or(0), 0, index);
        let msgs = self.sock.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(a, index),
                _ => None,
            })
            .collect())
    }
}
