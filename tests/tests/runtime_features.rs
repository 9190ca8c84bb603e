//! What the runtime applies from a spec, checked from inside the container (its stdout) or
//! from the host: capabilities, users, rlimits, sysctls, the root and /proc hardening,
//! devices, oom_score_adj, seccomp, hooks, AppArmor (applied, or dropped with a warning on a
//! kernel without it), and cgroups (stats, update, pids limit, pause/resume).
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use podnet_runtime::oci_spec::runtime::LinuxResources;
use podnet_runtime::{Container, CreateOptions, Status, StdioConfig};
use podnet_tests::oci::Spec;
use podnet_tests::rt::{quiesce, Reader, RtEnv};
use serde_json::json;

/// Creates container `id` from `spec` with stdout and stderr on one fifo, runs it to its exit,
/// deletes it, and returns (exit code, output).
fn run(env: &RtEnv, id: &str, spec: Spec) -> (i32, String) {
    let (c, reader) = create(env, id, spec);
    c.start().expect("start");
    let exit = c.wait().expect("wait");
    c.delete().expect("delete");
    (exit.code, reader.text())
}

/// Creates container `id` from `spec`, its stdout and stderr read by the returned reader.
fn create(env: &RtEnv, id: &str, spec: Spec) -> (Container, Reader) {
    let out = env.fifo("out");
    let reader = Reader::open(&out);
    let bundle = env.bundle(&spec);
    let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
    quiesce();
    let c = env
        .runtime
        .create(id, &bundle, CreateOptions { stdio, ..Default::default() })
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    (c, reader)
}

