//! Compatibility with Debian's reference plugins (containernetworking-plugins 1.1.1 in
//! /usr/lib/cni): one conflist (cniVersion 1.0.0; bridge with host-local, portmap, loopback)
//! run three ways, each in a node namespace of its own with the same pods:
//!
//! - `reference`: /usr/lib/cni/{bridge,portmap,loopback} exec'd as libcni execs them (bridge
//!   execs /usr/lib/cni/host-local itself through CNI_PATH);
//! - `library`: `cni_bridge::engine::add_network` on the parsed conflist, in-process, types
//!   unchanged;
//! - `exec`: the podnet binary exec'd in place of each reference binary (it dispatches on the
//!   plugin's `type`).
//!
//! The three must agree on the pods' addresses and routes, the bridge's gateway address, the
//! ADD results (apart from MACs, the host veth's name and the pod's netns path) and on what is
//! reachable. Then the IPAM data dir is shared both ways between the reference host-local and
//! podnet: neither hands out the other's address, and either releases the other's.
//!
//! The reference portmap and bridge program iptables (nf_tables backend) — inside the test's
//! node namespace only, like everything else here.

use std::path::{Path, PathBuf};

use cni_bridge::config::NetworkConfig;
use cni_bridge::engine::{add_network, del_network, Request};
use podnet_tests::*;
use serde_json::{json, Map, Value};

const NET: &str = "compat";
const REF_DIR: &str = "/usr/lib/cni";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavor {
    Reference,
    Library,
    Exec,
}

fn conflist(data: &TempDir, ranges: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                // podnet's own extension (where attachment records go); the reference ignores it.
                "stateDir": data.path().join("state"),
                "ipam": {"type": "host-local", "dataDir": data.path().join("ipam"), "ranges": ranges}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "loopback"}
        ]
    })
}

/// libcni's buildOneConfig + injectRuntimeConfig, written here independently of podnet's own
/// version: the plugin object with the network's name and cniVersion, the previous result,
/// and the runtime config entries of the capabilities the plugin declares.
fn plugin_stdin(list: &Value, i: usize, prev: Option<&Value>, rc: &Value) -> Value {
    let mut p = list["plugins"][i].clone();
    p["name"] = list["name"].clone();
    p["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev {
        p["prevResult"] = prev.clone();
    }
    let mut filtered = Map::new();
    if let Some(caps) = p.get("capabilities").and_then(Value::as_object) {
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = rc.get(cap) {
                    filtered.insert(cap.clone(), v.clone());
                }
            }
        }
    }
    if !filtered.is_empty() {
        p["runtimeConfig"] = Value::Object(filtered);
    }
    p
}

fn binary_for(flavor: Flavor, plugin_type: &str) -> PathBuf {
    match flavor {
        Flavor::Reference => Path::new(REF_DIR).join(plugin_type),
        _ => plugin_binary(),
    }
}

fn exec(binary: PathBuf, node: &Ns, cmd: &str, id: &str, pod: &Ns, stdin: &Value) -> PluginOutput {
    let mut inv = Invocation::new(cmd, id, Some(&pod.path));
    inv.binary = binary;
    inv.run(node, stdin)
}

/// ADD of the whole conflist as `flavor`; the final result (what a runtime caches).
fn add(flavor: Flavor, node: &Ns, list: &Value, id: &str, pod: &Ns, rc: &Value) -> Value {
    if flavor == Flavor::Library {
        let net = NetworkConfig::parse(&serde_json::to_vec(list).unwrap()).expect("parse conflist");
        let rc = rc.as_object().cloned().unwrap_or_default();
        let res = node
            .enter(|| add_network(&net, &Request::new(id, "eth0", Some(&pod.path)), &rc))
            .unwrap_or_else(|e| panic!("library ADD of {id}: {e}"));
        return res.to_json(&net.cni_version).expect("encode result");
    }
    let mut prev: Option<Value> = None;
    for i in 0..list["plugins"].as_array().unwrap().len() {
        let t = list["plugins"][i]["type"].as_str().unwrap();
        let out = exec(binary_for(flavor, t), node, "ADD", id, pod, &plugin_stdin(list, i, prev.as_ref(), rc));
        assert_eq!(out.code, 0, "{flavor:?} {t} ADD of {id} failed: {out:?}");
        prev = Some(out.json());
    }
    prev.expect("a result")
}

