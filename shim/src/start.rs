//! The shim v2 subcommands containerd runs: `start` (find or spawn the pod's shim, print its
//! address) and `delete` (clean up after a shim that is gone), and the daemon's setup.
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use containerd_shim_protos::shim::shim::DeleteResponse;
use protobuf::Message;
use sha2::{Digest, Sha256};

use crate::config::{Config, Flags};
use crate::service::{group_of, BundleRecord, BundleSpec, BUNDLE_RECORD};
use crate::{mount, network};

/// Where pod shims listen.
pub const SOCKET_DIR: &str = "/run/podnet/s";
/// The fd a spawned daemon finds its listening socket on.
pub const LISTENER_FD: i32 = 3;

/// The pod shim's address for containerd `address`, namespace `ns`, pod `group`. The CNI plugin
/// computes the same one to reach the pod's shim.
pub fn socket_address(containerd_address: &str, ns: &str, group: &str) -> String {
    let mut h = Sha256::new();
    h.update(containerd_address.as_bytes());
    h.update(b"\0");
    h.update(ns.as_bytes());
    h.update(b"\0");
    h.update(group.as_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{SOCKET_DIR}/{hex}")
}

fn bundle_dir(flags: &Flags) -> Result<PathBuf, String> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(|e| format!("current directory (the bundle): {e}"))
}

/// The bootstrap reply containerd parses (version 2: the task v2 API over ttrpc; 1.7 reads it
/// too).
pub fn bootstrap_json(address: &str) -> String {
    serde_json::json!({"version": 2, "address": address, "protocol": "ttrpc"}).to_string()
}

/// `start`: returns the address to print.
pub fn start(flags: &Flags) -> Result<String, String> {
    if flags.id.is_empty() || flags.namespace.is_empty() {
        return Err("start needs -id and -namespace".into());
    }
    let bundle = bundle_dir(flags)?;
    let spec = BundleSpec::read(&bundle)?;
    let group = group_of(&spec.annotations).unwrap_or_else(|| flags.id.clone());
    let shim = ensure_shim(flags, &group, &bundle, &[])?;
    let f = bundle.join("address");
    std::fs::write(&f, &shim.address).map_err(|e| format!("{}: {e}", f.display()))?;
    if let Some(pid) = shim.pid {
        let _ = std::fs::write(bundle.join("shim.pid"), pid.to_string());
    }
    Ok(shim.address)
}

/// The pod's shim, found or spawned.
pub struct PodShim {
    pub address: String,
    /// Its process id, when this call spawned it.
    pub pid: Option<u32>,
}

/// Connects to the shim of pod `group` (for containerd `flags.address` and namespace
/// `flags.namespace`) or spawns it: the one path `start` and the CNI plugin share. A spawned
/// daemon runs in `cwd` with `env` added to this process's environment.
pub fn ensure_shim(flags: &Flags, group: &str, cwd: &Path, env: &[(String, String)]) -> Result<PodShim, String> {
    let address = socket_address(&flags.address, &flags.namespace, group);
    let path = crate::ttrpc::socket_path(&address);
    // Serialized with every other start and with exiting shims, so that a socket is never
    // unlinked while its shim still serves it.
    let _lock = socket_dir_lock()?;
    // The pod's shim may already run: join it.
    for _ in 0..2 {
        if UnixStream::connect(&path).is_ok() {
            return Ok(PodShim { address, pid: None });
        }
        let _ = std::fs::remove_file(&path);
        match UnixListener::bind(&path) {
            Ok(listener) => {
                let pid = spawn_daemon(flags, cwd, env, listener).inspect_err(|_| {
                    let _ = std::fs::remove_file(&path);
                })?;
                return Ok(PodShim { address, pid: Some(pid) });
            }
            // Another start for the same pod won the race: connect to it.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(format!("listening on {}: {e}", path.display())),
        }
    }
    Err(format!("could neither reach nor create the pod shim at {}", path.display()))
}

