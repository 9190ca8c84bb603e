//! Mount propagation and recursive read-only mounts, as the runtime applies them (root): every
//! propagation name for `linux.rootfsPropagation` and for a mount's options, in both directions
//! (a mount made on the host below a volume, one made in the container), recursive read-only
//! binds, and the combinations that are refused with an error naming the field.
use std::fs;
use std::path::{Path, PathBuf};

use podnet_runtime::{Container, CreateOptions, StdioConfig};
use podnet_tests::mounts::{is_mount_point, tmpfs, umount_all, SharedTmpfs};
use podnet_tests::oci::Spec;
use podnet_tests::rt::{Reader, RtEnv};
use serde_json::{json, Value};

/// A bind mount of `source` on `dest` with `options` (`rbind` first, as CRI writes them).
fn bind(source: &Path, dest: &str, options: &[&str]) -> Value {
    json!({ "destination": dest, "type": "bind", "source": source, "options": options })
}

/// `spec` with a tmpfs on /tmp (mount points for the volumes, made inside the container and
/// not in the shared rootfs) and then `mounts`.
fn with_mounts(mut spec: Spec, mounts: Vec<Value>) -> Spec {
    let list = spec.value_mut()["mounts"].as_array_mut().expect("mounts");
    list.push(json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"] }));
    list.extend(mounts);
    spec
}

fn start(env: &RtEnv, id: &str, spec: &Spec) -> Container {
    let bundle = env.bundle(spec);
    let c = env.runtime.create(id, &bundle, CreateOptions::default()).unwrap_or_else(|e| panic!("create {id}: {e}"));
    c.start().expect("start");
    c
}

/// What crossed, for one volume: did the host's mount below the source show in the container,
/// and did the container's mount below the volume show on the host.
#[derive(Debug, PartialEq)]
struct Crossed {
    host_to_container: bool,
    container_to_host: bool,
}

/// For each `(volume in the container, its host source)`: the container mounts a tmpfs with a
/// mark file below the volume, the host mounts one below the source, and each side looks for
/// the other's mark.
fn crossings(env: &RtEnv, c: &Container, spec: &Spec, volumes: &[(&str, PathBuf)]) -> Vec<Crossed> {
    let mut out = Vec::new();
    for (i, (volume, source)) in volumes.iter().enumerate() {
        let script = format!(
            "mkdir -p {volume}/from-ctr && mount -t tmpfs ctr {volume}/from-ctr && touch {volume}/from-ctr/mark"
        );
        let (code, text) = env.exec_output(c, spec, &format!("m{i}"), &["sh", "-c", &script]);
        assert_eq!(code, 0, "mounting in {volume}: {text}");
        let host_side = source.join("from-host");
        tmpfs(&host_side);
        fs::write(host_side.join("mark"), "host").expect("host mark");
        // Propagation happens within the mount(2) call: both sides can look right away.
        let (_, seen) = env.exec_output(c, spec, &format!("l{i}"), &["sh", "-c", &format!("ls {volume}/from-host/")]);
        let container_to_host = source.join("from-ctr/mark").exists();
        out.push(Crossed { host_to_container: seen.contains("mark"), container_to_host });
    }
    out
}

#[test]
#[ignore = "needs root"]
fn propagation_in_both_directions() {
    let env = RtEnv::new("propagation");
    let shared = SharedTmpfs::new(&env.dir.path().join("vols"));
    let caps = ["CAP_SYS_ADMIN", "CAP_KILL", "CAP_AUDIT_WRITE"];

    // What CRI writes for a Bidirectional, a HostToContainer and a Private volume in one
    // container: the root rshared (the Bidirectional volume asks for it), each bind with its own
    // propagation. The Private one must stay private even under an rshared root.
    let (bidi, h2c, private) = (shared.subdir("bidi"), shared.subdir("h2c"), shared.subdir("private"));
    let mut spec = with_mounts(
        env.spec(&["sleep", "1000"]).capabilities(&caps),
        vec![
            bind(&bidi, "/tmp/bidi", &["rbind", "rshared", "rw"]),
            bind(&h2c, "/tmp/h2c", &["rbind", "rslave", "rw"]),
            bind(&private, "/tmp/private", &["rbind", "rprivate", "rw"]),
        ],
    );
    spec.value_mut()["linux"]["rootfsPropagation"] = json!("rshared");
    let c = start(&env, "three", &spec);
    let seen = crossings(
        &env,
        &c,
        &spec,
        &[("/tmp/bidi", bidi.clone()), ("/tmp/h2c", h2c.clone()), ("/tmp/private", private.clone())],
    );
    c.delete().expect("delete");
    let both = Crossed { host_to_container: true, container_to_host: true };
    let inward = Crossed { host_to_container: true, container_to_host: false };
    let neither = Crossed { host_to_container: false, container_to_host: false };
    assert_eq!(seen, [both, inward, neither], "Bidirectional, HostToContainer, Private");

    // HostToContainer alone (the root rslave, as CRI sets it), and Private alone (the root
    // as the runtime's default leaves it).
    for (name, root, options, want) in [
        ("h2c-only", Some("rslave"), "rslave", Crossed { host_to_container: true, container_to_host: false }),
        ("private-only", None, "rprivate", Crossed { host_to_container: false, container_to_host: false }),
        ("private-root", Some("rprivate"), "rprivate", Crossed { host_to_container: false, container_to_host: false }),
    ] {
        let source = shared.subdir(name);
        let mut spec = with_mounts(
            env.spec(&["sleep", "1000"]).capabilities(&caps),
            vec![bind(&source, "/tmp/vol", &["rbind", options, "rw"])],
        );
        if let Some(root) = root {
            spec.value_mut()["linux"]["rootfsPropagation"] = json!(root);
        }
        let c = start(&env, name, &spec);
        let seen = crossings(&env, &c, &spec, &[("/tmp/vol", source)]);
        c.delete().expect("delete");
        assert_eq!(seen, [want], "{name}");
    }

    // Every propagation name is taken for the root, and applied as runc applies it after
    // pivot_root: the recursive names to the whole tree (/proc included), the others to "/".
    for (name, root_tag, proc_tag) in [
        ("private", None, None),
        ("rprivate", None, None),
        ("slave", None, None),
        ("rslave", None, None),
        ("shared", Some("shared:"), None),
        ("rshared", Some("shared:"), Some("shared:")),
        ("unbindable", Some("unbindable"), None),
        ("runbindable", Some("unbindable"), Some("unbindable")),
    ] {
        let mut spec = env.spec(&["cat", "/proc/self/mountinfo"]);
        spec.value_mut()["linux"]["rootfsPropagation"] = json!(name);
        if name.ends_with("unbindable") {
            // Masked and read-only paths are bind mounts, which an unbindable tree refuses
            // (in runc as well).
            for field in ["maskedPaths", "readonlyPaths"] {
                spec.value_mut()["linux"].as_object_mut().expect("linux").remove(field);
            }
        }
        let out = env.fifo("mountinfo");
        let reader = Reader::open(&out);
        let bundle = env.bundle(&spec);
        let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
        let c = env
            .runtime
            .create(name, &bundle, CreateOptions { stdio, ..Default::default() })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        c.start().expect("start");
        assert_eq!(c.wait().expect("wait").code, 0, "rootfsPropagation {name}");
        c.delete().expect("delete");
        let info = reader.text();
        let tags = |mount_point: &str| -> String {
            info.lines()
                .filter_map(|l| l.split_once(" - ").map(|(pre, _)| pre.split(' ').collect::<Vec<_>>()))
                .find(|f| f.get(4) == Some(&mount_point))
                .map(|f| f[6..].join(" "))
                .unwrap_or_else(|| panic!("{name}: no {mount_point} in\n{info}"))
        };
        let has = |tags: &str, want: Option<&str>| match want {
            Some(w) => tags.contains(w),
            None => !tags.contains("shared:") && !tags.contains("unbindable"),
        };
        assert!(has(&tags("/"), root_tag), "{name}: / has {:?}, want {root_tag:?}", tags("/"));
        assert!(has(&tags("/proc"), proc_tag), "{name}: /proc has {:?}, want {proc_tag:?}", tags("/proc"));
    }
    let mut spec = env.spec(&["true"]);
    spec.value_mut()["linux"]["rootfsPropagation"] = json!("rsharde");
    let bundle = env.bundle(&spec);
    let err = env.runtime.create("bad", &bundle, CreateOptions::default()).err().expect("an unknown propagation");
    let err = err.to_string();
    assert!(err.contains("linux.rootfsPropagation") && err.contains("rsharde"), "{err}");
    drop(shared);
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn recursive_read_only_binds() {
    let env = RtEnv::new("rro");
    // A host tree with a mount below it: a plain `ro` bind leaves the submount writable,
    // `rro` makes every level read-only.
    let tree = env.dir.path().join("tree");
    tmpfs(&tree);
    tmpfs(&tree.join("sub"));
    assert!(is_mount_point(&tree.join("sub")));
    let probe = "for d in /tmp/ro /tmp/ro/sub /tmp/rro /tmp/rro/sub; do touch $d/f 2>/dev/null && echo $d=rw || echo $d=ro; done";
    let spec = with_mounts(
        env.spec(&["sh", "-c", probe]),
        vec![
            bind(&tree, "/tmp/ro", &["rbind", "rprivate", "ro"]),
            bind(&tree, "/tmp/rro", &["rbind", "rprivate", "rro"]),
        ],
    );
    let out = env.fifo("out");
    let reader = Reader::open(&out);
    let bundle = env.bundle(&spec);
    let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
    let c = env.runtime.create("rro", &bundle, CreateOptions { stdio, ..Default::default() }).expect("create");
    c.start().expect("start");
    assert_eq!(c.wait().expect("wait").code, 0);
    c.delete().expect("delete");
    let text = reader.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["/tmp/ro=ro", "/tmp/ro/sub=rw", "/tmp/rro=ro", "/tmp/rro/sub=ro"], "{text}");

    // Refused before anything is made, naming the mount: rro with rw, rro with a propagation
    // that keeps receiving mounts.
    for (options, needle) in [
        (vec!["rbind", "rro", "rw"], "conflicts with \"rw\""),
        (vec!["rbind", "rshared", "rro"], "needs private propagation, got \"rshared\""),
        (vec!["rbind", "rslave", "rro"], "needs private propagation, got \"rslave\""),
    ] {
        let spec = with_mounts(env.spec(&["true"]), vec![bind(&tree, "/tmp/rro", &options)]);
        let bundle = env.bundle(&spec);
        let err = env.runtime.create("refused", &bundle, CreateOptions::default()).err().expect("refused");
        let err = err.to_string();
        // The tmpfs on /tmp is mounts[7], the bind mounts[8].
        assert!(err.contains("mounts[8].options") && err.contains(needle), "{options:?}: {err}");
        assert!(!env.runtime.root().join("refused").exists(), "a refused create left its state");
    }
    umount_all(&tree);
    env.finish();
}
