//! VXLAN links: one VNI, a local VTEP address, a UDP destination port, learning off (the
//! forwarding entries are written explicitly, see `neigh.rs`), optionally over one device.

use std::net::IpAddr;

use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::AddressFamily;

use super::link::link_msg;
use super::socket::Rtnl;
use crate::netlink::NlError;

/// The VXLAN link to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    /// The VNI: 24 bits (the kernel refuses 2^24 and above with ERANGE).
    pub vni: u32,
    /// The local VTEP address, the tunnel's source (IFLA_VXLAN_LOCAL or LOCAL6).
    pub local: Option<IpAddr>,
    /// The UDP destination port (4789 is IANA's; the kernel's default is 8472).
    pub port: u16,
    /// The underlying device tunnel packets leave by (IFLA_VXLAN_LINK).
    pub underlay: Option<u32>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

impl Rtnl {
    /// Creates a VXLAN link, up, with learning off. Fails with EEXIST if the name is taken.
    pub fn create_vxlan(&mut self, spec: &VxlanSpec<'_>) -> Result<(), NlError> {
        let up = libc::IFF_UP as u32;
        let mut m = link_msg(AddressFamily::Unspec, 0, up, up);
        m.attributes.push(LinkAttribute::IfName(spec.name.to_owned()));
        if let Some(mac) = spec.mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = spec.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut data = vec![InfoVxlan::Id(spec.vni), InfoVxlan::Port(spec.port), InfoVxlan::Learning(false)];
        match spec.local {
            Some(IpAddr::V4(ip)) => data.push(InfoVxlan::Local(ip)),
            Some(IpAddr::V6(ip)) => data.push(InfoVxlan::Local6(ip)),
            None => {}
        }
        if let Some(dev) = spec.underlay {
            data.push(InfoVxlan::Link(dev));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.new_link(m)
    }
}
