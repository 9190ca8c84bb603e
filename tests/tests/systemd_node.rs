//! The systemd cgroup driver with a real systemd (root; see `podnet_tests::node`): a node booted
//! with systemd-nspawn runs containerd (2.x, and 1.7 on the hybrid layout) with CRI as one of
//! its units, and CRI pods with kubelet's systemd-driver cgroup parents
//! (`kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice`, so containerd writes
//! `linux.cgroupsPath` as `<pod slice>:cri-containerd:<id>`) run under the `runc` handler
//! (`SystemdCgroup = true`, the reference) and the `podnet` handler (`systemd_cgroup = true`):
//!
//! - the pause's and the containers' scopes are where systemd puts them (`systemctl show` and
//!   `systemctl status` in the node, the processes' cgroups), a burstable container's memory and
//!   CPU limits are in its unit's properties and in its v1 cgroup files, ContainerStats reports
//!   usage, UpdateContainerResources changes the limits, an OOM kill is reported as OOMKilled;
//! - Stop and Remove leave no unit and no cgroup; so does the removal of a pod whose shim was
//!   SIGKILLed (for runc, less what containerd 2.1.9 and 1.7 leave of it: see
//!   [`remove_runc_leftovers`]);
//! - a slice systemd cannot make is refused with an error naming it, leaving nothing;
//! - the same in the node's cgroup v2 layout, where this host has no controller (they are all
//!   bound to v1 hierarchies): units, slices and unit properties are checked there, enforcement,
//!   usage and OOM cannot be, and runc cannot run at all (its test is ignored, saying why);
//! - the systemd driver asked for where no systemd runs, on an ordinary CRI node (this
//!   machine's PID 1 is not systemd): an error saying so, nothing left.
//!
//! Each scenario boots its own node and tears it down, checking that nothing of it is left (no
//! process, mount, namespace, unit or cgroup).
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use podnet_tests::cri::{
    container_config, v1 as cri, wait_container_state, CriNode, CriNodeOptions, Flavour, HANDLER_PODNET, HANDLER_RUNC,
};
use podnet_tests::leaks::Snapshot;
use podnet_tests::node::{pod_slice_path, scope_unit, Layout, NodeCri, Qos};
use podnet_tests::{retry, TempDir};

const MI: i64 = 1 << 20;

/// CPU and memory limits as kubelet sends them for a burstable container.
fn resources(memory: i64, cpu_quota: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_quota,
        cpu_period: 100_000,
        cpu_shares: 512,
        ..Default::default()
    }
}

/// A container with [`resources`].
fn limited(name: &str, args: &[&str], memory: i64, cpu_quota: i64) -> cri::ContainerConfig {
    let mut c = container_config(name, args);
    c.linux.get_or_insert_with(Default::default).resources = Some(resources(memory, cpu_quota));
    c
}

/// The `pid` in a verbose status's `info`.
fn info_pid(info: &HashMap<String, String>) -> i32 {
    let v: serde_json::Value = serde_json::from_str(info.get("info").map(String::as_str).unwrap_or("{}")).unwrap();
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in the verbose status: {v}")) as i32
}

fn pod_pid(n: &NodeCri, pod: &str) -> i32 {
    info_pid(&n.client().pod_sandbox_status(pod, true).expect("PodSandboxStatus").info)
}

fn container_pid(n: &NodeCri, id: &str) -> i32 {
    info_pid(&n.client().container_status_verbose(id, true).expect("ContainerStatus").info)
}

fn cgroup_parent(cfg: &cri::PodSandboxConfig) -> String {
    cfg.linux.as_ref().map(|l| l.cgroup_parent.clone()).unwrap_or_default()
}

/// The unit properties the tests look at.
const PROPS: [&str; 7] =
    ["LoadState", "ActiveState", "Slice", "ControlGroup", "MemoryLimit", "MemoryMax", "CPUQuotaPerSecUSec"];

fn props(n: &NodeCri, unit: &str) -> HashMap<String, String> {
    let all = n.node().unit(unit);
    PROPS.iter().map(|p| (p.to_string(), all.get(*p).cloned().unwrap_or_default())).collect()
}

