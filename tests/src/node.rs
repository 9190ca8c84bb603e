//! A node with a real systemd for the tests of the systemd cgroup driver: this machine's PID 1
//! is not systemd, so [`SystemdNode`] boots one, with `systemd-nspawn` (Debian's
//! `systemd-container`) on a tmpfs overlay of the host's own tree, in a network namespace of
//! its own — a node the way kind's node container is one — and [`NodeCri`] runs containerd
//! with CRI inside it, as a systemd unit of that node, with two runtime handlers on the
//! systemd cgroup driver:
//!
//! - `runc`: `io.containerd.runc.v2` with `SystemdCgroup = true` and Debian's reference CNI
//!   plugins (bridge `cni-runc0`, 10.88.0.0/16);
//! - `podnet`: `io.containerd.podnet.v2` whose options (`runtimeoptions.v1.Options`
//!   `ConfigPath`, also `PODNET_CONFIG` in containerd's environment) name a podnet config with
//!   `systemd_cgroup = true`, and the podnet conflist (bridge `podnet0`, 10.89.0.0/16).
//!
//! ```no_run
//! # use podnet_tests::node::{Layout, NodeCri, Qos};
//! # use podnet_tests::cri::{container_config, Flavour, HANDLER_RUNC};
//! let n = NodeCri::start(Layout::Hybrid, Flavour::Containerd2);
//! let cfg = n.pod_config("web", Qos::BestEffort);
//! let pod = n.run_pod(&cfg, HANDLER_RUNC);
//! let ctr = n.start_container(&pod, &cfg, container_config("c", &["sleep", "3600"]));
//! let unit = n.node().unit(&podnet_tests::node::scope_unit(&ctr));
//! assert_eq!(unit["ActiveState"], "active");
//! n.finish();
//! ```
//!
//! # The node
//!
//! - **Cgroups.** Before nspawn runs, the launcher moves itself into a cgroup of its own,
//!   `podnet-node-<name>`, created below this process's cgroup in every hierarchy under
//!   /sys/fs/cgroup (each v1 controller, `name=systemd`, the cgroup2 one). The node's cgroup
//!   namespace is rooted there, so its systemd, runc and podnet can only ever write that
//!   subtree. [`Layout::Hybrid`] is what systemd picks on this host (v1 controllers, systemd's
//!   own tree on cgroup2): the controllers nspawn mounts read-only are remounted writable inside
//!   the node (still within its cgroup namespace), so limits are real v1 limits.
//!   [`Layout::Unified`] (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`) gives the node a pure cgroup2
//!   tree; on this host that tree has no controllers (they are bound to the v1 hierarchies), so
//!   units and their properties exist there but no limit can be enforced.
//! - **Files.** `--volatile=yes`: a tmpfs `/` with the host's `/usr` read-only and an empty
//!   `/etc` (the harness writes `/etc/hosts` and `/etc/resolv.conf`). Bound at the same path on
//!   both sides: the node's scratch directory (`/tmp/pnsd<pid>x<n>`, read-write: configs,
//!   containerd's root, state and sockets, logs), and read-only `/etc/alternatives`,
//!   `/opt/podnet` (containerd) and what [`NodeOptions::bind_ro`] lists (the shim binary's
//!   directory, the image archives). The host's `/tmp` itself is **not** bound: the node's
//!   systemd would empty it at boot (`systemd-tmpfiles --remove` and tmpfiles.d's `D /tmp`).
//!   The node's `/tmp` is its own tmpfs, and `tmp.conf` is masked in the node anyway, so its
//!   boot cannot empty the scratch directory either (checked at every boot with a sentinel).
//! - **Units.** systemd boots to `basic.target` (`systemd.unit=basic.target`): none of the
//!   host's services (enabled for `multi-user.target`) start. `nftables.service` (a
//!   `sysinit.target` unit that fails on the empty `/etc`) and `systemd-tmpfiles-clean.timer`
//!   are masked. D-Bus is socket-activated.
//! - **Commands.** [`SystemdNode::command`] runs a program in all the node's namespaces
//!   (`nsenter -t <node PID 1> -a`); the boot is waited for by polling `systemctl
//!   is-system-running` (running or degraded) with a deadline.
//!
//! # Teardown
//!
//! [`SystemdNode::finish`] (and `Drop`, after a failed test): SIGTERM to the nspawn process
//! (which kills the node's PID 1 and so its whole PID namespace), SIGKILL to the node's PID 1
//! and nspawn after a grace time; SIGKILL by PID to any process still in the node's cgroups
//! (only processes of the node, which this harness started); the node's cgroups removed
//! depth-first in every hierarchy; nspawn's directories under /run/systemd that did not exist
//! before the boot removed (`nspawn/propagate/<name>`, and `nspawn/propagate`, `nspawn`,
//! `nspawn-root`, `/run/systemd` itself when they were absent); the scratch directory removed.
//! `finish` then asserts that nothing was left: no process, mount, namespace or cgroup of the
//! node ([`leaks::assert_no_leaks`], with the node's name as the cgroup marker).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

