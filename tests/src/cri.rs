//! containerd's CRI for the end-to-end tests (crictl cannot be installed here): [`CriClient`]
//! is a blocking client of the CRI v1 RuntimeService and ImageService on a unix socket, and
//! [`CriNode`] is a test's node (a network namespace with no route out) running containerd
//! with CRI enabled and two runtime handlers:
//!
//! - `runc` (the default): `io.containerd.runc.v2` with Debian's reference CNI plugins from
//!   the default CNI conf dir (bridge `cni-runc0`, host-local 10.88.0.0/16, portmap);
//! - `podnet`: `io.containerd.podnet.v2` with its own `cni_conf_dir` holding the podnet
//!   conflist (bridge `podnet0`, 10.89.0.0/16, optionally fd89::/64), whose `containerd`
//!   object makes the CNI plugin hand the call to the pod's shim.
//!
//! ```no_run
//! # use podnet_tests::cri::{CriNode, container_config, HANDLER_PODNET};
//! let n = CriNode::new("demo");
//! let pod_cfg = n.pod_config("web");
//! let pod = n.client().run_pod_sandbox(&pod_cfg, HANDLER_PODNET).unwrap();
//! let ctr = n.client().create_container(&pod, &container_config("c", &["sleep", "3600"]), &pod_cfg).unwrap();
//! n.client().start_container(&ctr).unwrap();
//! let (out, _, code) = n.client().exec_sync(&ctr, &["echo", "hi"], 10).unwrap();
//! assert_eq!((out.as_str(), code), ("hi\n", 0));
//! n.finish();
//! ```
//!
//! Every scenario of the CRI tests runs against both containerds hack/setup unpacks, as one
//! test per [`Flavour`] ([`on_each_containerd!`](crate::on_each_containerd)): containerd 2.x
//! (config version 3, the podnet conflist at CNI 1.1.0) and containerd 1.7 (config version 2,
//! CNI 1.0.0, the newest its libcni knows).
//!
//! containerd runs inside the node namespace (so its stream server on 127.0.0.1 and every
//! pod network are private to the node); the CRI socket is a file, reachable from anywhere.
//! Everything lives under the node's scratch directory (`/tmp/pncri<pid>x<n>/`) or
//! containerd's (`/tmp/pnc<pid>x<n>/`): CNI bin and conf dirs, IPAM data, podnet state, pod
//! logs, and (`netns_mounts_under_state_dir`) the pods' network namespaces.
//!
//! [`CriNode::finish`] stops and removes every pod through CRI, asserts
//! [`CriNode::assert_clean`], stops containerd (whose cleanup must find nothing to force) and
//! runs the leak check. Dropping it without `finish` (a failed test) still removes every pod
//! (CRI, best effort), then containerd's harness deletes what is left and kills leftover
//! shims, leftover pod network namespaces are deleted, and the node namespace goes with its
//! bridges, veths and rules.
//!
//! A node can also run in an existing namespace ([`CriNodeOptions::netns`], e.g. a node of a
//! [`crate::cluster::Fabric`]), which it then leaves in place, with the podnet conflist in
//! cluster mode ([`CriNodeOptions::node_facts`]); several such nodes in one test leave the
//! leak check to the test ([`CriNodeOptions::caller_checks_leaks`]).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

use crate::containerd::{
    alive, busybox_archive, busybox_image, containerd_major, containerd_version, default_bin_dir, layer_tar,
    mounts_under, oci_arch, output_with_timeout, processes_with_args, Containerd, ContainerdOptions, BUSYBOX_REF,
    DEFAULT_DISABLED_PLUGINS, DEFAULT_DISABLED_PLUGINS_1_7,
};
use crate::leaks::{self, Snapshot};
use crate::{podnet_veths, reservations, retry, tagged_rules, unique, Ns, TempDir};

pub use k8s_cri::v1;

/// The containerd namespace CRI uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The sandbox (pause) image, imported offline and pinned in the config.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The busybox image's reference (imported into `k8s.io`).
pub const BUSYBOX_IMAGE: &str = BUSYBOX_REF;
/// The default handler: runc with the reference CNI plugins.
pub const HANDLER_RUNC: &str = "runc";
/// The podnet handler.
pub const HANDLER_PODNET: &str = "podnet";
/// The podnet runtime type.
pub const PODNET_RUNTIME: &str = "io.containerd.podnet.v2";
/// The reference bridge network (default CNI conf dir).
pub const RUNC_NET: &str = "runcnet";
pub const RUNC_BRIDGE: &str = "cni-runc0";
pub const RUNC_SUBNET: &str = "10.88.0.0/16";
/// The podnet network (the podnet handler's conf dir).
pub const PODNET_NET: &str = "podnet";
pub const PODNET_BRIDGE: &str = "podnet0";
pub const PODNET_SUBNET: &str = "10.89.0.0/16";
pub const PODNET_SUBNET6: &str = "fd89::/64";
/// Where pod shims listen (`shim/src/start.rs`).
pub const SHIM_SOCKET_DIR: &str = "/run/podnet/s";
/// The default deadline of one CRI call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`CriNode::assert_clean`] waits for podnet shims to exit.
const SHIM_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`CriNode::assert_clean`] waits for containerd's cleanup after a dead shim (the
/// shim's `delete`, then the bundle's removal), which containerd 1.7 runs in the background:
/// its RemovePodSandbox returns before it ends.
const BUNDLE_CLEANUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Where hack/setup unpacks Debian's containerd 1.7 (`hack/install-containerd`).
pub const CONTAINERD_1_7_DIR: &str = "/opt/podnet/containerd-1.7";
/// Deadline of the best-effort calls of the cleanup after a failed test.
const CLEANUP_CALL_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The client.

/// A blocking CRI v1 client (RuntimeService + ImageService) on a unix socket. It owns a
/// current-thread tokio runtime; every call has a deadline ([`CALL_TIMEOUT`] unless
/// [`CriClient::set_timeout`]), enforced on both sides (grpc-timeout and a local timer), so a
/// hung runtime fails the test with `DeadlineExceeded` instead of hanging it. Errors are the
/// gRPC status (its `Display` holds the code and containerd's message). Every pod and
/// container id it created is remembered ([`CriClient::pods_seen`], [`CriClient::containers_seen`]).
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
    timeout: Mutex<Duration>,
    pods: Mutex<BTreeSet<String>>,
    containers: Mutex<BTreeSet<String>>,
}

/// The result type of [`CriClient`] calls.
pub type CriResult<T> = Result<T, tonic::Status>;

