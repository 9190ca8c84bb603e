//! ADD: the veth pair with its peer made inside the pod, the pod's addresses and routes, the
//! node's gateway and forwarding, the firewall rules, the record; undone on failure.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use podnet_netns::NetNs;
use serde_json::Value;

use super::host::{ensure_addr, vlan_err};
use super::BridgePlugin;
use crate::args::Request;
use crate::attachment::Attachment;
use crate::config::{Fields, PluginInput};
use crate::error::{codes, nl_err, CniError, ErrorList, Result};
use crate::ipam::IpamConfigured;
use crate::names::{format_mac, parse_mac, AttachmentId};
use crate::nft::{Firewall, FirewallPlan};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::rtnl::{Link, RouteSpec, Rtnl, VethSpec, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED};
use crate::{portmap, sysctl};

impl BridgePlugin {
    /// ADD. With `port_maps` (the `podnet` type), hostPort rules are installed in the same
    /// firewall batch as masquerade.
    pub fn add(&self, input: &PluginInput, req: &Request<'_>, with_port_maps: bool) -> Result<CniResult> {
        if self.conf.disable_container_interface {
            // As the reference: a container interface left down cannot carry IPAM's addresses,
            // and podnet's bridge always has IPAM.
            return Err(CniError::invalid_config(
                "disableContainerInterface",
                "cannot use IPAM when disableContainerInterface is set",
            ));
        }
        // Cluster mode without usable node facts: nothing is created.
        self.cluster_facts()?;
        let netns_path = req.netns.ok_or_else(|| CniError::invalid_env("CNI_NETNS", "required for ADD"))?;
        let pod = NetNs::open(netns_path).map_err(|e| CniError::io("open the pod network namespace", e))?;
        let id = AttachmentId::new(&self.network, req.container_id, req.ifname);
        let requested = requested_ips(input, req)?;
        // The reference's precedence: runtimeConfig.mac, then args.cni.mac (both already
        // merged into conf.mac), then CNI_ARGS MAC.
        let mac_src = match (input.runtime_config.mac.as_deref(), self.conf.mac.as_deref(), req.arg("MAC")) {
            (Some(m), _, _) => Some((m, "runtimeConfig.mac")),
            (None, Some(m), _) => Some((m, "args.cni.mac")),
            (None, None, Some(m)) => Some((m, "CNI_ARGS MAC")),
            (None, None, None) => None,
        };
        let pod_mac = match mac_src {
            Some((s, field)) => {
                parse_mac(s).ok_or_else(|| CniError::invalid_config(field, format!("{s:?} is not a MAC address")))?
            }
            None => id.pod_mac(),
        };

        let mut host = Rtnl::new().map_err(|e| nl_err("open rtnetlink", e))?;
        let pod_nl = pod
            .run(Rtnl::new)
            .map_err(|e| CniError::io("enter the pod network namespace", e))?
            .map_err(|e| nl_err("open rtnetlink in the pod network namespace", e))?;
        if self.store().load(req.container_id, req.ifname)?.is_some() {
            return Err(CniError::new(
                codes::INTERNAL,
                format!("attachment {}/{} already exists on network {}", req.container_id, req.ifname, self.network),
            ));
        }
        let bridge = self.ensure_bridge(&mut host)?;
        // GC must not collect an attachment while it is being made (it is not in the
        // runtime's valid list yet): ADDs share this lock, GC takes it exclusively.
        let _gc_guard = self.store().lock(false)?;
        let mut add = Add {
            plugin: self,
            input,
            req: *req,
            id,
            pod,
            host,
            pod_nl,
            bridge,
            pod_mac,
            with_port_maps,
            done: Done::default(),
        };
        match add.run(&requested) {
            Ok(res) => Ok(res),
            Err(e) => {
                let leftovers = add.undo();
                Err(match leftovers {
                    Ok(()) => e,
                    Err(u) => e.with_details(format!("cleanup after the failed ADD also failed: {u}")),
                })
            }
        }
    }
}

/// One ADD in progress: what its steps share, and how far it got.
struct Add<'a> {
    plugin: &'a BridgePlugin,
    input: &'a PluginInput,
    req: Request<'a>,
    id: AttachmentId,
    pod: NetNs,
    /// rtnetlink on the node, and one bound to the pod's namespace.
    host: Rtnl,
    pod_nl: Rtnl,
    bridge: Link,
    pod_mac: [u8; 6],
    with_port_maps: bool,
    done: Done,
}