/// Asserts that `id` (a pod sandbox or a container of the pod `cfg`) is the active scope
/// `cri-containerd-<id>.scope` in the pod's slice, where systemd puts it (ControlGroup
/// `/<cgroup parent>/<scope>`), that `systemctl status` shows it, and that its process `pid`
/// is in that cgroup in every hierarchy systemd manages; returns the ControlGroup.
fn assert_scope(n: &NodeCri, id: &str, pid: i32, cfg: &cri::PodSandboxConfig) -> String {
    let unit = scope_unit(id);
    let p = props(n, &unit);
    let parent = cgroup_parent(cfg);
    let slice = parent.rsplit('/').next().unwrap_or_default();
    let want = format!("/{parent}/{unit}");
    assert_eq!((p["ActiveState"].as_str(), p["Slice"].as_str()), ("active", slice), "{unit}: {p:?}");
    assert_eq!(p["ControlGroup"], want, "{unit}: {p:?}");
    let status = n.node().run(&format!("systemctl status --no-pager --lines=0 -- {unit}"));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success() && text.contains(&want), "systemctl status {unit}: {text}");
    // The process, as the node sees it: in the unit's cgroup in systemd's own hierarchy and in
    // the controllers (on the v2 layout the one line 0::).
    let cgroups = n.node().sh(&format!("cat /proc/{pid}/cgroup"));
    let managed: &[&str] = match n.node().layout() {
        Layout::Hybrid => &["name=systemd", "memory", "cpu", "pids"],
        Layout::Unified => &[""],
    };
    for m in managed {
        let line = cgroups.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == *m)));
        let path = line.and_then(|l| l.splitn(3, ':').nth(2));
        assert_eq!(path, Some(want.as_str()), "{unit}: process {pid} in {m:?}: {cgroups}");
    }
    want
}

/// A v1 cgroup file of the node's cgroup `cg` (as the node names it).
fn v1_value(n: &NodeCri, hierarchy: &str, cg: &str, file: &str) -> i64 {
    let p = n.node().host_cgroup(hierarchy, cg).join(file);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    s.trim().parse().unwrap_or_else(|e| panic!("{}: {s:?}: {e}", p.display()))
}

/// The unit's memory limit as systemd shows it (MemoryLimit on v1, MemoryMax on v2) and its CPU quota.
fn unit_limits(n: &NodeCri, unit: &str) -> (String, String) {
    let p = props(n, unit);
    let mem = if n.node().layout() == Layout::Hybrid { &p["MemoryLimit"] } else { &p["MemoryMax"] };
    (mem.clone(), p["CPUQuotaPerSecUSec"].clone())
}

/// Asserts the limits of the container's unit, and on the hybrid layout the v1 files of its cgroup.
fn assert_limits(n: &NodeCri, id: &str, cg: &str, memory: i64, quota: i64) {
    let unit = scope_unit(id);
    // CPUQuotaPerSecUSec: the quota per period as a time per second (50000/100000 -> 500ms).
    let per_sec = format!("{}ms", quota * 1000 / 100_000);
    let mut got = (String::new(), String::new());
    let want = (memory.to_string(), per_sec);
    // An update reaches the unit through systemd: the properties follow shortly.
    retry(100, Duration::from_millis(20), || {
        got = unit_limits(n, &unit);
        got == want
    });
    assert_eq!(got, want, "{unit}: (memory limit, CPUQuotaPerSecUSec)");
    if n.node().layout() == Layout::Hybrid {
        assert_eq!(v1_value(n, "memory", cg, "memory.limit_in_bytes"), memory, "{unit}: memory.limit_in_bytes");
        assert_eq!(v1_value(n, "cpu", cg, "cpu.cfs_quota_us"), quota, "{unit}: cpu.cfs_quota_us");
        assert_eq!(v1_value(n, "cpu", cg, "cpu.cfs_period_us"), 100_000, "{unit}: cpu.cfs_period_us");
        assert_eq!(v1_value(n, "cpu", cg, "cpu.shares"), 512, "{unit}: cpu.shares");
    }
}

