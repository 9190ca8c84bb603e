//! The Task service (containerd.task.v2 and v3: same messages), backed by `podnet-runtime`,
//! with the pod's standalone network. Runs on the shim's one thread: requests, exits and OOM
//! notifications are handled in turn, so events leave in the order they happened.
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::ttrpc::proto::Code;
use containerd_shim_protos::types::task::{ProcessInfo, Status as TaskStatus};
use podnet_runtime::oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process as OciProcess};
use podnet_runtime::{Container, CreateOptions, ExecProcess, Exit, Runtime, Status, StdioConfig};
use protobuf::well_known_types::empty::Empty;
use protobuf::well_known_types::timestamp::Timestamp;
use protobuf::{Message, MessageField};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, Flags, RuntimeOptions};
use crate::events::{topics, Publisher};
use crate::network::{self, NetRecord};
use crate::oom::OomWatch;
use crate::ttrpc::RpcError;
use crate::{metrics, mount};
use cni_bridge::engine::DelTail;

pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANN_RUNC_GROUP: &str = "io.containerd.runc.v2.group";
/// podnet's own pod annotation: containers naming the same pod share one shim and the first
/// one's namespaces.
pub const ANN_POD: &str = "podnet.io/pod";
/// What the shim records in each bundle, for `delete` after the shim is gone.
pub const BUNDLE_RECORD: &str = "podnet.json";

type RpcResult<T> = Result<T, RpcError>;

/// How long an exit waits for a terminal's last output to be copied out: the shim's one thread
/// must not wait on a terminal an escaped background process keeps open.
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

fn rpc(e: podnet_runtime::Error) -> RpcError {
    use podnet_runtime::Error as E;
    let code = match &e {
        E::Spec { .. } | E::InvalidId(_) | E::Unsupported(..) => Code::INVALID_ARGUMENT,
        E::AlreadyExists(_) => Code::ALREADY_EXISTS,
        E::State { .. } | E::Exited { .. } => Code::FAILED_PRECONDITION,
        _ => Code::UNKNOWN,
    };
    RpcError::new(code, e.to_string())
}

/// The pod-grouping key of a bundle's annotations (None: the container is its own pod).
pub fn group_of(annotations: &serde_json::Map<String, Value>) -> Option<String> {
    [ANN_SANDBOX_ID, ANN_RUNC_GROUP, ANN_POD]
        .iter()
        .find_map(|k| annotations.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from))
}

/// The parts of a bundle's config.json the shim looks at before the runtime reads it all.
pub struct BundleSpec {
    pub annotations: serde_json::Map<String, Value>,
    /// (namespace type, has a path) for each namespace the spec lists.
    pub namespaces: Vec<(String, bool)>,
    /// `root.path` (relative to the bundle unless absolute) and `process.args[0]`.
    pub root: Option<String>,
    pub program: Option<String>,
}

impl BundleSpec {
    pub fn read(bundle: &Path) -> Result<BundleSpec, String> {
        let file = bundle.join("config.json");
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{}: invalid JSON: {e}", file.display()))?;
        let annotations = v.get("annotations").and_then(Value::as_object).cloned().unwrap_or_default();
        let namespaces = v
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        let t = n.get("type")?.as_str()?.to_string();
                        let has_path = n.get("path").and_then(Value::as_str).is_some_and(|p| !p.is_empty());
                        Some((t, has_path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let string = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
        Ok(BundleSpec { annotations, namespaces, root: string("/root/path"), program: string("/process/args/0") })
    }

    /// Whether the process's program is missing from the container's root (a pod sandbox
    /// created without the pause image's rootfs): then the shim runs its own pause.
    fn program_missing(&self, bundle: &Path) -> bool {
        let (Some(root), Some(program)) = (&self.root, &self.program) else { return false };
        let root = bundle.join(root);
        // A bare name would be looked up in PATH: only absolute paths are checked.
        program.starts_with('/') && root.join(program.trim_start_matches('/')).symlink_metadata().is_err()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).and_then(Value::as_str)
    }

    /// Whether the spec asks for a new namespace of `kind` (listed, without a path).
    pub fn wants_new(&self, kind: &str) -> bool {
        self.namespaces.iter().any(|(t, p)| t == kind && !p)
    }
}

/// The record in each bundle: where the runtime keeps the container, and the pod's network.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BundleRecord {
    pub runtime_root: PathBuf,
    pub network: Option<NetRecord>,
}

