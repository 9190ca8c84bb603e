//! Pods through containerd's CRI with the `podnet` runtime handler (root; a real containerd in
//! a node network namespace, see `podnet_tests::cri`): what CRI expects of a runtime, and that
//! nothing of a pod is left once it is removed. Every scenario runs on containerd 2.x and on
//! containerd 1.7, as `containerd_2::<scenario>` and `containerd_1_7::<scenario>`, and ends
//! with [`CriNode::finish`], which checks for veths, IP reservations, nft rules, netns, mounts,
//! cgroups, task bundles and shim processes.
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podnet_tests::cri::{
    container_config, node_output, v1 as cri, wait_container_state, CriClient, CriNode, CriNodeOptions, Flavour,
    PodConfigExt, HANDLER_PODNET, HANDLER_RUNC,
};
use podnet_tests::{on_each_containerd, retry};

on_each_containerd!(
    a_two_container_pod_and_its_neighbour,
    twenty_pods_at_once,
    runc_and_podnet_handlers_side_by_side,
    a_killed_shim_still_lets_the_pod_go,
    a_broken_conflist_fails_run_pod_sandbox_with_the_cni_error,
    a_host_network_pod_is_left_alone,
    share_process_namespace,
    stop_with_grace_and_restart_in_the_same_pod,
    dual_stack_pod,
    cni_gc_reaches_the_pods_shim,
);

const T: Duration = Duration::from_secs(10);

fn run_pod(n: &CriNode, cfg: &cri::PodSandboxConfig) -> String {
    n.run_pod(cfg, HANDLER_PODNET)
}

/// ExecSync that must succeed; its stdout.
fn sh(c: &CriClient, id: &str, script: &str) -> String {
    let (out, err, code) =
        c.exec_sync(id, &["sh", "-c", script], 20).unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"));
    assert_eq!(code, 0, "ExecSync {script:?}: exit {code}, stdout {out:?}, stderr {err:?}");
    out
}

/// Busybox httpd on port 80 serving `body`.
fn web(name: &str, body: &str) -> cri::ContainerConfig {
    let script = format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    container_config(name, &["sh", "-c", &script])
}

