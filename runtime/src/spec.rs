//! Reading a bundle's config.json and turning it into the spec libcontainer runs.
//!
//! Everything a user can get wrong is checked here, before anything is created, and reported
//! with the JSON path of the offending field. The spec is then adapted: namespaces joined
//! through a sandbox handle, AppArmor dropped with a warning where the kernel has none,
//! `oomScoreAdj` taken out (the runtime applies it to the container's init itself: libcontainer
//! would write it to the calling process, which here is the long-lived shim).
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Process, Spec};

use crate::cgroup::{self, Driver};
use crate::error::{Error, Result};

/// `ioctl(NS_GET_NSTYPE)`: which kind of namespace an nsfs file is.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";

/// A spec checked and adapted for libcontainer, with what was taken out of it.
#[derive(Debug)]
pub struct Prepared {
    pub spec: Spec,
    pub oom_score_adj: Option<i32>,
    pub warnings: Vec<String>,
    /// The cgroup driver of `linux.cgroupsPath` (see `cgroup::choose`).
    pub driver: Driver,
    /// The container joins a PID namespace: its v1 `cgroup` mounts are rewritten once its
    /// cgroup directory is known ([`rewrite_v1_cgroup_mounts`]).
    pub joins_pid: bool,
}

/// Reads `<bundle>/config.json`. A malformed file is reported with the JSON path and the
/// position of the problem; an unknown enum value (a capability, an rlimit, a namespace type)
/// is named as such.
pub fn load(bundle: &Path) -> Result<Spec> {
    let file = bundle.join("config.json");
    let bytes = fs::read(&file).map_err(|e| {
        let what = if bundle.is_dir() { "cannot read it" } else { "the bundle directory is missing" };
        Error::spec(&file, "config.json", format!("{what}: {e}"))
    })?;
    parse(&file, &bytes)
}

pub fn parse(file: &Path, bytes: &[u8]) -> Result<Spec> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize::<_, Spec>(de).map_err(|err| {
        let field = match err.path().to_string() {
            p if p == "." => "config.json".to_string(),
            p => p,
        };
        let inner = err.inner();
        let mut msg = inner.to_string();
        // serde lists every accepted value after an unknown one; keep the message readable.
        if let Some(i) = msg.find(", expected one of") {
            let pos = msg.rfind(" at line").map(|j| msg[j..].to_string()).unwrap_or_default();
            msg.truncate(i);
            msg.push_str(&pos);
        }
        if field.starts_with("process.capabilities") {
            // oci-spec says "no variant for CAP_X (converted to X)"; name it plainly.
            if let Some(rest) = msg.strip_prefix("no variant for ") {
                let name = rest.split(' ').next().unwrap_or(rest).to_string();
                let pos = msg.rfind(" at line").map(|j| msg[j..].to_string()).unwrap_or_default();
                msg = format!("unknown capability `{name}`{pos}");
            }
        }
        Error::spec(file, field, msg)
    })
}

