//! Cluster mode through the exec'd `podnet` plugin: a conflist whose ipam names no subnet takes
//! the node's pod subnet, gateway, MTU and cluster CIDR from the node facts file the node agent
//! writes (written here with the agent's own `NodeFacts::write_atomic`). Pods of one node reach
//! each other through the node's IP stack (isolated bridge ports, proxy ARP on the bridge), so a
//! Service DNAT in the node between two pods of the same bridge works without br_netfilter, and
//! fails without port isolation; ipMasq leaves traffic inside the cluster CIDR alone. Without
//! the facts file ADD, CHECK and STATUS fail naming it, and DEL and GC still clean up.
//!
//! Topology, all inside namespaces the test creates:
//!
//! ```text
//!   pod A ─┐
//!          ├─ cni0 10.244.7.1/24 ── node (no route out; bridge-nf-call off)
//!   pod B ─┘        the node facts: subnet 10.244.7.0/24 of cluster 10.244.0.0/16, MTU 1400
//!   "Service" 10.96.0.10:80: a DNAT to pod B:8080 in the node's prerouting (nft table ip svc)
//! ```

use std::path::{Path, PathBuf};

use cni_bridge::NodeFacts;
use podnet_tests::*;
use serde_json::{json, Value};

const NET: &str = "facts";
const BRIDGE: &str = "cni0";
const SUBNET: &str = "10.244.7.0/24";
const GATEWAY: &str = "10.244.7.1";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const CLUSTER_IP: &str = "10.96.0.10";

/// One node: its namespace (bridged frames skip conntrack, as without br_netfilter), a scratch
/// dir holding IPAM (`ipam/`), records (`state/`) and the facts file (`node.json`).
struct Node {
    ns: Ns,
    data: TempDir,
}

impl Node {
    fn new() -> Node {
        require_root();
        let ns = Ns::new("fn");
        ns.set_bridge_nf_call(false);
        Node { ns, data: TempDir::new("podnet-facts") }
    }

    fn facts_path(&self) -> PathBuf {
        self.data.path().join("node.json")
    }

    /// Writes the facts as the node agent does.
    fn write_facts(&self, mtu: u32) {
        let facts = NodeFacts {
            node: "node-7".into(),
            subnet: SUBNET.parse().expect("subnet"),
            gateway: GATEWAY.parse().expect("gateway"),
            mtu,
            cluster_cidr: CLUSTER_CIDR.parse().expect("cluster CIDR"),
            backend: "vxlan".into(),
        };
        facts.write_atomic(&self.facts_path()).expect("write the node facts");
    }

    /// The cluster conflist's `podnet` plugin as libcni hands it over: no subnet, the facts
    /// file named; `extra` keys set over it.
    fn conf(&self, extra: Value) -> Value {
        merge_conf(podnet_tests::cluster::facts_conf(NET, BRIDGE, self.data.path(), &self.facts_path()), extra)
    }

    fn add(&self, id: &str, pod: &Ns, conf: &Value) -> Value {
        Invocation::new("ADD", id, Some(&pod.path)).run(&self.ns, conf).ok().json()
    }

    fn del(&self, id: &str, pod: &Ns, conf: &Value) {
        Invocation::new("DEL", id, Some(&pod.path)).run(&self.ns, conf).ok();
    }

    fn assert_nothing_left(&self) {
        assert_nothing_left(&self.ns, NET, &self.data.path().join("ipam"), &self.data.path().join("cni-state"));
    }

    /// A fake ClusterIP: `CLUSTER_IP:80` DNATed to `backend:8080` in the node's prerouting, as
    /// kube-proxy's nftables mode would.
    fn add_service(&self, backend: &str) {
        self.ns.sh(&format!(
            "nft add table ip svc && \
             nft add chain ip svc prerouting '{{ type nat hook prerouting priority -100; }}' && \
             nft add rule ip svc prerouting ip daddr {CLUSTER_IP} tcp dport 80 dnat to {backend}:8080"
        ));
    }
}

/// The pod's IPv4 address from an ADD result, without the prefix.
fn pod_ip(res: &Value) -> String {
    let ips = res["ips"].as_array().unwrap_or_else(|| panic!("no ips in {res}"));
    let addr = ips.first().and_then(|i| i["address"].as_str()).unwrap_or_else(|| panic!("no address in {res}"));
    addr.split('/').next().unwrap_or(addr).to_string()
}

/// A server in `pod` on `port` answering each connection with `ss`'s view of it: the line
/// names the peer address the pod saw.
fn peer_server(pod: &Ns, port: u16) -> Background {
    let bg = pod.spawn(&format!("busybox nc -ll -p {port} -e /usr/bin/ss -Htn sport = :{port}"));
    pod.wait_listening("tcp", port);
    bg
}