/// The value of `field` ("CapEff", ...) in a /proc/<pid>/status text.
fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
#[ignore = "needs root"]
fn capabilities_and_no_new_privileges() {
    let env = RtEnv::new("caps");
    // CAP_KILL is 5, CAP_NET_ADMIN 12.
    let want = format!("{:016x}", (1u64 << 5) | (1u64 << 12));
    let spec = env.spec(&["cat", "/proc/self/status"]).capabilities(&["CAP_KILL", "CAP_NET_ADMIN"]);
    let (code, text) = run(&env, "caps", spec);
    assert_eq!(code, 0, "{text}");
    for field in ["CapEff", "CapBnd", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(status_field(&text, field), want, "{field}: {text}");
    }
    assert_eq!(status_field(&text, "NoNewPrivs"), "1", "{text}");

    // The default set (runc's), and noNewPrivileges off.
    let mut spec = env.spec(&["cat", "/proc/self/status"]);
    spec.value_mut()["process"]["noNewPrivileges"] = json!(false);
    let (code, text) = run(&env, "caps2", spec);
    assert_eq!(code, 0, "{text}");
    // CAP_AUDIT_WRITE 29, CAP_KILL 5, CAP_NET_BIND_SERVICE 10.
    let default = format!("{:016x}", (1u64 << 29) | (1u64 << 5) | (1u64 << 10));
    assert_eq!(status_field(&text, "CapEff"), default, "{text}");
    assert_eq!(status_field(&text, "CapBnd"), default, "{text}");
    assert_eq!(status_field(&text, "NoNewPrivs"), "0", "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn user_and_additional_groups() {
    let env = RtEnv::new("user");
    let spec = env.spec(&["sh", "-c", "id -u; id -g; id -G; id"]).user(1000, 1000, &[2000]);
    let (code, text) = run(&env, "user", spec);
    assert_eq!(code, 0, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "1000", "{text}");
    assert_eq!(lines[1], "1000", "{text}");
    let groups: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(groups.contains(&"2000"), "{text}");
    assert!(groups.iter().all(|g| *g == "1000" || *g == "2000"), "no groups but the spec's: {text}");
    assert!(lines[3].contains("uid=1000(app)") && lines[3].contains("2000(extra)"), "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn rlimits_are_applied() {
    let env = RtEnv::new("rlim");
    let spec = env.spec(&["sh", "-c", "ulimit -n; ulimit -Hn"]).rlimit("RLIMIT_NOFILE", 123, 456);
    let (code, text) = run(&env, "rlim", spec);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.lines().collect::<Vec<_>>(), ["123", "456"], "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn sysctls_are_set_in_the_container_netns() {
    let env = RtEnv::new("sysctl");
    assert_eq!(env.ns.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "0", "a fresh netns forwards nothing");
    let spec = env.spec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).sysctl("net.ipv4.ip_forward", "1");
    let (code, text) = run(&env, "sysctl", spec);
    assert_eq!((code, text.trim()), (0, "1"), "{text}");
    assert_eq!(env.ns.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1", "set in the netns the spec names");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn hostname_is_set() {
    let env = RtEnv::new("host");
    let (code, text) = run(&env, "host", env.spec(&["hostname"]).hostname("feature-host"));
    assert_eq!((code, text.trim()), (0, "feature-host"), "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn readonly_root_masked_and_readonly_paths() {
    let env = RtEnv::new("ro");
    let script = "touch /x 2>/dev/null && echo root-rw || echo root-ro; \
                  echo kcore=$(cat /proc/kcore 2>/dev/null | wc -c); \
                  echo firmware=$(ls -A /sys/firmware 2>/dev/null | wc -l); \
                  echo 1 > /proc/sys/vm/drop_caches; \
                  echo x > /proc/sys/kernel/hostname; \
                  hostname";
    // CAP_SYS_ADMIN: only the read-only mount can stop the writes to /proc/sys.
    let spec = env.spec(&["sh", "-c", script]).capabilities(&["CAP_SYS_ADMIN"]).hostname("rohost");
    let (_, text) = run(&env, "ro", spec);
    assert!(text.contains("root-ro"), "the root is read-only: {text}");
    assert!(text.contains("kcore=0"), "/proc/kcore is masked: {text}");
    assert!(text.contains("firmware=0"), "/sys/firmware is masked: {text}");
    assert!(
        text.lines().filter(|l| l.contains("Read-only file system")).count() >= 2,
        "/proc/sys is read-only: {text}"
    );
    assert_eq!(text.lines().last(), Some("rohost"), "{text}");
    assert!(fs::metadata("/proc/kcore").map(|m| m.len() > 0).unwrap_or(true), "the host's kcore is not empty");

    // A writable root, for contrast.
    let (code, text) = run(&env, "rw", env.spec(&["sh", "-c", "touch /dev/shm/y && echo ok"]));
    assert_eq!((code, text.trim()), (0, "ok"), "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn devices_cgroup_denies_new_nodes() {
    let env = RtEnv::new("dev");
    // c 1:3 is /dev/null, which the default device rules allow (rwm) as runc's do; c 1:1
    // (/dev/mem) and b 7:0 (loop0) are in no rule, so the device cgroup denies making them.
    let script = "echo hi > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; \
                  mknod /dev/x c 1 3 && echo hi > /dev/x && echo null-node-ok; \
                  for n in 'mem c 1 1' 'loop b 7 0'; do set -- $n; \
                  if mknod /dev/$1 $2 $3 $4; then head -c 1 /dev/$1 >/dev/null && echo $1-read || echo $1-denied; \
                  else echo $1-mknod-denied; fi; done";
    let spec = env.spec(&["sh", "-c", script]).capabilities(&["CAP_MKNOD", "CAP_DAC_OVERRIDE", "CAP_SYS_RAWIO"]);
    let (_, text) = run(&env, "dev", spec);
    assert!(text.contains("null-ok"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "4"), "/dev/zero reads: {text}");
    assert!(text.contains("null-node-ok"), "an allowed device can be made: {text}");
    for dev in ["mem", "loop"] {
        assert!(!text.contains(&format!("{dev}-read")), "the device cgroup lets {dev} through: {text}");
        assert!(text.contains(&format!("{dev}-mknod-denied")) || text.contains(&format!("{dev}-denied")), "{text}");
    }
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn positive_oom_score_adj() {
    let env = RtEnv::new("oom");
    let spec = env.spec(&["sh", "-c", "cat /proc/self/oom_score_adj; cat /proc/1/oom_score_adj"]).oom_score_adj(500);
    let (code, text) = run(&env, "oom", spec);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.lines().collect::<Vec<_>>(), ["500", "500"], "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn seccomp_errno_rule() {
    let env = RtEnv::new("seccomp");
    let script = "mkdir /dev/shm/x && echo made || echo refused";
    // Without a profile, mkdir in the tmpfs works.
    let (code, text) = run(&env, "noseccomp", env.spec(&["sh", "-c", script]));
    assert_eq!((code, text.trim()), (0, "made"), "{text}");

    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [{ "names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    });
    let spec = env.spec(&["sh", "-c", &format!("{script}; touch /dev/shm/f && echo touched")]).seccomp(profile);
    let (code, text) = run(&env, "seccomp", spec);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("refused") && !text.contains("made"), "{text}");
    assert!(text.contains("Operation not permitted"), "errnoRet 1 is EPERM: {text}");
    assert!(text.contains("touched"), "other syscalls are allowed: {text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn hooks_run_in_order() {
    let env = RtEnv::new("hooks");
    let log = env.dir.path().join("hooks.log");
    let mut spec = env.spec(&["true"]);
    for kind in ["prestart", "createRuntime", "poststart", "poststop"] {
        let cmd = format!("echo {kind} >> {}", log.display());
        spec = spec.hook(kind, "/bin/sh", &["sh", "-c", &cmd]);
    }
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>();
    let (c, reader) = create(&env, "hooks", spec);
    assert_eq!(read(&log), ["prestart", "createRuntime"], "after create");
    c.start().expect("start");
    assert_eq!(read(&log), ["prestart", "createRuntime", "poststart"], "after start");
    assert_eq!(c.wait().expect("wait").code, 0);
    assert_eq!(read(&log).len(), 3, "poststop waits for delete");
    c.delete().expect("delete");
    assert_eq!(read(&log), ["prestart", "createRuntime", "poststart", "poststop"], "after delete");
    let _ = reader.text();
    env.finish();
}

/// Without AppArmor in the kernel, a profile is dropped with a warning (runc does the same);
/// with it, the profile is applied, so one that is not loaded refuses the container rather
/// than letting it run unconfined.
#[test]
#[ignore = "needs root"]
fn apparmor_profile_is_applied_or_dropped_with_a_warning() {
    let enabled = fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.starts_with('Y'));
    let env = RtEnv::new("aa");
    let mut spec = env.spec(&["echo", "ran"]);
    spec.value_mut()["process"]["apparmorProfile"] = json!("podnet-test-profile");
    if enabled {
        let bundle = env.bundle(&spec);
        quiesce();
        let refused = match env.runtime.create("aa", &bundle, CreateOptions::default()) {
            Err(e) => e.to_string(),
            Ok(c) => {
                let warnings = c.warnings().to_vec();
                let started = c.start();
                let exit = c.wait();
                let _ = c.delete();
                match started {
                    Err(e) => e.to_string(),
                    Ok(()) => panic!("ran with the unloaded AppArmor profile: {exit:?}, warnings {warnings:?}"),
                }
            }
        };
        assert!(refused.contains("AppArmor"), "the error names AppArmor: {refused}");
    } else {
        let (c, reader) = create(&env, "aa", spec);
        let warnings = c.warnings().to_vec();
        c.start().expect("start");
        let exit = c.wait().expect("wait");
        c.delete().expect("delete");
        assert_eq!((exit.code, reader.text().trim()), (0, "ran"));
        assert!(warnings.iter().any(|w| w.contains("AppArmor") && w.contains("podnet-test-profile")), "{warnings:?}");
    }
    env.finish();
}

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).expect("resources")
}

#[test]
#[ignore = "needs root"]
fn cgroup_stats_and_update() {
    let env = RtEnv::new("stats");
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo burned > /dev/shm/burned; exec sleep 1000";
    let (c, reader) = create(&env, "stats", env.spec(&["sh", "-c", script]));
    c.start().expect("start");
    let marker = PathBuf::from(format!("/proc/{}/root/dev/shm/burned", c.pid()));
    let burned = podnet_tests::retry(600, Duration::from_millis(50), || marker.exists());
    assert!(burned, "the loop ended");
    let s = c.stats().expect("stats");
    assert!(s.cpu.usage.usage_total > 0, "cpu usage {}", s.cpu.usage.usage_total);
    assert!(s.pids.current >= 1, "pids {}", s.pids.current);
    assert!(s.memory.memory.usage > 0, "memory usage {}", s.memory.memory.usage);
    assert!(!c.pids().expect("pids").is_empty());
    assert!(c.pids().expect("pids").contains(&c.pid()));

    c.update(&resources(json!({ "memory": { "limit": 64 << 20 }, "pids": { "limit": 50 } }))).expect("update");
    let s = c.stats().expect("stats after update");
    assert_eq!(s.memory.memory.limit, 64 << 20);
    assert_eq!(s.pids.limit, 50);
    // And in the cgroup files themselves (v1 or v2).
    let rel = c.cgroup_path().strip_prefix("/").unwrap().to_path_buf();
    let read = |p: PathBuf| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let mem = read(Path::new("/sys/fs/cgroup/memory").join(&rel).join("memory.limit_in_bytes"))
        .or_else(|| read(Path::new("/sys/fs/cgroup").join(&rel).join("memory.max")));
    assert_eq!(mem.as_deref(), Some("67108864"));
    let pids = read(Path::new("/sys/fs/cgroup/pids").join(&rel).join("pids.max"))
        .or_else(|| read(Path::new("/sys/fs/cgroup").join(&rel).join("pids.max")));
    assert_eq!(pids.as_deref(), Some("50"));

    c.delete().expect("delete");
    let _ = reader.text();
    assert!(c.update(&resources(json!({ "pids": { "limit": 10 } }))).is_err(), "no update after delete");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn pids_limit_stops_forks() {
    let env = RtEnv::new("pidlim");
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 100 >/dev/null 2>&1 & done; echo all-forked";
    let (c, reader) = create(&env, "pidlim", env.spec(&["sh", "-c", script]).pids_limit(3));
    assert_eq!(c.stats().expect("stats").pids.limit, 3);
    c.start().expect("start");
    let exit = c.wait().expect("wait");
    let running = c.pids().expect("pids").len();
    assert!(running <= 3, "{running} processes under a limit of 3");
    c.delete().expect("delete");
    let text = reader.text();
    assert!(!text.contains("all-forked"), "exit {exit:?}: {text}");
    assert!(text.contains("fork") || text.contains("Resource temporarily unavailable"), "{text}");
    assert_ne!(exit.code, 0, "{text}");
    env.finish();
}

/// The freezer state of the container's cgroup: v1 `freezer.state` or v2 `cgroup.freeze`.
fn frozen(c: &Container) -> Option<bool> {
    let rel = c.cgroup_path().strip_prefix("/").unwrap().to_path_buf();
    if let Ok(s) = fs::read_to_string(Path::new("/sys/fs/cgroup/freezer").join(&rel).join("freezer.state")) {
        return Some(s.trim() == "FROZEN");
    }
    fs::read_to_string(Path::new("/sys/fs/cgroup").join(&rel).join("cgroup.freeze")).ok().map(|s| s.trim() == "1")
}

#[test]
#[ignore = "needs root"]
fn pause_freezes_and_resume_thaws() {
    let env = RtEnv::new("pause");
    let script = "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.02; done";
    let (c, reader) = create(&env, "pause", env.spec(&["sh", "-c", script]));
    c.start().expect("start");
    let counter = PathBuf::from(format!("/proc/{}/root/dev/shm/count", c.pid()));
    let count = || fs::read_to_string(&counter).ok().and_then(|s| s.trim().parse::<u64>().ok());
    assert!(podnet_tests::retry(200, Duration::from_millis(20), || count().is_some_and(|n| n > 2)), "the loop runs");
    assert_eq!(frozen(&c), Some(false));

    c.pause().expect("pause");
    assert_eq!(c.status(), Status::Paused);
    assert_eq!(frozen(&c), Some(true), "the freezer says frozen");
    let a = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), a, "nothing runs while paused");
    assert!(c.pause().is_err(), "pausing twice");

    c.resume().expect("resume");
    assert_eq!(c.status(), Status::Running);
    assert_eq!(frozen(&c), Some(false));
    let after = a.unwrap_or(0);
    assert!(
        podnet_tests::retry(200, Duration::from_millis(20), || count().is_some_and(|n| n > after + 2)),
        "runs again"
    );
    assert!(c.resume().is_err(), "resuming a running container");

    // Deleting a paused container works too.
    c.pause().expect("pause again");
    c.delete().expect("delete paused");
    let _ = reader.text();
    env.finish();
}