/// DEL of the whole conflist as `flavor`, in reverse order, with the cached result.
fn del(flavor: Flavor, node: &Ns, list: &Value, id: &str, pod: &Ns, rc: &Value, prev: &Value) {
    if flavor == Flavor::Library {
        let net = NetworkConfig::parse(&serde_json::to_vec(list).unwrap()).expect("parse conflist");
        let rc = rc.as_object().cloned().unwrap_or_default();
        let prev = cni_bridge::result::CniResult::from_json(prev).expect("cached result");
        node.enter(|| del_network(&net, &Request::new(id, "eth0", Some(&pod.path)), &rc, Some(&prev)))
            .unwrap_or_else(|e| panic!("library DEL of {id}: {e}"));
        return;
    }
    for i in (0..list["plugins"].as_array().unwrap().len()).rev() {
        let t = list["plugins"][i]["type"].as_str().unwrap();
        let out = exec(binary_for(flavor, t), node, "DEL", id, pod, &plugin_stdin(list, i, Some(prev), rc));
        assert_eq!(out.code, 0, "{flavor:?} {t} DEL of {id} failed: {out:?}");
    }
}

/// A result with what legitimately differs replaced: MACs, the host veth's name, the pod's
/// netns path; an empty `dns` (Go prints `"dns": {}`, podnet omits it).
fn normalize(mut r: Value) -> Value {
    if let Some(ifs) = r.get_mut("interfaces").and_then(Value::as_array_mut) {
        for (i, x) in ifs.iter_mut().enumerate() {
            if let Some(m) = x.get("mac").and_then(Value::as_str) {
                assert!(m.len() == 17 && m.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()), "bad MAC {m}");
                x["mac"] = json!("<mac>");
            }
            if x.get("sandbox").is_some() {
                x["sandbox"] = json!("<pod netns>");
            } else if i > 0 {
                x["name"] = json!("<host veth>");
            }
        }
    }
    if r.get("dns") == Some(&json!({})) {
        r.as_object_mut().unwrap().remove("dns");
    }
    r
}

/// `ip -o addr` lines of `dev` with global scope: "inet 10.0.0.2/24 brd 10.0.0.255 scope
/// global" (index, name and lifetimes cut). `nodad` is cut too: podnet adds IPv6 addresses
/// with IFA_F_NODAD where the reference turns DAD off with the interface's accept_dad=0
/// sysctl; either way the address is usable at once.
fn global_addrs(ns: &Ns, dev: &str) -> Vec<String> {
    let mut v: Vec<String> = ns
        .sh(&format!("ip -o addr show dev {dev} scope global"))
        .lines()
        .map(|l| {
            let l = l.split('\\').next().unwrap_or(l);
            let words: Vec<&str> = l.split_whitespace().skip(2).filter(|w| *w != "nodad").collect();
            let words: Vec<&str> = match words.last() {
                Some(last) if *last == dev => words[..words.len() - 1].to_vec(),
                _ => words,
            };
            words.join(" ")
        })
        .collect();
    v.sort();
    v
}

fn routes(ns: &Ns) -> Vec<String> {
    let mut v: Vec<String> = ns
        .sh("ip -4 route show; ip -6 route show")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    v.sort();
    v
}

fn pod_ip(res: &Value, v6: bool) -> Option<String> {
    res["ips"]
        .as_array()?
        .iter()
        .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().to_string())
        .find(|a| a.contains(':') == v6)
}

/// What one flavor produced and what worked.
#[derive(Debug, PartialEq)]
struct Observed {
    results: Vec<Value>,
    pod_addrs: Vec<Vec<String>>,
    pod_routes: Vec<Vec<String>>,
    bridge_addrs: Vec<String>,
    reach: Vec<(String, bool)>,
}