impl CriClient {
    /// A client of the CRI socket at `path` (connected lazily, on the first call).
    pub fn connect(path: &Path) -> io::Result<CriClient> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let socket = path.to_path_buf();
        let channel = {
            let _g = rt.enter();
            let p = socket.clone();
            Endpoint::try_from("http://[::]:50051")
                .map_err(io::Error::other)?
                .connect_timeout(Duration::from_secs(10))
                .connect_with_connector_lazy(tower::service_fn(move |_| {
                    let p = p.clone();
                    async move {
                        Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                    }
                }))
        };
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
            socket,
            timeout: Mutex::new(CALL_TIMEOUT),
            pods: Mutex::new(BTreeSet::new()),
            containers: Mutex::new(BTreeSet::new()),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sets the deadline of the following calls.
    pub fn set_timeout(&self, t: Duration) {
        *self.timeout.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    pub fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pod sandbox ids this client created (RunPodSandbox answered).
    pub fn pods_seen(&self) -> Vec<String> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Container ids this client created.
    pub fn containers_seen(&self) -> Vec<String> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Runs one call with a deadline of `t`.
    fn call_with<T, F, Fut>(&self, what: &str, t: Duration, f: F) -> CriResult<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.runtime.clone(), self.images.clone(), t);
        // A little slack locally, so that the server's own DeadlineExceeded wins when it answers.
        let local = t + Duration::from_secs(2);
        match self.rt.block_on(async { tokio::time::timeout(local, fut).await }) {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(tonic::Status::new(s.code(), format!("{what}: {}", s.message()))),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "{what}: no answer from {} within {local:?}",
                self.socket.display()
            ))),
        }
    }

    fn call<T, F, Fut>(&self, what: &str, f: F) -> CriResult<T>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(what, self.timeout(), f)
    }

    pub fn version(&self) -> CriResult<cri::VersionResponse> {
        self.call("Version", |mut r, _, t| async move {
            r.version(req(cri::VersionRequest { version: "v1".into() }, t)).await
        })
    }

    pub fn status(&self, verbose: bool) -> CriResult<cri::StatusResponse> {
        self.call("Status", |mut r, _, t| async move { r.status(req(cri::StatusRequest { verbose }, t)).await })
    }

    /// RunPodSandbox with runtime handler `handler` ("" for the default); the pod's id.
    pub fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig, handler: &str) -> CriResult<String> {
        let r = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.to_string() };
        let id = self
            .call("RunPodSandbox", |mut r0, _, t| async move { r0.run_pod_sandbox(req(r, t)).await })?
            .pod_sandbox_id;
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        Ok(id)
    }

    pub fn pod_sandbox_status(&self, id: &str, verbose: bool) -> CriResult<cri::PodSandboxStatusResponse> {
        let r = cri::PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose };
        self.call("PodSandboxStatus", |mut c, _, t| async move { c.pod_sandbox_status(req(r, t)).await })
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let r = cri::StopPodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.call("StopPodSandbox", |mut c, _, t| async move { c.stop_pod_sandbox(req(r, t)).await }).map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let r = cri::RemovePodSandboxRequest { pod_sandbox_id: id.to_string() };
        self.call("RemovePodSandbox", |mut c, _, t| async move { c.remove_pod_sandbox(req(r, t)).await }).map(drop)
    }

    pub fn list_pod_sandbox(&self) -> CriResult<Vec<cri::PodSandbox>> {
        let r = cri::ListPodSandboxRequest { filter: None };
        self.call("ListPodSandbox", |mut c, _, t| async move { c.list_pod_sandbox(req(r, t)).await }).map(|r| r.items)
    }

    /// CreateContainer in pod `pod_id` (whose config was `sandbox`); the container's id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &cri::ContainerConfig,
        sandbox: &cri::PodSandboxConfig,
    ) -> CriResult<String> {
        let r = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        let id = self
            .call("CreateContainer", |mut c, _, t| async move { c.create_container(req(r, t)).await })?
            .container_id;
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        Ok(id)
    }

    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let r = cri::StartContainerRequest { container_id: id.to_string() };
        self.call("StartContainer", |mut c, _, t| async move { c.start_container(req(r, t)).await }).map(drop)
    }

    /// StopContainer with a grace period of `timeout_secs` (the call's deadline is extended by it).
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> CriResult<()> {
        let r = cri::StopContainerRequest { container_id: id.to_string(), timeout: timeout_secs };
        let t = self.timeout() + Duration::from_secs(timeout_secs.max(0) as u64);
        self.call_with("StopContainer", t, |mut c, _, t| async move { c.stop_container(req(r, t)).await }).map(drop)
    }

    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let r = cri::RemoveContainerRequest { container_id: id.to_string() };
        self.call("RemoveContainer", |mut c, _, t| async move { c.remove_container(req(r, t)).await }).map(drop)
    }

    pub fn container_status(&self, id: &str) -> CriResult<cri::ContainerStatusResponse> {
        self.container_status_verbose(id, false)
    }

    pub fn container_status_verbose(&self, id: &str, verbose: bool) -> CriResult<cri::ContainerStatusResponse> {
        let r = cri::ContainerStatusRequest { container_id: id.to_string(), verbose };
        self.call("ContainerStatus", |mut c, _, t| async move { c.container_status(req(r, t)).await })
    }

    pub fn list_containers(&self) -> CriResult<Vec<cri::Container>> {
        let r = cri::ListContainersRequest { filter: None };
        self.call("ListContainers", |mut c, _, t| async move { c.list_containers(req(r, t)).await })
            .map(|r| r.containers)
    }

    /// ExecSync `cmd` in container `id` with CRI's timeout `timeout_secs` (0: none; the call's
    /// deadline is extended by it): (stdout, stderr, exit code), outputs decoded lossily.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: i64) -> CriResult<(String, String, i32)> {
        let r = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let t = self.timeout() + Duration::from_secs(timeout_secs.max(0) as u64);
        let o = self.call_with("ExecSync", t, |mut c, _, t| async move { c.exec_sync(req(r, t)).await })?;
        Ok((
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.exit_code,
        ))
    }

    /// Exec: the streaming URL.
    pub fn exec(&self, r: cri::ExecRequest) -> CriResult<String> {
        self.call("Exec", |mut c, _, t| async move { c.exec(req(r, t)).await }).map(|r| r.url)
    }

    /// Attach: the streaming URL.
    pub fn attach(&self, r: cri::AttachRequest) -> CriResult<String> {
        self.call("Attach", |mut c, _, t| async move { c.attach(req(r, t)).await }).map(|r| r.url)
    }

    /// PortForward to `ports` of pod `pod_id`: the streaming URL.
    pub fn port_forward(&self, pod_id: &str, ports: &[i32]) -> CriResult<String> {
        let r = cri::PortForwardRequest { pod_sandbox_id: pod_id.to_string(), port: ports.to_vec() };
        self.call("PortForward", |mut c, _, t| async move { c.port_forward(req(r, t)).await }).map(|r| r.url)
    }

    pub fn list_images(&self) -> CriResult<Vec<cri::Image>> {
        let r = cri::ListImagesRequest { filter: None };
        self.call("ListImages", |_, mut i, t| async move { i.list_images(req(r, t)).await }).map(|r| r.images)
    }

    /// ImageStatus of `image` (None: CRI does not know it).
    pub fn image_status(&self, image: &str) -> CriResult<Option<cri::Image>> {
        let r = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.to_string(), ..Default::default() }),
            verbose: false,
        };
        self.call("ImageStatus", |_, mut i, t| async move { i.image_status(req(r, t)).await }).map(|r| r.image)
    }

    /// The pod's IP (PodSandboxStatus.network.ip; empty for a hostNetwork pod).
    pub fn pod_ip(&self, pod_id: &str) -> CriResult<String> {
        let s = self.pod_sandbox_status(pod_id, false)?;
        Ok(s.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default())
    }

    /// Every IP of the pod (the primary first, then `additional_ips`).
    pub fn pod_ips(&self, pod_id: &str) -> CriResult<Vec<String>> {
        let s = self.pod_sandbox_status(pod_id, false)?;
        let Some(n) = s.status.and_then(|s| s.network) else { return Ok(Vec::new()) };
        let mut v = vec![n.ip];
        v.extend(n.additional_ips.into_iter().map(|i| i.ip));
        v.retain(|s| !s.is_empty());
        Ok(v)
    }

    /// The pod's network namespace path as CRI made it (from the verbose status: the sandbox
    /// spec's network namespace, or any path naming a `cni-` netns); None for hostNetwork.
    pub fn netns_path(&self, pod_id: &str) -> CriResult<Option<PathBuf>> {
        let s = self.pod_sandbox_status(pod_id, true)?;
        Ok(netns_from_info(&s.info))
    }
}

