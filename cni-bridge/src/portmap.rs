//! hostPort mappings: DNAT from the node (other hosts, the node itself, 127.0.0.1) to the
//! pod, and hairpin SNAT so a pod reaches itself through its own hostPort.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::args::Request;
use crate::config::{Fields, PluginInput, PortMapping};
use crate::error::{codes, nl_err, CniError, ErrorList, Result};
use crate::names::AttachmentId;
use crate::nft::{Firewall, FirewallPlan, PortMap};
use crate::result::CniResult;
use crate::rtnl::Rtnl;
use crate::sysctl;

/// The DNAT rules for `maps` towards `pod_ips` (the pod's addresses with their subnet's
/// prefix): a mapping with a hostIP goes to the pod IP of the same family; one without goes
/// to every pod IP (v4 and v6 alike).
pub fn plan(maps: &[PortMapping], pod_ips: &[IpNet]) -> Vec<PortMap> {
    let mut out = Vec::new();
    for m in maps {
        for net in pod_ips {
            let ip = net.addr();
            if m.host_ip.is_some_and(|h| h.is_ipv4() != ip.is_ipv4()) {
                continue;
            }
            out.push(PortMap {
                pod_ip: ip,
                container_port: m.container_port,
                host_port: m.host_port,
                protocol: m.protocol.number(),
                host_ip: m.host_ip,
                pod_net: Some(net.trunc()),
            });
        }
    }
    out
}

/// Refuses the reference portmap options podnet does not implement, rather than silently
/// exposing hostPorts more widely than the admin asked (`conditionsV4`/`V6` restrict sources)
/// or masquerading when told not to (`snat: false`).
pub fn check_options(raw: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    let f = Fields::config(raw);
    for key in ["conditionsV4", "conditionsV6"] {
        if f.get(key).is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty())) {
            return Err(CniError::invalid_config(key, "iptables match conditions are not supported by podnet"));
        }
    }
    if f.get("snat").is_some_and(|v| v == &serde_json::Value::Bool(false)) {
        return Err(CniError::invalid_config(
            "snat",
            "false is not supported: podnet always masquerades hairpin and localhost hostPort traffic",
        ));
    }
    Ok(())
}

/// The pod's own addresses (with their prefix) in a result: those on an interface inside a
/// sandbox.
pub fn pod_ips(res: &CniResult) -> Vec<IpNet> {
    res.ips
        .iter()
        .filter(|ip| match ip.interface {
            Some(i) => res.interfaces.get(i).is_some_and(|x| x.sandbox.is_some()),
            None => true,
        })
        .map(|ip| ip.address)
        .collect()
}

/// The chained `portmap` step: rules from runtimeConfig.portMappings and the previous result.
pub fn add(input: &PluginInput, req: &Request<'_>) -> Result<CniResult> {
    let prev = input.prev_result.clone().ok_or_else(|| {
        CniError::invalid_config(
            "prevResult",
            "portmap must be chained after a plugin that returns the pod's addresses",
        )
    })?;
    check_options(&input.raw)?;
    let maps = &input.runtime_config.port_mappings;
    if maps.is_empty() {
        return Ok(prev);
    }
    let ips = pod_ips(&prev);
    let id = AttachmentId::new(&input.name, req.container_id, req.ifname);
    let plan = FirewallPlan { tag: id.portmap_tag(), masq: Vec::new(), port_maps: plan(maps, &ips), mac_spoof: None };
    if let Some(v4) = ips.iter().map(|n| n.addr()).find(|i| i.is_ipv4()) {
        enable_route_localnet(v4)?;
    }
    let mut fw = Firewall::new()?;
    // A retried ADD must not stack a second copy of the rules.
    fw.remove(&plan.tag)?;
    fw.add(&plan)?;
    Ok(prev)
}

/// Lets DNAT'd traffic from the node's 127.0.0.1 leave through the link that reaches the pod.
fn enable_route_localnet(pod_ip: IpAddr) -> Result<()> {
    let mut nl = Rtnl::new().map_err(|e| nl_err("open rtnetlink", e))?;
    let Some(oif) = nl.route_oif(pod_ip).map_err(|e| nl_err(&format!("look up the route to {pod_ip}"), e))? else {
        return Ok(());
    };
    let Some(link) = nl.link_by_index(oif).map_err(|e| nl_err("look up the link to the pod", e))? else {
        return Ok(());
    };
    sysctl::ensure_if("ipv4", &link.name, "route_localnet", "1")
}

pub fn del(input: &PluginInput, req: &Request<'_>) -> Result<()> {
    let id = AttachmentId::new(&input.name, req.container_id, req.ifname);
    Firewall::new()?.remove(&id.portmap_tag()).map(drop)
}

pub fn check(input: &PluginInput, req: &Request<'_>) -> Result<()> {
    let Some(prev) = &input.prev_result else { return Ok(()) };
    let maps = plan(&input.runtime_config.port_mappings, &pod_ips(prev));
    if maps.is_empty() {
        return Ok(());
    }
    let id = AttachmentId::new(&input.name, req.container_id, req.ifname);
    let plan = FirewallPlan { tag: id.portmap_tag(), masq: Vec::new(), port_maps: maps, mac_spoof: None };
    let have = Firewall::new()?.count(&plan.tag)?;
    let want = Firewall::plan_rule_count(&plan);
    if have < want {
        return Err(CniError::new(
            codes::INTERNAL,
            format!("CHECK {}/{}: {have} of {want} hostPort rules present", req.container_id, req.ifname),
        ));
    }
    Ok(())
}

/// Removes the portmap rules of every attachment of this network not in `valid`.
pub fn gc(input: &PluginInput, valid: &[(String, String)]) -> Result<()> {
    let keep: Vec<String> = valid.iter().map(|(c, i)| AttachmentId::new(&input.name, c, i).portmap_tag()).collect();
    let prefix = AttachmentId::network_tag_prefix(&input.name);
    let mut fw = Firewall::new()?;
    let mut errs = ErrorList::default();
    for t in fw.tags()? {
        if t.starts_with(&prefix) && t.ends_with("/pm") && !keep.contains(&t) {
            errs.push(fw.remove(&t).map(drop));
        }
    }
    errs.into_result().map_err(|e| e.context(format!("GC of portmap rules of network {}", input.name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    #[test]
    fn unsupported_options_are_refused() {
        let m = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert!(check_options(&m(serde_json::json!({"snat": true, "conditionsV4": []}))).is_ok());
        let e = check_options(&m(serde_json::json!({"conditionsV4": ["-s", "1.2.3.4"]}))).unwrap_err();
        assert!(e.msg.contains("conditionsV4"), "{e}");
        let e = check_options(&m(serde_json::json!({"snat": false}))).unwrap_err();
        assert!(e.msg.contains("snat"), "{e}");
    }

    #[test]
    fn plan_matches_families() {
        let v4: IpNet = "10.0.0.5/24".parse().unwrap();
        let v6: IpNet = "fd00::5/64".parse().unwrap();
        let any = PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp, host_ip: None };
        let only4 = PortMapping { host_ip: Some("127.0.0.1".parse().unwrap()), ..any };
        let p = plan(&[any, only4], &[v4, v6]);
        assert_eq!(p.len(), 3);
        assert_eq!(p.iter().filter(|m| m.pod_ip == v6.addr()).count(), 1);
        assert_eq!(p[0].pod_net, Some("10.0.0.0/24".parse().unwrap()));
    }
}
