//! The pause sandbox: the process that holds a pod's namespaces.
//!
//! It needs no image. The runtime embeds a static pause binary (pause/pause.c), writes it once
//! to `<root>/.podnet-pause`, and starts it with execveat on a descriptor opened before the
//! container was built, so the pause runs on an empty, read-only root (a directory holding
//! only `dev/`, where a small tmpfs gets the standard device nodes) in a mount namespace of its
//! own, with no capabilities, as uid/gid 65535. Nothing that joins its namespaces can reach
//! the host's file system through `/proc/<pause>/root`. A bundle's rootfs (CRI passes the
//! pause image) is not used: CRI's sandbox bundle contributes its namespaces, hostname,
//! cgroup, sysctls and oomScoreAdj only (see `SandboxConfig::from_spec`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::build::validate_id;
use crate::container::Container;
use crate::create::{Build, Workload};
use crate::error::{Error, Result};
use crate::join::SandboxHandle;
use crate::stdio::StdioConfig;
use crate::{spec, Runtime};

/// The user the pause runs as (containerd's pause image uses the same).
const PAUSE_UID: u32 = 65535;

/// Where one of the sandbox's namespaces comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NsMode {
    /// A new namespace owned by the pause.
    #[default]
    New,
    /// An existing namespace, joined by path (CRI's pod netns under /var/run/netns).
    Path(PathBuf),
    /// The host's (hostNetwork, hostIPC, hostPID pods).
    Host,
}

/// What a pod sandbox holds.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    pub network: NsMode,
    pub ipc: NsMode,
    pub uts: NsMode,
    pub pid: NsMode,
    /// App containers joining through the handle also join the pause's PID namespace (the pod
    /// shares its PID namespace; the pause is its pid 1 and reaps orphans).
    pub share_pid: bool,
    pub hostname: Option<String>,
    pub cgroups_path: Option<PathBuf>,
    /// podnet's `systemd_cgroup`: the cgroup driver (`cgroup::choose`).
    pub systemd_cgroup: Option<bool>,
    pub sysctls: BTreeMap<String, String>,
    pub oom_score_adj: Option<i32>,
}

impl SandboxConfig {
    /// Takes from a sandbox bundle's spec (CRI's) what the pause needs: namespaces (a listed
    /// namespace with a path is joined, one without is new, an absent one is the host's),
    /// hostname, cgroupsPath, sysctls and oomScoreAdj. Root and process are ignored.
    pub fn from_spec(oci: &Spec) -> SandboxConfig {
        let namespaces = oci.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        let mode = |kind| match namespaces.iter().find(|n| n.typ() == kind) {
            None => NsMode::Host,
            Some(n) => match n.path() {
                Some(p) => NsMode::Path(p.clone()),
                None => NsMode::New,
            },
        };
        let linux = oci.linux().as_ref();
        SandboxConfig {
            network: mode(LinuxNamespaceType::Network),
            ipc: mode(LinuxNamespaceType::Ipc),
            uts: mode(LinuxNamespaceType::Uts),
            pid: mode(LinuxNamespaceType::Pid),
            share_pid: false,
            hostname: oci.hostname().clone(),
            cgroups_path: linux.and_then(|l| l.cgroups_path().clone()),
            systemd_cgroup: None,
            sysctls: linux.and_then(|l| l.sysctl().clone()).map(|m| m.into_iter().collect()).unwrap_or_default(),
            oom_score_adj: oci.process().as_ref().and_then(|p| p.oom_score_adj()),
        }
    }