fn req<T>(msg: T, t: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(t);
    r
}

/// The network namespace path in a verbose PodSandboxStatus `info`.
pub fn netns_from_info(info: &HashMap<String, String>) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    if let Some(ns) = v["runtimeSpec"]["linux"]["namespaces"].as_array() {
        for n in ns {
            if n["type"] == "network" {
                if let Some(p) = n["path"].as_str().filter(|p| !p.is_empty()) {
                    return Some(PathBuf::from(p));
                }
            }
        }
    }
    fn find(v: &serde_json::Value) -> Option<String> {
        match v {
            serde_json::Value::String(s) if s.contains("/cni-") && s.starts_with('/') => Some(s.clone()),
            serde_json::Value::Array(a) => a.iter().find_map(find),
            serde_json::Value::Object(o) => o.values().find_map(find),
            _ => None,
        }
    }
    find(&v).map(PathBuf::from)
}

// ---------------------------------------------------------------------------------------------
// Builders.

/// A pod config as kubelet sends it: metadata (`name`, a unique uid, namespace `default`,
/// attempt 0), hostname `name`, `log_dir` as log directory, cluster DNS (10.96.0.10,
/// `svc.cluster.local`, `ndots:5`), pod network and IPC, container PID namespaces (kubelet's
/// default), no cgroup parent.
pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: unique(&format!("uid-{name}-")),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        dns_config: Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Builder-style edits of a [`cri::PodSandboxConfig`].
pub trait PodConfigExt: Sized {
    /// Adds a TCP port mapping `host_ip:host_port -> container_port` (`host_ip` "" for any).
    fn port(self, container_port: i32, host_port: i32, host_ip: &str) -> Self {
        self.port_proto(cri::Protocol::Tcp, container_port, host_port, host_ip)
    }
    fn port_proto(self, proto: cri::Protocol, container_port: i32, host_port: i32, host_ip: &str) -> Self;
    /// hostNetwork: the node's network namespace (no CNI call).
    fn host_network(self) -> Self;
    /// shareProcessNamespace: one PID namespace for the pod.
    fn share_pid(self) -> Self;
    fn annotation(self, k: &str, v: &str) -> Self;
    fn label(self, k: &str, v: &str) -> Self;
}

fn ns_options(c: &mut cri::PodSandboxConfig) -> &mut cri::NamespaceOption {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options
        .get_or_insert_with(Default::default)
}

impl PodConfigExt for cri::PodSandboxConfig {
    fn port_proto(mut self, proto: cri::Protocol, container_port: i32, host_port: i32, host_ip: &str) -> Self {
        self.port_mappings.push(cri::PortMapping {
            protocol: proto as i32,
            container_port,
            host_port,
            host_ip: host_ip.to_string(),
        });
        self
    }
    fn host_network(mut self) -> Self {
        ns_options(&mut self).network = cri::NamespaceMode::Node as i32;
        // The node's UTS namespace too: no hostname of the pod's (runc refuses one as well).
        self.hostname.clear();
        self
    }
    fn share_pid(mut self) -> Self {
        ns_options(&mut self).pid = cri::NamespaceMode::Pod as i32;
        self
    }
    fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
    fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
}

/// A container config: the busybox image, `args` as its command (args[0] the program),
/// log path `<name>.log` (under the pod's log directory).
pub fn container_config(name: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.to_string(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: BUSYBOX_IMAGE.to_string(), ..Default::default() }),
        command: args.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// Builder-style edits of a [`cri::ContainerConfig`].
pub trait ContainerConfigExt: Sized {
    /// An open stdin (`once`: closed after the first attach ends).
    fn stdin(self, once: bool) -> Self;
    fn tty(self) -> Self;
    fn env(self, k: &str, v: &str) -> Self;
    fn image(self, image: &str) -> Self;
}

impl ContainerConfigExt for cri::ContainerConfig {
    fn stdin(mut self, once: bool) -> Self {
        self.stdin = true;
        self.stdin_once = once;
        self
    }
    fn tty(mut self) -> Self {
        self.tty = true;
        self
    }
    fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push(cri::KeyValue { key: k.into(), value: v.into() });
        self
    }
    fn image(mut self, image: &str) -> Self {
        self.image = Some(cri::ImageSpec { image: image.to_string(), ..Default::default() });
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The node.

/// The containerd a CRI test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// containerd 2.x from [`default_bin_dir`] (PODNET_CONTAINERD_DIR, else hack/setup's
    /// /opt/podnet/containerd-2): config version 3, the podnet conflist at CNI 1.1.0.
    Containerd2,
    /// containerd 1.7 from [`CONTAINERD_1_7_DIR`]: config version 2 (`sandbox_image`, the
    /// runtimes under `plugins.'io.containerd.grpc.v1.cri'.containerd`), the podnet conflist at
    /// CNI 1.0.0 (1.7's libcni, containernetworking/cni v1.1.2, supports no later version).
    Containerd17,
}

impl Flavour {
    /// The directory of its binaries.
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Flavour::Containerd2 => default_bin_dir(),
            Flavour::Containerd17 => Path::new(CONTAINERD_1_7_DIR).join("usr/bin"),
        }
    }

    pub fn is_1_7(self) -> bool {
        self == Flavour::Containerd17
    }

    /// Panics unless the binary in [`Flavour::bin_dir`] is this flavour's containerd.
    fn check(self, bin_dir: &Path) {
        let bin = bin_dir.join("containerd");
        let setup = match self {
            Flavour::Containerd2 => "hack/setup unpacks Debian's containerd 2.x under /opt/podnet/containerd-2",
            Flavour::Containerd17 => "hack/setup unpacks Debian's containerd 1.7 under /opt/podnet/containerd-1.7",
        };
        assert!(bin.exists(), "{} is missing: {setup} (hack/install-containerd)", bin.display());
        let version = containerd_version(bin_dir).unwrap_or_default();
        let ok = match self {
            Flavour::Containerd2 => containerd_major(bin_dir) >= 2,
            Flavour::Containerd17 => version.starts_with("1.7."),
        };
        assert!(ok, "{} is containerd {version:?}, not the {self:?} these tests run ({setup})", bin.display());
    }
}

