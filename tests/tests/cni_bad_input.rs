//! Bad input: every case must exit non-zero with a CNI error object `{cniVersion, code, msg}` on
//! stdout whose code is the spec's and whose msg names what is wrong, and must leave nothing
//! behind (no bridge, veth, rule, reservation or record; validation failures do not even create
//! the data dirs). Root tests exec the plugin in their own node namespace; the environment
//! cases also run in-process (`cni_bridge::plugin::run`) without root.

use std::collections::HashMap;

use podnet_tests::*;
use serde_json::{json, Value};

const NET: &str = "bad-net";

struct Env(Site);

impl std::ops::Deref for Env {
    type Target = Site;
    fn deref(&self) -> &Site {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(Site::new("podnet-bad"))
    }

    /// A valid conf (ipMasq, gateway, 10.5.0.0/24) with `extra`'s keys set over it; an `ipam`
    /// object in `extra` replaces keys of the base ipam.
    fn conf(&self, extra: Value) -> Value {
        let base = json!({
            "cniVersion": "1.0.0",
            "name": NET,
            "type": "podnet",
            "bridge": "cni0",
            "isDefaultGateway": true,
            "ipMasq": true,
            "stateDir": self.state_dir(),
            "ipam": {"type": "host-local", "dataDir": self.ipam_dir(), "ranges": [[{"subnet": "10.5.0.0/24"}]]}
        });
        merge_conf(base, extra)
    }

    fn add(&self, conf: &Value) -> PluginOutput {
        Invocation::new("ADD", "bad-1", Some(&self.pod.path)).run(&self.node, conf)
    }

    /// Nothing at all happened: the node has only lo and no nft ruleset, the pod only lo,
    /// and not even the data dirs were created.
    fn untouched(&self) {
        assert_eq!(link_names(&self.node), ["lo"], "links created in the node");
        assert_eq!(self.node.sh("nft list ruleset"), "", "rules created in the node");
        assert_eq!(link_names(&self.pod), ["lo"], "links created in the pod");
        assert_eq!(files_in(self.data.path()), Vec::<String>::new(), "data or state dirs created");
    }

    /// ADD with `extra` fails with `code` naming `needles`, and leaves nothing.
    fn rejects(&self, extra: Value, code: u64, needles: &[&str]) {
        let c = self.conf(extra.clone());
        let out = self.add(&c);
        let msg = assert_cni_error(&out, code, needles);
        assert_eq!(out.json()["cniVersion"], c["cniVersion"], "{extra}: {msg}");
        self.untouched();
    }
}

#[test]
#[ignore = "needs root"]
fn malformed_json() {
    let env = Env::new();
    let pod = env.pod.path.display().to_string();
    let env_vars =
        [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "bad-1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", pod.as_str())];
    for stdin in [&br#"{"cniVersion":"1.0.0","name":"bad-net","type":"podnet""#[..], b"", b"[1,2]", b"not json"] {
        let out = run_plugin_env(Some(&env.node), &env_vars, stdin);
        assert_cni_error(&out, 6, &["network configuration"]);
        env.untouched();
    }
}

#[test]
#[ignore = "needs root"]
fn unknown_plugin_type() {
    let env = Env::new();
    env.rejects(json!({"type": "frobnicate"}), 7, &["\"type\"", "frobnicate"]);
}

#[test]
#[ignore = "needs root"]
fn subnet_with_host_bits() {
    let env = Env::new();
    env.rejects(
        json!({"ipam": {"ranges": [[{"subnet": "10.1.2.3/24"}]]}}),
        7,
        &["ipam.ranges[0][0].subnet", "10.1.2.3/24"],
    );
    // The legacy single-range form names its own field.
    env.rejects(json!({"ipam": {"ranges": null, "subnet": "10.1.2.3/24"}}), 7, &["\"ipam.subnet\"", "10.1.2.3/24"]);
}

#[test]
#[ignore = "needs root"]
fn overlapping_ranges() {
    let env = Env::new();
    env.rejects(
        json!({"ipam": {"ranges": [[{"subnet": "10.5.0.0/24"}], [{"subnet": "10.5.0.128/25"}]]}}),
        7,
        &["ipam.ranges[1]", "overlaps"],
    );
    env.rejects(
        json!({"ipam": {"ranges": [[{"subnet": "10.5.0.0/24"}, {"subnet": "10.5.0.0/24", "rangeStart": "10.5.0.100"}]]}}),
        7,
        &["ipam.ranges[0][1]", "overlaps"],
    );
}

#[test]
#[ignore = "needs root"]
fn bad_cidrs() {
    let env = Env::new();
    for bad in ["10.1.2.0/33", "nonsense", "10.1.2.0"] {
        env.rejects(json!({"ipam": {"ranges": [[{"subnet": bad}]]}}), 7, &["ipam.ranges[0][0].subnet", bad]);
    }
}

#[test]
#[ignore = "needs root"]
fn other_bad_config_fields() {
    let env = Env::new();
    env.rejects(json!({"mtu": "abc"}), 7, &["\"mtu\""]);
    env.rejects(json!({"isGateway": "yes"}), 7, &["\"isGateway\""]);
    env.rejects(json!({"bridge": "a-name-far-too-long"}), 7, &["\"bridge\""]);
    env.rejects(json!({"ipam": {"type": "dhcp"}}), 7, &["ipam.type", "dhcp"]);
    env.rejects(json!({"disableContainerInterface": true}), 7, &["\"disableContainerInterface\"", "IPAM"]);
    env.rejects(
        json!({"ipam": {"ranges": [[{"subnet": "10.5.0.0/24", "rangeStart": "10.6.0.1"}]]}}),
        7,
        &["rangeStart", "10.6.0.1"],
    );
    let mut no_ipam = env.conf(json!({}));
    no_ipam.as_object_mut().unwrap().remove("ipam");
    assert_cni_error(&env.add(&no_ipam), 7, &["\"ipam\""]);
    env.untouched();
}

