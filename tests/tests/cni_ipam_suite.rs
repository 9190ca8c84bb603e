//! The reference host-local suite (containernetworking/plugins, plugins/ipam/host-local and its
//! allocator tests), ported to podnet: host-local runs inside the exec'd plugin, with its
//! dataDir in a scratch directory, and every test checks the store on disk byte for byte as
//! well as what the node and the pod got. Root; run with `--include-ignored`.

use std::collections::HashSet;
use std::path::PathBuf;

use cni_bridge::names::AttachmentId;
use podnet_tests::*;
use serde_json::{json, Value};

const NET: &str = "ipam-net";

struct Env {
    node: Ns,
    data: TempDir,
}

impl Env {
    fn new() -> Env {
        require_root();
        Env { node: Ns::new("pn"), data: TempDir::new("podnet-ipam") }
    }

    fn ipam_dir(&self) -> PathBuf {
        self.data.path().join("ipam")
    }

    fn state_dir(&self) -> PathBuf {
        self.data.path().join("state")
    }

    /// host-local's directory for the network (`<dataDir>/<name>`).
    fn net_dir(&self) -> PathBuf {
        self.ipam_dir().join(NET)
    }

    /// A file of the network dir, as text.
    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.net_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// A `podnet` conf (gateway on the bridge, ipMasq, no default route so that one pod can
    /// take several interfaces) with `ranges` and `extra` top-level keys.
    fn conf(&self, ranges: Value, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "type": "podnet",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": true,
            "stateDir": self.state_dir(),
            "ipam": {"type": "host-local", "dataDir": self.ipam_dir(), "ranges": ranges}
        });
        for (k, v) in extra.as_object().expect("extra is an object") {
            c[k] = v.clone();
        }
        c
    }

    fn add(&self, cid: &str, ifname: &str, pod: &Ns, conf: &Value) -> PluginOutput {
        let mut inv = Invocation::new("ADD", cid, Some(&pod.path));
        inv.ifname = ifname;
        inv.run(&self.node, conf)
    }

    /// ADD that must succeed; returns the first address of the result.
    fn add_ok(&self, cid: &str, ifname: &str, pod: &Ns, conf: &Value) -> String {
        let res = self.add(cid, ifname, pod, conf).ok().json();
        res["ips"][0]["address"].as_str().expect("an address").to_string()
    }

    fn del(&self, cid: &str, ifname: &str, conf: &Value) {
        let mut inv = Invocation::new("DEL", cid, None);
        inv.ifname = ifname;
        inv.run(&self.node, conf).ok();
    }

    fn records(&self) -> Vec<String> {
        files_in(&self.state_dir().join(NET)).into_iter().filter(|f| f.ends_with(".json")).collect()
    }
}

fn v4(subnet: &str) -> Value {
    json!([[{"subnet": subnet}]])
}

fn veth(cid: &str, ifname: &str) -> String {
    AttachmentId::new(NET, cid, ifname).host_veth()
}