/// One `#[test]` per [`Flavour`] for each scenario named, a `fn(Flavour)` of the calling
/// module: `containerd_2::<scenario>` and `containerd_1_7::<scenario>`, both ignored as
/// needing root, so that a failure names the containerd it failed on.
#[macro_export]
macro_rules! on_each_containerd {
    ($($scenario:ident),+ $(,)?) => {
        mod containerd_2 {
            $(
                #[test]
                #[ignore = "needs root"]
                fn $scenario() {
                    super::$scenario($crate::cri::Flavour::Containerd2)
                }
            )+
        }
        mod containerd_1_7 {
            $(
                #[test]
                #[ignore = "needs root"]
                fn $scenario() {
                    super::$scenario($crate::cri::Flavour::Containerd17)
                }
            )+
        }
    };
}

/// How to build a [`CriNode`].
#[derive(Debug, Clone, Default)]
pub struct CriNodeOptions {
    /// The podnet network also gets fd89::/64.
    pub dual_stack: bool,
    /// TOML appended to containerd's config (tables other than the generated ones).
    pub extra_config: String,
    /// Extra environment of containerd (and so of shims and CNI plugins).
    pub env: Vec<(String, String)>,
    /// The containerd binaries (default: [`default_bin_dir`], PODNET_CONTAINERD_DIR).
    pub bin_dir: Option<PathBuf>,
    /// Keys set in the podnet conflist's plugin object (JSON pointer below the plugin, value).
    pub podnet_patch: Vec<(String, serde_json::Value)>,
    /// The containerd to run (its binaries, checked to be that version); None: `bin_dir`.
    pub flavour: Option<Flavour>,
    /// Run in this existing network namespace (e.g. a cluster node's) instead of one of the
    /// node's own; it is opened, not owned: the node never deletes it. Links it has when the
    /// node is made (an uplink) are not counted as left behind.
    pub netns: Option<PathBuf>,
    /// The podnet conflist in cluster mode: its ipam names no range, only this node facts file
    /// (`ipam.nodeFacts`, absolute; the node agent writes it) and the node's IPAM data dir.
    pub node_facts: Option<PathBuf>,
    /// The caller holds [`leaks::serial`] and checks for leaks itself (several nodes in one
    /// test): the node takes neither the lock nor a snapshot, and [`CriNode::finish`] runs no
    /// leak check.
    pub caller_checks_leaks: bool,
}

impl CriNodeOptions {
    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }
    /// Sets `pointer` (e.g. "/ipam/ranges/0/0/subnet") in the podnet conflist's plugin.
    pub fn podnet_patch(mut self, pointer: &str, value: serde_json::Value) -> Self {
        self.podnet_patch.push((pointer.to_string(), value));
        self
    }
    /// Runs the containerd in `dir` (a bin dir, or an unpacked package root with usr/bin).
    pub fn containerd_dir(mut self, dir: &Path) -> Self {
        let bin = if dir.join("containerd").exists() { dir.to_path_buf() } else { dir.join("usr/bin") };
        self.bin_dir = Some(bin);
        self.flavour = None;
        self
    }
    /// Runs `flavour`'s containerd ([`Flavour::bin_dir`]), failing unless it is that version.
    pub fn flavour(mut self, flavour: Flavour) -> Self {
        self.bin_dir = Some(flavour.bin_dir());
        self.flavour = Some(flavour);
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }
    /// Runs containerd in the existing namespace at `path` (see [`CriNodeOptions::netns`]).
    pub fn netns(mut self, path: &Path) -> Self {
        self.netns = Some(path.to_path_buf());
        self
    }
    /// The podnet conflist takes its range from the node facts at `path` (see
    /// [`CriNodeOptions::node_facts`]).
    pub fn node_facts(mut self, path: &Path) -> Self {
        self.node_facts = Some(path.to_path_buf());
        self
    }
    /// See [`CriNodeOptions::caller_checks_leaks`].
    pub fn caller_checks_leaks(mut self) -> Self {
        self.caller_checks_leaks = true;
        self
    }
}

/// See the module documentation.
pub struct CriNode {
    client: Option<CriClient>,
    c: Option<Containerd>,
    node: Option<Ns>,
    dir: Option<TempDir>,
    /// containerd 1.x (config v2, CNI 1.0.0).
    pub v1: bool,
    pub opts: CriNodeOptions,
    /// The leak checker's marker.
    pub marker: String,
    /// Network namespace paths of pods seen (for the cleanup).
    netns_seen: Mutex<BTreeSet<PathBuf>>,
    /// The links the node namespace had before containerd started (an existing namespace's).
    links_before: BTreeSet<String>,
    /// None when the caller checks for leaks ([`CriNodeOptions::caller_checks_leaks`]).
    before: Option<Snapshot>,
    _serial: Option<MutexGuard<'static, ()>>,
}

impl CriNode {
    /// A node with the defaults (IPv4 only).
    pub fn new(prefix: &str) -> CriNode {
        CriNode::with(prefix, CriNodeOptions::default())
    }

    /// A node with the defaults running `flavour`'s containerd.
    pub fn on(flavour: Flavour, prefix: &str) -> CriNode {
        CriNode::with(prefix, CriNodeOptions::default().flavour(flavour))
    }