/// What a failed ADD must undo, in reverse order of setup.
#[derive(Default)]
struct Done {
    ipam: bool,
    veth: bool,
    fw: bool,
}

impl Add<'_> {
    fn run(&mut self, requested: &[IpAddr]) -> Result<CniResult> {
        let ipam = self.plugin.host_local()?;
        // A second ADD of the same attachment stops here, before touching the first one's
        // state: IPAM refuses a duplicate allocation.
        let allocated = ipam.allocate(self.req.container_id, self.req.ifname, requested)?;
        self.done.ipam = true;
        let hv = self.make_veth()?;
        let (ips, routes) = self.configure_pod(&hv, &allocated)?;
        self.configure_node(&allocated)?;
        self.install_rules(&allocated)?;
        self.record(ips, routes)
    }

    /// The veth pair, its peer made in the pod under its final name; the host end on the
    /// bridge with its port settings and VLANs.
    fn make_veth(&mut self) -> Result<Link> {
        let (c, req, host) = (&self.plugin.conf, &self.req, &mut self.host);
        let host_veth = self.id.host_veth();
        let tag = self.id.tag();
        host.create_veth(&VethSpec {
            host_name: &host_veth,
            host_mac: self.id.host_mac(),
            peer_name: req.ifname,
            peer_mac: self.pod_mac,
            peer_netns: self.pod.as_fd().as_raw_fd(),
            mtu: c.mtu,
            master: Some(self.bridge.index),
            alias: Some(&tag),
        })
        .map_err(|e| {
            if e.is(libc::EEXIST) {
                CniError::new(
                    codes::INTERNAL,
                    format!(
                        "cannot create veth {host_veth} with peer {:?} in the pod: one of them already exists",
                        req.ifname
                    ),
                )
            } else {
                nl_err(&format!("create veth {host_veth} with peer {} in the pod", req.ifname), e)
            }
        })?;
        self.done.veth = true;
        let hv = host
            .link_by_name(&host_veth)
            .map_err(|e| nl_err("look up the host veth", e))?
            .ok_or_else(|| CniError::new(codes::INTERNAL, format!("host veth {host_veth} vanished after creation")))?;
        if c.hairpin_mode || c.port_isolation {
            host.set_bridge_port(hv.index, c.hairpin_mode, c.port_isolation)
                .map_err(|e| nl_err(&format!("set hairpin mode / port isolation on {host_veth}"), e))?;
        }
        if let Some(vid) = c.vlan {
            host.bridge_vlan(hv.index, vid, BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, false, false)
                .map_err(|e| vlan_err(&host_veth, vid, e))?;
            if !c.preserve_default_vlan {
                host.bridge_vlan(hv.index, 1, 0, false, true).map_err(|e| vlan_err(&host_veth, 1, e))?;
            }
        }
        for vid in &c.vlan_trunk {
            host.bridge_vlan(hv.index, *vid, 0, false, false).map_err(|e| vlan_err(&host_veth, *vid, e))?;
        }
        Ok(hv)
    }

    /// The pod side, in the reference's order: addresses (no DAD wait unless asked),
    /// arp_notify, up (announcing the addresses), routes. Returns the result's IPs and routes.
    fn configure_pod(&mut self, hv: &Link, allocated: &[IpamConfigured]) -> Result<(Vec<IpConfig>, Vec<Route>)> {
        let (c, req, podnl) = (&self.plugin.conf, &self.req, &mut self.pod_nl);
        let pod_index = hv
            .peer_index
            .ok_or_else(|| CniError::new(codes::INTERNAL, format!("host veth {} reports no peer", hv.name)))?;
        let dad = if c.enable_dad && allocated.iter().any(|a| a.address.addr().is_ipv6()) {
            Some(crate::dad::DadWatch::new(&self.pod)?)
        } else {
            None
        };
        let mut ips = Vec::new();
        for a in allocated {
            podnl
                .add_addr(pod_index, a.address, !c.enable_dad)
                .map_err(|e| nl_err(&format!("add {} to {} in the pod", a.address, req.ifname), e))?;
            ips.push(IpConfig { address: a.address, gateway: a.gateway, interface: Some(2) });
        }
        if allocated.iter().any(|a| a.address.addr().is_ipv4()) {
            podnl
                .set_arp_notify(pod_index)
                .map_err(|e| nl_err(&format!("set arp_notify on {} in the pod", req.ifname), e))?;
        }
        podnl.set_up(pod_index).map_err(|e| nl_err(&format!("set {} up in the pod", req.ifname), e))?;
        if let Some(mut dad) = dad {
            let v6: Vec<IpAddr> = allocated.iter().map(|a| a.address.addr()).filter(|a| a.is_ipv6()).collect();
            dad.wait(pod_index, &v6)?;
        }
        let mut routes: Vec<Route> = self.plugin.ipam.routes.clone();
        if c.is_default_gateway {
            for a in allocated {
                let Some(gw) = a.gateway else { continue };
                let dst: IpNet = if gw.is_ipv4() { "0.0.0.0/0".parse() } else { "::/0".parse() }
                    .map_err(|e| CniError::internal("default route", e))?;
                if !routes.iter().any(|r| r.dst == dst) {
                    routes.push(route(dst, Some(gw)));
                }
            }
        }
        for r in &routes {
            let gw = r.gw.or_else(|| {
                allocated.iter().find(|a| a.address.addr().is_ipv4() == r.dst.addr().is_ipv4()).and_then(|a| a.gateway)
            });
            podnl
                .add_route(&RouteSpec {
                    dst: r.dst,
                    gw,
                    oif: pod_index,
                    mtu: r.mtu,
                    advmss: r.advmss,
                    priority: r.priority,
                    table: r.table,
                    scope: r.scope.map(|s| s as u8),
                })
                .or_else(|e| if e.is(libc::EEXIST) { Ok(()) } else { Err(e) })
                .map_err(|e| nl_err(&format!("add route {} in the pod", r.dst), e))?;
        }
        Ok((ips, routes))
    }

    /// The node side: gateway addresses, forwarding, and in cluster mode the node's L3 between
    /// the pods of the bridge.
    fn configure_node(&mut self, allocated: &[IpamConfigured]) -> Result<()> {
        let c = &self.plugin.conf;
        if c.is_gateway {
            let gw_link = self.plugin.gateway_link(&mut self.host, &self.bridge)?;
            for a in allocated {
                if let Some(gw) = a.gateway {
                    let gw_net =
                        IpNet::new(gw, a.address.prefix_len()).map_err(|e| CniError::internal("gateway address", e))?;
                    ensure_addr(&mut self.host, &gw_link, gw_net, c.force_address)?;
                }
            }
            if self.plugin.route_pods_through_node() {
                self.plugin.route_through_node(&gw_link.name)?;
            }
        }
        if c.is_gateway || c.ip_masq {
            if allocated.iter().any(|a| a.address.addr().is_ipv4()) {
                sysctl::ensure("net.ipv4.ip_forward", "1")?;
            }
            if allocated.iter().any(|a| a.address.addr().is_ipv6()) {
                sysctl::ensure("net.ipv6.conf.all.forwarding", "1")?;
            }
        }
        Ok(())
    }

    /// Masquerade, hostPorts and the MAC spoof check, in one batch under the attachment's tag.
    fn install_rules(&mut self, allocated: &[IpamConfigured]) -> Result<()> {
        let c = &self.plugin.conf;
        let mut plan = FirewallPlan { tag: self.id.tag(), masq: Vec::new(), port_maps: Vec::new(), mac_spoof: None };
        if c.ip_masq {
            plan.masq = allocated.iter().map(|a| (a.address.addr(), self.plugin.masq_exempt(&a.address))).collect();
        }
        if c.mac_spoof_check {
            plan.mac_spoof = Some((self.id.host_veth(), self.pod_mac));
        }
        if self.with_port_maps {
            let pod_ips: Vec<IpNet> = allocated.iter().map(|a| a.address).collect();
            plan.port_maps = portmap::plan(&self.input.runtime_config.port_mappings, &pod_ips);
            if !plan.port_maps.is_empty() && pod_ips.iter().any(|i| i.addr().is_ipv4()) {
                // Lets the node's own 127.0.0.1 reach a hostPort: DNAT'd loopback traffic
                // must be routable out of the bridge.
                sysctl::ensure_if("ipv4", &self.bridge.name, "route_localnet", "1")?;
            }
        }
        if !(plan.masq.is_empty() && plan.port_maps.is_empty() && plan.mac_spoof.is_none()) {
            self.done.fw = true;
            let mut fw = Firewall::new()?;
            fw.add(&plan)?;
        }
        Ok(())
    }

    /// The result, saved with the attachment's record.
    fn record(&self, ips: Vec<IpConfig>, routes: Vec<Route>) -> Result<CniResult> {
        let (p, req, br) = (self.plugin, &self.req, &self.bridge);
        let host_veth = self.id.host_veth();
        let netns = req.netns.map(|p| p.display().to_string()).unwrap_or_default();
        let mut result = CniResult {
            cni_version: self.input.cni_version.clone(),
            interfaces: vec![
                Interface { name: br.name.clone(), mac: format_mac(&br.mac), ..Default::default() },
                Interface { name: host_veth.clone(), mac: format_mac(&self.id.host_mac()), ..Default::default() },
                Interface {
                    name: req.ifname.to_owned(),
                    mac: format_mac(&self.pod_mac),
                    sandbox: Some(netns.clone()),
                    ..Default::default()
                },
            ],
            ips,
            routes,
            dns: Default::default(),
        };
        result.dns = crate::ipam::dns_for(p.conf.dns.as_ref(), p.ipam.resolv_conf.as_deref())?;
        p.store().save(&Attachment {
            network: p.network.clone(),
            container_id: req.container_id.to_owned(),
            ifname: req.ifname.to_owned(),
            netns,
            bridge: br.name.clone(),
            host_veth,
            tag: self.id.tag(),
            result: result.to_json(crate::config::LATEST_VERSION)?,
        })?;
        Ok(result)
    }

    /// Undoes what the failed ADD did, in reverse order of setup.
    fn undo(mut self) -> Result<()> {
        let mut errs = ErrorList::default();
        if self.done.fw {
            errs.push(Firewall::new().and_then(|mut fw| fw.remove(&self.id.tag()).map(drop)));
        }
        if self.done.veth {
            errs.push(
                self.host
                    .delete_link_by_name(&self.id.host_veth())
                    .map(drop)
                    .map_err(|e| nl_err("delete the host veth", e)),
            );
        }
        if self.done.ipam {
            errs.push(self.plugin.host_local().and_then(|h| h.release(&self.id.container_id, &self.id.ifname)));
        }
        errs.into_result().map_err(|e| e.context("undo"))
    }
}

