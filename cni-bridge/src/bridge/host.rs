//! The node's side of the bridge plugin: the bridge itself, the `<bridge>.<vlan>` interface
//! of a VLAN bridge, and gateway addresses on them.

use ipnet::IpNet;

use super::BridgePlugin;
use crate::error::nl_err;
use crate::error::{codes, CniError, Result};
use crate::names::bridge_mac;
use crate::rtnl::{Link, Rtnl};

impl BridgePlugin {
    /// The bridge, created (up, stable MAC) if missing; an existing bridge is reused.
    pub(super) fn ensure_bridge(&self, host: &mut Rtnl) -> Result<Link> {
        let c = &self.conf;
        let name = &c.bridge;
        let existing = host.link_by_name(name).map_err(|e| nl_err(&format!("look up bridge {name}"), e))?;
        let link = match existing {
            Some(l) => {
                if l.kind.as_deref() != Some("bridge") {
                    return Err(CniError::new(codes::INTERNAL, format!("{name:?} already exists but is not a bridge")));
                }
                if !l.is_up() {
                    host.set_up(l.index).map_err(|e| nl_err(&format!("set bridge {name} up"), e))?;
                }
                if c.promisc_mode && !l.is_promisc() {
                    host.set_promisc(l.index, true)
                        .map_err(|e| nl_err(&format!("set bridge {name} promiscuous"), e))?;
                }
                l
            }
            None => {
                let vlan_filtering = c.vlan.is_some() || !c.vlan_trunk.is_empty();
                match host.create_bridge(name, bridge_mac(name), c.mtu, vlan_filtering, c.promisc_mode) {
                    Ok(()) => {}
                    // Another ADD created it first: fine, reuse it.
                    Err(e) if e.is(libc::EEXIST) => {}
                    Err(e) if vlan_filtering && e.is(libc::EOPNOTSUPP) => {
                        return Err(CniError::new(
                            codes::INVALID_CONFIG,
                            format!("invalid network config field \"vlan\": bridge {name} cannot filter VLANs: this kernel lacks bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)"),
                        ))
                    }
                    Err(e) => return Err(nl_err(&format!("create bridge {name}"), e)),
                }
                host.link_by_name(name)
                    .map_err(|e| nl_err(&format!("look up bridge {name}"), e))?
                    .ok_or_else(|| CniError::new(codes::INTERNAL, format!("bridge {name} vanished after creation")))?
            }
        };
        Ok(link)
    }

    /// The name of [`Self::gateway_link`].
    pub(super) fn gateway_link_name(&self) -> String {
        match self.conf.vlan {
            Some(vid) => format!("{}.{vid}", self.conf.bridge),
            None => self.conf.bridge.clone(),
        }
    }

    /// Where the gateway address lives: the bridge, or `<bridge>.<vlan>` on a VLAN bridge.
    pub(super) fn gateway_link(&self, host: &mut Rtnl, br: &Link) -> Result<Link> {
        let Some(vid) = self.conf.vlan else { return Ok(br.clone()) };
        let name = format!("{}.{vid}", br.name);
        if let Some(l) = host.link_by_name(&name).map_err(|e| nl_err(&format!("look up {name}"), e))? {
            return Ok(l);
        }
        host.bridge_vlan(br.index, vid, 0, true, false).map_err(|e| vlan_err(&br.name, vid, e))?;
        match host.create_vlan(&name, br.index, vid, self.conf.mtu) {
            Ok(()) => {}
            Err(e) if e.is(libc::EEXIST) => {}
            Err(e) => return Err(nl_err(&format!("create vlan interface {name}"), e)),
        }
        host.link_by_name(&name)
            .map_err(|e| nl_err(&format!("look up {name}"), e))?
            .ok_or_else(|| CniError::new(codes::INTERNAL, format!("{name} vanished after creation")))
    }
}

pub(super) fn vlan_err(link: &str, vid: u16, e: crate::netlink::NlError) -> CniError {
    if e.is(libc::EOPNOTSUPP) || e.is(libc::EINVAL) {
        CniError::new(codes::INVALID_CONFIG, format!("invalid network config field \"vlan\": cannot add VLAN {vid} on {link}: {e} (does this kernel have bridge VLAN filtering?)"))
    } else {
        nl_err(&format!("add VLAN {vid} on {link}"), e)
    }
}

/// Puts `addr` on `link`. Another address of the same subnet is a conflict, replaced only
/// with `forceAddress` (IPv4 bridges carry one gateway; IPv6 ones one per subnet).
pub(super) fn ensure_addr(host: &mut Rtnl, link: &Link, addr: IpNet, force: bool) -> Result<()> {
    let fam = if addr.addr().is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let existing =
        host.addrs(link.index, Some(fam)).map_err(|e| nl_err(&format!("list addresses of {}", link.name), e))?;
    for a in existing {
        if a.addr == addr {
            return Ok(());
        }
        if addr.addr().is_ipv6() && !a.addr.contains(&addr.addr()) && !addr.contains(&a.addr.addr()) {
            continue;
        }
        if !force {
            return Err(CniError::new(
                codes::INTERNAL,
                format!("{:?} already has an IP address different from {addr} ({})", link.name, a.addr),
            ));
        }
        host.del_addr(link.index, a.addr).map_err(|e| nl_err(&format!("remove {} from {}", a.addr, link.name), e))?;
    }
    match host.add_addr(link.index, addr, true) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl_err(&format!("add gateway {addr} to {}", link.name), e)),
    }
}