/// Fetches http://host:port/ from the node namespace (bounded).
fn node_fetch(n: &CriNode, host: &str, port: u16) -> Option<String> {
    let out = node_output(n.node(), &format!("timeout 5 busybox wget -qO- http://{host}:{port}/"), T);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CRI log file of a container of a pod.
fn log_file(pod_cfg: &cri::PodSandboxConfig, name: &str) -> PathBuf {
    Path::new(&pod_cfg.log_directory).join(format!("{name}.log"))
}

/// The IP in a pod, the same IP for its two containers, pod to pod, hostPort from the node's
/// address and 127.0.0.1, ExecSync, CRI-format logs, DNS config and hostname; one shim for the
/// pod, gone after RemovePodSandbox; nothing left.
fn a_two_container_pod_and_its_neighbour(f: Flavour) {
    let n = CriNode::on(f, "pods");
    let a_cfg = n.pod_config("web").port(80, 8080, "");
    let a = run_pod(&n, &a_cfg);
    let ip = n.pod_ip(&a);
    let server = n.start_container(&a, &a_cfg, web("server", "hello-from-web"));
    let side = n.start_container(
        &a,
        &a_cfg,
        container_config("side", &["sh", "-c", "echo side-started; echo side-err >&2; exec sleep 3600"]),
    );
    let c = n.client();

    // The reported IP is the IP inside the pod, for both containers.
    for id in [&server, &side] {
        let out = sh(c, id, "ip -4 -o addr show eth0");
        assert!(out.contains(&format!("inet {ip}/")), "container {id}: eth0 {out:?}, CRI says {ip}");
    }
    // One network namespace: the side container reaches the server on localhost.
    assert!(
        retry(100, Duration::from_millis(50), || c
            .exec_sync(&side, &["sh", "-c", "timeout 5 wget -qO- http://127.0.0.1:80/"], 10)
            .is_ok_and(|(out, _, code)| code == 0 && out.contains("hello-from-web"))),
        "the side container does not reach the server over the pod's localhost"
    );
    // DNS config and hostname, as CRI wrote them.
    let resolv = sh(c, &side, "cat /etc/resolv.conf");
    for want in ["nameserver 10.96.0.10", "search svc.cluster.local", "options ndots:5"] {
        assert!(resolv.contains(want), "resolv.conf lacks {want:?}: {resolv}");
    }
    assert_eq!(sh(c, &side, "hostname").trim(), "web");
    assert_eq!(sh(c, &server, "cat /etc/hostname").trim(), "web");

    // One shim for the pod's sandbox and both containers.
    let shims = n.shim_pids_for(&a);
    assert_eq!(shims.len(), 1, "shims of the pod: {shims:?}");

    // Another pod on the node reaches this one.
    let b_cfg = n.pod_config("client");
    let b = run_pod(&n, &b_cfg);
    let ip_b = n.pod_ip(&b);
    assert_ne!(ip, ip_b);
    let client = n.start_container(&b, &b_cfg, container_config("client", &["sleep", "3600"]));
    let got = sh(c, &client, &format!("timeout 5 wget -qO- http://{ip}:80/"));
    assert!(got.contains("hello-from-web"), "pod to pod: {got:?}");
    assert_eq!(n.shim_pids().len(), 2, "one shim per pod");

    // hostPort 8080 from the node: its address on the pods' bridge and 127.0.0.1.
    let gw = "10.89.0.1".to_string();
    for host in [gw.as_str(), "127.0.0.1"] {
        let got = node_fetch(&n, host, 8080);
        assert!(got.as_deref().is_some_and(|s| s.contains("hello-from-web")), "hostPort via {host}:8080: {got:?}");
    }

    // ExecSync: stdout, stderr and the exit code apart.
    let (out, err, code) = c.exec_sync(&side, &["sh", "-c", "echo out; echo err >&2; exit 7"], 10).expect("ExecSync");
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));

    // Logs in CRI format at the CRI log path.
    let log = log_file(&a_cfg, "side");
    let mut text = String::new();
    assert!(
        retry(100, Duration::from_millis(20), || {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("side-err")
        }),
        "{}: {text:?}",
        log.display()
    );
    for (stream, msg) in [("stdout", "side-started"), ("stderr", "side-err")] {
        let line = text.lines().find(|l| l.ends_with(msg)).unwrap_or_else(|| panic!("no {msg} line in {text:?}"));
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        assert_eq!(parts.len(), 4, "{line:?}");
        assert!(parts[0].contains('T') && parts[0].ends_with('Z') || parts[0].contains('+'), "timestamp {line:?}");
        assert_eq!((parts[1], parts[2], parts[3]), (stream, "F", msg), "{line:?}");
    }

    n.stop_and_remove(&b);
    n.stop_and_remove(&a);
    // The pod's shim is gone once the pod is.
    assert!(retry(250, Duration::from_millis(20), || n.shim_pids().is_empty()), "shims left: {:?}", n.shim_pids());
    n.finish();
}

