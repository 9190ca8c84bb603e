//! Exit codes, signals, stdio through fifos, close-stdin, exec (with and without a terminal),
//! terminals for the init, and reaping (root).
use std::fs;
use std::path::Path;
use std::time::Duration;

use podnet_runtime::oci_spec::runtime::Process as OciProcess;
use podnet_runtime::{Container, CreateOptions, Error, Exit, Status, StdioConfig};
use podnet_tests::oci::Spec;
use podnet_tests::rt::{write_line, writer, Reader, RtEnv};
use serde_json::{json, Value};

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn create(env: &RtEnv, id: &str, spec: &Spec, stdio: StdioConfig) -> Container {
    let bundle = env.bundle(spec);
    env.runtime
        .create(id, &bundle, CreateOptions { stdio, ..Default::default() })
        .unwrap_or_else(|e| panic!("create {id}: {e}"))
}

/// Runs `spec` to its end with stdout and stderr on their own fifos.
fn run(env: &RtEnv, id: &str, spec: &Spec) -> (Exit, String, String) {
    let (out, err) = (env.fifo("out"), env.fifo("err"));
    let (r_out, r_err) = (Reader::open(&out), Reader::open(&err));
    let c = create(env, id, spec, StdioConfig { stdout: Some(out), stderr: Some(err), ..Default::default() });
    c.start().expect("start");
    let exit = c.wait().expect("wait");
    c.delete().expect("delete");
    (exit, r_out.text(), r_err.text())
}

/// An exec'd process from its OCI JSON; `extra` is merged over the defaults (root, /, PATH).
fn process(args: &[&str], extra: Value) -> OciProcess {
    let mut v = json!({
        "user": { "uid": 0, "gid": 0 },
        "args": args,
        "env": [PATH_ENV],
        "cwd": "/",
        "terminal": false
    });
    if let Value::Object(m) = extra {
        for (k, val) in m {
            v[k] = val;
        }
    }
    serde_json::from_value(v).expect("OCI process JSON")
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The PIDs whose parent is this test process.
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out: Vec<i32> = fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().nth(1) == Some(me.as_str())))
                .unwrap_or(false)
        })
        .collect();
    out.sort();
    out
}

/// Whether `pid` has a handler for `sig` (SigCgt in /proc/<pid>/status).
fn catches(pid: i32, sig: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig - 1)) != 0)
}

/// Waits until the runtime's stdin pump has taken everything written to the fifo behind
/// `w` (FIONREAD counts the bytes a pipe holds, from either end), then lets it hand them on.
fn wait_drained(w: &fs::File) {
    eventually("the stdin fifo to be drained", || {
        let mut n: libc::c_int = 0;
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(w), libc::FIONREAD, &mut n) };
        r == 0 && n == 0
    });
    std::thread::sleep(Duration::from_millis(50));
}

fn eventually(what: &str, f: impl FnMut() -> bool) {
    assert!(podnet_tests::retry(500, Duration::from_millis(10), f), "timed out waiting for {what}");
}

