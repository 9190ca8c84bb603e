//! One container: its init process, exec'd processes, stdio, cgroup, and libcontainer state.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libcgroups::common::{AnyCgroupManager, CgroupManager, ControllerOpt, FreezerState};
use libcontainer::container::Container as LcContainer;
use libcontainer::oci_spec::runtime::{Hook, LinuxNamespaceType, LinuxResources, Process as OciProcess};

use crate::build::validate_id;
use crate::cgroup::{Cgroup, Driver};
use crate::error::{Error, Errors, Result};
use crate::exec::{ExecInfo, ExecProcess, Execs, Host};
use crate::join::SandboxHandle;
use crate::process::{pidfd_open, pidfd_send_signal, Exit, Process};
use crate::stdio::{Io, StdioConfig};
use crate::Runtime;

pub use libcgroups::stats::{MemoryData, Stats};

/// How long delete waits for a killed container's processes to be gone before it reports them.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// The lifecycle state, as containerd's Task service names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What to create a container with besides its bundle.
#[derive(Default)]
pub struct CreateOptions {
    pub stdio: StdioConfig,
    /// Join this pod sandbox's namespaces (container mode), whatever the spec says for them.
    pub sandbox: Option<SandboxHandle>,
    /// Run in this network namespace (a bind mount such as /var/run/netns/<name>) instead of
    /// the one the spec names or asks for.
    pub netns: Option<PathBuf>,
    /// podnet's `systemd_cgroup`: the cgroup driver (`cgroup::choose`).
    pub systemd_cgroup: Option<bool>,
    /// Run the embedded pause instead of the spec's process (a pod sandbox whose image has no
    /// pause binary): the rest of the spec applies as written.
    pub embedded_pause: bool,
}

pub struct Container {
    pub(crate) id: String,
    /// `<runtime root>/<id>`: the effective config.json, console sockets, and libcontainer's
    /// own state directory `<id>/`.
    pub(crate) dir: PathBuf,
    pub(crate) cgroup: Arc<Cgroup>,
    pub(crate) poststop: Option<Vec<Hook>>,
    pub(crate) lc: Mutex<LcContainer>,
    pub(crate) init: Arc<Process>,
    pub(crate) io: Io,
    pub(crate) flags: Mutex<Flags>,
    pub(crate) execs: Execs,
    pub(crate) sandbox_kinds: Option<Vec<LinuxNamespaceType>>,
    pub(crate) warnings: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Flags {
    started: bool,
    paused: bool,
    deleted: bool,
}

impl Runtime {
    /// Cleans up after a container whose owner died (containerd's `shim delete`): kills every
    /// process left in its cgroup, waits for them to be gone, removes the cgroup and the
    /// container's state directory. Nothing left is not an error. Keeps going after a failure
    /// and reports them all.
    pub fn cleanup(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let dir = self.root.join(id);
        let cgroup_path = fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<libcontainer::oci_spec::runtime::Spec>(&b).ok())
            .and_then(|s| s.linux().as_ref().and_then(|l| l.cgroups_path().clone()))
            .unwrap_or_else(|| PathBuf::from(format!("/podnet/{id}")));
        let mut errs = Errors::default();
        let cgroup = Driver::load(&dir).and_then(|driver| Cgroup::open(id, &cgroup_path, driver));
        match cgroup {
            Ok(cg) => {
                if cg.exists() {
                    errs.push(cg.with(|m| kill_cgroup(m, id)).and_then(|fds| wait_gone(&fds, id)));
                }
                errs.push(cg.remove());
            }
            Err(e) => errs.add(e),
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.add(Error::io(format!("removing {}", dir.display()), e));
            }
        }
        errs.into_result()
    }
}