/// 20 pods created and removed concurrently: every IP unique, nothing leaked.
fn twenty_pods_at_once(f: Flavour) {
    let n = CriNode::on(f, "many");
    let socket = n.c().address().to_path_buf();
    let results: Vec<(String, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (socket, n) = (socket.clone(), &n);
                s.spawn(move || {
                    let c = CriClient::connect(&socket).expect("client");
                    let cfg = n.pod_config(&format!("p{i}"));
                    let pod =
                        c.run_pod_sandbox(&cfg, HANDLER_PODNET).unwrap_or_else(|e| panic!("RunPodSandbox p{i}: {e}"));
                    let ctr = c
                        .create_container(&pod, &container_config("c", &["sleep", "3600"]), &cfg)
                        .unwrap_or_else(|e| panic!("CreateContainer p{i}: {e}"));
                    c.start_container(&ctr).unwrap_or_else(|e| panic!("StartContainer p{i}: {e}"));
                    let ip = c.pod_ip(&pod).expect("pod IP");
                    (pod, ctr, ip)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("pod thread")).collect()
    });
    let ips: BTreeSet<&str> = results.iter().map(|(_, _, ip)| ip.as_str()).collect();
    assert_eq!(ips.len(), 20, "IPs not unique: {results:?}");
    assert_eq!(n.podnet_reservations().len(), 20, "{:?}", n.podnet_reservations());
    // Each container sees its pod's own address.
    for (_, ctr, ip) in results.iter().take(3) {
        assert!(sh(n.client(), ctr, "ip -4 -o addr show eth0").contains(&format!("inet {ip}/")));
    }
    assert_eq!(n.shim_pids().len(), 20, "one shim per pod");
    std::thread::scope(|s| {
        for (pod, _, _) in &results {
            let socket = socket.clone();
            s.spawn(move || {
                let c = CriClient::connect(&socket).expect("client");
                c.stop_pod_sandbox(pod).unwrap_or_else(|e| panic!("StopPodSandbox {pod}: {e}"));
                c.remove_pod_sandbox(pod).unwrap_or_else(|e| panic!("RemovePodSandbox {pod}: {e}"));
            });
        }
    });
    n.finish();
}

/// The `runc` handler (runc shim, reference CNI plugins) and the `podnet` handler side by side
/// on one containerd, each on its own network; a podnet pod reaches a runc pod through the node.
fn runc_and_podnet_handlers_side_by_side(f: Flavour) {
    let n = CriNode::on(f, "side");
    let r_cfg = n.pod_config("r").port(80, 8081, "");
    let r = n.client().run_pod_sandbox(&r_cfg, HANDLER_RUNC).unwrap_or_else(|e| panic!("RunPodSandbox runc: {e}"));
    let r_web = n.start_container(&r, &r_cfg, web("rweb", "from-runc"));
    let p_cfg = n.pod_config("p").port(80, 8082, "");
    let p = run_pod(&n, &p_cfg);
    let p_web = n.start_container(&p, &p_cfg, web("pweb", "from-podnet"));
    let (ip_r, ip_p) = (n.pod_ip(&r), n.pod_ip(&p));
    assert!(ip_r.starts_with("10.88."), "runc pod IP {ip_r}");
    assert!(ip_p.starts_with("10.89."), "podnet pod IP {ip_p}");
    assert_eq!(n.shim_pids().len(), 1, "only the podnet pod has a podnet shim");
    for (port, body) in [(8081, "from-runc"), (8082, "from-podnet")] {
        let ok = retry(100, Duration::from_millis(50), || {
            node_fetch(&n, "127.0.0.1", port).is_some_and(|s| s.contains(body))
        });
        assert!(ok, "hostPort {port} does not serve {body}");
    }
    let got = sh(n.client(), &p_web, &format!("timeout 5 wget -qO- http://{ip_r}:80/"));
    assert!(got.contains("from-runc"), "podnet pod to runc pod: {got:?}");
    let got = sh(n.client(), &r_web, &format!("timeout 5 wget -qO- http://{ip_p}:80/"));
    assert!(got.contains("from-podnet"), "runc pod to podnet pod: {got:?}");
    n.stop_and_remove(&p);
    n.stop_and_remove(&r);
    n.finish();
}

