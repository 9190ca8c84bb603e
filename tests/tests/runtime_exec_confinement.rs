//! An exec'd process is confined exactly as the container's init (root): the seccomp profile
//! (errno rules with noNewPrivileges set and unset, a notify profile whose listener hears of the
//! init and of every exec), capabilities, NoNewPrivs, user and groups, rlimits, cgroup,
//! namespaces and oom_score_adj. The exec's process is the init's with other args, which is
//! what containerd's CRI and `ctr task exec` send.
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use podnet_runtime::{Container, CreateOptions, StdioConfig};
use podnet_tests::confinement::{confinement, field, probe, refusing_profile};
use podnet_tests::oci::Spec;
use podnet_tests::rt::{exec_process, quiesce, Reader, RtEnv};
use serde_json::{json, Value};

/// The writable directory the probe chmods (the root is read-only).
const PROBE_DIR: &str = "/dev/shm";

/// A spec whose init runs the probe, then sleeps; CAP_SYS_ADMIN so that only the profile can
/// refuse sethostname.
fn probing_spec(env: &RtEnv) -> Spec {
    let script = format!("{}; exec sleep 1000", probe(PROBE_DIR));
    env.spec(&["sh", "-c", &script]).capabilities(&["CAP_SYS_ADMIN", "CAP_KILL", "CAP_CHOWN", "CAP_SETUID"])
}

/// Creates and starts `spec` as `id`, its output going to the returned reader.
fn start(env: &RtEnv, id: &str, spec: &Spec) -> (Container, Reader) {
    let out = env.fifo("init");
    let reader = Reader::open(&out);
    let bundle = env.bundle(spec);
    let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
    let c = env.runtime.create(id, &bundle, CreateOptions { stdio, ..Default::default() }).expect("create");
    c.start().expect("start");
    (c, reader)
}

/// Checks one container: the init's confinement (read from the host) and an exec's (read by
/// the exec itself) agree line by line, the probe gives the same answers in both, and the
/// exec's namespaces, cgroup, rlimits and oom_score_adj are the init's. Returns the init's
/// confinement and probe output.
fn check_agreement(env: &RtEnv, id: &str, spec: Spec) -> (Vec<String>, String) {
    let spec = spec.rlimit("RLIMIT_NOFILE", 777, 888).oom_score_adj(300);
    let (c, init_out) = start(env, id, &spec);
    let init_pid = c.pid();
    let init_status = fs::read_to_string(format!("/proc/{init_pid}/status")).expect("init status");
    let init = confinement(&init_status);

    let (code, exec_status) = env.exec_output(&c, &spec, "status", &["cat", "/proc/self/status"]);
    assert_eq!(code, 0, "{exec_status}");
    assert_eq!(confinement(&exec_status), init, "{id}: the exec's confinement differs from the init's");

    let (_, probe) = env.exec_output(&c, &spec, "probe", &["sh", "-c", &probe(PROBE_DIR)]);

    // A long-running exec: its namespaces, cgroup, limits and oom score seen from the host.
    quiesce();
    let long =
        c.exec("long", &exec_process(&spec, &["sleep", "1000"]), StdioConfig::null(), &env.runtime).expect("exec");
    let pid = long.pid();
    for ns in ["mnt", "net", "pid", "ipc", "uts", "cgroup", "user"] {
        let of = |p: i32| fs::read_link(format!("/proc/{p}/ns/{ns}")).expect("ns link");
        assert_eq!(of(pid), of(init_pid), "{id}: the exec is not in the init's {ns} namespace");
    }
    let read = |p: i32, f: &str| fs::read_to_string(format!("/proc/{p}/{f}")).expect(f);
    assert_eq!(read(pid, "cgroup"), read(init_pid, "cgroup"), "{id}: cgroups differ");
    let nofile = |p: i32| read(p, "limits").lines().find(|l| l.starts_with("Max open files")).map(str::to_string);
    assert_eq!(nofile(pid), nofile(init_pid), "{id}: RLIMIT_NOFILE differs");
    assert!(nofile(pid).is_some_and(|l| l.contains("777") && l.contains("888")), "{:?}", nofile(pid));
    assert_eq!(read(pid, "oom_score_adj").trim(), "300", "{id}: the exec's oom_score_adj");
    assert_eq!(read(init_pid, "oom_score_adj").trim(), "300");
    let own = fs::read_to_string("/proc/self/oom_score_adj").expect("own oom_score_adj");
    assert_ne!(own.trim(), "300", "the exec's oomScoreAdj was written into the calling process");
    c.delete().expect("delete");
    let init_probe = init_out.text();
    assert_eq!(probe, init_probe, "{id}: the refused syscalls differ between the exec and the init");
    (init, init_probe)
}

