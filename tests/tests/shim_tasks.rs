//! The shim's task model (`podnet_shim::task`) on real containers, without containerd: exits
//! reaped in the order containerd needs them (an exec's before its container's init), each
//! reported once, and the Waits on them answered (root).
use std::time::{Duration, Instant};

use podnet_runtime::{CreateOptions, StdioConfig};
use podnet_shim::task::{ReplyTo, Task, TaskStatus, Tasks};
use podnet_tests::rt::{exec_process, RtEnv};

/// Reaps until `n` exits came out (each process's pidfd wakes the poll; no sleeps).
fn reap_n(tasks: &mut Tasks, n: usize) -> Vec<podnet_shim::task::ExitEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} exits after 20 s: {out:?}", out.len());
        out.extend(tasks.reap());
        if out.len() < n {
            let mut fds: Vec<libc::pollfd> =
                tasks.watch_fds().into_iter().map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
            // SAFETY: a live array of pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn exits_are_reaped_execs_first_reported_once_and_waits_answered() {
    let env = RtEnv::new("tasks");
    // The init waits for its exec to end: it reads a fifo until the exec, its writer, has
    // exited (an init exiting first would kill the exec with its PID namespace).
    let spec = env.spec(&["sh", "-c", "mkfifo /dev/shm/gate; cat /dev/shm/gate; exit 3"]);
    let bundle = env.bundle(&spec);
    let c = env.runtime.create("tasks-a", &bundle, CreateOptions::default()).expect("create");
    c.start().expect("start");
    let mut tasks = Tasks::default();
    tasks.insert(
        "a".into(),
        Task {
            bundle: bundle.clone(),
            pod: "a".into(),
            sandbox: true,
            stdio: StdioConfig::null(),
            terminal: false,
            container: c,
            exit: None,
            exit_sent: false,
            rootfs: None,
            network: None,
            oom: None,
        },
    );
    assert_eq!(tasks.state("a", "").expect("state").status, TaskStatus::Running);
    let e = tasks.delete("a").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("cannot delete task \"a\": it is running"), "a running task is not deleted: {e}");
    assert_eq!(tasks.sandbox_of("a"), Some(("a".to_string(), false)));

    // An exec registered, not started: created; a Wait on it and one on the init pend.
    let proc_spec =
        exec_process(&spec, &["sh", "-c", "while [ ! -p /dev/shm/gate ]; do :; done; exec 3>/dev/shm/gate; exit 5"]);
    let add =
        |tasks: &Tasks, exec_id: &str| tasks.add_exec("a", exec_id, |_| Ok(proc_spec.clone()), |_| StdioConfig::null());
    add(&tasks, "e1").expect("add exec");
    let e = add(&tasks, "e1").expect_err("one registry: e1 is taken");
    assert_eq!(e.to_string(), "exec \"e1\" already exists");
    let e = tasks.kill("a", "e1", 9, false).expect_err("kill of an exec not started");
    assert!(e.to_string().contains("was not started"), "{e}");
    assert_eq!(tasks.state("a", "e1").expect("exec state").status, TaskStatus::Created);
    let on_init = ReplyTo { conn: 1, stream: 1 };
    let on_exec = ReplyTo { conn: 1, stream: 3 };
    assert_eq!(tasks.wait("a", "", on_init).expect("wait init"), None);
    assert_eq!(tasks.wait("a", "e1", on_exec).expect("wait exec"), None);
    assert!(tasks.wait("a", "e2", on_exec).is_err(), "no such exec");

    podnet_tests::rt::quiesce();
    let exec_pid = tasks.start("a", "e1", &env.runtime).expect("start exec");
    let e = tasks.start("a", "e1", &env.runtime).expect_err("started twice");
    assert!(e.to_string().contains("already started"), "{e}");

    let events = reap_n(&mut tasks, 2);
    let order: Vec<(&str, i32, i32)> = events.iter().map(|e| (e.exec_id.as_str(), e.pid, e.exit.code)).collect();
    let init_pid = tasks.pid_of("a").expect("pid");
    assert_eq!(order, [("e1", exec_pid, 5), ("", init_pid, 3)], "the exec's exit comes first");
    assert!(tasks.reap().is_empty(), "each exit is reported once");
    let answered: Vec<(ReplyTo, i32)> = tasks.take_answered().into_iter().map(|(to, e)| (to, e.code)).collect();
    assert_eq!(answered, [(on_exec, 5), (on_init, 3)]);
    let s = tasks.state("a", "e1").expect("exec state");
    assert_eq!((s.status, s.exit.map(|e| e.code)), (TaskStatus::Stopped, Some(5)));
    assert_eq!(tasks.state("a", "").expect("state").status, TaskStatus::Stopped);
    // Waits after the exit are answered at once.
    assert_eq!(tasks.wait("a", "", on_init).expect("wait").map(|e| e.code), Some(3));

    let e = tasks.kill("a", "", 9, false).expect_err("kill of an init that exited");
    assert!(e.to_string().contains("already finished"), "{e}");
    let ran = tasks.delete_exec("a", "e1").expect("forget e1").map(|(pid, e)| (pid, e.code));
    assert_eq!(ran, Some((exec_pid, 5)));
    assert!(tasks.delete_exec("a", "e1").is_err(), "e1 is forgotten");
    let (ended, tail, errs) = tasks.delete("a").expect("delete");
    assert_eq!((ended.pid, ended.exit.code, ended.exit_sent, ended.pending_execs.len()), (init_pid, 3, true, 0));
    assert!(errs.is_empty());
    tail.run().expect("no network: nothing left to do");
    assert!(tasks.is_empty());
    env.finish();
}
