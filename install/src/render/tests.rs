use super::*;

fn repo_file(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn vars(restrict_oom: bool) -> Vars {
    Vars {
        cni_version: "1.1.0".into(),
        subnet: "10.89.0.0/16".into(),
        subnet6: None,
        address: "/run/containerd/containerd.sock".into(),
        namespace: "k8s.io".into(),
        cni_conf_dir: "/etc/podnet/other.d".into(),
        conf_dir: "/etc/ctrd/dropins".into(),
        restrict_oom,
        podnet_config: "/etc/podnet/config.toml".into(),
    }
}

#[test]
fn substitutes_known_variables_once_and_refuses_unknown_ones() {
    let v = vars(false);
    assert_eq!(
        substitute("a @CNI_VERSION@ b@@CNI_VERSION@ x@y @lower@\n\n", "t", &v).unwrap(),
        "a 1.1.0 b@1.1.0 x@y @lower@"
    );
    assert_eq!(substitute("@CONTAINERD_NAMESPACE@@CNI_VERSION@", "t", &v).unwrap(), "k8s.io1.1.0");
    let err = substitute("x = @NOPE@", "deploy/t.in", &v).unwrap_err();
    assert_eq!(err.msg, "template deploy/t.in has an unknown variable @NOPE@");
    // A value is not substituted again.
    let mut v = vars(false);
    v.cni_conf_dir = "/etc/@CNI_VERSION@".into();
    assert_eq!(substitute("@PODNET_CNI_CONF_DIR@", "t", &v).unwrap(), "/etc/@CNI_VERSION@");
}

#[test]
fn conflist_is_json_with_one_or_two_ranges() {
    let text = repo_file("deploy/cni/10-podnet.conflist.in");
    let mut v = vars(false);
    let json: serde_json::Value = serde_json::from_str(&conflist(&text, "c", &v).unwrap()).unwrap();
    assert_eq!(json["plugins"][0]["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.89.0.0/16"}]]));
    v.subnet6 = Some("fd89::/64".into());
    let json: serde_json::Value = serde_json::from_str(&conflist(&text, "c", &v).unwrap()).unwrap();
    assert_eq!(json["plugins"][0]["ipam"]["ranges"].as_array().unwrap().len(), 2);
    assert!(conflist("{\"a\": @CNI_VERSION@", "c", &v).unwrap_err().msg.contains("does not render to JSON"));
}

#[test]
fn dropins_render_to_toml_with_the_handler() {
    for (file, version, plugin) in
        [("deploy/containerd/podnet-v3.toml.in", 3, V3_RUNTIME), ("deploy/containerd/podnet-v2.toml.in", 2, V2_CRI)]
    {
        for restrict in [false, true] {
            let out = dropin(&repo_file(file), file, &vars(restrict), version).unwrap();
            let doc = out.parse::<DocumentMut>().unwrap();
            assert_eq!(doc["version"].as_integer(), Some(version.into()));
            let handler = &doc["plugins"][plugin]["containerd"]["runtimes"]["podnet"];
            assert_eq!(handler["runtime_type"].as_str(), Some(HANDLER_TYPE));
            assert_eq!(handler["cni_conf_dir"].as_str(), Some("/etc/podnet/other.d"));
            assert_eq!(handler["options"]["ConfigPath"].as_str(), Some("/etc/podnet/config.toml"));
            assert_eq!(
                doc["plugins"][plugin].get("restrict_oom_score_adj").and_then(Item::as_bool),
                restrict.then_some(true)
            );
            assert!(out.contains(DROPIN_MARKER), "{file}");
            assert!(out.contains("imports = [\"/etc/ctrd/dropins/*.toml\"]"), "{file}: the comment names the conf dir");
        }
    }
}

#[test]
fn a_dropin_template_that_renders_wrong_is_refused() {
    let v3 = repo_file("deploy/containerd/podnet-v3.toml.in");
    // Rendered as version 2: the version and the plugin do not match.
    let err = dropin(&v3, "t", &vars(false), 2).unwrap_err();
    assert!(err.msg.contains("version = 2"), "{}", err.msg);
    let broken = v3.replace("cni_conf_dir = \"@PODNET_CNI_CONF_DIR@\"", "cni_conf_dir = \"/fixed\"");
    assert!(dropin(&broken, "t", &vars(false), 3).unwrap_err().msg.contains("cni_conf_dir"));
    let err = dropin("version = 3\n[a\n", "t", &vars(false), 3).unwrap_err();
    assert!(err.msg.starts_with("template t, rendered: line 2, column "), "{}", err.msg);
}

#[test]
fn k3s_sets_cni_conf_dir_and_keeps_the_rest() {
    let text = repo_file("deploy/k3s/config-v3.toml.tmpl");
    let out = k3s(&text, "t", "/etc/podnet/k3s.d").unwrap();
    let expected = text.replace("cni_conf_dir = \"/etc/podnet/cri.d\"", "cni_conf_dir = \"/etc/podnet/k3s.d\"");
    assert_eq!(out, expected.trim_end_matches('\n'));
    assert_eq!(k3s(&text, "t", "/etc/podnet/cri.d").unwrap(), text.trim_end_matches('\n'));
    assert!(k3s("[a]\n", "t", "/x").unwrap_err().msg.contains("does not start with"));
    assert!(k3s("{{ template \"base\" . }}\n[a]\n", "t", "/x").unwrap_err().msg.contains("no cni_conf_dir"));
    let err = k3s("{{ template \"base\" . }}\n\n[a\n", "t", "/x").unwrap_err();
    assert!(err.msg.starts_with("t: line 3, column "), "{}", err.msg);
    // A trailing comment on the line stays.
    let with_comment = "{{ template \"base\" . }}\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podnet]\n  cni_conf_dir = \"/a\" # why\n";
    assert!(k3s(with_comment, "t", "/b").unwrap().ends_with("  cni_conf_dir = \"/b\" # why"));
}

#[test]
fn podnet_config_per_driver() {
    let head = "# Written by podnet's hack/install (cgroup driver: why).\n# podnet shim config: docs/install.md. The cgroup driver must match the kubelet's.\n";
    assert_eq!(podnet_config(CgroupDriver::Systemd, "why"), format!("{head}systemd_cgroup = true"));
    assert_eq!(podnet_config(CgroupDriver::Cgroupfs, "why"), format!("{head}systemd_cgroup = false"));
    let auto = podnet_config(CgroupDriver::Auto, "why");
    assert_eq!(
        auto,
        format!("{head}# systemd_cgroup unset: the driver each linux.cgroupsPath names (slice:prefix:name -> systemd)")
    );
    for driver in [CgroupDriver::Systemd, CgroupDriver::Cgroupfs, CgroupDriver::Auto] {
        let doc = podnet_config(driver, "SystemdCgroup = true for runc in /etc/containerd/config.toml")
            .parse::<DocumentMut>()
            .unwrap();
        let want = match driver {
            CgroupDriver::Systemd => Some(true),
            CgroupDriver::Cgroupfs => Some(false),
            CgroupDriver::Auto => None,
        };
        assert_eq!(doc.get("systemd_cgroup").and_then(Item::as_bool), want);
        assert_eq!(doc.len(), usize::from(want.is_some()));
    }
}
