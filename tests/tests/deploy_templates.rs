//! `hack/install` and the deployment templates in `deploy/`: every template is rendered by the
//! script itself (`--destdir`, so no root is needed and nothing outside a scratch dir is
//! touched) and the results are parsed: the containerd drop-ins (config v3 and v2) and the k3s
//! template as TOML, the conflist with the CNI engine's own parser, the kind config as YAML
//! with each `containerdConfigPatches` entry as TOML. `containerd config dump` of Debian's
//! containerd 2.x and 1.7 (hack/setup unpacks them under /opt/podnet; the tests fail without
//! them) checks that containerd merges the drop-in the way the templates say. The root test
//! runs a real (non-destdir) install into scratch paths with the shim binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cni_bridge::config::NetworkConfig;
use podnet_tests::TempDir;

const HANDLER_TYPE: &str = "io.containerd.podnet.v2";
const V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";
const V2_CRI: &str = "io.containerd.grpc.v1.cri";
const CONTAINERD_2: &str = "/opt/podnet/containerd-2/usr/bin/containerd";
const CONTAINERD_17: &str = "/opt/podnet/containerd-1.7/usr/bin/containerd";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// An executable stand-in for the shim: rendering does not depend on the binary's content.
fn fake_binary(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-shim");
    std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The installer hack/install runs, as `cargo build --workspace` built it next to the tests
/// (hack/install would otherwise build a release one with cargo, which PATH below lacks).
fn installer() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/podnet-install
    let p = exe.parent().and_then(|d| d.parent()).map(|d| d.join("podnet-install")).expect("target dir");
    assert!(p.exists(), "{} is missing: build it first (cargo build -p podnet-install)", p.display());
    p
}

/// Runs hack/install with `args` under `wrapper` (a command line it is appended to, or none),
/// with a PATH that has no containerd on it (every call names the version or the binary).
fn install_with(wrapper: &[&str], args: &[&str]) -> Output {
    let script = repo().join("hack/install");
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&script);
            c
        }
        None => Command::new(&script),
    };
    cmd.args(args).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env_remove("CARGO_TARGET_DIR");
    cmd.env("PODNET_INSTALL", installer());
    cmd.output().expect("run hack/install")
}

fn install(args: &[&str]) -> Output {
    install_with(&[], args)
}

fn ok(o: Output) -> String {
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "hack/install failed ({}):\n{out}", o.status);
    out
}

/// A scratch dir plus a fake binary; `render(extra)` installs into it with `--destdir`.
struct Staged {
    dir: TempDir,
    binary: PathBuf,
}

impl Staged {
    fn new() -> Staged {
        let dir = TempDir::new("pndeploy");
        let binary = fake_binary(dir.path());
        std::fs::create_dir(dir.path().join("root")).unwrap();
        Staged { dir, binary }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn at(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }
    fn render(&self, extra: &[&str]) -> String {
        let root = self.root();
        let mut args = vec!["--binary", self.binary.to_str().unwrap(), "--destdir", root.to_str().unwrap()];
        args.extend_from_slice(extra);
        ok(install(&args))
    }
    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.at(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}

fn parse_toml(text: &str, what: &str) -> toml::Value {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what} is not TOML: {e}\n{text}"))
}

/// The table at `path` (each element one key), with a message naming the missing key.
fn table<'a>(v: &'a toml::Value, path: &[&str]) -> &'a toml::Table {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur.get(k).unwrap_or_else(|| panic!("no table {} in\n{v:#?}", path[..=i].join(" > ")));
    }
    cur.as_table().unwrap_or_else(|| panic!("{} is not a table", path.join(" > ")))
}

fn assert_handler(runtime: &toml::Table, conf_dir: &str) {
    assert_eq!(runtime.get("runtime_type").and_then(|v| v.as_str()), Some(HANDLER_TYPE), "{runtime:#?}");
    assert_eq!(runtime.get("cni_conf_dir").and_then(|v| v.as_str()), Some(conf_dir), "{runtime:#?}");
}

fn v3_handler(v: &toml::Value) -> &toml::Table {
    table(v, &["plugins", V3_RUNTIME, "containerd", "runtimes", "podnet"])
}

fn v2_handler(v: &toml::Value) -> &toml::Table {
    table(v, &["plugins", V2_CRI, "containerd", "runtimes", "podnet"])
}

fn conflist(text: &str) -> (NetworkConfig, serde_json::Value) {
    let net = NetworkConfig::parse(text.as_bytes()).unwrap_or_else(|e| panic!("conflist rejected: {e:?}\n{text}"));
    let json: serde_json::Value = serde_json::from_str(text).unwrap();
    (net, json)
}

// -------------------------------------------------------------------------------------------
// containerd 2.x: config v3 drop-in