    pub fn with(prefix: &str, opts: CriNodeOptions) -> CriNode {
        crate::require_root();
        assert!(
            !(opts.dual_stack && opts.node_facts.is_some()),
            "CriNodeOptions: the node facts give one IPv4 range; dual_stack does not go with node_facts"
        );
        let serial = (!opts.caller_checks_leaks).then(leaks::serial);
        // Built before the snapshot: the shared rootfs and cached archives stay on purpose.
        busybox_archive();
        pause_archive();
        let marker = unique("pncri");
        let before = (!opts.caller_checks_leaks).then(|| Snapshot::take(&marker));
        let dir = TempDir(PathBuf::from("/tmp").join(unique(&format!("pnk{}", &prefix[..prefix.len().min(4)]))));
        fs::create_dir_all(&dir.0).expect("create node dir");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o711)).expect("chmod node dir");
        let bin_dir = opts.bin_dir.clone().unwrap_or_else(default_bin_dir);
        if let Some(f) = opts.flavour {
            f.check(&bin_dir);
        }
        let v1 = containerd_major(&bin_dir) < 2;
        let mut me = CriNode {
            client: None,
            c: None,
            node: None,
            dir: Some(dir),
            v1,
            opts,
            marker,
            netns_seen: Mutex::new(BTreeSet::new()),
            links_before: BTreeSet::new(),
            before,
            _serial: serial,
        };
        me.write_cni();
        fs::create_dir_all(me.log_dir()).expect("create log dir");
        fs::write(
            me.podnet_config_path(),
            format!(
                "conf_dir = {:?}\nstate_dir = {:?}\n",
                me.podnet_conf_dir().display().to_string(),
                me.shim_state_dir().display().to_string()
            ),
        )
        .expect("write podnet config");
        me.node = Some(match &me.opts.netns {
            Some(p) => Ns::open(p),
            None => Ns::new("pk"),
        });
        me.links_before = me.links().into_iter().collect();

        let mut copts =
            ContainerdOptions::podnet().namespace(K8S_NAMESPACE).env("PODNET_CONFIG", me.podnet_config_path());
        for (k, v) in &me.opts.env {
            copts = copts.env(k, v);
        }
        copts.disabled_plugins = Some(disabled_plugins(v1));
        copts.bin_dir = Some(bin_dir);
        copts.extra_config = me.cri_config() + &me.opts.extra_config;
        me.c = Some(Containerd::start(me.node(), copts));
        me.client = Some(CriClient::connect(me.c().address()).expect("CRI client"));
        me.write_podnet_conflist();
        // Until CRI loaded it (Status's `lastCNILoadStatus.podnet`), podnet pods would fail
        // with "cni plugin not initialized".
        let key = format!("lastCNILoadStatus.{HANDLER_PODNET}");
        let mut last = None;
        let loaded = retry(500, Duration::from_millis(10), || {
            last = me.client().status(true).ok().and_then(|s| s.info.get(&key).cloned());
            last.as_deref() == Some("OK")
        });
        assert!(loaded, "CRI did not load the podnet conflist: {key} = {last:?}\n{}", me.c().log_tail(40));
        // Images: busybox (into `k8s.io`, the harness's namespace) and the pause image.
        busybox_image(me.c());
        let platform = format!("linux/{}", oci_arch());
        let pause = pause_archive().to_string_lossy().into_owned();
        me.c().ctr_ok(&["images", "import", "--platform", &platform, &pause]);
        // CRI learns about imported images from events: wait until it knows both.
        let mut last = String::new();
        let ready = retry(200, Duration::from_millis(25), || {
            let ok = |r: &str| me.client().image_status(r).map(|i| i.is_some());
            match (ok(PAUSE_IMAGE), ok(BUSYBOX_IMAGE)) {
                (Ok(true), Ok(true)) => true,
                other => {
                    last = format!("{other:?}");
                    false
                }
            }
        });
        assert!(ready, "CRI does not see the imported images: {last}\n{}", me.c().log_tail(60));
        me
    }

    /// The CRI sections of containerd's config (appended to the harness's).
    pub fn cri_config(&self) -> String {
        cri_config_text(self.v1, &self.cni_bin_dir(), &self.default_conf_dir(), &self.podnet_conf_dir())
    }

    fn write_cni(&self) {
        let bin = self.cni_bin_dir();
        fs::create_dir_all(&bin).expect("create CNI bin dir");
        for e in fs::read_dir("/usr/lib/cni").expect("/usr/lib/cni (containernetworking-plugins)").flatten() {
            std::os::unix::fs::symlink(e.path(), bin.join(e.file_name())).expect("symlink CNI plugin");
        }
        std::os::unix::fs::symlink(crate::plugin_binary(), bin.join("podnet")).expect("symlink podnet plugin");
        let d = self.default_conf_dir();
        fs::create_dir_all(&d).expect("create CNI conf dir");
        fs::write(d.join("10-runcnet.conflist"), serde_json::to_vec_pretty(&self.runc_conflist()).unwrap())
            .expect("write bridge conflist");
        fs::create_dir_all(self.podnet_conf_dir()).expect("create podnet conf dir");
    }

    /// Writes the podnet conflist once containerd's address is known. In place, not renamed
    /// into place: CRI's conf dir syncer ignores CREATE events and reloads on WRITE.
    fn write_podnet_conflist(&self) {
        let p = self.podnet_conf_dir().join("10-podnet.conflist");
        fs::write(&p, serde_json::to_vec_pretty(&self.podnet_conflist()).unwrap()).expect("write podnet conflist");
    }

    /// The reference bridge conflist of the `runc` handler (default conf dir).
    pub fn runc_conflist(&self) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": RUNC_NET,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": RUNC_BRIDGE,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.runc_ipam_dir(),
                        "ranges": [[{"subnet": RUNC_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}]
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    /// The podnet conflist of the `podnet` handler (spec.md), state inside the node dir.
    pub fn podnet_conflist(&self) -> serde_json::Value {
        let c = self.c.as_ref();
        // containerd's address exactly as it passes it to shims (`-address`): its `[grpc]
        // address`, i.e. the harness's socket path. Known before containerd starts.
        let (address, ttrpc) = match c {
            Some(c) => (c.address().to_path_buf(), c.ttrpc_address().to_path_buf()),
            None => (PathBuf::new(), PathBuf::new()),
        };
        let mut ranges = vec![json!([{"subnet": PODNET_SUBNET}])];
        if self.opts.dual_stack {
            ranges.push(json!([{"subnet": PODNET_SUBNET6}]));
        }
        let ipam = match &self.opts.node_facts {
            Some(facts) => json!({"type": "host-local", "dataDir": self.podnet_ipam_dir(), "nodeFacts": facts}),
            None => json!({"type": "host-local", "dataDir": self.podnet_ipam_dir(), "ranges": ranges}),
        };
        let mut v = json!({
            "cniVersion": if self.v1 { "1.0.0" } else { "1.1.0" },
            "name": PODNET_NET,
            "plugins": [{
                "type": "podnet",
                "bridge": PODNET_BRIDGE,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "stateDir": self.podnet_state_dir(),
                "ipam": ipam,
                "capabilities": {"portMappings": true},
                "containerd": {
                    "address": address,
                    "ttrpcAddress": ttrpc,
                    "namespace": K8S_NAMESPACE
                }
            }]
        });
        for (pointer, value) in &self.opts.podnet_patch {
            match v.pointer_mut(&format!("/plugins/0{pointer}")) {
                Some(slot) => *slot = value.clone(),
                None => panic!("podnet_patch: no {pointer} in the podnet conflist's plugin"),
            }
        }
        v
    }

    pub fn client(&self) -> &CriClient {
        self.client.as_ref().expect("CRI client")
    }

    pub fn c(&self) -> &Containerd {
        self.c.as_ref().expect("containerd")
    }

    pub fn c_mut(&mut self) -> &mut Containerd {
        self.c.as_mut().expect("containerd")
    }

    pub fn node(&self) -> &Ns {
        self.node.as_ref().expect("node namespace")
    }

    pub fn dir(&self) -> &Path {
        &self.dir.as_ref().expect("node dir").0
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir().join("bin")
    }

    pub fn default_conf_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }

    pub fn podnet_conf_dir(&self) -> PathBuf {
        self.dir().join("podnet.d")
    }

    pub fn podnet_ipam_dir(&self) -> PathBuf {
        self.dir().join("ipam-podnet")
    }

    pub fn runc_ipam_dir(&self) -> PathBuf {
        self.dir().join("ipam-runc")
    }

    /// The podnet plugin's `stateDir` (attachment records).
    pub fn podnet_state_dir(&self) -> PathBuf {
        self.dir().join("cni-state")
    }

    /// The shim's `state_dir` (PODNET_CONFIG).
    pub fn shim_state_dir(&self) -> PathBuf {
        self.dir().join("st")
    }

    pub fn podnet_config_path(&self) -> PathBuf {
        self.dir().join("podnet.toml")
    }

    /// The pods' log directories go under this.
    pub fn log_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    /// The busybox image's reference.
    pub fn image(&self) -> &'static str {
        BUSYBOX_IMAGE
    }

    /// RunPodSandbox with `handler`, panicking with containerd's log unless it succeeds.
    pub fn run_pod(&self, cfg: &cri::PodSandboxConfig, handler: &str) -> String {
        self.client()
            .run_pod_sandbox(cfg, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", self.c().log_tail(60)))
    }

    /// CreateContainer and StartContainer in `pod`, panicking with containerd's log unless both
    /// succeed; the container's id.
    pub fn start_container(&self, pod: &str, pod_cfg: &cri::PodSandboxConfig, cfg: cri::ContainerConfig) -> String {
        let id = self
            .client()
            .create_container(pod, &cfg, pod_cfg)
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.c().log_tail(60)));
        self.client().start_container(&id).unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.c().log_tail(60)));
        id
    }

    /// StopPodSandbox and RemovePodSandbox, panicking with containerd's log unless both succeed.
    pub fn stop_and_remove(&self, pod: &str) {
        self.client()
            .stop_pod_sandbox(pod)
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.c().log_tail(60)));
        self.client()
            .remove_pod_sandbox(pod)
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.c().log_tail(60)));
    }

    /// [`pod_config`] with a log directory of its own under [`CriNode::log_dir`].
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let c = pod_config(name, Path::new(""));
        let uid = c.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
        let log = self.log_dir().join(format!("default_{name}_{uid}"));
        cri::PodSandboxConfig { log_directory: log.to_string_lossy().into_owned(), ..c }
    }

    /// The pod's IP (PodSandboxStatus.network.ip); panics on a CRI error.
    pub fn pod_ip(&self, pod_id: &str) -> String {
        self.client().pod_ip(pod_id).unwrap_or_else(|e| panic!("PodSandboxStatus {pod_id}: {e}"))
    }

    /// The pod's network namespace path (verbose status); remembered for the cleanup.
    pub fn netns_path(&self, pod_id: &str) -> Option<PathBuf> {
        let p = self.client().netns_path(pod_id).unwrap_or_else(|e| panic!("PodSandboxStatus {pod_id}: {e}"));
        if let Some(p) = &p {
            self.netns_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(p.clone());
        }
        p
    }

    /// PIDs of every podnet shim daemon serving this containerd (`-address <ours>`, no
    /// `start`/`delete` action), zombies excluded.
    pub fn shim_pids(&self) -> Vec<i32> {
        self.shims_matching(None)
    }

    /// PIDs of the podnet shim daemons of pod `pod_id` (`-id <pod_id>`).
    pub fn shim_pids_for(&self, pod_id: &str) -> Vec<i32> {
        self.shims_matching(Some(pod_id))
    }

    fn shims_matching(&self, id: Option<&str>) -> Vec<i32> {
        let addr = self.c().address().to_string_lossy().into_owned();
        let mut v: Vec<i32> = processes_with_args(&["-address", &addr])
            .into_iter()
            .filter(|pid| {
                let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> =
                    raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                args.first().is_some_and(|a| a.ends_with("containerd-shim-podnet-v2"))
                    && !args.iter().any(|a| a == "start" || a == "delete")
                    && id.is_none_or(|id| args.windows(2).any(|w| w[0] == "-id" && w[1] == id))
                    && alive(*pid)
            })
            .collect();
        v.sort();
        v
    }

    /// The pod shim's socket for pod `pod_id` (same derivation as the shim's `start`).
    pub fn shim_socket(&self, pod_id: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.c().address().to_string_lossy().as_bytes());
        h.update(b"\0");
        h.update(K8S_NAMESPACE.as_bytes());
        h.update(b"\0");
        h.update(pod_id.as_bytes());
        Path::new(SHIM_SOCKET_DIR).join(format!("{:x}", h.finalize()))
    }

    /// IP reservations of the podnet network.
    pub fn podnet_reservations(&self) -> Vec<String> {
        reservations(&self.podnet_ipam_dir(), PODNET_NET)
    }

    /// IP reservations of the reference bridge network.
    pub fn runc_reservations(&self) -> Vec<String> {
        reservations(&self.runc_ipam_dir(), RUNC_NET)
    }

    /// veth links in the node namespace (either bridge's ports, or strays), but those it had
    /// before containerd started (an existing namespace's uplink).
    pub fn veths(&self) -> Vec<String> {
        link_names_of(&self.node().sh("ip -o link show type veth"))
            .into_iter()
            .filter(|n| !self.links_before.contains(n))
            .collect()
    }

    /// Every link in the node namespace.
    fn links(&self) -> Vec<String> {
        link_names_of(&self.node().sh("ip -o link show"))
    }

    /// iptables/ip6tables rules in the node namespace that belong to one pod: the reference
    /// plugins' per-container chains (`CNI-DN-...`, bridge's masquerade `CNI-<hash>`) and
    /// rules commented with a container id.
    pub fn cni_iptables_rules(&self) -> Vec<String> {
        let mut v = Vec::new();
        for save in ["iptables-save", "ip6tables-save"] {
            let o = self.node().run(&format!("{save} 2>/dev/null"));
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                let per_pod = l.starts_with("-A CNI-DN-")
                    || l.contains("id: \"")
                    || l.contains("id: \\\"")
                    || (l.starts_with("-A CNI-")
                        && !l.starts_with("-A CNI-HOSTPORT-")
                        && !l.starts_with("-A CNI-FORWARD")
                        && !l.starts_with("-A CNI-ADMIN"));
                if l.starts_with("-A ") && per_pod {
                    v.push(format!("{save}: {l}"));
                }
            }
        }
        v
    }

    /// containerd's task bundles (`<state>/io.containerd.runtime.v2.task/k8s.io/<id>`) of the
    /// pods and containers this node created that are still there.
    pub fn task_bundles_left(&self) -> Vec<PathBuf> {
        let dir = self.c().state_dir().join("io.containerd.runtime.v2.task").join(K8S_NAMESPACE);
        let mut ids = self.client().pods_seen();
        ids.extend(self.client().containers_seen());
        ids.into_iter().map(|id| dir.join(id)).filter(|p| fs::symlink_metadata(p).is_ok()).collect()
    }

    /// Files named `cni-*` (CRI's pod netns files) under containerd's directory.
    pub fn netns_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        find_named(self.c().dir(), "cni-", &mut v, 0);
        v
    }

    /// Cgroup directories (any hierarchy) named after a pod or container this node created.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        let mut ids = self.client().pods_seen();
        ids.extend(self.client().containers_seen());
        let mut v = Vec::new();
        if ids.is_empty() {
            return v;
        }
        walk_cgroup_ids(Path::new("/sys/fs/cgroup"), &ids, &mut v, 0);
        v
    }

    /// Asserts that no pod is left: none listed by CRI (pods or containers), no veth in the
    /// node namespace, no IP reservation in either network, no podnet-tagged nft rule nor a
    /// per-pod iptables rule of the reference plugins, no `cni-*` netns file under
    /// containerd's directory nor a netns seen earlier, no mount under the node's or
    /// containerd's directory, no podnet shim (waited for up to 5 s) nor its socket, no
    /// cgroup named after a pod or container, no task bundle of theirs under containerd's
    /// state (waited for up to 15 s: after a shim died, containerd 1.7 runs the shim's `delete`
    /// and removes the bundle in the background, and its RemovePodSandbox does not wait).
    pub fn assert_clean(&self) {
        let c = self.c();
        let pods = self.client().list_pod_sandbox().expect("ListPodSandbox");
        assert!(pods.is_empty(), "pods left: {:?}", pods.iter().map(|p| &p.id).collect::<Vec<_>>());
        let ctrs = self.client().list_containers().expect("ListContainers");
        assert!(ctrs.is_empty(), "containers left: {:?}", ctrs.iter().map(|c| &c.id).collect::<Vec<_>>());
        let gone = retry((SHIM_EXIT_TIMEOUT.as_millis() / 20) as u32, Duration::from_millis(20), || {
            self.shim_pids().is_empty()
        });
        assert!(
            gone,
            "podnet shim(s) {:?} still running {SHIM_EXIT_TIMEOUT:?} after the last pod went\n{}",
            self.shim_pids(),
            c.log_tail(40)
        );
        let bundles_gone = retry((BUNDLE_CLEANUP_TIMEOUT.as_millis() / 20) as u32, Duration::from_millis(20), || {
            self.task_bundles_left().is_empty()
        });
        assert!(
            bundles_gone,
            "task bundles still there {BUNDLE_CLEANUP_TIMEOUT:?} after the last pod went: {:?}\n{}",
            self.task_bundles_left(),
            c.log_tail(40)
        );
        assert_eq!(self.veths(), Vec::<String>::new(), "veths left in the node namespace");
        assert_eq!(podnet_veths(self.node()), Vec::<String>::new(), "podnet veths left");
        assert_eq!(self.podnet_reservations(), Vec::<String>::new(), "podnet IP reservations left");
        assert_eq!(self.runc_reservations(), Vec::<String>::new(), "bridge IP reservations left");
        assert_eq!(tagged_rules(self.node(), "podnet/"), Vec::<String>::new(), "podnet nft rules left");
        assert_eq!(self.cni_iptables_rules(), Vec::<String>::new(), "CNI iptables rules left");
        assert_eq!(self.netns_files(), Vec::<PathBuf>::new(), "pod netns files left under containerd's dir");
        for p in self.netns_seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            assert!(!p.exists(), "pod network namespace {} left", p.display());
        }
        assert_eq!(mounts_under(c.dir()), Vec::<PathBuf>::new(), "mounts left under containerd's dir");
        assert_eq!(mounts_under(self.dir()), Vec::<PathBuf>::new(), "mounts left under the node dir");
        for pod in self.client().pods_seen() {
            let s = self.shim_socket(&pod);
            assert!(fs::symlink_metadata(&s).is_err(), "shim socket {} of pod {pod} left", s.display());
        }
        let cgroups_gone = retry(100, Duration::from_millis(20), || self.cgroups_left().is_empty());
        assert!(cgroups_gone, "cgroups left: {:?}", self.cgroups_left());
    }

    /// Stops and removes every pod (and so its containers) through CRI; the errors.
    pub fn remove_all_pods(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let pods = match self.client().list_pod_sandbox() {
            Ok(p) => p,
            Err(e) => return vec![e.to_string()],
        };
        for p in pods {
            if let Ok(Some(ns)) = self.client().netns_path(&p.id) {
                self.netns_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(ns);
            }
            if let Err(e) = self.client().stop_pod_sandbox(&p.id) {
                errors.push(e.to_string());
            }
            if let Err(e) = self.client().remove_pod_sandbox(&p.id) {
                errors.push(e.to_string());
            }
        }
        errors
    }

    /// Stops and removes every pod through CRI (which must succeed), asserts
    /// [`CriNode::assert_clean`], stops containerd (its cleanup must find nothing to force)
    /// and asserts that nothing leaked since the node was made (unless
    /// [`CriNodeOptions::caller_checks_leaks`]: then that is the caller's).
    pub fn finish(mut self) {
        let errors = self.remove_all_pods();
        assert_eq!(errors, Vec::<String>::new(), "removing the pods through CRI failed\n{}", self.c().log_tail(60));
        self.assert_clean();
        drop(self.client.take());
        let c = self.c.take().expect("containerd");
        let problems = c.shutdown();
        assert_eq!(problems, Vec::<String>::new(), "containerd's cleanup was not clean");
        self.release();
        if let Some(before) = self.before.take() {
            leaks::assert_no_leaks(&before, &self.marker);
        }
    }

    /// Everything but containerd (already gone): leftover pod netns, shim sockets, the node,
    /// the dir.
    fn release(&mut self) {
        for p in self.netns_seen.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if p.exists() {
                eprintln!("CRI node cleanup: deleting leftover {}", p.display());
                let _ = podnet_netns::delete(p);
            }
        }
        drop(self.node.take());
        if let Some(d) = self.dir.take() {
            for m in mounts_under(d.path()) {
                if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                    // SAFETY: `c` is a valid NUL-terminated path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
            drop(d);
        }
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        if let Some(client) = self.client.as_ref() {
            if self.c.is_some() {
                client.set_timeout(CLEANUP_CALL_TIMEOUT);
                let errors = self.remove_all_pods();
                if !errors.is_empty() {
                    eprintln!("CRI node cleanup: removing pods: {errors:?}");
                }
            }
        }
        // Shim sockets of podnet pods (a killed shim leaves its socket).
        let sockets: Vec<PathBuf> = match (self.client.as_ref(), self.c.as_ref()) {
            (Some(cl), Some(_)) => cl.pods_seen().iter().map(|p| self.shim_socket(p)).collect(),
            _ => Vec::new(),
        };
        drop(self.client.take());
        drop(self.c.take());
        for s in sockets {
            if fs::symlink_metadata(&s).is_ok() {
                eprintln!("CRI node cleanup: removing leftover shim socket {}", s.display());
                let _ = fs::remove_file(&s);
            }
        }
        self.release();
    }
}

