//! OOM kills in a container's cgroup, as a pollable fd: cgroup v1's memory.oom_control
//! eventfd, or inotify on cgroup v2's memory.events (whose oom_kill count is compared).
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use podnet_runtime::cgroup::in_hierarchy;

pub struct OomWatch {
    fd: OwnedFd,
    /// v2: memory.events and the last oom_kill count seen.
    v2: Option<(PathBuf, u64)>,
    _control: Option<fs::File>,
}

fn oom_kills(events: &Path) -> u64 {
    fs::read_to_string(events)
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok())))
        .unwrap_or(0)
}

impl OomWatch {
    /// Watches the cgroup directory `cgroup_dir` (`Container::cgroup_dir`).
    pub fn new(cgroup_dir: &Path) -> Result<OomWatch> {
        let v1 = in_hierarchy(Path::new("/sys/fs/cgroup/memory"), cgroup_dir);
        if v1.join("memory.oom_control").exists() {
            let control =
                fs::File::open(v1.join("memory.oom_control")).map_err(|e| Error::io(v1.display().to_string(), e))?;
            // SAFETY: eventfd has no memory preconditions.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if efd < 0 {
                return Err(Error::io("eventfd", std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(efd) };
            fs::write(v1.join("cgroup.event_control"), format!("{} {}", fd.as_raw_fd(), control.as_raw_fd()))
                .map_err(|e| Error::io(v1.join("cgroup.event_control").display().to_string(), e))?;
            return Ok(OomWatch { fd, v2: None, _control: Some(control) });
        }
        let events = in_hierarchy(Path::new("/sys/fs/cgroup"), cgroup_dir).join("memory.events");
        if events.exists() {
            // SAFETY: no preconditions.
            let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
            if ifd < 0 {
                return Err(Error::io("inotify", std::io::Error::last_os_error()));
            }
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(ifd) };
            let c = std::ffi::CString::new(events.to_string_lossy().as_bytes())
                .map_err(|e| Error::Invalid(format!("{}: {e}", events.display())))?;
            // SAFETY: valid fd and path.
            if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) } < 0 {
                return Err(Error::io(format!("watching {}", events.display()), std::io::Error::last_os_error()));
            }
            let seen = oom_kills(&events);
            return Ok(OomWatch { fd, v2: Some((events, seen)), _control: None });
        }
        Err(Error::NotFound(format!("no memory cgroup for {}", cgroup_dir.display())))
    }

    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// After the fd polled readable: whether an OOM kill happened since the last call.
    pub fn fired(&mut self) -> bool {
        let mut buf = [0u8; 512];
        // SAFETY: reading into a stack buffer of the given size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return false;
        }
        match &mut self.v2 {
            None => true,
            Some((events, seen)) => {
                let now = oom_kills(events);
                let fired = now > *seen;
                *seen = now;
                fired
            }
        }
    }
}