#[test]
fn containerd2_drop_in_is_config_v3_with_the_handler() {
    let s = Staged::new();
    s.render(&["--containerd-version", "2"]);
    let v = parse_toml(&s.read("/etc/containerd/conf.d/podnet.toml"), "the v3 drop-in");
    assert_eq!(v.get("version").and_then(|v| v.as_integer()), Some(3));
    assert_handler(v3_handler(&v), "/etc/podnet/cri.d");
    // restrict_oom_score_adj only on request (it applies to every handler).
    assert!(table(&v, &["plugins", V3_RUNTIME]).get("restrict_oom_score_adj").is_none());
    // Only podnet's own tables: nothing else of the user's config is overridden.
    assert_eq!(table(&v, &["plugins"]).len(), 1);
    assert_eq!(table(&v, &["plugins", V3_RUNTIME, "containerd", "runtimes"]).len(), 1);

    let (net, json) = conflist(&s.read("/etc/podnet/cri.d/10-podnet.conflist"));
    assert_eq!(net.cni_version, "1.1.0");
    assert_eq!(net.name, "podnet");
    assert_eq!(net.plugins.len(), 1);
    assert_eq!(net.plugins[0].plugin_type, "podnet");
    let p = &json["plugins"][0];
    assert_eq!(p["containerd"]["address"], "/run/containerd/containerd.sock");
    assert_eq!(p["containerd"]["namespace"], "k8s.io");
    assert_eq!(p["ipam"]["type"], "host-local");
    assert_eq!(p["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.89.0.0/16"}]]));
    assert_eq!(p["capabilities"]["portMappings"], true);
    assert_eq!(p["bridge"], "podnet0");
}

#[test]
fn flags_reach_the_rendered_files() {
    let s = Staged::new();
    s.render(&[
        "--containerd-version=2.1",
        "--cni-conf-dir",
        "/etc/podnet/other.d",
        "--containerd-conf-dir",
        "/etc/ctrd/dropins",
        "--containerd-address",
        "/run/other/containerd.sock",
        "--namespace",
        "pods.example",
        "--subnet",
        "10.99.0.0/20",
        "--subnet6",
        "fd99:1::/64",
        "--restrict-oom-score-adj",
    ]);
    let v = parse_toml(&s.read("/etc/ctrd/dropins/podnet.toml"), "the v3 drop-in");
    assert_handler(v3_handler(&v), "/etc/podnet/other.d");
    assert_eq!(table(&v, &["plugins", V3_RUNTIME]).get("restrict_oom_score_adj").and_then(|v| v.as_bool()), Some(true));
    let (net, json) = conflist(&s.read("/etc/podnet/other.d/10-podnet.conflist"));
    assert_eq!(net.cni_version, "1.1.0");
    let p = &json["plugins"][0];
    assert_eq!(p["containerd"]["address"], "/run/other/containerd.sock");
    assert_eq!(p["containerd"]["namespace"], "pods.example");
    // Dual-stack: two ranges, one per family.
    assert_eq!(p["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.99.0.0/20"}], [{"subnet": "fd99:1::/64"}]]));
}

#[test]
fn containerd2_with_a_version2_config_toml_gets_a_v2_drop_in() {
    // Debian's containerd 2.x package ships a version 2 config.toml: a v3 drop-in would make
    // containerd ignore its v2 CRI settings, so the drop-in follows config.toml's version.
    let s = Staged::new();
    std::fs::create_dir_all(s.at("/etc/containerd")).unwrap();
    std::fs::write(
        s.at("/etc/containerd/config.toml"),
        "version = 2\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n",
    )
    .unwrap();
    let out = s.render(&["--containerd-version", "2"]);
    assert!(out.contains("imports /etc/containerd/conf.d/podnet.toml"), "{out}");
    let v = parse_toml(&s.read("/etc/containerd/conf.d/podnet.toml"), "the v2 drop-in");
    assert_eq!(v.get("version").and_then(|v| v.as_integer()), Some(2));
    assert_handler(v2_handler(&v), "/etc/podnet/cri.d");
    assert_eq!(conflist(&s.read("/etc/podnet/cri.d/10-podnet.conflist")).0.cni_version, "1.1.0");
    // config.toml is read, never written.
    assert!(s.read("/etc/containerd/config.toml").contains("bin_dir = \"/usr/lib/cni\""));
}

#[test]
fn config_toml_without_the_import_gets_the_imports_line_printed() {
    let s = Staged::new();
    std::fs::create_dir_all(s.at("/etc/containerd")).unwrap();
    std::fs::write(s.at("/etc/containerd/config.toml"), "version = 3\n").unwrap();
    let out = s.render(&["--containerd-version", "2"]);
    assert!(out.contains("imports = [\"/etc/containerd/conf.d/*.toml\"]"), "{out}");
    assert_eq!(s.read("/etc/containerd/config.toml"), "version = 3\n");
    // No config.toml at all: the whole minimal file is printed.
    let s = Staged::new();
    let out = s.render(&["--containerd-version", "2"]);
    assert!(out.contains("version = 3") && out.contains("imports = [\"/etc/containerd/conf.d/*.toml\"]"), "{out}");
    assert!(!s.at("/etc/containerd/config.toml").exists());
}

// -------------------------------------------------------------------------------------------
// containerd 1.7: config v2 drop-in, CNI 1.0.0

#[test]
fn containerd17_drop_in_is_config_v2_and_conflist_is_cni_1_0_0() {
    let s = Staged::new();
    s.render(&["--containerd-version", "1.7", "--subnet6", "fd89::/64"]);
    let v = parse_toml(&s.read("/etc/containerd/conf.d/podnet.toml"), "the v2 drop-in");
    assert_eq!(v.get("version").and_then(|v| v.as_integer()), Some(2));
    assert_handler(v2_handler(&v), "/etc/podnet/cri.d");
    // 1.7 replaces the whole CRI table with an imported one: the default handler must stay.
    let runc = table(&v, &["plugins", V2_CRI, "containerd", "runtimes", "runc"]);
    assert_eq!(runc.get("runtime_type").and_then(|v| v.as_str()), Some("io.containerd.runc.v2"));
    let (net, json) = conflist(&s.read("/etc/podnet/cri.d/10-podnet.conflist"));
    assert_eq!(net.cni_version, "1.0.0");
    assert_eq!(json["plugins"][0]["ipam"]["ranges"].as_array().unwrap().len(), 2);
}

