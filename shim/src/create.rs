//! Task.Create: the bundle read, the container's place in its pod decided (the sandbox, a
//! member joining the sandbox's namespaces, or a pod of its own), the rootfs mounted, a
//! standalone pod's network set up, the bundle record written, and the container created by
//! the runtime. Every step that leaves something behind registers its undo with one [`Undo`]
//! guard; a failure runs them all, newest first, and reports the ones that fail with the
//! error that caused it.
use std::path::{Path, PathBuf};

use podnet_runtime::oci_spec::runtime::LinuxNamespaceType;
use podnet_runtime::{Container, CreateOptions, Runtime, StdioConfig};

use crate::bundle::{group_of, BundleRecord, BundleSpec, ANN_CONTAINER_TYPE, BUNDLE_RECORD};
use crate::config::Config;
use crate::error::{Error, Errors, Result};
use crate::mount;
use crate::network::{self, NetRecord};
use crate::oom::OomWatch;
use crate::task::{Task, Tasks};

/// What a Create asks for, decoded from the request.
pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub bundle: PathBuf,
    /// Create's mounts (the rootfs), mounted on `<bundle>/rootfs`; empty: the bundle has it.
    pub rootfs: &'a [containerd_shim_protos::types::mount::Mount],
    pub stdio: StdioConfig,
    pub terminal: bool,
    /// containerd's namespace (the standalone network's CNI_ARGS).
    pub namespace: &'a str,
}

/// One undo step of a Create.
enum Step {
    Unmount(PathBuf),
    Network(NetRecord),
    Record(PathBuf),
}

/// The steps to undo if the Create fails.
#[derive(Default)]
struct Undo(Vec<Step>);

impl Undo {
    fn push(&mut self, step: Step) {
        self.0.push(step);
    }

    /// Undoes every step, newest first, whatever fails; `err` with the failures, if any.
    fn rollback(self, err: Error) -> Error {
        let mut errs = Errors::new();
        for step in self.0.into_iter().rev() {
            match step {
                Step::Unmount(target) => {
                    mount::unmount(&target);
                }
                Step::Network(rec) => errs.push(
                    network::teardown(&rec).map_err(|e| e.context("releasing the pod network after a failed create")),
                ),
                Step::Record(path) => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => errs.add(Error::io(format!("removing {}", path.display()), e)),
                },
            }
        }
        match errs.into_error() {
            None => err,
            Some(undo) => Error::Undone { error: Box::new(err), undo: Box::new(undo) },
        }
    }
}

/// Creates the task: every step, or (on failure) none. The caller has reaped `tasks` (a
/// sandbox that exited cannot be joined).
pub fn create(
    tasks: &Tasks,
    runtime: (&Path, &Runtime),
    cfg: &Config,
    spec: BundleSpec,
    req: CreateRequest<'_>,
) -> Result<Task> {
    let mut undo = Undo::default();
    match create_steps(tasks, runtime, cfg, &spec, &req, &mut undo) {
        Ok(task) => Ok(task),
        Err(e) => Err(undo.rollback(e)),
    }
}

fn create_steps(
    tasks: &Tasks,
    (runtime_root, runtime): (&Path, &Runtime),
    cfg: &Config,
    spec: &BundleSpec,
    req: &CreateRequest<'_>,
    undo: &mut Undo,
) -> Result<Task> {
    let id = req.id;
    let bundle = &req.bundle;
    let pod = group_of(&spec.annotations).unwrap_or_else(|| id.to_string());
    let sandbox_of_pod = tasks.sandbox_of(&pod);
    let sandbox = match spec.annotation(ANN_CONTAINER_TYPE) {
        Some("sandbox") => true,
        Some("container") => false,
        _ => sandbox_of_pod.is_none(),
    };
    if let (false, Some((sid, true))) = (sandbox, &sandbox_of_pod) {
        return Err(Error::Precondition(format!(
            "cannot join pod {pod:?}: its sandbox container {sid:?} has exited (delete it to start the pod anew)"
        )));
    }
    let sandbox_of_pod = sandbox_of_pod.map(|(sid, _)| sid);
    let ports = match spec.annotation(network::PORTS_ANNOTATION) {
        Some(p) => network::parse_ports(p)?,
        None => Vec::new(),
    };
    if !sandbox
        && sandbox_of_pod.is_none()
        && spec.annotation(ANN_CONTAINER_TYPE) == Some("container")
        && group_of(&spec.annotations).is_none()
    {
        return Err(Error::Invalid(format!("container {id:?} is of type container but names no sandbox")));
    }

    // From here on, every step registers its undo.
    let rootfs = if req.rootfs.is_empty() {
        None
    } else {
        let target = bundle.join("rootfs");
        mount::mount_all(req.rootfs, &target)?;
        undo.push(Step::Unmount(target.clone()));
        Some(target)
    };
    let mut record = BundleRecord { runtime_root: runtime_root.to_path_buf(), network: None };
    let mut join = None;
    if sandbox {
        if spec.wants_new("network") {
            let rec = network::setup(cfg, req.namespace, id, &ports)
                .map_err(|e| Error::Precondition(format!("setting up the pod network: {e}")))?;
            tracing::info!(id = %id, ip = ?rec.ip(), "pod network set up");
            undo.push(Step::Network(rec.clone()));
            record.network = Some(rec);
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
            join = tasks.get(sid).ok().map(|t| t.container.join_handle(&kinds));
        }
    }
    undo.push(Step::Record(bundle.join(BUNDLE_RECORD)));
    record.write(bundle)?;
    // CRI's sandbox runs the pinned pause image's /pause when the rootfs has it, and the
    // embedded pause otherwise: the image is accepted, not required.
    let embedded_pause = spec.annotation(ANN_CONTAINER_TYPE) == Some("sandbox") && spec.program_missing(bundle);
    if embedded_pause {
        tracing::info!(id = %id, "the sandbox's rootfs has no {:?}: running the embedded pause", spec.program);
    }
    let opts = CreateOptions {
        stdio: req.stdio.clone(),
        sandbox: join,
        netns: record.network.as_ref().map(|n| n.netns.clone()),
        embedded_pause,
        systemd_cgroup: cfg.systemd_cgroup,
    };
    let container = runtime.create(id, bundle, opts)?;
    Ok(task_of(id, container, pod, sandbox, req, rootfs, record.network))
}

fn task_of(
    id: &str,
    container: Container,
    pod: String,
    sandbox: bool,
    req: &CreateRequest<'_>,
    rootfs: Option<PathBuf>,
    network: Option<NetRecord>,
) -> Task {
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
    Task {
        bundle: req.bundle.clone(),
        pod,
        sandbox,
        stdio: req.stdio.clone(),
        terminal: req.terminal,
        container,
        exit: None,
        exit_sent: false,
        rootfs,
        network,
        oom,
    }
}