/// Checks `spec` (read from `file` in `bundle`) of container `id` and adapts it for
/// libcontainer. `systemd_cgroup` is podnet's setting of that name (see `cgroup::choose`); a
/// spec that names no cgroupsPath gets `/podnet/<id>` on cgroupfs.
pub fn prepare(mut spec: Spec, bundle: &Path, file: &Path, id: &str, systemd_cgroup: Option<bool>) -> Result<Prepared> {
    let bad = |field: &str, msg: String| Error::spec(file, field, msg);
    let mut warnings = Vec::new();

    if !spec.version().starts_with("1.") {
        return Err(bad("ociVersion", format!("{:?} is not supported (1.x is)", spec.version())));
    }

    // The root file system, resolved against the bundle as the OCI spec says.
    let root = spec.root().as_ref().ok_or_else(|| bad("root", "missing".into()))?;
    let root_path = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    match fs::metadata(&root_path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("root.path", format!("{} is not a directory", root_path.display()))),
        Err(e) => return Err(bad("root.path", format!("{}: {e}", root_path.display()))),
    }
    let mut root = root.clone();
    root.set_path(root_path);
    spec.set_root(Some(root));

    let mut process = spec.process().clone().ok_or_else(|| bad("process", "missing".into()))?;
    let oom_score_adj = prepare_process(&mut process, &mut warnings).map_err(|(f, m)| bad(f, m))?;
    spec.set_process(Some(process));

    if let Some(mounts) = spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            check_mount_options(m.options().as_deref().unwrap_or_default())
                .map_err(|msg| bad(&format!("mounts[{i}].options"), msg))?;
        }
    }

    let linux = spec.linux().as_ref().ok_or_else(|| bad("linux", "missing".into()))?;
    let mut linux = linux.clone();
    match linux.rootfs_propagation().as_deref() {
        Some("") => {
            linux.set_rootfs_propagation(None);
        }
        Some(p) if !PROPAGATIONS.contains(&p) => {
            return Err(bad(
                "linux.rootfsPropagation",
                format!("{p:?} is not a propagation type (one of {})", PROPAGATIONS.join(", ")),
            ));
        }
        _ => {}
    }
    if let Some(namespaces) = linux.namespaces() {
        let mut seen = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            if seen.contains(&ns.typ()) {
                return Err(bad(
                    &format!("linux.namespaces[{i}]"),
                    format!("{} namespace listed twice", ns_name(ns.typ())),
                ));
            }
            seen.push(ns.typ());
            if let Some(path) = ns.path() {
                check_namespace_path(path, ns.typ()).map_err(|msg| bad(&format!("linux.namespaces[{i}].path"), msg))?;
            }
        }
    }
    let (driver, cgroup_path) = cgroup::choose(
        id,
        linux.cgroups_path().as_deref().filter(|p| !p.as_os_str().is_empty()),
        systemd_cgroup,
        cgroup::systemd_booted(),
        &format!("/podnet/{id}"),
    )
    .map_err(|msg| bad("linux.cgroupsPath", msg))?;
    linux.set_cgroups_path(Some(cgroup_path));
    let joins_pid = linux
        .namespaces()
        .as_ref()
        .is_some_and(|n| n.iter().any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_some()));
    spec.set_linux(Some(linux));

    Ok(Prepared { spec, oom_score_adj, warnings, driver, joins_pid })
}

/// Every mount propagation name of the OCI runtime spec, for `linux.rootfsPropagation` and for
/// mount options.
pub const PROPAGATIONS: [&str; 8] =
    ["private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"];

/// Checks and adapts a process (`process` of a container's spec, or an exec's) the same way for
/// an init and for an exec, so that both run under the same rules:
/// something to run, an absolute cwd, AppArmor skipped with a warning where the kernel has none.
/// `oomScoreAdj` is taken out and returned: libcontainer would write it into the calling
/// process (the shim), so the runtime writes it to the new process itself. An explicit
/// `noNewPrivileges: false` becomes unset, which is what it means: libcontainer installs a
/// seccomp profile before dropping capabilities only when the field is unset, and after it
/// (where installing fails without CAP_SYS_ADMIN) when it is false.
pub(crate) fn prepare_process(
    process: &mut Process,
    warnings: &mut Vec<String>,
) -> std::result::Result<Option<i32>, (&'static str, String)> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(("process.args", "empty: nothing to run".into())),
    }
    if !process.cwd().is_absolute() {
        return Err(("process.cwd", format!("{} is not absolute", process.cwd().display())));
    }
    let oom_score_adj = process.oom_score_adj();
    process.set_oom_score_adj(None);
    if process.no_new_privileges() == Some(false) {
        process.set_no_new_privileges(None);
    }
    if let Some(profile) = process.apparmor_profile().clone() {
        if !apparmor_enabled() {
            let w = format!("process.apparmorProfile {profile:?} skipped: AppArmor is not enabled on this kernel");
            tracing::warn!("{w}");
            warnings.push(w);
            process.set_apparmor_profile(None);
        }
    }
    Ok(oom_score_adj)
}

/// Refuses what a mount's options cannot mean together. A recursive read-only mount (`rro`)
/// is read-only at every level below it when it is made; a mount that is also read-write, or
/// that keeps receiving mounts (shared or slave propagation), would not stay so: the mount is
/// refused, as containerd's CRI refuses a recursive read-only volume that is not read-only or
/// not private.
fn check_mount_options(options: &[String]) -> std::result::Result<(), String> {
    if !options.iter().any(|o| o == "rro") {
        return Ok(());
    }
    if options.iter().any(|o| o == "rw") {
        return Err("\"rro\" (recursive read-only) conflicts with \"rw\"".into());
    }
    if let Some(p) = options.iter().find(|o| matches!(o.as_str(), "shared" | "rshared" | "slave" | "rslave")) {
        return Err(format!(
            "\"rro\" (recursive read-only) needs private propagation, got {p:?}: mounts propagated into it later would be writable"
        ));
    }
    Ok(())
}