impl BundleRecord {
    pub fn write(&self, bundle: &Path) -> Result<(), String> {
        let path = bundle.join(BUNDLE_RECORD);
        let bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
    /// None: the bundle has no record (the shim set nothing up for it). A record that cannot
    /// be read is an error naming it, never "nothing there": the pod may still hold a network.
    pub fn read(bundle: &Path) -> Result<Option<BundleRecord>, String> {
        let path = bundle.join(BUNDLE_RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("bundle record {}: {e}", path.display())),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("bundle record {}: corrupt: {e}", path.display()))
    }
}

struct ExecTask {
    spec: OciProcess,
    stdio: StdioConfig,
    proc: Option<Arc<ExecProcess>>,
    exit: Option<Exit>,
}

struct Task {
    bundle: PathBuf,
    pod: String,
    sandbox: bool,
    stdio: StdioConfig,
    terminal: bool,
    container: Container,
    /// The init's exit, once reaped; `exit_sent` once TaskExit went out.
    exit: Option<Exit>,
    exit_sent: bool,
    execs: BTreeMap<String, ExecTask>,
    rootfs: Option<PathBuf>,
    network: Option<NetRecord>,
    oom: Option<OomWatch>,
}

/// A Wait whose process has not exited yet: answered when it does.
pub struct Waiter {
    pub conn: u64,
    pub stream: u32,
    id: String,
    exec_id: String,
}

/// A reply to send later (a Wait).
pub struct Deferred {
    pub conn: u64,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub enum Reply {
    Now(RpcResult<Vec<u8>>),
    Later,
}

pub struct Shim {
    flags: Flags,
    publisher: Publisher,
    runtime: Option<(PathBuf, Runtime)>,
    tasks: BTreeMap<String, Task>,
    waiters: Vec<Waiter>,
    done: Vec<Deferred>,
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

fn encode(m: &impl Message) -> RpcResult<Vec<u8>> {
    m.write_to_bytes().map_err(|e| RpcError::internal(format!("encoding the reply: {e}")))
}

fn decode<M: Message>(payload: &[u8], method: &str) -> RpcResult<M> {
    M::parse_from_bytes(payload).map_err(|e| RpcError::invalid(format!("{method}: malformed request: {e}")))
}

impl Shim {
    pub fn new(flags: Flags, ttrpc_address: &str) -> Shim {
        let publisher = Publisher::new(ttrpc_address, &flags.namespace);
        Shim {
            flags,
            publisher,
            runtime: None,
            tasks: BTreeMap::new(),
            waiters: Vec::new(),
            done: Vec::new(),
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
    pub fn network(&mut self, method: &str, payload: &[u8]) -> RpcResult<Vec<u8>> {
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

    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.done)
    }

    /// The slow part of the network DELs answered so far (the veths, whose deletion waits for
    /// the kernel; the addresses; the records), for the server to run once the replies are out.
    pub fn take_del_tails(&mut self) -> Vec<DelTail> {
        std::mem::take(&mut self.del_tails)
    }

    pub fn forget_conn(&mut self, conn: u64) {
        self.waiters.retain(|w| w.conn != conn);
    }

    pub fn events_pending(&self) -> bool {
        self.publisher.pending() > 0
    }

    pub fn retry_events(&mut self) {
        self.publisher.flush();
    }

    /// The fds to poll besides the connections: running processes' pidfds and OOM watches.
    pub fn watch_fds(&self) -> Vec<i32> {
        let mut fds = Vec::new();
        for t in self.tasks.values() {
            if t.exit.is_none() {
                fds.push(t.container.init().as_fd().as_raw_fd());
            }
            for e in t.execs.values() {
                if let (Some(p), None) = (&e.proc, &e.exit) {
                    fds.push(p.process().as_fd().as_raw_fd());
                }
            }
            if let Some(o) = &t.oom {
                fds.push(o.fd());
            }
        }
        fds
    }

    /// After `fd` polled readable: OOM notifications. Exits are collected by [`Shim::reap`].
    pub fn on_ready(&mut self, fd: i32) {
        let mut oom = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            if let Some(o) = t.oom.as_mut() {
                if o.fd() == fd && o.fired() {
                    oom.push(id.clone());
                }
            }
        }
        for id in oom {
            tracing::info!(id = %id, "OOM kill in the container's cgroup");
            let mut ev = TaskOOM::new();
            ev.container_id = id;
            self.publisher.publish(topics::OOM, &ev);
        }
    }

