//! ADD/DEL through the exec'd `podnet` plugin, as a runtime calls it. Root; each test makes
//! its own node namespace (see podnet_tests).

use podnet_tests::*;
use serde_json::json;

fn conf(data: &TempDir, ranges: serde_json::Value) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "t-net",
        "type": "podnet",
        "bridge": "cni0",
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "stateDir": data.path().join("state"),
        "ipam": {"type": "host-local", "dataDir": data.path().join("ipam"), "ranges": ranges}
    })
}

#[test]
#[ignore = "needs root"]
fn add_then_del_v4_leaves_nothing() {
    require_root();
    let node = Ns::new("pn");
    let pod = Ns::new("pp");
    let data = TempDir::new("podnet-t");
    let c = conf(&data, json!([[{"subnet": "10.250.0.0/24"}]]));

    let out = Invocation::new("ADD", "ctr-1", Some(&pod.path)).run(&node, &c).ok();
    let res = out.json();
    assert_eq!(res["ips"][0]["address"], "10.250.0.2/24");
    assert_eq!(res["ips"][0]["gateway"], "10.250.0.1");
    assert_eq!(res["interfaces"][2]["name"], "eth0");
    assert!(pod.sh("ip -4 addr show eth0").contains("10.250.0.2/24"));
    assert!(pod.sh("ip route").contains("default via 10.250.0.1"));
    assert!(node.sh("ip addr show cni0").contains("10.250.0.1/24"));
    assert_eq!(reservations(&data.path().join("ipam"), "t-net"), vec!["10.250.0.2"]);
    assert!(node.sh("nft list ruleset").contains("masquerade"));

    Invocation::new("DEL", "ctr-1", None).run(&node, &c).ok();
    assert!(reservations(&data.path().join("ipam"), "t-net").is_empty());
    assert!(!node.sh("nft list ruleset").contains("masquerade"));
    assert!(!node.sh("ip -o link").contains("pn"), "host veth left behind");
    assert!(!pod.sh("ip -o link").contains("eth0"));
}
