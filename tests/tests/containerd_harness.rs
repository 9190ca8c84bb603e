//! The containerd harness itself (root), with the stock runc shim: containerd 2.x starts in
//! the node namespace, imports the busybox image, runs a container, survives a restart with
//! a task running, hands its environment to shims, and leaves nothing behind when dropped.
use std::fs;
use std::time::{Duration, Instant};

use podnet_tests::containerd::{
    alive, busybox_image, mounts_under, processes_with_args, Containerd, ContainerdOptions,
};
use podnet_tests::leaks::{self, Snapshot};
use podnet_tests::{require_root, retry, unique, Ns};

fn ns_inode(pid: i32) -> String {
    fs::read_link(format!("/proc/{pid}/ns/net")).map(|p| p.display().to_string()).unwrap_or_default()
}

fn environ(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| b.split(|c| *c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect())
        .unwrap_or_default()
}

fn ppid(pid: i32) -> i32 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// `ctr tasks ls` as (id, pid, status) rows.
fn tasks(c: &Containerd) -> Vec<(String, i32, String)> {
    c.ctr_ok(&["tasks", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.to_string(), f.get(1)?.parse().ok()?, f.get(2)?.to_string()))
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn containerd_runs_runc_containers_restarts_and_cleans_up() {
    require_root();
    let t0 = Instant::now();
    let _serial = leaks::serial();
    // The containerd namespace doubles as the leak marker: `ctr run` puts containers in
    // cgroups `/<namespace>/<id>`.
    let marker = unique("pnch");
    // Built before the snapshot: the shared rootfs and the cached archive stay on purpose.
    podnet_tests::containerd::busybox_archive();
    let before = Snapshot::take(&marker);

    let node = Ns::new("pn");
    let mut c =
        Containerd::start(&node, ContainerdOptions::default().namespace(&marker).env("PODNET_HARNESS_MARK", &marker));
    eprintln!("containerd up in {:?} (pid {}, dir {})", t0.elapsed(), c.pid(), c.dir().display());
    assert_eq!(ns_inode(c.pid()), ns_inode_of_node(&node), "containerd is not in the node namespace");
    assert!(c.address().as_os_str().len() < 100, "socket path too long: {}", c.address().display());

    // The image: imported once per containerd (a second call does not import again).
    let image = busybox_image(&c);
    assert_eq!(busybox_image(&c), image);
    let t = Instant::now();
    let out = c.ctr_ok(&["run", "--rm", "--runtime", "io.containerd.runc.v2", image, "t1", "echo", "hello"]);
    assert_eq!(out.trim(), "hello");
    eprintln!("ctr run --rm echo hello: {:?}", t.elapsed());
    // Applets are on PATH; /etc/passwd and /etc/group are there.
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        image,
        "t1b",
        "sh",
        "-c",
        "id -un; cat /etc/group | head -1; hostname >/dev/null && echo ok",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["root", "root:x:0:", "ok"], "{out}");

    // A long-running task: its shim runs in the node namespace with containerd's environment.
    c.ctr_ok(&["run", "-d", image, "t2", "sleep", "600"]);
    let rows = tasks(&c);
    let (_, task_pid, status) =
        rows.iter().find(|r| r.0 == "t2").cloned().unwrap_or_else(|| panic!("no task t2: {rows:?}"));
    assert_eq!(status, "RUNNING");
    let shim = ppid(task_pid);
    assert_eq!(ns_inode(shim), ns_inode_of_node(&node), "the shim is not in the node namespace");
    let socket = c.shim_socket(&marker, "t2");
    assert!(socket.exists(), "no shim socket {}", socket.display());
    // containerd keeps oom_score_adj 0 (config `oom_score = 0`); the runc shim sets its own to
    // containerd's + 1, which this kernel allows (it refuses only values below 0 here).
    let oom = fs::read_to_string(format!("/proc/{shim}/oom_score_adj")).unwrap_or_default();
    eprintln!(
        "oom_score_adj: containerd {}, shim {}",
        fs::read_to_string(format!("/proc/{}/oom_score_adj", c.pid())).unwrap_or_default().trim(),
        oom.trim()
    );
    let env = environ(shim);
    assert!(env.contains(&format!("PODNET_HARNESS_MARK={marker}")), "shim environment lacks the mark: {env:?}");
    let ttrpc = format!("TTRPC_ADDRESS={}", c.ttrpc_address().display());
    assert!(env.contains(&ttrpc), "shim environment lacks {ttrpc}: {env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=") && e.contains(&c.bin_dir().display().to_string())),
        "shim PATH lacks containerd's directory: {env:?}"
    );

    // Restart: a new containerd answers, the task (and its shim) lived on and is seen again.
    let old = c.pid();
    let t = Instant::now();
    c.restart();
    eprintln!("restart: {:?}", t.elapsed());
    assert_ne!(c.pid(), old);
    assert!(c.ctr_ok(&["version"]).contains("Server:"));
    let rows = tasks(&c);
    assert!(rows.iter().any(|r| r.0 == "t2" && r.1 == task_pid && r.2 == "RUNNING"), "t2 after restart: {rows:?}");
    assert!(c.log().contains("level=debug"), "containerd logs at debug level");

    // Shutdown (what Drop does) with t2 still running: everything goes.
    let (dir, address, pid) = (c.dir().to_path_buf(), c.address().to_string_lossy().into_owned(), c.pid());
    let t = Instant::now();
    let problems = c.shutdown();
    eprintln!("shutdown: {:?}", t.elapsed());
    assert_eq!(problems, Vec::<String>::new(), "cleanup was not clean");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "containerd {pid} still exists");
    assert!(retry_gone(task_pid), "task t2 ({task_pid}) still exists");
    assert!(retry_gone(shim), "shim {shim} still exists");
    assert!(!socket.exists(), "shim socket {} left", socket.display());
    assert_eq!(processes_with_args(&["-address", &address]), Vec::<i32>::new(), "shims left");
    assert_eq!(mounts_under(&dir), Vec::<std::path::PathBuf>::new(), "mounts left");
    assert!(!dir.exists(), "{} left", dir.display());
    drop(node);
    leaks::assert_no_leaks(&before, &marker);
    eprintln!("total: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs root"]
