//! The same pod and container configs under the `runc` handler and the `podnet` handler, through
//! a real containerd's CRI (root; 2.x and 1.7, as `containerd_2::<scenario>` and
//! `containerd_1_7::<scenario>`): an ExecSync'd process is confined exactly as the
//! container's init (seccomp RuntimeDefault, a Localhost profile, Unconfined; capabilities,
//! NoNewPrivs), and hostPath volumes propagate mounts as their CRI propagation says
//! (Bidirectional both ways, HostToContainer inward only, Private neither), for both handlers
//! alike.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use podnet_tests::confinement::{confinement, field, probe, refusing_profile};
use podnet_tests::cri::{container_config, v1 as cri, CriClient, CriNode, Flavour, HANDLER_PODNET, HANDLER_RUNC};
use podnet_tests::mounts::{tmpfs, SharedTmpfs};
use podnet_tests::on_each_containerd;

on_each_containerd!(
    an_exec_is_confined_as_the_init_under_both_handlers,
    volumes_propagate_mounts_as_cri_asks_under_both_handlers,
);

const HANDLERS: [&str; 2] = [HANDLER_RUNC, HANDLER_PODNET];

/// ExecSync that must succeed; its stdout.
fn exec_ok(c: &CriClient, id: &str, cmd: &[&str]) -> String {
    let (out, err, code) = c.exec_sync(id, cmd, 20).unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"));
    assert_eq!(code, 0, "ExecSync {cmd:?}: exit {code}, stdout {out:?}, stderr {err:?}");
    out
}