    fn spec_json(&self, root: &Path) -> serde_json::Value {
        let mut namespaces = vec![serde_json::json!({"type": "mount"})];
        for (kind, mode) in [("network", &self.network), ("ipc", &self.ipc), ("uts", &self.uts), ("pid", &self.pid)] {
            match mode {
                NsMode::New => namespaces.push(serde_json::json!({"type": kind})),
                NsMode::Path(p) => namespaces.push(serde_json::json!({"type": kind, "path": p})),
                NsMode::Host => {}
            }
        }
        let none: [&str; 0] = [];
        let mut process = serde_json::json!({
            "terminal": false,
            "user": {"uid": PAUSE_UID, "gid": PAUSE_UID},
            "args": ["/pause"],
            "env": [],
            "cwd": "/",
            "capabilities": {"bounding": none, "effective": none, "inheritable": none, "permitted": none, "ambient": none},
            "noNewPrivileges": true
        });
        if let Some(score) = self.oom_score_adj {
            process["oomScoreAdj"] = score.into();
        }
        let mut linux = serde_json::json!({
            "namespaces": namespaces,
            "cgroupsPath": self.cgroups_path.clone(),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        });
        if !self.sysctls.is_empty() {
            linux["sysctl"] = serde_json::to_value(&self.sysctls).unwrap_or_default();
        }
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": process,
            "root": {"path": root, "readonly": true},
            // The device nodes and /dev symlinks every container gets land in this tmpfs,
            // private to the pause's mount namespace, not in the shared empty root.
            "mounts": [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "noexec", "mode=755", "size=64k"]}],
            "linux": linux,
        });
        if let Some(h) = &self.hostname {
            spec["hostname"] = h.clone().into();
        }
        spec
    }

    /// The namespaces app containers join through the handle.
    fn shared_kinds(&self) -> Vec<LinuxNamespaceType> {
        let mut kinds = vec![LinuxNamespaceType::Network, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts];
        if self.share_pid {
            kinds.push(LinuxNamespaceType::Pid);
        }
        kinds
    }
}

impl Runtime {
    /// Creates the pod sandbox `id`: the pause process in the namespaces `cfg` describes. Start
    /// it with `Container::start`; join app containers with `Container::sandbox_handle`.
    pub fn create_sandbox(&self, id: &str, cfg: &SandboxConfig) -> Result<Container> {
        validate_id(id)?;
        let root = self.pause_root()?;
        let (pause, exec) = self.pause_executor()?;
        let json = cfg.spec_json(&root);
        let file = self.root.join(id).join("config.json");
        let oci: Spec = serde_json::from_value(json)
            .map_err(|e| Error::spec(&file, "sandbox", format!("building the pause spec: {e}")))?;
        let prepared = spec::prepare(oci, &root, &file, id, cfg.systemd_cgroup)?;
        let c = self.build(Build {
            id,
            prepared,
            stdio: StdioConfig::null(),
            workload: Workload::Pause(exec),
            sandbox_kinds: Some(cfg.shared_kinds()),
        });
        drop(pause);
        c
    }
}

impl Container {
    /// For a sandbox: what app containers need to join it.
    pub fn sandbox_handle(&self) -> Option<SandboxHandle> {
        self.sandbox_kinds().map(|kinds| SandboxHandle::new(self.init().clone(), kinds.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_spec_reads_namespaces() {
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "pod-a",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["/pause"], "cwd": "/", "oomScoreAdj": -998},
            "root": {"path": "rootfs"},
            "linux": {
                "namespaces": [{"type": "network", "path": "/var/run/netns/cni-1"}, {"type": "ipc"}, {"type": "pid"}],
                "cgroupsPath": "/kubepods/pod1/abc",
                "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}
            }
        });
        let spec: Spec = serde_json::from_value(json).unwrap();
        let cfg = SandboxConfig::from_spec(&spec);
        assert_eq!(cfg.network, NsMode::Path("/var/run/netns/cni-1".into()));
        assert_eq!(cfg.ipc, NsMode::New);
        assert_eq!(cfg.uts, NsMode::Host);
        assert_eq!(cfg.hostname.as_deref(), Some("pod-a"));
        assert_eq!(cfg.oom_score_adj, Some(-998));
        assert_eq!(cfg.sysctls.len(), 1);
        let pause: Spec = serde_json::from_value(cfg.spec_json(Path::new("/r"))).unwrap();
        let ns = pause.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(ns.iter().all(|n| n.typ() != LinuxNamespaceType::Uts));
        assert!(pause
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .is_empty());
    }
}