/// An exclusive lock on the socket directory, held until dropped.
pub fn socket_dir_lock() -> Result<std::fs::File, String> {
    std::fs::create_dir_all(SOCKET_DIR).map_err(|e| format!("creating {SOCKET_DIR}: {e}"))?;
    lock_dir(Path::new(SOCKET_DIR))
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("locking {}: {e}", path.display()));
        }
    }
}

/// Removes the socket at `path` if no shim answers there. Only under its directory's lock: a
/// `start` that just bound a new shim's socket there must not lose it, so without the lock
/// nothing is removed.
pub fn try_remove_dead_socket(path: &Path) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let _lock = lock_dir(dir).map_err(|e| format!("leaving the shim socket {} in place: {e}", path.display()))?;
    if !path.exists() || UnixStream::connect(path).is_ok() {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing the dead shim's socket {}: {e}", path.display())),
    }
}

/// [`try_remove_dead_socket`] for a caller whose only report is its log (an exiting daemon).
pub fn remove_dead_socket(path: &Path) {
    if let Err(e) = try_remove_dead_socket(path) {
        tracing::warn!("{e}");
    }
}

fn spawn_daemon(flags: &Flags, cwd: &Path, env: &[(String, String)], listener: UnixListener) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the shim binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    // A daemon spawned by the CNI plugin must not think it is one.
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("CNI_")) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    // containerd reads start's (and a CNI plugin's) stdout to EOF: the daemon keeps none of
    // the caller's stdio.
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let target = LISTENER_FD;
            if fd == target {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, target) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("spawning the shim daemon: {e}"))?;
    Ok(child.id())
}

/// The daemon's listener, passed by `start` on fd 3.
pub fn inherited_listener() -> Result<UnixListener, String> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a zeroed stat.
    if unsafe { libc::fstat(LISTENER_FD, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!(
            "no listening socket on fd {LISTENER_FD}: the shim daemon is started by containerd through `containerd-shim-podnet-v2 start`; set CNI_COMMAND to run the podnet CNI plugin"
        ));
    }
    // SAFETY: fd 3 is a socket handed to this process, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    // SAFETY: setting close-on-exec on an owned fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(UnixListener::from(fd))
}

/// `delete`: what containerd runs when the shim is gone. Kills what is left of the container,
/// unmounts its rootfs and releases the pod network; reports every failure. A bundle record
/// that cannot be read is one of them, and does not stop the rest: the container and the
/// network are then looked for where podnet's config puts them.
pub fn delete(flags: &Flags) -> Result<DeleteResponse, String> {
    if flags.id.is_empty() {
        return Err("delete needs -id".into());
    }
    let bundle = bundle_dir(flags)?;
    let mut errs = Vec::new();
    let (record, lost) = match BundleRecord::read(&bundle) {
        Ok(r) => (r, false),
        Err(e) => {
            errs.push(e);
            (None, true)
        }
    };
    let (root, cfg) = match &record {
        Some(r) => (r.runtime_root.clone(), None),
        None => {
            let cfg = Config::load(None).unwrap_or_else(|e| {
                errs.push(format!("{e} (looking under the default paths instead)"));
                Config::default()
            });
            (cfg.state_dir.join("runtime").join(&flags.namespace), Some(cfg))
        }
    };
    if root.exists() {
        match podnet_runtime::Runtime::new(&root) {
            Ok(rt) => {
                if let Err(e) = rt.cleanup(&flags.id) {
                    errs.push(e.to_string());
                }
            }
            Err(e) => errs.push(e.to_string()),
        }
    }
    mount::unmount(&bundle.join("rootfs"));
    let spec = BundleSpec::read(&bundle);
    // The dead shim's socket: nothing answers there any more (a live one is left alone).
    if let Ok(spec) = &spec {
        let group = group_of(&spec.annotations).unwrap_or_else(|| flags.id.clone());
        let path = crate::ttrpc::socket_path(&socket_address(&flags.address, &flags.namespace, &group));
        if let Err(e) = try_remove_dead_socket(&path) {
            errs.push(e);
        }
    }
    match (&record, cfg) {
        (Some(rec), _) => {
            if let Some(net) = &rec.network {
                if let Err(e) = network::teardown(net) {
                    errs.push(format!("releasing the pod network: {e}"));
                }
            }
        }
        // Only a container that asked for a network namespace of its own can have had its
        // network from the shim (an unreadable spec could have asked for anything).
        (None, Some(cfg)) if lost && spec.as_ref().map_or(true, |s| s.wants_new("network")) => {
            if let Err(e) = network::teardown_unrecorded(&cfg, &flags.namespace, &flags.id) {
                errs.push(format!("releasing the pod network without its record: {e}"));
            }
        }
        (None, _) => {}
    }
    // A record that could not be read stays, for whoever looks into why.
    if errs.is_empty() && record.is_some() {
        let path = bundle.join(BUNDLE_RECORD);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errs.push(format!("removing {}: {e}", path.display())),
        }
    }
    let mut resp = DeleteResponse::new();
    resp.exit_status = (128 + libc::SIGKILL) as u32;
    resp.exited_at = Some(SystemTime::now().into()).into();
    if errs.is_empty() {
        Ok(resp)
    } else {
        Err(errs.join("; "))
    }
}