/// SIGKILL of a pod's shim midway: StopPodSandbox and RemovePodSandbox still succeed and
/// release everything (the CNI plugin runs DEL itself from the attachment record).
///
/// containerd 1.7's CRI takes a failed task wait (`ttrpc: closed`) as the sandbox's exit with
/// status 255 (`startSandboxExitMonitor`, pkg/cri/server/events.go), so its Stop and
/// RemovePodSandbox succeed while containerd still runs the shim's `delete` and removes the
/// bundle, unmounting its rootfs (`cleanupAfterDeadShim`, runtime/v2/shim.go): the node's
/// [`CriNode::finish`] waits for the bundles to go before it looks for mounts.
fn a_killed_shim_still_lets_the_pod_go(f: Flavour) {
    let n = CriNode::on(f, "kill");
    let cfg = n.pod_config("victim").port(80, 8083, "");
    let pod = run_pod(&n, &cfg);
    let ctr = n.start_container(&pod, &cfg, container_config("c", &["sleep", "3600"]));
    assert_eq!(n.podnet_reservations().len(), 1);
    let shims = n.shim_pids_for(&pod);
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) of the shim process this test's containerd runs.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);
    assert!(
        retry(250, Duration::from_millis(20), || !podnet_tests::containerd::alive(shims[0])),
        "the shim survived SIGKILL"
    );
    // As kubelet does: StopPodSandbox at once, and every call retried until it succeeds.
    // While containerd's dead-shim cleanup runs, CRI answers "container is still running" or
    // "ttrpc: closed" for a moment (its exit-event handler retries with a backoff until the
    // tasks are gone); the calls must then succeed and release everything.
    let until_ok = |what: &str, f: &dyn Fn() -> Result<(), String>| {
        let mut last = String::new();
        let ok = retry(200, Duration::from_millis(100), || match f() {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        });
        assert!(ok, "{what} after the shim died never succeeded: {last}\n{}", n.c().log_tail(60));
    };
    until_ok("StopPodSandbox", &|| n.client().stop_pod_sandbox(&pod).map_err(|e| e.to_string()));
    let st = wait_container_state(n.client(), &ctr, cri::ContainerState::ContainerExited, Duration::from_secs(20))
        .expect("status");
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32, "the container of the killed shim: {st:?}");
    until_ok("RemovePodSandbox", &|| n.client().remove_pod_sandbox(&pod).map_err(|e| e.to_string()));
    assert!(n.podnet_reservations().is_empty(), "the IP is released: {:?}", n.podnet_reservations());
    n.finish();
}

/// A conflist CRI loads but the plugin refuses: RunPodSandbox fails with the CNI error's text,
/// and nothing is left (no shim, netns, reservation or veth).
fn a_broken_conflist_fails_run_pod_sandbox_with_the_cni_error(f: Flavour) {
    let n = CriNode::with(
        "broken",
        CriNodeOptions::default().flavour(f).podnet_patch("/ipam/ranges/0/0/subnet", "10.89.0.0/33".into()),
    );
    let cfg = n.pod_config("bad");
    let e = n.client().run_pod_sandbox(&cfg, HANDLER_PODNET).expect_err("RunPodSandbox with a broken conflist");
    let msg = e.message();
    assert!(msg.contains("subnet") && msg.contains("10.89.0.0/33"), "the error names the field and value: {msg}");
    assert!(retry(250, Duration::from_millis(20), || n.shim_pids().is_empty()), "shims left: {:?}", n.shim_pids());
    n.finish();
}

/// hostNetwork: no CNI call, no network of the shim's; the container is in the node's netns.
fn a_host_network_pod_is_left_alone(f: Flavour) {
    let n = CriNode::on(f, "hostnet");
    let cfg = n.pod_config("hn").host_network();
    let pod = run_pod(&n, &cfg);
    let ctr = n.start_container(&pod, &cfg, container_config("c", &["sleep", "3600"]));
    let inside = sh(n.client(), &ctr, "readlink /proc/self/ns/net");
    let node = String::from_utf8_lossy(&node_output(n.node(), "readlink /proc/self/ns/net", T).stdout).into_owned();
    assert_eq!(inside.trim(), node.trim(), "the container runs in the node's network namespace");
    assert!(n.podnet_reservations().is_empty(), "no address for a hostNetwork pod");
    assert!(n.veths().is_empty(), "no veth for a hostNetwork pod: {:?}", n.veths());
    assert_eq!(n.shim_pids_for(&pod).len(), 1, "the pod still has its shim");
    n.stop_and_remove(&pod);
    n.finish();
}