#[test]
fn subnet_node_leaves_the_range_to_the_node_facts() {
    let s = Staged::new();
    s.render(&["--containerd-version", "2", "--subnet", "node"]);
    let (net, json) = conflist(&s.read("/etc/podnet/cri.d/10-podnet.conflist"));
    assert_eq!(net.cni_version, "1.1.0");
    let ipam = &json["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"], serde_json::json!([]), "{ipam}");
    assert!(ipam.get("subnet").is_none(), "{ipam}");
}

#[test]
fn containerd17_warns_that_imports_replace_the_cri_table() {
    let s = Staged::new();
    std::fs::create_dir_all(s.at("/etc/containerd")).unwrap();
    std::fs::write(
        s.at("/etc/containerd/config.toml"),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"x/pause:1\"\n",
    )
    .unwrap();
    let out = s.render(&["--containerd-version", "1.7"]);
    assert!(out.contains("REPLACES the whole"), "{out}");
}

// -------------------------------------------------------------------------------------------
// What containerd itself makes of the drop-ins (Debian's containerd unpacked by hack/setup).

/// Fails the test unless Debian's containerd is unpacked at `containerd`.
fn require_containerd(containerd: &str) {
    assert!(
        Path::new(containerd).exists(),
        "{containerd} is missing: hack/setup unpacks Debian's containerd 2.x and 1.7 under /opt/podnet (hack/install-containerd)"
    );
}

/// `containerd -c MAIN config dump`, parsed.
fn config_dump(containerd: &str, main: &Path) -> toml::Value {
    require_containerd(containerd);
    let o = Command::new(containerd).arg("-c").arg(main).args(["config", "dump"]).output().expect("run containerd");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "config dump failed: {}{}", out, String::from_utf8_lossy(&o.stderr));
    parse_toml(&out, "containerd config dump")
}

#[test]
#[ignore = "needs hack/setup"]
fn containerd2_merges_the_v3_drop_in_into_config_toml() {
    let s = Staged::new();
    s.render(&["--containerd-version", "2", "--restrict-oom-score-adj"]);
    let main = s.dir.path().join("config.toml");
    std::fs::write(
        &main,
        format!(
            "version = 3\nimports = [\"{}/*.toml\"]\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n",
            s.at("/etc/containerd/conf.d").display()
        ),
    )
    .unwrap();
    let v = config_dump(CONTAINERD_2, &main);
    assert_handler(v3_handler(&v), "/etc/podnet/cri.d");
    // The user's own runc setting survives the import (2.x merges plugin tables).
    let runc = table(&v, &["plugins", V3_RUNTIME, "containerd", "runtimes", "runc", "options"]);
    assert_eq!(runc.get("SystemdCgroup").and_then(|v| v.as_bool()), Some(true));
    assert_eq!(table(&v, &["plugins", V3_RUNTIME]).get("restrict_oom_score_adj").and_then(|v| v.as_bool()), Some(true));
}

#[test]
#[ignore = "needs hack/setup"]
fn containerd2_merges_the_v2_drop_in_into_a_version2_config_toml() {
    let s = Staged::new();
    std::fs::create_dir_all(s.at("/etc/containerd")).unwrap();
    let imports = format!("{}/*.toml", s.at("/etc/containerd/conf.d").display());
    let main = s.at("/etc/containerd/config.toml");
    std::fs::write(
        &main,
        format!(
            "version = 2\nimports = [\"{imports}\"]\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"example.org/pause:9\"\n"
        ),
    )
    .unwrap();
    s.render(&["--containerd-version", "2"]);
    let v = config_dump(CONTAINERD_2, &main);
    // Migrated to v3 names, both the user's setting and the handler kept.
    assert_handler(v3_handler(&v), "/etc/podnet/cri.d");
    let pinned = table(&v, &["plugins", "io.containerd.cri.v1.images", "pinned_images"]);
    assert_eq!(pinned.get("sandbox").and_then(|v| v.as_str()), Some("example.org/pause:9"));
}

#[test]
#[ignore = "needs hack/setup"]
fn containerd17_reads_the_v2_drop_in() {
    let s = Staged::new();
    s.render(&["--containerd-version", "1.7"]);
    let main = s.dir.path().join("config.toml");
    std::fs::write(
        &main,
        format!("version = 2\nimports = [\"{}/*.toml\"]\n", s.at("/etc/containerd/conf.d").display()),
    )
    .unwrap();
    let v = config_dump(CONTAINERD_17, &main);
    assert_handler(v2_handler(&v), "/etc/podnet/cri.d");
    let runtimes = table(&v, &["plugins", V2_CRI, "containerd", "runtimes"]);
    assert!(runtimes.contains_key("runc"), "the default handler must stay defined: {runtimes:#?}");
}

#[test]
#[ignore = "needs hack/setup"]
fn containerd_version_is_asked_from_the_binary() {
    for (bin, cni_version, config_version) in [(CONTAINERD_2, "1.1.0", 3), (CONTAINERD_17, "1.0.0", 2)] {
        require_containerd(bin);
        let s = Staged::new();
        s.render(&["--containerd", bin]);
        assert_eq!(conflist(&s.read("/etc/podnet/cri.d/10-podnet.conflist")).0.cni_version, cni_version);
        let v = parse_toml(&s.read("/etc/containerd/conf.d/podnet.toml"), "the drop-in");
        assert_eq!(v.get("version").and_then(|v| v.as_integer()), Some(config_version));
    }
}