/// Whether a `peer_server` line names `ip` as the peer (`ss` prints v4-mapped v6 addresses as
/// `[::ffff:a.b.c.d]:port`).
fn names_peer(line: &str, ip: &str) -> bool {
    line.split_whitespace()
        .last()
        .is_some_and(|peer| peer.starts_with(&format!("{ip}:")) || peer.contains(&format!(":{ip}]:")))
}

/// The MAC of `ifname` in `ns` (`ip link`: sysfs shows the namespace it was mounted in).
fn mac_of(ns: &Ns, ifname: &str) -> String {
    let out = ns.sh(&format!("ip -o link show {ifname}"));
    let mac = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next());
    mac.unwrap_or_else(|| panic!("no MAC in {out}")).to_string()
}

fn sysctl(ns: &Ns, path: &str) -> String {
    ns.sh(&format!("cat /proc/sys/{path}")).trim().to_string()
}

#[test]
#[ignore = "needs root"]
fn pods_take_the_node_facts_and_reach_each_other_through_the_node() {
    let node = Node::new();
    node.write_facts(1400);
    let (a, b) = (Ns::new("fa"), Ns::new("fb"));
    let c = node.conf(json!({}));
    let ra = node.add("pod-a", &a, &c);
    let rb = node.add("pod-b", &b, &c);
    let (ipa, ipb) = (pod_ip(&ra), pod_ip(&rb));

    // The facts' subnet, gateway and MTU.
    for ip in [&ipa, &ipb] {
        let octets = ip.parse::<std::net::Ipv4Addr>().expect("pod IPv4").octets();
        assert!(octets[..3] == [10, 244, 7] && (2..255).contains(&octets[3]), "{ip} is not a pod address of {SUBNET}");
    }
    assert_eq!(ra["ips"][0]["gateway"], GATEWAY, "{ra}");
    assert!(node.ns.sh(&format!("ip -4 addr show {BRIDGE}")).contains(&format!("{GATEWAY}/24")));
    for pod in [&a, &b] {
        assert!(pod.sh("ip link show eth0").contains("mtu 1400"), "pod eth0 MTU is not the facts' 1400");
    }

    // Cluster mode's L3 path: isolated ports, proxy ARP (private VLAN) on the bridge.
    for veth in podnet_veths(&node.ns) {
        assert!(node.ns.sh(&format!("bridge -d link show dev {veth}")).contains("isolated on"), "{veth} not isolated");
    }
    assert_eq!(sysctl(&node.ns, &format!("net/ipv4/conf/{BRIDGE}/proxy_arp_pvlan")), "1");
    assert_eq!(sysctl(&node.ns, &format!("net/ipv4/conf/{BRIDGE}/proxy_arp")), "1");
    assert_eq!(sysctl(&node.ns, &format!("net/ipv4/conf/{BRIDGE}/send_redirects")), "0");

    // The pods reach each other, through the node: pod A's neighbour entry for pod B is the
    // bridge's MAC, not B's, and the reply comes one router hop away.
    assert!(pings(&a, &ipb), "pod A cannot reach pod B");
    assert!(pings(&b, &ipa), "pod B cannot reach pod A");
    let neigh = a.sh(&format!("ip neigh show {ipb}"));
    assert!(neigh.contains(&mac_of(&node.ns, BRIDGE)), "pod A's neighbour entry for pod B is not the bridge: {neigh}");
    assert!(!neigh.contains(&mac_of(&b, "eth0")), "pod A reaches pod B's MAC directly: {neigh}");
    let ping = a.sh(&format!("busybox ping -c 1 -W 2 {ipb}"));
    assert!(ping.contains("ttl=63"), "pod B's reply did not cross the node's L3: {ping}");

    // ipMasq spares the whole cluster CIDR, not only the node's subnet.
    let masq: Vec<String> = node
        .ns
        .sh("nft list chain ip podnet postrouting")
        .lines()
        .filter(|l| l.contains("masquerade") && (l.contains(&ipa) || l.contains(&ipb)))
        .map(str::to_string)
        .collect();
    assert_eq!(masq.len(), 2, "one masquerade rule per pod: {masq:?}");
    for l in &masq {
        assert!(l.contains(&format!("ip daddr != {CLUSTER_CIDR}")), "masquerade does not exempt the cluster: {l}");
        assert!(!l.contains(&format!("!= {SUBNET}")), "masquerade still exempts only the subnet: {l}");
    }

    // Pod B sees pod A's own address, straight and through a Service DNAT in the node.
    let _direct = peer_server(&b, 9000);
    let seen = fetch(&a, &ipb, 9000).expect("pod A -> pod B:9000 failed");
    assert!(names_peer(&seen, &ipa), "pod B did not see pod A's address: {seen}");
    node.add_service(&ipb);
    let _backend = peer_server(&b, 8080);
    let seen = fetch(&a, CLUSTER_IP, 80).expect("pod A -> Service -> pod B on the same node failed");
    assert!(names_peer(&seen, &ipa), "pod B did not see pod A's address through the Service: {seen}");

    // CHECK agrees with what ADD made (the masquerade rules counted under cluster mode).
    let mut check = c.clone();
    check["prevResult"] = ra.clone();
    Invocation::new("CHECK", "pod-a", Some(&a.path)).run(&node.ns, &check).ok();

    // Without port isolation, the same Service between two pods of one bridge fails: the
    // backend's reply crosses the bridge straight to pod A and is never un-DNATed.
    without_port_isolation_the_service_fails();

    // The agent is gone and has taken its file along: DEL still removes everything.
    std::fs::remove_file(node.facts_path()).expect("remove the facts file");
    node.del("pod-a", &a, &c);
    node.del("pod-b", &b, &c);
    node.assert_nothing_left();
}

