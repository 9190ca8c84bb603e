//! The Task service (containerd.task.v2 and v3: same messages) and the pod network service,
//! as the protocol edge: requests decoded, dispatched onto the task model (`task`) and the
//! Create flow (`create`), replies encoded, events published, errors mapped to ttrpc codes.
//! Runs on the shim's one thread: requests, exits and OOM notifications are handled in turn,
//! so events leave in the order they happened.
use std::path::PathBuf;
use std::time::SystemTime;

use cni_bridge::engine::DelTail;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::types::task::{ProcessInfo, Status as ProtoStatus};
use podnet_runtime::oci_spec::runtime::{LinuxResources, Process as OciProcess};
use podnet_runtime::{Exit, Runtime, StdioConfig};
use protobuf::well_known_types::empty::Empty;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageField};

use crate::bundle::BundleSpec;
use crate::config::{Config, Flags, RuntimeOptions};
use crate::create::{self, CreateRequest};
use crate::error::{Error, Result};
use crate::events::{topics, Publisher};
use crate::metrics;
use crate::task::{Ended, ExitEvent, ReplyTo, TaskStatus, Tasks};
use crate::ttrpc::RpcError;

/// A reply to send later (a Wait).
pub struct Deferred {
    pub conn: u64,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub enum Reply {
    Now(Result<Vec<u8>, RpcError>),
    Later,
}

pub struct Shim {
    flags: Flags,
    publisher: Publisher,
    runtime: Option<(PathBuf, Runtime)>,
    tasks: Tasks,
    /// What the network DELs answered already have left to do (see [`Shim::take_del_tails`]).
    del_tails: Vec<DelTail>,
    shutdown: bool,
    /// The pod attachments (container id, ifname) CRI's CNI calls set up through this shim.
    networks: std::collections::BTreeSet<(String, String)>,
}

fn ts(t: SystemTime) -> MessageField<Timestamp> {
    Some(Timestamp::from(t)).into()
}

fn path_opt(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn stdio_of(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioConfig {
    StdioConfig { stdin: path_opt(stdin), stdout: path_opt(stdout), stderr: path_opt(stderr), terminal }
}

fn path_str(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

fn proto_status(s: TaskStatus) -> ProtoStatus {
    match s {
        TaskStatus::Created => ProtoStatus::CREATED,
        TaskStatus::Running => ProtoStatus::RUNNING,
        TaskStatus::Paused => ProtoStatus::PAUSED,
        TaskStatus::Stopped => ProtoStatus::STOPPED,
    }
}

fn encode(m: &impl Message) -> Result<Vec<u8>> {
    m.write_to_bytes().map_err(|e| Error::Internal(format!("encoding the reply: {e}")))
}

fn decode<M: Message>(payload: &[u8], method: &str) -> Result<M> {
    M::parse_from_bytes(payload).map_err(|e| Error::Invalid(format!("{method}: malformed request: {e}")))
}

fn wait_response(exit: Exit) -> WaitResponse {
    let mut r = WaitResponse::new();
    r.exit_status = exit.code as u32;
    r.exited_at = ts(exit.at);
    r
}

impl Shim {
    pub fn new(flags: Flags, ttrpc_address: &str) -> Shim {
        let publisher = Publisher::new(ttrpc_address, &flags.namespace);
        Shim {
            flags,
            publisher,
            runtime: None,
            tasks: Tasks::default(),
            del_tails: Vec::new(),
            shutdown: false,
            networks: Default::default(),
        }
    }

    /// Whether Shutdown may end the process: no task and no network left.
    pub fn idle(&self) -> bool {
        self.tasks.is_empty() && self.networks.is_empty()
    }

    /// A CNI call the `podnet` plugin handed over (ADD, DEL or CHECK), run with the engine
    /// here. A shim left with neither a task nor a network (its pod's DEL went through, or the
    /// ADD that spawned it failed) ends.
    pub fn network(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, RpcError> {
        let (inv, outcome, tail) = crate::cni::serve(method, payload)?;
        self.del_tails.push(tail);
        let (id, ifname) = inv.attachment();
        if outcome.exit_code == 0 {
            match method {
                "Add" => {
                    tracing::info!(id = %id, ifname = %ifname, "pod network added");
                    self.networks.insert((id, ifname));
                }
                "Del" => {
                    tracing::info!(id = %id, ifname = %ifname, "pod network deleted");
                    self.networks.remove(&(id, ifname));
                }
                _ => {}
            }
        } else {
            tracing::warn!(id = %id, ifname = %ifname, method, "CNI call failed: {}", outcome.stdout);
        }
        if self.idle() {
            tracing::info!("no task and no network left");
            self.shutdown = true;
        }
        serde_json::to_vec(&outcome).map_err(|e| RpcError::internal(format!("encoding the reply: {e}")))
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown
    }

    /// The Wait replies that are ready.
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        self.tasks
            .take_answered()
            .into_iter()
            .map(|(to, exit)| Deferred {
                conn: to.conn,
                stream: to.stream,
                payload: crate::ttrpc::response(encode(&wait_response(exit)).map_err(RpcError::from)),
            })
            .collect()
    }

    /// The slow part of the network DELs answered so far (the veths, whose deletion waits for
    /// the kernel; the addresses; the records), for the server to run once the replies are out.
    pub fn take_del_tails(&mut self) -> Vec<DelTail> {
        std::mem::take(&mut self.del_tails)
    }

    pub fn forget_conn(&mut self, conn: u64) {
        self.tasks.forget_conn(conn);
    }

    pub fn events_pending(&self) -> bool {
        self.publisher.pending() > 0
    }

    pub fn retry_events(&mut self) {
        self.publisher.flush();
    }

    /// The fds to poll besides the connections: running processes' pidfds and OOM watches.
    pub fn watch_fds(&self) -> Vec<i32> {
        self.tasks.watch_fds()
    }

    /// After `fd` polled readable: OOM notifications. Exits are collected by [`Shim::reap`].
    pub fn on_ready(&mut self, fd: i32) {
        for id in self.tasks.oom_fired(fd) {
            tracing::info!(id = %id, "OOM kill in the container's cgroup");
            let mut ev = TaskOOM::new();
            ev.container_id = id;
            self.publisher.publish(topics::OOM, &ev);
        }
    }

    /// Collects every exit that happened and publishes them (TaskExit), answering Waits.
    pub fn reap(&mut self) {
        for ev in self.tasks.reap() {
            self.publish_exit(&ev);
        }
    }

    /// The tasks, after [`Shim::reap`].
    fn reap_then(&mut self) -> &mut Tasks {
        self.reap();
        &mut self.tasks
    }

    fn publish_exit(&mut self, e: &ExitEvent) {
        tracing::debug!(id = %e.id, exec_id = %e.exec_id, code = e.exit.code, "process exited");
        let mut ev = TaskExit::new();
        ev.container_id = e.id.clone();
        ev.id = if e.exec_id.is_empty() { e.id.clone() } else { e.exec_id.clone() };
        ev.pid = e.pid as u32;
        ev.exit_status = e.exit.code as u32;
        ev.exited_at = ts(e.exit.at);
        self.publisher.publish(topics::EXIT, &ev);
    }

    /// One request. `conn`/`stream` identify it for a deferred reply.
    pub fn handle(&mut self, method: &str, payload: &[u8], conn: u64, stream: u32) -> Reply {
        tracing::debug!(method, "request");
        let r = match method {
            "State" => decode(payload, method).and_then(|r| self.state(r)).and_then(|m| encode(&m)),
            "Create" => decode(payload, method).and_then(|r| self.create(r)).and_then(|m| encode(&m)),
            "Start" => decode(payload, method).and_then(|r| self.start(r)).and_then(|m| encode(&m)),
            "Delete" => decode(payload, method).and_then(|r| self.delete(r)).and_then(|m| encode(&m)),
            "Pids" => decode(payload, method).and_then(|r| self.pids(r)).and_then(|m| encode(&m)),
            "Pause" => {
                decode(payload, method).and_then(|r: PauseRequest| self.pause(&r.id, true)).and_then(|m| encode(&m))
            }
            "Resume" => {
                decode(payload, method).and_then(|r: ResumeRequest| self.pause(&r.id, false)).and_then(|m| encode(&m))
            }
            "Checkpoint" => {
                Err(Error::Unimplemented("checkpoint is not implemented by the podnet shim (no CRIU support)".into()))
            }
            "Kill" => decode(payload, method).and_then(|r| self.kill(r)).and_then(|m| encode(&m)),
            "Exec" => decode(payload, method).and_then(|r| self.exec(r)).and_then(|m| encode(&m)),
            "ResizePty" => decode(payload, method).and_then(|r| self.resize(r)).and_then(|m| encode(&m)),
            "CloseIO" => decode(payload, method).and_then(|r| self.close_io(r)).and_then(|m| encode(&m)),
            "Update" => decode(payload, method).and_then(|r| self.update(r)).and_then(|m| encode(&m)),
            "Wait" => match decode::<WaitRequest>(payload, method) {
                Ok(r) => match self.reap_then().wait(&r.id, &r.exec_id, ReplyTo { conn, stream }) {
                    Ok(Some(exit)) => encode(&wait_response(exit)),
                    Ok(None) => return Reply::Later,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            "Stats" => decode(payload, method).and_then(|r| self.stats(r)).and_then(|m| encode(&m)),
            "Connect" => decode(payload, method).and_then(|r| self.connect(r)).and_then(|m| encode(&m)),
            "Shutdown" => decode(payload, method).and_then(|r| self.shutdown(r)).and_then(|m| encode(&m)),
            other => Err(Error::Unimplemented(format!("method {other} is not implemented"))),
        };
        if let Err(e) = &r {
            tracing::warn!(method, "request failed: {e}");
        }
        Reply::Now(r.map_err(RpcError::from))
    }

    fn runtime_for(&mut self, cfg: &Config) -> Result<(PathBuf, &Runtime)> {
        if self.runtime.is_none() {
            let root = cfg.state_dir.join("runtime").join(&self.flags.namespace);
            let rt = Runtime::new(&root)?;
            self.runtime = Some((root, rt));
        }
        match &self.runtime {
            Some((root, rt)) => Ok((root.clone(), rt)),
            None => Err(Error::Internal("no runtime".into())),
        }
    }

    fn runtime(&self, id: &str) -> Result<&Runtime> {
        match &self.runtime {
            Some((_, rt)) => Ok(rt),
            None => Err(Error::NotFound(format!("task {id:?} not found"))),
        }
    }

    fn create(&mut self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let id = req.id.clone();
        if self.tasks.contains(&id) {
            return Err(Error::AlreadyExists(format!("task {id:?} already exists")));
        }
        if !req.checkpoint.is_empty() {
            return Err(Error::Unimplemented(
                "restoring from a checkpoint is not implemented by the podnet shim".into(),
            ));
        }
        let opts = RuntimeOptions::from_any(req.options.as_ref())?;
        let cfg = Config::for_options(&opts)?;
        let bundle = PathBuf::from(&req.bundle);
        crate::log::adopt(&bundle);
        let spec = BundleSpec::read(&bundle)?;
        self.reap();
        self.runtime_for(&cfg)?;
        let Some((root, runtime)) = &self.runtime else { return Err(Error::Internal("no runtime".into())) };
        let create_req = CreateRequest {
            id: &id,
            bundle,
            rootfs: &req.rootfs,
            stdio: stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            terminal: req.terminal,
            namespace: &self.flags.namespace,
        };
        let task = create::create(&self.tasks, (root, runtime), &cfg, spec, create_req)?;
        let pid = task.container.pid();
        let sandbox = task.sandbox;
        let mut ev = TaskCreate::new();
        ev.container_id = id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        ev.io = Some(io).into();
        ev.pid = pid as u32;
        self.tasks.insert(id.clone(), task);
        tracing::info!(id = %id, pid, sandbox, "task created");
        self.publisher.publish(topics::CREATE, &ev);
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    fn start(&mut self, req: StartRequest) -> Result<StartResponse> {
        let rt = self.runtime(&req.id)?;
        let mut resp = StartResponse::new();
        resp.pid = self.tasks.start(&req.id, &req.exec_id, rt)? as u32;
        if req.exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = resp.pid;
            self.publisher.publish(topics::START, &ev);
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = resp.pid;
            self.publisher.publish(topics::EXEC_STARTED, &ev);
        }
        Ok(resp)
    }

    fn delete(&mut self, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut resp = DeleteResponse::new();
        if !req.exec_id.is_empty() {
            if let Some((pid, exit)) = self.tasks.delete_exec(&req.id, &req.exec_id)? {
                resp.pid = pid as u32;
                resp.exit_status = exit.code as u32;
                resp.exited_at = ts(exit.at);
            }
            return Ok(resp);
        }
        let (Ended { pid, exit, exit_sent, pending_execs }, tail, errs) = self.tasks.delete(&req.id)?;
        self.del_tails.push(tail);
        resp.pid = pid as u32;
        resp.exit_status = exit.code as u32;
        resp.exited_at = ts(exit.at);
        // A task whose exit was not reported yet (created, never ran) still owes containerd
        // its exit; the Waits on its execs that never reported one are answered with it.
        if !exit_sent {
            self.publish_exit(&ExitEvent { id: req.id.clone(), exec_id: String::new(), pid: resp.pid as i32, exit });
            self.tasks.answer(&req.id, "", exit);
        }
        for eid in pending_execs {
            self.tasks.answer(&req.id, &eid, exit);
        }
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.pid = resp.pid;
        ev.exit_status = resp.exit_status;
        ev.exited_at = resp.exited_at.clone();
        self.publisher.publish(topics::DELETE, &ev);
        tracing::info!(id = %req.id, "task deleted");
        // Whatever failed, containerd gets UNKNOWN for a teardown that left something behind.
        if let Some(e) = errs.into_error() {
            return Err(Error::Many(podnet_errors::Combine::flatten(e)).context(format!("deleting task {:?}", req.id)));
        }
        Ok(resp)
    }

    fn state(&mut self, req: StateRequest) -> Result<StateResponse> {
        self.reap();
        let s = self.tasks.state(&req.id, &req.exec_id)?;
        let t = self.tasks.get(&req.id)?;
        let mut r = StateResponse::new();
        r.id = req.id.clone();
        r.bundle = t.bundle.display().to_string();
        r.exec_id = req.exec_id.clone();
        r.pid = s.pid as u32;
        r.status = proto_status(s.status).into();
        r.stdin = path_str(&s.stdio.stdin);
        r.stdout = path_str(&s.stdio.stdout);
        r.stderr = path_str(&s.stdio.stderr);
        r.terminal = s.terminal;
        if let Some(exit) = s.exit {
            r.exit_status = exit.code as u32;
            r.exited_at = ts(exit.at);
        }
        Ok(r)
    }

    fn pids(&mut self, req: PidsRequest) -> Result<PidsResponse> {
        let t = self.tasks.get(&req.id)?;
        let pids = t.container.pids()?;
        let mut r = PidsResponse::new();
        for pid in pids {
            let mut p = ProcessInfo::new();
            p.pid = pid as u32;
            r.processes.push(p);
        }
        Ok(r)
    }

    fn pause(&mut self, id: &str, pause: bool) -> Result<Empty> {
        let t = self.tasks.get(id)?;
        if pause {
            t.container.pause()?;
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.publisher.publish(topics::PAUSED, &ev);
        } else {
            t.container.resume()?;
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.publisher.publish(topics::RESUMED, &ev);
        }
        Ok(Empty::new())
    }

    fn kill(&mut self, req: KillRequest) -> Result<Empty> {
        self.reap();
        self.tasks.kill(&req.id, &req.exec_id, req.signal as i32, req.all)?;
        Ok(Empty::new())
    }

    fn exec(&mut self, req: ExecProcessRequest) -> Result<Empty> {
        let spec = |exec_id: &str| -> Result<OciProcess> {
            serde_json::from_slice(&req.spec.value)
                .map_err(|e| Error::Invalid(format!("exec {exec_id:?}: process spec: {e}")))
        };
        let stdio = |spec: &OciProcess| {
            stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal || spec.terminal().unwrap_or(false))
        };
        self.tasks.add_exec(&req.id, &req.exec_id, spec, stdio)?;
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publisher.publish(topics::EXEC_ADDED, &ev);
        Ok(Empty::new())
    }

    /// The stdio of the init (`exec_id` empty) or of a started exec.
    fn with_io<T>(&self, id: &str, exec_id: &str, f: impl FnOnce(&podnet_runtime::Io) -> Result<T>) -> Result<T> {
        let t = self.tasks.get(id)?;
        if exec_id.is_empty() {
            return f(t.container.io());
        }
        match t.container.exec_process(exec_id) {
            Some(p) => f(p.io()),
            None => Err(Error::NotFound(format!("exec {exec_id:?} of task {id:?} not found or not started"))),
        }
    }

    fn resize(&mut self, req: ResizePtyRequest) -> Result<Empty> {
        let (w, h) = (req.width.min(u16::MAX as u32) as u16, req.height.min(u16::MAX as u32) as u16);
        self.with_io(&req.id, &req.exec_id, |io| io.resize(w, h).map_err(Error::from))?;
        Ok(Empty::new())
    }

    fn close_io(&mut self, req: CloseIORequest) -> Result<Empty> {
        self.tasks.get(&req.id)?;
        if req.stdin {
            self.with_io(&req.id, &req.exec_id, |io| {
                io.close_stdin();
                Ok(())
            })?;
        }
        Ok(Empty::new())
    }

    fn update(&mut self, req: UpdateTaskRequest) -> Result<Empty> {
        let t = self.tasks.get(&req.id)?;
        let resources: LinuxResources = serde_json::from_slice(&req.resources.value).map_err(|e| {
            Error::Invalid(format!("update of {:?}: resources ({}): {e}", req.id, req.resources.type_url))
        })?;
        t.container.update(&resources)?;
        Ok(Empty::new())
    }

    fn stats(&mut self, req: StatsRequest) -> Result<StatsResponse> {
        let t = self.tasks.get(&req.id)?;
        let stats = t.container.stats()?;
        let mut r = StatsResponse::new();
        let any = metrics::to_any(&stats).map_err(|e| Error::Internal(format!("encoding the metrics: {e}")))?;
        r.stats = Some(any).into();
        Ok(r)
    }

    fn connect(&mut self, req: ConnectRequest) -> Result<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.tasks.pid_of(&req.id).unwrap_or(0) as u32;
        r.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }

    fn shutdown(&mut self, _req: ShutdownRequest) -> Result<Empty> {
        // containerd may send Shutdown after each task it deletes: only the last one counts.
        if self.idle() {
            self.shutdown = true;
        } else {
            tracing::debug!(
                tasks = self.tasks.len(),
                networks = self.networks.len(),
                "shutdown ignored: tasks or networks remain"
            );
        }
        Ok(Empty::new())
    }
}
