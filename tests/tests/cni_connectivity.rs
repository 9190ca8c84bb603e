//! Traffic through what the exec'd `podnet` plugin set up: pods reach each other and the
//! gateway (v4, and v6 with a dual-stack conf); a hostPort answers from the node's addresses,
//! from 127.0.0.1, from another host (PREROUTING DNAT) and from the pod itself (hairpin);
//! hostIP restricts a mapping; UDP maps; DEL takes every mapping away; ipMasq hides the pod
//! address from hosts outside the pod subnet.
//!
//! Topology, all inside namespaces the test creates (nothing leaves them):
//!
//! ```text
//!   pod A ─┐                                   ┌──────────────────────┐
//!          ├─ cni0 10.251.0.1/24 ── node ── up0 192.168.77.1/24 ═══ eth0 192.168.77.2/24
//!   pod B ─┘        fd51::1/64          (no route out)  fd77::1/64       "other host" fd77::2/64
//! ```
//!
//! The other host has no route to the pod subnet: replies to a pod can only come back when the
//! node masquerades, and it reaches a pod only through the node's hostPorts.

use std::time::Duration;

use podnet_tests::*;
use serde_json::{json, Value};

const NET: &str = "conn";
const GW4: &str = "10.251.0.1";
const NODE4: &str = "192.168.77.1";
const REMOTE4: &str = "192.168.77.2";
const NODE6: &str = "fd77::1";
const REMOTE6: &str = "fd77::2";

fn v4_ranges() -> Value {
    json!([[{"subnet": "10.251.0.0/24"}]])
}

fn dual_ranges() -> Value {
    json!([[{"subnet": "10.251.0.0/24"}], [{"subnet": "fd51::/64"}]])
}

/// The single-plugin `podnet` conf as libcni hands it to the plugin: runtimeConfig already
/// injected for the declared portMappings capability.
fn conf(data: &TempDir, ranges: Value, port_maps: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "podnet",
        "bridge": "cni0",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "stateDir": data.path().join("state"),
        "ipam": {"type": "host-local", "dataDir": data.path().join("ipam"), "ranges": ranges},
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": port_maps}
    })
}

/// A node namespace with an uplink to an "other host" namespace, and a scratch dir.
struct Site {
    node: Ns,
    remote: Ns,
    data: TempDir,
}

fn site() -> Site {
    let node = Ns::new("cn");
    let remote = Ns::new("cr");
    node.veth_to("up0", &format!("{NODE4}/24"), &remote, "eth0", &format!("{REMOTE4}/24"));
    node.sh(&format!("ip addr add {NODE6}/64 nodad dev up0"));
    remote.sh(&format!("ip addr add {REMOTE6}/64 nodad dev eth0"));
    Site { node, remote, data: TempDir::new("podnet-conn") }
}

impl Site {
    fn add(&self, id: &str, pod: &Ns, conf: &Value) -> Value {
        Invocation::new("ADD", id, Some(&pod.path)).run(&self.node, conf).ok().json()
    }
    fn del(&self, id: &str, pod: &Ns, conf: &Value) {
        Invocation::new("DEL", id, Some(&pod.path)).run(&self.node, conf).ok();
    }
}