#[test]
#[ignore = "needs root"]
fn exit_codes_and_signals() {
    let env = RtEnv::new("exit");

    // A plain exit code.
    let (exit, _, _) = run(&env, "exit42", &env.spec(&["sh", "-c", "exit 42"]));
    assert_eq!((exit.code, exit.signal), (42, None));

    // SIGKILL: 128 + 9, and the signal reported.
    let c = create(&env, "killed", &env.spec(&["sleep", "1000"]), StdioConfig::null());
    c.start().expect("start");
    assert_eq!(c.status(), Status::Running);
    c.kill(libc::SIGKILL, false).expect("kill");
    let exit = c.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (137, Some(libc::SIGKILL)));
    assert_eq!(c.status(), Status::Stopped);
    // A kill after the exit says so.
    let e = c.kill(libc::SIGTERM, false).unwrap_err();
    assert!(matches!(e, Error::Exited { .. }), "{e:?}");
    assert!(matches!(c.kill(libc::SIGKILL, false), Err(Error::Exited { .. })));
    assert_eq!(c.delete().expect("delete").code, 137);

    // SIGTERM reaches the init (pid 1 of its namespace), whose trap decides the exit code.
    let spec = env.spec(&["sh", "-c", "trap 'exit 7' TERM; sleep 1000 & wait"]);
    let c = create(&env, "trapper", &spec, StdioConfig::null());
    c.start().expect("start");
    // A PID 1 without a handler ignores SIGTERM: send it only once the trap is set.
    eventually("the TERM trap", || catches(c.pid(), libc::SIGTERM));
    c.kill(libc::SIGTERM, false).expect("term");
    let exit = c.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (7, None));
    c.delete().expect("delete");

    // kill(all) signals every process of the container.
    let spec = env.spec(&["sh", "-c", "sleep 1000 & sleep 1000 & sleep 1000 & wait"]);
    let c = create(&env, "many", &spec, StdioConfig::null());
    c.start().expect("start");
    eventually("the three sleeps", || c.pids().map(|p| p.len() == 4).unwrap_or(false));
    let pids = c.pids().expect("pids");
    c.kill(libc::SIGTERM, true).expect("term all");
    // The sleeps die; the shell (which ignores SIGTERM as PID 1) sees its children gone.
    let exit = c.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (0, None));
    eventually("every process of the container gone", || pids.iter().all(|&p| gone(p)));
    assert!(matches!(c.kill(libc::SIGTERM, false), Err(Error::Exited { .. })));
    c.delete().expect("delete");

    env.finish();
}

#[test]
#[ignore = "needs root"]
fn stdout_and_stderr_reach_their_fifos() {
    let env = RtEnv::new("out");

    let spec = env.spec(&["sh", "-c", "echo to-out; echo to-err >&2; echo more-out; exit 3"]);
    let (exit, out, err) = run(&env, "outerr", &spec);
    assert_eq!(exit.code, 3);
    assert_eq!(out, "to-out\nmore-out\n");
    assert_eq!(err, "to-err\n");

    // A large output arrives whole.
    let spec = env.spec(&["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo done >&2"]);
    let (exit, out, err) = run(&env, "large", &spec);
    assert_eq!(exit.code, 0, "{err}");
    assert_eq!(out.len(), 1 << 20);
    assert!(out.bytes().all(|b| b == b'x'));
    assert_eq!(err, "done\n");

    // Output written by a process the init left behind still ends up in the fifo, and EOF
    // comes once the container is gone.
    let spec = env.spec(&["sh", "-c", "(sleep 0.2; echo late) & echo early"]);
    let (out, err) = (env.fifo("out"), env.fifo("err"));
    let r_out = Reader::open(&out);
    let c = create(&env, "late", &spec, StdioConfig { stdout: Some(out), stderr: Some(err), ..Default::default() });
    c.start().expect("start");
    assert_eq!(c.wait().expect("wait").code, 0);
    c.delete().expect("delete");
    assert!(r_out.text().starts_with("early\n"));

    env.finish();
}

#[test]
#[ignore = "needs root"]
fn close_stdin_ends_cat() {
    let env = RtEnv::new("stdin");
    let (inp, out) = (env.fifo("in"), env.fifo("out"));
    let r_out = Reader::open(&out);
    let c = create(
        &env,
        "cat",
        &env.spec(&["cat"]),
        StdioConfig { stdin: Some(inp.clone()), stdout: Some(out), ..Default::default() },
    );
    c.start().expect("start");
    let mut w = writer(&inp);
    write_line(&mut w, "hello stdin");
    // The client keeps its end open: only close_stdin ends the input. (Waiting for the line
    // to be through first; close_stdin_keeps_what_was_written_before covers the race.)
    wait_drained(&w);
    c.io().close_stdin();
    let exit = c.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (0, None));
    c.io().close_stdin(); // idempotent
    c.delete().expect("delete");
    drop(w);
    assert_eq!(r_out.text(), "hello stdin\n");

    // Without close_stdin, the client's close is the EOF.
    let (inp, out) = (env.fifo("in"), env.fifo("out"));
    let r_out = Reader::open(&out);
    let c = create(
        &env,
        "cat2",
        &env.spec(&["cat"]),
        StdioConfig { stdin: Some(inp.clone()), stdout: Some(out), ..Default::default() },
    );
    c.start().expect("start");
    let mut w = writer(&inp);
    write_line(&mut w, "one");
    write_line(&mut w, "two");
    drop(w);
    assert_eq!(c.wait().expect("wait").code, 0);
    c.delete().expect("delete");
    assert_eq!(r_out.text(), "one\ntwo\n");

    env.finish();
}