fn tag(cid: &str, ifname: &str) -> String {
    AttachmentId::new(NET, cid, ifname).tag()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
#[ignore = "needs root"]
fn exhausted_range_fails_and_leaves_nothing_for_the_failed_add() {
    let env = Env::new();
    let c =
        env.conf(json!([[{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10", "rangeEnd": "10.2.0.11"}]]), json!({}));
    let pods: Vec<Ns> = (0..3).map(|_| Ns::new("pp")).collect();
    assert_eq!(env.add_ok("ex-1", "eth0", &pods[0], &c), "10.2.0.10/24");
    assert_eq!(env.add_ok("ex-2", "eth0", &pods[1], &c), "10.2.0.11/24");
    let out = env.add("ex-3", "eth0", &pods[2], &c);
    assert_cni_error(&out, 999, &["no IP addresses available in range set", "10.2.0.10-10.2.0.11"]);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.10", "10.2.0.11"]);
    assert_eq!(podnet_veths(&env.node), sorted(vec![veth("ex-1", "eth0"), veth("ex-2", "eth0")]));
    assert_eq!(tagged_rules(&env.node, &tag("ex-3", "eth0")), Vec::<String>::new());
    assert_eq!(env.records(), ["ex-1:eth0.json", "ex-2:eth0.json"]);
    assert_eq!(link_names(&pods[2]), ["lo"]);
    // Freeing one makes room again.
    env.del("ex-1", "eth0", &c);
    assert_eq!(env.add_ok("ex-3", "eth0", &pods[2], &c), "10.2.0.10/24");
}

/// ADD asking for 10.2.0.77 through `args` (CNI_ARGS) or `extra` conf keys gets exactly it.
fn requested_ip(args: &str, extra: Value) {
    let env = Env::new();
    let pod = Ns::new("pp");
    let c = env.conf(v4("10.2.0.0/24"), extra);
    let mut inv = Invocation::new("ADD", "req-1", Some(&pod.path));
    inv.args = args;
    let res = inv.run(&env.node, &c).ok().json();
    assert_eq!(res["ips"], json!([{"address": "10.2.0.77/24", "gateway": "10.2.0.1", "interface": 2}]));
    assert!(pod.sh("ip -o -4 addr show dev eth0").contains("inet 10.2.0.77/24"));
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.77"]);
    assert_eq!(env.file("10.2.0.77"), "req-1\r\neth0");
    assert_eq!(env.file("last_reserved_ip.0"), "10.2.0.77");
}

#[test]
#[ignore = "needs root"]
fn requested_ip_via_cni_args() {
    requested_ip("IgnoreUnknown=1;K8S_POD_NAME=web-0;IP=10.2.0.77", json!({}));
}

#[test]
#[ignore = "needs root"]
fn requested_ip_via_args_cni_ips() {
    requested_ip("", json!({"args": {"cni": {"ips": ["10.2.0.77"]}}}));
}

#[test]
#[ignore = "needs root"]
fn requested_ip_via_runtime_config_ips() {
    requested_ip("", json!({"capabilities": {"ips": true}, "runtimeConfig": {"ips": ["10.2.0.77/24"]}}));
}

#[test]
#[ignore = "needs root"]
fn requested_ip_that_is_taken_or_unusable_fails_cleanly() {
    let env = Env::new();
    let c = env.conf(v4("10.2.0.0/24"), json!({}));
    let (pod1, pod2) = (Ns::new("pp"), Ns::new("pp"));
    let mut inv = Invocation::new("ADD", "own-1", Some(&pod1.path));
    inv.args = "IP=10.2.0.77";
    inv.run(&env.node, &c).ok();
    for (ip, needles) in [
        ("10.2.0.77", vec!["10.2.0.77", "not available"]),
        ("10.2.0.1", vec!["10.2.0.1", "gateway"]),
        // Outside [rangeStart, rangeEnd] (.1-.254 by default): not allocated, as in the reference.
        ("10.2.0.255", vec!["failed to allocate all requested IPs: 10.2.0.255"]),
        ("10.9.9.9", vec!["10.9.9.9", "requested IPs"]),
    ] {
        let arg = format!("IP={ip}");
        let mut inv = Invocation::new("ADD", "own-2", Some(&pod2.path));
        inv.args = &arg;
        assert_cni_error(&inv.run(&env.node, &c), 999, &needles);
        assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.77"], "after asking for {ip}");
        assert_eq!(env.file("10.2.0.77"), "own-1\r\neth0");
        assert_eq!(podnet_veths(&env.node), [veth("own-1", "eth0")]);
        assert_eq!(env.records(), ["own-1:eth0.json"]);
        assert_eq!(link_names(&pod2), ["lo"]);
    }
}

#[test]
#[ignore = "needs root"]
fn round_robin_does_not_reuse_a_released_ip_at_once() {
    let env = Env::new();
    let c = env.conf(v4("10.2.0.0/24"), json!({}));
    let pod = Ns::new("pp");
    assert_eq!(env.add_ok("rr-a", "eth0", &pod, &c), "10.2.0.2/24");
    assert_eq!(env.file("last_reserved_ip.0"), "10.2.0.2");
    assert_eq!(env.add_ok("rr-b", "eth1", &pod, &c), "10.2.0.3/24");
    env.del("rr-a", "eth0", &c);
    assert_eq!(env.add_ok("rr-c", "eth2", &pod, &c), "10.2.0.4/24");
    assert_eq!(env.file("last_reserved_ip.0"), "10.2.0.4");
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.3", "10.2.0.4"]);
}

#[test]
#[ignore = "needs root"]
fn round_robin_wraps_around_skipping_taken_ips() {
    let env = Env::new();
    let c =
        env.conf(json!([[{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10", "rangeEnd": "10.2.0.12"}]]), json!({}));
    let pod = Ns::new("pp");
    assert_eq!(env.add_ok("w-a", "eth0", &pod, &c), "10.2.0.10/24");
    assert_eq!(env.add_ok("w-b", "eth1", &pod, &c), "10.2.0.11/24");
    assert_eq!(env.add_ok("w-c", "eth2", &pod, &c), "10.2.0.12/24");
    assert_eq!(env.file("last_reserved_ip.0"), "10.2.0.12");
    env.del("w-b", "eth1", &c);
    // From the end back to the start: .10 is taken, .11 is free.
    assert_eq!(env.add_ok("w-d", "eth3", &pod, &c), "10.2.0.11/24");
    env.del("w-a", "eth0", &c);
    // After .11: .12 taken, wrap, .10 free.
    assert_eq!(env.add_ok("w-e", "eth4", &pod, &c), "10.2.0.10/24");
    assert_eq!(env.file("last_reserved_ip.0"), "10.2.0.10");
    assert_eq!(env.file("10.2.0.10"), "w-e\r\neth4");
    assert_eq!(env.file("10.2.0.11"), "w-d\r\neth3");
}

#[test]
#[ignore = "needs root"]
fn multi_range_set_moves_to_the_next_range_after_the_end_of_one() {
    let env = Env::new();
    // Two v4 gateways cannot share one bridge: no gateway here.
    let ranges = json!([[{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.253", "rangeEnd": "10.2.0.254"}, {"subnet": "10.3.0.0/24"}]]);
    let c = env.conf(ranges, json!({"isGateway": false, "ipMasq": false}));
    let pod = Ns::new("pp");
    assert_eq!(env.add_ok("mr-a", "eth0", &pod, &c), "10.2.0.253/24");
    assert_eq!(env.add_ok("mr-b", "eth1", &pod, &c), "10.2.0.254/24");
    // 10.3.0.1 is that range's default gateway: never handed out.
    assert_eq!(env.add_ok("mr-c", "eth2", &pod, &c), "10.3.0.2/24");
    assert_eq!(env.file("last_reserved_ip.0"), "10.3.0.2");
}

#[test]
#[ignore = "needs root"]
fn on_disk_layout_matches_the_reference() {
    let env = Env::new();
    let c = env.conf(v4("10.2.0.0/24"), json!({}));
    let pod = Ns::new("pp");
    env.add_ok("ctr-fmt", "eth0", &pod, &c);
    assert_eq!(std::fs::read(env.net_dir().join("10.2.0.2")).unwrap(), b"ctr-fmt\r\neth0");
    assert_eq!(std::fs::read(env.net_dir().join("last_reserved_ip.0")).unwrap(), b"10.2.0.2");
    let visible: Vec<String> = files_in(&env.net_dir()).into_iter().filter(|f| !f.starts_with('.')).collect();
    assert_eq!(visible, ["10.2.0.2", "last_reserved_ip.0", "lock"]);
    // One container, two interfaces: one reservation each; DEL of one keeps the other.
    env.add_ok("ctr-fmt", "eth1", &pod, &c);
    assert_eq!(env.file("10.2.0.3"), "ctr-fmt\r\neth1");
    env.del("ctr-fmt", "eth0", &c);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.3"]);
    assert!(pod.sh("ip -o -4 addr show dev eth1").contains("inet 10.2.0.3/24"));
}

#[test]
#[ignore = "needs root"]
fn two_range_sets_keep_one_cursor_each() {
    let env = Env::new();
    let c = env.conf(json!([[{"subnet": "10.2.0.0/24"}], [{"subnet": "fd00:2::/64"}]]), json!({}));
    let pod = Ns::new("pp");
    let res = env.add("ds-1", "eth0", &pod, &c).ok().json();
    assert_eq!(res["ips"][0]["address"], "10.2.0.2/24");
    assert_eq!(res["ips"][1]["address"], "fd00:2::2/64");
    assert_eq!(env.file("last_reserved_ip.0"), "10.2.0.2");
    assert_eq!(env.file("last_reserved_ip.1"), "fd00:2::2");
    assert_eq!(env.file("fd00:2::2"), "ds-1\r\neth0");
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.2", "fd00:2::2"]);
    env.del("ds-1", "eth0", &c);
    assert_eq!(reservations(&env.ipam_dir(), NET), Vec::<String>::new());
    // The cursors survive a release, as in the reference.
    assert_eq!(env.file("last_reserved_ip.1"), "fd00:2::2");
}

#[test]
#[ignore = "needs root"]
fn legacy_id_only_files_are_respected_and_released_by_id() {
    let env = Env::new();
    let c =
        env.conf(json!([[{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.50", "rangeEnd": "10.2.0.52"}]]), json!({}));
    std::fs::create_dir_all(env.net_dir()).unwrap();
    // Written by old host-local versions: the id alone (whitespace is ignored, as there).
    std::fs::write(env.net_dir().join("10.2.0.50"), "legacy-ctr").unwrap();
    std::fs::write(env.net_dir().join("10.2.0.51"), "  legacy-ws \n").unwrap();
    let pod = Ns::new("pp");
    assert_eq!(env.add_ok("new-ctr", "eth0", &pod, &c), "10.2.0.52/24");
    // DEL of that id with any ifname releases it.
    env.del("legacy-ctr", "eth9", &c);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.51", "10.2.0.52"]);
    env.del("legacy-ws", "eth0", &c);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.52"]);
    assert_eq!(env.file("10.2.0.52"), "new-ctr\r\neth0");
}

#[test]
#[ignore = "needs root"]
fn gateway_network_and_broadcast_are_never_allocated() {
    let env = Env::new();
    let c = env.conf(
        json!([[{"subnet": "10.2.0.0/29", "gateway": "10.2.0.3", "rangeStart": "10.2.0.0", "rangeEnd": "10.2.0.7"}]]),
        json!({}),
    );
    let pod = Ns::new("pp");
    for (ip, what) in [("10.2.0.0", "network"), ("10.2.0.7", "broadcast"), ("10.2.0.3", "gateway")] {
        let arg = format!("IP={ip}");
        let mut inv = Invocation::new("ADD", "gnb-req", Some(&pod.path));
        inv.args = &arg;
        assert_cni_error(&inv.run(&env.node, &c), 999, &[ip, what]);
    }
    assert_eq!(reservations(&env.ipam_dir(), NET), Vec::<String>::new());
    let mut got = Vec::new();
    for i in 0..5 {
        let ifname = format!("eth{i}");
        got.push(env.add_ok(&format!("gnb-{i}"), &ifname, &pod, &c));
    }
    assert_eq!(got, ["10.2.0.1/29", "10.2.0.2/29", "10.2.0.4/29", "10.2.0.5/29", "10.2.0.6/29"]);
    let out = env.add("gnb-5", "eth5", &pod, &c);
    assert_cni_error(&out, 999, &["no IP addresses available", "10.2.0.0-10.2.0.7"]);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.2.0.1", "10.2.0.2", "10.2.0.4", "10.2.0.5", "10.2.0.6"]);
    assert_eq!(podnet_veths(&env.node).len(), 5);
    assert!(!link_names(&pod).contains(&"eth5".to_string()));
    assert!(env.node.sh("ip -o -4 addr show dev cni0").contains("inet 10.2.0.3/29"));
}

#[test]
#[ignore = "needs root"]
fn sixteen_concurrent_adds_and_dels() {
    let env = Env::new();
    let c = env.conf(v4("10.2.0.0/24"), json!({}));
    let pods: Vec<Ns> = (0..16).map(|_| Ns::new("pp")).collect();
    let cids: Vec<String> = (0..16).map(|i| format!("conc-{i}")).collect();
    let run_all = |cmd: &'static str| -> Vec<PluginOutput> {
        std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .zip(&cids)
                .map(|(pod, cid)| {
                    let (node, c) = (&env.node, &c);
                    s.spawn(move || Invocation::new(cmd, cid, Some(&pod.path)).run(node, c))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("plugin thread")).collect()
        })
    };

    let adds = run_all("ADD");
    let mut ips = HashSet::new();
    for (out, pod) in adds.into_iter().zip(&pods) {
        let res = out.ok().json();
        let addr = res["ips"][0]["address"].as_str().unwrap().to_string();
        assert!(pod.sh("ip -o -4 addr show dev eth0").contains(&format!("inet {addr}")));
        ips.insert(addr);
    }
    assert_eq!(ips.len(), 16, "duplicate addresses: {ips:?}");
    assert_eq!(reservations(&env.ipam_dir(), NET).len(), 16);
    assert_eq!(podnet_veths(&env.node), sorted(cids.iter().map(|c| veth(c, "eth0")).collect()));
    assert_eq!(tagged_rules(&env.node, &format!("podnet/{NET}/")).len(), 16);
    assert_eq!(env.records().len(), 16);
    // Concurrent first ADDs race to create the static jump rules: exactly one of each.
    for chain in ["prerouting", "output"] {
        let l = env.node.sh(&format!("nft list chain ip podnet {chain}"));
        assert_eq!(l.matches("fib daddr type local jump hostports").count(), 1, "{l}");
    }

    for out in run_all("DEL") {
        out.ok();
    }
    assert_nothing_left(&env.node, NET, &env.ipam_dir(), &env.state_dir());
    for pod in &pods {
        assert_eq!(link_names(pod), ["lo"]);
    }
}
