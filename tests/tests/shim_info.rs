//! What podnet tells containerd about its runtime: the shim binary's `-info` answer (a
//! protobuf `containerd.types.RuntimeInfo` on stdout for the options on stdin), the same answer
//! through a real containerd 2.x (`ctr plugins inspect-runtime`, with and without runtime
//! options), containerd acting on it (a task with an idmapped mount is refused), and what
//! containerd's CRI makes of it (the handler's features in CRI's Status; a recursive read-only
//! volume where CRI read them).
//!
//! The shim binary is not rebuilt by `cargo test -p podnet-tests`: `cargo build -p podnet-shim`
//! first. Root tests: `cargo test -p podnet-tests --test shim_info -- --include-ignored`.
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use containerd_shim_protos::shim::shim::ShutdownRequest;
use containerd_shim_protos::types::introspection::RuntimeInfo;
use podnet_shim::config::RuntimeOptions;
use podnet_shim::info::{FEATURES_TYPE_URL, RUNTIME_NAME};
use podnet_shim::pod_shim::socket_address;
use podnet_shim::ttrpc::Client;
use podnet_tests::containerd::{containerd_major, Containerd, ContainerdOptions};
use podnet_tests::cri::{container_config, v1 as cri, CriNode, HANDLER_PODNET};
use podnet_tests::shim::PodnetNode;
use podnet_tests::{leaks, plugin_binary, require_root, unique, Ns, TempDir};
use protobuf::well_known_types::empty::Empty;
use protobuf::Message;
use serde_json::Value;

const TASK: &str = "containerd.task.v2.Task";

const PROPAGATIONS: [&str; 8] =
    ["private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"];

/// Runs `containerd-shim-podnet-v2 -info` with `stdin` as its input, as containerd does.
fn shim_info(stdin: &[u8]) -> Output {
    let mut child = Command::new(plugin_binary())
        .arg("-info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the shim");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    child.wait_with_output().expect("wait for the shim")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().filter_map(Value::as_str).collect()
}

/// The checks every answer must pass, on the features document (OCI field names).
fn check_features(f: &Value) {
    let opts = strings(&f["mountOptions"]);
    for o in ["rro", "rrw"].iter().chain(PROPAGATIONS.iter()) {
        assert!(opts.contains(o), "mountOptions lacks {o}: {opts:?}");
    }
    let l = &f["linux"];
    assert_eq!(strings(&l["namespaces"]), ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"]);
    let actions = strings(&l["seccomp"]["actions"]);
    for a in ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"] {
        assert!(actions.contains(&a), "seccomp.actions lacks {a}: {actions:?}");
    }
    assert_eq!(l["seccomp"]["enabled"], true);
    assert!(strings(&l["seccomp"]["archs"]).contains(&"SCMP_ARCH_X86_64") || !cfg!(target_arch = "x86_64"));
    assert_eq!(l["mountExtensions"]["idmap"]["enabled"], false, "libcontainer 0.7 has no idmapped mounts");
    assert_eq!(l["cgroup"]["systemd"], true, "the systemd cgroup driver (runtime/src/cgroup.rs)");
    assert_eq!(l["cgroup"]["systemdUser"], false);
    assert!(strings(&l["capabilities"]).contains(&"CAP_SYS_ADMIN"));
    assert_eq!(f["ociVersionMin"], "1.0.0");
}

#[test]
fn the_binary_answers_info_with_empty_stdin() {
    let out = shim_info(b"");
    assert!(out.status.success(), "-info failed: {}", String::from_utf8_lossy(&out.stderr));
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("stdout is a RuntimeInfo");
    assert_eq!(info.name, RUNTIME_NAME);
    assert_eq!(info.version.version, env!("CARGO_PKG_VERSION"));
    assert!(info.options.is_none(), "no options sent, none echoed: {:?}", info.options);
    assert_eq!(info.features.type_url, FEATURES_TYPE_URL);
    let f: Value = serde_json::from_slice(&info.features.value).expect("features are JSON");
    check_features(&f);
    assert_eq!(f, serde_json::to_value(podnet_runtime_features_with_shim_annotations()).unwrap());
}

