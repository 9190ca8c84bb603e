//! The features podnet reports (`podnet_runtime::features()`, the shim's `-info`) held against
//! what the runtime does with a spec that uses them: namespaces (time with its offsets, user
//! with its mappings), a memory policy, mount options reported and not, seccomp architectures
//! and filter flags accepted here and not. (Recursive read-only and propagation mounts are in
//! runtime_features.rs.) Root tests.
use std::os::unix::fs::OpenOptionsExt;

use podnet_runtime::oci_spec::runtime::Features;
use podnet_runtime::{CreateOptions, StdioConfig};
use podnet_tests::oci::Spec;
use podnet_tests::rt::{quiesce, Reader, RtEnv};
use serde_json::{json, Value};

fn features() -> Value {
    let f: Features = podnet_runtime::features();
    serde_json::to_value(f).expect("features serialise")
}

fn listed(v: &Value, name: &str) -> bool {
    v.as_array().is_some_and(|a| a.iter().any(|x| x == name))
}

/// Creates, runs to its exit and deletes container `id`: Ok((exit code, output)), or the
/// create's error.
fn run(env: &RtEnv, id: &str, spec: Spec) -> Result<(i32, String), String> {
    let out = env.fifo("out");
    let reader = Reader::open(&out);
    let bundle = env.bundle(&spec);
    let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out.clone()), ..Default::default() };
    quiesce();
    let created = env.runtime.create(id, &bundle, CreateOptions { stdio, ..Default::default() });
    let c = match created {
        Ok(c) => c,
        Err(e) => {
            // The reader ends once a writer came and went; unless it already has (ENXIO then).
            let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&out);
            let _ = reader.text();
            return Err(e.to_string());
        }
    };
    c.start().expect("start");
    let exit = c.wait().expect("wait");
    c.delete().expect("delete");
    Ok((exit.code, reader.text()))
}

#[test]
#[ignore = "needs root"]
fn time_and_user_namespaces_are_what_they_say() {
    let f = features();
    assert!(listed(&f["linux"]["namespaces"], "time") && listed(&f["linux"]["namespaces"], "user"));
    let env = RtEnv::new("nsfeat");

    // A time namespace with a boottime offset of 1e6 s: /proc/uptime (boottime) shows it.
    let mut spec = env.spec(&["sh", "-c", "cat /proc/uptime; cat /proc/self/timens_offsets"]).namespace("time", None);
    spec.value_mut()["linux"]["timeOffsets"] = json!({"boottime": {"secs": 1_000_000, "nanosecs": 0}});
    let (code, text) = run(&env, "timens", spec).expect("create with a time namespace");
    assert_eq!(code, 0, "{text}");
    let uptime: f64 = text.split_whitespace().next().and_then(|u| u.parse().ok()).unwrap_or(0.0);
    assert!(uptime >= 1_000_000.0, "uptime in the time namespace: {text}");

    // A user namespace mapping root to 100000: the container's root is that host uid.
    let mut spec = env.spec(&["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u"]).namespace("user", None);
    // The test's network namespace belongs to the host's user namespace: the container gets a
    // network namespace of its own, inside its user namespace.
    spec = spec.namespace("network", None);
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    spec.value_mut()["linux"]["uidMappings"] = map.clone();
    spec.value_mut()["linux"]["gidMappings"] = map;
    let (code, text) = run(&env, "userns", spec).expect("create with a user namespace");
    assert_eq!(code, 0, "{text}");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.first().map(Vec::as_slice), Some(&["0", "100000", "65536"][..]), "uid_map: {text}");
    assert_eq!(rows.get(1).map(Vec::as_slice), Some(&["0", "100000", "65536"][..]), "gid_map: {text}");
    assert_eq!(rows.get(2).map(Vec::as_slice), Some(&["0"][..]), "{text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn a_memory_policy_is_applied() {
    let f = features();
    assert!(listed(&f["linux"]["memoryPolicy"]["modes"], "MPOL_INTERLEAVE"));
    let env = RtEnv::new("mpol");
    let mut spec = env.spec(&["sh", "-c", "grep -m1 interleave /proc/self/numa_maps || echo none"]);
    spec.value_mut()["linux"]["memoryPolicy"] = json!({"mode": "MPOL_INTERLEAVE", "nodes": "0"});
    let (code, text) = run(&env, "mpol", spec).expect("create with a memory policy");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("interleave:0"), "the init's memory is not interleaved: {text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn mount_options_reported_are_applied_and_sync_is_not_reported() {
    let f = features();
    let opts = &f["mountOptions"];
    for o in ["nosuid", "nodev", "noexec", "ro"] {
        assert!(listed(opts, o), "{o} not reported");
    }
    // libcontainer's fd-based mounts drop `sync`: it must not be reported.
    assert!(!listed(opts, "sync"), "sync is reported");
    let env = RtEnv::new("mopts");
    // On /tmp, which the shared rootfs has: a new mount point would be made in that rootfs.
    let mut spec = env.spec(&["sh", "-c", "grep ' /tmp ' /proc/mounts"]);
    spec.value_mut()["mounts"].as_array_mut().expect("mounts").push(json!({
        "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "noexec", "ro", "sync"]
    }));
    let (code, text) = run(&env, "mopts", spec).expect("create with a tmpfs");
    assert_eq!(code, 0, "{text}");
    let flags: Vec<&str> = text.split_whitespace().nth(3).unwrap_or("").split(',').collect();
    for o in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(flags.contains(&o), "{o} not applied: {text}");
    }
    assert!(!flags.contains(&"sync"), "sync is applied after all (report it): {text}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn seccomp_archs_and_flags_reported_are_the_ones_a_profile_may_use() {
    let f = features();
    let s = &f["linux"]["seccomp"];
    let env = RtEnv::new("scarch");
    let profile = |archs: Value, flags: Value| {
        json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": archs,
            "flags": flags,
            "syscalls": [{ "names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
        })
    };
    let script = "mkdir /dev/shm/x 2>/dev/null && echo made || echo refused";
    // Every reported architecture, and every supported flag, together.
    let archs = s["archs"].clone();
    let flags = s["supportedFlags"].clone();
    let spec = env.spec(&["sh", "-c", script]).seccomp(profile(archs, flags));
    let (code, text) = run(&env, "allreported", spec).expect("a profile with every reported arch and flag");
    assert_eq!((code, text.trim()), (0, "refused"), "{text}");

    // An architecture the machine's libseccomp refuses is not reported, and fails the create.
    let other = if cfg!(target_endian = "little") { "SCMP_ARCH_S390X" } else { "SCMP_ARCH_X86_64" };
    assert!(!listed(&s["archs"], other), "{other} is reported");
    let spec = env.spec(&["true"]).seccomp(profile(json!([other]), json!([])));
    let e = run(&env, "otherarch", spec).expect_err("a profile for another byte order");
    eprintln!("{other}: {e}");
    assert!(e.contains("arch"), "{e}");

    // A known flag not supported here is refused too.
    let known: Vec<&Value> = s["knownFlags"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    for flag in known.into_iter().filter(|k| !listed(&s["supportedFlags"], k.as_str().unwrap_or(""))) {
        let spec = env.spec(&["true"]).seccomp(profile(json!([]), json!([flag])));
        let e = run(&env, "unsupportedflag", spec).expect_err("an unsupported filter flag");
        eprintln!("{flag}: {e}");
        assert!(e.to_lowercase().contains("flag") || e.contains("libseccomp"), "{flag}: {e}");
    }
    env.finish();
}