use crate::containerd::{alive, busybox_archive, mounts_under, oci_arch, output_with_timeout, processes_with_args};
use crate::cri::{
    cri_config_text, disabled_plugins, pause_archive, pod_config, v1 as cri, CriClient, Flavour, BUSYBOX_IMAGE,
    HANDLER_PODNET, K8S_NAMESPACE, PAUSE_IMAGE, PODNET_BRIDGE, PODNET_NET, PODNET_SUBNET, RUNC_BRIDGE, RUNC_NET,
    RUNC_SUBNET,
};
use crate::leaks::{self, Snapshot};
use crate::{retry, unique, TempDir};

/// How long the node may take to boot (`systemctl is-system-running`: running or degraded).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long nspawn gets to end the node on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long one command inside the node may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd may take to answer CRI's Version.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
/// The system directories of every PATH in the node.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The unit containerd runs as inside the node.
pub const CONTAINERD_UNIT: &str = "podnet-containerd.service";
/// What the node masks: units (in /etc/systemd/system) and tmpfiles.d entries (in
/// /etc/tmpfiles.d) linked to /dev/null before systemd starts.
const MASKED_UNITS: [&str; 3] = ["nftables.service", "systemd-tmpfiles-clean.timer", "systemd-tmpfiles-clean.service"];
const MASKED_TMPFILES: [&str; 1] = ["tmp.conf"];
/// nspawn's directories under /run/systemd, deepest first (besides `nspawn/propagate/<name>`).
const NSPAWN_RUN_DIRS: [&str; 4] =
    ["/run/systemd/nspawn/propagate", "/run/systemd/nspawn", "/run/systemd/nspawn-root", "/run/systemd"];

/// The node's cgroup layout: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// systemd's hybrid mode, as on this host: v1 controllers (writable inside the node),
    /// `name=systemd`, and the cgroup2 tree at /sys/fs/cgroup/unified.
    Hybrid,
    /// A pure cgroup2 tree (`SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`), with no controllers on a host
    /// whose controllers are bound to v1 hierarchies.
    Unified,
}

/// One cgroup hierarchy mounted under /sys/fs/cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The controller ("memory", "cpu", ...), "systemd" for `name=systemd`, "unified" for cgroup2.
    pub name: String,
    /// Where it is mounted (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// This process's cgroup in it (from /proc/self/cgroup).
    pub own: PathBuf,
}

/// The cgroup hierarchies under /sys/fs/cgroup (from /proc/self/mountinfo), each with this
/// process's cgroup in it (from /proc/self/cgroup).
pub fn hierarchies() -> Vec<Hierarchy> {
    let cgroup = fs::read_to_string("/proc/self/cgroup").expect("reading /proc/self/cgroup");
    // "id:controllers:path" -> (controllers, path)
    let own: Vec<(Vec<String>, PathBuf)> = cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            Some((c.split(',').filter(|s| !s.is_empty()).map(String::from).collect(), PathBuf::from(p)))
        })
        .collect();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    let mut v = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let point = PathBuf::from(left.split(' ').nth(4).unwrap_or_default());
        let mut r = right.split(' ');
        let (fstype, super_opts) = (r.next().unwrap_or_default(), r.nth(1).unwrap_or_default());
        if !point.starts_with("/sys/fs/cgroup") || !(fstype == "cgroup" || fstype == "cgroup2") {
            continue;
        }
        let controllers: Vec<String> = if fstype == "cgroup2" {
            Vec::new()
        } else {
            let known = |o: &&str| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec");
            super_opts.split(',').filter(known).map(String::from).collect()
        };
        let Some((_, path)) = own.iter().find(|(c, _)| {
            let mut a = c.clone();
            let mut b = controllers.clone();
            a.sort();
            b.sort();
            a == b
        }) else {
            continue;
        };
        let name = match controllers.as_slice() {
            [] => "unified".to_string(),
            [c] if c == "name=systemd" => "systemd".to_string(),
            _ => point.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        v.push(Hierarchy { name, mount: point, own: path.clone() });
    }
    v
}

/// How to boot a [`SystemdNode`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub layout: Layout,
    /// Host paths bound read-only into the node at the same path (files or directories).
    pub bind_ro: Vec<PathBuf>,
}

impl NodeOptions {
    pub fn new(layout: Layout) -> NodeOptions {
        NodeOptions { layout, bind_ro: Vec::new() }
    }

    pub fn bind_ro(mut self, path: &Path) -> NodeOptions {
        if !self.bind_ro.iter().any(|p| p == path) {
            self.bind_ro.push(path.to_path_buf());
        }
        self
    }
}

/// A booted systemd node: see the module documentation.
pub struct SystemdNode {
    name: String,
    layout: Layout,
    dir: Option<TempDir>,
    nspawn: Option<Child>,
    pid1: i32,
    /// The node's cgroup in each hierarchy (host paths), as created.
    cgroups: Vec<(Hierarchy, PathBuf)>,
    /// nspawn's directories under /run/systemd that did not exist before the boot.
    run_dirs: Vec<PathBuf>,
    before: Option<Snapshot>,
    torn_down: bool,
    _serial: MutexGuard<'static, ()>,
}