/// What the library says plus the annotations the shim adds: the binary answers exactly that.
fn podnet_runtime_features_with_shim_annotations() -> podnet_runtime::oci_spec::runtime::Features {
    let mut f = podnet_runtime::features();
    let unsafe_annotations = podnet_shim::info::UNSAFE_CONFIG_ANNOTATIONS.iter().map(|a| a.to_string()).collect();
    f.set_potentially_unsafe_config_annotations(Some(unsafe_annotations));
    f
}

#[test]
fn the_binary_echoes_runtime_options_and_refuses_others() {
    let sent = RuntimeOptions { config_path: "/etc/podnet/x.toml".into(), ..Default::default() }.encode();
    let out = shim_info(&sent.write_to_bytes().unwrap());
    assert!(out.status.success(), "-info failed: {}", String::from_utf8_lossy(&out.stderr));
    let info = RuntimeInfo::parse_from_bytes(&out.stdout).expect("RuntimeInfo");
    assert_eq!(info.options.type_url, "runtimeoptions.v1.Options");
    assert_eq!(RuntimeOptions::from_any(info.options.as_ref()).unwrap().config_path, "/etc/podnet/x.toml");

    // runc's options are not podnet's: refused as Create refuses them, naming the type.
    let mut runc = protobuf::well_known_types::any::Any::new();
    runc.type_url = "containerd.runc.v1.Options".into();
    let out = shim_info(&runc.write_to_bytes().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("containerd.runc.v1.Options"), "{err}");
}

const CONTAINERD_1_7_CTR: &str = "/opt/podnet/containerd-1.7/usr/bin/ctr";

/// containerd 1.7 asks no shim for `-info`: these tests are about 2.x.
fn require_containerd_2(c: &Containerd) {
    let major = containerd_major(c.bin_dir());
    assert!(major >= 2, "containerd {major}.x in {}: the test needs containerd 2.x", c.bin_dir().display());
}

/// containerd in a node namespace of the test, with the podnet shim on its PATH. (Bound as
/// `let (_node, c)`, containerd goes before its namespace.)
fn containerd(marker: &str) -> (Ns, Containerd) {
    let node = Ns::new("pi");
    let c = Containerd::start(&node, ContainerdOptions::podnet().namespace(marker));
    (node, c)
}

fn inspect_runtime(c: &Containerd, extra: &[&str]) -> Value {
    let mut args = vec!["plugins", "inspect-runtime", "--runtime", RUNTIME_NAME];
    args.extend_from_slice(extra);
    let out = c.ctr_ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect-runtime printed no JSON ({e}):\n{out}"))
}

/// containerd decodes the features into the Go struct of the runtime-spec it vendors and prints
/// that: the fields runtime-spec 1.3 added (`linux.memoryPolicy`, `linux.netDevices`) are gone
/// when it vendors an older one (containerd 2.1: 1.2.1). Everything else must come through.
fn as_containerd_decodes(mut ours: Value, theirs: &Value) -> Value {
    if let (Some(o), Some(t)) = (ours["linux"].as_object_mut(), theirs["linux"].as_object()) {
        for key in ["memoryPolicy", "netDevices"] {
            if !t.contains_key(key) {
                o.remove(key);
            }
        }
    }
    ours
}

