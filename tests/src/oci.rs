//! OCI test material for the runtime's root tests: a busybox rootfs built offline from
//! Debian's `busybox-static`, and a builder for runtime specs (`config.json`) that starts
//! from what `runc spec` generates.
//!
//! The rootfs is built once per busybox binary and shared, read-only, by every test and test
//! process ([`shared_busybox_rootfs`]); a test that needs to write to its root copies it
//! ([`writable_rootfs`]).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

/// The busybox binary the rootfs is made from (Debian's `busybox-static`, from hack/setup).
pub const BUSYBOX: &str = "/bin/busybox";

/// Bumped when the rootfs layout changes, so a shared rootfs of an older layout is not reused.
const LAYOUT_VERSION: u32 = 1;

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
";

// `extra` has no members on purpose: some runtimes add the /etc/group memberships of the
// process user to the spec's additionalGids, and tests must control those through the spec.
// `tty` (5) is the group the spec's devpts mount hands its ptys to.
const GROUP: &str = "\
root:x:0:
tty:x:5:
app:x:1000:
extra:x:2000:
nobody:x:65534:
";

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Whether the ELF executable at `path` has no program interpreter (PT_INTERP), that is,
/// whether it runs in a rootfs holding no dynamic loader or libc.
fn is_static_elf(path: &Path) -> io::Result<bool> {
    let mut head = Vec::new();
    fs::File::open(path)?.take(64 * 1024).read_to_end(&mut head)?;
    if head.len() < 64 || &head[..4] != b"\x7fELF" {
        return Err(invalid(format!("{} is not an ELF file", path.display())));
    }
    let (wide, le) = (head[4] == 2, head[5] == 1);
    let num = |off: usize, len: usize| -> Option<u64> {
        let b = head.get(off..off + len)?;
        Some(b.iter().enumerate().fold(0u64, |acc, (i, &x)| {
            let shift = if le { 8 * i } else { 8 * (len - 1 - i) };
            acc | (u64::from(x) << shift)
        }))
    };
    let (phoff, phentsize, phnum) =
        if wide { (num(0x20, 8), num(0x36, 2), num(0x38, 2)) } else { (num(0x1c, 4), num(0x2a, 2), num(0x2c, 2)) };
    let bad = || invalid(format!("{}: truncated ELF header", path.display()));
    let (phoff, phentsize, phnum) = (phoff.ok_or_else(bad)?, phentsize.ok_or_else(bad)?, phnum.ok_or_else(bad)?);
    for i in 0..phnum {
        // p_type is the first 4 bytes of a program header, in both classes.
        let off = usize::try_from(phoff + i * phentsize).map_err(|_| bad())?;
        const PT_INTERP: u64 = 3;
        if num(off, 4).ok_or_else(bad)? == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The applet names of the busybox binary (`busybox --list`), without `busybox` itself.
pub fn busybox_applets() -> io::Result<Vec<String>> {
    let out = Command::new(BUSYBOX).arg("--list").output().map_err(|e| with_path(e, "running", Path::new(BUSYBOX)))?;
    if !out.status.success() {
        return Err(invalid(format!("`{BUSYBOX} --list` failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_string)
        .collect())
}

fn mkdir_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(path).map_err(|e| with_path(e, "creating", path))?;
    // Set explicitly: create_dir_all's mode is filtered by the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| with_path(e, "chmod", path))
}

fn write_file(path: &Path, text: &str, mode: u32) -> io::Result<()> {
    fs::write(path, text).map_err(|e| with_path(e, "writing", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| with_path(e, "chmod", path))
}

fn link(target: &str, at: &Path) -> io::Result<()> {
    symlink(target, at).map_err(|e| with_path(e, "symlinking", at))
}

/// Builds a minimal rootfs in `dir` (created if missing) from [`BUSYBOX`], which must be
/// statically linked: `bin/busybox` (a copy) and one `bin/<applet>` symlink per applet;
/// `sbin`, `usr/bin` and `usr/sbin` are symlinks to `bin` (merged /usr), so every applet is
/// found in every PATH directory; `etc/passwd` (root 0, app 1000, nobody 65534), `etc/group`
/// (root 0, tty 5, app 1000, extra 2000, nobody 65534), empty `etc/hosts` and
/// `etc/resolv.conf` (mount targets a runtime may bind over), and the empty directories
/// `proc`, `sys`, `dev`, `tmp` (1777), `root` (0700) and `home/app`.
pub fn busybox_rootfs(dir: &Path) -> io::Result<()> {
    let bb = Path::new(BUSYBOX);
    if !bb.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{BUSYBOX} is missing: install Debian's busybox-static (hack/setup does)"),
        ));
    }
    if !is_static_elf(bb).map_err(|e| with_path(e, "reading", bb))? {
        return Err(invalid(format!(
            "{BUSYBOX} is dynamically linked: install busybox-static, not busybox (a rootfs has no libc)"
        )));
    }
    let applets = busybox_applets()?;

    mkdir_mode(dir, 0o755)?;
    let bin = dir.join("bin");
    mkdir_mode(&bin, 0o755)?;
    // A copy, never a hard link: the rootfs may be on another filesystem, and a link would
    // share the inode (and its mode) with the host's binary.
    let dst = bin.join("busybox");
    fs::copy(bb, &dst).map_err(|e| with_path(e, "copying busybox to", &dst))?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755)).map_err(|e| with_path(e, "chmod", &dst))?;
    for applet in &applets {
        link("busybox", &bin.join(applet))?;
    }
    link("bin", &dir.join("sbin"))?;
    mkdir_mode(&dir.join("usr"), 0o755)?;
    link("../bin", &dir.join("usr/bin"))?;
    link("../bin", &dir.join("usr/sbin"))?;

    let etc = dir.join("etc");
    mkdir_mode(&etc, 0o755)?;
    write_file(&etc.join("passwd"), PASSWD, 0o644)?;
    write_file(&etc.join("group"), GROUP, 0o644)?;
    write_file(&etc.join("hosts"), "", 0o644)?;
    write_file(&etc.join("resolv.conf"), "", 0o644)?;

    for d in ["proc", "sys", "dev", "home", "home/app"] {
        mkdir_mode(&dir.join(d), 0o755)?;
    }
    mkdir_mode(&dir.join("tmp"), 0o1777)?;
    mkdir_mode(&dir.join("root"), 0o700)
}