/// What runc, the reference, leaves of a container whose shim was SIGKILLed, removed so that
/// the rest is checked as strictly as for podnet: containerd 2.1.9 runs the dead shim's
/// `delete` for the sandbox only, so the container's runc state stays, and with it its cgroups
/// in the v1 hierarchies systemd does not manage, which runc made itself (cpuacct, cpuset and
/// freezer on this host). Waits (up to 10 s) until the container's unit is gone and only such
/// cgroups are left, each empty; returns them, removed.
fn remove_runc_leftovers(n: &NodeCri, ctr: &str) -> Vec<std::path::PathBuf> {
    let by_systemd = ["systemd", "unified", "memory", "cpu", "pids"];
    let managed = |p: &std::path::PathBuf| by_systemd.iter().any(|h| p.starts_with(n.node().cgroup_root(h)));
    let mut left = Vec::new();
    let settled = retry(200, Duration::from_millis(50), || {
        left = n.node().cgroups_named(&[ctr.to_string()]);
        !n.node().unit_known(&scope_unit(ctr)) && !left.iter().any(managed)
    });
    assert!(settled, "runc's container {ctr}: unit or cgroups systemd manages left: {left:?}");
    for d in &left {
        let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        assert!(procs.trim().is_empty(), "{} still holds {procs}", d.display());
        std::fs::remove_dir(d).unwrap_or_else(|e| panic!("removing runc's leftover {}: {e}", d.display()));
    }
    left
}