/// libcontainer mounts cgroup v1 by looking up its parent's cgroups in the host's /proc under
/// the PID the init has in its own PID namespace. In a joined PID namespace (a pod sharing its
/// PIDs) that number names another host process, or none, and the mount fails at random. For
/// those containers the `cgroup` mount becomes what it amounts to: a tmpfs with the
/// container's own cgroup of each v1 hierarchy bind-mounted in. `cgroup_dir` is the
/// container's cgroup directory (`cgroup::dir_of`).
pub(crate) fn rewrite_v1_cgroup_mounts(spec: &mut Spec, cgroup_dir: &Path, hierarchies: &[PathBuf]) {
    let Some(mounts) = spec.mounts().clone() else { return };
    if hierarchies.is_empty() || !mounts.iter().any(|m| m.typ().as_deref() == Some("cgroup")) {
        return;
    }
    let mut out = Vec::with_capacity(mounts.len() + hierarchies.len());
    for m in mounts {
        if m.typ().as_deref() != Some("cgroup") {
            out.push(m);
            continue;
        }
        let ro = m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "ro"));
        let tmpfs = serde_json::json!({"destination": m.destination(), "type": "tmpfs", "source": "tmpfs",
                                       "options": ["noexec", "nosuid", "nodev", "mode=755"]});
        out.extend(serde_json::from_value(tmpfs).ok());
        for h in hierarchies {
            let Some(name) = h.file_name() else { continue };
            let mut options = vec!["rbind", "nosuid", "noexec", "nodev"];
            if ro {
                options.push("ro");
            }
            let bind = serde_json::json!({"destination": m.destination().join(name), "type": "bind",
                                          "source": cgroup::in_hierarchy(h, cgroup_dir), "options": options});
            out.extend(serde_json::from_value(bind).ok());
        }
    }
    spec.set_mounts(Some(out));
}

/// Mount points of the host's cgroup v1 controller hierarchies under /sys/fs/cgroup (none on
/// a pure v2 host). Named hierarchies (name=systemd) are left out: no container cgroup is
/// made in them.
pub(crate) fn v1_hierarchies() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let named = post.nth(1).is_some_and(|opts| opts.split(',').any(|o| o.starts_with("name=")));
            let mount_point = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" && !named && mount_point.starts_with("/sys/fs/cgroup/"))
                .then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Points the spec's namespaces of the given kinds at `/proc/<pid>/ns/...`: joining a running
/// sandbox (container mode). Kinds the spec does not list are added.
pub fn join_namespaces(spec: &mut Spec, pid: i32, kinds: &[LinuxNamespaceType]) {
    for kind in kinds {
        let path = PathBuf::from(format!("/proc/{pid}/ns/{}", proc_ns_name(*kind)));
        set_namespace_path(spec, *kind, &path);
    }
}

