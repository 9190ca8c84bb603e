//! Links: bridges, veth pairs (peer created directly in the pod namespace), VLANs, bridge ports.

use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkHeader, NlasIterator, Parseable, ParseableParametrized, NLA_F_NESTED,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
};
use netlink_packet_route::link::{
    AfSpecBridge, AfSpecInet, AfSpecUnspec, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge,
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVlan, InfoVxlan, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkHeader, LinkInfo, LinkMessage, LinkMessageBuffer,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::socket::Rtnl;
use crate::netlink::NlError;

const RTM_NEWLINK: u16 = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;

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
    /// For a veth: the peer's index (in the peer's namespace). For a VLAN: its parent.
    pub peer_index: Option<u32>,
    /// The link's alias (`ip link set ... alias`): podnet stamps its host veths with the
    /// attachment's tag, so GC can tell its own from other networks'.
    pub alias: Option<String>,
    /// For a VXLAN link: its tunnel settings as the kernel reports them.
    pub vxlan: Option<VxlanInfo>,
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

/// A link message for `index` (0: named by an attribute, or a new link) of `family`, with
/// `flags` set within `change`.
pub(super) fn link_msg(family: AddressFamily, index: u32, flags: u32, change: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.interface_family = family;
    m.header.index = index;
    m.header.flags = LinkFlags::from_bits_retain(flags);
    m.header.change_mask = LinkFlags::from_bits_retain(change);
    m
}

/// A nested attribute the crate has no type for (or types differently than the kernel reads
/// it on a set), built from typed inner attributes.
pub(super) fn nested<T: netlink_packet_core::Nla>(kind: u16, inner: &[T]) -> DefaultNla {
    let mut value = vec![0u8; inner.buffer_len()];
    inner.emit(&mut value);
    DefaultNla::new(kind | NLA_F_NESTED, value)
}

/// An RTM_NEWLINK reply, parsed with the crate attribute by attribute, and only the
/// attributes [`Link`] holds: a link message carries a kilobyte and more of statistics and
/// per-family settings, which the crate's full parse would format into its error context
/// (eagerly, each time) at about a millisecond per link.
fn parse_link(hdr: &NetlinkHeader, payload: &[u8]) -> Result<Option<Link>, DecodeError> {
    if hdr.message_type != RTM_NEWLINK {
        return Ok(None);
    }
    let buf = LinkMessageBuffer::new_checked(payload)?;
    let header = LinkHeader::parse(&buf)?;
    let mut link = Link { index: header.index, flags: header.flags.bits(), ..Default::default() };
    for nla in buf.attributes() {
        let nla = nla?;
        match nla.kind() {
            IFLA_ADDRESS | IFLA_IFNAME | IFLA_MTU | IFLA_LINK | IFLA_MASTER | IFLA_IFALIAS => {
                match LinkAttribute::parse_with_param(&nla, header.interface_family)? {
                    LinkAttribute::IfName(n) => link.name = n,
                    LinkAttribute::Address(mac) => link.mac = mac,
                    LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                    LinkAttribute::Controller(i) => link.master = Some(i),
                    LinkAttribute::Link(i) => link.peer_index = Some(i),
                    LinkAttribute::IfAlias(s) => link.alias = Some(s),
                    _ => {}
                }
            }
            IFLA_LINKINFO => parse_link_info(nla.value(), &mut link)?,
            _ => {}
        }
    }
    Ok(Some(link))
}

/// IFLA_LINKINFO: the kind, and a VXLAN link's settings (not a bridge's or a port's).
fn parse_link_info(value: &[u8], link: &mut Link) -> Result<(), DecodeError> {
    let mut data = None;
    for nla in NlasIterator::new(value) {
        let nla = nla?;
        match nla.kind() {
            IFLA_INFO_KIND => link.kind = Some(InfoKind::parse(&nla)?.to_string()),
            IFLA_INFO_DATA => data = Some(nla),
            _ => {}
        }
    }
    if let (Some("vxlan"), Some(data)) = (link.kind.as_deref(), data) {
        let attrs = NlasIterator::new(data.value()).map(|a| InfoVxlan::parse(&a?)).collect::<Result<Vec<_>, _>>()?;
        link.vxlan = Some(VxlanInfo::from_attrs(&attrs));
    }
    Ok(())
}

impl Rtnl {
    fn get_link(&mut self, mut m: LinkMessage) -> Result<Option<Link>, NlError> {
        m.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        match self.sock.request_with(RouteNetlinkMessage::GetLink(m), 0, parse_link) {
            Ok(links) => Ok(links.into_iter().next()),
            Err(e) if e.is(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, NlError> {
        let mut m = link_msg(AddressFamily::Unspec, 0, 0, 0);
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(m)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, NlError> {
        self.get_link(link_msg(AddressFamily::Unspec, index, 0, 0))
    }

    /// Every link of the namespace (one dump).
    pub fn links(&mut self) -> Result<Vec<Link>, NlError> {
        let mut m = link_msg(AddressFamily::Unspec, 0, 0, 0);
        // The kernel leaves the statistics out: nothing here reads them.
        m.attributes.push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        self.sock.request_with(RouteNetlinkMessage::GetLink(m), NLM_F_DUMP, parse_link)
    }

    /// Creates a link (RTM_NEWLINK, exclusive): fails with EEXIST if the name is taken.
    pub(super) fn new_link(&mut self, m: LinkMessage) -> Result<(), NlError> {
        self.sock.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    fn set_link(&mut self, m: LinkMessage) -> Result<(), NlError> {
        self.sock.request(RouteNetlinkMessage::SetLink(m), 0).map(drop)
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
        let mut m = link_msg(AddressFamily::Unspec, 0, flags, flags);
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        self.new_link(m)
    }

    /// Creates a veth pair in one request (see [`VethSpec`]).
    pub fn create_veth(&mut self, spec: &VethSpec<'_>) -> Result<(), NlError> {
        let mut m = link_msg(AddressFamily::Unspec, 0, IFF_UP, IFF_UP);
        m.attributes.push(LinkAttribute::IfName(spec.host_name.to_owned()));
        m.attributes.push(LinkAttribute::Address(spec.host_mac.to_vec()));
        if let Some(mtu) = spec.mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(master) = spec.master {
            m.attributes.push(LinkAttribute::Controller(master));
        }
        // The peer cannot be brought up here: the kernel configures it before the pair is
        // linked and veth_open() then fails with ENOTCONN. The caller sets it up in the pod.
        let mut peer = link_msg(AddressFamily::Unspec, 0, 0, 0);
        peer.attributes.push(LinkAttribute::IfName(spec.peer_name.to_owned()));
        peer.attributes.push(LinkAttribute::Address(spec.peer_mac.to_vec()));
        peer.attributes.push(LinkAttribute::NetNsFd(spec.peer_netns));
        if let Some(mtu) = spec.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.new_link(m)?;
        let Some(alias) = spec.alias else { return Ok(()) };
        // The kernel ignores IFLA_IFALIAS in a request that creates a link (only a change of
        // an existing one applies it): a second request, by name. If it fails, the pair goes
        // again, so that the caller is left with nothing to undo.
        let mut set = link_msg(AddressFamily::Unspec, 0, 0, 0);
        set.attributes.push(LinkAttribute::IfName(spec.host_name.to_owned()));
        set.attributes.push(LinkAttribute::IfAlias(alias.to_owned()));
        match self.set_link(set) {
            Ok(()) => Ok(()),
            Err(e) => match self.delete_link_by_name(spec.host_name) {
                Ok(_) => Err(e),
                Err(undo) => {
                    let what =
                        format!("setting its alias; removing the veth {} again failed too: {undo}", spec.host_name);
                    let ext = Some(e.ext.as_ref().map_or(what.clone(), |x| format!("{x}; {what}")));
                    Err(NlError { errno: e.errno, ext })
                }
            },
        }
    }

    /// Creates a VLAN sub-interface `name` with id `vid` on `parent`, up.
    pub fn create_vlan(&mut self, name: &str, parent: u32, vid: u16, mtu: Option<u32>) -> Result<(), NlError> {
        let mut m = link_msg(AddressFamily::Unspec, 0, IFF_UP, IFF_UP);
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m.attributes.push(LinkAttribute::Link(parent));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vlan),
            LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(vid)])),
        ]));
        self.new_link(m)
    }

    /// Sets or clears interface flags (IFF_UP, IFF_PROMISC) on a link.
    pub fn set_flags(&mut self, index: u32, flags: u32, mask: u32) -> Result<(), NlError> {
        self.set_link(link_msg(AddressFamily::Unspec, index, flags, mask))
    }

    /// Sets the link's IPv4 `arp_notify` (gratuitous ARP when it comes up, so neighbours
    /// forget a reused IP's old MAC). Must precede the IFF_UP request: the kernel applies
    /// flags before per-family settings within one request.
    pub fn set_arp_notify(&mut self, index: u32) -> Result<(), NlError> {
        // On a set the kernel reads IFLA_INET_CONF as attributes typed by IPV4_DEVCONF_* id
        // (the crate's InetDevConf is the dump's array of every value): one attribute here.
        const IFLA_INET_CONF: u16 = 1;
        const IPV4_DEVCONF_ARP_NOTIFY: u16 = 22;
        let conf = nested(IFLA_INET_CONF, &[DefaultNla::new(IPV4_DEVCONF_ARP_NOTIFY, 1u32.to_ne_bytes().to_vec())]);
        let mut m = link_msg(AddressFamily::Unspec, index, 0, 0);
        m.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::Other(conf)])]));
        self.set_link(m)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), NlError> {
        self.set_flags(index, IFF_UP, IFF_UP)
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), NlError> {
        self.set_flags(index, if on { IFF_PROMISC } else { 0 }, IFF_PROMISC)
    }

    /// Port flags of a bridge port, in one request: hairpin mode (reflective relay back out
    /// the port a frame came in on) and isolation (isolated ports only reach non-isolated
    /// ones, `bridge link set dev <port> isolated on`). Sent as the port's bridge-slave data
    /// (`ip link set <port> type bridge_slave hairpin .. isolated ..`): the same br_setport()
    /// as the AF_BRIDGE IFLA_PROTINFO form.
    pub fn set_bridge_port(&mut self, index: u32, hairpin: bool, isolated: bool) -> Result<(), NlError> {
        let mut m = link_msg(AddressFamily::Unspec, index, 0, 0);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![
                InfoBridgePort::HairpinMode(hairpin),
                InfoBridgePort::Isolated(isolated),
            ])),
        ]));
        self.sock.request(RouteNetlinkMessage::NewLink(m), 0).map(drop)
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
        let mut spec = Vec::new();
        if bridge_self {
            spec.push(AfSpecBridge::Flags(BridgeFlag::LowerDev)); // BRIDGE_FLAGS_SELF
        }
        spec.push(AfSpecBridge::VlanInfo(BridgeVlanInfo { flags: BridgeVlanInfoFlags::from_bits_retain(vflags), vid }));
        let mut m = link_msg(AddressFamily::Bridge, index, 0, 0);
        m.attributes.push(LinkAttribute::AfSpecBridge(spec));
        let msg = if del { RouteNetlinkMessage::DelLink(m) } else { RouteNetlinkMessage::SetLink(m) };
        self.sock.request(msg, 0).map(drop)
    }

    /// Deletes a link by name; Ok(false) when it did not exist.
    pub fn delete_link_by_name(&mut self, name: &str) -> Result<bool, NlError> {
        let mut m = link_msg(AddressFamily::Unspec, 0, 0, 0);
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.sock.request(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.is(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A VXLAN link's settings as the kernel reports them (`Link::vxlan`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub underlay: Option<u32>,
}

impl VxlanInfo {
    pub(super) fn from_attrs(attrs: &[InfoVxlan]) -> VxlanInfo {
        let mut v = VxlanInfo::default();
        for a in attrs {
            match a {
                InfoVxlan::Id(id) => v.vni = Some(*id),
                InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(*ip)),
                InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(*ip)),
                InfoVxlan::Port(p) => v.port = Some(*p),
                InfoVxlan::Learning(l) => v.learning = Some(*l),
                InfoVxlan::Link(i) if *i != 0 => v.underlay = Some(*i),
                _ => {}
            }
        }
        v
    }
}
