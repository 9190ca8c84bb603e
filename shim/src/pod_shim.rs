//! Where a pod's shim lives and how it comes to be: its socket address (the same for `start`
//! and the CNI plugin), find-or-spawn under the socket directory's lock, the removal of a dead
//! shim's socket, the daemon's spawn, and the listener the daemon inherits.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::config::Flags;
use crate::error::{Error, Result};

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

/// The pod's shim, found or spawned.
pub struct PodShim {
    pub address: String,
    /// Its process id, when this call spawned it.
    pub pid: Option<u32>,
}

/// Connects to the shim of pod `group` (for containerd `flags.address` and namespace
/// `flags.namespace`) or spawns it: the one path `start` and the CNI plugin share. A spawned
/// daemon runs in `cwd` with `env` added to this process's environment.
pub fn ensure_shim(flags: &Flags, group: &str, cwd: &Path, env: &[(String, String)]) -> Result<PodShim> {
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
            Err(e) => return Err(Error::io(format!("listening on {}", path.display()), e)),
        }
    }
    Err(Error::Internal(format!("could neither reach nor create the pod shim at {}", path.display())))
}

/// An exclusive lock on the socket directory, held until dropped.
pub fn socket_dir_lock() -> Result<std::fs::File> {
    std::fs::create_dir_all(SOCKET_DIR).map_err(|e| Error::io(format!("creating {SOCKET_DIR}"), e))?;
    lock_dir(Path::new(SOCKET_DIR))
}

fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(path.display().to_string(), e))?;
    loop {
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io(format!("locking {}", path.display()), e));
        }
    }
}

/// Removes the socket at `path` if no shim answers there. Only under its directory's lock: a
/// `start` that just bound a new shim's socket there must not lose it, so without the lock
/// nothing is removed.
pub fn try_remove_dead_socket(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let _lock = lock_dir(dir).map_err(|e| e.context(format!("leaving the shim socket {} in place", path.display())))?;
    if !path.exists() || UnixStream::connect(path).is_ok() {
        return Ok(());
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing the dead shim's socket {}", path.display()), e)),
    }
}

/// [`try_remove_dead_socket`] for a caller whose only report is its log (an exiting daemon).
pub fn remove_dead_socket(path: &Path) {
    if let Err(e) = try_remove_dead_socket(path) {
        tracing::warn!("{e}");
    }
}

fn spawn_daemon(flags: &Flags, cwd: &Path, env: &[(String, String)], listener: UnixListener) -> Result<u32> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the shim binary", e))?;
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
    let child = cmd.spawn().map_err(|e| Error::io("spawning the shim daemon", e))?;
    Ok(child.id())
}

/// The daemon's listener, passed by `start` on fd 3.
pub fn inherited_listener() -> Result<UnixListener> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into a zeroed stat.
    if unsafe { libc::fstat(LISTENER_FD, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(Error::Invalid(format!(
            "no listening socket on fd {LISTENER_FD}: the shim daemon is started by containerd through `containerd-shim-podnet-v2 start`; set CNI_COMMAND to run the podnet CNI plugin"
        )));
    }
    // SAFETY: fd 3 is a socket handed to this process, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTENER_FD) };
    // SAFETY: setting close-on-exec on an owned fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(UnixListener::from(fd))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

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
    pub(crate) struct Scratch(pub(crate) PathBuf);

    impl Scratch {
        pub(crate) fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("podnet-{name}-{}", std::process::id()));
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
    fn a_dead_socket_is_removed_only_under_the_lock() {
        let dir = Scratch::new("socket");
        let dead = dir.0.join("dead");
        drop(UnixListener::bind(&dead).unwrap());
        let live = dir.0.join("live");
        let _listener = UnixListener::bind(&live).unwrap();
        // The lock cannot be taken (its file is a directory): nothing may be unlinked.
        let lock = dir.0.join(".lock");
        std::fs::create_dir(&lock).unwrap();
        let e = try_remove_dead_socket(&dead).unwrap_err().to_string();
        assert!(e.contains(&lock.display().to_string()) && e.contains(&dead.display().to_string()), "{e}");
        assert!(dead.exists(), "unlinked without the lock");
        std::fs::remove_dir(&lock).unwrap();
        try_remove_dead_socket(&dead).unwrap();
        assert!(!dead.exists(), "the dead socket stayed");
        try_remove_dead_socket(&dead).unwrap();
        try_remove_dead_socket(&live).unwrap();
        assert!(live.exists(), "a live shim's socket was removed");
    }
}
