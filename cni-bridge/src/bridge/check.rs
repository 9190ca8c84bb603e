//! CHECK: the system still matches what ADD made.

use podnet_netns::NetNs;

use super::BridgePlugin;
use crate::args::Request;
use crate::config::PluginInput;
use crate::error::{codes, nl_err, CniError, Result};
use crate::names::{format_mac, AttachmentId};
use crate::nft::{Firewall, FirewallPlan};
use crate::portmap;
use crate::rtnl::Rtnl;

impl BridgePlugin {
    /// CHECK: the pod interface carries the result's addresses and routes, the host veth is on
    /// the bridge, IPAM holds the addresses, and the firewall rules are in place.
    pub fn check(&self, input: &PluginInput, req: &Request<'_>) -> Result<()> {
        self.cluster_facts()?;
        let prev =
            input.prev_result.as_ref().ok_or_else(|| CniError::invalid_config("prevResult", "required for CHECK"))?;
        let netns_path = req.netns.ok_or_else(|| CniError::invalid_env("CNI_NETNS", "required for CHECK"))?;
        let pod = NetNs::open(netns_path).map_err(|e| CniError::io("open the pod network namespace", e))?;
        let id = AttachmentId::new(&self.network, req.container_id, req.ifname);
        let fail =
            |m: String| CniError::new(codes::INTERNAL, format!("CHECK {}/{}: {m}", req.container_id, req.ifname));
        let ifname = req.ifname.to_owned();
        let (link, addrs) = pod
            .run(move || -> std::result::Result<_, crate::netlink::NlError> {
                let mut nl = Rtnl::new()?;
                let l = nl.link_by_name(&ifname)?;
                let a = match &l {
                    Some(l) => nl.addrs(l.index, None)?,
                    None => Vec::new(),
                };
                Ok((l, a))
            })
            .map_err(|e| CniError::io("enter the pod network namespace", e))?
            .map_err(|e| nl_err("read the pod interface", e))?;
        let link = link.ok_or_else(|| fail(format!("interface {} is missing from the pod", req.ifname)))?;
        for ip in prev.ips.iter().filter(|i| {
            i.interface.map(|n| prev.interfaces.get(n).is_some_and(|x| x.sandbox.is_some())).unwrap_or(true)
        }) {
            if !addrs.iter().any(|a| a.addr == ip.address) {
                return Err(fail(format!("address {} is missing from {}", ip.address, req.ifname)));
            }
        }
        if let Some(want) = prev.interfaces.iter().find(|i| i.sandbox.is_some() && i.name == req.ifname) {
            if !want.mac.is_empty() && format_mac(&link.mac) != want.mac.to_lowercase() {
                return Err(fail(format!("{} has MAC {} instead of {}", req.ifname, format_mac(&link.mac), want.mac)));
            }
        }
        let mut host = Rtnl::new().map_err(|e| nl_err("open rtnetlink", e))?;
        let br = host
            .link_by_name(&self.conf.bridge)
            .map_err(|e| nl_err("look up the bridge", e))?
            .ok_or_else(|| fail(format!("bridge {} is missing", self.conf.bridge)))?;
        let hv = host
            .link_by_name(&id.host_veth())
            .map_err(|e| nl_err("look up the host veth", e))?
            .ok_or_else(|| fail(format!("host veth {} is missing", id.host_veth())))?;
        if hv.master != Some(br.index) {
            return Err(fail(format!("host veth {} is not attached to bridge {}", hv.name, br.name)));
        }
        if self.route_pods_through_node() && self.conf.is_gateway {
            self.check_route_through_node(&self.gateway_link_name()).map_err(|e| fail(e.msg))?;
        }
        let held = self.host_local()?.get(req.container_id, req.ifname)?;
        for ip in &prev.ips {
            if !held.contains(&ip.address.addr()) {
                return Err(fail(format!("IPAM holds no reservation of {} for this attachment", ip.address.addr())));
            }
        }
        // Every rule ADD put under the attachment's tag: masquerade, hostPorts (the `podnet`
        // type installs them in the same batch) and the MAC spoof check.
        let mut plan = FirewallPlan { tag: String::new(), masq: Vec::new(), port_maps: Vec::new(), mac_spoof: None };
        let mut kinds = Vec::new();
        if self.conf.ip_masq {
            plan.masq = prev.ips.iter().map(|i| (i.address.addr(), self.masq_exempt(&i.address))).collect();
            kinds.push("masquerade");
        }
        if input.plugin_type == "podnet" {
            plan.port_maps = portmap::plan(&input.runtime_config.port_mappings, &portmap::pod_ips(prev));
            if !plan.port_maps.is_empty() {
                kinds.push("hostPort");
            }
        }
        if self.conf.mac_spoof_check {
            plan.mac_spoof = Some((id.host_veth(), link.mac.as_slice().try_into().unwrap_or([0; 6])));
            kinds.push("MAC spoof check");
        }
        let want = Firewall::plan_rule_count(&plan);
        let have = if want > 0 { Firewall::new()?.count(&id.tag())? } else { 0 };
        if have < want {
            return Err(fail(format!(
                "{} rules are missing: {have} of {want} present with tag {}",
                kinds.join("/"),
                id.tag()
            )));
        }
        Ok(())
    }
}
