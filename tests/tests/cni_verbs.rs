//! The CNI verbs beyond ADD/DEL through the exec'd plugin: VERSION, CHECK, GC, STATUS, and the
//! loopback type. Root tests make their own node namespace; VERSION also runs in-process
//! (`cni_bridge::plugin::run`) without root.

use cni_bridge::names::AttachmentId;
use podnet_tests::*;
use serde_json::{json, Value};

const NET: &str = "verbs-net";
const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

struct Env(Site);

impl std::ops::Deref for Env {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(Site::new("podnet-verbs"))
    }

    /// A `podnet` conf of `version`: default gateway, ipMasq, 10.4.0.0/24, and one hostPort.
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NET,
            "type": "podnet",
            "bridge": "cni0",
            "isDefaultGateway": true,
            "ipMasq": true,
            "stateDir": self.state_dir(),
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
            "ipam": {"type": "host-local", "dataDir": self.ipam_dir(), "ranges": [[{"subnet": "10.4.0.0/24"}]]}
        })
    }

    fn with(conf: &Value, key: &str, v: Value) -> Value {
        let mut c = conf.clone();
        c[key] = v;
        c
    }

    fn check(&self, conf: &Value, prev: &Value) -> PluginOutput {
        Invocation::new("CHECK", "ctr-c", Some(&self.pod.path))
            .run(&self.node, &Self::with(conf, "prevResult", prev.clone()))
    }
}

fn tag(cid: &str) -> String {
    AttachmentId::new(NET, cid, "eth0").tag()
}

fn veth(cid: &str) -> String {
    AttachmentId::new(NET, cid, "eth0").host_veth()
}

#[test]
fn version_in_process() {
    for v in ALL_VERSIONS {
        let mut out = Vec::new();
        let stdin = json!({"cniVersion": v}).to_string();
        let code = cni_bridge::plugin::run(
            stdin.as_bytes(),
            |k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()),
            &mut out,
        );
        assert_eq!(code, 0);
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, json!({"cniVersion": v, "supportedVersions": ALL_VERSIONS}));
    }
}