    /// Collects every exit that happened: execs first, then inits (whose exit waits until the
    /// container's execs have all been reported), publishing TaskExit and answering Waits.
    pub fn reap(&mut self) {
        let mut events = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            for (eid, e) in t.execs.iter_mut() {
                if let (Some(p), None) = (&e.proc, &e.exit) {
                    if let Ok(Some(exit)) = p.process().try_wait() {
                        if p.io().has_terminal() {
                            p.io().wait_output_for(OUTPUT_GRACE);
                        }
                        e.exit = Some(exit);
                        events.push((id.clone(), eid.clone(), p.pid(), exit));
                    }
                }
            }
            if t.exit.is_none() {
                if let Ok(Some(exit)) = t.container.init().try_wait() {
                    t.exit = Some(exit);
                } else if let Some(exit) = t.container.init().exit() {
                    t.exit = Some(exit);
                }
            }
            let execs_done = t.execs.values().all(|e| e.proc.is_none() || e.exit.is_some());
            if let (Some(exit), false, true) = (t.exit, t.exit_sent, execs_done) {
                if t.terminal {
                    t.container.io().wait_output_for(OUTPUT_GRACE);
                }
                t.exit_sent = true;
                events.push((id.clone(), String::new(), t.container.pid(), exit));
            }
        }
        for (id, exec_id, pid, exit) in events {
            tracing::debug!(id = %id, exec_id = %exec_id, code = exit.code, "process exited");
            let mut ev = TaskExit::new();
            ev.container_id = id.clone();
            ev.id = if exec_id.is_empty() { id.clone() } else { exec_id.clone() };
            ev.pid = pid as u32;
            ev.exit_status = exit.code as u32;
            ev.exited_at = ts(exit.at);
            self.publisher.publish(topics::EXIT, &ev);
            self.answer_waiters(&id, &exec_id, exit);
        }
    }

