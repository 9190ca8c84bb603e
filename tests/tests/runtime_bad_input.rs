//! Bundles the runtime must refuse: create fails with an error naming the offending file and
//! field, and leaves nothing behind (cgroup, mount, process, namespace, runtime state).
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use podnet_runtime::{CreateOptions, Error, Status, StdioConfig};
use podnet_tests::oci::Spec;
use podnet_tests::rt::{quiesce, Reader, RtEnv};
use serde_json::json;

fn opts() -> CreateOptions {
    CreateOptions { stdio: StdioConfig::null(), ..Default::default() }
}

/// Creates `id` from `bundle`, which must fail; returns the error and its text.
fn create_err(env: &RtEnv, id: &str, bundle: &Path) -> (Error, String) {
    quiesce();
    match env.runtime.create(id, bundle, opts()) {
        Ok(c) => {
            let _ = c.delete();
            panic!("create {id} from {} succeeded", bundle.display());
        }
        Err(e) => {
            let text = e.to_string();
            eprintln!("{id}: {text}");
            (e, text)
        }
    }
}

/// Writes `spec` as a bundle, creates from it (which must fail), and returns the error text,
/// after checking it names the bundle's config.json.
fn spec_err(env: &RtEnv, id: &str, spec: &Spec) -> String {
    let bundle = env.bundle(spec);
    let (_, text) = create_err(env, id, &bundle);
    assert!(no_state(env), "state left for {id}");
    text
}

fn config(bundle: &Path) -> String {
    bundle.join("config.json").display().to_string()
}

fn no_state(env: &RtEnv) -> bool {
    fs::read_dir(env.runtime.root())
        .map(|d| d.filter_map(|e| e.ok()).all(|e| e.file_name().to_string_lossy().starts_with('.')))
        .unwrap_or(true)
}

