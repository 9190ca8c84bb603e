//! Neighbour entries (ARP/NDP, permanent) and bridge forwarding entries (FDB, NTF_SELF: the
//! device's own table, as a VXLAN link keeps one: MAC -> remote VTEP address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::socket::{family_of, Rtnl};
use crate::netlink::NlError;

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<Vec<u8>>,
    /// NUD_* state bits (NUD_PERMANENT is 0x80).
    pub state: u16,
}

/// A forwarding entry of a device's own table (NTF_SELF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: [u8; 6],
    /// For a VXLAN device: the remote VTEP the MAC is behind.
    pub dst: Option<IpAddr>,
    /// NUD_* state bits.
    pub state: u16,
}

pub const NUD_PERMANENT: u16 = 0x80;

fn neigh_msg(family: AddressFamily, index: u32, state: NeighbourState, flags: NeighbourFlags) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = state;
    m.header.flags = flags;
    m.header.kind = RouteType::Unspec;
    m
}

fn create_flags(replace: bool) -> u16 {
    NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL }
}

fn addr_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        NeighbourAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        // AF_BRIDGE messages (the FDB) leave NDA_DST untyped.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(|o| IpAddr::V4(Ipv4Addr::from(o))),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            _ => None,
        },
        _ => None,
    }
}

impl Rtnl {
    /// Adds a permanent neighbour entry `ip -> mac` on link `index`; with `replace` an
    /// existing entry is overwritten, otherwise it fails with EEXIST.
    pub fn add_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6], replace: bool) -> Result<(), NlError> {
        let fam = AddressFamily::from(family_of(&ip));
        let mut m = neigh_msg(fam, index, NeighbourState::Permanent, NeighbourFlags::empty());
        m.attributes.push(NeighbourAttribute::Destination(ip.into()));
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.sock.request(RouteNetlinkMessage::NewNeighbour(m), create_flags(replace)).map(drop)
    }

    /// Deletes the neighbour entry for `ip` on link `index`; Ok(false) when there was none.
    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<bool, NlError> {
        let fam = AddressFamily::from(family_of(&ip));
        let mut m = neigh_msg(fam, index, NeighbourState::None, NeighbourFlags::empty());
        m.attributes.push(NeighbourAttribute::Destination(ip.into()));
        absent_ok(self.sock.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    /// The neighbour entries of link `index`, of one family (`libc::AF_INET`/`AF_INET6`) or
    /// both (`None`).
    pub fn neighbours(&mut self, index: u32, family: Option<u8>) -> Result<Vec<Neighbour>, NlError> {
        // With strict checking a neighbour dump's header carries only the family; the device
        // filter is an NDA_IFINDEX attribute (the FDB dump below takes it in the header).
        let fam = AddressFamily::from(family.unwrap_or(0));
        let mut m = neigh_msg(fam, 0, NeighbourState::None, NeighbourFlags::empty());
        m.attributes.push(NeighbourAttribute::IfIndex(index));
        let mut out = Vec::new();
        for msg in self.sock.request(RouteNetlinkMessage::GetNeighbour(m), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewNeighbour(n) = msg else { continue };
            if n.header.ifindex != index || matches!(n.header.family, AddressFamily::Bridge) {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(d) => ip = addr_ip(d),
                    NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neighbour { index, ip, mac, state: u16::from(n.header.state) });
            }
        }
        Ok(out)
    }

    fn fdb_msg(index: u32, mac: [u8; 6], dst: Option<IpAddr>, state: NeighbourState) -> NeighbourMessage {
        let mut m = neigh_msg(AddressFamily::Bridge, index, state, NeighbourFlags::Own); // NTF_SELF
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(dst) = dst {
            m.attributes.push(NeighbourAttribute::Destination(dst.into()));
        }
        m
    }

    /// Adds a permanent forwarding entry `mac -> dst` to device `index`'s own table
    /// (`bridge fdb add <mac> dev <vxlan> dst <ip> self permanent`); with `replace` an
    /// existing entry for the MAC is overwritten, otherwise it fails with EEXIST.
    pub fn add_fdb(&mut self, index: u32, mac: [u8; 6], dst: Option<IpAddr>, replace: bool) -> Result<(), NlError> {
        let m = Self::fdb_msg(index, mac, dst, NeighbourState::Permanent);
        self.sock.request(RouteNetlinkMessage::NewNeighbour(m), create_flags(replace)).map(drop)
    }

    /// Deletes the forwarding entry `mac` (towards `dst`, for a VXLAN device) of device
    /// `index`; Ok(false) when there was none.
    pub fn del_fdb(&mut self, index: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<bool, NlError> {
        let m = Self::fdb_msg(index, mac, dst, NeighbourState::None);
        absent_ok(self.sock.request(RouteNetlinkMessage::DelNeighbour(m), 0))
    }

    /// The forwarding entries of device `index`'s own table.
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, NlError> {
        let m = neigh_msg(AddressFamily::Bridge, index, NeighbourState::None, NeighbourFlags::empty());
        let mut out = Vec::new();
        for msg in self.sock.request(RouteNetlinkMessage::GetNeighbour(m), NLM_F_DUMP)? {
            let RouteNetlinkMessage::NewNeighbour(n) = msg else { continue };
            if n.header.ifindex != index || !n.header.flags.contains(NeighbourFlags::Own) {
                continue;
            }
            let mut mac = None;
            let mut dst = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
                    NeighbourAttribute::Destination(d) => dst = addr_ip(d),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push(FdbEntry { index, mac, dst, state: u16::from(n.header.state) });
            }
        }
        Ok(out)
    }
}

/// A delete that found nothing to delete: ENOENT from the neighbour tables and the FDB.
fn absent_ok(r: Result<Vec<RouteNetlinkMessage>, NlError>) -> Result<bool, NlError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.is(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