#[test]
#[ignore = "needs root"]
fn exec_is_confined_as_the_init() {
    let env = RtEnv::new("execconf");

    // A profile, with noNewPrivileges unset (CRI's default, allowPrivilegeEscalation): the
    // filter goes in before the capabilities are dropped.
    let mut spec = probing_spec(&env).seccomp(refusing_profile());
    spec.value_mut()["process"].as_object_mut().expect("process").remove("noNewPrivileges");
    let (init, probe) = check_agreement(&env, "nnp-unset", spec);
    assert_eq!((field(&init, "Seccomp"), field(&init, "Seccomp_filters")), ("2", "1"), "{init:?}");
    assert_eq!(field(&init, "NoNewPrivs"), "0");
    assert!(probe.contains("hostname=1") && probe.contains("chmod=1"), "{probe}");
    assert!(probe.contains("Operation not permitted"), "{probe}");

    // The same profile with noNewPrivileges: the filter goes in right before exec. An
    // explicit `false` means unset.
    let (init, probe) = check_agreement(&env, "nnp-set", probing_spec(&env).seccomp(refusing_profile()));
    assert_eq!((field(&init, "Seccomp"), field(&init, "NoNewPrivs")), ("2", "1"), "{init:?}");
    assert!(probe.contains("hostname=1") && probe.contains("chmod=1"), "{probe}");
    let mut spec = probing_spec(&env).seccomp(refusing_profile());
    spec.value_mut()["process"]["noNewPrivileges"] = json!(false);
    let (init, _) = check_agreement(&env, "nnp-false", spec);
    assert_eq!((field(&init, "Seccomp"), field(&init, "NoNewPrivs")), ("2", "0"), "{init:?}");

    // Unconfined: no filter anywhere, and both syscalls work.
    let (init, probe) = check_agreement(&env, "unconfined", probing_spec(&env));
    assert_eq!(field(&init, "Seccomp"), "0", "{init:?}");
    assert!(probe.contains("hostname=0") && probe.contains("chmod=0"), "{probe}");

    // Another user, groups and fewer capabilities: the exec takes the process's.
    let spec = probing_spec(&env).user(1000, 1000, &[2000]).capabilities(&["CAP_KILL"]);
    let (init, _) = check_agreement(&env, "user", spec);
    assert!(field(&init, "Uid").starts_with("1000 1000"), "{init:?}");
    env.finish();
}

/// Receives one queued seccomp-listener message on `listener`: the container process state
/// (JSON) and the notify fd, which is closed here (refusing the notified syscalls with ENOSYS
/// from then on).
fn receive_notify(listener: &UnixListener) -> Value {
    listener.set_nonblocking(true).expect("nonblocking");
    let (conn, _) = listener.accept().expect("a queued listener connection");
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = [0u8; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a msghdr over buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len();
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n > 0, "recvmsg: {}", std::io::Error::last_os_error());
    // SAFETY: walking the control messages the kernel wrote into `cmsg`.
    let mut fds = Vec::new();
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    assert_eq!(fds.len(), 1, "one seccomp notify fd per message");
    drop(fds);
    serde_json::from_slice(&buf[..n as usize]).expect("container process state JSON")
}

#[test]
#[ignore = "needs root"]
fn a_seccomp_listener_hears_of_the_init_and_of_every_exec() {
    let env = RtEnv::new("execnotify");
    let socket = env.dir.path().join("listener.sock");
    let listener = UnixListener::bind(&socket).expect("bind listener");
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "listenerPath": socket,
        "listenerMetadata": "podnet-test",
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY" }]
    });
    let spec = env.spec(&["sleep", "1000"]).seccomp(profile);
    let bundle = env.bundle(&spec);
    let c = env.runtime.create("notify", &bundle, CreateOptions::default()).expect("create");
    let init = receive_notify(&listener);
    assert_eq!(init["pid"], json!(c.pid()), "{init}");
    assert_eq!((&init["metadata"], &init["fds"]), (&json!("podnet-test"), &json!(["seccompFd"])), "{init}");
    assert_eq!(init["state"]["id"], json!("notify"), "{init}");
    c.start().expect("start");

    // The exec's mkdir is notified: it waits until the listener has the fd, and fails with
    // ENOSYS once the listener closed it (a listener that answers would decide instead).
    let out = env.fifo("exec");
    let reader = Reader::open(&out);
    quiesce();
    let exec = c
        .exec(
            "mk",
            &exec_process(&spec, &["sh", "-c", "mkdir /tmp/x; echo mkdir=$?; echo ok"]),
            StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() },
            &env.runtime,
        )
        .expect("exec");
    let told = receive_notify(&listener);
    assert_eq!(told["pid"], json!(exec.pid()), "{told}");
    assert_eq!((&told["metadata"], &told["state"]["id"]), (&json!("podnet-test"), &json!("notify")), "{told}");
    assert_eq!(exec.wait().expect("wait").code, 0);
    let text = reader.text();
    assert!(text.contains("Function not implemented") && text.contains("mkdir=1"), "{text}");
    let status = fs::read_to_string(format!("/proc/{}/status", c.pid())).expect("init status");
    assert_eq!(field(&confinement(&status), "Seccomp"), "2");
    c.remove_exec("mk").expect("remove exec");
    c.delete().expect("delete");
    env.finish();
}