/// Points the spec's namespace of `kind` at `path`, adding the namespace if the spec has none.
pub fn set_namespace_path(spec: &mut Spec, kind: LinuxNamespaceType, path: &Path) {
    let Some(mut linux) = spec.linux().clone() else { return };
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    match namespaces.iter_mut().find(|ns| ns.typ() == kind) {
        Some(ns) => {
            ns.set_path(Some(path.to_path_buf()));
        }
        None => {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(kind);
            ns.set_path(Some(path.to_path_buf()));
            namespaces.push(ns);
        }
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// Writes the prepared spec as `<dir>/config.json` (the bundle libcontainer reads).
pub fn write(spec: &Spec, dir: &Path) -> Result<()> {
    let path = dir.join("config.json");
    let bytes = serde_json::to_vec(spec).map_err(|e| Error::io(format!("encoding {}", path.display()), e.into()))?;
    fs::write(&path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn check_namespace_path(path: &Path, want: LinuxNamespaceType) -> std::result::Result<(), String> {
    let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let got = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if got < 0 {
        return Err(format!("{} is not a namespace file", path.display()));
    }
    if got != want as i32 {
        return Err(format!("{} is a {} namespace, not {}", path.display(), ns_kind_name(got), ns_name(want)));
    }
    Ok(())
}

fn apparmor_enabled() -> bool {
    fs::read_to_string(APPARMOR_ENABLED).map(|s| s.starts_with('Y')).unwrap_or(false)
}

/// The OCI name of a namespace kind ("network", "mount", ...).
pub fn ns_name(kind: LinuxNamespaceType) -> &'static str {
    match kind {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// The file name under /proc/<pid>/ns/.
pub fn proc_ns_name(kind: LinuxNamespaceType) -> &'static str {
    match kind {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Network => "net",
        other => ns_name(other),
    }
}

fn ns_kind_name(flag: i32) -> &'static str {
    [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Time,
    ]
    .into_iter()
    .find(|k| *k as i32 == flag)
    .map(ns_name)
    .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"user":{{"uid":0,"gid":0}},"args":["/bin/true"],"cwd":"/"}},"linux":{{"namespaces":[{{"type":"pid"}}]}}{extra}}}"#
        )
    }

    fn err_text(json: &str) -> String {
        parse(Path::new("/b/config.json"), json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn malformed_json_names_position() {
        let e = err_text(r#"{"ociVersion": "1.0.2", "process": {"args": ["/bin/true",}}"#);
        assert!(e.starts_with("/b/config.json: process.args"), "{e}");
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn unknown_capability_is_named() {
        let json =
            minimal("").replace(r#""cwd":"/""#, r#""cwd":"/","capabilities":{"bounding":["CAP_KILL","CAP_BOGUS"]}"#);
        let e = err_text(&json);
        assert!(e.contains("process.capabilities.bounding"), "{e}");
        assert!(e.contains("unknown capability `CAP_BOGUS`"), "{e}");
        assert!(!e.contains("expected one of"), "{e}");
    }

    #[test]
    fn prepare_checks_root_args_and_namespaces() {
        let dir = std::env::temp_dir().join(format!("podnet-spec-{}", std::process::id()));
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let file = dir.join("config.json");
        let ok = parse(&file, minimal("").as_bytes()).unwrap();
        let p = prepare(ok.clone(), &dir, &file, "x", None).unwrap();
        assert_eq!(p.spec.root().as_ref().unwrap().path(), &dir.join("rootfs"));
        assert_eq!(p.spec.linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("/podnet/x")));

        let e = prepare(ok.clone(), Path::new("/nonexistent-bundle"), &file, "x", None).unwrap_err().to_string();
        assert!(e.contains("root.path: /nonexistent-bundle/rootfs: No such file"), "{e}");

        let bad_ns = minimal("").replace(r#"{"type":"pid"}"#, r#"{"type":"network","path":"/proc/self/ns/nope"}"#);
        let e = prepare(parse(&file, bad_ns.as_bytes()).unwrap(), &dir, &file, "x", None).unwrap_err().to_string();
        assert!(e.contains("linux.namespaces[0].path: /proc/self/ns/nope"), "{e}");

        let wrong_kind = minimal("").replace(r#"{"type":"pid"}"#, r#"{"type":"network","path":"/proc/self/ns/uts"}"#);
        let e = prepare(parse(&file, wrong_kind.as_bytes()).unwrap(), &dir, &file, "x", None).unwrap_err().to_string();
        assert!(e.contains("is a uts namespace, not network"), "{e}");

        let no_args = minimal("").replace(r#"["/bin/true"]"#, "[]");
        let e = prepare(parse(&file, no_args.as_bytes()).unwrap(), &dir, &file, "x", None).unwrap_err().to_string();
        assert!(e.contains("process.args: empty"), "{e}");

        let systemd =
            minimal(r#","x":1"#).replace(r#""namespaces""#, r#""cgroupsPath":"system.slice:cri:abc","namespaces""#);
        // The systemd form: on cgroupfs where systemd is not asked for (and not running, or
        // not wanted), taken as runc's cgroupfs driver takes it.
        let p = prepare(parse(&file, systemd.as_bytes()).unwrap(), &dir, &file, "x", Some(false)).unwrap();
        assert_eq!(p.driver, Driver::Cgroupfs);
        assert_eq!(p.spec.linux().as_ref().unwrap().cgroups_path().as_deref(), Some(Path::new("system.slice:cri:abc")));
        let bad = systemd.replace("system.slice:cri:abc", "/abs/path");
        if cgroup::systemd_booted() {
            let e =
                prepare(parse(&file, bad.as_bytes()).unwrap(), &dir, &file, "x", Some(true)).unwrap_err().to_string();
            assert!(e.contains("linux.cgroupsPath") && e.contains("slice:prefix:name"), "{e}");
        } else {
            let e =
                prepare(parse(&file, bad.as_bytes()).unwrap(), &dir, &file, "x", Some(true)).unwrap_err().to_string();
            assert!(e.contains("linux.cgroupsPath") && e.contains("systemd is not running"), "{e}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mount_options_and_root_propagation_are_checked() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_mount_options(&opts(&["rbind", "rprivate", "rro"])).unwrap();
        check_mount_options(&opts(&["rbind", "rshared", "rw"])).unwrap();
        assert!(check_mount_options(&opts(&["rbind", "rro", "rw"])).unwrap_err().contains("conflicts with \"rw\""));
        for p in ["shared", "rshared", "slave", "rslave"] {
            let e = check_mount_options(&opts(&["rbind", p, "rro"])).unwrap_err();
            assert!(e.contains("needs private propagation") && e.contains(p), "{e}");
        }

        let dir = std::env::temp_dir().join(format!("podnet-spec3-{}", std::process::id()));
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let file = dir.join("config.json");
        let with = |extra: &str| parse(&file, minimal(extra).as_bytes()).unwrap();
        let with_root = |p: &str| {
            let mut spec = with("");
            let mut linux = spec.linux().clone().unwrap();
            linux.set_rootfs_propagation(Some(p.to_string()));
            spec.set_linux(Some(linux));
            spec
        };
        for p in PROPAGATIONS {
            prepare(with_root(p), &dir, &file, "x", None).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let bad = with_root("rsharde");
        let e = prepare(bad, &dir, &file, "x", None).unwrap_err().to_string();
        assert!(e.contains("linux.rootfsPropagation: \"rsharde\" is not a propagation type"), "{e}");
        let e = prepare(
            with(r#","mounts":[{"destination":"/m","type":"bind","source":"/tmp","options":["rbind","rro","rw"]}]"#),
            &dir,
            &file,
            "x",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("mounts[0].options"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_explicit_no_new_privileges_false_is_unset() {
        let json = minimal("").replace(r#""cwd":"/""#, r#""cwd":"/","noNewPrivileges":false"#);
        let mut process = parse(Path::new("c"), json.as_bytes()).unwrap().process().clone().unwrap();
        prepare_process(&mut process, &mut Vec::new()).unwrap();
        assert_eq!(process.no_new_privileges(), None);
        let mut empty = process.clone();
        empty.set_args(Some(vec![]));
        assert_eq!(prepare_process(&mut empty, &mut Vec::new()).unwrap_err().0, "process.args");
    }

    #[test]
    fn oom_score_adj_and_apparmor_are_taken_out() {
        let dir = std::env::temp_dir().join(format!("podnet-spec2-{}", std::process::id()));
        fs::create_dir_all(dir.join("rootfs")).unwrap();
        let file = dir.join("config.json");
        let json = minimal("").replace(r#""cwd":"/""#, r#""cwd":"/","oomScoreAdj":500,"apparmorProfile":"x""#);
        let p = prepare(parse(&file, json.as_bytes()).unwrap(), &dir, &file, "x", None).unwrap();
        assert_eq!(p.oom_score_adj, Some(500));
        assert!(p.spec.process().as_ref().unwrap().oom_score_adj().is_none());
        if !apparmor_enabled() {
            assert!(p.spec.process().as_ref().unwrap().apparmor_profile().is_none());
            assert!(p.warnings[0].contains("AppArmor"));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn v1_cgroup_mount_becomes_binds_of_the_container_cgroup() {
        let json = minimal(
            r#","mounts":[{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","ro"]}]"#,
        );
        let mut spec = parse(Path::new("c"), json.as_bytes()).unwrap();
        let h = [PathBuf::from("/sys/fs/cgroup/memory"), PathBuf::from("/sys/fs/cgroup/pids")];
        rewrite_v1_cgroup_mounts(&mut spec, Path::new("/pod/c1"), &h);
        let m = spec.mounts().clone().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].typ().as_deref(), Some("tmpfs"));
        assert_eq!(m[2].source().as_deref(), Some(Path::new("/sys/fs/cgroup/pids/pod/c1")));
        assert_eq!(m[2].destination(), Path::new("/sys/fs/cgroup/pids"));
        assert!(m[2].options().as_ref().unwrap().contains(&"ro".to_string()));
        // Nothing to do on a pure v2 host.
        let mut spec = parse(Path::new("c"), json.as_bytes()).unwrap();
        rewrite_v1_cgroup_mounts(&mut spec, Path::new("/pod/c1"), &[]);
        assert_eq!(spec.mounts().clone().unwrap()[0].typ().as_deref(), Some("cgroup"));
    }

    #[test]
    fn join_sets_proc_paths() {
        let mut spec = parse(Path::new("c"), minimal("").as_bytes()).unwrap();
        join_namespaces(&mut spec, 42, &[LinuxNamespaceType::Network, LinuxNamespaceType::Pid]);
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let path = |k| ns.iter().find(|n| n.typ() == k).and_then(|n| n.path().clone());
        assert_eq!(path(LinuxNamespaceType::Network), Some(PathBuf::from("/proc/42/ns/net")));
        assert_eq!(path(LinuxNamespaceType::Pid), Some(PathBuf::from("/proc/42/ns/pid")));
    }
}