// -------------------------------------------------------------------------------------------
// k3s

/// The k3s template as TOML: the `{{ template "base" . }}` line removed, and no other Go
/// template syntax allowed.
fn k3s_toml(text: &str) -> toml::Value {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    assert_eq!(lines.next().map(str::trim), Some(r#"{{ template "base" . }}"#), "must extend k3s's base template");
    let rest: Vec<&str> = lines.collect();
    let rest = rest.join("\n");
    assert!(!rest.contains("{{") && !rest.contains("}}"), "Go template syntax besides the base line:\n{rest}");
    parse_toml(&rest, "the k3s template")
}

#[test]
fn k3s_template_adds_the_v3_handler() {
    let text = std::fs::read_to_string(repo().join("deploy/k3s/config-v3.toml.tmpl")).unwrap();
    let v = k3s_toml(&text);
    assert_handler(v3_handler(&v), "/etc/podnet/cri.d");
    // Only the handler table: k3s's base template defines the CRI plugin's own tables, and
    // TOML refuses a table defined twice.
    assert_eq!(table(&v, &["plugins", V3_RUNTIME]).len(), 1);
    assert_eq!(table(&v, &["plugins", V3_RUNTIME, "containerd"]).len(), 1);
    assert!(v.get("version").is_none(), "the base template sets the version");

    // hack/install --k3s: k3s's socket and CNI bin dir, the template with --cni-conf-dir.
    let s = Staged::new();
    s.render(&["--k3s", "--cni-conf-dir", "/etc/podnet/k3s.d"]);
    let v = k3s_toml(&s.read("/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl"));
    assert_handler(v3_handler(&v), "/etc/podnet/k3s.d");
    let (net, json) = conflist(&s.read("/etc/podnet/k3s.d/10-podnet.conflist"));
    assert_eq!(net.cni_version, "1.1.0");
    assert_eq!(json["plugins"][0]["containerd"]["address"], "/run/k3s/containerd/containerd.sock");
    let link = std::fs::read_link(s.at("/var/lib/rancher/k3s/data/cni/podnet")).unwrap();
    assert_eq!(link, Path::new("/usr/local/bin/containerd-shim-podnet-v2"));
    assert!(!s.at("/etc/containerd/conf.d/podnet.toml").exists(), "--k3s writes no drop-in");
}

#[test]
fn k3s_template_written_by_someone_else_is_not_overwritten() {
    let s = Staged::new();
    let tmpl = s.at("/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl");
    std::fs::create_dir_all(tmpl.parent().unwrap()).unwrap();
    std::fs::write(&tmpl, "{{ template \"base\" . }}\n# mine\n").unwrap();
    let root = s.root();
    let o = install(&["--k3s", "--binary", s.binary.to_str().unwrap(), "--destdir", root.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not written by podnet"));
    assert_eq!(std::fs::read_to_string(&tmpl).unwrap(), "{{ template \"base\" . }}\n# mine\n");
    assert!(!s.at("/usr/local/bin/containerd-shim-podnet-v2").exists(), "nothing written");
}

// -------------------------------------------------------------------------------------------
// kind

#[test]
fn kind_config_patches_add_the_handler_in_config_v2_syntax() {
    let text = std::fs::read_to_string(repo().join("deploy/kind/kind-config.yaml")).unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(&text).expect("kind-config.yaml is YAML");
    assert_eq!(y["kind"].as_str(), Some("Cluster"));
    assert_eq!(y["apiVersion"].as_str(), Some("kind.x-k8s.io/v1alpha4"));
    let patches = y["containerdConfigPatches"].as_sequence().expect("containerdConfigPatches");
    assert!(!patches.is_empty());
    let mut handlers = 0;
    for (i, p) in patches.iter().enumerate() {
        let v = parse_toml(p.as_str().expect("a patch is a string"), &format!("containerdConfigPatches[{i}]"));
        // kindest/node keeps config.toml at version 2 (containerd 2.x migrates it): a patch
        // with a version key would be skipped (kind >= 0.32) or merged as-is (older kind).
        assert!(v.get("version").is_none(), "patch {i} sets version");
        if v.get("plugins").and_then(|p| p.get(V2_CRI)).is_some() {
            assert_handler(v2_handler(&v), "/etc/podnet/cri.d");
            handlers += 1;
        }
        assert!(v.get("plugins").and_then(|p| p.get(V3_RUNTIME)).is_none(), "patch {i} uses v3 names");
    }
    assert_eq!(handlers, 1);
    // The nodes run the image deploy/kind/Dockerfile builds.
    let dockerfile = std::fs::read_to_string(repo().join("deploy/kind/Dockerfile")).unwrap();
    for node in y["nodes"].as_sequence().expect("nodes") {
        let image = node["image"].as_str().expect("node image");
        assert!(dockerfile.contains(&format!("-t {image} ")), "Dockerfile does not build {image}");
    }
}

#[test]
fn kind_runtimeclass_and_pod_use_the_handler() {
    let text = std::fs::read_to_string(repo().join("deploy/kind/runtimeclass.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("not YAML ({e}):\n{d}")))
        .collect();
    assert_eq!(docs.len(), 2);
    let rc = docs.iter().find(|d| d["kind"].as_str() == Some("RuntimeClass")).expect("a RuntimeClass");
    assert_eq!(rc["apiVersion"].as_str(), Some("node.k8s.io/v1"));
    assert_eq!(rc["metadata"]["name"].as_str(), Some("podnet"));
    assert_eq!(rc["handler"].as_str(), Some("podnet"));
    let pod = docs.iter().find(|d| d["kind"].as_str() == Some("Pod")).expect("a Pod");
    assert_eq!(pod["spec"]["runtimeClassName"].as_str(), Some("podnet"));
}

/// The Dockerfile's instructions with continuation lines joined.
fn dockerfile_instructions() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/kind/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[test]
fn kind_dockerfile_copies_files_that_exist_and_runs_valid_install_flags() {
    let instructions = dockerfile_instructions();
    assert!(instructions.iter().any(|i| i.starts_with("FROM ")), "no FROM");
    let mut copies = 0;
    for i in instructions.iter().filter(|i| i.starts_with("COPY ")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).filter(|w| !w.starts_with("--")).collect();
        let (dest, srcs) = words.split_last().expect("COPY SRC DEST");
        assert!(dest.starts_with('/'), "{i}");
        for src in srcs {
            if src.starts_with("target/") {
                // Built by cargo before `docker build`: the shim, and the installer hack/install
                // runs (the image has no cargo), where hack/install looks for it.
                match *src {
                    "target/release/containerd-shim-podnet-v2" => {}
                    "target/release/podnet-install" => {
                        assert_eq!(*dest, "/tmp/podnet/target/release/podnet-install", "{i}")
                    }
                    _ => panic!("COPY of an unexpected build output {src}: {i}"),
                }
                continue;
            }
            assert!(repo().join(src).exists(), "COPY source {src} does not exist (from the repository root)");
            copies += 1;
        }
    }
    assert!(copies >= 2, "the Dockerfile should copy hack/install and deploy/");
    let default_subnet = instructions
        .iter()
        .find_map(|i| i.strip_prefix("ARG PODNET_SUBNET="))
        .expect("ARG PODNET_SUBNET=...")
        .to_string();

    // The RUN hack/install line, replayed into a scratch dir with the fake binary.
    let run =
        instructions.iter().find(|i| i.starts_with("RUN ") && i.contains("hack/install")).expect("RUN hack/install");
    let cmd = run.strip_prefix("RUN ").unwrap().split("&&").next().unwrap();
    let mut words = cmd.split_whitespace().skip(1).map(|w| w.trim_matches('"').to_string()).collect::<Vec<_>>();
    let s = Staged::new();
    let root = s.root();
    for w in words.iter_mut() {
        if w == "${PODNET_SUBNET}" {
            *w = default_subnet.clone();
        } else if w.ends_with("/containerd-shim-podnet-v2") {
            *w = s.binary.display().to_string();
        }
    }
    assert!(words.iter().any(|w| w == "--no-containerd-config"), "kind's handler comes from containerdConfigPatches");
    let mut args: Vec<&str> = words.iter().map(String::as_str).collect();
    args.extend(["--destdir", root.to_str().unwrap()]);
    ok(install(&args));
    let (net, json) = conflist(&s.read("/etc/podnet/cri.d/10-podnet.conflist"));
    assert_eq!(net.cni_version, "1.1.0");
    assert_eq!(json["plugins"][0]["containerd"]["address"], "/run/containerd/containerd.sock");
    assert_eq!(
        std::fs::read_link(s.at("/opt/cni/bin/podnet")).unwrap(),
        Path::new("/usr/local/bin/containerd-shim-podnet-v2")
    );
    assert!(!s.at("/etc/containerd").exists(), "no containerd config for kind");
}

// -------------------------------------------------------------------------------------------
// Install, idempotence, uninstall, bad input, dry run

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Installs `binary` under a destdir, checks every file, reinstalls (nothing changes),
/// uninstalls (nothing of podnet left).
fn install_check_uninstall(binary: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("pninstall");
    let root = dir.path().to_str().unwrap();
    let args = ["--binary", binary.to_str().unwrap(), "--destdir", root, "--containerd-version", "2"];
    ok(install(&args));
    let mut expected = vec![
        "etc/containerd/conf.d/podnet.toml",
        "etc/podnet/config.toml",
        "etc/podnet/cri.d/10-podnet.conflist",
        "opt/cni/bin/podnet",
        "usr/local/bin/containerd-shim-podnet-v2",
    ];
    expected.sort();
    assert_eq!(files_under(dir.path()), expected);
    let shim = dir.path().join("usr/local/bin/containerd-shim-podnet-v2");
    assert_eq!(std::fs::read(&shim).unwrap(), std::fs::read(binary).unwrap());
    assert_eq!(std::fs::metadata(&shim).unwrap().permissions().mode() & 0o7777, 0o755);
    // The plugin is a link to the installed shim as the running system sees it.
    let link = dir.path().join("opt/cni/bin/podnet");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/usr/local/bin/containerd-shim-podnet-v2"));
    for f in ["etc/containerd/conf.d/podnet.toml", "etc/podnet/config.toml", "etc/podnet/cri.d/10-podnet.conflist"] {
        assert_eq!(std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777, 0o644, "{f}");
    }

    // Idempotent: the second run changes nothing.
    let before: Vec<_> =
        expected.iter().map(|f| std::fs::symlink_metadata(dir.path().join(f)).unwrap().modified().unwrap()).collect();
    let out = ok(install(&args));
    assert_eq!(out.matches("is up to date").count(), 5, "{out}");
    let after: Vec<_> =
        expected.iter().map(|f| std::fs::symlink_metadata(dir.path().join(f)).unwrap().modified().unwrap()).collect();
    assert_eq!(before, after);

    // A podnet.toml someone else wrote survives --uninstall.
    ok(install(&["--destdir", root, "--uninstall"]));
    assert_eq!(files_under(dir.path()), Vec::<String>::new(), "uninstall left files");
    std::fs::write(dir.path().join("etc/containerd/conf.d/podnet.toml"), "# mine\n").unwrap();
    let out = ok(install(&["--destdir", root, "--uninstall"]));
    assert!(out.contains("not written by podnet"), "{out}");
    assert!(dir.path().join("etc/containerd/conf.d/podnet.toml").exists());
}

/// podnet's cgroup driver: the flag; else containerd's SystemdCgroup for runc in config.toml;
/// else systemd as PID 1. The handler names the config file as its ConfigPath option.
#[test]
fn the_cgroup_driver_matches_the_node_and_is_said() {
    let dir = TempDir::new("pncgd");
    let bin = fake_binary(dir.path());
    let root = dir.path().join("root");
    let r = root.to_str().unwrap();
    let base = ["--binary", bin.to_str().unwrap(), "--destdir", r, "--containerd-version", "2"];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = ok(install(&args));
        let cfg = std::fs::read_to_string(root.join("etc/podnet/config.toml")).unwrap();
        (out, cfg)
    };
    let (out, cfg) = run(&["--cgroup-driver", "systemd"]);
    assert!(out.contains("podnet's cgroup driver: systemd (--cgroup-driver)"), "{out}");
    assert!(cfg.lines().any(|l| l == "systemd_cgroup = true"), "{cfg}");
    let dropin = std::fs::read_to_string(root.join("etc/containerd/conf.d/podnet.toml")).unwrap();
    assert!(dropin.contains("runtimes.podnet.options]\n  ConfigPath = \"/etc/podnet/config.toml\""), "{dropin}");
    let (_, cfg) = run(&["--cgroup-driver", "cgroupfs"]);
    assert!(cfg.lines().any(|l| l == "systemd_cgroup = false"), "{cfg}");
    let (_, cfg) = run(&["--cgroup-driver", "auto"]);
    assert!(!cfg.lines().any(|l| l.starts_with("systemd_cgroup")), "{cfg}");
    // runc's SystemdCgroup in config.toml decides (the kubelet's driver matches runc's).
    std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
    for (setting, want) in [("true", "systemd_cgroup = true"), ("false", "systemd_cgroup = false")] {
        let toml = format!(
            "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = {setting}\n"
        );
        std::fs::write(root.join("etc/containerd/config.toml"), toml).unwrap();
        let (out, cfg) = run(&[]);
        assert!(out.contains(&format!("SystemdCgroup = {setting} for runc")), "{out}");
        assert!(cfg.lines().any(|l| l == want), "{setting}: {cfg}");
    }
    // Neither: systemd as PID 1 decides.
    std::fs::remove_file(root.join("etc/containerd/config.toml")).unwrap();
    let (out, cfg) = run(&[]);
    let booted = Path::new("/run/systemd/system").is_dir();
    assert!(out.contains(if booted { "systemd is PID 1" } else { "systemd is not PID 1" }), "{out}");
    assert!(cfg.lines().any(|l| l == if booted { "systemd_cgroup = true" } else { "systemd_cgroup = false" }), "{cfg}");
    // k3s picks its kubelet's driver itself: unset.
    let (out, cfg) = run(&["--k3s"]);
    assert!(out.contains("k3s picks"), "{out}");
    assert!(!cfg.lines().any(|l| l.starts_with("systemd_cgroup")), "{cfg}");
    // A config.toml of the user's own is left alone, with the setting it should have.
    std::fs::write(root.join("etc/podnet/config.toml"), "state_dir = \"/run/mine\"\n").unwrap();
    let args: Vec<&str> = base.iter().chain(&["--cgroup-driver", "systemd"]).copied().collect();
    let out = ok(install(&args));
    assert!(out.contains("not written by podnet") && out.contains("systemd_cgroup = true"), "{out}");
    assert_eq!(std::fs::read_to_string(root.join("etc/podnet/config.toml")).unwrap(), "state_dir = \"/run/mine\"\n");
}

#[test]
fn install_is_idempotent_and_uninstall_removes_it() {
    let dir = TempDir::new("pnfake");
    install_check_uninstall(&fake_binary(dir.path()));
}

#[test]
fn bad_flags_fail_naming_the_flag_and_write_nothing() {
    let dir = TempDir::new("pnbad");
    let bin = fake_binary(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--subnet", "10.89.0.0/33"], "--subnet"),
        (&["--subnet", "10.300.0.0/16"], "--subnet"),
        (&["--subnet", "fd89::/64"], "--subnet"),
        (&["--subnet6", "10.1.0.0/16"], "--subnet6"),
        (&["--subnet", "node", "--subnet6", "fd89::/64"], "--subnet6"),
        (&["--namespace", "k8s/io"], "--namespace"),
        (&["--containerd-version", "1.6"], "--containerd-version"),
        (&["--containerd-version", "1.7", "--config-version", "3"], "--config-version"),
        (&["--config-version", "4"], "--config-version"),
        (&["--cgroup-driver", "systemdd"], "--cgroup-driver"),
        (&["--prefix", "usr/local"], "--prefix"),
        (&["--cni-bin-dir", "/opt/cni bin"], "--cni-bin-dir"),
        (&["--cni-conf-dir", "/etc/\"podnet"], "--cni-conf-dir"),
        (&["--containerd-address", "run/containerd.sock"], "--containerd-address"),
        (&["--containerd-conf-dir", "/etc/a|b"], "--containerd-conf-dir"),
        (&["--containerd", "/nonexistent/containerd"], "--containerd"),
        (&["--subnet"], "--subnet"),
        (&["--dry-run=yes"], "--dry-run"),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (extra, flag) in cases {
        let mut args = vec!["--binary", bin.to_str().unwrap(), "--destdir", root.to_str().unwrap()];
        if !extra.contains(&"--containerd-version") && !extra.contains(&"--containerd") {
            args.extend(["--containerd-version", "2"]);
        }
        args.extend_from_slice(extra);
        let o = install(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?} should fail: {err}");
        assert!(err.contains(flag), "{extra:?}: the error does not name {flag}: {err}");
        assert_eq!(files_under(&root), Vec::<String>::new(), "{extra:?} wrote files");
    }
    // A missing --binary names the flag too.
    let o =
        install(&["--binary", "/nonexistent/shim", "--destdir", root.to_str().unwrap(), "--containerd-version", "2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--binary"));
    // No version and no containerd on PATH: the message says which flag to pass.
    let o = install(&["--binary", bin.to_str().unwrap(), "--destdir", root.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--containerd-version"));
    assert_eq!(files_under(&root), Vec::<String>::new());
}

#[test]
fn dry_run_prints_and_writes_nothing() {
    let dir = TempDir::new("pndry");
    let bin = fake_binary(dir.path());
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = ok(install(&[
        "--dry-run",
        "--binary",
        bin.to_str().unwrap(),
        "--destdir",
        root.to_str().unwrap(),
        "--containerd-version",
        "2",
    ]));
    for what in [
        "would install",
        "would link /opt/cni/bin/podnet -> /usr/local/bin/containerd-shim-podnet-v2",
        "would write /etc/podnet/cri.d/10-podnet.conflist",
        "would write /etc/containerd/conf.d/podnet.toml",
        "runtime_type = \"io.containerd.podnet.v2\"",
    ] {
        assert!(out.contains(what), "dry run does not say {what:?}:\n{out}");
    }
    assert_eq!(files_under(&root), Vec::<String>::new());
    // Without --binary: the build is announced, not run.
    let out = ok(install(&["--dry-run", "--containerd-version", "1.7"]));
    assert!(out.contains("would run: cargo build --release --locked -p podnet-shim"), "{out}");
    assert!(out.contains("\"cniVersion\": \"1.0.0\""), "{out}");
}

/// Without $PODNET_INSTALL and without cargo, hack/install runs the installer already built in
/// its checkout's target dir (kind's image); without one either, it says how to build it.
#[test]
fn hack_install_finds_a_prebuilt_installer_without_cargo() {
    let s = Staged::new();
    let checkout = s.dir.path().join("checkout");
    std::fs::create_dir_all(checkout.join("hack")).unwrap();
    for path in ["hack/install", "deploy"] {
        let st = Command::new("cp").arg("-a").arg(repo().join(path)).arg(checkout.join(path)).status().unwrap();
        assert!(st.success(), "cp {path}");
    }
    let run = || {
        Command::new(checkout.join("hack/install"))
            .args(["--binary", s.binary.to_str().unwrap(), "--destdir", s.root().to_str().unwrap()])
            .args(["--containerd-version", "2"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("PODNET_INSTALL")
            .output()
            .unwrap()
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cargo build --release --locked -p podnet-install"), "{err}");
    assert_eq!(files_under(&s.root()), Vec::<String>::new());

    std::fs::create_dir_all(checkout.join("target/release")).unwrap();
    std::fs::copy(installer(), checkout.join("target/release/podnet-install")).unwrap();
    ok(run());
    assert_handler(
        v3_handler(&parse_toml(&s.read("/etc/containerd/conf.d/podnet.toml"), "the drop-in")),
        "/etc/podnet/cri.d",
    );
}

/// A config.toml that is not TOML stops the install before anything is written, with an error
/// that names the file and the line.
#[test]
fn a_malformed_config_toml_is_an_error_naming_file_and_line() {
    let s = Staged::new();
    std::fs::create_dir_all(s.at("/etc/containerd")).unwrap();
    std::fs::write(
        s.at("/etc/containerd/config.toml"),
        "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"\n[plugins]\n",
    )
    .unwrap();
    let root = s.root();
    let o = install(&[
        "--binary",
        s.binary.to_str().unwrap(),
        "--destdir",
        root.to_str().unwrap(),
        "--containerd-version",
        "2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("/etc/containerd/config.toml: line 3, column 1: not valid TOML"), "{err}");
    assert_eq!(files_under(&root), vec!["etc/containerd/config.toml".to_string()], "nothing written");
}

#[test]
fn a_real_install_needs_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // As root (hack/test), the refusal is checked as the user nobody.
    let wrapper: &[&str] =
        if root { &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] } else { &[] };
    let o = install_with(wrapper, &["--binary", "/bin/true", "--containerd-version", "2"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}

// -------------------------------------------------------------------------------------------
// Root: the shim binary, and a real (non-destdir) install into scratch paths.

#[test]
#[ignore = "needs root"]
fn root_install_of_the_shim_binary() {
    podnet_tests::require_root();
    let binary = podnet_tests::plugin_binary();
    install_check_uninstall(&binary);

    // Without --destdir (the root-only path): every path in a scratch dir, containerd asked
    // for its version and for the merged config.
    let dir = TempDir::new("pnreal");
    let d = dir.path();
    let p = |s: &str| d.join(s).display().to_string();
    let main = d.join("config.toml");
    std::fs::write(&main, format!("version = 3\nimports = [\"{}/*.toml\"]\n", p("conf.d"))).unwrap();
    let args = vec![
        "--binary".to_string(),
        binary.display().to_string(),
        "--prefix".into(),
        p("usr"),
        "--cni-bin-dir".into(),
        p("cni"),
        "--cni-conf-dir".into(),
        p("cri.d"),
        "--containerd-conf-dir".into(),
        p("conf.d"),
        "--containerd-config".into(),
        main.display().to_string(),
        "--containerd".into(),
        CONTAINERD_2.into(),
    ];
    require_containerd(CONTAINERD_2);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(install(&argv));
    assert!(out.contains("config dump shows the podnet handler"), "{out}");
    // The link is not in containerd's CNI bin dirs: the script says so.
    assert!(out.contains("is not there"), "{out}");
    assert_eq!(std::fs::read_link(d.join("cni/podnet")).unwrap(), d.join("usr/bin/containerd-shim-podnet-v2"));
    let v = parse_toml(&std::fs::read_to_string(d.join("conf.d/podnet.toml")).unwrap(), "the drop-in");
    assert_handler(v3_handler(&v), &p("cri.d"));
    assert!(NetworkConfig::parse(&std::fs::read(d.join("cri.d/10-podnet.conflist")).unwrap()).is_ok());
    let mut un = argv.clone();
    un.push("--uninstall");
    ok(install(&un));
    for f in ["cni/podnet", "usr/bin/containerd-shim-podnet-v2", "cri.d/10-podnet.conflist", "conf.d/podnet.toml"] {
        assert!(!d.join(f).exists(), "{f} left after --uninstall");
    }
    assert!(main.exists(), "config.toml is never touched");
}

// -------------------------------------------------------------------------------------------
// deploy/node: the node agent's config, systemd unit and DaemonSet

/// `podnet node run` with `config` (its run_dir and state_dir moved into `scratch`) and `extra`
/// flags, in a namespace of its own where no node IP of the examples exists: the agent must get
/// past parsing and stop at the node IP check, having programmed nothing.
fn agent_accepts(config: &str, scratch: &std::path::Path, extra: &[&str]) {
    let mut text: String = config
        .lines()
        .filter(|l| !l.starts_with("run_dir") && !l.starts_with("state_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!("run_dir = \"{}/run\"\nstate_dir = \"{}/state\"\n", scratch.display(), scratch.display()));
    let path = scratch.join("node.toml");
    std::fs::write(&path, text).unwrap();
    let ns = podnet_tests::Ns::new("pndep");
    let mut cmd = Command::new(podnet_tests::cluster::podnet_binary());
    cmd.args(["node", "run", "--config", path.to_str().unwrap()]).args(extra);
    let o = ns.command(&mut cmd).output().expect("run podnet");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("node_ip") && err.contains("is not an address of this node"), "{err}");
    assert!(!scratch.join("run/node.json").exists() && !scratch.join("state/lease.json").exists());
}

#[test]
#[ignore = "needs root"]
fn node_toml_example_is_the_agents_config() {
    podnet_tests::require_root();
    let dir = TempDir::new("pnnode");
    let text = std::fs::read_to_string(repo().join("deploy/node/node.toml")).unwrap();
    // `name` defaults to the hostname, which need not be a node name on every machine.
    agent_accepts(&text, dir.path(), &["--name", "node-1"]);
}

#[test]
#[ignore = "needs root"]
fn node_daemonset_runs_the_agent_with_the_nodes_name_and_ip() {
    podnet_tests::require_root();
    let text = std::fs::read_to_string(repo().join("deploy/node/daemonset.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("not YAML ({e}):\n{d}")))
        .collect();
    let cm = docs.iter().find(|d| d["kind"].as_str() == Some("ConfigMap")).expect("a ConfigMap");
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).expect("a DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true));
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().filter_map(|a| a.as_str()).collect();
    assert_eq!(
        args,
        ["node", "run", "--config", "/etc/podnet/node.toml", "--name", "$(NODE_NAME)", "--node-ip", "$(NODE_IP)"]
    );
    let env: std::collections::BTreeMap<&str, &str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap()))
        .collect();
    assert_eq!(env["NODE_NAME"], "spec.nodeName");
    assert_eq!(env["NODE_IP"], "status.hostIP");
    let paths: Vec<&str> =
        spec["volumes"].as_sequence().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert_eq!(paths, ["/run/podnet", "/var/lib/podnet/node"]);
    // The ConfigMap's node.toml with the flags the pod passes (a node name and IP as kubelet
    // has them) is a config the agent accepts.
    let dir = TempDir::new("pnds");
    let toml = cm["data"]["node.toml"].as_str().expect("node.toml in the ConfigMap");
    agent_accepts(toml, dir.path(), &["--name", "worker-1", "--node-ip", "192.0.2.7"]);
}

#[test]
fn node_systemd_unit_runs_the_agent_and_keeps_state_on_stop() {
    let text = std::fs::read_to_string(repo().join("deploy/node/podnet-node.service")).unwrap();
    let keys: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| keys.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    assert_eq!(get("ExecStart"), Some("/usr/local/bin/podnet node run --config /etc/podnet/node.toml"));
    assert_eq!(get("KillSignal"), Some("SIGTERM"));
    assert_eq!(get("Restart"), Some("always"));
    assert_eq!(get("RuntimeDirectoryPreserve"), Some("yes"), "a restart must not lose /run/podnet (the facts)");
    assert!(get("Before").is_some_and(|b| b.contains("containerd.service")));
}
