//! hack/demo's CRI part: a real containerd with CRI in an isolated node network namespace (no
//! route out), a two-container pod through the `podnet` runtime handler (what `crictl runp -r
//! podnet` and kubelet do), its IP, localhost between the containers, a response served
//! through its hostPort, then RemovePodSandbox and a check that nothing is left. Root.
use std::time::{Duration, Instant};

use podnet_tests::cri::{container_config, node_output, CriNode, PodConfigExt, HANDLER_PODNET};

fn step(what: &str) {
    println!("\n== {what}");
}

fn main() {
    let t0 = Instant::now();
    step("containerd 2.x with CRI in a node network namespace; handlers runc and podnet");
    let n = CriNode::new("demo");
    let v = n.client().version().unwrap_or_else(|e| panic!("Version: {e}"));
    println!(
        "runtime {} {} (CRI {}), node ready in {:?}",
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        t0.elapsed()
    );
    println!("podnet conflist ({}):", n.podnet_conf_dir().display());
    println!("{}", serde_json::to_string_pretty(&n.podnet_conflist()).unwrap_or_default());

    step("RunPodSandbox (handler podnet, hostPort 8080 -> 80)");
    let cfg = n.pod_config("demo").port(80, 8080, "");
    let t = Instant::now();
    let pod = n.client().run_pod_sandbox(&cfg, HANDLER_PODNET).unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    println!("pod {} in {:?}", &pod[..12], t.elapsed());
    let ip = n.pod_ip(&pod);
    println!("pod IP (PodSandboxStatus): {ip}");
    println!("pod shim processes: {:?}", n.shim_pids_for(&pod));

    step("two containers: busybox httpd on :80, and a client beside it");
    let web = container_config(
        "web",
        &["sh", "-c", "mkdir -p /www && echo \"hello from pod $(hostname) ($(ip -4 -o addr show eth0 | awk '{print $4}'))\" > /www/index.html && exec httpd -f -p 80 -h /www"],
    );
    let side = container_config("side", &["sleep", "3600"]);
    let mut ids = Vec::new();
    for c in [web, side] {
        let id = n.client().create_container(&pod, &c, &cfg).unwrap_or_else(|e| panic!("CreateContainer: {e}"));
        n.client().start_container(&id).unwrap_or_else(|e| panic!("StartContainer: {e}"));
        ids.push(id);
    }
    println!("containers: {:?}", ids.iter().map(|i| &i[..12]).collect::<Vec<_>>());
    println!("still one shim for the pod: {:?}", n.shim_pids_for(&pod));
    let fetch_side = || n.client().exec_sync(&ids[1], &["sh", "-c", "timeout 5 wget -qO- http://127.0.0.1:80/"], 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        match fetch_side() {
            Ok((out, _, 0)) => break out,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("the side container could not reach the server: {other:?}"),
        }
    };
    println!("side container -> 127.0.0.1:80 (the pod's localhost): {}", body.trim());
    let (eth0, _, _) =
        n.client().exec_sync(&ids[1], &["ip", "-4", "-o", "addr", "show", "eth0"], 10).unwrap_or_default();
    println!("side container's eth0: {}", eth0.trim());

    step("hostPort 8080 from the node");
    for host in ["127.0.0.1", "10.89.0.1"] {
        let out =
            node_output(n.node(), &format!("timeout 5 busybox wget -qO- http://{host}:8080/"), Duration::from_secs(10));
        println!("node -> {host}:8080: {}", String::from_utf8_lossy(&out.stdout).trim());
        assert!(out.status.success(), "hostPort via {host} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    step("StopPodSandbox, RemovePodSandbox");
    let t = Instant::now();
    n.client().stop_pod_sandbox(&pod).unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    println!("StopPodSandbox in {:?}", t.elapsed());
    n.client().remove_pod_sandbox(&pod).unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    println!("shims left: {:?}, IP reservations left: {:?}", n.shim_pids(), n.podnet_reservations());
    n.finish();
    println!(
        "\nnothing left behind (veths, IPs, nft rules, netns, mounts, cgroups, processes); {:?} in all",
        t0.elapsed()
    );
}
