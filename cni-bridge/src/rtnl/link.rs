//! Links: bridges, veth pairs (peer created directly in the pod namespace), VLANs, bridge ports.

use std::os::fd::RawFd;

use super::{Rtnl, RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK, RTM_SETLINK};
use crate::netlink::{attrs, MsgBuilder, NlError, RecvMsg, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_IFALIAS: u16 = 20;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_AF_SPEC: u16 = 26;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BR_VLAN_FILTERING: u16 = 7;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const IFLA_BRIDGE_FLAGS: u16 = 0;
const IFLA_BRIDGE_VLAN_INFO: u16 = 2;
const BRIDGE_FLAGS_SELF: u16 = 2;
pub const BRIDGE_VLAN_INFO_PVID: u16 = 2;
pub const BRIDGE_VLAN_INFO_UNTAGGED: u16 = 4;
const IFF_UP: u32 = libc::IFF_UP as u32;
const IFF_PROMISC: u32 = libc::IFF_PROMISC as u32;

/// What the engine needs to know of a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub master: Option<u32>,
    pub flags: u32,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// The link's alias (`ip link set ... alias`): podnet stamps its host veths with the
    /// attachment's tag, so GC can tell its own from other networks'.
    pub alias: Option<String>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
    pub fn is_promisc(&self) -> bool {
        self.flags & IFF_PROMISC != 0
    }
}

/// A veth pair: the host end stays here, the peer is created directly inside the pod's
/// namespace under its final name, in a single request. The host end comes up with it.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: RawFd,
    pub mtu: Option<u32>,
    pub master: Option<u32>,
    pub alias: Option<&'a str>,
}