/// SIGKILLs every process in the cgroup `mgr` manages, frozen so that nothing forks meanwhile.
/// Returns their pidfds, readable once each is gone.
fn kill_cgroup(mgr: &AnyCgroupManager, id: &str) -> Result<Vec<std::os::fd::OwnedFd>> {
    let list = || mgr.get_all_pids().map_err(|e| Error::container(format!("listing the processes of {id:?}"), &e));
    if list()?.is_empty() {
        return Ok(Vec::new());
    }
    let _ = mgr.freeze(FreezerState::Frozen);
    let pids = list().inspect_err(|_| {
        let _ = mgr.freeze(FreezerState::Thawed);
    })?;
    let mut fds = Vec::new();
    for pid in pids {
        if let Ok(fd) = pidfd_open(pid.as_raw()) {
            let _ = pidfd_send_signal(&fd, libc::SIGKILL);
            fds.push(fd);
        }
    }
    let _ = mgr.freeze(FreezerState::Thawed);
    Ok(fds)
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pid(&self) -> i32 {
        self.init.pid()
    }

    /// The init process (its pidfd is readable once it exits).
    pub fn init(&self) -> &Arc<Process> {
        &self.init
    }

    pub fn io(&self) -> &Io {
        &self.io
    }

    /// What a container joining this one's `kinds` of namespaces needs (container mode, for a
    /// container that is not a pause sandbox: the first container of a standalone pod).
    pub fn join_handle(&self, kinds: &[LinuxNamespaceType]) -> SandboxHandle {
        SandboxHandle::new(self.init.clone(), kinds.to_vec())
    }

    pub(crate) fn sandbox_kinds(&self) -> Option<&[LinuxNamespaceType]> {
        self.sandbox_kinds.as_deref()
    }

    /// What was skipped because this kernel lacks it (AppArmor), for the caller to log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `linux.cgroupsPath` as prepared.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup.path
    }

    /// The container's cgroup directory below the hierarchy roots: the systemd unit's, or the
    /// cgroupfs path (relative: below this process's own cgroup, `cgroup::in_hierarchy`).
    pub fn cgroup_dir(&self) -> &Path {
        &self.cgroup.dir
    }

    /// Runs `f` with the container's cgroup manager.
    fn with_cgroup<T>(&self, f: impl FnOnce(&AnyCgroupManager) -> Result<T>) -> Result<T> {
        self.cgroup.with(f)
    }

    fn flags(&self) -> std::sync::MutexGuard<'_, Flags> {
        self.flags.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        if matches!(self.init.try_wait(), Ok(Some(_))) || self.init.exit().is_some() {
            return Status::Stopped;
        }
        let f = self.flags();
        match (f.started, f.paused) {
            (_, true) => Status::Paused,
            (true, false) => Status::Running,
            (false, false) => Status::Created,
        }
    }

    pub(crate) fn state_error(&self, op: &'static str) -> Error {
        Error::State { what: "container", id: self.id.clone(), op, state: self.status().as_str() }
    }

    /// Lets the init process run the spec's process (or the pause).
    pub fn start(&self) -> Result<()> {
        if self.status() != Status::Created {
            return Err(self.state_error("start"));
        }
        let mut lc = self.lc.lock().unwrap_or_else(|p| p.into_inner());
        lc.start().map_err(|e| Error::container(format!("starting container {:?}", self.id), &e))?;
        self.flags().started = true;
        Ok(())
    }

    /// Sends `signal` to the init process, or with `all` to every process in the container's
    /// cgroup. The init's signal goes through its pidfd, never to a recycled PID.
    pub fn kill(&self, signal: i32, all: bool) -> Result<()> {
        if all {
            self.kill_all(signal).map(|_| ())
        } else {
            self.init.signal(signal).map_err(|e| {
                if e.raw_os_error() == Some(libc::ESRCH) {
                    Error::Exited { what: "container", id: self.id.clone() }
                } else {
                    Error::io(format!("signal {signal} to container {:?}", self.id), e)
                }
            })
        }
    }

    /// Signals every process in the cgroup (frozen meanwhile for SIGKILL, so nothing forks
    /// away), and returns pidfds for them so a caller can wait for them to be gone.
    fn kill_all(&self, signal: i32) -> Result<Vec<std::os::fd::OwnedFd>> {
        let list = |mgr: &AnyCgroupManager| match mgr.get_all_pids() {
            Ok(p) => Ok(p),
            Err(_) if !self.cgroup.exists() => Ok(Vec::new()),
            Err(e) => Err(Error::container(format!("listing the processes of {:?}", self.id), &e)),
        };
        let mut pids = self.with_cgroup(list)?;
        if pids.is_empty() {
            return Ok(Vec::new());
        }
        let freeze = signal == libc::SIGKILL;
        if freeze {
            let _ = self.with_cgroup(|m| Ok(m.freeze(FreezerState::Frozen)));
            // Listed again frozen: nothing can fork in between. A failure must not leave the
            // cgroup frozen.
            pids = self.with_cgroup(list).inspect_err(|_| {
                let _ = self.with_cgroup(|m| Ok(m.freeze(FreezerState::Thawed)));
            })?;
        }
        let mut fds = Vec::new();
        for pid in pids {
            // Signal through a pidfd so that a PID that exited meanwhile is not hit in reuse.
            if let Ok(fd) = pidfd_open(pid.as_raw()) {
                let _ = pidfd_send_signal(&fd, signal);
                fds.push(fd);
            }
        }
        if freeze {
            let _ = self.with_cgroup(|m| Ok(m.freeze(FreezerState::Thawed)));
            self.flags().paused = false;
        }
        Ok(fds)
    }

    fn exec_host(&self) -> Host<'_> {
        Host { id: &self.id, dir: &self.dir }
    }

    /// Registers the exec `exec_id` with its process and stdio; [`Container::start_exec`]
    /// runs it.
    pub fn add_exec(&self, exec_id: &str, proc_spec: &OciProcess, stdio: StdioConfig) -> Result<()> {
        self.execs.add(&self.exec_host(), exec_id, proc_spec, stdio)
    }

    /// Starts the registered exec `exec_id` in the running container, with its OCI process
    /// (args, env, cwd, user, terminal, capabilities...). The process decides what the OCI spec
    /// lets a process decide; the rest of its confinement is the container's, as for the init:
    /// namespaces, cgroup, seccomp profile (libcontainer is patched for it, third_party/README.md),
    /// and the same adaptation of the process as the init's (`spec::prepare_process`: AppArmor
    /// where the kernel has it, oomScoreAdj on the process). A failed start leaves the exec
    /// registered, not started.
    pub fn start_exec(&self, exec_id: &str, runtime: &Runtime) -> Result<Arc<ExecProcess>> {
        let what = self.execs.startable(exec_id)?;
        if self.status() != Status::Running {
            return Err(self.state_error("exec"));
        }
        self.execs.start(&self.exec_host(), exec_id, what, runtime)
    }

    /// Registers and starts the exec `exec_id`; on failure nothing stays registered.
    pub fn exec(
        &self,
        exec_id: &str,
        proc_spec: &OciProcess,
        stdio: StdioConfig,
        runtime: &Runtime,
    ) -> Result<Arc<ExecProcess>> {
        self.add_exec(exec_id, proc_spec, stdio)?;
        self.start_exec(exec_id, runtime).inspect_err(|_| self.execs.forget(exec_id))
    }

    /// The started exec `exec_id`.
    pub fn exec_process(&self, exec_id: &str) -> Option<Arc<ExecProcess>> {
        self.execs.process(exec_id)
    }

    /// The registered exec `exec_id`.
    pub fn exec_info(&self, exec_id: &str) -> Option<ExecInfo> {
        self.execs.info(exec_id)
    }

    /// Forgets an exec that has exited or never started (containerd's Delete of an exec);
    /// returns its exit.
    pub fn remove_exec(&self, exec_id: &str) -> Result<Option<Exit>> {
        self.execs.remove(exec_id)
    }

    /// The execs that exited since the last call (reaping them), each handed over once.
    pub fn exec_exits(&self) -> Vec<(Arc<ExecProcess>, Exit)> {
        self.execs.exits()
    }

    /// The started execs whose exit has not been handed over yet (the init's exit is reported
    /// after theirs).
    pub fn unreported_execs(&self) -> Vec<Arc<ExecProcess>> {
        self.execs.unreported()
    }

    /// The ids of the registered execs whose exit has not been handed over (never started, or
    /// still running).
    pub fn pending_exec_ids(&self) -> Vec<String> {
        self.execs.pending_ids()
    }

    /// Waits for the init to exit, and for its terminal output to be copied out. Exec'd
    /// processes that exit meanwhile are reaped (their exits stay recorded): a PID namespace's
    /// init cannot finish exiting while one of them is an unreaped zombie.
    pub fn wait(&self) -> Result<Exit> {
        use std::os::fd::{AsFd, AsRawFd};
        let err = |e| Error::io(format!("container {:?}", self.id), e);
        let exit = loop {
            if let Some(exit) = self.init.try_wait().map_err(err)? {
                break exit;
            }
            let execs = self.execs.started();
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.init.as_fd())
                .chain(execs.iter().filter(|e| e.process().exit().is_none()).map(|e| e.process().as_fd()))
                .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err(e));
                }
            }
            for e in &execs {
                let _ = e.process().try_wait();
            }
        };
        self.io.wait_output();
        Ok(exit)
    }

    /// The PIDs in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let pids = self.with_cgroup(|m| {
            m.get_all_pids().map_err(|e| Error::container(format!("listing the processes of {:?}", self.id), &e))
        })?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// cgroup statistics: cpu, memory, pids (and whatever else the controllers report).
    pub fn stats(&self) -> Result<Stats> {
        self.with_cgroup(|m| m.stats().map_err(|e| Error::container(format!("stats of {:?}", self.id), &e)))
    }

    /// Applies new resource limits to the running container.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        if self.status() == Status::Stopped {
            return Err(self.state_error("update"));
        }
        let opt = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
        self.with_cgroup(|m| {
            m.apply(&opt).map_err(|e| Error::container(format!("updating the resources of {:?}", self.id), &e))
        })
    }

    /// Freezes every process of the container.
    pub fn pause(&self) -> Result<()> {
        if self.status() != Status::Running {
            return Err(self.state_error("pause"));
        }
        self.with_cgroup(|m| {
            m.freeze(FreezerState::Frozen).map_err(|e| Error::container(format!("pausing {:?}", self.id), &e))
        })?;
        self.flags().paused = true;
        Ok(())
    }

    pub fn resume(&self) -> Result<()> {
        if self.status() != Status::Paused {
            return Err(self.state_error("resume"));
        }
        self.with_cgroup(|m| {
            m.freeze(FreezerState::Thawed).map_err(|e| Error::container(format!("resuming {:?}", self.id), &e))
        })?;
        self.flags().paused = false;
        Ok(())
    }

    /// Kills whatever still runs, reaps it, removes the cgroup, runs the poststop hooks and
    /// removes the state. Keeps going after a failure and reports them all. Returns the init's
    /// exit. Idempotent.
    pub fn delete(&self) -> Result<Exit> {
        let mut errs = Errors::default();
        if self.flags().deleted {
            return self.init.exit().ok_or_else(|| self.state_error("delete"));
        }
        let killed = self.kill_all(libc::SIGKILL);
        // The exec'd processes are this process's children: reap them first. A dying PID
        // namespace init waits until every process of its namespace is reaped, so the init
        // cannot finish exiting while an exec's zombie is left.
        let execs = self.execs.drain();
        for exec in execs {
            let _ = exec.process().signal(libc::SIGKILL);
            if let Err(e) = exec.process().wait() {
                errs.add(Error::io(format!("reaping exec {:?}", exec.id), e));
            }
            exec.io().shutdown();
        }
        match killed {
            Ok(fds) => errs.push(wait_gone(&fds, &self.id)),
            Err(e) => errs.add(e),
        }
        let _ = self.init.signal(libc::SIGKILL);
        let exit = self.init.wait().map_err(|e| Error::io(format!("reaping the init of {:?}", self.id), e));
        self.io.shutdown();
        // libcontainer's delete would build another cgroup manager; this one is at hand.
        errs.push(self.cgroup.remove());
        if self.poststop.is_some() {
            let lc = self.lc.lock().unwrap_or_else(|p| p.into_inner());
            let mut state = lc.state.clone();
            state.status = libcontainer::container::ContainerStatus::Stopped;
            if let Err(e) = libcontainer::hooks::run_hooks(self.poststop.as_ref(), Some(&state), None, None, None) {
                errs.add(Error::container(format!("poststop hooks of {:?}", self.id), &e));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.add(Error::io(format!("removing {}", self.dir.display()), e));
            }
        }
        self.flags().deleted = true;
        let exit = match exit {
            Ok(exit) => Some(exit),
            Err(e) => {
                errs.add(e);
                None
            }
        };
        errs.into_result()?;
        exit.ok_or_else(|| self.state_error("delete"))
    }
}

/// Waits (on their pidfds, no polling) for killed processes to be gone.
fn wait_gone(fds: &[std::os::fd::OwnedFd], id: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + KILL_GRACE;
    for fd in fds {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Container {
                    context: format!("deleting container {id:?}"),
                    msg: format!("processes still alive {}s after SIGKILL", KILL_GRACE.as_secs()),
                });
            }
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let r = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if r > 0 || (r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted) {
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "pod-1_x.y", &"a".repeat(1024)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"a".repeat(1025)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
