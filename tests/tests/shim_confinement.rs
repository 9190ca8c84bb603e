//! Confinement through `ctr` and the podnet shim on a real containerd 2.x (root): a process
//! started with `ctr task exec` is confined exactly as the task's init (containerd's default
//! seccomp profile, a profile of the test's own, none; capabilities, NoNewPrivs), a bind mount
//! with `rro` is read-only at every level below it, and `rro` beside `rw` or a propagation that
//! keeps receiving mounts is refused with an error naming the mount.
use podnet_tests::confinement::{confinement, field, probe, refusing_profile};
use podnet_tests::mounts::{tmpfs, umount_all};
use podnet_tests::shim::PodnetNode;
use podnet_tests::unique;

#[test]
#[ignore = "needs root"]
fn ctr_task_exec_is_confined_as_the_init() {
    let n = PodnetNode::new("cfn");
    let profile = n.dir().join("refuse.json");
    std::fs::write(&profile, refusing_profile().to_string()).expect("write profile");
    let profile_flag = format!("--seccomp-profile={}", profile.display());
    for (name, flags) in [
        ("default-profile", vec!["--seccomp"]),
        ("own-profile", vec!["--seccomp", profile_flag.as_str()]),
        ("unconfined", vec![]),
    ] {
        let id = unique("cf");
        let mut all = vec!["--cap-add", "CAP_SYS_ADMIN"];
        all.extend(flags);
        let script = format!("({}) > /tmp/init-probe; exec sleep 600", probe("/tmp"));
        n.run_detached_with(&id, &all, &[], &["sh", "-c", &script]);
        let pid = n.task(&id).expect("task").pid;
        let init = confinement(&std::fs::read_to_string(format!("/proc/{pid}/status")).expect("init status"));
        let exec = confinement(&n.exec_ok(&id, &["cat", "/proc/self/status"]));
        assert_eq!(exec, init, "{name}: the exec's confinement differs from the init's");
        let probe = n.exec_ok(&id, &["sh", "-c", &probe("/tmp")]);
        assert_eq!(probe, n.exec_ok(&id, &["cat", "/tmp/init-probe"]), "{name}: the refused syscalls differ");
        let seccomp = format!("Seccomp: {}", field(&init, "Seccomp"));
        match name {
            "default-profile" => assert_eq!(seccomp, "Seccomp: 2"),
            "own-profile" => {
                assert_eq!(seccomp, "Seccomp: 2");
                assert!(probe.contains("hostname=1") && probe.contains("chmod=1"), "{probe}");
            }
            _ => {
                assert_eq!(seccomp, "Seccomp: 0");
                assert!(probe.contains("hostname=0") && probe.contains("chmod=0"), "{probe}");
            }
        }
        n.remove(&id);
    }
    n.assert_clean();
    n.finish();
}

#[test]
#[ignore = "needs root"]
fn rro_binds_through_ctr() {
    let n = PodnetNode::new("rro");
    let tree = n.dir().join("tree");
    tmpfs(&tree);
    tmpfs(&tree.join("sub"));
    let src = tree.display().to_string();
    let id = unique("ro");
    let mounts = [
        "--mount".to_string(),
        format!("type=bind,src={src},dst=/ro,options=rbind:ro"),
        "--mount".to_string(),
        format!("type=bind,src={src},dst=/rro,options=rbind:rro"),
    ];
    let flags: Vec<&str> = mounts.iter().map(String::as_str).collect();
    n.run_detached_with(&id, &flags, &[], &["sleep", "600"]);
    let script = "for d in /ro /ro/sub /rro /rro/sub; do touch $d/f 2>/dev/null && echo $d=rw || echo $d=ro; done";
    let out = n.exec_ok(&id, &["sh", "-c", script]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["/ro=ro", "/ro/sub=rw", "/rro=ro", "/rro/sub=ro"], "{out}");
    n.remove(&id);

    for (options, needle) in
        [("rbind:rro:rw", "conflicts with \"rw\""), ("rbind:rslave:rro", "needs private propagation")]
    {
        let id = unique("rf");
        let args = n.run_args(
            true,
            &id,
            &["--mount", &format!("type=bind,src={src},dst=/rro,options={options}")],
            &[],
            &["true"],
        );
        let o = n.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success() && err.contains(needle) && err.contains(".options"), "{options}: {o:?}");
        if n.ctr_ok(&["container", "ls", "-q"]).lines().any(|l| l.trim() == id) {
            n.ctr_ok(&["container", "rm", &id]);
        }
        n.assert_clean();
    }
    umount_all(&tree);
    n.finish();
}