/// shareProcessNamespace: the containers see each other's processes, with the pause as pid 1.
fn share_process_namespace(f: Flavour) {
    let n = CriNode::on(f, "pidns");
    let cfg = n.pod_config("shared").share_pid();
    let pod = run_pod(&n, &cfg);
    let _a = n.start_container(&pod, &cfg, container_config("a", &["sleep", "3601"]));
    let b = n.start_container(&pod, &cfg, container_config("b", &["sleep", "3602"]));
    let ps = sh(n.client(), &b, "ps -o pid,args");
    assert!(ps.contains("sleep 3601") && ps.contains("sleep 3602"), "one PID namespace: {ps}");
    let init = sh(n.client(), &b, "tr '\\0' ' ' < /proc/1/cmdline");
    assert!(init.contains("pause"), "pid 1 is the pause: {init:?}");
    n.stop_and_remove(&pod);
    n.finish();
}

/// StopContainer: a container that ends on SIGTERM stops with its own status; one that ignores
/// it is killed after the grace period. A container restarted in the same pod (attempt 1) runs
/// with the pod's IP.
fn stop_with_grace_and_restart_in_the_same_pod(f: Flavour) {
    let n = CriNode::on(f, "grace");
    let cfg = n.pod_config("g");
    let pod = run_pod(&n, &cfg);
    let ip = n.pod_ip(&pod);
    let c = n.client();
    let polite = n.start_container(
        &pod,
        &cfg,
        container_config("polite", &["sh", "-c", "trap 'echo got-term; exit 0' TERM; echo up; sleep 3600 & wait"]),
    );
    let stubborn = n.start_container(
        &pod,
        &cfg,
        container_config("stubborn", &["sh", "-c", "trap '' TERM; echo up; while :; do sleep 1; done"]),
    );
    for (id, name) in [(&polite, "polite"), (&stubborn, "stubborn")] {
        let log = log_file(&cfg, name);
        assert!(
            retry(250, Duration::from_millis(20), || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("up"))),
            "{id} never started its trap"
        );
    }
    c.stop_container(&polite, 30).expect("StopContainer polite");
    let st = c.container_status(&polite).expect("status").status.expect("status");
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 0), "{st:?}");
    let log = std::fs::read_to_string(log_file(&cfg, "polite")).unwrap_or_default();
    assert!(log.contains("got-term"), "the container saw SIGTERM: {log}");
    c.stop_container(&stubborn, 1).expect("StopContainer stubborn");
    let st = c.container_status(&stubborn).expect("status").status.expect("status");
    assert_eq!(
        (st.state, st.exit_code),
        (cri::ContainerState::ContainerExited as i32, 137),
        "killed after the grace period: {st:?}"
    );

    // A container that exits, then its restart (attempt 1) in the same pod.
    let crash = n.start_container(&pod, &cfg, container_config("crash", &["sh", "-c", "exit 3"]));
    let st = wait_container_state(c, &crash, cri::ContainerState::ContainerExited, T).expect("status");
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 3), "{st:?}");
    c.remove_container(&crash).expect("RemoveContainer");
    let mut again = container_config("crash", &["sleep", "3600"]);
    if let Some(m) = again.metadata.as_mut() {
        m.attempt = 1;
    }
    let restarted = n.start_container(&pod, &cfg, again);
    assert!(
        sh(c, &restarted, "ip -4 -o addr show eth0").contains(&format!("inet {ip}/")),
        "the restart runs in the pod's network"
    );
    assert_eq!(n.shim_pids_for(&pod).len(), 1);
    n.stop_and_remove(&pod);
    n.finish();
}