/// The pods of one handler on a node of `layout`: see the module documentation.
fn pods_on_a_systemd_node(handler: &str, layout: Layout, f: Flavour) {
    let n = NodeCri::start(layout, f);
    let c = n.client();
    if layout == Layout::Unified {
        // Why nothing is enforced on this layout: the node's cgroup2 tree has no controller.
        assert_eq!(n.node().sh("cat /sys/fs/cgroup/cgroup.controllers").trim(), "", "controllers on the v2 layout");
    }

    // A besteffort pod: the pause's scope and the container's, in the pod's slice.
    let be_cfg = n.pod_config("be", Qos::BestEffort);
    let be = n.run_pod(&be_cfg, handler);
    let idle = n.start_container(&be, &be_cfg, container_config("idle", &["sleep", "3600"]));
    assert_scope(&n, &be, pod_pid(&n, &be), &be_cfg);
    assert_scope(&n, &idle, container_pid(&n, &idle), &be_cfg);

    // A burstable pod whose container has memory and CPU limits; it burns a little CPU first.
    let bu_cfg = n.pod_config("bu", Qos::Burstable);
    let bu = n.run_pod(&bu_cfg, handler);
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 3600";
    let lim = n.start_container(&bu, &bu_cfg, limited("limited", &["sh", "-c", script], 64 * MI, 50_000));
    assert_scope(&n, &bu, pod_pid(&n, &bu), &bu_cfg);
    let cg = assert_scope(&n, &lim, container_pid(&n, &lim), &bu_cfg);
    assert_limits(&n, &lim, &cg, 64 * MI, 50_000);

    // Stats report usage. On the v2 layout there is no memory controller to read usage from.
    if layout == Layout::Hybrid {
        let mut stats = None;
        let used = retry(100, Duration::from_millis(50), || {
            stats = n.extra().container_stats(&lim).ok();
            let s = stats.as_ref();
            let mem = s.and_then(|s| s.memory.as_ref()).and_then(|m| m.working_set_bytes.as_ref()).map(|v| v.value);
            let cpu = s.and_then(|s| s.cpu.as_ref()).and_then(|c| c.usage_core_nano_seconds.as_ref()).map(|v| v.value);
            mem.is_some_and(|m| m > 0) && cpu.is_some_and(|c| c > 0)
        });
        assert!(used, "ContainerStats {lim}: no memory and CPU usage: {stats:?}\n{}", n.log_tail(30));
    }

    // Update changes the limits, in the unit and in the cgroup.
    n.extra()
        .update_container_resources(&lim, resources(96 * MI, 25_000))
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", n.log_tail(40)));
    assert_limits(&n, &lim, &cg, 96 * MI, 25_000);

    // An OOM kill is reported as OOMKilled (v1 only: nothing enforces a limit on the v2 layout).
    if layout == Layout::Hybrid {
        let hog = n.start_container(
            &bu,
            &bu_cfg,
            limited("hog", &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], 16 * MI, 50_000),
        );
        let s = wait_container_state(c, &hog, cri::ContainerState::ContainerExited, Duration::from_secs(30))
            .expect("ContainerStatus");
        assert_eq!(
            (s.state, s.reason.as_str()),
            (cri::ContainerState::ContainerExited as i32, "OOMKilled"),
            "the hog's status: {s:?}\n{}",
            n.log_tail(30)
        );
    }

    // Stop and Remove leave no unit and no cgroup.
    for pod in [&be, &bu] {
        n.stop_and_remove(pod);
    }
    let mut ids = c.pods_seen();
    ids.extend(c.containers_seen());
    assert_eq!(n.wait_gone(&ids), Vec::<String>::new(), "left after Stop and Remove\n{}", n.log_tail(30));

    // A pod whose shim was SIGKILLed is still removable, and its units and cgroups go.
    let k_cfg = n.pod_config("killed", Qos::BestEffort);
    let k = n.run_pod(&k_cfg, handler);
    let kc = n.start_container(&k, &k_cfg, container_config("c", &["sleep", "3600"]));
    assert_scope(&n, &kc, container_pid(&n, &kc), &k_cfg);
    let shims = n.shim_pids_for(&k);
    assert!(!shims.is_empty(), "no shim for pod {k}");
    for pid in &shims {
        // SAFETY: kill has no memory-safety preconditions; the shim of our node's containerd.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    assert!(retry(250, Duration::from_millis(20), || n.shim_pids_for(&k).is_empty()), "the killed shim lives on");
    // As kubelet does, each call retried until it succeeds: while containerd cleans up after
    // the dead shim, CRI answers "container is still running" for a moment.
    for (what, call) in [("StopPodSandbox", 0), ("RemovePodSandbox", 1)] {
        let mut last = String::new();
        let ok = retry(200, Duration::from_millis(100), || {
            let r = if call == 0 { c.stop_pod_sandbox(&k) } else { c.remove_pod_sandbox(&k) };
            r.map_err(|e| last = e.to_string()).is_ok()
        });
        assert!(ok, "{what} of the SIGKILLed shim's pod never succeeded: {last}\n{}", n.log_tail(40));
    }
    if handler == HANDLER_RUNC {
        remove_runc_leftovers(&n, &kc);
    }
    let left = n.wait_gone(&[k.clone(), kc.clone()]);
    assert_eq!(left, Vec::<String>::new(), "left after the SIGKILLed shim's pod was removed\n{}", n.log_tail(40));

    // Bad input: a slice systemd cannot make (an empty part in "kubepods-.slice"): a clear
    // error naming it, and nothing left.
    {
        let mut bad = n.pod_config("badslice", Qos::BestEffort);
        bad.linux.get_or_insert_with(Default::default).cgroup_parent = "kubepods-.slice".into();
        let e = c.run_pod_sandbox(&bad, handler).expect_err("a pod in kubepods-.slice");
        let msg = e.message();
        eprintln!("{handler}: refused: {msg}");
        assert!(msg.contains("kubepods-.slice") && msg.contains("slice name"), "{handler}: {msg}");
        let pods = c.list_pod_sandbox().expect("ListPodSandbox");
        assert!(pods.is_empty(), "pods left after the refusal: {pods:?}");
        assert_eq!(n.node().units("*kubepods-.slice*"), Vec::<String>::new());
    }
    n.finish();
}

#[test]
#[ignore = "needs root"]
fn runc_pods_on_a_systemd_node() {
    pods_on_a_systemd_node(HANDLER_RUNC, Layout::Hybrid, Flavour::Containerd2);
}

#[test]
#[ignore = "needs root"]
fn podnet_pods_on_a_systemd_node() {
    pods_on_a_systemd_node(HANDLER_PODNET, Layout::Hybrid, Flavour::Containerd2);
}

