//! The pause sandbox and app containers in container mode (root).
use std::fs;
use std::time::Duration;

use podnet_runtime::{NsMode, SandboxConfig, Status, StdioConfig};
use podnet_tests::rt::{Reader, RtEnv};

fn sandbox_cfg(env: &RtEnv, share_pid: bool) -> SandboxConfig {
    SandboxConfig {
        network: NsMode::Path(env.ns.path.clone()),
        share_pid,
        hostname: Some("pod-a".into()),
        cgroups_path: Some(env.cgroup("pause")),
        ..SandboxConfig::default()
    }
}

fn ns_link(pid: i32, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).map(|p| p.display().to_string()).unwrap_or_default()
}

/// Runs `script` in a new member of `pod` and returns its stdout once it exits.
fn run_in_pod(env: &RtEnv, pod: &podnet_tests::rt::Pod, id: &str, spec: podnet_tests::oci::Spec) -> (i32, String) {
    let out = env.fifo("out");
    let reader = Reader::open(&out);
    let bundle = env.bundle(&spec);
    let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
    let c = pod.create_container(&env.runtime, id, &bundle, stdio).expect("create member");
    c.start().expect("start member");
    let exit = c.wait().expect("wait member");
    pod.delete_container(id).expect("delete member");
    (exit.code, reader.text())
}

