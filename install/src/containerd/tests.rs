use super::*;

const MAIN: &str = "/etc/containerd/config.toml";
const DROPIN: &str = "/etc/containerd/conf.d/podnet.toml";

fn parse(text: &str) -> MainConfig {
    MainConfig::parse(text, MAIN).unwrap_or_else(|e| panic!("{}", e.msg))
}

/// containerd 1.7's layout (config version 2): CRI under io.containerd.grpc.v1.cri.
const V2_CONFIG: &str = r#"
# containerd 1.7
version = 2
imports = ["/etc/containerd/conf.d/*.toml"]   # drop-ins

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
"#;

/// containerd 2.x's layout (config version 3): runtimes under io.containerd.cri.v1.runtime.
const V3_CONFIG: &str = r#"
version = 3
imports = ['/etc/containerd/conf.d/podnet.toml', "other/*.toml"]

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "/usr/bin/runc"
  SystemdCgroup = false

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "registry.k8s.io/pause:3.10"
"#;

#[test]
fn reads_the_containerd_1_7_layout() {
    let c = parse(V2_CONFIG);
    assert_eq!(c.version, Some(2));
    assert_eq!(c.imports, ["/etc/containerd/conf.d/*.toml"]);
    assert_eq!(c.runc_systemd_cgroup, Some(true));
    assert!(c.v2_cri_tables);
    assert!(c.imports_file(MAIN, DROPIN));
}

#[test]
fn reads_the_containerd_2_layout() {
    let c = parse(V3_CONFIG);
    assert_eq!(c.version, Some(3));
    assert_eq!(c.runc_systemd_cgroup, Some(false));
    assert!(!c.v2_cri_tables);
    assert!(c.imports_file(MAIN, DROPIN));
    // A relative entry is relative to config.toml's dir.
    assert!(c.imports_file(MAIN, "/etc/containerd/other/x.toml"));
    assert!(!c.imports_file(MAIN, "/etc/containerd/conf.d/other.toml"));
}

#[test]
fn systemd_cgroup_is_runcs_under_the_plugin_of_the_config_version() {
    // Inline tables and dotted keys are the same tables.
    let c = parse(
        "version = 3\nplugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc = { options = { SystemdCgroup = true } }\n",
    );
    assert_eq!(c.runc_systemd_cgroup, Some(true));
    // Another runtime's setting, a commented one, or runc's in the other version's plugin: none.
    let other = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.crun.options]\nSystemdCgroup = true\n";
    assert_eq!(parse(other).runc_systemd_cgroup, None);
    let commented = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n# SystemdCgroup = true\n";
    assert_eq!(parse(commented).runc_systemd_cgroup, None);
    let v2_in_v3 =
        "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = true\n";
    assert_eq!(parse(v2_in_v3).runc_systemd_cgroup, None);
    let v3_in_v2 = "version = 2\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\nSystemdCgroup = true\n";
    assert_eq!(parse(v3_in_v2).runc_systemd_cgroup, None);
    // Version 1 (no version key) named the plugin `cri`.
    let v1 = "[plugins.cri.containerd.runtimes.runc.options]\nSystemdCgroup = true\n";
    let c = parse(v1);
    assert_eq!((c.version, c.runc_systemd_cgroup, c.v2_cri_tables), (None, Some(true), true));
}

#[test]
fn imports_missing_empty_or_not_matching() {
    let c = parse("version = 3\n");
    assert!(c.imports.is_empty() && !c.imports_file(MAIN, DROPIN));
    let c = parse("version = 3\nimports = []\n");
    assert!(!c.imports_file(MAIN, DROPIN));
    // Multi-line arrays with comments.
    let c = parse("version = 3\nimports = [\n  \"/etc/a.toml\", # a\n  \"/etc/containerd/conf.d/*.toml\",\n]\n");
    assert_eq!(c.imports.len(), 2);
    assert!(c.imports_file(MAIN, DROPIN));
    // `*` does not cross a '/'.
    let c = parse("version = 3\nimports = [\"/etc/containerd/*.toml\"]\n");
    assert!(!c.imports_file(MAIN, DROPIN));
    // An `imports` inside a table is not the top-level one.
    let c = parse("version = 3\n[x]\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n");
    assert!(!c.imports_file(MAIN, DROPIN));
}

#[test]
fn a_malformed_config_names_the_file_and_the_line() {
    for (text, line, what) in [
        ("version = 3\nimports = [\"/a\"\n[plugins]\n", 3, "not valid TOML"),
        ("version = 3\n[a]\n[a]\n", 3, "duplicate key"),
        ("version = \"3\"\n", 1, "`version` is not an integer"),
        ("version = 3\nimports = \"/etc/containerd/conf.d/*.toml\"\n", 2, "`imports` is not an array of strings"),
        ("version = 3\nimports = [1]\n", 2, "`imports` is not an array of strings"),
        (
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\nSystemdCgroup = \"true\"\n",
            3,
            "`SystemdCgroup` is not true or false",
        ),
    ] {
        let err = MainConfig::parse(text, MAIN).expect_err(text);
        assert_eq!(err.code, 2);
        assert!(err.msg.starts_with(&format!("{MAIN}: line {line}, column ")), "{text:?}: {}", err.msg);
        assert!(err.msg.contains(what), "{text:?}: {}", err.msg);
        assert!(!err.msg.contains('\n'), "one line: {}", err.msg);
    }
}

#[test]
fn read_skips_a_missing_file() {
    assert_eq!(MainConfig::read(Path::new("/nonexistent/config.toml"), MAIN).unwrap(), None);
}

#[test]
fn dump_shows_the_handler_and_the_cni_bin_dirs() {
    // containerd 2.1's dump: bin_dirs; the handler under the v3 runtime plugin.
    let d = Dump::parse(
        "version = 3\n[plugins]\n  [plugins.'io.containerd.cri.v1.runtime']\n    [plugins.'io.containerd.cri.v1.runtime'.cni]\n      bin_dirs = ['/opt/cni/bin', '/usr/lib/cni']\n      conf_dir = '/etc/cni/net.d'\n    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.podnet]\n      runtime_type = 'io.containerd.podnet.v2'\n",
    )
    .unwrap();
    assert!(d.podnet_handler);
    assert_eq!(d.cni_bin_dirs, ["/opt/cni/bin", "/usr/lib/cni"]);
    // containerd 1.7's: bin_dir, no handler.
    let d = Dump::parse(
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
    )
    .unwrap();
    assert!(!d.podnet_handler);
    assert_eq!(d.cni_bin_dirs, ["/usr/lib/cni"]);
    // A handler of another name that ends in podnet is not podnet.
    let d = Dump::parse("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.notpodnet]\n").unwrap();
    assert!(!d.podnet_handler && d.cni_bin_dirs.is_empty());
    assert!(Dump::parse("[a\n").is_err());
}

#[test]
fn version_families() {
    for v in ["2", "2.x", "2.0.0", "2.1.9+unknown", "v2.1.4"] {
        assert_eq!(version_family(v), Some(Family::V2), "{v}");
    }
    for v in ["1.7", "1.7.x", "1.7.24", "v1.7.24", "1.7~rc.1"] {
        assert_eq!(version_family(v), Some(Family::V17), "{v}");
    }
    for v in ["", "1.6.20", "1.7.", "2.", "3.0.0", "20", "1.70"] {
        assert_eq!(version_family(v), None, "{v}");
    }
    assert_eq!((Family::V2.cni_version(), Family::V17.cni_version()), ("1.1.0", "1.0.0"));
}