/// The pod's address of one family from an ADD result, without the prefix.
fn pod_ip(res: &Value, v6: bool) -> String {
    res["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i["address"].as_str().expect("address").split('/').next().unwrap().to_string())
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address in {res}", if v6 { "IPv6" } else { "IPv4" }))
}

/// A TCP server in `pod` on `port` answering every connection with `token`.
fn token_server(pod: &Ns, port: u16, token: &str) -> Background {
    let bg = pod.spawn(&format!("busybox nc -ll -p {port} -e /bin/echo {token}"));
    pod.wait_listening("tcp", port);
    bg
}

#[test]
#[ignore = "needs root"]
fn two_pods_reach_each_other_and_the_gateway_v4() {
    require_root();
    let s = site();
    let (a, b) = (Ns::new("ca"), Ns::new("cb"));
    let c = conf(&s.data, v4_ranges(), json!([]));
    let ra = s.add("pod-a", &a, &c);
    let rb = s.add("pod-b", &b, &c);
    let (ipa, ipb) = (pod_ip(&ra, false), pod_ip(&rb, false));
    assert_ne!(ipa, ipb);

    assert!(pings(&a, GW4), "pod A cannot reach the gateway");
    assert!(pings(&b, GW4), "pod B cannot reach the gateway");
    assert!(pings(&a, &ipb), "pod A cannot reach pod B");
    assert!(pings(&b, &ipa), "pod B cannot reach pod A");
    assert!(pings(&s.node, &ipa), "the node cannot reach pod A");

    s.del("pod-a", &a, &c);
    s.del("pod-b", &b, &c);
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

#[test]
#[ignore = "needs root"]
fn two_pods_reach_each_other_and_the_gateway_dual_stack() {
    require_root();
    let s = site();
    let (a, b) = (Ns::new("ca"), Ns::new("cb"));
    let c = conf(&s.data, dual_ranges(), json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]));
    let ra = s.add("pod-a", &a, &c);
    let rb = s.add("pod-b", &b, &c);
    assert!(a.sh("ip -6 route").contains("default via fd51::1"), "no v6 default route in pod A");
    assert!(s.node.sh("ip -6 addr show cni0").contains("fd51::1/64"), "no v6 gateway on the bridge");

    for v6 in [false, true] {
        let gw = if v6 { "fd51::1" } else { GW4 };
        let (ipa, ipb) = (pod_ip(&ra, v6), pod_ip(&rb, v6));
        assert!(pings(&a, gw), "pod A cannot reach gateway {gw}");
        assert!(pings(&b, gw), "pod B cannot reach gateway {gw}");
        assert!(pings(&a, &ipb), "pod A cannot reach pod B at {ipb}");
        assert!(pings(&b, &ipa), "pod B cannot reach pod A at {ipa}");
    }

    // The hostPort maps on both families: from the other host over v4 and over v6.
    let _srv = token_server(&a, 80, "dual-token");
    assert_eq!(fetch(&s.remote, NODE4, 8080).as_deref(), Some("dual-token"), "v4 hostPort from the other host");
    assert_eq!(fetch(&s.remote, NODE6, 8080).as_deref(), Some("dual-token"), "v6 hostPort from the other host");

    s.del("pod-a", &a, &c);
    s.del("pod-b", &b, &c);
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

#[test]
#[ignore = "needs root"]
fn host_port_answers_on_every_path_and_not_after_del() {
    require_root();
    for br_nf in [true, false] {
        host_port_paths(br_nf);
    }
}

/// One round of the hostPort paths, with br_netfilter's conntrack of bridged frames on or off
/// in the node (it changes how the hairpin reply travels). The mapping uses the Go-style keys
/// containerd's CRI sends.
fn host_port_paths(br_nf: bool) {
    let s = site();
    s.node.set_bridge_nf_call(br_nf);
    let a = Ns::new("ca");
    let c = conf(&s.data, v4_ranges(), json!([{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP"}]));
    let ra = s.add("pod-a", &a, &c);
    let ipa = pod_ip(&ra, false);
    let _srv = token_server(&a, 80, "hp-token");
    let tok = Some("hp-token");

    // Straight to the pod, for reference.
    assert_eq!(fetch(&s.node, &ipa, 80).as_deref(), tok, "the pod's server itself");
    // From the node itself (OUTPUT DNAT): the bridge address, another node address, loopback.
    assert_eq!(fetch(&s.node, GW4, 8080).as_deref(), tok, "node -> gateway:hostPort");
    assert_eq!(fetch(&s.node, NODE4, 8080).as_deref(), tok, "node -> node address:hostPort");
    assert_eq!(fetch(&s.node, "127.0.0.1", 8080).as_deref(), tok, "node -> 127.0.0.1:hostPort");
    // From another host (PREROUTING DNAT), which has no route to the pod subnet.
    assert_eq!(fetch(&s.remote, NODE4, 8080).as_deref(), tok, "other host -> node:hostPort");
    assert!(fetch(&s.remote, &ipa, 80).is_none(), "the other host must not reach the pod directly");
    // The pod through its own hostPort (hairpin), at both node addresses.
    assert_eq!(fetch(&a, NODE4, 8080).as_deref(), tok, "hairpin via the node address (br_nf {br_nf})");
    assert_eq!(fetch(&a, GW4, 8080).as_deref(), tok, "hairpin via the gateway (br_nf {br_nf})");
    assert!(!tagged_rules(&s.node, &format!("podnet/{NET}/")).is_empty());

    s.del("pod-a", &a, &c);
    for (from, host) in [(&s.node, GW4), (&s.node, NODE4), (&s.node, "127.0.0.1"), (&s.remote, NODE4)] {
        assert!(fetch(from, host, 8080).is_none(), "{host}:8080 still answers after DEL");
    }
    assert_eq!(tagged_rules(&s.node, "podnet/"), Vec::<String>::new(), "tagged rules left after DEL");
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

#[test]
#[ignore = "needs root"]
fn host_port_of_one_pod_reached_from_another_pod() {
    require_root();
    let s = site();
    // Without br_netfilter's conntrack on bridged frames (a node without the module, or
    // with bridge-nf-call-iptables=0), pod A's reply goes straight to pod B over the bridge
    // and is never un-DNATed: only masquerading the pod subnet's hostPort traffic works.
    s.node.set_bridge_nf_call(false);
    let (a, b) = (Ns::new("ca"), Ns::new("cb"));
    let c = conf(&s.data, v4_ranges(), json!([{"hostPort": 8080, "containerPort": 80}]));
    s.add("pod-a", &a, &c);
    let cb = conf(&s.data, v4_ranges(), json!([]));
    s.add("pod-b", &b, &cb);
    let _srv = token_server(&a, 80, "xpod-token");
    // The reference portmap masquerades hostPort traffic from the pod subnet; a pod must
    // reach another pod's hostPort through the node, as it would across nodes.
    assert_eq!(fetch(&b, NODE4, 8080).as_deref(), Some("xpod-token"), "pod B -> node:hostPort of pod A");
    assert_eq!(fetch(&b, GW4, 8080).as_deref(), Some("xpod-token"), "pod B -> gateway:hostPort of pod A");
    s.del("pod-a", &a, &c);
    s.del("pod-b", &b, &cb);
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

#[test]
#[ignore = "needs root"]
fn host_port_with_host_ip_maps_only_that_address() {
    require_root();
    let s = site();
    let a = Ns::new("ca");
    let c = conf(
        &s.data,
        v4_ranges(),
        json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": NODE4}]),
    );
    s.add("pod-a", &a, &c);
    let _srv = token_server(&a, 80, "hostip-token");
    let tok = Some("hostip-token");

    assert_eq!(fetch(&s.remote, NODE4, 8081).as_deref(), tok, "other host -> hostIP:hostPort");
    assert_eq!(fetch(&s.node, NODE4, 8081).as_deref(), tok, "node -> hostIP:hostPort");
    assert!(fetch(&s.node, GW4, 8081).is_none(), "the gateway address must not be mapped");
    assert!(fetch(&s.node, "127.0.0.1", 8081).is_none(), "127.0.0.1 must not be mapped");

    s.del("pod-a", &a, &c);
    assert!(fetch(&s.remote, NODE4, 8081).is_none(), "still mapped after DEL");
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

#[test]
#[ignore = "needs root"]
fn host_port_udp() {
    require_root();
    let s = site();
    let a = Ns::new("ca");
    let c = conf(&s.data, v4_ranges(), json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]));
    s.add("pod-a", &a, &c);
    let got = s.data.path().join("udp-received");
    let _srv = a.spawn(&format!("nc -u -l 53 > {}", got.display()));
    a.wait_listening("udp", 53);

    s.remote.sh(&format!("echo udp-token | timeout 5 nc -u -w 1 {NODE4} 5353"));
    let arrived =
        retry(200, Duration::from_millis(10), || std::fs::read_to_string(&got).is_ok_and(|t| t.contains("udp-token")));
    assert!(arrived, "the UDP datagram sent to the hostPort never reached the pod");
    assert!(tagged_rules(&s.node, &format!("podnet/{NET}/")).iter().any(|r| r.contains("udp dport 5353")));

    s.del("pod-a", &a, &c);
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

/// Packets counted by the ipMasq rule (the one matching `daddr != <pod subnet>`).
fn masq_packets(node: &Ns) -> u64 {
    node.sh("nft list chain ip podnet postrouting")
        .lines()
        .filter(|l| l.contains("masquerade") && l.contains("!= 10.251.0.0/24"))
        .filter_map(|l| l.split("packets ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
#[ignore = "needs root"]
fn ip_masq_hides_the_pod_address_from_other_hosts() {
    require_root();
    let s = site();
    let a = Ns::new("ca");
    let c = conf(&s.data, v4_ranges(), json!([]));
    let ipa = pod_ip(&s.add("pod-a", &a, &c), false);
    assert_eq!(masq_packets(&s.node), 0);

    // The other host answers each connection with its view of it: `ss` lists the peer.
    let _srv = s.remote.spawn("busybox nc -ll -p 9000 -e /usr/bin/ss -Htn sport = :9000");
    s.remote.wait_listening("tcp", 9000);
    let seen = fetch(&a, REMOTE4, 9000).expect("pod -> other host failed: no masquerade?");
    assert!(
        seen.contains(&format!("{NODE4}]:")) || seen.contains(&format!("{NODE4}:")),
        "peer is not the node: {seen}"
    );
    assert!(!seen.contains(&ipa), "the pod address leaked to the other host: {seen}");
    assert!(masq_packets(&s.node) > 0, "the masquerade rule counted nothing");

    // Inside the pod subnet nothing is masqueraded: the gateway sees the pod's own address.
    let _local = s.node.spawn("busybox nc -ll -p 9001 -e /usr/bin/ss -Htn sport = :9001");
    s.node.wait_listening("tcp", 9001);
    let seen = fetch(&a, GW4, 9001).expect("pod -> gateway failed");
    assert!(seen.contains(&ipa), "traffic to the gateway was masqueraded: {seen}");

    s.del("pod-a", &a, &c);
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}

#[test]
#[ignore = "needs root"]
fn a_chain_deleted_behind_podnets_back_is_recreated() {
    require_root();
    let s = site();
    let (a, b) = (Ns::new("ca"), Ns::new("cb"));
    let c = conf(&s.data, v4_ranges(), json!([]));
    s.add("pod-a", &a, &c);
    // An admin empties and drops podnet's postrouting chain; the static jump rules remain,
    // so the next ADD believes the table complete until the kernel says ENOENT.
    s.node.sh("nft flush chain ip podnet postrouting && nft delete chain ip podnet postrouting");
    let ipb = pod_ip(&s.add("pod-b", &b, &c), false);
    assert!(masq_packets(&s.node) == 0 && s.node.sh("nft list chain ip podnet postrouting").contains(&ipb));
    let _srv = s.remote.spawn("busybox nc -ll -p 9000 -e /usr/bin/ss -Htn sport = :9000");
    s.remote.wait_listening("tcp", 9000);
    let seen = fetch(&b, REMOTE4, 9000).expect("pod B -> other host failed: masquerade not reinstalled?");
    assert!(
        seen.contains(&format!("{NODE4}]:")) || seen.contains(&format!("{NODE4}:")),
        "peer is not the node: {seen}"
    );
    s.del("pod-a", &a, &c);
    s.del("pod-b", &b, &c);
    assert_nothing_left(&s.node, NET, &s.data.path().join("ipam"), &s.data.path().join("state"));
}
