//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{family_of, ip_bytes, ip_from_bytes, Rtnl, RTM_DELADDR, RTM_GETADDR, RTM_NEWADDR};
use crate::netlink::{attrs, MsgBuilder, NlError, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
/// Skip duplicate address detection: the address is usable at once, no tentative wait.
pub const IFA_F_NODAD: u32 = 0x02;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const IFA_F_DADFAILED: u32 = 0x08;

fn ifaddrmsg(family: u8, prefix: u8, index: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0] = family;
    h[1] = prefix;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// An address as the kernel reports it, with its flags (tentative, dadfailed ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: IpNet,
    pub flags: u32,
}

impl Rtnl {
    /// Adds `addr` (an IP with its subnet prefix) to a link. IPv4 gets its broadcast address.
    pub fn add_addr(&mut self, index: u32, addr: IpNet, nodad: bool) -> Result<(), NlError> {
        let ip = addr.addr();
        let mut m = MsgBuilder::new(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL).header(&ifaddrmsg(
            family_of(&ip),
            addr.prefix_len(),
            index,
        ));
        m.attr(IFA_LOCAL, &ip_bytes(&ip));
        m.attr(IFA_ADDRESS, &ip_bytes(&ip));
        if let IpNet::V4(v4) = addr {
            if v4.prefix_len() < 31 {
                m.attr(IFA_BROADCAST, &v4.broadcast().octets());
            }
        }
        if nodad && ip.is_ipv6() {
            m.attr_u32(IFA_FLAGS, IFA_F_NODAD);
        }
        self.sock.request(m).map(drop)
    }

    pub fn del_addr(&mut self, index: u32, addr: IpNet) -> Result<(), NlError> {
        let ip = addr.addr();
        let mut m =
            MsgBuilder::new(RTM_DELADDR, NLM_F_REQUEST).header(&ifaddrmsg(family_of(&ip), addr.prefix_len(), index));
        m.attr(IFA_LOCAL, &ip_bytes(&ip));
        m.attr(IFA_ADDRESS, &ip_bytes(&ip));
        self.sock.request(m).map(drop)
    }

    /// Addresses of one link (or of all links with `index` 0), of one family or both (`None`).
    pub fn addrs(&mut self, index: u32, family: Option<u8>) -> Result<Vec<AddrInfo>, NlError> {
        // With strict checking on (the socket enables it) the kernel filters the dump by index.
        let m =
            MsgBuilder::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP).header(&ifaddrmsg(family.unwrap_or(0), 0, index));
        let mut out = Vec::new();
        for msg in self.sock.request(m)? {
            if msg.msg_type != RTM_NEWADDR || msg.body.len() < 8 {
                continue;
            }
            let prefix = msg.body[1];
            let mut flags = msg.body[2] as u32;
            let idx = u32::from_ne_bytes([msg.body[4], msg.body[5], msg.body[6], msg.body[7]]);
            if index != 0 && idx != index {
                continue;
            }
            let mut ip: Option<IpAddr> = None;
            let mut local: Option<IpAddr> = None;
            for a in attrs(&msg.body[8..]) {
                match a.ty {
                    IFA_ADDRESS => ip = ip_from_bytes(a.payload),
                    IFA_LOCAL => local = ip_from_bytes(a.payload),
                    IFA_FLAGS => flags = a.u32().unwrap_or(flags),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(ip) {
                if let Ok(addr) = IpNet::new(ip, prefix) {
                    out.push(AddrInfo { index: idx, addr, flags });
                }
            }
        }
        Ok(out)
    }
}