    fn answer_waiters(&mut self, id: &str, exec_id: &str, exit: Exit) {
        let mut resp = WaitResponse::new();
        resp.exit_status = exit.code as u32;
        resp.exited_at = ts(exit.at);
        let payload = encode(&resp);
        let (ready, rest): (Vec<Waiter>, Vec<Waiter>) =
            std::mem::take(&mut self.waiters).into_iter().partition(|w| w.id == id && w.exec_id == exec_id);
        self.waiters = rest;
        for w in ready {
            self.done.push(Deferred {
                conn: w.conn,
                stream: w.stream,
                payload: crate::ttrpc::response(payload.clone()),
            });
        }
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
            "Checkpoint" => Err(RpcError::new(
                Code::UNIMPLEMENTED,
                "checkpoint is not implemented by the podnet shim (no CRIU support)",
            )),
            "Kill" => decode(payload, method).and_then(|r| self.kill(r)).and_then(|m| encode(&m)),
            "Exec" => decode(payload, method).and_then(|r| self.exec(r)).and_then(|m| encode(&m)),
            "ResizePty" => decode(payload, method).and_then(|r| self.resize(r)).and_then(|m| encode(&m)),
            "CloseIO" => decode(payload, method).and_then(|r| self.close_io(r)).and_then(|m| encode(&m)),
            "Update" => decode(payload, method).and_then(|r| self.update(r)).and_then(|m| encode(&m)),
            "Wait" => match decode::<WaitRequest>(payload, method) {
                Ok(r) => match self.wait(r, conn, stream) {
                    Ok(Some(m)) => encode(&m),
                    Ok(None) => return Reply::Later,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            "Stats" => decode(payload, method).and_then(|r| self.stats(r)).and_then(|m| encode(&m)),
            "Connect" => decode(payload, method).and_then(|r| self.connect(r)).and_then(|m| encode(&m)),
            "Shutdown" => decode(payload, method).and_then(|r| self.shutdown(r)).and_then(|m| encode(&m)),
            other => Err(RpcError::new(Code::UNIMPLEMENTED, format!("method {other} is not implemented"))),
        };
        if let Err(e) = &r {
            tracing::warn!(method, "request failed: {}", e.message);
        }
        Reply::Now(r)
    }

    fn task(&self, id: &str) -> RpcResult<&Task> {
        self.tasks.get(id).ok_or_else(|| RpcError::not_found(format!("task {id:?} not found")))
    }

    fn task_mut(&mut self, id: &str) -> RpcResult<&mut Task> {
        self.tasks.get_mut(id).ok_or_else(|| RpcError::not_found(format!("task {id:?} not found")))
    }

    fn runtime_for(&mut self, cfg: &Config) -> RpcResult<(PathBuf, &Runtime)> {
        if self.runtime.is_none() {
            let root = cfg.state_dir.join("runtime").join(&self.flags.namespace);
            let rt = Runtime::new(&root).map_err(rpc)?;
            self.runtime = Some((root, rt));
        }
        match &self.runtime {
            Some((root, rt)) => Ok((root.clone(), rt)),
            None => Err(RpcError::internal("no runtime")),
        }
    }

    fn create(&mut self, req: CreateTaskRequest) -> RpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        if self.tasks.contains_key(&id) {
            return Err(RpcError::new(Code::ALREADY_EXISTS, format!("task {id:?} already exists")));
        }
        if !req.checkpoint.is_empty() {
            return Err(RpcError::new(
                Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not implemented by the podnet shim",
            ));
        }
        let opts = RuntimeOptions::from_any(req.options.as_ref()).map_err(RpcError::invalid)?;
        let cfg = Config::for_options(&opts).map_err(RpcError::invalid)?;
        let bundle = PathBuf::from(&req.bundle);
        crate::log::adopt(&bundle);
        let spec = BundleSpec::read(&bundle).map_err(RpcError::invalid)?;
        let pod = group_of(&spec.annotations).unwrap_or_else(|| id.clone());
        self.reap();
        let sandbox_of_pod =
            self.tasks.iter().find(|(_, t)| t.pod == pod && t.sandbox).map(|(k, t)| (k.clone(), t.exit.is_some()));
        let sandbox = match spec.annotation(ANN_CONTAINER_TYPE) {
            Some("sandbox") => true,
            Some("container") => false,
            _ => sandbox_of_pod.is_none(),
        };
        if let (false, Some((sid, true))) = (sandbox, &sandbox_of_pod) {
            return Err(RpcError::precondition(format!(
                "cannot join pod {pod:?}: its sandbox container {sid:?} has exited (delete it to start the pod anew)"
            )));
        }
        let sandbox_of_pod = sandbox_of_pod.map(|(sid, _)| sid);
        let ports = match spec.annotation(network::PORTS_ANNOTATION) {
            Some(p) => network::parse_ports(p).map_err(RpcError::invalid)?,
            None => Vec::new(),
        };
        let (runtime_root, _) = self.runtime_for(&cfg)?;

        // From here on, every step undoes the ones before it on failure.
        let rootfs = if req.rootfs.is_empty() {
            None
        } else {
            let target = bundle.join("rootfs");
            mount::mount_all(&req.rootfs, &target).map_err(RpcError::internal)?;
            Some(target)
        };
        let undo_rootfs = |rootfs: &Option<PathBuf>| {
            if let Some(t) = rootfs {
                mount::unmount(t);
            }
        };
        let mut record = BundleRecord { runtime_root, network: None };
        let mut join = None;
        if sandbox {
            if spec.wants_new("network") {
                match network::setup(&cfg, &self.flags.namespace, &id, &ports) {
                    Ok(rec) => {
                        tracing::info!(id = %id, ip = ?rec.ip(), "pod network set up");
                        record.network = Some(rec);
                    }
                    Err(e) => {
                        undo_rootfs(&rootfs);
                        return Err(RpcError::precondition(format!("setting up the pod network: {e}")));
                    }
                }
            }
        } else if let Some(sid) = &sandbox_of_pod {
            let kinds: Vec<LinuxNamespaceType> = [
                ("network", LinuxNamespaceType::Network),
                ("ipc", LinuxNamespaceType::Ipc),
                ("uts", LinuxNamespaceType::Uts),
            ]
            .into_iter()
            .filter(|(name, _)| spec.wants_new(name))
            .map(|(_, k)| k)
            .collect();
            if !kinds.is_empty() {
                join = self.tasks.get(sid).map(|t| t.container.join_handle(&kinds));
            }
        } else if spec.annotation(ANN_CONTAINER_TYPE) == Some("container") && group_of(&spec.annotations).is_none() {
            undo_rootfs(&rootfs);
            return Err(RpcError::invalid(format!("container {id:?} is of type container but names no sandbox")));
        }
        let undo_network = |record: &BundleRecord| -> DelTail {
            let Some(rec) = &record.network else { return DelTail::default() };
            let (tail, r) = network::teardown_deferred(rec);
            if let Err(e) = r {
                tracing::warn!("releasing the pod network after a failed create: {e}");
            }
            tail
        };
        if let Err(e) = record.write(&bundle) {
            self.del_tails.push(undo_network(&record));
            undo_rootfs(&rootfs);
            return Err(RpcError::internal(e));
        }
        let stdio = stdio_of(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        // CRI's sandbox runs the pinned pause image's /pause when the rootfs has it, and the
        // embedded pause otherwise: the image is accepted, not required.
        let embedded_pause = spec.annotation(ANN_CONTAINER_TYPE) == Some("sandbox") && spec.program_missing(&bundle);
        if embedded_pause {
            tracing::info!(id = %id, "the sandbox's rootfs has no {:?}: running the embedded pause", spec.program);
        }
        let opts = CreateOptions {
            stdio: stdio.clone(),
            sandbox: join,
            netns: record.network.as_ref().map(|n| n.netns.clone()),
            embedded_pause,
            systemd_cgroup: cfg.systemd_cgroup,
        };
        let created = match &self.runtime {
            Some((_, rt)) => rt.create(&id, &bundle, opts).map_err(rpc),
            None => Err(RpcError::internal("no runtime")),
        };
        let container = match created {
            Ok(c) => c,
            Err(e) => {
                self.del_tails.push(undo_network(&record));
                undo_rootfs(&rootfs);
                let _ = std::fs::remove_file(bundle.join(BUNDLE_RECORD));
                return Err(e);
            }
        };
        for w in container.warnings() {
            tracing::warn!(id = %id, "{w}");
        }
        let oom = match OomWatch::new(container.cgroup_dir()) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::warn!(id = %id, "no OOM notifications: {e}");
                None
            }
        };
        let pid = container.pid();
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
        self.tasks.insert(
            id.clone(),
            Task {
                bundle,
                pod,
                sandbox,
                stdio,
                terminal: req.terminal,
                container,
                exit: None,
                exit_sent: false,
                execs: BTreeMap::new(),
                rootfs,
                network: record.network,
                oom,
            },
        );
        tracing::info!(id = %id, pid, sandbox, "task created");
        self.publisher.publish(topics::CREATE, &ev);
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid as u32;
        Ok(resp)
    }

