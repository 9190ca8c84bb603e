//! Cluster mode: a bridge whose `ipam` names no range (no `subnet`, no `ranges`, no
//! `runtimeConfig.ipRanges`) takes it from the node facts file the podnet node agent writes
//! ([`NodeFacts`], `ipam.nodeFacts` or [`DEFAULT_NODE_FACTS`]), so one conflist serves every
//! node. From the facts: the range set `[{subnet, gateway}]`; the MTU, unless the conflist sets
//! one; the masquerade exemption, the cluster CIDR instead of the pod subnet (pod-to-pod
//! traffic across nodes keeps its source address). And pods of the bridge reach each other
//! through the node's IP stack ([`BridgePlugin::route_pods_through_node`]) unless
//! `portIsolation` is false.
//!
//! The facts are read when the plugin input is, but a failure is only raised by ADD, CHECK and
//! STATUS: DEL and GC release by container id, and must work once the agent has stopped and
//! removed the file (a node leaving the cluster).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde_json::{Map, Value};

use super::BridgePlugin;
use crate::config::Fields;
use crate::error::{codes, CniError, Result};
use crate::ipam::{Range, RangeSet};
use crate::node_facts::{NodeFacts, NodeFactsError, DEFAULT_NODE_FACTS};
use crate::sysctl;

/// The node facts of a cluster-mode bridge, or why they could not be had.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub path: PathBuf,
    facts: std::result::Result<NodeFacts, CniError>,
}

