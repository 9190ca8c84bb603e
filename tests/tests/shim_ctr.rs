//! The podnet shim driven by `ctr` against a real containerd 2.x (root): standalone pods with
//! their network and port mappings, pods of several containers in one shim, exec with and
//! without a terminal, signals and exit codes, metrics, pause/resume, the events containerd
//! receives (OOM included), a containerd restart, a shim killed with SIGKILL, and bad input.
//! Every test ends with [`PodnetNode::assert_clean`] and the leak check of
//! [`PodnetNode::finish`].
use std::time::{Duration, Instant};

use podnet_tests::containerd::alive;
use podnet_tests::shim::{http_get, spawn_attached, Events, PodnetNode, RUNTIME};
use podnet_tests::{pings, retry, unique};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code `ctr task rm` reports for a task that exited non-zero ("task <id> exit with
/// non-zero exit code <n>" on stderr).
fn reported_exit(o: &std::process::Output) -> Option<u32> {
    let e = stderr(o);
    let at = e.find("exit code ")? + "exit code ".len();
    e[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// Waits until `http://host:port/path` in the node namespace serves `want`.
fn wait_served(n: &PodnetNode, host: &str, port: u16, path: &str, want: &str) {
    let mut last = None;
    let ok = retry(50, Duration::from_millis(100), || {
        last = http_get(n.node(), host, port, path);
        last.as_deref() == Some(want)
    });
    assert!(ok, "http://{host}:{port}{path} from the node: {last:?}, want {want:?}\n{}", n.c().log_tail(30));
}

#[test]
#[ignore = "needs root"]
fn run_serves_a_mapped_port_and_tears_down() {
    let t0 = Instant::now();
    let n = PodnetNode::new("run");
    eprintln!("node up: {:?}", t0.elapsed());
    let id = unique("web");
    let token = format!("served-by-{id}");
    let script = format!("mkdir -p /srv && echo {token} > /srv/index.html && exec httpd -f -p 80 -h /srv");
    let t = Instant::now();
    n.run_detached(&id, &[("podnet.io/ports", "8080:80/tcp")], &["sh", "-c", &script]);
    eprintln!("ctr run -d: {:?}", t.elapsed());

    // One shim; the pod's namespace; an address of the conflist's subnet, reserved.
    assert_eq!(n.shim_pids().len(), 1, "shims: {:?}", n.shim_pids());
    assert!(PodnetNode::netns_path(&id).exists(), "no {}", PodnetNode::netns_path(&id).display());
    let ip = n.pod_ip(&id);
    assert!(ip.starts_with(&format!("{}.", n.subnet)) && ip != n.gateway(), "pod IP {ip} not in {}.0/24", n.subnet);
    assert_eq!(n.reservations(), vec![ip.clone()]);
    let row = n.task(&id).expect("task listed");
    assert_eq!(row.status, "RUNNING");

    // The gateway answers from inside; the server answers on the pod IP and the mapped port.
    n.exec_ok(&id, &["ping", "-c1", "-W2", &n.gateway()]);
    wait_served(&n, &ip, 80, "/index.html", &token);
    wait_served(&n, &n.gateway(), 8080, "/index.html", &token);
    wait_served(&n, "127.0.0.1", 8080, "/index.html", &token);
    // A file written through exec is served too.
    n.exec_ok(&id, &["sh", "-c", "echo written-by-exec > /srv/x.txt"]);
    wait_served(&n, "127.0.0.1", 8080, "/x.txt", "written-by-exec");

    let t = Instant::now();
    n.ctr_ok(&["task", "kill", "-s", "KILL", &id]);
    n.wait_status(&id, "STOPPED", Duration::from_secs(10));
    n.ctr_ok(&["task", "rm", &id]);
    n.ctr_ok(&["container", "rm", &id]);
    eprintln!("kill + rm: {:?}", t.elapsed());
    assert!(!alive(row.pid), "the container's init {} survived", row.pid);
    assert!(http_get(n.node(), "127.0.0.1", 8080, "/index.html").is_none(), "the port is still mapped");
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}

fn ppid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[test]
#[ignore = "needs root"]
fn two_containers_of_one_pod_share_a_shim_and_the_network() {
    let t0 = Instant::now();
    let n = PodnetNode::new("pod");
    let pod = unique("pod");
    let (a, b) = (unique("a"), unique("b"));
    let ann = [("podnet.io/pod", pod.as_str())];
    // A serves on 127.0.0.1 only (retrying while the address cannot be bound, so that A stays
    // up and a missing loopback shows as such below).
    let server =
        "mkdir -p /srv && echo from-a > /srv/t && while :; do httpd -f -p 127.0.0.1:7000 -h /srv; sleep 0.1; done";
    n.run_detached(&a, &ann, &["sh", "-c", server]);
    n.run_detached(&b, &ann, &["sleep", "600"]);

    let shims = n.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let rows = n.tasks();
    for id in [&a, &b] {
        let r = rows.iter().find(|r| &r.id == id).unwrap_or_else(|| panic!("no task {id}: {rows:?}"));
        assert_eq!(r.status, "RUNNING", "{r:?}");
        assert_eq!(ppid(r.pid), shims[0], "{id}'s init is not the shim's child");
    }
    let (ip_a, ip_b) = (n.pod_ip(&a), n.pod_ip(&b));
    assert_eq!(ip_a, ip_b, "the members of a pod share its network");
    assert_eq!(n.reservations(), vec![ip_a.clone()], "one address for the pod");
    assert!(PodnetNode::netns_path(&a).exists());
    assert!(!PodnetNode::netns_path(&b).exists(), "the second member got a namespace of its own");
    // The pod's loopback is up, with 127.0.0.1 (containerd's CRI always sets it up, whatever
    // the conflist; a pod's containers talk to each other over it).
    let lo = n.exec_ok(&b, &["ip", "-o", "addr", "show", "lo"]);
    assert!(
        lo.contains("inet 127.0.0.1/8"),
        "the pod's lo has no 127.0.0.1 (is it down?): {lo}\n{}",
        n.exec_ok(&b, &["ip", "link", "show", "lo"])
    );
    // B reaches A's server on 127.0.0.1 (bound to it only).
    let mut got = String::new();
    let ok = retry(50, Duration::from_millis(100), || {
        got = stdout(&n.exec(&b, &["timeout", "5", "wget", "-q", "-O", "-", "http://127.0.0.1:7000/t"]));
        got.trim() == "from-a"
    });
    assert!(ok, "B -> 127.0.0.1:7000 of A: {got:?}");
    // Same UTS and IPC namespaces too.
    for kind in ["net", "uts", "ipc"] {
        let link = |id: &str| n.exec_ok(id, &["readlink", &format!("/proc/self/ns/{kind}")]);
        assert_eq!(link(&a), link(&b), "{kind} namespace differs");
    }

    n.remove(&b);
    assert_eq!(n.shim_pids(), shims, "the shim serves A still");
    n.remove(&a);
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs root"]
fn exec_signals_exit_codes_metrics_and_pause() {
    let t0 = Instant::now();
    let n = PodnetNode::new("exec");
    let id = unique("ex");
    let trap = "trap 'exit 3' TERM; while :; do sleep 0.1; done";
    let mut init = spawn_attached(
        n.c(),
        &n.run_args(false, &id, &[], &[], &["sh", "-c", trap]).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    n.wait_status(&id, "RUNNING", Duration::from_secs(10));

    // exec without a terminal: separate stdout and stderr, the exit code is ctr's.
    let o = n.exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert_eq!((stdout(&o).trim(), stderr(&o).trim()), ("out", "err"));
    let o = n.exec(&id, &["sh", "-c", "[ -t 1 ] && echo tty || echo no-tty"]);
    assert_eq!(stdout(&o).trim(), "no-tty");
    // exec with a terminal.
    let (code, text) = n.exec_tty(&id, &["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; tty; exit 5"]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("is-a-tty") && text.contains("/dev/pts/"), "{text:?}");
    let (code, text) = n.exec_tty(&id, &["echo", "hello-tty"]);
    assert_eq!((code, text.trim()), (0, "hello-tty"), "{text:?}");
    // A command that does not exist.
    let o = n.exec(&id, &["/no/such/binary"]);
    assert!(!o.status.success(), "{o:?}");

    // Metrics.
    let m = n.ctr_ok(&["task", "metrics", &id]);
    let usage = m
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_in_bytes").or_else(|| l.strip_prefix("memory.usage")))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no memory usage in `ctr task metrics`:\n{m}"));
    assert!(usage > 0, "{m}");
    assert!(m.lines().any(|l| l.starts_with("pids.current")), "{m}");

    // Pause and resume.
    n.ctr_ok(&["task", "pause", &id]);
    assert_eq!(n.task(&id).map(|r| r.status).as_deref(), Some("PAUSED"));
    n.ctr_ok(&["task", "resume", &id]);
    assert_eq!(n.task(&id).map(|r| r.status).as_deref(), Some("RUNNING"));
    n.exec_ok(&id, &["true"]);

    // SIGTERM to an init with a handler: its exit code, as `ctr run` (which waits for the
    // task, then deletes it) reports it.
    n.ctr_ok(&["task", "kill", "-s", "TERM", &id]);
    assert_eq!(init.wait(Duration::from_secs(10)), Some(3), "ctr run's exit code after SIGTERM");
    assert!(n.task(&id).is_none(), "ctr run left its task");
    n.ctr_ok(&["container", "rm", &id]);

    // SIGKILL of a detached task: STOPPED, and 137 is the exit code `ctr task rm` reports.
    let id2 = unique("ex");
    n.run_detached(&id2, &[], &["sh", "-c", trap]);
    n.ctr_ok(&["task", "kill", "-s", "KILL", &id2]);
    n.wait_status(&id2, "STOPPED", Duration::from_secs(10));
    let o = n.ctr(&["task", "rm", &id2]);
    assert!(o.status.success() && reported_exit(&o) == Some(137), "ctr task rm: {o:?}");
    n.ctr_ok(&["container", "rm", &id2]);
    // SIGTERM of a detached task: STOPPED with the handler's code.
    let id3 = unique("ex");
    n.run_detached(&id3, &[], &["sh", "-c", trap]);
    n.ctr_ok(&["task", "kill", &id3]);
    n.wait_status(&id3, "STOPPED", Duration::from_secs(10));
    let o = n.ctr(&["task", "rm", &id3]);
    assert!(o.status.success() && reported_exit(&o) == Some(3), "ctr task rm: {o:?}");
    n.ctr_ok(&["container", "rm", &id3]);
    drop(init);
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs root"]
fn events_arrive_in_order_and_oom_is_reported() {
    let t0 = Instant::now();
    let n = PodnetNode::new("ev");
    let events = Events::start(&n);
    let id = unique("ev");
    n.run_detached(&id, &[], &["sleep", "600"]);
    let exec_out = n.exec(&id, &["sh", "-c", "exit 4"]);
    assert_eq!(exec_out.status.code(), Some(4));
    n.ctr_ok(&["task", "pause", &id]);
    n.ctr_ok(&["task", "resume", &id]);
    n.ctr_ok(&["task", "kill", "-s", "KILL", &id]);
    n.wait_status(&id, "STOPPED", Duration::from_secs(10));
    n.ctr_ok(&["task", "rm", &id]);
    n.ctr_ok(&["container", "rm", &id]);
    assert!(events.wait_for(&id, "/tasks/delete", Duration::from_secs(5)), "no /tasks/delete: {:#?}", events.lines());
    let evs = events.task_events(&id);
    let topics: Vec<&str> = evs.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{evs:#?}"
    );
    let exec_id = evs[2].1["exec_id"].as_str().unwrap_or_default().to_string();
    assert!(!exec_id.is_empty(), "{evs:#?}");
    assert_eq!(evs[3].1["exec_id"].as_str(), Some(exec_id.as_str()));
    assert_eq!(evs[4].1["id"].as_str(), Some(exec_id.as_str()), "the first exit is the exec's: {evs:#?}");
    assert_eq!(evs[4].1["exit_status"].as_u64(), Some(4), "{evs:#?}");
    assert_eq!(evs[7].1["id"].as_str(), Some(id.as_str()), "the second exit is the init's: {evs:#?}");
    assert_eq!(evs[7].1["exit_status"].as_u64(), Some(137), "{evs:#?}");
    let init_pid = evs[0].1["pid"].as_u64();
    assert!(init_pid.is_some_and(|p| p > 0), "{evs:#?}");
    assert_eq!(evs[1].1["pid"].as_u64(), init_pid, "{evs:#?}");

    // OOM: 16 MiB limit, dd allocating a 64 MiB block.
    let oom = unique("oom");
    n.run_detached_with(
        &oom,
        &["--memory-limit", "16777216"],
        &[],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert!(events.wait_for(&oom, "/tasks/exit", Duration::from_secs(10)), "dd did not exit: {:#?}", events.lines());
    let evs = events.task_events(&oom);
    let topics: Vec<&str> = evs.iter().map(|(t, _)| t.as_str()).collect();
    let at_oom = topics.iter().position(|t| *t == "/tasks/oom");
    let at_exit = topics.iter().position(|t| *t == "/tasks/exit");
    assert!(at_oom.is_some() && at_oom < at_exit, "want /tasks/oom before /tasks/exit: {evs:#?}");
    assert_eq!(evs[at_exit.unwrap_or(0)].1["exit_status"].as_u64(), Some(137), "{evs:#?}");
    n.wait_status(&oom, "STOPPED", Duration::from_secs(5));
    n.ctr_ok(&["task", "rm", &oom]);
    n.ctr_ok(&["container", "rm", &oom]);
    drop(events);
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs root"]
fn a_pod_survives_a_containerd_restart() {
    let t0 = Instant::now();
    let mut n = PodnetNode::new("rst");
    let id = unique("rs");
    n.run_detached(
        &id,
        &[("podnet.io/ports", "8080:80")],
        &["sh", "-c", "echo up > /tmp/i; exec httpd -f -p 80 -h /tmp"],
    );
    let row = n.task(&id).expect("task");
    let ip = n.pod_ip(&id);
    let shims = n.shim_pids();
    assert_eq!(shims.len(), 1);
    wait_served(&n, "127.0.0.1", 8080, "/i", "up");

    let t = Instant::now();
    n.c_mut().restart();
    eprintln!("restart: {:?}", t.elapsed());
    let after = n.task(&id).expect("task after the restart");
    assert_eq!((after.pid, after.status.as_str()), (row.pid, "RUNNING"), "{after:?}");
    assert_eq!(n.shim_pids(), shims, "the same shim serves the pod");
    assert_eq!(n.exec_ok(&id, &["echo", "after-restart"]).trim(), "after-restart");
    assert_eq!(n.pod_ip(&id), ip);
    assert!(pings(n.node(), &ip), "the pod IP {ip} does not answer after the restart");
    wait_served(&n, "127.0.0.1", 8080, "/i", "up");

    n.remove(&id);
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs root"]
fn a_killed_shim_is_cleaned_up_by_delete() {
    let t0 = Instant::now();
    let n = PodnetNode::new("kil");
    let id = unique("kl");
    n.run_detached(&id, &[("podnet.io/ports", "8080:80")], &["sleep", "600"]);
    let row = n.task(&id).expect("task");
    let ip = n.pod_ip(&id);
    assert_eq!(n.reservations(), vec![ip]);
    let shims = n.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert!(!n.c().log().contains("containerd-shim-podnet-v2 delete"));

    // SAFETY: kill has no memory-safety preconditions; the pid is the shim of our containerd.
    assert_eq!(unsafe { libc::kill(shims[0], libc::SIGKILL) }, 0);
    let t_kill = Instant::now();
    let mut last = None;
    let noticed = retry(250, Duration::from_millis(40), || {
        last = n.task(&id);
        last.as_ref().is_none_or(|r| r.status == "STOPPED" || r.status == "UNKNOWN")
    });
    assert!(noticed, "containerd did not notice the dead shim: {last:?}\n{}", n.c().log_tail(40));
    // containerd drops the task first, then runs the shim's `delete`, then removes the bundle.
    let bundle = n.bundle(&id);
    let deleted = retry(250, Duration::from_millis(40), || !bundle.exists());
    assert!(deleted, "the bundle {} is still there\n{}", bundle.display(), n.c().log_tail(40));
    eprintln!("noticed and cleaned up after {:?}: {last:?}", t_kill.elapsed());
    if n.task(&id).is_some() {
        let o = n.ctr(&["task", "rm", &id]);
        if !o.status.success() {
            eprintln!("ctr task rm: {o:?}");
            n.ctr_ok(&["task", "rm", "--force", &id]);
        }
    }
    n.ctr_ok(&["container", "rm", &id]);
    assert!(retry(100, Duration::from_millis(20), || !alive(row.pid)), "the container's sleep {} survived", row.pid);
    assert_eq!(n.reservations(), Vec::<String>::new(), "the IP is still reserved");
    assert!(!PodnetNode::netns_path(&id).exists(), "the pod's namespace is left");
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}

#[test]
#[ignore = "needs root"]
fn bad_input_fails_clearly_and_leaves_nothing() {
    let t0 = Instant::now();
    let n = PodnetNode::new("bad");
    // A config whose conf_dir holds a corrupt conflist, through --runtime-config-path.
    let bad_dir = n.dir().join("bad.d");
    std::fs::create_dir_all(&bad_dir).expect("bad conf dir");
    let bad_file = bad_dir.join("00-broken.conflist");
    std::fs::write(&bad_file, "{\"cniVersion\": \"1.1.0\", \"name\": ").expect("write broken conflist");
    let bad_cfg = n.dir().join("bad.toml");
    std::fs::write(&bad_cfg, n.config_toml(&bad_dir)).expect("write bad config");
    let id = unique("bj");
    let cfg = bad_cfg.to_string_lossy().into_owned();
    let args = n.run_args(true, &id, &["--runtime-config-path", &cfg], &[], &["sleep", "600"]);
    let o = n.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success(), "ctr run with a broken conflist succeeded: {o:?}");
    let err = stderr(&o);
    assert!(err.contains(&bad_file.display().to_string()), "the error does not name {}: {err}", bad_file.display());
    eprintln!("broken conflist: {}", err.trim());
    if n.ctr_ok(&["container", "ls", "-q"]).lines().any(|l| l.trim() == id) {
        n.ctr_ok(&["container", "rm", &id]);
    }
    n.assert_clean();

    // A rootfs that does not exist.
    let id = unique("br");
    n.track(&id, &[]);
    let o = n.ctr(&["run", "-d", "--runtime", RUNTIME, "--rootfs", "/nonexistent/rootfs", &id, "sleep", "600"]);
    assert!(!o.status.success(), "ctr run with a missing rootfs succeeded: {o:?}");
    let err = stderr(&o);
    assert!(err.contains("/nonexistent/rootfs"), "the error does not name the rootfs: {err}");
    eprintln!("missing rootfs: {}", err.trim());
    if n.ctr_ok(&["container", "ls", "-q"]).lines().any(|l| l.trim() == id) {
        n.ctr_ok(&["container", "rm", &id]);
    }
    n.assert_clean();

    // And the node still runs a good container afterwards.
    let id = unique("ok");
    n.run_detached(&id, &[], &["sleep", "600"]);
    let ip = n.pod_ip(&id);
    assert_eq!(n.reservations(), vec![ip]);
    n.remove(&id);
    n.assert_clean();
    n.finish();
    eprintln!("total: {:?}", t0.elapsed());
}
