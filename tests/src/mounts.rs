//! Mounts for the mount-propagation and read-only tests: a tmpfs of the test's own (shared, as a
//! Bidirectional volume needs its host path to be), mounts below it, and their removal.
use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::containerd::mounts_under;

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("a path without NUL")
}

/// mount(2), panicking with the path and the error.
fn mount(source: &str, target: &Path, fstype: Option<&str>, flags: libc::c_ulong) {
    let (src, dst) = (CString::new(source).expect("source"), c_path(target));
    let fs = fstype.map(|t| CString::new(t).expect("fstype"));
    // SAFETY: valid NUL-terminated strings (or null) for mount(2).
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount {source} on {}: {}", target.display(), std::io::Error::last_os_error());
}

/// Mounts a fresh tmpfs on `dir` (created if missing).
pub fn tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    mount("tmpfs", dir, Some("tmpfs"), 0);
}

/// A tmpfs on `dir`, shared (its own peer group), every mount below it removed on drop.
pub struct SharedTmpfs(pub PathBuf);

impl SharedTmpfs {
    pub fn new(dir: &Path) -> SharedTmpfs {
        tmpfs(dir);
        mount("none", dir, None, libc::MS_SHARED);
        SharedTmpfs(dir.to_path_buf())
    }

    /// A directory below the tmpfs, created.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let d = self.0.join(name);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }
}

impl Drop for SharedTmpfs {
    fn drop(&mut self) {
        umount_all(&self.0);
    }
}

/// Detaches every mount at or below `dir`, deepest first, until none is left (propagation can
/// stack copies of one mount).
pub fn umount_all(dir: &Path) {
    for _ in 0..16 {
        let left = mounts_under(dir);
        if left.is_empty() {
            return;
        }
        for m in left {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c_path(&m).as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// True if some mount's mount point is exactly `path` in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}