#[test]
#[ignore = "needs root"]
fn runc_pods_on_a_systemd_node_containerd_1_7() {
    pods_on_a_systemd_node(HANDLER_RUNC, Layout::Hybrid, Flavour::Containerd17);
}

#[test]
#[ignore = "needs root"]
fn podnet_pods_on_a_systemd_node_containerd_1_7() {
    pods_on_a_systemd_node(HANDLER_PODNET, Layout::Hybrid, Flavour::Containerd17);
}

/// The reference cannot run here: with no controller in the node's cgroup2 tree, runc refuses
/// the pause (CRI gives it CPU shares, which runc writes to cpu.weight).
#[test]
#[ignore = "needs a cgroup2 tree with controllers: this host binds every controller to a v1 hierarchy, and runc refuses the pause without cpu.weight"]
fn runc_pods_on_a_systemd_node_cgroup_v2() {
    pods_on_a_systemd_node(HANDLER_RUNC, Layout::Unified, Flavour::Containerd2);
}

#[test]
#[ignore = "needs root"]
fn podnet_pods_on_a_systemd_node_cgroup_v2() {
    pods_on_a_systemd_node(HANDLER_PODNET, Layout::Unified, Flavour::Containerd2);
}

/// The systemd driver asked for where no systemd runs (this machine: no /run/systemd/system),
/// through a handler `<handler>-systemd` added to an ordinary CRI node: runc's with
/// `SystemdCgroup = true`, podnet's with a config of `systemd_cgroup = true`. A pod with a
/// systemd-form cgroup parent is refused with an error that says systemd is not running, and
/// nothing is left (no pod, no cgroup named after the pod's slice, and CriNode's checks).
fn systemd_driver_without_systemd(handler: &str) {
    assert!(!Path::new("/run/systemd/system").exists(), "systemd runs this machine: the scenario needs a host without");
    let conf = TempDir::new("pnsdcfg");
    let podnet_cfg = conf.path().join("podnet.toml");
    std::fs::write(&podnet_cfg, format!("state_dir = '{}'\nsystemd_cgroup = true\n", conf.path().join("st").display()))
        .expect("write the podnet config");
    let r = "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes";
    let extra = format!(
        "[{r}.runc-systemd]\n  runtime_type = 'io.containerd.runc.v2'\n  sandboxer = 'podsandbox'\n\
         [{r}.runc-systemd.options]\n  SystemdCgroup = true\n\
         [{r}.podnet-systemd]\n  runtime_type = 'io.containerd.podnet.v2'\n  sandboxer = 'podsandbox'\n\
         [{r}.podnet-systemd.options]\n  ConfigPath = '{}'\n",
        podnet_cfg.display()
    );
    let n = CriNode::with("nosd", CriNodeOptions::default().extra_config(&extra));
    let mut cfg = n.pod_config("nosd");
    let uid = cfg.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
    let parent = pod_slice_path(Qos::BestEffort, &uid);
    let slice = parent.rsplit('/').next().unwrap_or_default().to_string();
    cfg.linux.get_or_insert_with(Default::default).cgroup_parent = parent;
    let e = n.client().run_pod_sandbox(&cfg, &format!("{handler}-systemd")).expect_err("a pod on the systemd driver");
    let msg = e.message();
    eprintln!("{handler}: refused: {msg}");
    let says = ["not running", "not available", "not booted"].iter().any(|w| msg.contains(w));
    assert!(msg.contains("systemd") && says, "{handler}: the error does not say systemd is not running: {msg}");
    let pods = n.client().list_pod_sandbox().expect("ListPodSandbox");
    assert!(pods.is_empty(), "pods left after the refusal: {pods:?}");
    let cgroups = Snapshot::take(&slice).cgroups;
    assert!(cgroups.is_empty(), "cgroups of the pod's slice left: {cgroups:?}");
    n.finish();
}

#[test]
#[ignore = "needs root"]
fn runc_systemd_driver_without_systemd() {
    systemd_driver_without_systemd(HANDLER_RUNC);
}

#[test]
#[ignore = "needs root"]
fn podnet_systemd_driver_without_systemd() {
    systemd_driver_without_systemd(HANDLER_PODNET);
}