fn ifinfomsg(family: u8, index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

fn parse_link(m: &RecvMsg) -> Option<Link> {
    if m.msg_type != RTM_NEWLINK || m.body.len() < 16 {
        return None;
    }
    let index = u32::from_ne_bytes(m.body[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(m.body[8..12].try_into().ok()?);
    let mut link = Link { index, flags, ..Default::default() };
    for a in attrs(&m.body[16..]) {
        match a.ty {
            IFLA_IFNAME => link.name = a.str().unwrap_or_default().to_owned(),
            IFLA_ADDRESS => link.mac = a.payload.to_vec(),
            IFLA_MTU => link.mtu = a.u32().unwrap_or_default(),
            IFLA_MASTER => link.master = a.u32(),
            IFLA_LINK => link.peer_index = a.u32(),
            IFLA_IFALIAS => link.alias = a.str().map(str::to_owned),
            IFLA_LINKINFO => {
                link.kind = a.nested().find(|i| i.ty == IFLA_INFO_KIND).and_then(|i| i.str()).map(str::to_owned)
            }
            _ => {}
        }
    }
    Some(link)
}

impl Rtnl {
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let mut m = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST).header(&ifinfomsg(0, 0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.sock.request(m) {
            Ok(msgs) => Ok(msgs.iter().find_map(parse_link)),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NlError> {
        let m = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST).header(&ifinfomsg(0, index, 0, 0));
        match self.sock.request(m) {
            Ok(msgs) => Ok(msgs.iter().find_map(parse_link)),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of the namespace (one dump).
    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let m = MsgBuilder::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP).header(&ifinfomsg(0, 0, 0, 0));
        Ok(self.sock.request(m)?.iter().filter_map(parse_link).collect())
    }

    /// Creates a bridge, up. Fails with EEXIST if the name is taken.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mac: [u8; 6],
        mtu: Option<u32>,
        vlan_filtering: bool,
        promisc: bool,
    ) -> Result<(), NlError> {
        let flags = IFF_UP | if promisc { IFF_PROMISC } else { 0 };
        let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL)
            .header(&ifinfomsg(0, 0, flags, flags));
        m.attr_str(IFLA_IFNAME, name);
        m.attr(IFLA_ADDRESS, &mac);
        if let Some(mtu) = mtu {
            m.attr_u32(IFLA_MTU, mtu);
        }
        let info = m.nest_start(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "bridge");
        if vlan_filtering {
            let data = m.nest_start(IFLA_INFO_DATA);
            m.attr_u8(IFLA_BR_VLAN_FILTERING, 1);
            m.nest_end(data);
        }
        m.nest_end(info);
        self.sock.request(m).map(drop)
    }

    /// Creates a veth pair in one request (see [`VethSpec`]).
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), NlError> {
        let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL)
            .header(&ifinfomsg(0, 0, IFF_UP, IFF_UP));
        m.attr_str(IFLA_IFNAME, spec.host_name);
        m.attr(IFLA_ADDRESS, &spec.host_mac);
        if let Some(mtu) = spec.mtu {
            m.attr_u32(IFLA_MTU, mtu);
        }
        if let Some(master) = spec.master {
            m.attr_u32(IFLA_MASTER, master);
        }
        if let Some(alias) = spec.alias {
            m.attr_str(IFLA_IFALIAS, alias);
        }
        let info = m.nest_start(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "veth");
        let data = m.nest_start(IFLA_INFO_DATA);
        // The peer is an ifinfomsg followed by its own attributes, inside VETH_INFO_PEER.
        let peer = m.nest_start(VETH_INFO_PEER);
        // The peer cannot be brought up here: the kernel configures it before the pair is
        // linked and veth_open() then fails with ENOTCONN. The caller sets it up in the pod.
        let hdr = ifinfomsg(0, 0, 0, 0);
        let mut tmp = MsgBuilder::new(0, 0).header(&hdr);
        tmp.attr_str(IFLA_IFNAME, spec.peer_name);
        tmp.attr(IFLA_ADDRESS, &spec.peer_mac);
        tmp.attr_u32(IFLA_NET_NS_FD, spec.peer_netns as u32);
        if let Some(mtu) = spec.mtu {
            tmp.attr_u32(IFLA_MTU, mtu);
        }
        let peer_bytes = tmp.finish(0);
        m.raw(&peer_bytes[crate::netlink::NLMSG_HDRLEN..]);
        m.nest_end(peer);
        m.nest_end(data);
        m.nest_end(info);
        self.sock.request(m).map(drop)
    }

    /// Creates a VLAN sub-interface `name` with id `vid` on `parent`, up.
    pub fn create_vlan(&mut self, name: &str, parent: u32, vid: u16, mtu: Option<u32>) -> Result<(), NlError> {
        let mut m = MsgBuilder::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL)
            .header(&ifinfomsg(0, 0, IFF_UP, IFF_UP));
        m.attr_str(IFLA_IFNAME, name);
        m.attr_u32(IFLA_LINK, parent);
        if let Some(mtu) = mtu {
            m.attr_u32(IFLA_MTU, mtu);
        }
        let info = m.nest_start(IFLA_LINKINFO);
        m.attr_str(IFLA_INFO_KIND, "vlan");
        let data = m.nest_start(IFLA_INFO_DATA);
        m.attr_u16(IFLA_VLAN_ID, vid);
        m.nest_end(data);
        m.nest_end(info);
        self.sock.request(m).map(drop)
    }

    /// Sets or clears interface flags (IFF_UP, IFF_PROMISC) on a link.
    pub fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), NlError> {
        let m = MsgBuilder::new(RTM_SETLINK, NLM_F_REQUEST).header(&ifinfomsg(0, index, flags, mask));
        self.sock.request(m).map(drop)
    }

    /// Sets the link's IPv4 `arp_notify` (gratuitous ARP when it comes up, so neighbours
    /// forget a reused IP's old MAC). Must precede the IFF_UP request: the kernel applies
    /// flags before per-family settings within one request.
    pub fn set_arp_notify(&mut self, index: u32) -> Result<(), NlError> {
        const IFLA_INET_CONF: u16 = 1;
        const IPV4_DEVCONF_ARP_NOTIFY: u16 = 22;
        let mut m = MsgBuilder::new(RTM_SETLINK, NLM_F_REQUEST).header(&ifinfomsg(0, index, 0, 0));
        let spec = m.nest_start(IFLA_AF_SPEC);
        let inet = m.nest_start(libc::AF_INET as u16);
        let conf = m.nest_start(IFLA_INET_CONF);
        m.attr_u32(IPV4_DEVCONF_ARP_NOTIFY, 1);
        m.nest_end(conf);
        m.nest_end(inet);
        m.nest_end(spec);
        self.sock.request(m).map(drop)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NlError> {
        self.set_flags(index, IFF_UP, IFF_UP)
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        self.set_flags(index, if on { IFF_PROMISC } else { 0 }, IFF_PROMISC)
    }

    /// Port flags of a bridge port, in one request: hairpin mode (reflective relay back out
    /// the port a frame came in on) and isolation (isolated ports only reach non-isolated
    /// ones, `bridge link set dev <port> isolated on`).
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<(), NlError> {
        let mut m = MsgBuilder::new(RTM_SETLINK, NLM_F_REQUEST).header(&ifinfomsg(libc::AF_BRIDGE as u8, index, 0, 0));
        let p = m.nest_start(IFLA_PROTINFO);
        m.attr_u8(IFLA_BRPORT_MODE, hairpin as u8);
        m.attr_u8(IFLA_BRPORT_ISOLATED, isolated as u8);
        m.nest_end(p);
        self.sock.request(m).map(drop)
    }

    /// Adds (or with `del`, removes) VLAN `vid` on a bridge port, or on the bridge itself
    /// when `bridge_self` is set (`bridge vlan add ... self`).
    pub fn bridge_vlan(
        &mut self,
        index: u32,
        vid: u16,
        vflags: u16,
        bridge_self: bool,
        del: bool,
    ) -> Result<(), NlError> {
        let ty = if del { RTM_DELLINK } else { RTM_SETLINK };
        let mut m = MsgBuilder::new(ty, NLM_F_REQUEST).header(&ifinfomsg(libc::AF_BRIDGE as u8, index, 0, 0));
        let spec = m.nest_start(IFLA_AF_SPEC);
        if bridge_self {
            m.attr_u16(IFLA_BRIDGE_FLAGS, BRIDGE_FLAGS_SELF);
        }
        let mut info = [0u8; 4];
        info[0..2].copy_from_slice(&vflags.to_ne_bytes());
        info[2..4].copy_from_slice(&vid.to_ne_bytes());
        m.attr(IFLA_BRIDGE_VLAN_INFO, &info);
        m.nest_end(spec);
        self.sock.request(m).map(drop)
    }

    /// Deletes a link by name; Ok(false) when it did not exist.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NlError> {
        let mut m = MsgBuilder::new(RTM_DELLINK, NLM_F_REQUEST).header(&ifinfomsg(0, 0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.sock.request(m) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
