//! A process the runtime started and must reap: tracked by a pidfd, so exits are waited for
//! without polling loops, signals never reach a recycled PID, and no other child's status is
//! ever taken by mistake (the runtime never calls `waitpid(-1)`).
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// `idtype_t` value for waitid on a pidfd (Linux 5.4).
const P_PIDFD: libc::idtype_t = 3;

/// How a process ended, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + signal number when a signal ended it (the shell convention
    /// containerd reports).
    pub code: i32,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    pub at: SystemTime,
}

pub struct Process {
    pid: i32,
    pidfd: OwnedFd,
    exit: Mutex<Option<Exit>>,
    /// Held while reaping so that two waiters never both call waitid.
    reaping: Mutex<()>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.pid).field("exit", &self.exit()).finish()
    }
}

impl Process {
    /// Tracks `pid`, which must be an unreaped child of this process (so it cannot have been
    /// recycled by the time the pidfd is opened).
    pub fn from_child(pid: i32) -> io::Result<Process> {
        Ok(Process { pid, pidfd: pidfd_open(pid)?, exit: Mutex::new(None), reaping: Mutex::new(()) })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The recorded exit, if the process has been reaped.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps the process if it has exited; never blocks.
    pub fn try_wait(&self) -> io::Result<Option<Exit>> {
        let Ok(_guard) = self.reaping.try_lock() else {
            // Another thread is reaping it right now; report what is known.
            return Ok(self.exit());
        };
        self.reap()
    }

    /// Blocks until the process exits and returns how it ended.
    pub fn wait(&self) -> io::Result<Exit> {
        loop {
            if let Some(exit) = self.wait_timeout(None)? {
                return Ok(exit);
            }
        }
    }

    /// Waits up to `timeout` (forever with `None`) for the exit.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> io::Result<Option<Exit>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let _guard = self.reaping.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(exit) = self.reap()? {
                return Ok(Some(exit));
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            };
            // The pidfd becomes readable when the process exits.
            let mut pfd = libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// Sends `signal` to the process through its pidfd. Fails with ESRCH once it has exited.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.exit().is_some() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        pidfd_send_signal(&self.pidfd, signal)
    }

    /// SIGKILL and reap: ends a process that must not outlive a failed operation.
    pub(crate) fn kill_and_reap(&self) {
        let _ = self.signal(libc::SIGKILL);
        let _ = self.wait();
    }

    /// One non-blocking waitid on the pidfd; the caller holds `reaping`.
    fn reap(&self) -> io::Result<Option<Exit>> {
        if let Some(exit) = self.exit() {
            return Ok(Some(exit));
        }
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(P_PIDFD, self.pidfd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG)
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(io::Error::new(e.kind(), format!("waiting for process {}: {e}", self.pid)));
        }
        // With WNOHANG and nothing to report, waitid leaves si_pid zero.
        if unsafe { info.si_pid() } == 0 {
            return Ok(None);
        }
        let status = unsafe { info.si_status() };
        let exit = match info.si_code {
            libc::CLD_KILLED | libc::CLD_DUMPED => {
                Exit { code: 128 + status, signal: Some(status), at: SystemTime::now() }
            }
            _ => Exit { code: status, signal: None, at: SystemTime::now() },
        };
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
        Ok(Some(exit))
    }
}

/// The pidfd becomes readable when the process exits: event loops poll it and then call
/// `try_wait`.
impl AsFd for Process {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }
}

pub(crate) fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("pidfd_open({pid}): {e}")));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The children of the calling thread, from /proc (CONFIG_PROC_CHILDREN). Used to find and
/// reap the helper processes a failed libcontainer build leaves behind.
pub(crate) fn thread_children() -> Vec<i32> {
    let tid = unsafe { libc::gettid() };
    std::fs::read_to_string(format!("/proc/self/task/{tid}/children"))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills and reaps children of this thread that are not in `before`: what a failed create
/// left (libcontainer does not reap its intermediate process, nor the init, on every error
/// path). Returns how many it reaped.
pub(crate) fn reap_new_children(before: &[i32]) -> usize {
    let mut n = 0;
    for pid in thread_children() {
        if before.contains(&pid) {
            continue;
        }
        if let Ok(p) = Process::from_child(pid) {
            p.kill_and_reap();
            n += 1;
        }
    }
    n
}

#[cfg(test)]
#[allow(clippy::zombie_processes)] // reaped through the pidfd, which clippy cannot see
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exit_code_and_signal() {
        let child = Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        let p = Process::from_child(child.id() as i32).unwrap();
        let exit = p.wait().unwrap();
        assert_eq!(exit.code, 7);
        assert_eq!(exit.signal, None);
        // Reaped once; the recorded exit stays.
        assert_eq!(p.try_wait().unwrap().map(|e| e.code), Some(7));
        assert_eq!(p.signal(libc::SIGTERM).unwrap_err().raw_os_error(), Some(libc::ESRCH));

        let child = Command::new("sleep").arg("100").spawn().unwrap();
        let p = Process::from_child(child.id() as i32).unwrap();
        assert!(p.try_wait().unwrap().is_none());
        assert!(p.wait_timeout(Some(Duration::from_millis(20))).unwrap().is_none());
        p.signal(libc::SIGKILL).unwrap();
        let exit = p.wait().unwrap();
        assert_eq!((exit.code, exit.signal), (128 + libc::SIGKILL, Some(libc::SIGKILL)));
        // No zombie left behind.
        assert!(!std::path::Path::new(&format!("/proc/{}", child.id())).exists());
    }

    #[test]
    fn new_children_are_reaped() {
        // Hold the children snapshot and the spawn on one thread, as create does.
        std::thread::spawn(|| {
            let before = thread_children();
            let child = Command::new("sleep").arg("100").spawn().unwrap();
            assert!(thread_children().contains(&(child.id() as i32)));
            assert_eq!(reap_new_children(&before), 1);
            assert!(!thread_children().contains(&(child.id() as i32)));
        })
        .join()
        .unwrap();
    }
}
