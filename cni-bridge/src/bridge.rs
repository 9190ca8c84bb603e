//! The bridge plugin: a Linux bridge on the node, a veth pair per attachment with its peer
//! created directly in the pod, host-local addresses, routes, gateway and masquerade.
//! ADD is a transaction: whatever it set up is undone if a later step fails.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;
use podnet_netns::NetNs;

use crate::attachment::{Attachment, AttachmentStore};
use crate::config::{BridgeConfig, PluginInput};
use crate::engine::{nl_err, Request};
use crate::error::{codes, CniError, ErrorList, Result};
use crate::ipam::{HostLocal, IpamConfig};
use crate::names::{bridge_mac, format_mac, parse_mac, AttachmentId, HOST_VETH_PREFIX};
use crate::nft::{Firewall, FirewallPlan};
use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::rtnl::{Link, RouteSpec, Rtnl, VethSpec, BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED};
use crate::{portmap, sysctl};

/// Everything an ADD, DEL, CHECK or GC of the bridge plugin needs from the plugin input.
pub struct BridgePlugin {
    pub network: String,
    pub conf: BridgeConfig,
    pub ipam: IpamConfig,
}

/// What DEL does after the firewall rules: the links (whose deletion waits for an RCU grace
/// period, ~20 ms), then the addresses go back to the pool, then the record. An IP is never free
/// while an interface still uses it.
struct DelTail {
    host_veth: String,
    netns: Option<PathBuf>,
    container_id: String,
    ifname: String,
    fw_open: Option<Firewall>,
    host_local: Result<HostLocal>,
    store: AttachmentStore,
}

impl DelTail {
    /// `keep_record_on_error`: a deferred DEL keeps the record when a step failed, so that a
    /// later DEL or GC can finish the work (its caller was already told it succeeded).
    fn run(self, errs: &mut ErrorList, keep_record_on_error: bool) {
        let DelTail { host_veth, netns, container_id, ifname, fw_open, host_local, store } = self;
        let host_veth_existed = match Rtnl::new().and_then(|mut host| host.delete_link_by_name(&host_veth)) {
            Ok(existed) => existed,
            Err(e) => {
                errs.push(Err(nl_err("delete the host veth", e)));
                false
            }
        };
        // Deleting the host end deletes the pod end; only if the host end was already gone
        // can a pod end have outlived it.
        if !host_veth_existed {
            if let Some(ns) = netns.as_deref().filter(|p| p.exists()).and_then(|p| NetNs::open(p).ok()) {
                let name = ifname.clone();
                if let Ok(r) = ns.run(move || Rtnl::new().and_then(|mut nl| nl.delete_link_by_name(&name))) {
                    errs.push(r.map(drop).map_err(|e| nl_err("delete the pod interface", e)));
                }
            }
        }
        drop(fw_open);
        errs.push(host_local.and_then(|h| h.release(&container_id, &ifname)));
        if !keep_record_on_error || errs.is_empty() {
            errs.push(store.remove(&container_id, &ifname));
        }
    }
}

/// DELs waiting for [`run_deferred`]; `None`: DEL does all its work before it returns.
static DEFERRED: Mutex<Option<Vec<(String, DelTail)>>> = Mutex::new(None);

/// For a long-lived caller that answers before it finishes (podnet's shim): from now on, a DEL
/// of this process removes the attachment's firewall rules and returns; deleting its links,
/// releasing its addresses and removing its record wait for [`run_deferred`]. Until then the
/// record stays, so a DEL or GC from another process still finds the attachment.
pub fn defer_dels() {
    let mut d = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
    if d.is_none() {
        *d = Some(Vec::new());
    }
}

/// Finishes the deferred DELs, in order; returns one message per DEL that failed.
pub fn run_deferred() -> Vec<String> {
    let pending = match DEFERRED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(list) => std::mem::take(list),
        None => return Vec::new(),
    };
    let mut failed = Vec::new();
    for (what, tail) in pending {
        let mut errs = ErrorList::default();
        tail.run(&mut errs, true);
        if let Err(e) = errs.into_result(&what) {
            failed.push(e.to_string());
        }
    }
    failed
}

