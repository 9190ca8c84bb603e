//! One container: its init process, exec'd processes, stdio, cgroup, and libcontainer state.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libcgroups::common::{AnyCgroupManager, CgroupManager, ControllerOpt, FreezerState};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as LcContainer;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::{Hook, LinuxNamespaceType, LinuxResources, Process as OciProcess};
use libcontainer::syscall::syscall::SyscallType;

use crate::cgroup::{Cgroup, Driver};
use crate::error::{Error, Errors, Result};
use crate::process::{self, pidfd_open, pidfd_send_signal, Exit, Process};
use crate::sandbox::SandboxHandle;
use crate::stdio::{self, Io, StdioConfig};
use crate::{spec, Runtime};

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

/// A process started in a running container (exec).
pub struct ExecProcess {
    pub id: String,
    process: Process,
    io: Io,
}

impl ExecProcess {
    pub fn pid(&self) -> i32 {
        self.process.pid()
    }
    pub fn process(&self) -> &Process {
        &self.process
    }
    pub fn io(&self) -> &Io {
        &self.io
    }
    /// Waits for the exit and for the terminal output to be copied out.
    pub fn wait(&self) -> Result<Exit> {
        let exit = self.process.wait().map_err(|e| Error::io(format!("exec {:?}", self.id), e))?;
        self.io.wait_output();
        Ok(exit)
    }
}

pub struct Container {
    id: String,
    /// `<runtime root>/<id>`: the effective config.json, console sockets, and libcontainer's
    /// own state directory `<id>/`.
    dir: PathBuf,
    cgroup: Arc<Cgroup>,
    poststop: Option<Vec<Hook>>,
    lc: Mutex<LcContainer>,
    init: Arc<Process>,
    io: Io,
    flags: Mutex<Flags>,
    execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
    sandbox_kinds: Option<Vec<LinuxNamespaceType>>,
    warnings: Vec<String>,
}

#[derive(Default)]
struct Flags {
    started: bool,
    paused: bool,
    deleted: bool,
}

/// libcontainer's default workload, except that a program given by absolute path needs no PATH
/// in the environment (runc's rule: the pause image's `/pause` runs with an empty env).
#[derive(Clone)]
pub(crate) struct SpecExecutor;

impl libcontainer::workload::Executor for SpecExecutor {
    fn exec(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> std::result::Result<(), libcontainer::workload::ExecutorError> {
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> std::result::Result<(), libcontainer::workload::ExecutorValidationError> {
        use std::os::unix::fs::PermissionsExt;
        let program = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first());
        match program {
            Some(p) if p.starts_with('/') => match fs::metadata(p) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
                Ok(_) => Err(libcontainer::workload::ExecutorValidationError::ArgValidationError(format!(
                    "executable {p:?} is not an executable file"
                ))),
                Err(e) => Err(libcontainer::workload::ExecutorValidationError::ArgValidationError(format!(
                    "executable {p:?}: {e}"
                ))),
            },
            _ => libcontainer::workload::default::DefaultExecutor {}.validate(spec),
        }
    }
}

/// Why a container is being created: the build differs only in what runs.
pub(crate) enum Workload {
    Spec,
    Pause(crate::sandbox::PauseExecutor),
}

impl Runtime {
    /// Creates the container `id` from the OCI bundle at `bundle` (config.json + rootfs). The
    /// init process exists when this returns, blocked until `start`.
    pub fn create(&self, id: &str, bundle: &Path, opts: CreateOptions) -> Result<Container> {
        validate_id(id)?;
        let file = bundle.join("config.json");
        let mut oci = spec::load(bundle)?;
        if let Some(sandbox) = &opts.sandbox {
            sandbox.check_alive()?;
            spec::join_namespaces(&mut oci, sandbox.pid(), sandbox.kinds());
        }
        if let Some(path) = &opts.netns {
            spec::set_namespace_path(&mut oci, LinuxNamespaceType::Network, path);
        }
        let prepared = spec::prepare(oci, bundle, &file, id, opts.systemd_cgroup)?;
        if opts.embedded_pause {
            let (pause, exec) = self.pause_executor()?;
            let c = self.build(id, prepared, opts.stdio, Workload::Pause(exec), None);
            drop(pause);
            return c;
        }
        self.build(id, prepared, opts.stdio, Workload::Spec, None)
    }