impl SystemdNode {
    /// Boots a node and waits until its systemd has booted; panics, with nspawn's output, when
    /// it does not.
    pub fn boot(opts: NodeOptions) -> SystemdNode {
        crate::require_root();
        let serial = leaks::serial();
        let name = unique("pnsd");
        let before = Snapshot::take(&name);
        let dir = TempDir(PathBuf::from("/tmp").join(&name));
        fs::create_dir_all(&dir.0).expect("create the node's directory");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o711)).expect("chmod the node's directory");
        let mut run_dirs: Vec<PathBuf> = vec![Path::new("/run/systemd/nspawn/propagate").join(&name)];
        run_dirs.extend(NSPAWN_RUN_DIRS.iter().map(PathBuf::from).filter(|p| !p.exists()));
        let mut me = SystemdNode {
            name,
            layout: opts.layout,
            dir: Some(dir),
            nspawn: None,
            pid1: 0,
            cgroups: Vec::new(),
            run_dirs,
            before: Some(before),
            torn_down: false,
            _serial: serial,
        };
        // From here on a panic drops `me`, which tears down what exists.
        me.make_cgroups();
        fs::write(me.sentinel(), b"the node's boot must not empty this directory\n").expect("write the sentinel");
        me.spawn(&opts);
        me.wait_booted();
        assert!(
            me.sentinel().exists(),
            "the node's boot emptied {}: its systemd-tmpfiles reached the host",
            me.dir().display()
        );
        me.sh("printf '127.0.0.1 localhost\\n::1 localhost\\n' > /etc/hosts && : > /etc/resolv.conf");
        me
    }

    fn sentinel(&self) -> PathBuf {
        self.dir().join(".sentinel")
    }

    /// `podnet-node-<name>` below this process's cgroup in every hierarchy.
    fn make_cgroups(&mut self) {
        let leaf = format!("podnet-node-{}", self.name);
        for h in hierarchies() {
            let parent = h.mount.join(h.own.strip_prefix("/").unwrap_or(&h.own));
            let dir = parent.join(&leaf);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating the node's cgroup {}: {e}", dir.display()));
            self.cgroups.push((h.clone(), dir.clone()));
            if h.name == "cpuset" {
                // An empty cpuset takes no process (ENOSPC): the parent's, as the kernel does not copy them.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = fs::read_to_string(parent.join(f)).unwrap_or_else(|e| panic!("reading {f}: {e}"));
                    fs::write(dir.join(f), v.trim())
                        .unwrap_or_else(|e| panic!("writing {}: {e}", dir.join(f).display()));
                }
            }
        }
        assert!(!self.cgroups.is_empty(), "no cgroup hierarchy under /sys/fs/cgroup");
    }

    /// Starts nspawn (through a shell that first moves itself into the node's cgroups) and
    /// finds the node's PID 1.
    fn spawn(&mut self, opts: &NodeOptions) {
        let dir = self.dir().to_path_buf();
        let log = fs::File::create(self.log_path()).expect("create nspawn's log");
        let log2 = log.try_clone().expect("dup nspawn's log");
        let mut payload = String::from("mkdir -p /etc/systemd/system /etc/tmpfiles.d && ");
        for u in MASKED_UNITS {
            payload.push_str(&format!("ln -s /dev/null /etc/systemd/system/{u} && "));
        }
        for t in MASKED_TMPFILES {
            payload.push_str(&format!("ln -s /dev/null /etc/tmpfiles.d/{t} && "));
        }
        if self.layout == Layout::Hybrid {
            // nspawn mounts the v1 controllers read-only: writable again, inside the node's cgroupns.
            for (h, _) in self.cgroups.iter().filter(|(h, _)| h.name != "unified" && h.name != "systemd") {
                let m = h.mount.display();
                payload.push_str(&format!("mount --bind {m} {m} && mount -o remount,bind,rw {m} && "));
            }
        }
        payload.push_str("exec /lib/systemd/systemd systemd.firstboot=off systemd.unit=basic.target");
        let mut binds = vec![format!("--bind={}", dir.display()), "--bind-ro=/etc/alternatives".to_string()];
        if Path::new("/opt/podnet").exists() {
            binds.push("--bind-ro=/opt/podnet".into());
        }
        for p in &opts.bind_ro {
            assert!(p.exists(), "{} (to bind into the node) is missing", p.display());
            binds.push(format!("--bind-ro={}", p.display()));
        }
        // sh moves itself into each cgroup named in "$@" up to the count, then execs the rest.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; exec "$@""#)
            .arg("sh")
            .arg(self.cgroups.len().to_string())
            .args(self.cgroups.iter().map(|(_, d)| d))
            .arg("systemd-nspawn")
            .args([
                "--quiet",
                "--directory=/",
                "--volatile=yes",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--link-journal=no",
                "--console=read-only",
                "--capability=all",
                "--system-call-filter=@keyring bpf",
            ])
            .arg(format!("--machine={}", self.name))
            .args(&binds)
            .args(["/bin/sh", "-c", &payload])
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a ^C at the terminal reaches the test, which tears down.
            .process_group(0);
        if self.layout == Layout::Unified {
            cmd.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1");
        }
        let child = cmd.spawn().expect("spawn systemd-nspawn (apt-get install systemd-container; hack/setup does)");
        let nspawn = child.id() as i32;
        self.nspawn = Some(child);
        // The payload (sh, then systemd) is nspawn's direct child.
        self.pid1 = self.poll("the node's systemd to start", BOOT_TIMEOUT, || {
            let children = fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).unwrap_or_default();
            let pids = children.split_whitespace().filter_map(|p| p.parse::<i32>().ok());
            let mut systemd =
                pids.filter(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "systemd"));
            systemd.next().ok_or_else(|| format!("nspawn's children: {:?}", children.trim()))
        });
    }

    /// Calls `f` every 20 ms until it returns Ok; panics with `what`, `f`'s last error and
    /// nspawn's output when nspawn exits first or `timeout` passes.
    pub fn poll<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match f() {
                Ok(v) => return v,
                Err(e) => e,
            };
            let nspawn = self.nspawn.as_ref().map_or(0, |c| c.id() as i32);
            assert!(
                alive(nspawn),
                "systemd-nspawn exited while waiting for {what} ({last}); its output:\n{}",
                self.log()
            );
            assert!(Instant::now() < deadline, "waiting for {what}: not within {timeout:?} ({last})\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `systemctl is-system-running` until running or degraded (failed units are listed
    /// on stderr for the record).
    fn wait_booted(&self) {
        let state = self.poll("the node to boot", BOOT_TIMEOUT, || {
            let o = self.run("systemctl is-system-running");
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            match state.as_str() {
                "running" | "degraded" => Ok(state),
                _ => Err(format!("is-system-running: {state} {}", String::from_utf8_lossy(&o.stderr).trim())),
            }
        });
        if state == "degraded" {
            eprintln!("systemd node {}: degraded: {}", self.name, self.sh("systemctl --failed --plain --no-legend"));
        }
    }

    /// The node's (machine) name, also its cgroups' marker.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The scratch directory, at the same path inside the node and on the host.
    pub fn dir(&self) -> &Path {
        &self.dir.as_ref().expect("node dir").0
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("nspawn.log")
    }

    /// nspawn's output (the node's console).
    pub fn log(&self) -> String {
        fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The node's PID 1 (its systemd), as the host sees it.
    pub fn pid1(&self) -> i32 {
        self.pid1
    }

    /// `program args` in all the node's namespaces (`nsenter -t <PID 1> -a`), with the
    /// system PATH and no pager or colours.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid1.to_string())
            .arg("-a")
            .arg("--")
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        cmd
    }

    /// Runs `cmdline` (through sh) inside the node; killed after 60 s.
    pub fn run(&self, cmdline: &str) -> Output {
        let mut cmd = self.command("/bin/sh", &["-c", cmdline]);
        output_with_timeout(&mut cmd, COMMAND_TIMEOUT).unwrap_or_else(|e| panic!("nsenter into the node: {e}"))
    }

    /// Like [`SystemdNode::run`], but panics unless it succeeds; its stdout.
    pub fn sh(&self, cmdline: &str) -> String {
        let o = self.run(cmdline);
        assert!(
            o.status.success(),
            "`{cmdline}` failed in node {} ({}): {}{}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `systemctl show` of `unit`: every property, by name (LoadState "not-found" for a unit
    /// systemd does not know).
    pub fn unit(&self, unit: &str) -> BTreeMap<String, String> {
        self.sh(&format!("systemctl show -- '{unit}'"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Whether systemd still knows `unit` (loaded, in any state).
    pub fn unit_known(&self, unit: &str) -> bool {
        self.unit(unit).get("LoadState").is_some_and(|s| s != "not-found")
    }

    /// The units systemd has loaded whose name matches the glob `pattern`.
    pub fn units(&self, pattern: &str) -> Vec<String> {
        let out = self.sh(&format!("systemctl list-units --all --plain --no-legend -- '{pattern}'"));
        out.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
    }

    /// The node's own cgroup in `hierarchy` ("memory", "cpu", "systemd", "unified", ...), as
    /// the host sees it: the root of the node's cgroup namespace there.
    pub fn cgroup_root(&self, hierarchy: &str) -> PathBuf {
        self.cgroups
            .iter()
            .find(|(h, _)| h.name == hierarchy)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no {hierarchy} hierarchy under /sys/fs/cgroup"))
    }

    /// A cgroup of the node (`path` as the node sees it, e.g. a unit's ControlGroup) in
    /// `hierarchy`, as the host sees it.
    pub fn host_cgroup(&self, hierarchy: &str, path: &str) -> PathBuf {
        self.cgroup_root(hierarchy).join(path.trim_start_matches('/'))
    }

    /// The node's cgroup directories (every hierarchy) whose name contains one of `needles`.
    pub fn cgroups_named(&self, needles: &[String]) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for n in needles.iter().filter(|n| !n.is_empty()) {
            let node = self.name.as_str();
            v.extend(Snapshot::take(n).cgroups.into_iter().filter(|p| p.to_string_lossy().contains(node)));
        }
        v.sort();
        v.dedup();
        v
    }

    /// Tears the node down and asserts that it left nothing: see the module documentation.
    pub fn finish(mut self) {
        let problems = self.teardown();
        assert_eq!(problems, Vec::<String>::new(), "the node's teardown was not clean");
        let before = self.before.take().expect("snapshot");
        leaks::assert_no_leaks(&before, &self.name);
    }

    /// The work of `finish` and `Drop` (once); what went wrong.
    fn teardown(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        let mut problems = Vec::new();
        if let Some(mut child) = self.nspawn.take() {
            let pid = child.id() as i32;
            // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if child.try_wait().ok().flatten().is_none() {
                problems.push(format!("systemd-nspawn ({pid}) did not exit on SIGTERM within {STOP_GRACE:?}"));
                if self.pid1 > 0 && alive(self.pid1) {
                    // SAFETY: as above; the node's PID 1, a descendant we started.
                    unsafe { libc::kill(self.pid1, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Whatever is still in the node's cgroups is a process of the node: SIGKILL, by PID.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("processes of the node that would not die: {left:?}"));
                break;
            }
            for pid in left {
                // SAFETY: kill has no memory-safety preconditions; `pid` is in the node's cgroups.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, root) in self.cgroups.drain(..).rev() {
            if let Err(e) = remove_cgroup_tree(&root) {
                problems.push(format!("removing the node's cgroup {}: {e}", root.display()));
            }
        }
        for d in &self.run_dirs {
            // Only empty directories go: another nspawn's entries stay.
            if d.exists() && fs::remove_dir(d).is_err() && d.ends_with(&self.name) {
                problems.push(format!("nspawn's {} is not empty", d.display()));
            }
        }
        if let Some(d) = self.dir.take() {
            let mounts = mounts_under(d.path());
            if !mounts.is_empty() {
                problems.push(format!("mounts under the node's directory on the host: {mounts:?}"));
                crate::mounts::umount_all(d.path());
            }
            if std::thread::panicking() {
                let keep = d.path().with_extension("log");
                if fs::copy(d.path().join("nspawn.log"), &keep).is_ok() {
                    eprintln!("systemd node: nspawn's output is kept in {}", keep.display());
                }
            }
        }
        problems
    }

    /// The PIDs (host view) of every process in the node's cgroups.
    pub fn processes(&self) -> Vec<i32> {
        let mut v = Vec::new();
        for (_, root) in &self.cgroups {
            collect_procs(root, &mut v);
        }
        v.sort();
        v.dedup();
        v
    }
}

impl Drop for SystemdNode {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!("systemd node {} teardown:\n  {}", self.name, problems.join("\n  "));
        }
    }
}

fn collect_procs(dir: &Path, out: &mut Vec<i32>) {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    out.extend(procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            collect_procs(&e.path(), out);
        }
    }
}

/// rmdir of a cgroup and every cgroup below it, deepest first; retried briefly while the
/// kernel still holds one (EBUSY right after its last process exited).
fn remove_cgroup_tree(root: &Path) -> io::Result<()> {
    fn dirs(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                dirs(&e.path(), out);
            }
        }
        out.push(d.to_path_buf());
    }
    let mut all = Vec::new();
    if root.exists() {
        dirs(root, &mut all);
    }
    for d in all {
        let mut last = Ok(());
        let gone = retry(100, Duration::from_millis(20), || {
            last = fs::remove_dir(&d);
            last.is_ok() || !d.exists()
        });
        if !gone {
            return last;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CRI in the node.

/// A pod's QoS class, as kubelet's systemd driver names its cgroup parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    BestEffort,
    Burstable,
}

/// kubelet's cgroup parent (systemd driver) for pod `uid` of class `qos`:
/// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice` (the uid's
/// dashes as underscores, since a dash in a slice name means nesting).
pub fn pod_slice_path(qos: Qos, uid: &str) -> String {
    let class = match qos {
        Qos::BestEffort => "besteffort",
        Qos::Burstable => "burstable",
    };
    format!("kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{}.slice", uid.replace('-', "_"))
}

/// The transient scope of a container or pod sandbox `id` (runc's systemd driver's name for
/// `<slice>:cri-containerd:<id>`).
pub fn scope_unit(id: &str) -> String {
    format!("cri-containerd-{id}.scope")
}

/// How to start a [`NodeCri`].
#[derive(Debug, Clone)]
pub struct NodeCriOptions {
    pub layout: Layout,
    /// The containerd that runs in the node.
    pub flavour: Flavour,
}

impl NodeCriOptions {
    pub fn new(layout: Layout, flavour: Flavour) -> NodeCriOptions {
        NodeCriOptions { layout, flavour }
    }
}

/// containerd with CRI as a unit of a [`SystemdNode`]; see the module documentation.
pub struct NodeCri {
    client: Option<CriClient>,
    extra: Option<CriExtra>,
    node: Option<SystemdNode>,
    bin_dir: PathBuf,
    /// containerd 1.x (config version 2).
    pub v1: bool,
}

impl NodeCri {
    /// A node of `layout` running `flavour`'s containerd.
    pub fn start(layout: Layout, flavour: Flavour) -> NodeCri {
        NodeCri::with(NodeCriOptions::new(layout, flavour))
    }

    pub fn with(opts: NodeCriOptions) -> NodeCri {
        crate::require_root();
        // Built before the node's snapshot: the cached archives stay on purpose.
        let archives = [busybox_archive().to_path_buf(), pause_archive().to_path_buf()];
        let shim = crate::plugin_binary();
        let bin_dir = opts.flavour.bin_dir();
        assert!(bin_dir.join("containerd").exists(), "{} is missing: run hack/setup", bin_dir.display());
        let v1 = opts.flavour.is_1_7();
        let mut nopts = NodeOptions::new(opts.layout).bind_ro(shim.parent().expect("the shim's directory"));
        for a in &archives {
            nopts = nopts.bind_ro(a);
        }
        nopts = nopts.bind_ro(&bin_dir);
        let node = SystemdNode::boot(nopts);
        let mut me = NodeCri { client: None, extra: None, node: Some(node), bin_dir, v1 };
        me.write_files(&shim);
        me.start_containerd(&shim);
        for a in &archives {
            let platform = format!("linux/{}", oci_arch());
            me.ctr_ok(&["images", "import", "--platform", &platform, &a.to_string_lossy()]);
        }
        // CRI learns about imported images from events: until it knows both.
        me.node().poll("CRI to see the imported images", CONTAINERD_TIMEOUT, || {
            let known = |r: &str| me.client().image_status(r).map(|i| i.is_some()).unwrap_or(false);
            (known(PAUSE_IMAGE) && known(BUSYBOX_IMAGE)).then_some(()).ok_or_else(|| me.log_tail(20))
        });
        me
    }

    pub fn node(&self) -> &SystemdNode {
        self.node.as_ref().expect("node")
    }

    pub fn client(&self) -> &CriClient {
        self.client.as_ref().expect("CRI client")
    }

    /// ContainerStats and UpdateContainerResources.
    pub fn extra(&self) -> &CriExtra {
        self.extra.as_ref().expect("CRI client")
    }

    pub fn dir(&self) -> PathBuf {
        self.node().dir().to_path_buf()
    }

    fn cdir(&self) -> PathBuf {
        self.dir().join("c")
    }

    /// containerd's gRPC (CRI) socket.
    pub fn address(&self) -> PathBuf {
        self.cdir().join("c.sock")
    }

    fn ttrpc_address(&self) -> PathBuf {
        self.cdir().join("t.sock")
    }

    /// The podnet config: `ConfigPath` of the `podnet` handler and `PODNET_CONFIG`.
    pub fn podnet_config_path(&self) -> PathBuf {
        self.dir().join("podnet.toml")
    }

    /// containerd's log (stdout and stderr of its unit, with what shims log).
    pub fn log(&self) -> String {
        fs::read(self.cdir().join("containerd.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::last_lines(&self.log(), lines)
    }

    /// The CNI dirs, both conflists, the podnet config and containerd's config.
    fn write_files(&self, shim: &Path) {
        let d = self.dir();
        for sub in ["c", "bin", "net.d", "podnet.d", "logs", "st"] {
            fs::create_dir_all(d.join(sub)).expect("create the node's directories");
        }
        for e in fs::read_dir("/usr/lib/cni").expect("/usr/lib/cni (containernetworking-plugins)").flatten() {
            std::os::unix::fs::symlink(e.path(), d.join("bin").join(e.file_name())).expect("symlink CNI plugin");
        }
        std::os::unix::fs::symlink(shim, d.join("bin/podnet")).expect("symlink the podnet plugin");
        let runc_net = json!({
            "cniVersion": "1.0.0",
            "name": RUNC_NET,
            "plugins": [{
                "type": "bridge", "bridge": RUNC_BRIDGE, "isGateway": true, "ipMasq": true,
                "ipam": {"type": "host-local", "dataDir": d.join("ipam-runc"), "ranges": [[{"subnet": RUNC_SUBNET}]]}
            }]
        });
        let podnet_net = json!({
            "cniVersion": if self.v1 { "1.0.0" } else { "1.1.0" },
            "name": PODNET_NET,
            "plugins": [{
                "type": "podnet", "bridge": PODNET_BRIDGE, "isGateway": true, "ipMasq": true,
                "stateDir": d.join("cni-state"),
                "ipam": {"type": "host-local", "dataDir": d.join("ipam-podnet"), "ranges": [[{"subnet": PODNET_SUBNET}]]},
                "containerd": {"address": self.address(), "ttrpcAddress": self.ttrpc_address(), "namespace": K8S_NAMESPACE}
            }]
        });
        fs::write(d.join("net.d/10-runcnet.conflist"), runc_net.to_string()).expect("write the runc conflist");
        fs::write(d.join("podnet.d/10-podnet.conflist"), podnet_net.to_string()).expect("write the podnet conflist");
        fs::write(
            self.podnet_config_path(),
            format!(
                "conf_dir = '{}'\nstate_dir = '{}'\nsystemd_cgroup = true\n",
                d.join("podnet.d").display(),
                d.join("st").display()
            ),
        )
        .expect("write the podnet config");
        fs::write(self.cdir().join("config.toml"), self.config_text()).expect("write containerd's config");
    }

    /// containerd's config: its own directories and sockets, CRI as [`cri_config_text`] writes
    /// it with runc's `SystemdCgroup = true`, and the podnet handler's `ConfigPath`.
    pub fn config_text(&self) -> String {
        let d = self.dir();
        let q = |p: PathBuf| format!("'{}'", p.display());
        let disabled: Vec<String> = disabled_plugins(self.v1).iter().map(|p| format!("'{p}'")).collect();
        let mut cri = cri_config_text(self.v1, &d.join("bin"), &d.join("net.d"), &d.join("podnet.d"));
        assert_eq!(cri.matches("SystemdCgroup = false").count(), 1, "runc's options in:\n{cri}");
        cri = cri.replace("SystemdCgroup = false", "SystemdCgroup = true");
        let runtimes = if self.v1 {
            "plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes"
        } else {
            "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes"
        };
        let verifier = if self.v1 {
            String::new()
        } else {
            format!(
                "[plugins.'io.containerd.image-verifier.v1.bindir']\n  bin_dir = {}\n",
                q(self.cdir().join("verifiers"))
            )
        };
        [
            format!("version = {}", if self.v1 { 2 } else { 3 }),
            format!("root = {}", q(self.cdir().join("root"))),
            format!("state = {}", q(self.cdir().join("state"))),
            "oom_score = 0".into(),
            format!("disabled_plugins = [{}]", disabled.join(", ")),
            format!("[grpc]\n  address = {}", q(self.address())),
            format!("[ttrpc]\n  address = {}", q(self.ttrpc_address())),
            "[debug]\n  level = 'debug'".into(),
            verifier,
            cri,
            format!("[{runtimes}.{HANDLER_PODNET}.options]\n  ConfigPath = {}", q(self.podnet_config_path())),
        ]
        .join("\n")
    }

    /// Starts containerd as [`CONTAINERD_UNIT`] and waits until CRI answers and has loaded
    /// both CNI configs.
    fn start_containerd(&mut self, shim: &Path) {
        let log = self.cdir().join("containerd.log");
        let path = format!("{}:{}:{SYSTEM_PATH}", shim.parent().expect("shim dir").display(), self.bin_dir.display());
        let mut env = vec![format!("PATH={path}"), format!("PODNET_CONFIG={}", self.podnet_config_path().display())];
        for k in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(k) {
                env.push(format!("{k}={v}"));
            }
        }
        let mut args: Vec<String> = vec![
            format!("--unit={CONTAINERD_UNIT}"),
            "--collect".into(),
            "--quiet".into(),
            format!("--property=StandardOutput=append:{}", log.display()),
            format!("--property=StandardError=append:{}", log.display()),
            // As containerd.service: stopping containerd leaves the shims; Delegate for runc.
            "--property=KillMode=process".into(),
            "--property=Delegate=yes".into(),
        ];
        args.extend(env.iter().map(|e| format!("--setenv={e}")));
        args.push(self.bin_dir.join("containerd").display().to_string());
        args.push("--config".into());
        args.push(self.cdir().join("config.toml").display().to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = output_with_timeout(&mut self.node().command("systemd-run", &argv), COMMAND_TIMEOUT)
            .expect("run systemd-run in the node");
        assert!(o.status.success(), "systemd-run containerd: {}{}", String::from_utf8_lossy(&o.stderr), self.log());
        self.client = Some(CriClient::connect(&self.address()).expect("CRI client"));
        self.extra = Some(CriExtra::connect(&self.address()).expect("CRI client"));
        self.node().poll("CRI to answer with both CNI configs loaded", CONTAINERD_TIMEOUT, || {
            let state = self.node().unit(CONTAINERD_UNIT).get("ActiveState").cloned().unwrap_or_default();
            assert!(state == "active" || state == "activating", "containerd's unit is {state}:\n{}", self.log());
            let s = self.client().status(true).map_err(|e| e.to_string())?;
            let cni = |k: &str| s.info.get(k).map(String::as_str) == Some("OK");
            let loaded = cni("lastCNILoadStatus") && cni(&format!("lastCNILoadStatus.{HANDLER_PODNET}"));
            loaded.then_some(()).ok_or_else(|| format!("{:?}\n{}", s.info, self.log_tail(20)))
        });
    }

    /// ctr (namespace `k8s.io`) inside the node; panics unless it succeeds; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let ctr = self.bin_dir.join("ctr").display().to_string();
        let addr = self.address().display().to_string();
        let mut argv = vec!["--address", &addr, "--namespace", K8S_NAMESPACE];
        argv.extend_from_slice(args);
        let o = output_with_timeout(&mut self.node().command(&ctr, &argv), COMMAND_TIMEOUT).expect("run ctr");
        assert!(
            o.status.success(),
            "ctr {args:?} failed ({}): {}{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail(40)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// [`pod_config`] with kubelet's systemd-driver cgroup parent for `qos` and a log directory
    /// of its own.
    pub fn pod_config(&self, name: &str, qos: Qos) -> cri::PodSandboxConfig {
        let mut c = pod_config(name, Path::new(""));
        let uid = c.metadata.as_ref().map(|m| m.uid.clone()).unwrap_or_default();
        c.log_directory = self.dir().join("logs").join(format!("default_{name}_{uid}")).display().to_string();
        c.linux.get_or_insert_with(Default::default).cgroup_parent = pod_slice_path(qos, &uid);
        c
    }

    /// RunPodSandbox with `handler`, panicking with containerd's log unless it succeeds.
    pub fn run_pod(&self, cfg: &cri::PodSandboxConfig, handler: &str) -> String {
        self.client()
            .run_pod_sandbox(cfg, handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", self.log_tail(60)))
    }

    /// CreateContainer and StartContainer, panicking with containerd's log unless both succeed.
    pub fn start_container(&self, pod: &str, pod_cfg: &cri::PodSandboxConfig, cfg: cri::ContainerConfig) -> String {
        let id = self
            .client()
            .create_container(pod, &cfg, pod_cfg)
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log_tail(60)));
        self.client().start_container(&id).unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.log_tail(60)));
        id
    }

    /// StopPodSandbox and RemovePodSandbox, panicking with containerd's log unless both succeed.
    pub fn stop_and_remove(&self, pod: &str) {
        let c = self.client();
        c.stop_pod_sandbox(pod).unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.log_tail(60)));
        c.remove_pod_sandbox(pod).unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.log_tail(60)));
    }

    /// The PIDs (host view) of the shims of pod `pod_id` (`-id <pod>` and our `-address`).
    pub fn shim_pids_for(&self, pod_id: &str) -> Vec<i32> {
        let addr = self.address().display().to_string();
        let mut v: Vec<i32> = processes_with_args(&["-address", &addr])
            .into_iter()
            .filter(|p| processes_with_args(&["-id", pod_id]).contains(p) && alive(*p))
            .collect();
        v.sort();
        v
    }

    /// Every shim of this containerd still running (host PIDs).
    pub fn shim_pids(&self) -> Vec<i32> {
        let addr = self.address().display().to_string();
        processes_with_args(&["-address", &addr]).into_iter().filter(|p| alive(*p)).collect()
    }

    /// What is left of the pods and containers this node's client created: units systemd
    /// still knows and cgroups named after them; empty when all are gone.
    pub fn leftovers(&self, ids: &[String]) -> Vec<String> {
        let mut v: Vec<String> = ids
            .iter()
            .map(|id| scope_unit(id))
            .filter(|u| self.node().unit_known(u))
            .map(|u| format!("unit {u}"))
            .collect();
        v.extend(self.node().cgroups_named(ids).into_iter().map(|p| format!("cgroup {}", p.display())));
        v
    }

    /// Waits (up to 10 s) until [`NodeCri::leftovers`] of `ids` is empty; what is left.
    pub fn wait_gone(&self, ids: &[String]) -> Vec<String> {
        let mut left = Vec::new();
        retry(200, Duration::from_millis(50), || {
            left = self.leftovers(ids);
            left.is_empty()
        });
        left
    }

    /// Stops and removes every pod through CRI (which must succeed), asserts that no unit or
    /// cgroup of any pod or container is left and no shim runs, stops containerd's unit, and
    /// tears the node down ([`SystemdNode::finish`]).
    pub fn finish(mut self) {
        let c = self.client();
        for p in c.list_pod_sandbox().expect("ListPodSandbox") {
            self.stop_and_remove(&p.id);
        }
        let mut ids = c.pods_seen();
        ids.extend(c.containers_seen());
        let left = self.wait_gone(&ids);
        assert_eq!(left, Vec::<String>::new(), "left after the pods were removed\n{}", self.log_tail(40));
        let scopes = self.node().units("cri-containerd-*");
        assert_eq!(scopes, Vec::<String>::new(), "cri-containerd scopes left");
        let shims_gone = retry(250, Duration::from_millis(20), || self.shim_pids().is_empty());
        assert!(shims_gone, "shims still running after the last pod went: {:?}", self.shim_pids());
        self.node().sh(&format!("systemctl stop {CONTAINERD_UNIT}"));
        assert!(!self.node().unit_known(CONTAINERD_UNIT), "containerd's unit is still known after its stop");
        drop(self.client.take());
        drop(self.extra.take());
        self.node.take().expect("node").finish();
    }
}