    fn start(&mut self, req: StartRequest) -> RpcResult<StartResponse> {
        let rt = match &self.runtime {
            Some((_, rt)) => rt,
            None => return Err(RpcError::not_found(format!("task {:?} not found", req.id))),
        };
        let t =
            self.tasks.get_mut(&req.id).ok_or_else(|| RpcError::not_found(format!("task {:?} not found", req.id)))?;
        let mut resp = StartResponse::new();
        if req.exec_id.is_empty() {
            t.container.start().map_err(rpc)?;
            resp.pid = t.container.pid() as u32;
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = resp.pid;
            self.publisher.publish(topics::START, &ev);
        } else {
            let e = t
                .execs
                .get_mut(&req.exec_id)
                .ok_or_else(|| RpcError::not_found(format!("exec {:?} of task {:?} not found", req.exec_id, req.id)))?;
            if e.proc.is_some() {
                return Err(RpcError::precondition(format!("exec {:?} was already started", req.exec_id)));
            }
            let p = t.container.exec(&req.exec_id, &e.spec, e.stdio.clone(), rt).map_err(rpc)?;
            resp.pid = p.pid() as u32;
            e.proc = Some(p);
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = resp.pid;
            self.publisher.publish(topics::EXEC_STARTED, &ev);
        }
        Ok(resp)
    }