#[test]
#[ignore = "needs root"]
fn version_exec() {
    require_root();
    let node = Ns::new("pn");
    let out = Invocation::new("VERSION", "", None).run(&node, &json!({"cniVersion": "1.0.0"})).ok();
    assert_eq!(out.json(), json!({"cniVersion": "1.0.0", "supportedVersions": ALL_VERSIONS}));
    // No config at all: the latest version answers.
    let out = run_plugin_env(Some(&node), &[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.json();
    let supported: Vec<&str> = v["supportedVersions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(supported.contains(&want), "{v}");
    }
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
#[ignore = "needs root"]
fn check_after_add_succeeds() {
    let env = Env::new();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        let pod = Ns::new("pp");
        let c = env.conf(v);
        let cid = format!("chk-{}", v.replace('.', ""));
        let prev = Invocation::new("ADD", &cid, Some(&pod.path)).run(&env.node, &c).ok().json();
        let out =
            Invocation::new("CHECK", &cid, Some(&pod.path)).run(&env.node, &Env::with(&c, "prevResult", prev)).ok();
        assert_eq!(out.stdout, "", "{v}");
    }
    // CHECK is not part of 0.3.x.
    let prev = json!({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.4.0.2/24"}]});
    assert_cni_error(&env.check(&env.conf("0.3.1"), &prev), 1, &["CHECK", "0.3.1"]);
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_pod_address_is_removed() {
    let env = Env::new();
    let c = env.conf("1.0.0");
    let prev = Invocation::new("ADD", "ctr-c", Some(&env.pod.path)).run(&env.node, &c).ok().json();
    env.check(&c, &prev).ok();
    env.pod.sh("ip addr del 10.4.0.2/24 dev eth0");
    assert_cni_error(&env.check(&c, &prev), 999, &["ctr-c/eth0", "address 10.4.0.2/24 is missing from eth0"]);
    // Whole interface gone (the host end deleted by hand takes the pod end with it).
    env.node.sh(&format!("ip link del {}", veth("ctr-c")));
    assert_cni_error(&env.check(&c, &prev), 999, &["interface eth0 is missing"]);
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_masquerade_rule_is_deleted() {
    let env = Env::new();
    let c = env.conf("1.0.0");
    let prev = Invocation::new("ADD", "ctr-c", Some(&env.pod.path)).run(&env.node, &c).ok().json();
    let listing = env.node.sh("nft -a list chain ip podnet postrouting");
    let line = listing
        .lines()
        .find(|l| l.contains("ip daddr != 10.4.0.0/24") && l.contains(&tag("ctr-c")))
        .unwrap_or_else(|| panic!("no masquerade rule: {listing}"));
    let handle = line.rsplit("# handle ").next().unwrap().trim();
    env.node.sh(&format!("nft delete rule ip podnet postrouting handle {handle}"));
    assert_cni_error(&env.check(&c, &prev), 999, &["ctr-c/eth0", "masquerade"]);
}

#[test]
#[ignore = "needs root"]
fn gc_keeps_only_the_valid_attachments() {
    let env = Env::new();
    let c = env.conf("1.1.0");
    let pods: Vec<Ns> = (0..3).map(|_| Ns::new("pp")).collect();
    let cids = ["gc-1", "gc-2", "gc-3"];
    for (pod, cid) in pods.iter().zip(cids) {
        Invocation::new("ADD", cid, Some(&pod.path)).run(&env.node, &c).ok();
    }
    let kept_ip = std::fs::read_dir(env.ipam_dir().join(NET))
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_to_string(e.path()).ok().as_deref() == Some("gc-2\r\neth0"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("gc-2's reservation");
    let kept_rules = tagged_rules(&env.node, &tag("gc-2"));
    assert_eq!(kept_rules.len(), 4, "DNAT + hairpin + localhost + masquerade: {kept_rules:?}");

    let gc = Env::with(&c, "cni.dev/valid-attachments", json!([{"containerID": "gc-2", "ifname": "eth0"}]));
    let out = Invocation::new("GC", "", None).run(&env.node, &gc).ok();
    assert_eq!(out.stdout, "");

    assert_eq!(reservations(&env.ipam_dir(), NET), vec![kept_ip.clone()]);
    assert_eq!(podnet_veths(&env.node), [veth("gc-2")]);
    assert_eq!(tagged_rules(&env.node, &format!("podnet/{NET}/")), kept_rules);
    assert_eq!(records_in(&env.state_dir().join(NET)), ["gc-2:eth0.json"]);
    assert_eq!(link_names(&pods[0]), ["lo"]);
    assert_eq!(link_names(&pods[2]), ["lo"]);
    assert!(pods[1].sh("ip -o -4 addr show dev eth0").contains(&format!("inet {kept_ip}/24")));
    // GC is not part of 1.0.0.
    assert_cni_error(
        &Invocation::new("GC", "", None).run(&env.node, &Env::with(&gc, "cniVersion", json!("1.0.0"))),
        1,
        &["GC"],
    );
}

#[test]
#[ignore = "needs root"]
fn gc_removes_strays_without_records() {
    let env = Env::new();
    let c = env.conf("1.1.0");
    Invocation::new("ADD", "gc-keep", Some(&env.pod.path)).run(&env.node, &c).ok();
    let keep_rules = tagged_rules(&env.node, &tag("gc-keep"));
    // A leaked podnet veth carries its attachment's tag as alias; GC removes it. Veths on the
    // bridge without this network's tag (another network sharing the bridge, or not podnet's)
    // and veths off the bridge stay.
    env.node.sh(&format!(
        "ip link add pn0123456789ab type veth peer name strayp0 && ip link set pn0123456789ab master cni0 alias podnet/{NET}/00000000cafef00d"
    ));
    env.node.sh("ip link add pnabcdefabcdef type veth peer name strayp1");
    env.node.sh("ip link add pn111111111111 type veth peer name strayp2 && ip link set pn111111111111 master cni0 alias podnet/other-net/00000000cafef00d");
    env.node.sh("ip link add pn222222222222 type veth peer name strayp3 && ip link set pn222222222222 master cni0");
    let stray = format!("podnet/{NET}/00000000deadbeef");
    env.node
        .sh(&format!("nft add rule ip podnet postrouting ip saddr 10.4.0.99 counter masquerade comment '\"{stray}\"'"));
    env.node.sh("nft add rule ip podnet postrouting ip saddr 10.4.0.98 counter masquerade comment '\"podnet/other-net/00000000deadbeef\"'");
    std::fs::write(env.ipam_dir().join(NET).join("10.4.0.200"), "ghost\r\neth0").unwrap();
    assert_eq!(tagged_rules(&env.node, &stray).len(), 1);

    let gc = Env::with(&c, "cni.dev/valid-attachments", json!([{"containerID": "gc-keep", "ifname": "eth0"}]));
    Invocation::new("GC", "", None).run(&env.node, &gc).ok();

    let links = link_names(&env.node);
    assert!(!links.contains(&"pn0123456789ab".to_string()), "stray veth on the bridge survived: {links:?}");
    assert!(links.contains(&"pnabcdefabcdef".to_string()), "GC deleted a veth that is not on its bridge: {links:?}");
    assert!(links.contains(&"pn111111111111".to_string()), "GC deleted another network's veth: {links:?}");
    assert!(links.contains(&"pn222222222222".to_string()), "GC deleted a veth podnet did not tag: {links:?}");
    assert_eq!(tagged_rules(&env.node, &stray), Vec::<String>::new());
    assert_eq!(tagged_rules(&env.node, "podnet/other-net/").len(), 1, "GC touched another network's rule");
    assert_eq!(tagged_rules(&env.node, &tag("gc-keep")), keep_rules);
    assert_eq!(reservations(&env.ipam_dir(), NET), ["10.4.0.2"]);
    assert_eq!(records_in(&env.state_dir().join(NET)), ["gc-keep:eth0.json"]);
    assert!(env.pod.sh("ip -o -4 addr show dev eth0").contains("inet 10.4.0.2/24"));
}

/// The host veth of an ADD carries its attachment's tag as alias (the kernel ignores an alias
/// in the request that creates a link), so a veth whose record and reservation are lost is
/// still found and removed by GC when its record is lost.
#[test]
#[ignore = "needs root"]
fn gc_removes_a_veth_podnet_made_whose_record_is_lost() {
    let env = Env::new();
    let c = env.conf("1.1.0");
    Invocation::new("ADD", "gc-lost", Some(&env.pod.path)).run(&env.node, &c).ok();
    let shown = env.node.sh(&format!("ip -o link show {}", veth("gc-lost")));
    assert!(shown.contains(&format!("alias {}", tag("gc-lost"))), "no tag alias on the host veth: {shown}");
    // The attachment record is lost: only the alias says whose the veth is.
    std::fs::remove_file(env.state_dir().join(NET).join("gc-lost:eth0.json")).unwrap();
    let gc = Env::with(&c, "cni.dev/valid-attachments", json!([]));
    Invocation::new("GC", "", None).run(&env.node, &gc).ok();
    assert_eq!(podnet_veths(&env.node), Vec::<String>::new());
    assert_eq!(tagged_rules(&env.node, &tag("gc-lost")), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn status_reports_an_unusable_data_dir() {
    let env = Env::new();
    let c = env.conf("1.1.0");
    let out = Invocation::new("STATUS", "", None).run(&env.node, &c).ok();
    assert_eq!(out.stdout, "");
    let file = env.data.path().join("a-regular-file");
    std::fs::write(&file, "x").unwrap();
    let mut bad = c.clone();
    bad["ipam"]["dataDir"] = json!(file.join("sub"));
    let out = Invocation::new("STATUS", "", None).run(&env.node, &bad);
    assert_cni_error(&out, 50, &["IPAM store unusable"]);
    // STATUS is not part of 1.0.0.
    assert_cni_error(&Invocation::new("STATUS", "", None).run(&env.node, &env.conf("1.0.0")), 1, &["STATUS"]);
    assert_eq!(link_names(&env.node), ["lo"], "STATUS changed the node");
}

fn lo_up(pod: &Ns) -> bool {
    let l = pod.sh("ip -o link show dev lo");
    l.contains(",UP") || l.contains("<UP")
}

#[test]
#[ignore = "needs root"]
fn loopback_alone_and_chained() {
    let env = Env::new();
    env.pod.sh("ip link set lo down");
    let lo = json!({"cniVersion": "1.0.0", "name": "lo-net", "type": "loopback"});
    let res = Invocation::new("ADD", "ctr-lo", Some(&env.pod.path)).run(&env.node, &lo).ok().json();
    assert!(lo_up(&env.pod));
    assert_eq!(
        res,
        json!({"cniVersion": "1.0.0",
               "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": env.pod.path.display().to_string()}],
               "ips": [{"address": "127.0.0.1/8", "interface": 0}, {"address": "::1/128", "interface": 0}]})
    );
    Invocation::new("CHECK", "ctr-lo", Some(&env.pod.path))
        .run(&env.node, &Env::with(&lo, "prevResult", res.clone()))
        .ok();
    Invocation::new("DEL", "ctr-lo", Some(&env.pod.path)).run(&env.node, &lo).ok();
    assert!(!lo_up(&env.pod), "DEL sets lo down, as the reference does");
    let out =
        Invocation::new("CHECK", "ctr-lo", Some(&env.pod.path)).run(&env.node, &Env::with(&lo, "prevResult", res));
    assert_cni_error(&out, 999, &["lo is down"]);

    // Chained after the bridge step: lo comes up, the previous result passes through.
    let pod2 = Ns::new("pp");
    pod2.sh("ip link set lo down");
    let c = env.conf("1.0.0");
    let prev = Invocation::new("ADD", "ctr-lo2", Some(&pod2.path)).run(&env.node, &c).ok().json();
    let chained = json!({"cniVersion": "1.0.0", "name": NET, "type": "loopback", "prevResult": prev});
    let res = Invocation::new("ADD", "ctr-lo2", Some(&pod2.path)).run(&env.node, &chained).ok().json();
    assert_eq!(res, prev);
    assert!(lo_up(&pod2));
    // DEL with the pod gone is fine.
    let path2 = pod2.path.clone();
    drop(pod2);
    Invocation::new("DEL", "ctr-lo2", Some(&path2)).run(&env.node, &chained).ok();
    Invocation::new("DEL", "ctr-lo2", None).run(&env.node, &chained).ok();
}