fn run_flavor(flavor: Flavor, ranges: &Value) -> Observed {
    let node = Ns::new("kn");
    // Strict: no br_netfilter conntrack on bridged frames (as on a node without the module).
    node.set_bridge_nf_call(false);
    let pods = [Ns::new("kp"), Ns::new("kp")];
    let data = TempDir::new("podnet-compat");
    let list = conflist(&data, ranges);
    let rcs = [json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}), json!({})];
    let ids = ["pod-0", "pod-1"];

    let raw: Vec<Value> = (0..2).map(|i| add(flavor, &node, &list, ids[i], &pods[i], &rcs[i])).collect();
    let gw4 = raw[0]["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["gateway"].as_str().filter(|g| !g.contains(':')))
        .unwrap()
        .to_string();
    let gw6 = raw[0]["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i["gateway"].as_str().filter(|g| g.contains(':')))
        .map(str::to_string);

    let mut reach = Vec::new();
    reach.push(("pod0 -> gateway".to_string(), pings(&pods[0], &gw4)));
    reach.push(("pod0 -> pod1".to_string(), pings(&pods[0], &pod_ip(&raw[1], false).unwrap())));
    if let Some(gw6) = &gw6 {
        reach.push(("pod0 -> gateway v6".to_string(), pings(&pods[0], gw6)));
        reach.push(("pod0 -> pod1 v6".to_string(), pings(&pods[0], &pod_ip(&raw[1], true).unwrap())));
    }
    {
        let _srv = pods[0].spawn("busybox nc -ll -p 80 -e /bin/echo compat-token");
        pods[0].wait_listening("tcp", 80);
        let ok = |from: &Ns, host: &str| fetch(from, host, 8080).as_deref() == Some("compat-token");
        reach.push(("node -> gateway:hostPort".to_string(), ok(&node, &gw4)));
        reach.push(("node -> 127.0.0.1:hostPort".to_string(), ok(&node, "127.0.0.1")));
        reach.push(("pod0 -> gateway:hostPort (hairpin)".to_string(), ok(&pods[0], &gw4)));
        reach.push(("pod1 -> gateway:hostPort of pod0".to_string(), ok(&pods[1], &gw4)));
    }

    let obs = Observed {
        results: raw.iter().cloned().map(normalize).collect(),
        pod_addrs: pods.iter().map(|p| global_addrs(p, "eth0")).collect(),
        pod_routes: pods.iter().map(routes).collect(),
        bridge_addrs: global_addrs(&node, "cni0"),
        reach,
    };

    for i in (0..2).rev() {
        del(flavor, &node, &list, ids[i], &pods[i], &rcs[i], &raw[i]);
    }
    assert_eq!(reservations(&data.path().join("ipam"), NET), Vec::<String>::new(), "{flavor:?}: reservations left");
    let links = link_names(&node);
    assert!(links.iter().all(|l| l == "lo" || l == "cni0"), "{flavor:?}: links left in the node: {links:?}");
    for p in &pods {
        assert!(!link_names(p).contains(&"eth0".to_string()), "{flavor:?}: eth0 left in a pod");
    }
    assert!(fetch(&node, &gw4, 8080).is_none(), "{flavor:?}: hostPort still answers after DEL");
    obs
}

fn compare(ranges: Value) {
    let reference = run_flavor(Flavor::Reference, &ranges);
    // The comparison is only worth something if there is something to compare.
    assert!(reference.pod_routes[0].iter().any(|r| r.starts_with("default via")), "{reference:?}");
    assert!(!reference.bridge_addrs.is_empty() && !reference.pod_addrs[1].is_empty(), "{reference:?}");
    assert!(reference.results[0]["ips"].as_array().is_some_and(|a| !a.is_empty()), "{reference:?}");
    for (what, ok) in &reference.reach {
        assert!(ok, "the reference plugins fail {what}: the environment is broken, not podnet");
    }
    for flavor in [Flavor::Library, Flavor::Exec] {
        let got = run_flavor(flavor, &ranges);
        assert_eq!(got.results, reference.results, "{flavor:?}: ADD results differ from the reference");
        assert_eq!(got.pod_addrs, reference.pod_addrs, "{flavor:?}: pod addresses differ from the reference");
        assert_eq!(got.pod_routes, reference.pod_routes, "{flavor:?}: pod routes differ from the reference");
        assert_eq!(got.bridge_addrs, reference.bridge_addrs, "{flavor:?}: bridge addresses differ from the reference");
        assert_eq!(got.reach, reference.reach, "{flavor:?}: reachability differs from the reference");
    }
}

#[test]
#[ignore = "needs root"]
fn same_conflist_same_network_v4() {
    require_root();
    compare(json!([[{"subnet": "10.253.0.0/24"}]]));
}

#[test]
#[ignore = "needs root"]
fn same_conflist_same_network_dual_stack() {
    require_root();
    compare(json!([[{"subnet": "10.253.0.0/24"}], [{"subnet": "fd53::/64"}]]));
}

// ---------------------------------------------------------------------------------------------
// The IPAM data dir, shared with the reference host-local.

fn ipam(data: &TempDir) -> Value {
    json!({"type": "host-local", "dataDir": data.path().join("ipam"), "ranges": [[{"subnet": "10.254.0.0/24"}]]})
}

/// The reference host-local exec'd standalone (an ipam-only conf) for `cmd` of `id`.
fn ref_host_local(node: &Ns, cmd: &str, id: &str, pod: &Ns, data: &TempDir) -> PluginOutput {
    let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "host-local", "ipam": ipam(data)});
    exec(Path::new(REF_DIR).join("host-local"), node, cmd, id, pod, &conf)
}

/// The podnet plugin's single conf on the same data dir.
fn podnet_conf(data: &TempDir) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": NET, "type": "podnet", "bridge": "cni0",
        "isGateway": true, "ipMasq": true, "stateDir": data.path().join("state"), "ipam": ipam(data)
    })
}