/// The busybox rootfs shared by all tests: built on first use into a directory under the
/// temp dir named after the busybox binary's size and mtime (and the user), so later tests
/// and test processes reuse it. Treat it as read-only (spec `root.readonly`); copy it with
/// [`writable_rootfs`] to write to it. Panics when it cannot be built.
pub fn shared_busybox_rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(build_shared).clone()
}

fn build_shared() -> PathBuf {
    let meta = fs::metadata(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e} (install Debian's busybox-static; hack/setup does)"));
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
    // Keyed by user too: a tree built by another user has their owners (a root-only `root/`).
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let name = format!(
        "podnet-busybox-rootfs-v{LAYOUT_VERSION}-u{euid}-{}-{}-{}",
        meta.len(),
        mtime.as_secs(),
        mtime.subsec_nanos()
    );
    let dir = std::env::temp_dir().join(&name);
    // The final name only ever appears through the rename below, so it is always complete.
    if dir.join("bin/busybox").exists() {
        return dir;
    }
    // Unique per process and call: concurrent builders never share a temp dir.
    let tmp = std::env::temp_dir().join(format!("{name}.{}", crate::unique("tmp")));
    let _ = fs::remove_dir_all(&tmp);
    if let Err(e) = busybox_rootfs(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        panic!("building the busybox rootfs in {}: {e}", tmp.display());
    }
    if let Err(e) = fs::rename(&tmp, &dir) {
        let _ = fs::remove_dir_all(&tmp);
        // Another thread or process renamed its own build into place first: use that one.
        assert!(dir.join("bin/busybox").exists(), "renaming {} to {}: {e}", tmp.display(), dir.display());
    }
    dir
}

/// Copies the shared busybox rootfs to `dst` (created if missing; it should be empty),
/// keeping symlinks and modes, for a test that needs a writable root. Panics on failure.
pub fn writable_rootfs(dst: &Path) {
    let src = shared_busybox_rootfs();
    copy_tree(&src, dst).unwrap_or_else(|e| panic!("copying {} to {}: {e}", src.display(), dst.display()));
}

fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let mode = fs::symlink_metadata(src).map_err(|e| with_path(e, "stat", src))?.permissions().mode();
    mkdir_mode(dst, mode & 0o7777)?;
    for entry in fs::read_dir(src).map_err(|e| with_path(e, "reading", src))? {
        let entry = entry.map_err(|e| with_path(e, "reading", src))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let ft = entry.file_type().map_err(|e| with_path(e, "stat", &from))?;
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| with_path(e, "readlink", &from))?;
            symlink(&target, &to).map_err(|e| with_path(e, "symlinking", &to))?;
        } else if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else {
            // fs::copy keeps the permission bits.
            fs::copy(&from, &to).map_err(|e| with_path(e, "copying to", &to))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runtime spec.

/// The hook kinds of the OCI runtime spec.
pub const HOOK_KINDS: [&str; 6] =
    ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

const CAP_SETS: [&str; 5] = ["bounding", "effective", "inheritable", "permitted", "ambient"];

/// The `config.json` of `runc spec` (runc 1.1, ociVersion 1.0.2-dev), with `rootfs` as
/// root path (read-only), `args` as process args, a non-terminal process and no cgroup
/// namespace (runc adds one on cgroup2-only hosts; ask for it with `namespace("cgroup",
/// None)`).
pub fn runc_spec(rootfs: &Path, args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": rootfs.to_string_lossy(), "readonly": true },
        "hostname": "runc",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// A runtime spec under construction: [`runc_spec`] plus chainable edits.
///
/// ```no_run
/// # use podnet_tests::oci::{shared_busybox_rootfs, Spec};
/// let spec = Spec::new(&shared_busybox_rootfs(), &["sleep", "60"])
///     .hostname("pod1")
///     .namespace("network", Some(std::path::Path::new("/var/run/netns/pod1")))
///     .user(1000, 1000, &[2000]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Spec(Value);

impl Spec {
    /// [`runc_spec`] for `rootfs` (its path as given; absolute is fine) running `args`.
    pub fn new(rootfs: &Path, args: &[&str]) -> Spec {
        Spec(runc_spec(rootfs, args))
    }

    /// Wraps an existing spec value.
    pub fn from_value(v: Value) -> Spec {
        Spec(v)
    }

    pub fn value(&self) -> &Value {
        &self.0
    }

    /// For edits no method covers.
    pub fn value_mut(&mut self) -> &mut Value {
        &mut self.0
    }

    pub fn into_value(self) -> Value {
        self.0
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.0["process"]["args"] = json!(args);
        self
    }

    /// Sets `key=value` in the process environment, replacing an earlier value of `key`.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        let prefix = format!("{key}=");
        let env = array(&mut self.0["process"]["env"]);
        let entry = Value::String(format!("{key}={value}"));
        match env.iter_mut().find(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix))) {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
        self
    }

    pub fn cwd(mut self, cwd: &str) -> Self {
        self.0["process"]["cwd"] = json!(cwd);
        self
    }

    /// The process user; `additional_gids` empty leaves the field out.
    pub fn user(mut self, uid: u32, gid: u32, additional_gids: &[u32]) -> Self {
        let mut user = json!({ "uid": uid, "gid": gid });
        if !additional_gids.is_empty() {
            user["additionalGids"] = json!(additional_gids);
        }
        self.0["process"]["user"] = user;
        self
    }

    pub fn terminal(mut self, on: bool) -> Self {
        self.0["process"]["terminal"] = json!(on);
        self
    }

    pub fn hostname(mut self, name: &str) -> Self {
        self.0["hostname"] = json!(name);
        self
    }

    pub fn readonly_root(mut self, on: bool) -> Self {
        self.0["root"]["readonly"] = json!(on);
        self
    }

    /// Adds namespace `kind` (the OCI name: "pid", "network", "mount", "ipc", "uts", "user",
    /// "cgroup", "time"), or replaces the entry already there; `path` joins an existing one.
    pub fn namespace(mut self, kind: &str, path: Option<&Path>) -> Self {
        let mut entry = json!({ "type": kind });
        if let Some(p) = path {
            entry["path"] = json!(p.to_string_lossy());
        }
        let list = array(&mut self.0["linux"]["namespaces"]);
        match list.iter_mut().find(|n| n["type"] == kind) {
            Some(n) => *n = entry,
            None => list.push(entry),
        }
        self
    }

    pub fn remove_namespace(mut self, kind: &str) -> Self {
        array(&mut self.0["linux"]["namespaces"]).retain(|n| n["type"] != kind);
        self
    }

    pub fn cgroups_path(mut self, path: &str) -> Self {
        self.0["linux"]["cgroupsPath"] = json!(path);
        self
    }

    /// Sets all five capability sets (bounding, effective, inheritable, permitted, ambient)
    /// to `caps` ("CAP_NET_ADMIN", ...).
    pub fn capabilities(mut self, caps: &[&str]) -> Self {
        let sets: serde_json::Map<String, Value> = CAP_SETS.iter().map(|s| (s.to_string(), json!(caps))).collect();
        self.0["process"]["capabilities"] = Value::Object(sets);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.0["annotations"][key] = json!(value);
        self
    }

    pub fn sysctl(mut self, key: &str, value: &str) -> Self {
        self.0["linux"]["sysctl"][key] = json!(value);
        self
    }

    pub fn oom_score_adj(mut self, adj: i32) -> Self {
        self.0["process"]["oomScoreAdj"] = json!(adj);
        self
    }

    /// `linux.resources.memory.limit`, in bytes.
    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.0["linux"]["resources"]["memory"]["limit"] = json!(bytes);
        self
    }

    pub fn pids_limit(mut self, limit: i64) -> Self {
        self.0["linux"]["resources"]["pids"]["limit"] = json!(limit);
        self
    }

    pub fn cpu_shares(mut self, shares: u64) -> Self {
        self.0["linux"]["resources"]["cpu"]["shares"] = json!(shares);
        self
    }

    /// Sets rlimit `kind` ("RLIMIT_NOFILE", ...), replacing an earlier entry of that kind.
    pub fn rlimit(mut self, kind: &str, soft: u64, hard: u64) -> Self {
        let entry = json!({ "type": kind, "soft": soft, "hard": hard });
        let list = array(&mut self.0["process"]["rlimits"]);
        match list.iter_mut().find(|r| r["type"] == kind) {
            Some(r) => *r = entry,
            None => list.push(entry),
        }
        self
    }

    /// Appends a hook of `kind` (one of [`HOOK_KINDS`]; panics otherwise) running `path`
    /// with `args`, which is the whole argv as in OCI (argv[0] included); empty leaves it out.
    pub fn hook(mut self, kind: &str, path: &str, args: &[&str]) -> Self {
        assert!(HOOK_KINDS.contains(&kind), "unknown hook kind {kind:?} (one of {HOOK_KINDS:?})");
        let mut hook = json!({ "path": path });
        if !args.is_empty() {
            hook["args"] = json!(args);
        }
        array(&mut self.0["hooks"][kind]).push(hook);
        self
    }

    /// `linux.seccomp`, the whole profile.
    pub fn seccomp(mut self, profile: Value) -> Self {
        self.0["linux"]["seccomp"] = profile;
        self
    }

    /// Writes the spec to `dir/config.json` (creating `dir`) and returns that file's path.
    /// Panics on failure, naming the path.
    pub fn write_bundle(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating bundle dir {}: {e}", dir.display()));
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.0).expect("a JSON value always encodes");
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