/// The container's security context, with the namespace options kubelet always sends (the
/// pod's network and IPC, a PID namespace of the container's own).
fn security(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    let sc = cfg.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.namespace_options.get_or_insert(cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    sc
}

fn profile(kind: cri::security_profile::ProfileType, localhost_ref: &Path) -> cri::SecurityProfile {
    let localhost_ref = match kind {
        cri::security_profile::ProfileType::Localhost => localhost_ref.to_string_lossy().into_owned(),
        _ => String::new(),
    };
    cri::SecurityProfile { profile_type: kind as i32, localhost_ref }
}

fn an_exec_is_confined_as_the_init_under_both_handlers(f: Flavour) {
    use cri::security_profile::ProfileType;
    let n = CriNode::on(f, "confine");
    let localhost = n.dir().join("refuse-hostname-chmod.json");
    std::fs::write(&localhost, refusing_profile().to_string()).expect("write the Localhost profile");
    // (handler, profile) -> (the init's confinement, the probe's answers)
    let mut seen: BTreeMap<(String, &str), (Vec<String>, String)> = BTreeMap::new();
    for handler in HANDLERS {
        let pod_cfg = n.pod_config(&format!("confine-{handler}"));
        let pod = n.run_pod(&pod_cfg, handler);
        for (name, kind) in [
            ("runtime-default", ProfileType::RuntimeDefault),
            ("localhost", ProfileType::Localhost),
            ("unconfined", ProfileType::Unconfined),
        ] {
            let script = format!("({}) > /tmp/init-probe; exec sleep 3600", probe("/tmp"));
            let mut cfg = container_config(name, &["sh", "-c", &script]);
            let sc = security(&mut cfg);
            sc.seccomp = Some(profile(kind, &localhost));
            sc.capabilities =
                Some(cri::Capability { add_capabilities: vec!["SYS_ADMIN".into()], ..Default::default() });
            let id = n.start_container(&pod, &pod_cfg, cfg);
            // The init is PID 1 of the container's own PID namespace.
            let init = confinement(&exec_ok(n.client(), &id, &["cat", "/proc/1/status"]));
            let exec = confinement(&exec_ok(n.client(), &id, &["cat", "/proc/self/status"]));
            assert_eq!(exec, init, "{handler}/{name}: the exec's confinement differs from the init's");
            let probe = exec_ok(n.client(), &id, &["sh", "-c", &probe("/tmp")]);
            let init_probe = exec_ok(n.client(), &id, &["cat", "/tmp/init-probe"]);
            assert_eq!(probe, init_probe, "{handler}/{name}: refused syscalls differ between the exec and the init");
            seen.insert((handler.to_string(), name), (init, probe));
        }
        n.stop_and_remove(&pod);
    }
    for name in ["runtime-default", "localhost", "unconfined"] {
        let (runc, podnet) = (&seen[&(HANDLER_RUNC.to_string(), name)], &seen[&(HANDLER_PODNET.to_string(), name)]);
        assert_eq!(podnet, runc, "{name}: podnet's confinement differs from runc's");
    }
    let seccomp = |name: &str| field(&seen[&(HANDLER_PODNET.to_string(), name)].0, "Seccomp").to_string();
    assert_eq!(seccomp("runtime-default"), "2");
    assert_eq!(seccomp("localhost"), "2");
    assert_eq!(seccomp("unconfined"), "0");
    let probe = |name: &str| seen[&(HANDLER_PODNET.to_string(), name)].1.clone();
    assert!(
        probe("localhost").contains("hostname=1") && probe("localhost").contains("chmod=1"),
        "{}",
        probe("localhost")
    );
    assert!(
        probe("unconfined").contains("hostname=0") && probe("unconfined").contains("chmod=0"),
        "{}",
        probe("unconfined")
    );
    n.finish();
}

/// What crossed for one volume: the host's mount below the source seen in the container, the
/// container's mount below the volume seen on the host.
#[derive(Debug, PartialEq, Clone, Copy)]
struct Crossed {
    host_to_container: bool,
    container_to_host: bool,
}

const BOTH: Crossed = Crossed { host_to_container: true, container_to_host: true };
const INWARD: Crossed = Crossed { host_to_container: true, container_to_host: false };
const NEITHER: Crossed = Crossed { host_to_container: false, container_to_host: false };

fn volume(container_path: &str, host_path: &Path, propagation: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// The container mounts a tmpfs with a mark below each volume, the host one below each source;
/// each side then looks for the other's mark.
fn crossings(n: &CriNode, id: &str, volumes: &[(&str, PathBuf)]) -> Vec<Crossed> {
    volumes
        .iter()
        .map(|(path, source)| {
            exec_ok(
                n.client(),
                id,
                &["sh", "-c", &format!("mkdir -p {path}/c && mount -t tmpfs ctr {path}/c && touch {path}/c/mark")],
            );
            tmpfs(&source.join("h"));
            std::fs::write(source.join("h/mark"), "host").expect("host mark");
            let inside = exec_ok(n.client(), id, &["ls", &format!("{path}/h")]);
            Crossed { host_to_container: inside.contains("mark"), container_to_host: source.join("c/mark").exists() }
        })
        .collect()
}

fn volumes_propagate_mounts_as_cri_asks_under_both_handlers(f: Flavour) {
    use cri::MountPropagation::{PropagationBidirectional, PropagationHostToContainer, PropagationPrivate};
    let n = CriNode::on(f, "propagate");
    // Bidirectional needs a shared host mount, HostToContainer a shared or slave one
    // (containerd checks): one shared tmpfs holds every source.
    let shared = SharedTmpfs::new(&n.dir().join("vols"));
    let mut seen = BTreeMap::new();
    for handler in HANDLERS {
        let mut pod_cfg = n.pod_config(&format!("prop-{handler}"));
        pod_cfg
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
        let pod = n.run_pod(&pod_cfg, handler);
        // One container with the three kinds (its root becomes rshared for the Bidirectional
        // one), and one with a Private volume alone (the root left as the runtime sets it).
        let (bidi, inward, private, alone) = (
            shared.subdir(&format!("{handler}-bidi")),
            shared.subdir(&format!("{handler}-h2c")),
            shared.subdir(&format!("{handler}-private")),
            shared.subdir(&format!("{handler}-alone")),
        );
        let mut three = container_config("three", &["sleep", "3600"]);
        three.mounts = vec![
            volume("/vol/bidi", &bidi, PropagationBidirectional),
            volume("/vol/h2c", &inward, PropagationHostToContainer),
            volume("/vol/private", &private, PropagationPrivate),
        ];
        security(&mut three).privileged = true;
        let mut one = container_config("one", &["sleep", "3600"]);
        one.mounts = vec![volume("/vol/private", &alone, PropagationPrivate)];
        security(&mut one).privileged = true;
        let three = n.start_container(&pod, &pod_cfg, three);
        let one = n.start_container(&pod, &pod_cfg, one);
        let mut got = crossings(&n, &three, &[("/vol/bidi", bidi), ("/vol/h2c", inward), ("/vol/private", private)]);
        got.extend(crossings(&n, &one, &[("/vol/private", alone)]));
        n.stop_and_remove(&pod);
        seen.insert(handler, got);
    }
    let want = vec![BOTH, INWARD, NEITHER, NEITHER];
    assert_eq!(seen[HANDLER_RUNC], want, "runc: Bidirectional, HostToContainer, Private, Private alone");
    assert_eq!(seen[HANDLER_PODNET], want, "podnet: Bidirectional, HostToContainer, Private, Private alone");
    drop(shared);
    n.finish();
}