#[test]
#[ignore = "needs root"]
fn ctr_inspect_runtime_shows_the_features() {
    require_root();
    let _serial = leaks::serial();
    let (_node, c) = containerd(&unique("pni"));
    require_containerd_2(&c);

    let v = inspect_runtime(&c, &[]);
    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    assert_eq!(v["Name"], RUNTIME_NAME);
    assert_eq!(v["Version"]["Version"], env!("CARGO_PKG_VERSION"));
    assert!(v["Options"].is_null(), "no options sent: {}", v["Options"]);
    // ctr decoded the features with containerd's registered type: the OCI document itself.
    check_features(&v["Features"]);
    let ours = serde_json::to_value(podnet_runtime_features_with_shim_annotations()).unwrap();
    assert_eq!(v["Features"], as_containerd_decodes(ours, &v["Features"]));

    // ctr passes `--runtime-config-path` as runtimeoptions.v1.Options; podnet echoes it.
    let dir = TempDir::new("pninfo");
    let config = dir.path().join("podnet.toml");
    std::fs::write(&config, "").expect("write config");
    let v = inspect_runtime(&c, &["--runtime-config-path", &config.display().to_string()]);
    assert_eq!(v["Options"]["config_path"], config.display().to_string(), "{}", v["Options"]);
    check_features(&v["Features"]);
    let problems = c.shutdown();
    assert!(problems.is_empty(), "{problems:?}");

    // containerd 1.7 has neither: its ctr knows no `plugins inspect-runtime`, and it never runs
    // a shim with `-info`.
    let ctr17 = std::path::Path::new(CONTAINERD_1_7_CTR);
    assert!(ctr17.exists(), "{CONTAINERD_1_7_CTR} is missing: hack/setup unpacks Debian's containerd 1.7");
    let out = Command::new(ctr17).args(["plugins", "inspect-runtime", "--runtime", RUNTIME_NAME]).output();
    let out = out.expect("run containerd 1.7's ctr");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("No help topic for 'inspect-runtime'"), "{text}");
}