pub fn write_delete_response(resp: &DeleteResponse) -> std::io::Result<()> {
    let bytes = resp.write_to_bytes().map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_per_containerd_namespace_and_pod() {
        let a = socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1");
        assert!(a.starts_with("unix:///run/podnet/s/") && a.len() < 100, "{a}");
        assert_eq!(a, socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1"));
        assert_ne!(a, socket_address("/run/containerd/containerd.sock", "default", "pod1"));
        assert_ne!(a, socket_address("/run/other.sock", "k8s.io", "pod1"));
        assert_ne!(socket_address("a", "bc", "d"), socket_address("ab", "c", "d"));
    }

    /// A scratch directory for one test, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("podnet-start-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_corrupt_or_unreadable_bundle_record_is_an_error_naming_it() {
        let dir = Scratch::new("record");
        let path = dir.0.join(BUNDLE_RECORD);
        assert!(BundleRecord::read(&dir.0).unwrap().is_none(), "no record: nothing was set up");
        BundleRecord { runtime_root: "/r".into(), network: None }.write(&dir.0).unwrap();
        assert_eq!(BundleRecord::read(&dir.0).unwrap().unwrap().runtime_root, Path::new("/r"));
        std::fs::write(&path, b"{\"runtime_root\": ").unwrap();
        let e = BundleRecord::read(&dir.0).unwrap_err();
        assert!(e.contains(&path.display().to_string()) && e.contains("corrupt"), "{e}");
        // A directory where the record should be: unreadable, not absent.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = BundleRecord::read(&dir.0).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn a_dead_socket_is_removed_only_under_the_lock() {
        let dir = Scratch::new("socket");
        let dead = dir.0.join("dead");
        drop(UnixListener::bind(&dead).unwrap());
        let live = dir.0.join("live");
        let _listener = UnixListener::bind(&live).unwrap();
        // The lock cannot be taken (its file is a directory): nothing may be unlinked.
        let lock = dir.0.join(".lock");
        std::fs::create_dir(&lock).unwrap();
        let e = try_remove_dead_socket(&dead).unwrap_err();
        assert!(e.contains(&lock.display().to_string()) && e.contains(&dead.display().to_string()), "{e}");
        assert!(dead.exists(), "unlinked without the lock");
        std::fs::remove_dir(&lock).unwrap();
        try_remove_dead_socket(&dead).unwrap();
        assert!(!dead.exists(), "the dead socket stayed");
        try_remove_dead_socket(&dead).unwrap();
        try_remove_dead_socket(&live).unwrap();
        assert!(live.exists(), "a live shim's socket was removed");
    }

    #[test]
    fn bootstrap_is_version_2_ttrpc() {
        let v: serde_json::Value = serde_json::from_str(&bootstrap_json("unix:///x")).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["protocol"], "ttrpc");
        assert_eq!(v["address"], "unix:///x");
    }
}
