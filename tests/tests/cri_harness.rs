//! The CRI harness against a real containerd (root): one pod with one busybox container
//! through CRI, for the `runc` handler (reference CNI plugins, 10.88.0.0/16) and the `podnet`
//! handler (the podnet shim and CNI plugin, 10.89.0.0/16): RunPodSandbox, CreateContainer,
//! StartContainer, the pod IP from PodSandboxStatus, ExecSync, Stop/Remove, and
//! [`CriNode::finish`]'s clean check; on containerd 2.x and 1.7 (`containerd_2::<scenario>`,
//! `containerd_1_7::<scenario>`).
use std::net::Ipv4Addr;
use std::time::Instant;

use podnet_tests::cri::{container_config, v1 as cri, CriNode, Flavour, HANDLER_PODNET, HANDLER_RUNC};
use podnet_tests::on_each_containerd;

on_each_containerd!(runc_handler_pod, podnet_handler_pod);

fn in_subnet(ip: &str, prefix: [u8; 2]) -> bool {
    // In <prefix>.0.0/16, not the network address nor the gateway (.0.1).
    ip.parse::<Ipv4Addr>().is_ok_and(|a| a.octets()[..2] == prefix && !matches!(a.octets()[2..], [0, 0] | [0, 1]))
}

fn one_pod(f: Flavour, handler: &str, prefix: [u8; 2]) {
    let t0 = Instant::now();
    let n = CriNode::on(f, handler);
    eprintln!("node up: {:?}", t0.elapsed());
    let v = n.client().version().expect("Version");
    eprintln!("runtime {} {} (CRI {})", v.runtime_name, v.runtime_version, v.runtime_api_version);

    let pod_cfg = n.pod_config("smoke");
    let t = Instant::now();
    let pod = n
        .client()
        .run_pod_sandbox(&pod_cfg, handler)
        .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", n.c().log_tail(80)));
    eprintln!("RunPodSandbox: {:?}", t.elapsed());
    let ip = n.pod_ip(&pod);
    assert!(in_subnet(&ip, prefix), "pod IP {ip:?} not in {}.{}.0.0/16", prefix[0], prefix[1]);
    let netns = n.netns_path(&pod);
    eprintln!("pod {pod}: ip {ip}, netns {netns:?}");
    if handler == HANDLER_PODNET {
        eprintln!("podnet shims of the pod: {:?}", n.shim_pids_for(&pod));
    }

    let ctr_cfg = container_config("sleeper", &["sleep", "3600"]);
    let ctr = n
        .client()
        .create_container(&pod, &ctr_cfg, &pod_cfg)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", n.c().log_tail(60)));
    n.client().start_container(&ctr).unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", n.c().log_tail(60)));
    let st = n.client().container_status(&ctr).expect("ContainerStatus").status.expect("status");
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32, "{st:?}");

    let (out, err, code) = n
        .client()
        .exec_sync(&ctr, &["echo", "hi"], 10)
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", n.c().log_tail(60)));
    assert_eq!((out.as_str(), code), ("hi\n", 0), "stderr: {err}");
    // The container sees the pod's address.
    let (out, _, code) =
        n.client().exec_sync(&ctr, &["ip", "-4", "-o", "addr", "show", "eth0"], 10).expect("ExecSync ip");
    assert_eq!(code, 0);
    assert!(out.contains(&format!("inet {ip}/")), "eth0 of the container: {out}");

    n.client().stop_container(&ctr, 0).expect("StopContainer");
    n.client().remove_container(&ctr).expect("RemoveContainer");
    let t = Instant::now();
    n.client().stop_pod_sandbox(&pod).unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", n.c().log_tail(60)));
    eprintln!("StopPodSandbox: {:?}", t.elapsed());
    n.client().remove_pod_sandbox(&pod).expect("RemovePodSandbox");
    n.finish();
}

fn runc_handler_pod(f: Flavour) {
    one_pod(f, HANDLER_RUNC, [10, 88]);
}

fn podnet_handler_pod(f: Flavour) {
    one_pod(f, HANDLER_PODNET, [10, 89]);
}