impl Drop for NodeCri {
    fn drop(&mut self) {
        // After a failed test: the pods, through CRI (best effort); the node's teardown kills
        // whatever is left.
        if let (Some(c), Some(_)) = (self.client.as_ref(), self.node.as_ref()) {
            c.set_timeout(Duration::from_secs(20));
            for p in c.list_pod_sandbox().unwrap_or_default() {
                let _ = c.stop_pod_sandbox(&p.id);
                let _ = c.remove_pod_sandbox(&p.id);
            }
            if std::thread::panicking() {
                let keep = self.dir().with_extension("containerd.log");
                if fs::write(&keep, self.log()).is_ok() {
                    eprintln!("systemd node: containerd's log is kept in {}", keep.display());
                }
            }
        }
    }
}

/// The two CRI calls [`CriClient`] has none for: ContainerStats and UpdateContainerResources,
/// over a connection of their own to the same socket, with a 60 s deadline each.
pub struct CriExtra {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
}

impl CriExtra {
    pub fn connect(path: &Path) -> io::Result<CriExtra> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let p = path.to_path_buf();
        let connector = tower::service_fn(move |_| {
            let p = p.clone();
            async move { Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(p).await?)) }
        });
        let channel = {
            let _g = rt.enter();
            Endpoint::try_from("http://[::]:50051").map_err(io::Error::other)?.connect_with_connector_lazy(connector)
        };
        Ok(CriExtra { rt, runtime: RuntimeServiceClient::new(channel) })
    }

    fn request<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(Duration::from_secs(60));
        r
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, tonic::Status> {
        let mut c = self.runtime.clone();
        let r = Self::request(cri::ContainerStatsRequest { container_id: id.to_string() });
        let stats = self.rt.block_on(c.container_stats(r))?.into_inner().stats;
        stats.ok_or_else(|| tonic::Status::not_found(format!("ContainerStats {id}: no stats")))
    }

    pub fn update_container_resources(
        &self,
        id: &str,
        linux: cri::LinuxContainerResources,
    ) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        let r = Self::request(cri::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        });
        self.rt.block_on(c.update_container_resources(r)).map(drop)
    }
}
