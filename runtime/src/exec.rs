//! Processes exec'd in a running container, and the container's registry of them: the one
//! registry of execs (containerd's Exec registers one, Start runs it, Delete forgets it; the
//! shim keeps none of its own). An exit is reported once: [`Container::exec_exits`] hands
//! each exited process over a single time, so the caller publishes it once.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use libcontainer::oci_spec::runtime::Process as OciProcess;

use crate::container::{Container, Status};
use crate::create::{libcontainer_build, set_oom_score_adj, validate_id, SpecExecutor};
use crate::error::{Error, Result};
use crate::process::{Exit, Process};
use crate::stdio::{self, Io, StdioConfig};
use crate::{spec, Runtime};

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

/// One registered exec: its process spec and stdio until it starts, then its process.
struct Entry {
    spec: OciProcess,
    stdio: StdioConfig,
    process: Option<Arc<ExecProcess>>,
    /// The exit, once handed over by [`Container::exec_exits`].
    reported: Option<Exit>,
}

/// A container's execs by id.
#[derive(Default)]
pub(crate) struct Execs(Mutex<BTreeMap<String, Entry>>);

impl Execs {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The started processes (for the container's wait and delete).
    pub(crate) fn started(&self) -> Vec<Arc<ExecProcess>> {
        self.lock().values().filter_map(|e| e.process.clone()).collect()
    }

    /// Forgets every exec; returns the started processes.
    pub(crate) fn drain(&self) -> Vec<Arc<ExecProcess>> {
        std::mem::take(&mut *self.lock()).into_values().filter_map(|e| e.process).collect()
    }
}

/// What the registry knows of one exec.
pub struct ExecInfo {
    pub stdio: StdioConfig,
    /// Once started.
    pub process: Option<Arc<ExecProcess>>,
    /// Once its exit was handed over by [`Container::exec_exits`].
    pub reported: Option<Exit>,
}

impl Container {
    /// Registers the exec `exec_id` with its process and stdio; [`Container::start_exec`]
    /// runs it.
    pub fn add_exec(&self, exec_id: &str, proc_spec: &OciProcess, stdio_cfg: StdioConfig) -> Result<()> {
        validate_id(exec_id).map_err(|_| Error::InvalidId(exec_id.to_string()))?;
        let mut execs = self.execs.lock();
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("{}/{exec_id}", self.id)));
        }
        execs.insert(
            exec_id.to_string(),
            Entry { spec: proc_spec.clone(), stdio: stdio_cfg, process: None, reported: None },
        );
        Ok(())
    }

    /// Starts the registered exec `exec_id` in the running container, with its OCI process
    /// (args, env, cwd, user, terminal, capabilities...). The process decides what the OCI spec
    /// lets a process decide; the rest of its confinement is the container's, as for the init:
    /// namespaces, cgroup, seccomp profile (libcontainer is patched for it, third_party/README.md),
    /// and the same adaptation of the process as the init's (`spec::prepare_process`: AppArmor
    /// where the kernel has it, oomScoreAdj on the process). A failed start leaves the exec
    /// registered, not started.
    pub fn start_exec(&self, exec_id: &str, runtime: &Runtime) -> Result<Arc<ExecProcess>> {
        let (proc_spec, stdio_cfg) = match self.execs.lock().get(exec_id) {
            None => return Err(Error::State { what: "exec", id: exec_id.to_string(), op: "start", state: "unknown" }),
            Some(e) if e.process.is_some() => {
                return Err(Error::State { what: "exec", id: exec_id.to_string(), op: "start", state: "started" })
            }
            Some(e) => (e.spec.clone(), e.stdio.clone()),
        };
        if self.status() != Status::Running {
            return Err(self.state_error("exec"));
        }
        let mut proc_spec = proc_spec;
        let oom_score_adj = spec::prepare_process(&mut proc_spec, &mut Vec::new())
            .map_err(|(field, msg)| Error::spec(format!("exec {exec_id:?} in {:?}", self.id), field, msg))?;
        let json = self.dir.join(format!("exec-{exec_id}.json"));
        let bytes = serde_json::to_vec(&proc_spec).map_err(|e| Error::io("encoding the exec process", e.into()))?;
        fs::write(&json, bytes).map_err(|e| Error::io(format!("writing {}", json.display()), e))?;
        let result = self.exec_in(exec_id, &json, &proc_spec, oom_score_adj, stdio_cfg, runtime);
        let removed = fs::remove_file(&json).map_err(|e| Error::io(format!("removing {}", json.display()), e));
        let exec = Arc::new(result?);
        if let Err(e) = removed {
            tracing::warn!("{e}");
        }
        if let Some(entry) = self.execs.lock().get_mut(exec_id) {
            entry.process = Some(exec.clone());
        }
        Ok(exec)
    }

    /// Registers and starts the exec `exec_id` ([`Container::add_exec`] and
    /// [`Container::start_exec`]); on failure nothing stays registered.
    pub fn exec(
        &self,
        exec_id: &str,
        proc_spec: &OciProcess,
        stdio_cfg: StdioConfig,
        runtime: &Runtime,
    ) -> Result<Arc<ExecProcess>> {
        self.add_exec(exec_id, proc_spec, stdio_cfg)?;
        self.start_exec(exec_id, runtime).inspect_err(|_| {
            self.execs.lock().remove(exec_id);
        })
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

    /// The started exec `exec_id`.
    pub fn exec_process(&self, exec_id: &str) -> Option<Arc<ExecProcess>> {
        self.execs.lock().get(exec_id).and_then(|e| e.process.clone())
    }

    /// The registered exec `exec_id`.
    pub fn exec_info(&self, exec_id: &str) -> Option<ExecInfo> {
        self.execs.lock().get(exec_id).map(|e| ExecInfo {
            stdio: e.stdio.clone(),
            process: e.process.clone(),
            reported: e.reported,
        })
    }

    /// Forgets an exec that has exited or never started (containerd's Delete of an exec);
    /// returns its exit.
    pub fn remove_exec(&self, exec_id: &str) -> Result<Option<Exit>> {
        let process = match self.execs.lock().get(exec_id) {
            None => return Err(Error::State { what: "exec", id: exec_id.to_string(), op: "delete", state: "unknown" }),
            Some(e) => e.process.clone(),
        };
        let Some(exec) = process else {
            self.execs.lock().remove(exec_id);
            return Ok(None);
        };
        match exec.process.try_wait() {
            Ok(Some(exit)) => {
                exec.io.shutdown();
                self.execs.lock().remove(exec_id);
                Ok(Some(exit))
            }
            Ok(None) => Err(Error::State { what: "exec", id: exec_id.to_string(), op: "delete", state: "running" }),
            Err(e) => Err(Error::io(format!("exec {exec_id:?}"), e)),
        }
    }

    /// The execs that exited since the last call (reaping them), each handed over once.
    pub fn exec_exits(&self) -> Vec<(Arc<ExecProcess>, Exit)> {
        let mut out = Vec::new();
        for e in self.execs.lock().values_mut() {
            if let (Some(p), None) = (&e.process, e.reported) {
                if let Ok(Some(exit)) = p.process.try_wait() {
                    e.reported = Some(exit);
                    out.push((p.clone(), exit));
                }
            }
        }
        out
    }

    /// The started execs whose exit has not been handed over yet (the init's exit is reported
    /// after theirs).
    pub fn unreported_execs(&self) -> Vec<Arc<ExecProcess>> {
        self.execs.lock().values().filter(|e| e.reported.is_none()).filter_map(|e| e.process.clone()).collect()
    }

    /// The ids of the registered execs whose exit has not been handed over (never started, or
    /// still running).
    pub fn pending_exec_ids(&self) -> Vec<String> {
        self.execs.lock().iter().filter(|(_, e)| e.reported.is_none()).map(|(id, _)| id.clone()).collect()
    }
}