fn owner(data: &TempDir, ip: &str) -> String {
    std::fs::read_to_string(data.path().join("ipam").join(NET).join(ip))
        .unwrap_or_else(|e| panic!("reservation {ip}: {e}"))
}

#[test]
#[ignore = "needs root"]
fn podnet_honours_and_releases_reference_reservations() {
    require_root();
    let node = Ns::new("kn");
    let data = TempDir::new("podnet-compat");
    let (p1, p2, p3) = (Ns::new("kp"), Ns::new("kp"), Ns::new("kp"));

    let r1 = pod_ip(&ref_host_local(&node, "ADD", "ref-1", &p1, &data).ok().json(), false).unwrap();
    let r2 = pod_ip(&ref_host_local(&node, "ADD", "ref-2", &p2, &data).ok().json(), false).unwrap();
    assert_eq!(owner(&data, &r1), "ref-1\r\neth0");

    // podnet's ADD of another id skips both.
    let pn = pod_ip(&Invocation::new("ADD", "pn-1", Some(&p3.path)).run(&node, &podnet_conf(&data)).ok().json(), false)
        .unwrap();
    assert!(pn != r1 && pn != r2, "podnet reused a reference reservation: {pn}");
    assert_eq!(owner(&data, &pn), "pn-1\r\neth0");
    let mut want = vec![r1.clone(), r2.clone(), pn.clone()];
    want.sort();
    assert_eq!(reservations(&data.path().join("ipam"), NET), want);

    // podnet's DEL of a reference-added id releases it (DEL as CRI sends it: no netns).
    Invocation::new("DEL", "ref-1", None).run(&node, &podnet_conf(&data)).ok();
    let mut want = vec![r2.clone(), pn.clone()];
    want.sort();
    assert_eq!(reservations(&data.path().join("ipam"), NET), want);

    // And the reference goes on after podnet's changes without touching podnet's IP.
    let r3 = pod_ip(&ref_host_local(&node, "ADD", "ref-3", &p1, &data).ok().json(), false).unwrap();
    assert!(r3 != r2 && r3 != pn, "the reference reused {r3}");
    ref_host_local(&node, "DEL", "ref-2", &p2, &data).ok();
    ref_host_local(&node, "DEL", "ref-3", &p1, &data).ok();
    Invocation::new("DEL", "pn-1", Some(&p3.path)).run(&node, &podnet_conf(&data)).ok();
    assert_eq!(reservations(&data.path().join("ipam"), NET), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn reference_honours_and_releases_podnet_reservations() {
    require_root();
    let node = Ns::new("kn");
    let data = TempDir::new("podnet-compat");
    let (p1, p2, p3) = (Ns::new("kp"), Ns::new("kp"), Ns::new("kp"));
    let conf = podnet_conf(&data);

    let a = pod_ip(&Invocation::new("ADD", "pn-1", Some(&p1.path)).run(&node, &conf).ok().json(), false).unwrap();
    let b = pod_ip(&Invocation::new("ADD", "pn-2", Some(&p2.path)).run(&node, &conf).ok().json(), false).unwrap();
    assert_eq!(owner(&data, &a), "pn-1\r\neth0", "podnet must write the reference's format");

    // The reference's ADD of a new id skips podnet's addresses.
    let r = pod_ip(&ref_host_local(&node, "ADD", "ref-1", &p3, &data).ok().json(), false).unwrap();
    assert!(r != a && r != b, "the reference reused podnet's {r}");

    // The reference's DEL of a podnet id releases it.
    ref_host_local(&node, "DEL", "pn-1", &p1, &data).ok();
    let mut want = vec![b.clone(), r.clone()];
    want.sort();
    assert_eq!(reservations(&data.path().join("ipam"), NET), want);

    // podnet copes with the change made behind its back: DEL of the released id is a no-op,
    // and ADD of that id again is not a "duplicate allocation".
    Invocation::new("DEL", "pn-1", Some(&p1.path)).run(&node, &conf).ok();
    let a2 = pod_ip(&Invocation::new("ADD", "pn-1", Some(&p1.path)).run(&node, &conf).ok().json(), false).unwrap();
    assert!(a2 != b && a2 != r, "podnet reused {a2}");

    Invocation::new("DEL", "pn-1", Some(&p1.path)).run(&node, &conf).ok();
    Invocation::new("DEL", "pn-2", Some(&p2.path)).run(&node, &conf).ok();
    ref_host_local(&node, "DEL", "ref-1", &p3, &data).ok();
    assert_eq!(reservations(&data.path().join("ipam"), NET), Vec::<String>::new());
    assert_nothing_left(&node, NET, &data.path().join("ipam"), &data.path().join("state"));
}