impl BridgePlugin {
    pub fn from_input(input: &PluginInput) -> Result<Self> {
        let conf = BridgeConfig::from_raw(&input.raw)?;
        let ipam_v = conf.ipam.as_ref().ok_or_else(|| {
            CniError::invalid_config("ipam", "missing: the bridge plugin needs a host-local ipam section")
        })?;
        let ip_ranges = input.runtime_config.raw.get("ipRanges");
        let ipam = IpamConfig::from_json_with_ip_ranges(ipam_v, ip_ranges)?;
        if conf.hairpin_mode && conf.promisc_mode {
            return Err(CniError::invalid_config("promiscMode", "cannot be set together with hairpinMode"));
        }
        Ok(BridgePlugin { network: input.name.clone(), conf, ipam })
    }

    fn store(&self) -> AttachmentStore {
        AttachmentStore::new(self.conf.state_dir.as_deref(), &self.network)
    }

    fn host_local(&self) -> Result<HostLocal> {
        HostLocal::open(&self.ipam, &self.network)
    }

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
        let mut podnl = pod
            .run(Rtnl::new)
            .map_err(|e| CniError::io("enter the pod network namespace", e))?
            .map_err(|e| nl_err("open rtnetlink in the pod network namespace", e))?;
        if self.store().load(req.container_id, req.ifname)?.is_some() {
            return Err(CniError::new(
                codes::INTERNAL,
                format!("attachment {}/{} already exists on network {}", req.container_id, req.ifname, self.network),
            ));
        }
        let br = self.ensure_bridge(&mut host)?;
        // GC must not collect an attachment while it is being made (it is not in the
        // runtime's valid list yet): ADDs share this lock, GC takes it exclusively.
        let _gc_guard = self.store().lock(false)?;
        let mut undo = Undo { id: &id, plugin: self, ipam: false, veth: false, fw: false };
        let r = self.add_steps(
            input,
            req,
            &mut host,
            &mut podnl,
            &pod,
            &br,
            &id,
            pod_mac,
            &requested,
            with_port_maps,
            &mut undo,
        );
        match r {
            Ok(res) => Ok(res),
            Err(e) => {
                let leftovers = undo.run(&mut host);
                Err(match leftovers {
                    Ok(()) => e,
                    Err(u) => e.with_details(format!("cleanup after the failed ADD also failed: {u}")),
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_steps(
        &self,
        input: &PluginInput,
        req: &Request<'_>,
        host: &mut Rtnl,
        podnl: &mut Rtnl,
        pod: &NetNs,
        br: &Link,
        id: &AttachmentId,
        pod_mac: [u8; 6],
        requested: &[IpAddr],
        with_port_maps: bool,
        undo: &mut Undo<'_>,
    ) -> Result<CniResult> {
        let c = &self.conf;
        let ipam = self.host_local()?;
        // A second ADD of the same attachment stops here, before touching the first one's
        // state: IPAM refuses a duplicate allocation.
        let allocated = ipam.allocate(req.container_id, req.ifname, requested)?;
        undo.ipam = true;

        let host_veth = id.host_veth();
        let host_mac = id.host_mac();
        let tag = id.tag();
        host.create_veth(&VethSpec {
            host_name: &host_veth,
            host_mac,
            peer_name: req.ifname,
            peer_mac: pod_mac,
            peer_netns: pod.as_fd().as_raw_fd(),
            mtu: c.mtu,
            master: Some(br.index),
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
        undo.veth = true;
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

        // The pod side, in the reference's order: addresses (no DAD wait unless asked),
        // arp_notify, up (announcing the addresses), routes.
        let pod_index = hv
            .peer_index
            .ok_or_else(|| CniError::new(codes::INTERNAL, format!("host veth {host_veth} reports no peer")))?;
        let dad = if c.enable_dad && allocated.iter().any(|a| a.address.addr().is_ipv6()) {
            Some(crate::dad::DadWatch::new(pod)?)
        } else {
            None
        };
        let mut ips = Vec::new();
        for a in &allocated {
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
        let mut routes: Vec<Route> = self.ipam.routes.clone();
        if c.is_default_gateway {
            for a in &allocated {
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

        // The node side: gateway addresses, forwarding.
        if c.is_gateway {
            let gw_link = self.gateway_link(host, br)?;
            for a in &allocated {
                if let Some(gw) = a.gateway {
                    let gw_net =
                        IpNet::new(gw, a.address.prefix_len()).map_err(|e| CniError::internal("gateway address", e))?;
                    ensure_addr(host, &gw_link, gw_net, c.force_address)?;
                }
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

        let mut plan = FirewallPlan { tag: id.tag(), masq: Vec::new(), port_maps: Vec::new(), mac_spoof: None };
        if c.ip_masq {
            plan.masq = allocated.iter().map(|a| (a.address.addr(), a.address.trunc())).collect();
        }
        if c.mac_spoof_check {
            plan.mac_spoof = Some((host_veth.clone(), pod_mac));
        }
        if with_port_maps {
            let pod_ips: Vec<IpNet> = allocated.iter().map(|a| a.address).collect();
            plan.port_maps = portmap::plan(&input.runtime_config.port_mappings, &pod_ips);
            if !plan.port_maps.is_empty() && pod_ips.iter().any(|i| i.addr().is_ipv4()) {
                // Lets the node's own 127.0.0.1 reach a hostPort: DNAT'd loopback traffic
                // must be routable out of the bridge.
                sysctl::ensure_if("ipv4", &br.name, "route_localnet", "1")?;
            }
        }
        if !(plan.masq.is_empty() && plan.port_maps.is_empty() && plan.mac_spoof.is_none()) {
            undo.fw = true;
            let mut fw = Firewall::new()?;
            fw.add(&plan)?;
        }

        let netns = req.netns.map(|p| p.display().to_string()).unwrap_or_default();
        let mut result = CniResult {
            cni_version: input.cni_version.clone(),
            interfaces: vec![
                Interface { name: br.name.clone(), mac: format_mac(&br.mac), ..Default::default() },
                Interface { name: host_veth.clone(), mac: format_mac(&host_mac), ..Default::default() },
                Interface {
                    name: req.ifname.to_owned(),
                    mac: format_mac(&pod_mac),
                    sandbox: Some(netns.clone()),
                    ..Default::default()
                },
            ],
            ips,
            routes,
            dns: Default::default(),
        };
        result.dns = crate::engine::dns_for(self.conf.dns.as_ref(), self.ipam.resolv_conf.as_deref())?;
        self.store().save(&Attachment {
            network: self.network.clone(),
            container_id: req.container_id.to_owned(),
            ifname: req.ifname.to_owned(),
            netns,
            bridge: br.name.clone(),
            host_veth,
            tag,
            result: result.to_json(crate::config::LATEST_VERSION)?,
        })?;
        Ok(result)
    }

    /// The bridge, created (up, stable MAC) if missing; an existing bridge is reused.
    fn ensure_bridge(&self, host: &mut Rtnl) -> Result<Link> {
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

    /// Where the gateway address lives: the bridge, or `<bridge>.<vlan>` on a VLAN bridge.
    fn gateway_link(&self, host: &mut Rtnl, br: &Link) -> Result<Link> {
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

    /// DEL: idempotent, works without the pod's namespace, and reports every failure after
    /// trying every step.
    pub fn del(&self, req: &Request<'_>) -> Result<()> {
        let id = AttachmentId::new(&self.network, req.container_id, req.ifname);
        let mut errs = ErrorList::default();
        // Rules, then links, then the addresses go back to the pool: an IP is never free
        // while an interface or a rule still uses it.
        let (tag, pm_tag) = (id.tag(), id.portmap_tag());
        // The firewall socket stays open until the links are gone: closing it right after its
        // commit waits for the kernel to free the removed rules (an RCU grace period); kept
        // open, that wait overlaps the one the veth deletion makes anyway (~10 ms per DEL).
        let mut fw_open = None;
        errs.push(Firewall::new().and_then(|mut fw| {
            let r = fw.remove_where(&tag, |t| t == tag || t == pm_tag).map(drop);
            fw_open = Some(fw);
            r
        }));
        let tail = DelTail {
            host_veth: id.host_veth(),
            netns: req.netns.map(Path::to_path_buf),
            container_id: req.container_id.to_owned(),
            ifname: req.ifname.to_owned(),
            fw_open,
            host_local: self.host_local(),
            store: self.store(),
        };
        let what = format!("DEL {}/{} on network {}", req.container_id, req.ifname, self.network);
        let deferred = {
            let mut d = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
            match d.as_mut() {
                // The rules are gone and the caller is answered now; the links, the address and
                // the record go right after, in order (see [`defer_dels`]).
                Some(list) if errs.is_empty() => {
                    list.push((what.clone(), tail));
                    None
                }
                _ => Some(tail),
            }
        };
        if let Some(tail) = deferred {
            tail.run(&mut errs, false);
        }
        errs.into_result(&what)
    }

    /// CHECK: the pod interface carries the result's addresses and routes, the host veth is on
    /// the bridge, IPAM holds the addresses, and the firewall rules are in place.
    pub fn check(&self, input: &PluginInput, req: &Request<'_>) -> Result<()> {
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
            plan.masq = prev.ips.iter().map(|i| (i.address.addr(), i.address.trunc())).collect();
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

    /// GC: removes every attachment of this network that is not in `valid`: its records,
    /// IP reservations, firewall rules and host veths.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<()> {
        let mut errs = ErrorList::default();
        let is_valid = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
        let store = self.store();
        // Wait for in-flight ADDs, and keep new ones out while collecting.
        let _gc_guard = store.lock(true)?;
        match store.list() {
            Ok(records) => {
                for (cid, ifname, rec) in records {
                    if !is_valid(&cid, &ifname) {
                        // DEL needs no record, so a torn one is collected too.
                        errs.push(self.del(&Request::new(&cid, &ifname, None)));
                    } else if let Err(e) = rec {
                        errs.0.push(e);
                    }
                }
            }
            Err(e) => errs.0.push(e),
        }
        errs.push(self.host_local().and_then(|h| h.gc(valid)).map(drop));
        let valid_tags: Vec<String> = valid
            .iter()
            .flat_map(|(c, i)| {
                let id = AttachmentId::new(&self.network, c, i);
                [id.tag(), id.portmap_tag()]
            })
            .collect();
        let prefix = AttachmentId::network_tag_prefix(&self.network);
        errs.push(Firewall::new().and_then(|mut fw| {
            fw.remove_where(&format!("stale rules of network {}", self.network), |t| {
                t.starts_with(&prefix) && !valid_tags.iter().any(|v| v == t)
            })
            .map(drop)
        }));
        let valid_veths: Vec<String> =
            valid.iter().map(|(c, i)| AttachmentId::new(&self.network, c, i).host_veth()).collect();
        match Rtnl::new().and_then(|mut host| host.links().map(|l| (host, l))) {
            Ok((mut host, links)) => {
                // Only veths stamped with this network's tag prefix: another network may
                // share the bridge.
                for l in links {
                    let ours = l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix));
                    if ours && l.name.starts_with(HOST_VETH_PREFIX) && !valid_veths.contains(&l.name) {
                        errs.push(
                            host.delete_link_by_name(&l.name)
                                .map(drop)
                                .map_err(|e| nl_err(&format!("delete stale veth {}", l.name), e)),
                        );
                    }
                }
            }
            Err(e) => errs.push(Err(nl_err("list links", e))),
        }
        errs.into_result(&format!("GC of network {}", self.network))
    }

    /// STATUS: the IPAM store is usable.
    pub fn status(&self) -> Result<()> {
        self.host_local()
            .map(drop)
            .map_err(|e| CniError::new(codes::PLUGIN_NOT_AVAILABLE, format!("IPAM store unusable: {}", e.msg)))
    }
}

fn route(dst: IpNet, gw: Option<IpAddr>) -> Route {
    Route::new(dst, gw)
}

fn vlan_err(link: &str, vid: u16, e: crate::netlink::NlError) -> CniError {
    if e.is(libc::EOPNOTSUPP) || e.is(libc::EINVAL) {
        CniError::new(codes::INVALID_CONFIG, format!("invalid network config field \"vlan\": cannot add VLAN {vid} on {link}: {e} (does this kernel have bridge VLAN filtering?)"))
    } else {
        nl_err(&format!("add VLAN {vid} on {link}"), e)
    }
}

/// Puts `addr` on `link`. Another address of the same subnet is a conflict, replaced only
/// with `forceAddress` (IPv4 bridges carry one gateway; IPv6 ones one per subnet).
fn ensure_addr(host: &mut Rtnl, link: &Link, addr: IpNet, force: bool) -> Result<()> {
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
    if let Some(ips) = input.raw.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get("ips")) {
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

/// What a failed ADD must undo, in reverse order of setup.
struct Undo<'a> {
    id: &'a AttachmentId,
    plugin: &'a BridgePlugin,
    ipam: bool,
    veth: bool,
    fw: bool,
}

impl Undo<'_> {
    fn run(self, host: &mut Rtnl) -> Result<()> {
        let mut errs = ErrorList::default();
        if self.fw {
            errs.push(Firewall::new().and_then(|mut fw| fw.remove(&self.id.tag()).map(drop)));
        }
        if self.veth {
            errs.push(
                host.delete_link_by_name(&self.id.host_veth()).map(drop).map_err(|e| nl_err("delete the host veth", e)),
            );
        }
        if self.ipam {
            errs.push(self.plugin.host_local().and_then(|h| h.release(&self.id.container_id, &self.id.ifname)));
        }
        errs.into_result("undo")
    }
}