fn route(dst: IpNet, gw: Option<IpAddr>) -> Route {
    Route::new(dst, gw)
}

/// IPs asked for through CNI_ARGS `IP=`, `args.cni.ips` and `runtimeConfig.ips`.
fn requested_ips(input: &PluginInput, req: &Request<'_>) -> Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Some(s) = req.arg("IP") {
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let ip = part.split('/').next().unwrap_or(part);
            out.push(
                ip.parse()
                    .map_err(|_| CniError::invalid_env("CNI_ARGS", format!("IP={part:?} is not an IP address")))?,
            );
        }
    }
    let f = Fields::config(&input.raw);
    let cni = f.get("args").and_then(Value::as_object).map(|a| f.nested("args", a));
    let cni = cni.as_ref().and_then(|a| a.get("cni").and_then(Value::as_object).map(|c| a.nested("cni", c)));
    if let Some(ips) = cni.and_then(|c| c.get("ips")) {
        let arr = ips.as_array().ok_or_else(|| CniError::invalid_config("args.cni.ips", "must be a list"))?;
        for (i, v) in arr.iter().enumerate() {
            let s = v
                .as_str()
                .ok_or_else(|| CniError::invalid_config(&format!("args.cni.ips[{i}]"), "must be a string"))?;
            let ip = s.split('/').next().unwrap_or(s);
            out.push(ip.parse().map_err(|_| {
                CniError::invalid_config(&format!("args.cni.ips[{i}]"), format!("{s:?} is not an IP address"))
            })?);
        }
    }
    out.extend(input.runtime_config.ips.iter().copied());
    out.dedup();
    Ok(out)
}
