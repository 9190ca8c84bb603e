//! A long-running process of the cluster (etcd, an agent) started inside a network namespace,
//! stdout and stderr appended to a log file, stopped and killed by its PID only.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podnet_netns::NetNs;

pub(crate) struct Daemon {
    /// What it is, for messages: "etcd", "agent a".
    pub what: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    ns: NetNs,
    child: Option<Child>,
    /// What went wrong while stopping it (an exit nobody asked for, a SIGKILL after the grace
    /// time), for the owner's cleanup report.
    pub problems: Vec<String>,
}

impl Daemon {
    /// A daemon to run in the namespace at `ns_path` (kept open, so it outlives the name),
    /// logging to `<dir>/<log_name>`. Nothing runs until [`Daemon::spawn`].
    pub fn new(what: &str, ns_path: &Path, program: PathBuf, dir: &Path, log_name: &str) -> Daemon {
        let ns = NetNs::open(ns_path).unwrap_or_else(|e| panic!("{what}: opening its namespace: {e}"));
        Daemon {
            what: what.to_string(),
            program,
            args: Vec::new(),
            env: default_env(),
            dir: dir.to_path_buf(),
            log_path: dir.join(log_name),
            ns,
            child: None,
            problems: Vec::new(),
        }
    }

    /// Starts it (a new run appends to the log, after a line naming the run). Panics when it
    /// runs; a run that ended unnoticed is recorded in `problems`.
    pub fn spawn(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            let status = self.exited().unwrap_or_else(|| panic!("{} is already running", self.what));
            self.problems.push(format!("{} had exited on its own ({status}) before it was started again", self.what));
        }
        let mut log = fs::OpenOptions::new().create(true).append(true).open(&self.log_path)?;
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        writeln!(log, "=== podnet-tests: {} starts at {:.3} (unix time)", self.what, since_epoch.as_secs_f64())?;
        let log2 = log.try_clone()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a ^C at the terminal goes to the test alone.
            .process_group(0);
        let fd = self.ns.as_fd().try_clone_to_owned()?;
        // SAFETY: pre_exec runs in the forked child before exec; setns is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child =
            cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("spawning {}: {e}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The exit status when it has exited (reaped; the daemon is then not running).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// SIGTERM by PID, then waits up to `grace` and SIGKILLs; reaps it. None when it was not
    /// running. An exit before the SIGTERM, and the SIGKILL, are recorded in `problems`.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            self.problems.push(format!("{} had exited on its own ({status}) before it was stopped", self.what));
            return Some(status);
        }
        // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.problems.push(format!("{} did not exit within {grace:?} of SIGTERM: SIGKILLed", self.what));
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL by PID; reaps it. None when it was not running.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::last_lines(&self.log(), lines)
    }

    /// Copies the log to `<dir>.log` when `keep`; removes the directory. Returns where the log
    /// was kept.
    pub fn remove_dir(&self, keep: bool) -> Option<PathBuf> {
        let kept = self.dir.with_extension("log");
        let kept = (keep && fs::copy(&self.log_path, &kept).is_ok()).then_some(kept);
        let _ = fs::remove_dir_all(&self.dir);
        kept
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The owners stop it first; this is the last resort (a panic half-way through new()).
        self.kill();
    }
}

/// PATH with the system directories, and RUST_LOG/RUST_BACKTRACE when set.
fn default_env() -> Vec<(String, String)> {
    let mut env =
        vec![("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string())];
    for k in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(k) {
            env.push((k.to_string(), v));
        }
    }
    env
}