    fn delete(&mut self, req: DeleteRequest) -> RpcResult<DeleteResponse> {
        let mut resp = DeleteResponse::new();
        if !req.exec_id.is_empty() {
            let t = self.task_mut(&req.id)?;
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| RpcError::not_found(format!("exec {:?} of task {:?} not found", req.exec_id, req.id)))?;
            match (&e.proc, &e.exit) {
                (Some(_), None) => {
                    return Err(RpcError::precondition(format!("exec {:?} is still running", req.exec_id)))
                }
                (Some(p), Some(exit)) => {
                    resp.pid = p.pid() as u32;
                    resp.exit_status = exit.code as u32;
                    resp.exited_at = ts(exit.at);
                    let _ = t.container.remove_exec(&req.exec_id);
                }
                (None, _) => {}
            }
            t.execs.remove(&req.exec_id);
            return Ok(resp);
        }
        let t = self.task(&req.id)?;
        let status = t.container.status();
        if matches!(status, Status::Running | Status::Paused) && t.exit.is_none() {
            return Err(RpcError::precondition(format!("cannot delete task {:?}: it is {}", req.id, status.as_str())));
        }
        let Some(mut t) = self.tasks.remove(&req.id) else {
            return Err(RpcError::not_found(format!("task {:?} not found", req.id)));
        };
        t.oom = None;
        let mut errs = Vec::new();
        let exit = match t.container.delete() {
            Ok(exit) => exit,
            Err(e) => {
                errs.push(e.to_string());
                t.exit.unwrap_or(Exit { code: 128 + libc::SIGKILL, signal: Some(libc::SIGKILL), at: SystemTime::now() })
            }
        };
        if let Some(rootfs) = &t.rootfs {
            mount::unmount(rootfs);
        }
        if let Some(rec) = t.network.take() {
            let (tail, r) = network::teardown_deferred(&rec);
            self.del_tails.push(tail);
            match r {
                Ok(()) => tracing::info!(id = %req.id, "pod network released"),
                Err(e) => errs.push(format!("releasing the pod network: {e}")),
            }
        }
        if errs.is_empty() {
            let _ = std::fs::remove_file(t.bundle.join(BUNDLE_RECORD));
        }
        resp.pid = t.container.pid() as u32;
        resp.exit_status = exit.code as u32;
        resp.exited_at = ts(exit.at);
        // A task whose exit was not reported yet (created, never ran) still owes containerd
        // its exit.
        if !t.exit_sent {
            let mut ev = TaskExit::new();
            ev.container_id = req.id.clone();
            ev.id = req.id.clone();
            ev.pid = resp.pid;
            ev.exit_status = resp.exit_status;
            ev.exited_at = resp.exited_at.clone();
            self.publisher.publish(topics::EXIT, &ev);
            self.answer_waiters(&req.id, "", exit);
        }
        for (eid, e) in &t.execs {
            if e.exit.is_none() {
                self.answer_waiters(&req.id, eid, exit);
            }
        }
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.pid = resp.pid;
        ev.exit_status = resp.exit_status;
        ev.exited_at = resp.exited_at.clone();
        self.publisher.publish(topics::DELETE, &ev);
        tracing::info!(id = %req.id, "task deleted");
        if errs.is_empty() {
            Ok(resp)
        } else {
            Err(RpcError::new(Code::UNKNOWN, format!("deleting task {:?}: {}", req.id, errs.join("; "))))
        }
    }

    fn state(&mut self, req: StateRequest) -> RpcResult<StateResponse> {
        self.reap();
        let t = self.task(&req.id)?;
        let mut r = StateResponse::new();
        r.id = req.id.clone();
        r.bundle = t.bundle.display().to_string();
        if req.exec_id.is_empty() {
            r.pid = t.container.pid() as u32;
            r.status = match (t.exit, t.container.status()) {
                (Some(_), _) | (_, Status::Stopped) => TaskStatus::STOPPED,
                (_, Status::Created) => TaskStatus::CREATED,
                (_, Status::Running) => TaskStatus::RUNNING,
                (_, Status::Paused) => TaskStatus::PAUSED,
            }
            .into();
            r.stdin = path_str(&t.stdio.stdin);
            r.stdout = path_str(&t.stdio.stdout);
            r.stderr = path_str(&t.stdio.stderr);
            r.terminal = t.terminal;
            if let Some(exit) = t.exit {
                r.exit_status = exit.code as u32;
                r.exited_at = ts(exit.at);
            }
        } else {
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| RpcError::not_found(format!("exec {:?} of task {:?} not found", req.exec_id, req.id)))?;
            r.exec_id = req.exec_id.clone();
            r.stdin = path_str(&e.stdio.stdin);
            r.stdout = path_str(&e.stdio.stdout);
            r.stderr = path_str(&e.stdio.stderr);
            r.terminal = e.stdio.terminal;
            r.status = match (&e.proc, &e.exit) {
                (None, _) => TaskStatus::CREATED,
                (Some(_), None) => TaskStatus::RUNNING,
                (Some(_), Some(_)) => TaskStatus::STOPPED,
            }
            .into();
            if let Some(p) = &e.proc {
                r.pid = p.pid() as u32;
            }
            if let Some(exit) = e.exit {
                r.exit_status = exit.code as u32;
                r.exited_at = ts(exit.at);
            }
        }
        Ok(r)
    }

    fn pids(&mut self, req: PidsRequest) -> RpcResult<PidsResponse> {
        let t = self.task(&req.id)?;
        let pids = t.container.pids().map_err(rpc)?;
        let mut r = PidsResponse::new();
        for pid in pids {
            let mut p = ProcessInfo::new();
            p.pid = pid as u32;
            r.processes.push(p);
        }
        Ok(r)
    }

    fn pause(&mut self, id: &str, pause: bool) -> RpcResult<Empty> {
        let t = self.task(id)?;
        if pause {
            t.container.pause().map_err(rpc)?;
            let mut ev = TaskPaused::new();
            ev.container_id = id.to_string();
            self.publisher.publish(topics::PAUSED, &ev);
        } else {
            t.container.resume().map_err(rpc)?;
            let mut ev = TaskResumed::new();
            ev.container_id = id.to_string();
            self.publisher.publish(topics::RESUMED, &ev);
        }
        Ok(Empty::new())
    }

    fn kill(&mut self, req: KillRequest) -> RpcResult<Empty> {
        self.reap();
        let t = self.task(&req.id)?;
        let signal = req.signal as i32;
        if req.exec_id.is_empty() {
            if t.exit.is_some() && !req.all {
                return Err(RpcError::not_found(format!("process {:?} already finished", req.id)));
            }
            t.container.kill(signal, req.all).map_err(rpc)?;
        } else {
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| RpcError::not_found(format!("exec {:?} of task {:?} not found", req.exec_id, req.id)))?;
            match (&e.proc, &e.exit) {
                (Some(p), None) => p
                    .process()
                    .signal(signal)
                    .map_err(|err| RpcError::internal(format!("signalling exec {:?}: {err}", req.exec_id)))?,
                (Some(_), Some(_)) => {
                    return Err(RpcError::not_found(format!("process {:?} already finished", req.exec_id)))
                }
                (None, _) => return Err(RpcError::precondition(format!("exec {:?} was not started", req.exec_id))),
            }
        }
        Ok(Empty::new())
    }

    fn exec(&mut self, req: ExecProcessRequest) -> RpcResult<Empty> {
        let t = self.task_mut(&req.id)?;
        if t.execs.contains_key(&req.exec_id) {
            return Err(RpcError::new(Code::ALREADY_EXISTS, format!("exec {:?} already exists", req.exec_id)));
        }
        if t.exit.is_some() {
            return Err(RpcError::precondition(format!("task {:?} has exited", req.id)));
        }
        let spec: OciProcess = serde_json::from_slice(&req.spec.value)
            .map_err(|e| RpcError::invalid(format!("exec {:?}: process spec: {e}", req.exec_id)))?;
        let terminal = req.terminal || spec.terminal().unwrap_or(false);
        t.execs.insert(
            req.exec_id.clone(),
            ExecTask { spec, stdio: stdio_of(&req.stdin, &req.stdout, &req.stderr, terminal), proc: None, exit: None },
        );
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publisher.publish(topics::EXEC_ADDED, &ev);
        Ok(Empty::new())
    }

    fn io_of<'a>(t: &'a Task, id: &str, exec_id: &str) -> RpcResult<&'a podnet_runtime::Io> {
        if exec_id.is_empty() {
            return Ok(t.container.io());
        }
        match t.execs.get(exec_id).and_then(|e| e.proc.as_ref()) {
            Some(p) => Ok(p.io()),
            None => Err(RpcError::not_found(format!("exec {exec_id:?} of task {id:?} not found or not started"))),
        }
    }

    fn resize(&mut self, req: ResizePtyRequest) -> RpcResult<Empty> {
        let t = self.task(&req.id)?;
        let io = Self::io_of(t, &req.id, &req.exec_id)?;
        io.resize(req.width.min(u16::MAX as u32) as u16, req.height.min(u16::MAX as u32) as u16).map_err(rpc)?;
        Ok(Empty::new())
    }

    fn close_io(&mut self, req: CloseIORequest) -> RpcResult<Empty> {
        let t = self.task(&req.id)?;
        if req.stdin {
            Self::io_of(t, &req.id, &req.exec_id)?.close_stdin();
        }
        Ok(Empty::new())
    }

    fn update(&mut self, req: UpdateTaskRequest) -> RpcResult<Empty> {
        let t = self.task(&req.id)?;
        let resources: LinuxResources = serde_json::from_slice(&req.resources.value).map_err(|e| {
            RpcError::invalid(format!("update of {:?}: resources ({}): {e}", req.id, req.resources.type_url))
        })?;
        t.container.update(&resources).map_err(rpc)?;
        Ok(Empty::new())
    }

    fn wait(&mut self, req: WaitRequest, conn: u64, stream: u32) -> RpcResult<Option<WaitResponse>> {
        self.reap();
        let t = self.task(&req.id)?;
        let exit = if req.exec_id.is_empty() {
            if t.exit_sent {
                t.exit
            } else {
                None
            }
        } else {
            let e = t
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| RpcError::not_found(format!("exec {:?} of task {:?} not found", req.exec_id, req.id)))?;
            e.exit
        };
        match exit {
            Some(exit) => {
                let mut r = WaitResponse::new();
                r.exit_status = exit.code as u32;
                r.exited_at = ts(exit.at);
                Ok(Some(r))
            }
            None => {
                self.waiters.push(Waiter { conn, stream, id: req.id, exec_id: req.exec_id });
                Ok(None)
            }
        }
    }

    fn stats(&mut self, req: StatsRequest) -> RpcResult<StatsResponse> {
        let t = self.task(&req.id)?;
        let stats = t.container.stats().map_err(rpc)?;
        let mut r = StatsResponse::new();
        let any = metrics::to_any(&stats).map_err(|e| RpcError::internal(format!("encoding the metrics: {e}")))?;
        r.stats = Some(any).into();
        Ok(r)
    }

    fn connect(&mut self, req: ConnectRequest) -> RpcResult<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.tasks.get(&req.id).map(|t| t.container.pid() as u32).unwrap_or(0);
        r.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }

    fn shutdown(&mut self, _req: ShutdownRequest) -> RpcResult<Empty> {
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
