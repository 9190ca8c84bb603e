//! The reference bridge plugin's suite (containernetworking/plugins, plugins/main/bridge) and
//! the portmap ruleset cases, ported to podnet: every test execs the plugin as a runtime would,
//! inside its own node namespace, and asserts the state it leaves in the node, in the pod and
//! on disk. Root; run with `--include-ignored`.

use cni_bridge::names::{bridge_mac, format_mac, AttachmentId};
use podnet_tests::*;
use serde_json::{json, Value};

const NET: &str = "br-net";

/// A node, a pod and scratch dirs, with a conf builder for the `podnet` type.
struct Env(Site);

impl std::ops::Deref for Env {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(Site::new("podnet-br"))
    }

    /// The base conf (1.0.0, cni0, gateway, 10.1.0.0/24) with `extra`'s top-level keys set over
    /// it; an `ipam` object in `extra` is merged into the base ipam.
    fn conf(&self, extra: Value) -> Value {
        let base = json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "type": "podnet",
            "bridge": "cni0",
            "isGateway": true,
            "stateDir": self.state_dir(),
            "ipam": {"type": "host-local", "dataDir": self.ipam_dir(), "ranges": [[{"subnet": "10.1.0.0/24"}]]}
        });
        merge_conf(base, extra)
    }

    fn add(&self, cid: &str, conf: &Value) -> PluginOutput {
        Invocation::new("ADD", cid, Some(&self.pod.path)).run(&self.node, conf)
    }

    fn del(&self, cid: &str, conf: &Value) -> PluginOutput {
        Invocation::new("DEL", cid, Some(&self.pod.path)).run(&self.node, conf)
    }

    fn nothing_left(&self) {
        assert_nothing_left(&self.node, NET, &self.ipam_dir(), &self.state_dir());
        assert!(!link_names(&self.pod).contains(&"eth0".to_string()), "eth0 left in the pod");
    }
}

fn id(cid: &str) -> AttachmentId {
    AttachmentId::new(NET, cid, "eth0")
}

/// The MAC of `dev` in `ns` (`link/ether ...`).
fn mac_of(ns: &Ns, dev: &str) -> String {
    let out = ns.sh(&format!("ip -o link show dev {dev}"));
    out.split("link/ether ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or_else(|| panic!("no MAC in {out}"))
        .to_string()
}

/// `ip -o addr` of `dev` as "inet 10.1.0.1/24" / "inet6 fd00::1/64" entries (global scope).
fn addrs(ns: &Ns, dev: &str) -> Vec<String> {
    ns.sh(&format!("ip -o addr show dev {dev} scope global"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter().position(|w| *w == "inet" || *w == "inet6").map(|i| format!("{} {}", f[i], f[i + 1]))
        })
        .collect()
}

fn routes(ns: &Ns, family: &str) -> Vec<String> {
    ns.sh(&format!("ip {family} route show")).lines().map(|l| l.trim().to_string()).collect()
}

/// The full expected ADD result of attachment `cid` for `version`, MACs read from the system.
fn expected_result(env: &Env, cid: &str, version: &str, ips: Value, routes: Value) -> Value {
    let mut r = json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": mac_of(&env.node, "cni0")},
            {"name": id(cid).host_veth(), "mac": mac_of(&env.node, &id(cid).host_veth())},
            {"name": "eth0", "mac": mac_of(&env.pod, "eth0"), "sandbox": env.pod.path.display().to_string()}
        ],
        "ips": ips,
        "routes": routes
    });
    if !version.starts_with('1') {
        r["dns"] = json!({});
    }
    r
}

