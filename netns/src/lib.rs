//! Network namespaces: create one bound to a file (as `ip netns add` does, without exec'ing
//! it), open one by path, delete it, and run a closure inside one on a dedicated OS thread.
//!
//! `setns(2)` changes the namespace of the calling thread only, so work inside a namespace
//! happens on a fresh thread that exits when the closure returns: no pool ever hands a
//! thread that sits in a pod's namespace to unrelated work.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where `ip netns` and containerd's CRI keep named namespaces.
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug)]
pub struct Error {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} network namespace {}: {}", self.op, self.path.display(), self.source)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn err(op: &'static str, path: &Path, source: io::Error) -> Error {
    Error { op, path: path.to_path_buf(), source }
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// An open network namespace (a file descriptor on its nsfs inode) and the path it came from.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (a bind mount under /var/run/netns, or /proc/<pid>/ns/net).
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| err("open", path, e))?;
        if !is_netns(&file) {
            return Err(err("open", path, io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace")));
        }
        Ok(NetNs { file, path: path.to_path_buf() })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        NetNs::open(format!("/proc/self/task/{}/ns/net", gettid()))
    }

    /// Creates a new namespace named `name` in `dir` (default [`DEFAULT_NETNS_DIR`]) and keeps it
    /// alive with a bind mount, like `ip netns add`. Fails if the name is already taken.
    pub fn create(name: &str, dir: Option<&Path>) -> Result<NetNs> {
        let dir = dir.unwrap_or(Path::new(DEFAULT_NETNS_DIR));
        let path = dir.join(name);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(err("create", &path, io::Error::new(io::ErrorKind::InvalidInput, "invalid namespace name")));
        }
        std::fs::create_dir_all(dir).map_err(|e| err("create", dir, e))?;
        make_shared_mount_point(dir).map_err(|e| err("create", dir, e))?;
        // The mount target; O_EXCL makes a name collision an error instead of a takeover.
        std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(|e| err("create", &path, e))?;
        let target = path.clone();
        let bound = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> io::Result<()> {
                // SAFETY: unshare only affects this thread, which exits right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let src = cstr(Path::new(&format!("/proc/self/task/{}/ns/net", gettid())))?;
                let dst = cstr(&target)?;
                // SAFETY: valid NUL-terminated paths; a bind mount of our own nsfs file.
                let rc = unsafe {
                    libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .map_err(|e| err("create", &path, e))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")));
        if let Err(e) = bound {
            let _ = std::fs::remove_file(&path);
            return Err(err("create", &path, e));
        }
        NetNs::open(&path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The nsfs inode number: two handles on one namespace have the same one.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.ino()).map_err(|e| err("stat", &self.path, e))
    }

    /// Runs `f` on a new OS thread that has entered this namespace; the thread ends with `f`.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        run_in_fd(self.file.as_fd(), &self.path, f)
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Runs `f` inside the namespace at `path` on a dedicated thread.
pub fn run_in<T, F>(path: impl AsRef<Path>, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    NetNs::open(path)?.run(f)
}

fn run_in_fd<T, F>(fd: BorrowedFd<'_>, path: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let raw = fd.as_raw_fd();
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, move || -> io::Result<T> {
                // SAFETY: raw is a valid nsfs descriptor borrowed for the scope; setns only
                // affects this thread, which is never reused.
                if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .map_err(|e| err("enter", path, e))?;
        match handle.join() {
            Ok(r) => r.map_err(|e| err("enter", path, e)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Deletes a namespace created by [`NetNs::create`] (or `ip netns add`): unmount and unlink.
/// Idempotent: a path that is already gone, or not mounted, is not an error.
pub fn delete(path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let c = cstr(path).map_err(|e| err("delete", path, e))?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOENT) => {}
            _ => return Err(err("unmount", path, e)),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path, e)),
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn is_netns(file: &File) -> bool {
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703; // _IO(0xb7, 0x3)
                                                 // SAFETY: fstatfs fills a plain struct; fd is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 || st.f_type as libc::c_long != NSFS_MAGIC {
        return false;
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and returns the CLONE_NEW* type.
    let ty = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    ty == libc::CLONE_NEWNET
}

/// Makes `dir` a mount point with shared propagation (what `ip netns add` does), so namespace
/// bind mounts made here are seen by other mount namespaces (containerd, pods) and vice versa.
fn make_shared_mount_point(dir: &Path) -> io::Result<()> {
    let c = cstr(dir)?;
    // Try to make it shared; EINVAL means it is not a mount point yet.
    // SAFETY: valid path; propagation change only.
    let rc = unsafe {
        libc::mount(std::ptr::null(), c.as_ptr(), std::ptr::null(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(e);
    }
    // SAFETY: bind the directory onto itself, then set propagation.
    let rc = unsafe {
        libc::mount(c.as_ptr(), c.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(std::ptr::null(), c.as_ptr(), std::ptr::null(), libc::MS_SHARED | libc::MS_REC, std::ptr::null())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn opening_a_regular_file_is_rejected() {
        let p = std::env::temp_dir().join(format!("podnet-netns-notns-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        let e = NetNs::open(&p).unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn delete_of_missing_path_is_ok() {
        delete(std::env::temp_dir().join("podnet-netns-never-existed")).unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = std::env::temp_dir();
        assert!(NetNs::create("a/b", Some(&dir)).is_err());
        assert!(NetNs::create("", Some(&dir)).is_err());
    }

    #[test]
    #[ignore = "needs root"]
    fn create_run_delete() {
        assert!(is_root(), "root integration test run without root");
        let dir = std::env::temp_dir().join(format!("podnet-netns-test-{}", std::process::id()));
        let ns = NetNs::create("t1", Some(&dir)).unwrap();
        let host = NetNs::current().unwrap().inode().unwrap();
        let inside = ns.run(|| NetNs::current().unwrap().inode().unwrap()).unwrap();
        assert_eq!(inside, ns.inode().unwrap());
        assert_ne!(inside, host);
        // The calling thread never moved.
        assert_eq!(NetNs::current().unwrap().inode().unwrap(), host);
        // A second create with the same name fails and leaves the first intact.
        assert!(NetNs::create("t1", Some(&dir)).is_err());
        assert_eq!(NetNs::open(dir.join("t1")).unwrap().inode().unwrap(), inside);
        drop(ns);
        delete(dir.join("t1")).unwrap();
        delete(dir.join("t1")).unwrap();
        assert!(!dir.join("t1").exists());
        let c = cstr(&dir).unwrap();
        // SAFETY: undo the shared bind mount the test made on its own directory.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        std::fs::remove_dir(&dir).unwrap();
    }
}