#[test]
#[ignore = "needs root"]
fn members_share_net_ipc_uts_with_the_pause() {
    let env = RtEnv::new("share");
    let pod = podnet_tests::rt::create_pod(&env.runtime, "share-pod", &sandbox_cfg(&env, false)).expect("create pod");
    pod.start().expect("start pod");
    let pause = pod.sandbox().pid();

    // A server in one member answers on 127.0.0.1 in the other.
    let server = env.spec(&["sh", "-c", "echo pong | nc -l -p 7000 127.0.0.1"]);
    let server_bundle = env.bundle(&server);
    let srv = pod.create_container(&env.runtime, "server", &server_bundle, StdioConfig::null()).expect("create server");
    srv.start().expect("start server");
    // The server listens once its netstat line shows up in the pod's namespace.
    assert!(podnet_tests::retry(200, Duration::from_millis(10), || env.ns.sh("cat /proc/net/tcp").contains(":1B58 ")));
    let (code, text) = run_in_pod(&env, &pod, "client", env.spec(&["nc", "127.0.0.1", "7000"]));
    assert_eq!((code, text.trim()), (0, "pong"));
    assert_eq!(srv.wait().expect("server exit").code, 0);

    // Same net, ipc, uts namespaces as the pause; hostname from the pod; IPC objects shared.
    let script = "for n in net ipc uts pid; do readlink /proc/self/ns/$n; done; hostname; \
                  touch /dev/mqueue/podnet-q; ls /dev/mqueue";
    let (code, text) = run_in_pod(&env, &pod, "first", env.spec(&["sh", "-c", script]));
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], ns_link(pause, "net"));
    assert_eq!(lines[1], ns_link(pause, "ipc"));
    assert_eq!(lines[2], ns_link(pause, "uts"));
    assert_ne!(lines[3], ns_link(pause, "pid"), "the pod does not share its PID namespace");
    assert_eq!(lines[4], "pod-a");
    let (code, text) = run_in_pod(&env, &pod, "second", env.spec(&["ls", "/dev/mqueue"]));
    assert_eq!((code, text.trim()), (0, "podnet-q"), "the second member sees the first one's message queue");
    // ... and that is the namespace the test made for the pod.
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&env.ns.path).expect("pod netns"));
    assert_eq!(ns_link(pause, "net"), format!("net:[{ino}]"));

    pod.delete().expect("delete pod");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn members_share_pids_when_asked_and_the_pause_root_is_empty() {
    let env = RtEnv::new("pidns");
    let pod = podnet_tests::rt::create_pod(&env.runtime, "pid-pod", &sandbox_cfg(&env, true)).expect("create pod");
    pod.start().expect("start pod");
    let pause = pod.sandbox().pid();

    let sleeper = env.spec(&["sleep", "1000"]);
    let sleeper_bundle = env.bundle(&sleeper);
    let s = pod.create_container(&env.runtime, "sleeper", &sleeper_bundle, StdioConfig::null()).expect("create");
    s.start().expect("start");

    // Same PID namespace: the pause is pid 1, the other member's sleep is visible.
    let (code, text) = run_in_pod(
        &env,
        &pod,
        "ps",
        env.spec(&["sh", "-c", "readlink /proc/self/ns/pid; cat /proc/1/cmdline; echo; ps -o comm"]),
    );
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], ns_link(pause, "pid"));
    assert_eq!(lines[1].trim_end_matches('\0'), "/pause");
    assert!(lines.iter().any(|l| l.trim() == "sleep"), "{text}");

    // Even with CAP_SYS_PTRACE (the most a member could have), the pause's root holds only
    // its private /dev, nothing of the host.
    let peek = env
        .spec(&[
            "sh",
            "-c",
            "ls -A /proc/1/root/; ls -A /proc/1/root/dev | tr '\\n' ' '; cat /proc/1/root/etc/hostname || echo no-etc",
        ])
        .capabilities(&["CAP_SYS_PTRACE", "CAP_KILL"]);
    let (code, text) = run_in_pod(&env, &pod, "peek", peek);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "dev", "{text}");
    assert!(!lines[1].contains("sda") && !lines[1].contains("vda") && lines[1].contains("null"), "{text}");
    assert!(text.contains("no-etc"), "{text}");
    // With the default capabilities, not even that.
    let (code, text) = run_in_pod(&env, &pod, "peek2", env.spec(&["sh", "-c", "ls /proc/1/root/ 2>&1; true"]));
    assert_eq!(code, 0);
    assert!(text.contains("Permission denied"), "{text}");

    // The pause: no capabilities, not root, no new privileges, read-only root.
    let status = fs::read_to_string(format!("/proc/{pause}/status")).expect("pause status");
    for field in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Uid:\t65535",
    ] {
        assert!(status.contains(field), "pause {field}: {status}");
    }

    // The pause is the pod's pid 1 and reaps what members orphan.
    let (code, _) = run_in_pod(&env, &pod, "orphan", env.spec(&["sh", "-c", "sleep 0.2 & exit 0"]));
    assert_eq!(code, 0);
    std::thread::sleep(Duration::from_millis(400));
    let zombies = fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|s| s.contains(") Z ") && s.split_whitespace().nth(3) == Some(&pause.to_string()))
        .count();
    assert_eq!(zombies, 0, "the pause left zombies");

    pod.delete().expect("delete pod");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn killed_member_is_reported_and_the_pause_outlives_it() {
    let env = RtEnv::new("kill");
    let pod = podnet_tests::rt::create_pod(&env.runtime, "kill-pod", &sandbox_cfg(&env, false)).expect("create pod");
    pod.start().expect("start pod");
    let b = env.bundle(&env.spec(&["sleep", "1000"]));
    let c = pod.create_container(&env.runtime, "victim", &b, StdioConfig::null()).expect("create");
    c.start().expect("start");
    assert_eq!(c.status(), Status::Running);
    c.kill(libc::SIGKILL, false).expect("kill");
    let exit = c.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (137, Some(libc::SIGKILL)));
    assert_eq!(c.status(), Status::Stopped);
    assert!(matches!(c.kill(libc::SIGTERM, false), Err(podnet_runtime::Error::Exited { .. })));
    assert_eq!(pod.sandbox().status(), Status::Running, "the pause outlives its members");
    pod.delete_container("victim").expect("delete member");
    assert_eq!(pod.sandbox().status(), Status::Running);

    // The pause exits 0 on SIGTERM.
    pod.sandbox().kill(libc::SIGTERM, false).expect("term pause");
    assert_eq!(pod.sandbox().wait().expect("pause exit").code, 0);
    pod.delete().expect("delete pod");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn deleting_the_pod_kills_and_reaps_everything() {
    let env = RtEnv::new("podrm");
    for share_pid in [false, true] {
        let pod =
            podnet_tests::rt::create_pod(&env.runtime, "rm-pod", &sandbox_cfg(&env, share_pid)).expect("create pod");
        pod.start().expect("start pod");
        let mut pids = vec![pod.sandbox().pid()];
        for name in ["a", "b"] {
            // A member with children of its own.
            let b = env.bundle(&env.spec(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]));
            let c = pod.create_container(&env.runtime, name, &b, StdioConfig::null()).expect("create");
            c.start().expect("start");
            pids.push(c.pid());
        }
        // One created but never started.
        let b = env.bundle(&env.spec(&["true"]));
        pod.create_container(&env.runtime, "unstarted", &b, StdioConfig::null()).expect("create");
        pod.delete().expect("delete pod");
        for pid in pids {
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived the pod");
        }
    }
    env.finish();
}
