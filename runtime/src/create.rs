//! Creating a container: the bundle's spec prepared, its cgroup opened, libcontainer's build
//! of the init (an app's process, or podnet's pause), and the undo of a build that failed.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libcontainer::oci_spec::runtime::LinuxNamespaceType;

use crate::build::{libcontainer_build, set_oom_score_adj, validate_id, SpecExecutor};
use crate::cgroup::{Cgroup, Driver};
use crate::container::{Container, CreateOptions, Flags};
use crate::error::{Error, Errors, Result};
use crate::exec::Execs;
use crate::pause::PauseExecutor;
use crate::process::Process;
use crate::stdio::{self, StdioConfig};
use crate::{spec, Runtime};

/// One container to build: [`Runtime::build`]'s input.
pub(crate) struct Build<'a> {
    pub id: &'a str,
    pub prepared: spec::Prepared,
    pub stdio: StdioConfig,
    pub workload: Workload,
    /// The namespaces a sandbox shares with the containers that join it.
    pub sandbox_kinds: Option<Vec<LinuxNamespaceType>>,
}

/// Why a container is being created: the build differs only in what runs.
pub(crate) enum Workload {
    Spec,
    Pause(PauseExecutor),
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
            let c = self.build(Build {
                id,
                prepared,
                stdio: opts.stdio,
                workload: Workload::Pause(exec),
                sandbox_kinds: None,
            });
            drop(pause);
            return c;
        }
        self.build(Build { id, prepared, stdio: opts.stdio, workload: Workload::Spec, sandbox_kinds: None })
    }

    /// The common create path for app containers and the pause.
    pub(crate) fn build(&self, b: Build<'_>) -> Result<Container> {
        let Build { id, mut prepared, .. } = b;
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
        let result = self.build_in(Build { prepared, ..b }, &dir, &cgroup);
        if let Err(first) = result {
            // The build reaped what it started; what remains is the cgroup (and unit) and the
            // directory. Failing to remove them is reported with the build's own error.
            let mut errs = Errors::new();
            errs.add(first);
            errs.push(cgroup.remove());
            if let Err(e) = fs::remove_dir_all(&dir) {
                errs.add(Error::io(format!("removing {} after the failed create", dir.display()), e));
            }
            return Err(errs.into_error().unwrap_or_else(|| Error::Unsupported(format!("creating {id:?} failed"))));
        }
        result
    }

    /// Builds the container described by `b` in its state directory `dir` and cgroup.
    fn build_in(&self, b: Build<'_>, dir: &Path, cgroup: &Arc<Cgroup>) -> Result<Container> {
        let Build { id, prepared, stdio: stdio_cfg, workload, sandbox_kinds } = b;
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
            execs: Execs::default(),
            sandbox_kinds,
            warnings,
        })
    }
}