/// The link names of `ip -o link show` output, without the `@peer` suffix.
fn link_names_of(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n).to_string()).collect()
}

/// The plugins disabled with CRI on: the harness's defaults minus CRI and its sandbox machinery
/// (every plugin id of containerd's `cri`, `podsandbox` and `sandbox` families).
pub fn disabled_plugins(v1: bool) -> Vec<String> {
    let defaults = if v1 { DEFAULT_DISABLED_PLUGINS_1_7 } else { DEFAULT_DISABLED_PLUGINS };
    let cri = |p: &str| p.contains(".cri") || p.contains("sandbox");
    defaults.iter().filter(|p| !cri(p)).map(|p| p.to_string()).collect()
}

fn q(p: &Path) -> String {
    let s = p.to_string_lossy();
    assert!(!s.contains('\'') && !s.contains('\n'), "cannot quote {s:?} for TOML");
    format!("'{s}'")
}

/// containerd's CRI config: `version = 3` tables for 2.x, `version = 2` for 1.7.
pub fn cri_config_text(v1: bool, cni_bin: &Path, conf_dir: &Path, podnet_conf_dir: &Path) -> String {
    if v1 {
        let p = "plugins.'io.containerd.grpc.v1.cri'";
        format!(
            "[{p}]\n\
             \x20 sandbox_image = '{PAUSE_IMAGE}'\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 netns_mounts_under_state_dir = true\n\
             \x20 enable_unprivileged_ports = true\n\
             \x20 enable_unprivileged_icmp = true\n\
             \x20 enable_cdi = false\n\
             \x20 systemd_cgroup = false\n\
             \x20 disable_tcp_service = true\n\
             \x20 stream_server_address = '127.0.0.1'\n\
             \x20 stream_server_port = '0'\n\
             \n\
             [{p}.containerd]\n\
             \x20 default_runtime_name = 'runc'\n\
             \x20 snapshotter = 'overlayfs'\n\
             \n\
             [{p}.containerd.runtimes.runc]\n\
             \x20 runtime_type = 'io.containerd.runc.v2'\n\
             \n\
             [{p}.containerd.runtimes.runc.options]\n\
             \x20 SystemdCgroup = false\n\
             \n\
             [{p}.containerd.runtimes.podnet]\n\
             \x20 runtime_type = '{PODNET_RUNTIME}'\n\
             \x20 cni_conf_dir = {pc}\n\
             \n\
             [{p}.cni]\n\
             \x20 bin_dir = {bin}\n\
             \x20 conf_dir = {conf}\n\
             \x20 max_conf_num = 1\n",
            pc = q(podnet_conf_dir),
            bin = q(cni_bin),
            conf = q(conf_dir),
        )
    } else {
        let r = "plugins.'io.containerd.cri.v1.runtime'";
        let i = "plugins.'io.containerd.cri.v1.images'";
        let g = "plugins.'io.containerd.grpc.v1.cri'";
        format!(
            "[{i}]\n\
             \x20 snapshotter = 'overlayfs'\n\
             \n\
             [{i}.pinned_images]\n\
             \x20 sandbox = '{PAUSE_IMAGE}'\n\
             \n\
             [{r}]\n\
             \x20 restrict_oom_score_adj = true\n\
             \x20 netns_mounts_under_state_dir = true\n\
             \x20 enable_unprivileged_ports = true\n\
             \x20 enable_unprivileged_icmp = true\n\
             \x20 enable_cdi = false\n\
             \n\
             [{r}.containerd]\n\
             \x20 default_runtime_name = 'runc'\n\
             \n\
             [{r}.containerd.runtimes.runc]\n\
             \x20 runtime_type = 'io.containerd.runc.v2'\n\
             \x20 sandboxer = 'podsandbox'\n\
             \n\
             [{r}.containerd.runtimes.runc.options]\n\
             \x20 SystemdCgroup = false\n\
             \n\
             [{r}.containerd.runtimes.podnet]\n\
             \x20 runtime_type = '{PODNET_RUNTIME}'\n\
             \x20 sandboxer = 'podsandbox'\n\
             \x20 cni_conf_dir = {pc}\n\
             \n\
             [{r}.cni]\n\
             \x20 bin_dirs = [{bin}]\n\
             \x20 conf_dir = {conf}\n\
             \x20 max_conf_num = 1\n\
             \n\
             [{g}]\n\
             \x20 disable_tcp_service = true\n\
             \x20 stream_server_address = '127.0.0.1'\n\
             \x20 stream_server_port = '0'\n",
            pc = q(podnet_conf_dir),
            bin = q(cni_bin),
            conf = q(conf_dir),
        )
    }
}