/// ADD then DEL on IPv4 with isDefaultGateway and ipMasq, checking the result shape of `version`.
fn add_del_v4(version: &str) {
    let env = Env::new();
    let c = env.conf(json!({"cniVersion": version, "isDefaultGateway": true, "ipMasq": true}));
    let res = env.add("ctr-1", &c).ok().json();
    let ip = if version.starts_with('1') {
        json!([{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2}])
    } else {
        json!([{"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2}])
    };
    assert_eq!(res, expected_result(&env, "ctr-1", version, ip, json!([{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}])));
    assert_eq!(addrs(&env.pod, "eth0"), ["inet 10.1.0.2/24"]);
    assert!(
        routes(&env.pod, "-4").contains(&"default via 10.1.0.1 dev eth0".to_string()),
        "{:?}",
        routes(&env.pod, "-4")
    );
    assert_eq!(addrs(&env.node, "cni0"), ["inet 10.1.0.1/24"]);
    assert!(env.node.sh(&format!("ip -o link show dev {}", id("ctr-1").host_veth())).contains("master cni0 state UP"));
    assert_eq!(env.node.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.1.0.2"]);
    assert_eq!(records_in(&env.state_dir().join(NET)), ["ctr-1:eth0.json"]);
    assert_eq!(tagged_rules(&env.node, &id("ctr-1").tag()).len(), 1);

    let out = env.del("ctr-1", &c).ok();
    assert_eq!(out.stdout, "", "DEL prints nothing");
    env.nothing_left();
    // The bridge stays, as with the reference plugin.
    assert_eq!(addrs(&env.node, "cni0"), ["inet 10.1.0.1/24"]);
}

#[test]
#[ignore = "needs root"]
fn add_del_v4_1_0_0() {
    add_del_v4("1.0.0");
}

#[test]
#[ignore = "needs root"]
fn add_del_v4_0_4_0() {
    add_del_v4("0.4.0");
}

#[test]
#[ignore = "needs root"]
fn add_del_v4_1_1_0() {
    add_del_v4("1.1.0");
}

#[test]
#[ignore = "needs root"]
fn add_del_v6() {
    let env = Env::new();
    let c = env.conf(json!({"isDefaultGateway": true, "ipam": {"ranges": [[{"subnet": "fd00:1::/64"}]]}}));
    let res = env.add("ctr-6", &c).ok().json();
    let ips = json!([{"address": "fd00:1::2/64", "gateway": "fd00:1::1", "interface": 2}]);
    assert_eq!(res, expected_result(&env, "ctr-6", "1.0.0", ips, json!([{"dst": "::/0", "gw": "fd00:1::1"}])));
    assert_eq!(addrs(&env.pod, "eth0"), ["inet6 fd00:1::2/64"]);
    // No DAD wait: the address is added with nodad, usable at once.
    let a = env.pod.sh("ip -6 -o addr show dev eth0 scope global");
    assert!(a.contains("nodad") && !a.contains("tentative"), "{a}");
    assert!(
        routes(&env.pod, "-6").iter().any(|r| r.starts_with("default via fd00:1::1 dev eth0")),
        "{:?}",
        routes(&env.pod, "-6")
    );
    assert_eq!(addrs(&env.node, "cni0"), ["inet6 fd00:1::1/64"]);
    assert_eq!(env.node.sh("cat /proc/sys/net/ipv6/conf/all/forwarding").trim(), "1");
    assert_eq!(reservations(&env.ipam_dir(), NET), ["fd00:1::2"]);
    env.del("ctr-6", &c).ok();
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn add_del_dual_stack_with_masquerade() {
    let env = Env::new();
    let c = env.conf(json!({"isDefaultGateway": true, "ipMasq": true,
        "ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}}));
    let res = env.add("ctr-d", &c).ok().json();
    let ips = json!([
        {"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2},
        {"address": "fd00:1::2/64", "gateway": "fd00:1::1", "interface": 2}
    ]);
    let rts = json!([{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00:1::1"}]);
    assert_eq!(res, expected_result(&env, "ctr-d", "1.0.0", ips, rts));
    assert_eq!(addrs(&env.pod, "eth0"), ["inet 10.1.0.2/24", "inet6 fd00:1::2/64"]);
    assert_eq!(addrs(&env.node, "cni0"), ["inet 10.1.0.1/24", "inet6 fd00:1::1/64"]);
    let tag = id("ctr-d").tag();
    assert_eq!(
        tagged_rules(&env.node, &tag),
        [
            format!("ip saddr 10.1.0.2 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 counter packets 0 bytes 0 masquerade comment \"{tag}\""),
            format!("ip6 saddr fd00:1::2 ip6 daddr != fd00:1::/64 ip6 daddr != ff00::/8 counter packets 0 bytes 0 masquerade comment \"{tag}\""),
        ]
    );
    assert!(env.node.sh("nft list chain ip podnet postrouting").contains("type nat hook postrouting priority srcnat"));
    env.del("ctr-d", &c).ok();
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn existing_bridge_is_reused() {
    let env = Env::new();
    env.node.sh("ip link add cni0 type bridge && ip link set cni0 address 02:aa:bb:cc:dd:01 && ip addr add 10.1.0.1/24 dev cni0");
    let index = env.node.sh("ip -o link show dev cni0").split(':').next().unwrap().to_string();
    let res = env.add("ctr-e", &env.conf(json!({}))).ok().json();
    assert_eq!(res["interfaces"][0], json!({"name": "cni0", "mac": "02:aa:bb:cc:dd:01"}));
    assert_eq!(env.node.sh("ip -o link show dev cni0").split(':').next().unwrap(), index, "bridge was recreated");
    assert!(env.node.sh("ip -o link show dev cni0").contains(",UP,"), "the bridge is set up");
    assert_eq!(addrs(&env.node, "cni0"), ["inet 10.1.0.1/24"]);
    assert!(env.node.sh(&format!("ip -o link show dev {}", id("ctr-e").host_veth())).contains("master cni0"));
}

#[test]
#[ignore = "needs root"]
fn created_bridge_has_a_stable_mac() {
    let env = Env::new();
    let c = env.conf(json!({}));
    env.add("ctr-a", &c).ok();
    let want = format_mac(&bridge_mac("cni0"));
    assert_eq!(mac_of(&env.node, "cni0"), want);
    env.del("ctr-a", &c).ok();
    let pod2 = Ns::new("pp");
    Invocation::new("ADD", "ctr-b", Some(&pod2.path)).run(&env.node, &c).ok();
    assert_eq!(mac_of(&env.node, "cni0"), want, "the bridge MAC changed as ports came and went");
}

#[test]
#[ignore = "needs root"]
fn conflicting_bridge_address_fails_without_force_address() {
    let env = Env::new();
    env.node.sh("ip link add cni0 type bridge && ip addr add 10.1.0.99/24 dev cni0 && ip link set cni0 up");
    let out = env.add("ctr-f", &env.conf(json!({})));
    assert_cni_error(&out, 999, &["\"cni0\"", "already has an IP address", "10.1.0.1/24"]);
    env.nothing_left();
    assert_eq!(addrs(&env.node, "cni0"), ["inet 10.1.0.99/24"]);
    assert_eq!(link_names(&env.pod), ["lo"]);
}

#[test]
#[ignore = "needs root"]
fn force_address_replaces_the_bridge_address() {
    let env = Env::new();
    env.node.sh("ip link add cni0 type bridge && ip addr add 10.1.0.99/24 dev cni0 && ip link set cni0 up");
    env.add("ctr-f", &env.conf(json!({"forceAddress": true}))).ok();
    assert_eq!(addrs(&env.node, "cni0"), ["inet 10.1.0.1/24"]);
    assert_eq!(addrs(&env.pod, "eth0"), ["inet 10.1.0.2/24"]);
}

#[test]
#[ignore = "needs root"]
fn mtu_applies_to_bridge_and_both_veth_ends() {
    let env = Env::new();
    env.add("ctr-m", &env.conf(json!({"mtu": 1400}))).ok();
    for (ns, dev) in
        [(&env.node, "cni0".to_string()), (&env.node, id("ctr-m").host_veth()), (&env.pod, "eth0".to_string())]
    {
        let l = ns.sh(&format!("ip -o link show dev {dev}"));
        assert!(l.contains(" mtu 1400 "), "{dev}: {l}");
    }
}

#[test]
#[ignore = "needs root"]
fn hairpin_mode_on_the_host_port() {
    let env = Env::new();
    env.add("ctr-h", &env.conf(json!({"hairpinMode": true}))).ok();
    let veth = id("ctr-h").host_veth();
    assert!(env.node.sh(&format!("ip -d link show dev {veth}")).contains(" hairpin on "));
    // And off without it.
    let pod2 = Ns::new("pp");
    Invocation::new("ADD", "ctr-h2", Some(&pod2.path)).run(&env.node, &env.conf(json!({}))).ok();
    assert!(env.node.sh(&format!("ip -d link show dev {}", id("ctr-h2").host_veth())).contains(" hairpin off "));
}

#[test]
#[ignore = "needs root"]
fn port_isolation_on_the_host_port() {
    let env = Env::new();
    env.add("ctr-i", &env.conf(json!({"portIsolation": true}))).ok();
    assert!(env.node.sh(&format!("ip -d link show dev {}", id("ctr-i").host_veth())).contains(" isolated on "));
    let pod2 = Ns::new("pp");
    Invocation::new("ADD", "ctr-i2", Some(&pod2.path)).run(&env.node, &env.conf(json!({}))).ok();
    assert!(env.node.sh(&format!("ip -d link show dev {}", id("ctr-i2").host_veth())).contains(" isolated off "));
}

#[test]
#[ignore = "needs root"]
fn promisc_mode_on_the_bridge() {
    let env = Env::new();
    env.add("ctr-p", &env.conf(json!({"promiscMode": true}))).ok();
    let l = env.node.sh("ip -o link show dev cni0");
    assert!(l.contains("<BROADCAST,MULTICAST,PROMISC,UP,LOWER_UP>"), "{l}");
}

#[test]
#[ignore = "needs root"]
fn vlan_is_configured_or_refused_cleanly() {
    let env = Env::new();
    let supported = env.node.run("ip link add pnprobe0 type bridge vlan_filtering 1").status.success();
    if supported {
        env.node.sh("ip link del pnprobe0");
    }
    let out = env.add("ctr-v", &env.conf(json!({"vlan": 100})));
    if supported {
        out.ok();
        let v = env.node.sh(&format!("bridge vlan show dev {}", id("ctr-v").host_veth()));
        assert!(v.contains("100 PVID Egress Untagged"), "{v}");
        assert!(!v.split_whitespace().any(|w| w == "1"), "default VLAN 1 should be removed from the port: {v}");
    } else {
        assert_cni_error(&out, 7, &["\"vlan\"", "cni0"]);
        env.nothing_left();
        assert_eq!(link_names(&env.node), ["lo"], "a half-made bridge was left behind");
    }
}

#[test]
#[ignore = "needs root"]
fn mac_spoof_check_drops_spoofed_frames() {
    let env = Env::new();
    let c = env.conf(json!({"macspoofchk": true}));
    let res = env.add("ctr-s", &c).ok().json();
    let mac = res["interfaces"][2]["mac"].as_str().unwrap().to_string();
    assert_eq!(mac, mac_of(&env.pod, "eth0"));
    let (veth, tag) = (id("ctr-s").host_veth(), id("ctr-s").tag());
    assert_eq!(
        tagged_rules(&env.node, &tag),
        [format!("iifname \"{veth}\" ether saddr != {mac} counter packets 0 bytes 0 drop comment \"{tag}\"")]
    );
    env.pod.sh("ping -c1 -W2 10.1.0.1");
    env.pod.sh("ip link set eth0 address 02:00:00:00:00:99 && ip neigh flush dev eth0");
    assert!(!env.pod.run("ping -c1 -W1 10.1.0.1").status.success(), "a spoofed source MAC got through");
    let dropped = tagged_rules(&env.node, &tag)[0].clone();
    assert!(!dropped.contains("counter packets 0 "), "the drop rule counted nothing: {dropped}");
    env.del("ctr-s", &c).ok();
    assert_eq!(env.node.sh("nft list table bridge podnet").matches("comment").count(), 0);
}

#[test]
#[ignore = "needs root"]
fn del_of_an_unconfigured_network_succeeds() {
    let env = Env::new();
    let out = env.del("never-added", &env.conf(json!({"ipMasq": true}))).ok();
    assert_eq!(out.stdout, "");
    assert_eq!(link_names(&env.node), ["lo"], "DEL created something");
    assert_eq!(env.node.sh("nft list ruleset"), "");
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn del_twice_succeeds() {
    let env = Env::new();
    let c = env.conf(json!({"ipMasq": true}));
    env.add("ctr-2", &c).ok();
    env.del("ctr-2", &c).ok();
    env.del("ctr-2", &c).ok();
    Invocation::new("DEL", "ctr-2", None).run(&env.node, &c).ok();
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn del_after_the_pod_netns_is_gone() {
    let env = Env::new();
    let c = env.conf(json!({"ipMasq": true, "isDefaultGateway": true}));
    let (pod_a, pod_b) = (Ns::new("pp"), Ns::new("pp"));
    let path_a = pod_a.path.clone();
    Invocation::new("ADD", "gone-a", Some(&pod_a.path)).run(&env.node, &c).ok();
    Invocation::new("ADD", "gone-b", Some(&pod_b.path)).run(&env.node, &c).ok();
    assert_eq!(reservations(&env.ipam_dir(), NET).len(), 2);
    drop(pod_a);
    drop(pod_b);
    assert!(!path_a.exists());
    // CNI_NETNS naming the removed path, then CNI_NETNS empty (what containerd sends).
    Invocation::new("DEL", "gone-a", Some(&path_a)).run(&env.node, &c).ok();
    Invocation::new("DEL", "gone-b", None).run(&env.node, &c).ok();
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn second_add_of_the_same_attachment_fails_and_keeps_the_first() {
    let env = Env::new();
    let c = env.conf(json!({"ipMasq": true}));
    let first = env.add("ctr-dup", &c).ok().json();
    let rules = tagged_rules(&env.node, &id("ctr-dup").tag());
    let record = std::fs::read(env.state_dir().join(NET).join("ctr-dup:eth0.json")).unwrap();

    let again = env.add("ctr-dup", &c);
    assert_cni_error(&again, 999, &["eth0", "already exists"]);
    let other_pod = Ns::new("pp");
    let elsewhere = Invocation::new("ADD", "ctr-dup", Some(&other_pod.path)).run(&env.node, &c);
    assert_cni_error(&elsewhere, 999, &["ctr-dup/eth0", "already exists"]);
    assert_eq!(link_names(&other_pod), ["lo"]);

    assert_eq!(addrs(&env.pod, "eth0"), ["inet 10.1.0.2/24"]);
    assert_eq!(mac_of(&env.pod, "eth0"), first["interfaces"][2]["mac"].as_str().unwrap());
    assert_eq!(podnet_veths(&env.node), [id("ctr-dup").host_veth()]);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.1.0.2"]);
    assert_eq!(tagged_rules(&env.node, &id("ctr-dup").tag()), rules);
    assert_eq!(std::fs::read(env.state_dir().join(NET).join("ctr-dup:eth0.json")).unwrap(), record);
    env.del("ctr-dup", &c).ok();
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn no_gateway_leaves_the_bridge_without_address() {
    let env = Env::new();
    let fwd_before = env.node.sh("cat /proc/sys/net/ipv4/ip_forward");
    let res = env.add("ctr-l2", &env.conf(json!({"isGateway": false}))).ok().json();
    assert_eq!(res["ips"], json!([{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2}]));
    assert!(res.get("routes").is_none(), "{res}");
    assert_eq!(addrs(&env.node, "cni0"), Vec::<String>::new());
    assert_eq!(routes(&env.pod, "-4"), ["10.1.0.0/24 dev eth0 proto kernel scope link src 10.1.0.2"]);
    assert_eq!(env.node.sh("cat /proc/sys/net/ipv4/ip_forward"), fwd_before);
}

#[test]
#[ignore = "needs root"]
fn ipam_routes_are_installed_in_the_pod() {
    let env = Env::new();
    let c = env
        .conf(json!({"ipam": {"routes": [{"dst": "192.168.50.0/24"}, {"dst": "172.16.0.0/16", "gw": "10.1.0.254"}]}}));
    let res = env.add("ctr-r", &c).ok().json();
    assert_eq!(res["routes"], json!([{"dst": "192.168.50.0/24"}, {"dst": "172.16.0.0/16", "gw": "10.1.0.254"}]));
    let r = routes(&env.pod, "-4");
    assert!(r.contains(&"192.168.50.0/24 via 10.1.0.1 dev eth0".to_string()), "{r:?}");
    assert!(r.contains(&"172.16.0.0/16 via 10.1.0.254 dev eth0".to_string()), "{r:?}");
    assert!(!r.iter().any(|l| l.starts_with("default")), "{r:?}");
}

#[test]
#[ignore = "needs root"]
fn dns_from_conf_and_from_resolv_conf() {
    let env = Env::new();
    let resolv = env.data.path().join("resolv.conf");
    std::fs::write(&resolv, "# generated\nnameserver 10.9.9.9\nnameserver 10.9.9.10\ndomain example.test\nsearch a.example b.example\noptions ndots:2 timeout:1\n").unwrap();
    let conf_dns = json!({"nameservers": ["10.1.0.53"], "domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]});

    let res = env.add("ctr-dns1", &env.conf(json!({"dns": conf_dns}))).ok().json();
    assert_eq!(res["dns"], conf_dns);

    let pod2 = Ns::new("pp");
    let c = env.conf(json!({"ipam": {"resolvConf": resolv}}));
    let res = Invocation::new("ADD", "ctr-dns2", Some(&pod2.path)).run(&env.node, &c).ok().json();
    assert_eq!(
        res["dns"],
        json!({"nameservers": ["10.9.9.9", "10.9.9.10"], "domain": "example.test", "search": ["a.example", "b.example"], "options": ["ndots:2", "timeout:1"]})
    );

    // Both: the conf's dns wins, as in the reference.
    let pod3 = Ns::new("pp");
    let c = env.conf(json!({"dns": conf_dns, "ipam": {"resolvConf": resolv}}));
    let res = Invocation::new("ADD", "ctr-dns3", Some(&pod3.path)).run(&env.node, &c).ok().json();
    assert_eq!(res["dns"], conf_dns);
}

#[test]
#[ignore = "needs root"]
fn enabledad_waits_for_dad_on_v6() {
    let env = Env::new();
    let c = env.conf(json!({"enabledad": true, "ipam": {"ranges": [[{"subnet": "fd00:1::/64"}]]}}));
    env.add("ctr-dad", &c).ok();
    let a = env.pod.sh("ip -6 -o addr show dev eth0 scope global");
    assert!(a.contains("inet6 fd00:1::2/64"), "{a}");
    assert!(!a.contains("tentative") && !a.contains("nodad") && !a.contains("dadfailed"), "DAD not done: {a}");
}

#[test]
#[ignore = "needs root"]
fn explicit_pod_mac_from_cni_args_args_and_runtime_config() {
    let env = Env::new();
    // CNI_ARGS MAC=
    let mut inv = Invocation::new("ADD", "mac-1", Some(&env.pod.path));
    inv.args = "IgnoreUnknown=1;MAC=c2:11:22:33:44:01";
    let res = inv.run(&env.node, &env.conf(json!({}))).ok().json();
    assert_eq!(res["interfaces"][2]["mac"], "c2:11:22:33:44:01");
    assert_eq!(mac_of(&env.pod, "eth0"), "c2:11:22:33:44:01");
    // args.cni.mac beats CNI_ARGS, runtimeConfig.mac beats both (the reference's order).
    let pod2 = Ns::new("pp");
    let mut inv = Invocation::new("ADD", "mac-2", Some(&pod2.path));
    inv.args = "MAC=c2:11:22:33:44:01";
    inv.run(&env.node, &env.conf(json!({"args": {"cni": {"mac": "c2:11:22:33:44:02"}}}))).ok();
    assert_eq!(mac_of(&pod2, "eth0"), "c2:11:22:33:44:02");
    let pod3 = Ns::new("pp");
    let mut inv = Invocation::new("ADD", "mac-3", Some(&pod3.path));
    inv.args = "MAC=c2:11:22:33:44:01";
    let c = env.conf(json!({"args": {"cni": {"mac": "c2:11:22:33:44:02"}}, "capabilities": {"mac": true},
        "runtimeConfig": {"mac": "c2:11:22:33:44:03"}}));
    inv.run(&env.node, &c).ok();
    assert_eq!(mac_of(&pod3, "eth0"), "c2:11:22:33:44:03");
}

// ---------------------------------------------------------------------------------------------
// portmap (ruleset level; traffic through hostPorts is covered elsewhere)

fn port_mappings() -> Value {
    json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"HostPort": 5353, "ContainerPort": 53, "Protocol": "udp", "HostIP": "192.0.2.10"},
        {"hostPort": 3868, "containerPort": 3868, "protocol": "sctp", "hostIP": "fd00:ff::10"}
    ])
}

fn dual_ranges() -> Value {
    json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]})
}

/// The hostport DNAT lines expected for `port_mappings()` towards 10.1.0.2 / fd00:1::2.
fn expected_dnat(tag: &str) -> Vec<String> {
    vec![
        format!("tcp dport 8080 counter packets 0 bytes 0 dnat to 10.1.0.2:80 comment \"{tag}\""),
        format!("ip daddr 192.0.2.10 udp dport 5353 counter packets 0 bytes 0 dnat to 10.1.0.2:53 comment \"{tag}\""),
        format!("tcp dport 8080 counter packets 0 bytes 0 dnat to [fd00:1::2]:80 comment \"{tag}\""),
        format!("ip6 daddr fd00:ff::10 sctp dport 3868 counter packets 0 bytes 0 dnat to [fd00:1::2]:3868 comment \"{tag}\""),
    ]
}

fn hostports(node: &Ns, tag: &str) -> Vec<String> {
    tagged_rules(node, tag).into_iter().filter(|l| l.contains(" dnat to ")).collect()
}

#[test]
#[ignore = "needs root"]
fn podnet_type_installs_port_mappings() {
    let env = Env::new();
    let c = env.conf(json!({"ipam": dual_ranges(), "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": port_mappings()}}));
    env.add("ctr-pm", &c).ok();
    let tag = id("ctr-pm").tag();
    assert_eq!(hostports(&env.node, &tag), expected_dnat(&tag));
    for fam in ["ip", "ip6"] {
        for chain in ["prerouting", "output"] {
            let l = env.node.sh(&format!("nft list chain {fam} podnet {chain}"));
            assert_eq!(l.matches("fib daddr type local jump hostports").count(), 1, "{fam} {chain}: {l}");
        }
    }
    // Hairpin masquerade towards the pod for DNAT'd traffic (its exact source match is the
    // traffic suite's business), and 127.0.0.1 reaching the hostPort.
    let rules = tagged_rules(&env.node, &tag);
    let hairpin = |daddr: &str| {
        rules
            .iter()
            .filter(|r| r.contains(&format!(" daddr {daddr} ct status dnat ")) && r.contains(" masquerade "))
            .count()
    };
    assert_eq!(hairpin("10.1.0.2"), 2, "{rules:?}");
    assert_eq!(hairpin("fd00:1::2"), 1, "{rules:?}");
    assert!(rules.contains(&format!("ip saddr 127.0.0.0/8 ip daddr 10.1.0.2 ct status dnat counter packets 0 bytes 0 masquerade comment \"{tag}\"")), "{rules:?}");
    assert_eq!(env.node.sh("cat /proc/sys/net/ipv4/conf/cni0/route_localnet").trim(), "1");
    env.del("ctr-pm", &c).ok();
    env.nothing_left();
}

#[test]
#[ignore = "needs root"]
fn chained_portmap_after_bridge() {
    let env = Env::new();
    // The conflist libcni would run: bridge (ipMasq), then portmap with the portMappings capability.
    let bridge = env.conf(json!({"type": "bridge", "ipMasq": true, "ipam": dual_ranges()}));
    let rc = json!({"portMappings": port_mappings()});
    let portmap = |prev: Option<&Value>| {
        let mut p = json!({"cniVersion": "1.0.0", "name": NET, "type": "portmap", "capabilities": {"portMappings": true},
            "runtimeConfig": rc});
        if let Some(prev) = prev {
            p["prevResult"] = prev.clone();
        }
        p
    };
    let prev = env.add("ctr-ch", &bridge).ok().json();
    let res = env.add("ctr-ch", &portmap(Some(&prev))).ok().json();
    assert_eq!(res, prev, "portmap passes the previous result on");

    let (tag, pm_tag) = (id("ctr-ch").tag(), id("ctr-ch").portmap_tag());
    assert_eq!(pm_tag, format!("{tag}/pm"));
    assert_eq!(hostports(&env.node, &pm_tag), expected_dnat(&pm_tag));
    let masq = tagged_rules(&env.node, &tag).into_iter().filter(|l| l.ends_with(&format!("comment \"{tag}\""))).count();
    assert_eq!(masq, 2, "the bridge step's v4 and v6 masquerade rules");
    assert_eq!(env.node.sh("cat /proc/sys/net/ipv4/conf/cni0/route_localnet").trim(), "1");

    // DEL runs in reverse: portmap removes exactly its rules, then the bridge the rest.
    env.del("ctr-ch", &portmap(Some(&prev))).ok();
    let left = tagged_rules(&env.node, &tag);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|l| l.ends_with(&format!("comment \"{tag}\"")) && l.contains("masquerade")), "{left:?}");
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.1.0.2", "fd00:1::2"]);
    env.del("ctr-ch", &bridge).ok();
    env.nothing_left();
}