/// The array at `v`, made one first if `v` is null or not an array.
fn array(v: &mut Value) -> &mut Vec<Value> {
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    match v {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::new(Path::new("/tmp/rootfs"), &["sleep", "1"])
    }

    #[test]
    fn default_spec_has_runc_shape() {
        let v = spec().into_value();
        assert_eq!(v["ociVersion"], "1.0.2-dev");
        assert_eq!(v["root"], json!({ "path": "/tmp/rootfs", "readonly": true }));
        let p = &v["process"];
        assert_eq!(p["terminal"], false);
        assert_eq!(p["user"], json!({ "uid": 0, "gid": 0 }));
        assert_eq!(p["args"], json!(["sleep", "1"]));
        assert_eq!(p["cwd"], "/");
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["env"][1], "TERM=xterm");
        let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        assert_eq!(p["capabilities"], json!({ "bounding": caps, "effective": caps, "permitted": caps }));
        assert_eq!(p["rlimits"], json!([{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }]));
        let field = |list: &Value, key: &str| -> Vec<String> {
            list.as_array().unwrap().iter().map(|e| e[key].as_str().unwrap().to_string()).collect()
        };
        let dests = field(&v["mounts"], "destination");
        assert_eq!(dests, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]);
        assert_eq!(v["mounts"][2]["options"][5], "gid=5");
        let ns = field(&v["linux"]["namespaces"], "type");
        assert_eq!(ns, ["pid", "network", "ipc", "uts", "mount"]);
        assert_eq!(v["linux"]["resources"]["devices"], json!([{ "allow": false, "access": "rwm" }]));
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
        assert_eq!(v["linux"]["readonlyPaths"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn namespace_replaces_adds_and_removes() {
        let v = spec()
            .namespace("network", Some(Path::new("/var/run/netns/x")))
            .namespace("cgroup", None)
            .remove_namespace("ipc")
            .into_value();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.iter().filter(|n| n["type"] == "network").count(), 1);
        assert_eq!(ns[1], json!({ "type": "network", "path": "/var/run/netns/x" }));
        assert_eq!(ns.last().unwrap(), &json!({ "type": "cgroup" }));
        assert!(!ns.iter().any(|n| n["type"] == "ipc"));
        let back = Spec::from_value(v).namespace("network", None).into_value();
        assert_eq!(back["linux"]["namespaces"][1], json!({ "type": "network" }));
    }

    #[test]
    fn setters_land_where_oci_expects_them() {
        let v = spec()
            .args(&["sh", "-c", "true"])
            .env("TERM", "dumb")
            .env("FOO", "bar")
            .cwd("/tmp")
            .user(1000, 1000, &[2000])
            .terminal(true)
            .hostname("h")
            .readonly_root(false)
            .cgroups_path("/podnet/t1")
            .capabilities(&["CAP_NET_ADMIN"])
            .annotation("a", "b")
            .sysctl("net.ipv4.ip_forward", "1")
            .oom_score_adj(500)
            .memory_limit(64 << 20)
            .pids_limit(32)
            .cpu_shares(512)
            .rlimit("RLIMIT_NOFILE", 10, 20)
            .rlimit("RLIMIT_NPROC", 5, 5)
            .hook("poststop", "/bin/true", &[])
            .hook("poststop", "/bin/sh", &["sh", "-c", "exit 0"])
            .seccomp(json!({ "defaultAction": "SCMP_ACT_ALLOW" }))
            .into_value();
        let p = &v["process"];
        assert_eq!(p["args"], json!(["sh", "-c", "true"]));
        assert_eq!(p["env"], json!([spec().value()["process"]["env"][0], "TERM=dumb", "FOO=bar"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"], json!({ "uid": 1000, "gid": 1000, "additionalGids": [2000] }));
        assert_eq!(p["terminal"], true);
        assert_eq!(p["oomScoreAdj"], 500);
        assert_eq!(p["capabilities"].as_object().unwrap().len(), 5);
        assert_eq!(p["capabilities"]["ambient"], json!(["CAP_NET_ADMIN"]));
        assert_eq!(
            p["rlimits"],
            json!([
                { "type": "RLIMIT_NOFILE", "soft": 10, "hard": 20 },
                { "type": "RLIMIT_NPROC", "soft": 5, "hard": 5 }
            ])
        );
        assert_eq!(v["hostname"], "h");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(v["annotations"], json!({ "a": "b" }));
        let l = &v["linux"];
        assert_eq!(l["cgroupsPath"], "/podnet/t1");
        assert_eq!(l["sysctl"], json!({ "net.ipv4.ip_forward": "1" }));
        assert_eq!(l["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(l["resources"]["pids"]["limit"], 32);
        assert_eq!(l["resources"]["cpu"]["shares"], 512);
        assert_eq!(l["resources"]["devices"].as_array().unwrap().len(), 1, "resources edits keep devices");
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(
            v["hooks"]["poststop"],
            json!([
                { "path": "/bin/true" },
                { "path": "/bin/sh", "args": ["sh", "-c", "exit 0"] }
            ])
        );
    }

    #[test]
    #[should_panic(expected = "unknown hook kind")]
    fn unknown_hook_kind_panics() {
        let _ = spec().hook("prestop", "/bin/true", &[]);
    }

    #[test]
    fn write_bundle_writes_parseable_json() {
        let dir = crate::TempDir::new("ocispec");
        let path = spec().hostname("b").write_bundle(&dir.path().join("bundle"));
        assert_eq!(path, dir.path().join("bundle/config.json"));
        let back: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, spec().hostname("b").into_value());
    }

    fn require_busybox() {
        assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: hack/setup installs Debian's busybox-static");
    }

    #[test]
    #[ignore = "needs hack/setup"]
    fn busybox_is_static() {
        require_busybox();
        assert!(is_static_elf(Path::new(BUSYBOX)).unwrap(), "{BUSYBOX} is not static");
        assert!(!is_static_elf(Path::new("/bin/ls")).unwrap_or(false), "/bin/ls should be dynamic");
    }

    #[test]
    #[ignore = "needs hack/setup"]
    fn rootfs_has_the_applets_and_accounts_tests_need() {
        require_busybox();
        // It runs busybox: keep the leak checker's tests from seeing those children.
        let _serial = crate::leaks::serial();
        let root = shared_busybox_rootfs();
        assert_eq!(shared_busybox_rootfs(), root, "built once per process");
        let needed = ["sh", "sleep", "nc", "cat", "echo", "hostname", "ls", "ps", "kill", "true", "false"];
        for a in needed.iter().chain(&["id", "stty", "tty", "wc"]) {
            for dir in ["bin", "sbin", "usr/bin", "usr/sbin"] {
                let p = root.join(dir).join(a);
                assert!(fs::metadata(&p).is_ok_and(|m| m.is_file()), "{} is missing", p.display());
            }
        }
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("app:x:1000:1000:"));
        let group = fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(group.contains("extra:x:2000:"));
        assert_eq!(fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);

        let dir = crate::TempDir::new("ocirootfs");
        let copy = dir.path().join("rootfs");
        writable_rootfs(&copy);
        assert_eq!(fs::read_link(copy.join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(fs::read_link(copy.join("usr/bin")).unwrap(), Path::new("../bin"));
        assert_eq!(fs::metadata(copy.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
        let out = Command::new(copy.join("bin/busybox")).args(["echo", "hi"]).output().unwrap();
        assert_eq!(out.stdout, b"hi\n");
    }
}