fn find_named(dir: &Path, prefix: &str, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if name.starts_with(prefix) && !ft.is_dir() {
            out.push(e.path());
        }
        // Not into snapshots and content: they are big and hold no netns.
        if ft.is_dir() && !name.contains("snapshotter") && name != "io.containerd.content.v1.content" {
            find_named(&e.path(), prefix, out, depth + 1);
        }
    }
}

fn walk_cgroup_ids(dir: &Path, ids: &[String], out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 12 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(id.as_str())) {
            out.push(e.path());
        }
        walk_cgroup_ids(&e.path(), ids, out, depth + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// The pause image.

/// The pause image ([`PAUSE_IMAGE`]) as an OCI image layout tar: one layer holding podnet's
/// static pause binary at `/pause`, entrypoint `["/pause"]`, user 65535, the default PATH. Built once per
/// process and cached in the temp dir, keyed by the binary's digest.
pub fn pause_archive() -> &'static Path {
    static ARCHIVE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let bin = podnet_runtime::pause::PAUSE_BINARY;
        let key = format!("{:x}", Sha256::digest(bin));
        let path = std::env::temp_dir().join(format!("podnet-pause-oci-v2-{}.tar", &key[..16]));
        if path.exists() {
            return path;
        }
        let root = TempDir::new("pnpause");
        let p = root.path().join("pause");
        fs::write(&p, bin).expect("write pause binary");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod pause");
        let bytes = pause_layout_tar(root.path()).expect("building the pause image");
        let tmp = path.with_extension(format!("tar.{}", unique("tmp")));
        fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("renaming {}: {e}", tmp.display()));
        path
    })
}