/// Whether a range field is given: present, not null, not an empty string or list.
fn given(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

impl Cluster {
    /// The facts file to read when `ipam` names no range: `ipam.nodeFacts` (absolute) or the
    /// default. None: the conflist (or the runtime's `ipRanges`) names the ranges itself.
    pub(super) fn source(ipam: &Value, ip_ranges: Option<&Value>) -> Result<Option<PathBuf>> {
        // Not an object: host-local's own parser says so.
        let Some(obj) = ipam.as_object() else { return Ok(None) };
        let f = Fields::config(obj).with_prefix("ipam");
        let path = match f.str("nodeFacts")? {
            None | Some("") => None,
            Some(p) if p.starts_with('/') => Some(PathBuf::from(p)),
            Some(p) => return Err(f.err("nodeFacts", format_args!("{p:?} is not an absolute path"))),
        };
        if given(f.get("subnet")) || given(f.get("ranges")) {
            if path.is_some() {
                return Err(f.err(
                    "nodeFacts",
                    "cannot be used with ipam.subnet or ipam.ranges: the node facts provide the range",
                ));
            }
            return Ok(None);
        }
        if given(ip_ranges) {
            return Ok(None);
        }
        Ok(Some(path.unwrap_or_else(|| PathBuf::from(DEFAULT_NODE_FACTS))))
    }

    pub(super) fn load(path: PathBuf) -> Cluster {
        let facts = NodeFacts::read(&path).map_err(facts_error);
        Cluster { path, facts }
    }

    /// The facts, or the error that stops ADD, CHECK and STATUS.
    pub fn facts(&self) -> Result<&NodeFacts> {
        self.facts.as_ref().map_err(Clone::clone)
    }

    /// host-local's range set: the whole subnet but its network, gateway and broadcast
    /// addresses. None without facts.
    pub(super) fn range_sets(&self) -> Vec<RangeSet> {
        let Ok(f) = &self.facts else { return Vec::new() };
        // NodeFacts::check keeps the subnet at /30 or larger: first <= last.
        let (first, last) = (u32::from(f.subnet.network()) + 1, u32::from(f.subnet.broadcast()) - 1);
        vec![RangeSet(vec![Range {
            subnet: IpNet::V4(f.subnet),
            range_start: Ipv4Addr::from(first).into(),
            range_end: Ipv4Addr::from(last).into(),
            gateway: Some(f.gateway.into()),
        }])]
    }

    /// The facts' MTU when the conflist sets none; port isolation on unless the conflist
    /// says `"portIsolation": false`.
    pub(super) fn apply(&self, conf: &mut super::BridgeConfig, raw: &Map<String, Value>) -> Result<()> {
        if let (None, Ok(f)) = (conf.mtu, &self.facts) {
            conf.mtu = Some(f.mtu);
        }
        conf.port_isolation = Fields::config(raw).bool("portIsolation")?.unwrap_or(true);
        Ok(())
    }

    /// The cluster CIDR when it holds `addr`.
    fn cluster_cidr_of(&self, addr: &IpNet) -> Option<Ipv4Net> {
        let f = self.facts.as_ref().ok()?;
        match addr {
            IpNet::V4(a) if f.cluster_cidr.contains(&a.addr()) => Some(f.cluster_cidr),
            _ => None,
        }
    }
}

/// The CNI error for facts that could not be had: the file and field, and who writes it.
/// A missing file is "try again later" (11): the agent may not have leased the node's subnet
/// yet, and the runtime retries. An unreadable one is an I/O failure (5), a malformed or
/// invalid one a configuration error (7) naming `ipam.nodeFacts`.
fn facts_error(e: NodeFactsError) -> CniError {
    let writer = "the podnet node agent (`podnet node run`) writes it";
    match e {
        NodeFactsError::Missing { .. } => CniError::new(
            codes::TRY_AGAIN,
            format!(
                "{e}: {writer} once it has leased this node's pod subnet; this network's ipam names no subnet \
                 or ranges and takes them from that file (ipam.nodeFacts)"
            ),
        ),
        NodeFactsError::Unreadable { .. } => CniError::new(codes::IO_FAILURE, format!("{e} ({writer})")),
        NodeFactsError::Malformed { .. } | NodeFactsError::Invalid { .. } => {
            CniError::invalid_config("ipam.nodeFacts", format!("{e} ({writer})"))
        }
    }
}

impl BridgePlugin {
    /// Cluster mode's facts, raised for ADD, CHECK and STATUS (None outside cluster mode).
    /// Routing pods through the node needs the node's address on the bridge: `isGateway`.
    pub(super) fn cluster_facts(&self) -> Result<Option<&NodeFacts>> {
        let Some(c) = &self.cluster else { return Ok(None) };
        let facts = c.facts()?;
        if self.conf.port_isolation && !self.conf.is_gateway {
            return Err(CniError::invalid_config(
                "isGateway",
                "must be true in cluster mode (an ipam with no subnet or ranges): pods of the bridge reach each \
                 other through the node's address on it; or set \"portIsolation\": false",
            ));
        }
        Ok(Some(facts))
    }

    /// What ipMasq does not masquerade for a pod address: the cluster CIDR in cluster mode,
    /// else the pod's subnet. ADD and CHECK agree through this.
    pub(super) fn masq_exempt(&self, addr: &IpNet) -> IpNet {
        self.cluster.as_ref().and_then(|c| c.cluster_cidr_of(addr)).map(IpNet::V4).unwrap_or_else(|| addr.trunc())
    }

    /// Whether pods of this bridge reach each other through the node's IP stack.
    pub(super) fn route_pods_through_node(&self) -> bool {
        self.cluster.is_some() && self.conf.port_isolation
    }

    /// Makes pod-to-pod traffic of the bridge go through the node's L3, so that conntrack sees
    /// both directions of a connection a node's DNAT (a Kubernetes Service) sent to a pod of
    /// the same bridge, with or without br_netfilter. The ports are isolated (`make_veth`):
    /// a pod's frames reach only the bridge device, never another port. The bridge answers
    /// the pods' ARP requests for each other with its own MAC, and forwards.
    ///
    /// What the kernel does (net/ipv4/arp.c `arp_process`, `arp_fwd_pvlan`, and
    /// Documentation/networking/ip-sysctl.rst): a request for an address whose route leaves
    /// through the interface it came in on is answered only with `proxy_arp_pvlan`
    /// ("allow proxy arp replies back to the same interface", RFC 3069 VLAN aggregation;
    /// route.c refuses the ARP route lookup with in == out device otherwise), and only when
    /// the interface forwards. `proxy_arp` alone (`arp_fwd_proxy`) never answers for the same
    /// interface; it is set too, for addresses the node routes elsewhere. A proxied answer to
    /// a broadcast request waits a random part of `neigh/<if>/proxy_delay` (0.8 s by default)
    /// unless that is 0, so it is set to 0. `send_redirects=0`: the node would otherwise tell
    /// a pod to reach its neighbour directly (harmless, since the pod's ARP for it gets the
    /// bridge's MAC again, but noise); the kernel ORs it with `conf/all/send_redirects`, which
    /// podnet leaves to the node's administrator.
    pub(super) fn route_through_node(&self, gw_link: &str) -> Result<()> {
        sysctl::ensure("net.ipv4.ip_forward", "1")?;
        for (key, value) in [("proxy_arp_pvlan", "1"), ("proxy_arp", "1"), ("send_redirects", "0")] {
            sysctl::ensure_if("ipv4", gw_link, key, value)?;
        }
        sysctl::ensure_neigh("ipv4", gw_link, "proxy_delay", "0")
    }

    /// CHECK's side of [`Self::route_through_node`]: the bridge still answers for the pods.
    pub(super) fn check_route_through_node(&self, gw_link: &str) -> Result<()> {
        for (key, want) in [("proxy_arp_pvlan", "1"), ("proxy_arp", "1")] {
            let have = sysctl::read_if("ipv4", gw_link, key)?;
            if have != want {
                return Err(CniError::new(
                    codes::INTERNAL,
                    format!("{gw_link} has {key}={have}: pods of the bridge cannot reach each other through the node"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde_json::json;

    use super::*;
    use crate::args::Request;
    use crate::config::PluginInput;
    use crate::ipam::HostLocal;

    struct TmpDir(PathBuf);

    impl TmpDir {
        fn new() -> TmpDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "podnet-cluster-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TmpDir(p)
        }
        fn facts(&self) -> PathBuf {
            self.0.join("node.json")
        }
        /// Writes the test's facts (10.244.7.0/24 of 10.244.0.0/16, MTU 1400).
        fn write_facts(&self) -> PathBuf {
            let f = NodeFacts {
                node: "node-7".into(),
                subnet: "10.244.7.0/24".parse().unwrap(),
                gateway: "10.244.7.1".parse().unwrap(),
                mtu: 1400,
                cluster_cidr: "10.244.0.0/16".parse().unwrap(),
                backend: "vxlan".into(),
            };
            f.write_atomic(&self.facts()).unwrap();
            self.facts()
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A `podnet` plugin input over `ipam` (merged into a host-local object) and `extra` keys.
    fn input(tmp: &TmpDir, ipam: Value, extra: Value) -> PluginInput {
        let mut v = json!({
            "cniVersion": "1.1.0", "name": "clusternet", "type": "podnet", "isGateway": true, "ipMasq": true,
            "stateDir": tmp.0.join("state"),
            "ipam": {"type": "host-local", "dataDir": tmp.0.join("ipam")}
        });
        for (k, x) in ipam.as_object().unwrap() {
            v["ipam"][k] = x.clone();
        }
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        PluginInput::parse(v.to_string().as_bytes()).unwrap()
    }

    fn plugin(tmp: &TmpDir, ipam: Value, extra: Value) -> Result<BridgePlugin> {
        BridgePlugin::from_input(&input(tmp, ipam, extra))
    }

    #[test]
    fn cluster_mode_only_when_no_range_is_named() {
        let tmp = TmpDir::new();
        let facts = tmp.write_facts();
        let at = json!({"nodeFacts": facts});
        // No subnet, no ranges, no ipRanges: the facts give the range set [{subnet, gateway}].
        let p = plugin(&tmp, at.clone(), json!({})).unwrap();
        assert_eq!(p.cluster.as_ref().unwrap().path, facts);
        assert_eq!(p.ipam.ranges.len(), 1);
        let r = &p.ipam.ranges[0].0[0];
        assert_eq!(r.subnet.to_string(), "10.244.7.0/24");
        assert_eq!((r.range_start.to_string(), r.range_end.to_string()), ("10.244.7.1".into(), "10.244.7.254".into()));
        assert_eq!(r.gateway, Some("10.244.7.1".parse().unwrap()));
        // Empty values name no range either.
        for empty in [json!({"subnet": ""}), json!({"ranges": []}), json!({"subnet": null, "ranges": null})] {
            let mut ipam = empty.clone();
            ipam["nodeFacts"] = json!(facts);
            assert!(plugin(&tmp, ipam, json!({})).unwrap().cluster.is_some(), "{empty}");
        }
        // Without nodeFacts, the default path.
        let p = plugin(&tmp, json!({}), json!({})).unwrap();
        assert_eq!(p.cluster.unwrap().path, PathBuf::from(DEFAULT_NODE_FACTS));

        // A subnet, ranges or the runtime's ipRanges: the conflist's own ranges, no facts read.
        for (ipam, extra) in [
            (json!({"subnet": "10.88.0.0/16"}), json!({})),
            (json!({"ranges": [[{"subnet": "10.88.0.0/16"}]]}), json!({})),
            (json!({}), json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.89.0.0/16"}]]}})),
            (json!({"nodeFacts": facts}), json!({"runtimeConfig": {"ipRanges": [[{"subnet": "10.89.0.0/16"}]]}})),
            (json!({"Subnet": "10.88.0.0/16"}), json!({})),
        ] {
            let p = plugin(&tmp, ipam.clone(), extra.clone()).unwrap();
            assert!(p.cluster.is_none(), "{ipam} {extra}");
            assert!(!p.conf.port_isolation && p.conf.mtu.is_none(), "{ipam} {extra}");
            assert_ne!(p.ipam.ranges[0].0[0].subnet.to_string(), "10.244.7.0/24");
        }
    }

    #[test]
    fn node_facts_key_errors_name_it() {
        let tmp = TmpDir::new();
        let cases = [
            (json!({"nodeFacts": "run/podnet/node.json"}), "is not an absolute path"),
            (json!({"nodeFacts": 7}), "must be a string"),
            (json!({"nodeFacts": "/run/x.json", "subnet": "10.88.0.0/16"}), "cannot be used with ipam.subnet"),
            (json!({"nodeFacts": "/run/x.json", "ranges": [[{"subnet": "10.88.0.0/16"}]]}), "cannot be used"),
        ];
        for (ipam, why) in cases {
            let e = plugin(&tmp, ipam.clone(), json!({})).err().unwrap();
            assert_eq!(e.code, codes::INVALID_CONFIG, "{ipam}: {e}");
            assert!(e.msg.contains("\"ipam.nodeFacts\"") && e.msg.contains(why), "{ipam}: {e}");
        }
    }

    #[test]
    fn the_facts_give_the_mtu_unless_the_conflist_sets_one() {
        let tmp = TmpDir::new();
        let at = json!({"nodeFacts": tmp.write_facts()});
        assert_eq!(plugin(&tmp, at.clone(), json!({})).unwrap().conf.mtu, Some(1400));
        assert_eq!(plugin(&tmp, at.clone(), json!({"mtu": 0})).unwrap().conf.mtu, Some(1400));
        assert_eq!(plugin(&tmp, at.clone(), json!({"mtu": 9000})).unwrap().conf.mtu, Some(9000));
        assert_eq!(plugin(&tmp, at, json!({"MTU": 1300})).unwrap().conf.mtu, Some(1300));
    }

    #[test]
    fn cluster_mode_masquerades_only_leaving_the_cluster_cidr() {
        let tmp = TmpDir::new();
        let at = json!({"nodeFacts": tmp.write_facts()});
        let pod: IpNet = "10.244.7.5/24".parse().unwrap();
        let p = plugin(&tmp, at, json!({})).unwrap();
        assert_eq!(p.masq_exempt(&pod).to_string(), "10.244.0.0/16");
        let p = plugin(&tmp, json!({"subnet": "10.244.7.0/24"}), json!({})).unwrap();
        assert_eq!(p.masq_exempt(&pod).to_string(), "10.244.7.0/24");
    }

    #[test]
    fn cluster_mode_isolates_ports_unless_told_not_to() {
        let tmp = TmpDir::new();
        let at = json!({"nodeFacts": tmp.write_facts()});
        let p = plugin(&tmp, at.clone(), json!({})).unwrap();
        assert!(p.conf.port_isolation && p.route_pods_through_node());
        let p = plugin(&tmp, at.clone(), json!({"portIsolation": false})).unwrap();
        assert!(!p.conf.port_isolation && !p.route_pods_through_node());
        assert!(plugin(&tmp, at.clone(), json!({"portIsolation": true})).unwrap().route_pods_through_node());

        // The node routes between the pods through its address on the bridge: isGateway.
        let p = plugin(&tmp, at.clone(), json!({"isGateway": false})).unwrap();
        let e = p.add(&input(&tmp, at.clone(), json!({"isGateway": false})), &Request::new("c1", "eth0", None), true);
        let e = e.err().unwrap();
        assert_eq!(e.code, codes::INVALID_CONFIG);
        assert!(e.msg.contains("\"isGateway\"") && e.msg.contains("portIsolation"), "{e}");
        let p2 = plugin(&tmp, at, json!({"isGateway": false, "portIsolation": false})).unwrap();
        assert!(p2.cluster_facts().unwrap().is_some());
        drop(p);
    }

    #[test]
    fn a_missing_facts_file_stops_add_check_and_status_but_not_del() {
        let tmp = TmpDir::new();
        let missing = tmp.facts();
        let at = json!({"nodeFacts": missing});
        let inp = input(&tmp, at.clone(), json!({}));
        // The input is read, with no range: DEL and GC release by container id.
        let p = BridgePlugin::from_input(&inp).unwrap();
        assert!(p.ipam.ranges.is_empty());
        let path = missing.display().to_string();

        let netns = tmp.0.join("no-such-netns");
        let e = p.add(&inp, &Request::new("c1", "eth0", Some(&netns)), true).err().unwrap();
        assert_eq!(e.code, codes::TRY_AGAIN, "{e}");
        assert!(e.msg.contains(&path) && e.msg.contains("`podnet node run`"), "{e}");
        assert!(e.msg.starts_with(&format!("node facts file {path} does not exist")), "{e}");
        assert!(!tmp.0.join("ipam").exists() && !tmp.0.join("state").exists(), "ADD created something");

        let e = p.check(&inp, &Request::new("c1", "eth0", Some(&netns))).err().unwrap();
        assert_eq!(e.code, codes::TRY_AGAIN);
        let e = p.status().err().unwrap();
        assert_eq!(e.code, codes::PLUGIN_NOT_AVAILABLE);
        assert!(e.msg.contains(&path) && e.msg.contains("podnet node run"), "{e}");

        // What DEL and GC use of the ranges: the store opens and releases with none.
        let hl = HostLocal::open(&p.ipam, &p.network).unwrap();
        hl.release("c1", "eth0").unwrap();
        assert!(hl.gc(&[]).unwrap().is_empty());

        // Once the agent writes the file, the same conflist works.
        tmp.write_facts();
        let p = plugin(&tmp, at, json!({})).unwrap();
        p.status().unwrap();
        assert_eq!(p.ipam.ranges.len(), 1);
    }

    #[test]
    fn bad_facts_name_the_file_and_the_field() {
        let tmp = TmpDir::new();
        let path = tmp.facts();
        fs::write(
            &path,
            json!({"node": "n", "subnet": "10.244.7.0/24", "gateway": "10.244.8.1", "mtu": 1400,
                   "clusterCIDR": "10.244.0.0/16"})
            .to_string(),
        )
        .unwrap();
        let p = plugin(&tmp, json!({"nodeFacts": path}), json!({})).unwrap();
        let e = p.status().err().unwrap();
        assert!(e.msg.contains("field \"gateway\"") && e.msg.contains(&path.display().to_string()), "{e}");
        let e = p.cluster_facts().err().unwrap();
        assert_eq!(e.code, codes::INVALID_CONFIG);
        assert!(e.msg.starts_with("invalid network config field \"ipam.nodeFacts\": node facts file"), "{e}");
        fs::write(&path, "not json").unwrap();
        let e = plugin(&tmp, json!({"nodeFacts": path}), json!({})).unwrap().cluster_facts().err().unwrap();
        assert!(e.msg.contains("is not a JSON object") && e.msg.contains("podnet node run"), "{e}");
    }
}