/// What a client wrote to the stdin fifo before close-stdin all reaches the process (as with
/// containerd's runc shim, which closes its own write side of the fifo and lets the copy
/// drain).
#[test]
#[ignore = "needs root"]
fn close_stdin_keeps_what_was_written_before() {
    let env = RtEnv::new("stdin2");
    const SIZE: usize = 512 * 1024;
    let (inp, out) = (env.fifo("in"), env.fifo("out"));
    let r_out = Reader::open(&out);
    let spec = env.spec(&["sh", "-c", "wc -c"]);
    let c =
        create(&env, "wc", &spec, StdioConfig { stdin: Some(inp.clone()), stdout: Some(out), ..Default::default() });
    c.start().expect("start");
    let mut w = writer(&inp);
    std::io::Write::write_all(&mut w, &vec![b'y'; SIZE]).expect("write stdin");
    // Everything is in the fifo or beyond: the client is done and asks for EOF.
    c.io().close_stdin();
    let exit = c.wait().expect("wait");
    drop(w);
    c.delete().expect("delete");
    assert_eq!(exit.code, 0);
    assert_eq!(r_out.text().trim(), SIZE.to_string(), "bytes the process read of the {SIZE} written");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn exec_without_terminal() {
    let env = RtEnv::new("exec");
    let c = create(&env, "host", &env.spec(&["sleep", "1000"]), StdioConfig::null());
    c.start().expect("start");

    // Environment, cwd, user and groups, stdout and stderr apart, exit code.
    let (out, err) = (env.fifo("out"), env.fifo("err"));
    let (r_out, r_err) = (Reader::open(&out), Reader::open(&err));
    let p = process(
        &["sh", "-c", "echo $FOO; pwd; id -u; id -G; echo err >&2; exit 3"],
        json!({ "env": [PATH_ENV, "FOO=bar"], "cwd": "/tmp", "user": { "uid": 1000, "gid": 1000, "additionalGids": [2000] } }),
    );
    let exec = c
        .exec("e1", &p, StdioConfig { stdout: Some(out), stderr: Some(err), ..Default::default() }, &env.runtime)
        .expect("exec");
    assert!(!exec.io().has_terminal());
    let exit = exec.wait().expect("wait exec");
    assert_eq!((exit.code, exit.signal), (3, None));
    assert_eq!(c.remove_exec("e1").expect("remove exec").map(|e| e.code), Some(3));
    assert!(c.exec_process("e1").is_none());
    assert_eq!(r_out.text(), "bar\n/tmp\n1000\n1000 2000\n");
    assert_eq!(r_err.text(), "err\n");

    // A binary that does not exist: an error naming it, and nothing left of the attempt.
    let kids = children();
    let state = env.runtime.root().join("host");
    let files = podnet_tests::files_in(&state);
    let err = match c.exec("bad", &process(&["/no-such-binary-here"], json!({})), StdioConfig::null(), &env.runtime) {
        Ok(_) => panic!("exec of a missing binary succeeded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no-such-binary-here"), "the error does not name the binary: {err}");
    assert!(c.exec_process("bad").is_none());
    assert_eq!(children(), kids, "the failed exec left processes");
    assert_eq!(podnet_tests::files_in(&state), files, "the failed exec left files");
    assert_eq!(c.status(), Status::Running);
    // The same id works afterwards.
    let ok =
        c.exec("bad", &process(&["true"], json!({})), StdioConfig::null(), &env.runtime).expect("exec after failure");
    assert_eq!(ok.wait().expect("wait").code, 0);
    c.remove_exec("bad").expect("remove");

    // Two execs running at once, each with its own output and exit.
    let (oa, ob) = (env.fifo("a"), env.fifo("b"));
    let (ra, rb) = (Reader::open(&oa), Reader::open(&ob));
    let a = c
        .exec(
            "a",
            &process(&["sh", "-c", "sleep 0.5; echo from-a; exit 11"], json!({})),
            StdioConfig { stdout: Some(oa), ..Default::default() },
            &env.runtime,
        )
        .expect("exec a");
    let b = c
        .exec(
            "b",
            &process(&["sh", "-c", "echo from-b; exit 12"], json!({})),
            StdioConfig { stdout: Some(ob), ..Default::default() },
            &env.runtime,
        )
        .expect("exec b");
    assert_ne!(a.pid(), b.pid());
    assert!(matches!(
        c.exec("a", &process(&["true"], json!({})), StdioConfig::null(), &env.runtime),
        Err(Error::AlreadyExists(_))
    ));
    // b ends while a still runs.
    assert_eq!(b.wait().expect("wait b").code, 12);
    assert!(a.process().try_wait().expect("try_wait a").is_none(), "a ended early");
    assert!(matches!(c.remove_exec("a"), Err(Error::State { .. })), "a running exec is not removed");
    assert_eq!(a.wait().expect("wait a").code, 11);
    c.remove_exec("a").expect("remove a");
    c.remove_exec("b").expect("remove b");
    assert_eq!(ra.text(), "from-a\n");
    assert_eq!(rb.text(), "from-b\n");

    c.delete().expect("delete");
    // No exec in a stopped container.
    assert!(c.exec("late", &process(&["true"], json!({})), StdioConfig::null(), &env.runtime).is_err());
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn exec_with_terminal() {
    let env = RtEnv::new("exectty");
    let c = create(&env, "host", &env.spec(&["sleep", "1000"]), StdioConfig::null());
    c.start().expect("start");

    let (inp, out) = (env.fifo("in"), env.fifo("out"));
    let r_out = Reader::open(&out);
    let p = process(
        &["sh", "-c", "read x; stty size; tty; echo got:$x"],
        json!({ "terminal": true, "env": [PATH_ENV, "TERM=xterm"] }),
    );
    let exec = c
        .exec(
            "tty",
            &p,
            StdioConfig { stdin: Some(inp.clone()), stdout: Some(out), ..Default::default() },
            &env.runtime,
        )
        .expect("exec");
    assert!(exec.io().has_terminal());
    exec.io().resize(100, 30).expect("resize");
    let mut w = writer(&inp);
    write_line(&mut w, "hello");
    let exit = exec.wait().expect("wait exec");
    assert_eq!((exit.code, exit.signal), (0, None));
    assert_eq!(c.remove_exec("tty").expect("remove").map(|e| e.code), Some(0));
    drop(w);
    let text = r_out.text();
    assert!(text.contains("30 100"), "{text:?}");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("got:hello"), "{text:?}");

    // Close-stdin on a terminal is the EOF character: `cat` ends.
    let (inp, out) = (env.fifo("in"), env.fifo("out"));
    let r_out = Reader::open(&out);
    let exec = c
        .exec(
            "cat",
            &process(&["cat"], json!({ "terminal": true })),
            StdioConfig { stdin: Some(inp.clone()), stdout: Some(out), ..Default::default() },
            &env.runtime,
        )
        .expect("exec cat");
    let mut w = writer(&inp);
    write_line(&mut w, "typed");
    wait_drained(&w);
    exec.io().close_stdin();
    let exit = exec.wait().expect("wait cat");
    assert_eq!(exit.code, 0);
    c.remove_exec("cat").expect("remove");
    drop(w);
    assert!(r_out.text().matches("typed").count() >= 2);

    // No terminal, no resize.
    let plain = c.exec("plain", &process(&["true"], json!({})), StdioConfig::null(), &env.runtime).expect("exec");
    assert!(matches!(plain.io().resize(10, 10), Err(Error::Unsupported(_))));
    plain.wait().expect("wait");
    c.remove_exec("plain").expect("remove");

    c.delete().expect("delete");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn init_with_terminal() {
    let env = RtEnv::new("inittty");
    let out = env.fifo("out");
    let r_out = Reader::open(&out);
    let spec = env.spec(&["sh", "-c", "stty size; tty"]).terminal(true);
    let c = create(&env, "tty", &spec, StdioConfig { stdout: Some(out), ..Default::default() });
    assert!(c.io().has_terminal());
    c.io().resize(80, 24).expect("resize before start");
    c.start().expect("start");
    let exit = c.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (0, None));
    c.delete().expect("delete");
    let text = r_out.text();
    assert!(text.contains("24 80"), "{text:?}");
    assert!(text.contains("/dev/pts/0") || text.contains("/dev/console"), "{text:?}");

    // Input through the terminal, and close-stdin ending it.
    let (inp, out) = (env.fifo("in"), env.fifo("out"));
    let r_out = Reader::open(&out);
    let spec = env.spec(&["sh", "-c", "read x; echo got:$x"]).terminal(true);
    let c =
        create(&env, "tty2", &spec, StdioConfig { stdin: Some(inp.clone()), stdout: Some(out), ..Default::default() });
    c.start().expect("start");
    let mut w = writer(&inp);
    write_line(&mut w, "hi");
    assert_eq!(c.wait().expect("wait").code, 0);
    drop(w);
    c.delete().expect("delete");
    assert!(r_out.text().contains("got:hi"));

    env.finish();
}

#[test]
#[ignore = "needs root"]
fn exited_processes_are_reaped() {
    let env = RtEnv::new("reap");
    let c = create(&env, "host", &env.spec(&["sh", "-c", "sleep 1000 & sleep 1000 & wait"]), StdioConfig::null());
    c.start().expect("start");
    let init = c.pid();
    eventually("the init's children", || c.pids().map(|p| p.len() == 3).unwrap_or(false));

    // An exec that exits by itself, one killed, one left running for delete.
    let quick = c.exec("quick", &process(&["true"], json!({})), StdioConfig::null(), &env.runtime).expect("exec");
    assert_eq!(quick.wait().expect("wait").code, 0);
    assert!(gone(quick.pid()), "the exited exec {} is still in /proc", quick.pid());
    c.remove_exec("quick").expect("remove");

    let killed =
        c.exec("killed", &process(&["sleep", "1000"], json!({})), StdioConfig::null(), &env.runtime).expect("exec");
    killed.process().signal(libc::SIGKILL).expect("kill exec");
    let exit = killed.wait().expect("wait");
    assert_eq!((exit.code, exit.signal), (137, Some(libc::SIGKILL)));
    assert!(gone(killed.pid()), "the killed exec {} is still in /proc", killed.pid());
    c.remove_exec("killed").expect("remove");

    let left =
        c.exec("left", &process(&["sleep", "1000"], json!({})), StdioConfig::null(), &env.runtime).expect("exec");
    let all = c.pids().expect("pids");
    assert_eq!(all.len(), 4, "{all:?}");
    // delete kills and reaps the running exec too. The init of a PID namespace finishes
    // exiting only once every process of the namespace is reaped, the exec included (a child
    // of this process): delete must not wait for the init first. Should it hang, the exec is
    // reaped here after a while so the test fails instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let exit = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = c.delete();
            let _ = tx.send(());
            r
        });
        let hung = rx.recv_timeout(Duration::from_secs(20)).is_err();
        if hung {
            let _ = left.wait();
        }
        let r = h.join().expect("delete thread");
        assert!(!hung, "delete hung waiting for the init while an exec of the container was unreaped ({r:?})");
        r
    })
    .expect("delete");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(gone(init), "the init {init} is still in /proc");
    assert!(gone(left.pid()), "the exec left running {} is still in /proc", left.pid());
    for pid in all {
        assert!(gone(pid), "{pid} of the container is still in /proc");
    }

    // An init that exits by itself, waited for and then deleted.
    let c = create(&env, "short", &env.spec(&["true"]), StdioConfig::null());
    c.start().expect("start");
    let pid = c.pid();
    assert_eq!(c.wait().expect("wait").code, 0);
    assert!(gone(pid), "the exited init {pid} is still in /proc");
    c.delete().expect("delete");

    // Created, never started, deleted.
    let c = create(&env, "unstarted", &env.spec(&["true"]), StdioConfig::null());
    let pid = c.pid();
    c.delete().expect("delete");
    assert!(gone(pid), "the unstarted init {pid} is still in /proc");

    env.finish();
}