fn drop_cleans_up_after_containerd_died() {
    require_root();
    let _serial = leaks::serial();
    let marker = unique("pnch");
    podnet_tests::containerd::busybox_archive();
    let before = Snapshot::take(&marker);
    let node = Ns::new("pn");
    let c = Containerd::start(&node, ContainerdOptions::default().namespace(&marker));
    let image = busybox_image(&c);
    c.ctr_ok(&["run", "-d", image, "t3", "sleep", "600"]);
    let rows = tasks(&c);
    let task_pid = rows.iter().find(|r| r.0 == "t3").map(|r| r.1).unwrap_or_else(|| panic!("no task t3: {rows:?}"));
    let socket = c.shim_socket(&marker, "t3");
    assert!(socket.exists(), "no shim socket {}", socket.display());
    let (dir, pid) = (c.dir().to_path_buf(), c.pid());
    // SAFETY: kill has no memory-safety preconditions; `pid` is the harness's child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(retry_gone(pid), "containerd {pid} survived SIGKILL");
    // Cleanup brings containerd back once to delete the task, then stops it.
    let problems = c.shutdown();
    assert_eq!(problems, Vec::<String>::new(), "cleanup was not clean");
    assert!(retry_gone(task_pid), "task t3 ({task_pid}) still exists");
    assert!(!socket.exists(), "shim socket {} left", socket.display());
    assert_eq!(mounts_under(&dir), Vec::<std::path::PathBuf>::new(), "mounts left");
    assert!(!dir.exists(), "{} left", dir.display());
    drop(node);
    leaks::assert_no_leaks(&before, &marker);
}

#[test]
#[ignore = "needs root"]
fn drop_kills_containers_when_containerd_cannot_come_back() {
    require_root();
    let _serial = leaks::serial();
    let marker = unique("pnch");
    podnet_tests::containerd::busybox_archive();
    let before = Snapshot::take(&marker);
    let node = Ns::new("pn");
    let c = Containerd::start(&node, ContainerdOptions::default().namespace(&marker));
    let image = busybox_image(&c);
    c.ctr_ok(&["run", "-d", image, "t4", "sleep", "600"]);
    let rows = tasks(&c);
    let task_pid = rows.iter().find(|r| r.0 == "t4").map(|r| r.1).unwrap_or_else(|| panic!("no task t4: {rows:?}"));
    let socket = c.shim_socket(&marker, "t4");
    assert!(socket.exists(), "no shim socket {}", socket.display());
    let (dir, pid) = (c.dir().to_path_buf(), c.pid());
    // A containerd that dies and cannot start again (its config is gone).
    fs::remove_file(c.config_path()).expect("remove config");
    // SAFETY: kill has no memory-safety preconditions; `pid` is the harness's child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(retry_gone(pid), "containerd {pid} survived SIGKILL");
    let problems = c.shutdown();
    assert!(problems.iter().any(|p| p.contains("restarting the dead containerd")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("killed leftover shims")), "{problems:?}");
    assert!(retry_gone(task_pid), "task t4 ({task_pid}) still exists");
    assert!(!socket.exists(), "shim socket {} left", socket.display());
    assert_eq!(mounts_under(&dir), Vec::<std::path::PathBuf>::new(), "mounts left");
    assert!(!dir.exists(), "{} left", dir.display());
    assert!(!std::path::Path::new("/run/containerd/runc").join(&marker).exists(), "runc state left");
    drop(node);
    leaks::assert_no_leaks(&before, &marker);
    let _ = fs::remove_file(dir.with_extension("log"));
}

fn ns_inode_of_node(node: &Ns) -> String {
    node.sh("readlink /proc/self/ns/net").trim().to_string()
}

/// Whether `pid` is gone (or a zombie: orphans are reaped late here) within a second.
fn retry_gone(pid: i32) -> bool {
    retry(100, Duration::from_millis(10), || !alive(pid))
}

#[test]
fn busybox_archive_is_reproducible() {
    let rootfs = podnet_tests::oci::shared_busybox_rootfs();
    let a = podnet_tests::containerd::image_layout_tar(&rootfs).expect("image layout");
    let b = podnet_tests::containerd::image_layout_tar(&rootfs).expect("image layout");
    assert!(a == b, "two builds of the busybox image differ");
    // The cached archive is one such build (unless the rootfs was rebuilt since).
    let cached = fs::read(podnet_tests::containerd::busybox_archive()).expect("read cached archive");
    assert!(
        cached == a,
        "the cached archive differs from a fresh build: bump ARCHIVE_VERSION in tests/src/containerd.rs"
    );
}