#[test]
#[ignore = "needs root"]
fn unsupported_cni_version() {
    let env = Env::new();
    env.rejects(json!({"cniVersion": "9.9.9"}), 1, &["9.9.9"]);
    env.rejects(json!({"cniVersion": "0.2.0"}), 1, &["0.2.0"]);
}

#[test]
#[ignore = "needs root"]
fn missing_or_bad_environment() {
    let env = Env::new();
    let c = env.conf(json!({}));
    let run = |cid: &str, ifname: &str, netns: Option<&std::path::Path>| {
        let mut inv = Invocation::new("ADD", cid, netns);
        inv.ifname = ifname;
        inv.run(&env.node, &c)
    };
    assert_cni_error(&run("", "eth0", Some(&env.pod.path)), 4, &["CNI_CONTAINERID"]);
    assert_cni_error(&run("bad-1", "", Some(&env.pod.path)), 4, &["CNI_IFNAME"]);
    assert_cni_error(&run("bad-1", "eth0", None), 4, &["CNI_NETNS"]);
    assert_cni_error(&run("../etc", "eth0", Some(&env.pod.path)), 4, &["CNI_CONTAINERID"]);
    assert_cni_error(&run("bad-1", "eth/0", Some(&env.pod.path)), 4, &["CNI_IFNAME"]);
    env.untouched();

    let stdin = serde_json::to_vec(&c).unwrap();
    let pod = env.pod.path.display().to_string();
    let rest = [("CNI_CONTAINERID", "bad-1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", pod.as_str())];
    // CNI_COMMAND empty: the plugin names it.
    let with = |cmd: &'static str| -> Vec<(&str, &str)> { std::iter::once(("CNI_COMMAND", cmd)).chain(rest).collect() };
    assert_cni_error(&run_plugin_env(Some(&env.node), &with(""), &stdin), 4, &["CNI_COMMAND"]);
    assert_cni_error(&run_plugin_env(Some(&env.node), &with("FROB"), &stdin), 4, &["CNI_COMMAND", "FROB"]);
    // CNI_COMMAND unset: the binary is not in plugin mode at all; it says so on stderr and
    // prints nothing on stdout.
    let out = run_plugin_env(Some(&env.node), &rest, &stdin);
    assert_ne!(out.code, 0);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("CNI_COMMAND"), "{out:?}");
    env.untouched();
}

#[test]
#[ignore = "needs root"]
fn netns_path_that_does_not_exist() {
    let env = Env::new();
    let missing = env.data.path().join("no-such-netns");
    let out = Invocation::new("ADD", "bad-1", Some(&missing)).run(&env.node, &env.conf(json!({})));
    assert_cni_error(&out, 5, &["network namespace", &missing.display().to_string()]);
    env.untouched();
}

// ---------------------------------------------------------------------------------------------
// In-process, no root: these fail before the engine touches anything.

fn in_process(stdin: &[u8], vars: &[(&str, &str)]) -> (i32, Value) {
    let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut out = Vec::new();
    let code = cni_bridge::plugin::run(stdin, |k| m.get(k).cloned(), &mut out);
    let v = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("no JSON on stdout ({e}): {}", String::from_utf8_lossy(&out)));
    (code, v)
}

fn conf_bytes(data: &TempDir, version: &str) -> Vec<u8> {
    json!({"cniVersion": version, "name": NET, "type": "podnet", "stateDir": data.path().join("state"),
           "ipam": {"type": "host-local", "dataDir": data.path().join("ipam"), "subnet": "10.5.0.0/24"}})
    .to_string()
    .into_bytes()
}

fn expect_error(got: (i32, Value), code: u64, needles: &[&str]) {
    let (rc, v) = got;
    assert_eq!(rc, 1, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["cniVersion"].is_string(), "{v}");
    let msg = v["msg"].as_str().unwrap_or_else(|| panic!("no msg: {v}"));
    for n in needles {
        assert!(msg.contains(n), "msg {msg:?} does not name {n:?}");
    }
}

const NO_NETNS: &str = "/nonexistent/podnet-test/netns";

#[test]
fn missing_variables_in_process() {
    let data = TempDir::new("podnet-bad");
    let stdin = conf_bytes(&data, "1.0.0");
    let all = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "bad-1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", NO_NETNS)];
    for (i, (var, _)) in all.iter().enumerate() {
        let vars: Vec<(&str, &str)> = all.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, kv)| *kv).collect();
        expect_error(in_process(&stdin, &vars), 4, &[var]);
    }
    // Several missing: all named in one error.
    expect_error(in_process(&stdin, &[("CNI_COMMAND", "ADD")]), 4, &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"]);
    assert_eq!(files_in(data.path()), Vec::<String>::new());
}

#[test]
fn malformed_and_unsupported_in_process() {
    let data = TempDir::new("podnet-bad");
    let vars = [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "bad-1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", NO_NETNS)];
    expect_error(in_process(br#"{"cniVersion": "1.0.0", "name""#, &vars), 6, &["network configuration"]);
    let (_, v) = in_process(&conf_bytes(&data, "9.9.9"), &vars);
    assert_eq!(v["cniVersion"], "9.9.9", "the error answers in the config's version");
    expect_error(in_process(&conf_bytes(&data, "9.9.9"), &vars), 1, &["9.9.9"]);
    assert_eq!(files_in(data.path()), Vec::<String>::new());
}