    /// The common create path for app containers and the pause.
    pub(crate) fn build(
        &self,
        id: &str,
        mut prepared: spec::Prepared,
        stdio_cfg: StdioConfig,
        workload: Workload,
        sandbox_kinds: Option<Vec<LinuxNamespaceType>>,
    ) -> Result<Container> {
        let cgroup_path = prepared
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .unwrap_or_else(|| PathBuf::from(format!("/podnet/{id}")));
        // Before anything is made: for systemd this asks systemd where the unit's cgroup is.
        let cgroup = Arc::new(Cgroup::open(id, &cgroup_path, prepared.driver)?);
        if prepared.joins_pid {
            spec::rewrite_v1_cgroup_mounts(&mut prepared.spec, &cgroup.dir, &spec::v1_hierarchies());
        }
        let dir = self.root.join(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyExists(id.to_string()))
            }
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
        let result = self.build_in(id, &dir, &cgroup, prepared, stdio_cfg, workload, sandbox_kinds);
        if result.is_err() {
            // The build reaped what it started; what remains is the cgroup (and unit) and the
            // directory.
            let _ = cgroup.remove();
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn build_in(
        &self,
        id: &str,
        dir: &Path,
        cgroup: &Arc<Cgroup>,
        prepared: spec::Prepared,
        stdio_cfg: StdioConfig,
        workload: Workload,
        sandbox_kinds: Option<Vec<LinuxNamespaceType>>,
    ) -> Result<Container> {
        let spec::Prepared { spec: oci, oom_score_adj, warnings, driver, joins_pid: _ } = prepared;
        driver.save(dir)?;
        let terminal = oci.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let poststop = oci.hooks().as_ref().and_then(|h| h.poststop().clone());
        spec::write(&oci, dir)?;
        let stdio_cfg = StdioConfig { terminal, ..stdio_cfg };
        let mut pending = stdio::prepare(&stdio_cfg, &dir.join("console.sock"))?;

        // libcontainer clones the calling process: one create at a time, the helper processes
        // of a failed one are found among this thread's new children, and the stdio pumps are
        // started before another clone can happen.
        let _fork = self.fork_lock.lock().unwrap_or_else(|p| p.into_inner());
        let lc = libcontainer_build(id, dir, &mut pending, &format!("creating container {id:?}"), |b| {
            let b = match workload {
                Workload::Pause(exec) => b.with_executor(exec),
                Workload::Spec => b.with_executor(SpecExecutor),
            };
            b.validate_id()?.as_init(dir).with_systemd(driver == Driver::Systemd).with_detach(true).build()
        })?;
        let Some(pid) = lc.pid() else {
            return Err(Error::Container {
                context: format!("creating container {id:?}"),
                msg: "no init pid in its state".into(),
            });
        };
        let init =
            Process::from_child(pid.as_raw()).map_err(|e| Error::io(format!("tracking the init of {id:?}"), e))?;
        // A failure from here on leaves an init blocked before start: end it.
        let kill_init = |_: &Error| init.kill_and_reap();
        if let Some(score) = oom_score_adj {
            set_oom_score_adj(pid.as_raw(), score).inspect_err(kill_init)?;
        }
        let io = pending.start(&format!("container {id:?}")).inspect_err(kill_init)?;
        Ok(Container {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            cgroup: Arc::clone(cgroup),
            poststop,
            lc: Mutex::new(lc),
            init: Arc::new(init),
            io,
            flags: Mutex::new(Flags::default()),
            execs: Mutex::new(HashMap::new()),
            sandbox_kinds,
            warnings,
        })
    }
}

/// One libcontainer build (an init with `as_init`, or an exec with `as_tenant`, chosen by
/// `finish`) of container `id` whose state lives in `root`, with `pending`'s stdio attached.
/// The caller holds the runtime's fork lock. On failure, the helper processes the build left
/// are killed and reaped, and libcontainer's logged cause is added to the error.
fn libcontainer_build<T>(
    id: &str,
    root: &Path,
    pending: &mut stdio::Pending,
    what: &str,
    finish: impl FnOnce(ContainerBuilder) -> Result<T, LibcontainerError>,
) -> Result<T> {
    let before = process::thread_children();
    let (built, details) = crate::capture::errors_of(|| {
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(root)?
            .with_console_socket(pending.console.as_ref().map(|(p, _)| p.clone()));
        if let Some(fd) = pending.stdin.take() {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = pending.stdout.take() {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = pending.stderr.take() {
            b = b.with_stderr(fd);
        }
        finish(b)
    });
    built.map_err(|err| {
        process::reap_new_children(&before);
        detailed(Error::container(what, &err), details)
    })
}

/// Appends what libcontainer logged about a failure (the cause, from inside the container's
/// init) to the error.
fn detailed(err: Error, details: Vec<String>) -> Error {
    match err {
        Error::Container { context, msg } if !details.is_empty() => {
            Error::Container { context, msg: format!("{msg} ({})", details.join("; ")) }
        }
        other => other,
    }
}

/// Container ids become directory and cgroup names.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

fn set_oom_score_adj(pid: i32, score: i32) -> Result<()> {
    let path = format!("/proc/{pid}/oom_score_adj");
    fs::write(&path, score.to_string()).map_err(|e| {
        let hint = if score < 0 {
            " (this kernel refuses to lower oom_score_adj below 0 here; with containerd's CRI set restrict_oom_score_adj = true)"
        } else {
            ""
        };
        Error::io(format!("process.oomScoreAdj {score}: writing {path}{hint}"), e)
    })
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
            Err(e) => errs.push(Err(e)),
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.push(Err(Error::io(format!("removing {}", dir.display()), e)));
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

    pub fn is_sandbox(&self) -> bool {
        self.sandbox_kinds.is_some()
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

    fn state_error(&self, op: &'static str) -> Error {
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

    /// Runs a process in the running container, with the given OCI process (args, env, cwd,
    /// user, terminal, capabilities...). It is started when this returns. The process decides
    /// what the OCI spec lets a process decide; the rest of its confinement is the container's,
    /// as for the init: namespaces, cgroup, seccomp profile (libcontainer is patched for it,
    /// third_party/README.md), and the same adaptation of the process as the init's
    /// (`spec::prepare_process`: AppArmor where the kernel has it, oomScoreAdj on the process).
    pub fn exec(
        &self,
        exec_id: &str,
        proc_spec: &OciProcess,
        stdio_cfg: StdioConfig,
        runtime: &Runtime,
    ) -> Result<Arc<ExecProcess>> {
        validate_id(exec_id).map_err(|_| Error::InvalidId(exec_id.to_string()))?;
        if self.status() != Status::Running {
            return Err(self.state_error("exec"));
        }
        if self.execs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("{}/{exec_id}", self.id)));
        }
        let mut proc_spec = proc_spec.clone();
        let oom_score_adj = spec::prepare_process(&mut proc_spec, &mut Vec::new())
            .map_err(|(field, msg)| Error::spec(format!("exec {exec_id:?} in {:?}", self.id), field, msg))?;
        let json = self.dir.join(format!("exec-{exec_id}.json"));
        let bytes = serde_json::to_vec(&proc_spec).map_err(|e| Error::io("encoding the exec process", e.into()))?;
        fs::write(&json, bytes).map_err(|e| Error::io(format!("writing {}", json.display()), e))?;
        let result = self.exec_in(exec_id, &json, &proc_spec, oom_score_adj, stdio_cfg, runtime);
        let _ = fs::remove_file(&json);
        let exec = Arc::new(result?);
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).insert(exec_id.to_string(), exec.clone());
        Ok(exec)
    }

    fn exec_in(
        &self,
        exec_id: &str,
        json: &Path,
        proc_spec: &OciProcess,
        oom_score_adj: Option<i32>,
        stdio_cfg: StdioConfig,
        runtime: &Runtime,
    ) -> Result<ExecProcess> {
        let terminal = proc_spec.terminal().unwrap_or(false);
        let stdio_cfg = StdioConfig { terminal, ..stdio_cfg };
        let mut pending = stdio::prepare(&stdio_cfg, &self.dir.join(format!("exec-{exec_id}.sock")))?;
        let what = format!("exec {exec_id:?} in {:?}", self.id);
        let _fork = runtime.fork_lock.lock().unwrap_or_else(|p| p.into_inner());
        let pid = libcontainer_build(&self.id, &self.dir, &mut pending, &what, |b| {
            b.with_executor(SpecExecutor).as_tenant().with_process(Some(json)).with_detach(true).build()
        })?;
        let process = Process::from_child(pid.as_raw()).map_err(|e| Error::io(what.clone(), e))?;
        if let Some(score) = oom_score_adj {
            set_oom_score_adj(pid.as_raw(), score).inspect_err(|_| process.kill_and_reap())?;
        }
        let io = pending.start(&what).inspect_err(|_| process.kill_and_reap())?;
        Ok(ExecProcess { id: exec_id.to_string(), process, io })
    }

    pub fn exec_process(&self, exec_id: &str) -> Option<Arc<ExecProcess>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner()).get(exec_id).cloned()
    }

    /// Forgets an exec'd process that has exited (containerd's Delete of an exec).
    pub fn remove_exec(&self, exec_id: &str) -> Result<Option<Exit>> {
        let Some(exec) = self.exec_process(exec_id) else {
            return Err(Error::State { what: "exec", id: exec_id.to_string(), op: "delete", state: "unknown" });
        };
        match exec.process.try_wait() {
            Ok(Some(exit)) => {
                exec.io.shutdown();
                self.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(exec_id);
                Ok(Some(exit))
            }
            Ok(None) => Err(Error::State { what: "exec", id: exec_id.to_string(), op: "delete", state: "running" }),
            Err(e) => Err(Error::io(format!("exec {exec_id:?}"), e)),
        }
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
            let execs: Vec<_> = self.execs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.init.as_fd())
                .chain(execs.iter().filter(|e| e.process.exit().is_none()).map(|e| e.process.as_fd()))
                .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err(e));
                }
            }
            for e in &execs {
                let _ = e.process.try_wait();
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
        let execs: Vec<_> = self.execs.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, e)| e).collect();
        for exec in execs {
            let _ = exec.process.signal(libc::SIGKILL);
            if let Err(e) = exec.process.wait() {
                errs.push(Err(Error::io(format!("reaping exec {:?}", exec.id), e)));
            }
            exec.io.shutdown();
        }
        match killed {
            Ok(fds) => errs.push(wait_gone(&fds, &self.id)),
            Err(e) => errs.push(Err(e)),
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
                errs.push(Err(Error::container(format!("poststop hooks of {:?}", self.id), &e)));
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.push(Err(Error::io(format!("removing {}", self.dir.display()), e)));
            }
        }
        self.flags().deleted = true;
        let exit = match exit {
            Ok(exit) => Some(exit),
            Err(e) => {
                errs.push(Err(e));
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