#[test]
#[ignore = "needs root"]
fn malformed_and_missing_config() {
    let env = RtEnv::new("badjson");
    // Truncated JSON.
    let bundle = env.bundle(&env.spec(&["true"]));
    let text = fs::read_to_string(bundle.join("config.json")).unwrap();
    fs::write(bundle.join("config.json"), &text[..text.len() / 2]).unwrap();
    let (e, msg) = create_err(&env, "trunc", &bundle);
    assert!(matches!(e, Error::Spec { .. }), "{e:?}");
    assert!(msg.starts_with(&config(&bundle)), "{msg}");
    assert!(msg.contains("EOF") && msg.contains("line"), "{msg}");

    // No config.json at all.
    let bundle = env.dir.path().join("empty-bundle");
    fs::create_dir_all(&bundle).unwrap();
    let (e, msg) = create_err(&env, "missing", &bundle);
    assert!(matches!(e, Error::Spec { .. }), "{e:?}");
    assert!(msg.contains(&config(&bundle)), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    // A bundle directory that does not exist.
    let (_, msg) = create_err(&env, "nobundle", Path::new("/nonexistent/podnet-bundle"));
    assert!(msg.contains("/nonexistent/podnet-bundle/config.json"), "{msg}");

    // A config.json of the wrong shape: a string where an array goes.
    let mut spec = env.spec(&["true"]);
    spec.value_mut()["process"]["args"] = json!("true");
    let bundle = env.bundle(&spec);
    let (_, msg) = create_err(&env, "shape", &bundle);
    assert!(msg.contains(&format!("{}: process.args", config(&bundle))), "{msg}");
    assert!(no_state(&env));
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn missing_rootfs() {
    let env = RtEnv::new("noroot");
    let mut spec = env.spec(&["true"]);
    spec.value_mut()["root"]["path"] = json!("/nonexistent/podnet-rootfs");
    let msg = spec_err(&env, "noroot", &spec);
    assert!(msg.contains("root.path: /nonexistent/podnet-rootfs"), "{msg}");

    // Relative to the bundle, as OCI says: "rootfs" in a bundle that has none.
    let mut spec = env.spec(&["true"]);
    spec.value_mut()["root"]["path"] = json!("rootfs");
    let bundle = env.bundle(&spec);
    let (_, msg) = create_err(&env, "relroot", &bundle);
    assert!(msg.contains(&format!("root.path: {}", bundle.join("rootfs").display())), "{msg}");

    // A file, not a directory.
    let mut spec = env.spec(&["true"]);
    spec.value_mut()["root"]["path"] = json!("/etc/hostname");
    let msg = spec_err(&env, "fileroot", &spec);
    assert!(msg.contains("root.path") && msg.contains("not a directory"), "{msg}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn bad_namespace_paths() {
    let env = RtEnv::new("badns");
    let nope = PathBuf::from("/run/netns/podnet-does-not-exist");
    let msg = spec_err(&env, "nons", &env.spec(&["true"]).namespace("network", Some(&nope)));
    // The network namespace is the second entry of runc's list.
    assert!(msg.contains(&format!("linux.namespaces[1].path: {}", nope.display())), "{msg}");

    let msg = spec_err(&env, "kindns", &env.spec(&["true"]).namespace("network", Some(Path::new("/proc/self/ns/uts"))));
    assert!(msg.contains("linux.namespaces[1].path"), "{msg}");
    assert!(msg.contains("is a uts namespace, not network"), "{msg}");

    // Not a namespace file at all.
    let msg = spec_err(&env, "filens", &env.spec(&["true"]).namespace("ipc", Some(Path::new("/etc/hostname"))));
    assert!(msg.contains("linux.namespaces[2].path") && msg.contains("not a namespace file"), "{msg}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn unknown_capability() {
    let env = RtEnv::new("badcap");
    let msg = spec_err(&env, "badcap", &env.spec(&["true"]).capabilities(&["CAP_KILL", "CAP_BOGUS"]));
    assert!(msg.contains("process.capabilities."), "{msg}");
    assert!(msg.contains("[1]"), "the index of the bad entry: {msg}");
    assert!(msg.contains("unknown capability `CAP_BOGUS`"), "{msg}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn empty_args_and_relative_cwd() {
    let env = RtEnv::new("badproc");
    let msg = spec_err(&env, "noargs", &env.spec(&[]));
    assert!(msg.contains("process.args"), "{msg}");
    let msg = spec_err(&env, "emptyarg", &env.spec(&[""]));
    assert!(msg.contains("process.args"), "{msg}");
    let msg = spec_err(&env, "relcwd", &env.spec(&["true"]).cwd("tmp"));
    assert!(msg.contains("process.cwd"), "{msg}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn missing_binary_fails_at_create() {
    let env = RtEnv::new("nobin");
    let msg = spec_err(&env, "nobin", &env.spec(&["/opt/podnet-no-such-binary", "x"]));
    assert!(msg.contains("podnet-no-such-binary"), "{msg}");
    // Found through PATH, or not at all.
    let msg = spec_err(&env, "nobin2", &env.spec(&["podnet-no-such-command"]));
    assert!(msg.contains("podnet-no-such-command"), "{msg}");
    env.finish();
}

/// Runs `f` on this thread, aborting the whole test process if it takes longer than `limit`
/// (a hang would otherwise block the test run forever).
fn within<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let (tx, rx) = mpsc::channel::<()>();
    let what = what.to_string();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("{what} hung for {limit:?}: aborting");
            std::process::abort();
        }
    });
    let out = f();
    let _ = tx.send(());
    let _ = watchdog.join();
    out
}

#[test]
#[ignore = "needs root"]
fn negative_oom_score_adj_is_refused_or_applied_never_hangs() {
    let env = RtEnv::new("negoom");
    let out = env.fifo("out");
    let reader = Reader::open(&out);
    let bundle = env.bundle(&env.spec(&["cat", "/proc/self/oom_score_adj"]).oom_score_adj(-500));
    let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
    quiesce();
    let result = within(Duration::from_secs(60), "create with oomScoreAdj -500", || {
        env.runtime.create("negoom", &bundle, CreateOptions { stdio, ..Default::default() })
    });
    match result {
        Ok(c) => {
            within(Duration::from_secs(60), "running the oomScoreAdj -500 container", || {
                c.start().expect("start");
                assert_eq!(c.wait().expect("wait").code, 0);
                c.delete().expect("delete");
            });
            assert_eq!(reader.text().trim(), "-500");
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("refused: {msg}");
            assert!(msg.contains("oomScoreAdj"), "{msg}");
            assert!(no_state(&env));
            // The reader sees EOF once the create's writer is gone.
            drop(reader);
        }
    }
    env.finish();
}

/// Without systemd (this machine's PID 1 is not), a `slice:prefix:name` path is used as runc's
/// cgroupfs driver uses it: a directory of that name below the caller's own cgroup. Asking for
/// the systemd driver there is a clear error that leaves nothing.
#[test]
#[ignore = "needs root"]
fn systemd_cgroups_path_without_systemd() {
    if podnet_runtime::cgroup::systemd_booted() {
        eprintln!("skipped here: systemd runs this host (tests/tests/systemd_node.rs covers the driver)");
        return;
    }
    let env = RtEnv::new("sdcg");
    let path = format!("podnet-test-{}.slice:cri-containerd:sdcg", std::process::id());
    let spec = env.spec(&["sleep", "1000"]).cgroups_path(&path);
    let bundle = env.bundle(&spec);
    quiesce();
    let c = env.runtime.create("sdcg", &bundle, opts()).expect("a systemd-form path on cgroupfs");
    let dir = podnet_runtime::cgroup::in_hierarchy(Path::new("/sys/fs/cgroup/pids"), Path::new(&path));
    assert_eq!(c.cgroup_dir(), Path::new(&path));
    let procs = fs::read_to_string(dir.join("cgroup.procs")).expect("the literal cgroup directory");
    assert!(procs.lines().any(|l| l == c.pid().to_string()), "{procs}");
    c.delete().expect("delete");
    assert!(!dir.exists(), "{} left", dir.display());

    // systemd asked for where none runs.
    let bundle = env.bundle(&spec);
    quiesce();
    let asked = CreateOptions { systemd_cgroup: Some(true), ..opts() };
    let msg = match env.runtime.create("sdcg2", &bundle, asked) {
        Ok(c) => {
            let _ = c.delete();
            panic!("systemd_cgroup = true without systemd succeeded");
        }
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("linux.cgroupsPath") && msg.contains("systemd is not running"), "{msg}");
    assert!(no_state(&env), "state left");
    assert!(!dir.exists(), "{} left", dir.display());
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn invalid_id_is_refused() {
    let env = RtEnv::new("badid");
    let bundle = env.bundle(&env.spec(&["true"]));
    for id in ["", "../x", "a/b", ".hidden"] {
        let (e, msg) = create_err(&env, id, &bundle);
        assert!(matches!(e, Error::InvalidId(_)), "{id:?}: {msg}");
    }
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn duplicate_id_leaves_the_first_working() {
    let env = RtEnv::new("dup");
    let first = env.bundle(&env.spec(&["sleep", "1000"]));
    quiesce();
    let c = env.runtime.create("dup", &first, opts()).expect("create first");
    let second = env.bundle(&env.spec(&["true"]));
    let (e, msg) = create_err(&env, "dup", &second);
    assert!(matches!(e, Error::AlreadyExists(ref id) if id == "dup"), "{msg}");
    assert!(env.runtime.root().join("dup").join("config.json").exists(), "the first one's state is kept");
    assert_eq!(c.status(), Status::Created);
    c.start().expect("start first");
    assert_eq!(c.status(), Status::Running);
    assert_eq!(c.pids().expect("pids"), vec![c.pid()]);
    // SIGKILL: the container's pid 1 ignores signals it has no handler for.
    c.kill(libc::SIGKILL, false).expect("kill");
    assert_eq!(c.wait().expect("wait").signal, Some(libc::SIGKILL));
    c.delete().expect("delete");
    // The id is free again.
    quiesce();
    let c = env.runtime.create("dup", &second, opts()).expect("create again");
    c.start().expect("start");
    assert_eq!(c.wait().expect("wait").code, 0);
    c.delete().expect("delete");
    env.finish();
}
