//! Processes exec'd in a running container, and the container's registry of them: the one
//! registry of execs (containerd's Exec registers one, Start runs it, Delete forgets it; the
//! shim keeps none of its own). An exit is reported once: [`Execs::exits`] hands each exited
//! process over a single time, so the caller publishes it once. `Container`'s exec methods
//! are the public face of this registry.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use libcontainer::oci_spec::runtime::Process as OciProcess;

use crate::build::{libcontainer_build, set_oom_score_adj, validate_id, SpecExecutor};
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
    /// The exit, once handed over by [`Execs::exits`].
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
    /// Once its exit was handed over by the container's `exec_exits`.
    pub reported: Option<Exit>,
}

/// The container an exec runs in, as the registry needs it.
pub(crate) struct Host<'a> {
    pub id: &'a str,
    /// The container's state directory.
    pub dir: &'a Path,
}

impl Execs {
    pub(crate) fn add(&self, host: &Host<'_>, exec_id: &str, proc_spec: &OciProcess, stdio: StdioConfig) -> Result<()> {
        validate_id(exec_id).map_err(|_| Error::InvalidId(exec_id.to_string()))?;
        let mut execs = self.lock();
        if execs.contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!("{}/{exec_id}", host.id)));
        }
        execs.insert(exec_id.to_string(), Entry { spec: proc_spec.clone(), stdio, process: None, reported: None });
        Ok(())
    }

    /// The spec and stdio of the registered, not yet started exec `exec_id`.
    pub(crate) fn startable(&self, exec_id: &str) -> Result<(OciProcess, StdioConfig)> {
        match self.lock().get(exec_id) {
            None => Err(Error::State { what: "exec", id: exec_id.to_string(), op: "start", state: "unknown" }),
            Some(e) if e.process.is_some() => {
                Err(Error::State { what: "exec", id: exec_id.to_string(), op: "start", state: "started" })
            }
            Some(e) => Ok((e.spec.clone(), e.stdio.clone())),
        }
    }

    /// Starts `exec_id` (checked by [`Execs::startable`]) in `host`.
    pub(crate) fn start(
        &self,
        host: &Host<'_>,
        exec_id: &str,
        (proc_spec, stdio_cfg): (OciProcess, StdioConfig),
        runtime: &Runtime,
    ) -> Result<Arc<ExecProcess>> {
        let mut proc_spec = proc_spec;
        let oom_score_adj = spec::prepare_process(&mut proc_spec, &mut Vec::new())
            .map_err(|(field, msg)| Error::spec(format!("exec {exec_id:?} in {:?}", host.id), field, msg))?;
        let json = host.dir.join(format!("exec-{exec_id}.json"));
        let bytes = serde_json::to_vec(&proc_spec).map_err(|e| Error::io("encoding the exec process", e.into()))?;
        fs::write(&json, bytes).map_err(|e| Error::io(format!("writing {}", json.display()), e))?;
        let result = build_exec(host, exec_id, &json, &proc_spec, oom_score_adj, stdio_cfg, runtime);
        let removed = fs::remove_file(&json).map_err(|e| Error::io(format!("removing {}", json.display()), e));
        let exec = Arc::new(result?);
        if let Err(e) = removed {
            tracing::warn!("{e}");
        }
        if let Some(entry) = self.lock().get_mut(exec_id) {
            entry.process = Some(exec.clone());
        }
        Ok(exec)
    }

    pub(crate) fn forget(&self, exec_id: &str) {
        self.lock().remove(exec_id);
    }

    pub(crate) fn process(&self, exec_id: &str) -> Option<Arc<ExecProcess>> {
        self.lock().get(exec_id).and_then(|e| e.process.clone())
    }

    pub(crate) fn info(&self, exec_id: &str) -> Option<ExecInfo> {
        self.lock().get(exec_id).map(|e| ExecInfo {
            stdio: e.stdio.clone(),
            process: e.process.clone(),
            reported: e.reported,
        })
    }

    /// Forgets an exec that has exited or never started; returns its exit.
    pub(crate) fn remove(&self, exec_id: &str) -> Result<Option<Exit>> {
        let process = match self.lock().get(exec_id) {
            None => return Err(Error::State { what: "exec", id: exec_id.to_string(), op: "delete", state: "unknown" }),
            Some(e) => e.process.clone(),
        };
        let Some(exec) = process else {
            self.forget(exec_id);
            return Ok(None);
        };
        match exec.process.try_wait() {
            Ok(Some(exit)) => {
                exec.io.shutdown();
                self.forget(exec_id);
                Ok(Some(exit))
            }
            Ok(None) => Err(Error::State { what: "exec", id: exec_id.to_string(), op: "delete", state: "running" }),
            Err(e) => Err(Error::io(format!("exec {exec_id:?}"), e)),
        }
    }

    /// The execs that exited since the last call (reaping them), each handed over once.
    pub(crate) fn exits(&self) -> Vec<(Arc<ExecProcess>, Exit)> {
        let mut out = Vec::new();
        for e in self.lock().values_mut() {
            if let (Some(p), None) = (&e.process, e.reported) {
                if let Ok(Some(exit)) = p.process.try_wait() {
                    e.reported = Some(exit);
                    out.push((p.clone(), exit));
                }
            }
        }
        out
    }

    /// The started execs whose exit has not been handed over yet.
    pub(crate) fn unreported(&self) -> Vec<Arc<ExecProcess>> {
        self.lock().values().filter(|e| e.reported.is_none()).filter_map(|e| e.process.clone()).collect()
    }

    /// The ids of the execs whose exit has not been handed over (never started, or running).
    pub(crate) fn pending_ids(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, e)| e.reported.is_none()).map(|(id, _)| id.clone()).collect()
    }
}

fn build_exec(
    host: &Host<'_>,
    exec_id: &str,
    json: &Path,
    proc_spec: &OciProcess,
    oom_score_adj: Option<i32>,
    stdio_cfg: StdioConfig,
    runtime: &Runtime,
) -> Result<ExecProcess> {
    let terminal = proc_spec.terminal().unwrap_or(false);
    let stdio_cfg = StdioConfig { terminal, ..stdio_cfg };
    let mut pending = stdio::prepare(&stdio_cfg, &host.dir.join(format!("exec-{exec_id}.sock")))?;
    let what = format!("exec {exec_id:?} in {:?}", host.id);
    let _fork = runtime.fork_lock.lock().unwrap_or_else(|p| p.into_inner());
    let pid = libcontainer_build(host.id, host.dir, &mut pending, &what, |b| {
        b.with_executor(SpecExecutor).as_tenant().with_process(Some(json)).with_detach(true).build()
    })?;
    let process = Process::from_child(pid.as_raw()).map_err(|e| Error::io(what.clone(), e))?;
    if let Some(score) = oom_score_adj {
        set_oom_score_adj(pid.as_raw(), score).inspect_err(|_| process.kill_and_reap())?;
    }
    let io = pending.start(&what).inspect_err(|_| process.kill_and_reap())?;
    Ok(ExecProcess { id: exec_id.to_string(), process, io })
}
