//! The task's rootfs mounts (what containerd's snapshotter returns, e.g. overlay) on
//! `<bundle>/rootfs`.
use std::ffi::CString;
use std::path::Path;

use crate::error::{Error, Result};

use containerd_shim_protos::types::mount::Mount;

/// Mount flags from options; what is not a flag is filesystem data.
pub fn parse_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "remount" => (libc::MS_REMOUNT, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "defaults" => (0, 0),
            other => {
                data.push(other.to_string());
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Invalid(format!("{s:?} contains a NUL byte")))
}

/// Mounts `mounts` in order on `target` (created if missing). On failure, what was mounted is
/// unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let tgt = cstr(&target.to_string_lossy())?;
    for (i, m) in mounts.iter().enumerate() {
        let (flags, data) = parse_options(&m.options);
        let fstype = if m.type_.is_empty() || flags & libc::MS_BIND != 0 { None } else { Some(cstr(&m.type_)?) };
        let src = cstr(&m.source)?;
        let data_c = cstr(&data)?;
        let base = flags & !libc::MS_RDONLY;
        let bind = flags & libc::MS_BIND != 0;
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                if bind { base } else { flags },
                if data.is_empty() { std::ptr::null() } else { data_c.as_ptr().cast() },
            )
        };
        let mut result = if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
        if result.is_ok() && bind && flags & libc::MS_RDONLY != 0 {
            // A bind mount takes its read-only flag on a remount.
            // SAFETY: as above.
            let rc = unsafe {
                libc::mount(
                    std::ptr::null(),
                    tgt.as_ptr(),
                    std::ptr::null(),
                    base | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                result = Err(std::io::Error::last_os_error());
                unmount(target);
            }
        }
        if let Err(e) = result {
            for _ in 0..i {
                unmount(target);
            }
            return Err(Error::io(
                format!(
                    "mounting the rootfs ({} {} on {}, options {:?})",
                    m.type_,
                    m.source,
                    target.display(),
                    m.options
                ),
                e,
            ));
        }
    }
    Ok(())
}

/// Unmounts everything on `target` (lazily: a busy mount goes once its users do). Nothing
/// mounted is not an error.
pub fn unmount(target: &Path) -> bool {
    let Ok(tgt) = cstr(&target.to_string_lossy()) else { return false };
    let mut any = false;
    // SAFETY: valid path; EINVAL (not a mount point) or ENOENT end the loop.
    while unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) } == 0 {
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_are_data_and_flags_are_flags() {
        let opts: Vec<String> = ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l", "ro", "nosuid"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
        let (flags, _) = parse_options(&["rbind".into(), "rw".into()]);
        assert_eq!(flags, libc::MS_BIND | libc::MS_REC);
    }
}