/// Dual-stack: PodSandboxStatus reports an IPv4 and an IPv6 address, both on the pod's eth0.
fn dual_stack_pod(f: Flavour) {
    let n = CriNode::with("ds", CriNodeOptions::default().flavour(f).dual_stack());
    let cfg = n.pod_config("ds");
    let pod = run_pod(&n, &cfg);
    let ctr = n.start_container(&pod, &cfg, container_config("c", &["sleep", "3600"]));
    let ips = n.client().pod_ips(&pod).expect("pod IPs");
    let parsed: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap_or_else(|_| panic!("pod IP {s:?}"))).collect();
    assert_eq!(parsed.len(), 2, "{ips:?}");
    assert!(parsed[0].is_ipv4() && parsed[1].is_ipv6(), "IPv4 first, then IPv6: {ips:?}");
    let addrs = sh(n.client(), &ctr, "ip -o addr show eth0");
    for ip in &ips {
        assert!(addrs.contains(&format!(" {ip}/")), "{ip} not on eth0: {addrs}");
    }
    n.stop_and_remove(&pod);
    n.finish();
}

/// CNI GC with an empty valid list, as a CNI 1.1 runtime sends it once the pod is gone from its
/// view: the pod's shim releases the attachment, and the pod still stops and goes cleanly.
/// Neither containerd's CRI sends GC itself (2.1.9 vendors go-cni v1.1.12, which has no GC call;
/// 1.7.24 vendors containernetworking/cni v1.1.2, whose libcni has no GCNetworkList and whose
/// `version.All` ends at 1.0.0), so the test sends it as such a runtime would.
///
/// On containerd 1.7 the node's conflist is CNI 1.0.0, a version without GC: the plugin refuses
/// a GC of it and changes nothing. The same network at 1.1.0 then reaches the shim containerd
/// 1.7 started, and 1.7's StopPodSandbox DEL (at 1.0.0) finds nothing to fail on afterwards.
fn cni_gc_reaches_the_pods_shim(f: Flavour) {
    let n = CriNode::on(f, "gc");
    let cfg = n.pod_config("gc");
    let pod = run_pod(&n, &cfg);
    let ctr = n.start_container(&pod, &cfg, container_config("c", &["sleep", "3600"]));
    assert_eq!(n.podnet_reservations().len(), 1);
    let conflist = n.podnet_conflist();
    let gc = |version: &serde_json::Value| {
        let mut conf = conflist["plugins"][0].clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = version.clone();
        conf["cni.dev/valid-attachments"] = serde_json::json!([]);
        podnet_tests::run_plugin_env(
            Some(n.node()),
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", &n.cni_bin_dir().display().to_string())],
            conf.to_string().as_bytes(),
        )
    };
    if f.is_1_7() {
        assert_eq!(conflist["cniVersion"], "1.0.0", "containerd 1.7's conflist");
        let out = gc(&conflist["cniVersion"]);
        assert_ne!(out.code, 0, "GC of a CNI 1.0.0 config: {out:?}");
        assert!(out.stdout.contains("GC needs cniVersion 1.1.0"), "the error says why: {out:?}");
        assert_eq!(n.podnet_reservations().len(), 1, "a refused GC released the IP");
        assert!(sh(n.client(), &ctr, "ip -4 -o addr show eth0").contains(&format!("inet {}/", n.pod_ip(&pod))));
    }
    let out = gc(&"1.1.0".into());
    assert_eq!(out.code, 0, "GC: {out:?}");
    assert!(n.podnet_reservations().is_empty(), "GC released the IP: {:?}", n.podnet_reservations());
    assert!(n.veths().is_empty(), "GC removed the veth: {:?}", n.veths());
    n.stop_and_remove(&pod);
    n.finish();
}