fn pause_layout_tar(rootfs: &Path) -> io::Result<Vec<u8>> {
    let sha = |d: &[u8]| format!("sha256:{:x}", Sha256::digest(d));
    let layer = layer_tar(rootfs)?;
    let layer_digest = sha(&layer);
    let arch = oci_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        // As the real pause:3.10's config (its Env has the default PATH).
        "config": {
            "User": "65535:65535",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["/pause"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "podnet-tests: runtime/pause/pause.c"}]
    }))?;
    let config_digest = sha(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    }))?;
    let manifest_digest = sha(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": PAUSE_IMAGE, "org.opencontainers.image.ref.name": "3.10"}
        }]
    }))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], dir: bool| -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, false)?;
    add("index.json", &index, false)?;
    add("blobs/", &[], true)?;
    add("blobs/sha256/", &[], true)?;
    for (d, data) in [(&manifest_digest, &manifest), (&config_digest, &config), (&layer_digest, &layer)] {
        add(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")), data, false)?;
    }
    b.into_inner()
}

/// Runs `cmdline` in the node namespace with a timeout (for probes from tests).
pub fn node_output(node: &Ns, cmdline: &str, timeout: Duration) -> std::process::Output {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(cmdline);
    node.command(&mut cmd);
    output_with_timeout(&mut cmd, timeout).expect("spawn sh in the node namespace")
}

/// Waits (up to `timeout`) until container `id` reports `state`; the last status.
pub fn wait_container_state(
    client: &CriClient,
    id: &str,
    state: cri::ContainerState,
    timeout: Duration,
) -> CriResult<cri::ContainerStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = client.container_status(id)?.status.unwrap_or_default();
        if s.state == state as i32 || Instant::now() > deadline {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
