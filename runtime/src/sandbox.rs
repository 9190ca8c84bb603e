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
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use crate::container::Container;
use crate::create::{validate_id, Build, Workload};
use crate::error::{Error, Result};
use crate::process::Process;
use crate::stdio::StdioConfig;
use crate::{spec, Runtime};

/// The pause binary, built static by build.rs.
pub static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/podnet-pause"));

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

/// A running sandbox, as app containers join it: its pause process and the namespaces they
/// share. Cloned freely; checks that the pause is alive before use.
#[derive(Clone, Debug)]
pub struct SandboxHandle {
    pause: Arc<Process>,
    kinds: Vec<LinuxNamespaceType>,
}

impl SandboxHandle {
    pub(crate) fn new(pause: Arc<Process>, kinds: Vec<LinuxNamespaceType>) -> SandboxHandle {
        SandboxHandle { pause, kinds }
    }

    pub fn pid(&self) -> i32 {
        self.pause.pid()
    }

    pub fn kinds(&self) -> &[LinuxNamespaceType] {
        &self.kinds
    }

    /// The pause must still run, or /proc/<pid>/ns would be gone or, worse, someone else's.
    pub fn check_alive(&self) -> Result<()> {
        match self.pause.signal(0) {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Exited { what: "sandbox pause", id: self.pause.pid().to_string() }),
        }
    }
}

/// libcontainer's workload hook for the pause: exec the binary opened before the clone, with
/// no path lookup (the root is empty).
#[derive(Clone)]
pub(crate) struct PauseExecutor {
    fd: RawFd,
}

impl Executor for PauseExecutor {
    fn exec(&self, _spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let argv = [c"/pause".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        unsafe {
            libc::syscall(libc::SYS_execveat, self.fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
        };
        Err(ExecutorError::Other(format!("starting the pause binary: {}", io::Error::last_os_error())))
    }

    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        Ok(())
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

    /// The empty root every pause starts on: a directory with an empty `dev/`, read-only for
    /// everyone.
    fn pause_root(&self) -> Result<PathBuf> {
        let root = self.root.join(".pause-root");
        if !root.join("dev").is_dir() {
            fs::create_dir_all(root.join("dev")).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
            for d in [root.join("dev"), root.clone()] {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o555))
                    .map_err(|e| Error::io(format!("chmod {}", d.display()), e))?;
            }
        }
        Ok(root)
    }

    /// The pause binary opened, and the workload that execs it: keep the file open until the
    /// container is built.
    pub(crate) fn pause_executor(&self) -> Result<(File, PauseExecutor)> {
        let pause = File::open(self.pause_binary()?).map_err(|e| Error::io("opening the pause binary", e))?;
        let exec = PauseExecutor { fd: pause.as_raw_fd() };
        Ok((pause, exec))
    }

    /// Writes the embedded pause binary to `<root>/.podnet-pause` once (atomically, replacing
    /// a different version), unless a path was configured.
    pub fn pause_binary(&self) -> Result<PathBuf> {
        if let Some(p) = &self.pause_override {
            return Ok(p.clone());
        }
        if let Some(p) = self.pause_ready.get() {
            return Ok(p.clone());
        }
        let path = self.root.join(".podnet-pause");
        let current = fs::metadata(&path).map(|m| m.len() == PAUSE_BINARY.len() as u64).unwrap_or(false)
            && fs::read(&path).map(|b| b == PAUSE_BINARY).unwrap_or(false);
        if !current {
            let tmp = self.root.join(format!(".podnet-pause.{}", std::process::id()));
            let write = || -> io::Result<()> {
                fs::write(&tmp, PAUSE_BINARY)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
                fs::rename(&tmp, &path)
            };
            if let Err(e) = write() {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io(format!("writing the pause binary to {}", path.display()), e));
            }
        }
        let _ = self.pause_ready.set(path.clone());
        Ok(path)
    }
}

impl Container {
    /// For a sandbox: what app containers need to join it.
    pub fn sandbox_handle(&self) -> Option<SandboxHandle> {
        self.sandbox_kinds().map(|kinds| SandboxHandle { pause: self.init().clone(), kinds: kinds.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_binary_is_static() {
        // An ELF with no PT_INTERP program header needs no dynamic loader.
        let b = PAUSE_BINARY;
        assert_eq!(&b[..4], b"\x7fELF");
        let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        let phentsize = u16::from_le_bytes(b[54..56].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(b[56..58].try_into().unwrap()) as usize;
        for i in 0..phnum {
            let off = phoff + i * phentsize;
            let ptype = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
            assert_ne!(ptype, 3, "PT_INTERP found: the pause binary is dynamically linked");
        }
    }

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