/// The Service of the test above on a node whose conflist says `"portIsolation": false`.
fn without_port_isolation_the_service_fails() {
    let node = Node::new();
    node.write_facts(1400);
    let (a, b) = (Ns::new("fa"), Ns::new("fb"));
    let c = node.conf(json!({"portIsolation": false}));
    let ipa = pod_ip(&node.add("pod-a", &a, &c));
    let ipb = pod_ip(&node.add("pod-b", &b, &c));
    assert!(!node.ns.sh("bridge -d link show").contains("isolated on"), "a port is isolated");
    assert!(pings(&a, &ipb), "pod A cannot reach pod B over the bridge");
    let neigh = a.sh(&format!("ip neigh show {ipb}"));
    assert!(neigh.contains(&mac_of(&b, "eth0")), "pod A does not reach pod B directly: {neigh}");

    node.add_service(&ipb);
    let _backend = peer_server(&b, 8080);
    assert!(fetch(&a, &ipb, 8080).is_some_and(|s| names_peer(&s, &ipa)), "pod B's server does not answer directly");
    assert_eq!(fetch(&a, CLUSTER_IP, 80), None, "the Service answered without port isolation: is br_netfilter on?");

    node.del("pod-a", &a, &c);
    node.del("pod-b", &b, &c);
    node.assert_nothing_left();
}

#[test]
#[ignore = "needs root"]
fn without_the_facts_file_add_check_and_status_fail_and_del_and_gc_still_clean_up() {
    let node = Node::new();
    let c = node.conf(json!({}));
    let path = node.facts_path().display().to_string();
    let pod = Ns::new("fp");

    // No facts yet (the agent has not leased the node's subnet): STATUS says the plugin is
    // not available, ADD "try again later"; nothing is created.
    let out = Invocation::new("STATUS", "", None).run(&node.ns, &c);
    assert_cni_error(&out, 50, &[&path, "`podnet node run`"]);
    let out = Invocation::new("ADD", "pod-a", Some(&pod.path)).run(&node.ns, &c);
    let msg = assert_cni_error(&out, 11, &[&path, "does not exist", "`podnet node run`"]);
    assert!(msg.contains("ipam.nodeFacts"), "{msg}");
    assert_eq!(link_names(&node.ns), ["lo"], "the failed ADD created links");
    assert_eq!(link_names(&pod), ["lo"], "the failed ADD touched the pod");
    node.assert_nothing_left();

    // Invalid facts: a config error naming the key, the file and the field.
    std::fs::write(
        node.facts_path(),
        json!({"node": "n", "subnet": SUBNET, "gateway": GATEWAY, "mtu": 100, "clusterCIDR": CLUSTER_CIDR}).to_string(),
    )
    .expect("write bad facts");
    let out = Invocation::new("ADD", "pod-a", Some(&pod.path)).run(&node.ns, &c);
    assert_cni_error(&out, 7, &["\"ipam.nodeFacts\"", &path, "field \"mtu\""]);
    assert_eq!(link_names(&node.ns), ["lo"], "the failed ADD created links");

    // With the facts, ADD works; once they are gone CHECK fails, GC and DEL clean up.
    node.write_facts(1450);
    Invocation::new("STATUS", "", None).run(&node.ns, &c).ok();
    let res = node.add("pod-a", &pod, &c);
    assert!(pod.sh("ip link show eth0").contains("mtu 1450"));
    std::fs::remove_file(node.facts_path()).expect("remove the facts file");
    let mut check = c.clone();
    check["prevResult"] = res;
    let out = Invocation::new("CHECK", "pod-a", Some(&pod.path)).run(&node.ns, &check);
    assert_cni_error(&out, 11, &[&path]);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Invocation::new("GC", "", None).run(&node.ns, &gc).ok();
    node.assert_nothing_left();
    node.del("pod-a", &pod, &c);
    node.assert_nothing_left();
    assert!(!Path::new(&path).exists());
}