#[test]
#[ignore = "needs root"]
fn containerd_refuses_an_idmapped_mount_from_the_features() {
    let n = PodnetNode::new("idmap");
    require_containerd_2(n.c());
    let dir = TempDir::new("pnidmap");
    let id = unique("idmap");
    n.track(&id, &[]);
    let mount = format!("type=bind,src={},dst=/data,options=rbind:idmap", dir.path().display());
    let out = n.ctr(&["run", "--rm", "--runtime", RUNTIME_NAME, "--mount", &mount, n.image, &id, "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an idmapped mount ran: {err}");
    // Refused by containerd from `-info` (idmap.enabled false), before the task is created.
    assert!(err.contains("idmap mounts not supported"), "{err}\n{}", n.c().log_tail(30));

    // containerd starts the shim before it asks, and leaves it running when the answer is no
    // (core/runtime/v2/task_manager.go, 2.1 to 2.4): the shim holds no task and waits for a
    // Shutdown that never comes. The test sends it, as containerd would after a failed create.
    let socket = socket_address(&n.c().address().to_string_lossy(), n.c().namespace(), &id);
    let socket = std::path::PathBuf::from(socket.trim_start_matches("unix://"));
    if let Ok(mut shim) = Client::connect(&socket) {
        eprintln!("containerd left the shim at {} running; shutting it down", socket.display());
        let mut req = ShutdownRequest::new();
        req.id = id.clone();
        let _: Empty = shim.call(TASK, "Shutdown", &req, Some(Duration::from_secs(10))).expect("Shutdown");
    }
    let _ = n.ctr(&["containers", "rm", &id]);
    n.assert_clean();
    n.finish();
}

/// containerd 2.2.7, 2.3.4 and 2.4 on introspect every runtime for CRI; earlier 2.x only
/// runc-type ones.
fn cri_introspects_podnet(version: &str) -> bool {
    let v: Vec<u32> =
        version.trim_start_matches('v').split(['.', '-', '+', '~']).map_while(|p| p.parse().ok()).collect();
    match v.as_slice() {
        [2, 2, patch, ..] => *patch >= 7,
        [2, 3, patch, ..] => *patch >= 4,
        [2, minor, ..] => *minor >= 4,
        [major, ..] => *major > 2,
        [] => false,
    }
}

#[test]
fn cri_versions_that_introspect_podnet() {
    for (v, want) in [
        ("2.1.9", false),
        ("v2.2.6", false),
        ("2.2.7", true),
        ("2.3.3", false),
        ("2.3.4", true),
        ("2.4.0-beta.0", true),
        ("1.7.24", false),
    ] {
        assert_eq!(cri_introspects_podnet(v), want, "{v}");
    }
}

#[test]
#[ignore = "needs root"]
fn cri_reports_the_handler_features_it_read() {
    let n = CriNode::new("info");
    let version = n.client().version().expect("Version").runtime_version;
    let status = n.client().status(false).expect("Status");
    let handler = status.runtime_handlers.iter().find(|h| h.name == HANDLER_PODNET);
    eprintln!("containerd {version}: podnet handler {handler:?}");
    if n.v1 {
        // containerd 1.7's CRI reports no runtime handlers at all.
        assert!(handler.is_none_or(|h| h.features.is_none()), "{handler:?}");
    } else {
        let handler = handler.expect("CRI lists the podnet handler");
        let introspected = cri_introspects_podnet(&version);
        match (&handler.features, introspected) {
            // What kubelet reads as "neither recursive read-only mounts nor user namespaces".
            // (A client that sends recursive_read_only anyway crashes containerd 2.1.9: CRI
            // reads the missing features through a nil pointer. Not done here.)
            (None, false) => {}
            // The kernel has mount_setattr (5.12 and later), so rro holds; no idmapped
            // mounts, so no user-namespaced pods.
            (Some(f), true) => assert!(f.recursive_read_only_mounts && !f.user_namespaces, "{f:?}"),
            (f, _) => panic!("containerd {version}: features {f:?}, introspected {introspected}"),
        }
    }
    n.finish();
}

#[test]
#[ignore = "needs containerd 2.2.7, 2.3.4 or 2.4: hack/setup unpacks 2.1.9, whose CRI reads no features of podnet"]
fn cri_takes_a_recursive_read_only_volume_for_podnet() {
    let n = CriNode::new("rro");
    let version = n.client().version().expect("Version").runtime_version;
    assert!(!n.v1 && cri_introspects_podnet(&version), "containerd {version}'s CRI does not read podnet's features");
    // CRI writes `rro` (and `rprivate`) for the volume, which podnet takes (that every level
    // below is read-only too is runtime_features.rs' test).
    let pod_cfg = n.pod_config("rro");
    let pod = n.client().run_pod_sandbox(&pod_cfg, HANDLER_PODNET).expect("RunPodSandbox");
    let vol = TempDir::new("pnrro");
    let script = "touch /data/x 2>/dev/null && echo writable || echo read-only";
    let mut cfg = container_config("rro", &["sh", "-c", &format!("{script}; sleep 3600")]);
    cfg.mounts.push(cri::Mount {
        container_path: "/data".into(),
        host_path: vol.path().display().to_string(),
        readonly: true,
        recursive_read_only: true,
        propagation: cri::MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    });
    let ctr = n
        .client()
        .create_container(&pod, &cfg, &pod_cfg)
        .unwrap_or_else(|e| panic!("CreateContainer with rro: {e}\n{}", n.c().log_tail(40)));
    n.client().start_container(&ctr).expect("StartContainer");
    let (out, _, code) = n.client().exec_sync(&ctr, &["sh", "-c", script], 10).expect("ExecSync");
    assert_eq!((code, out.trim()), (0, "read-only"), "{out}");
    n.client().stop_container(&ctr, 0).expect("StopContainer");
    n.client().remove_container(&ctr).expect("RemoveContainer");
    n.client().stop_pod_sandbox(&pod).expect("StopPodSandbox");
    n.client().remove_pod_sandbox(&pod).expect("RemovePodSandbox");
    n.finish();
}
