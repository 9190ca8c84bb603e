//! The podnet shim behind a real containerd: [`PodnetNode`] is a test's node (a network
//! namespace with no route out) running containerd with `containerd-shim-podnet-v2` on its
//! PATH, a podnet config (`PODNET_CONFIG`) whose conf_dir holds one bridge conflist with a
//! bridge name and subnet of its own, and the busybox image imported. Helpers run containers
//! with `ctr run --runtime io.containerd.podnet.v2`, exec in them, find the pod's IP and the
//! shim processes, and [`PodnetNode::assert_clean`] checks that nothing of the pods is left.
//!
//! ```no_run
//! # use podnet_tests::shim::PodnetNode;
//! let n = PodnetNode::new("demo");
//! n.run_detached("a", &[("podnet.io/ports", "8080:80/tcp")], &["sleep", "600"]);
//! let ip = n.pod_ip("a");
//! n.remove("a");
//! n.assert_clean();
//! n.finish();
//! ```
//!
//! The fixture holds the leak checker's lock ([`crate::leaks::serial`]) for its lifetime and a
//! leak snapshot taken before containerd started, with containerd's namespace as the marker
//! (`ctr run` puts containers in cgroups `/<namespace>/<id>`). [`PodnetNode::finish`] stops
//! everything and asserts that nothing leaked. Dropping it without `finish` (a failed test)
//! still deletes everything: containerd's harness removes tasks and containers (through the
//! shim, or the shim's `delete` when it is dead) and kills leftover shims; then the pods'
//! `podnet-<id>` network namespaces still there are deleted, and the node namespace goes
//! with its bridge, veths and nft tables.
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::containerd::{
    alive, busybox_archive, busybox_image, mounts_under, output_with_timeout, Containerd, ContainerdOptions,
};
use crate::leaks::{self, Snapshot};
use crate::{podnet_veths, reservations, retry, tagged_rules, unique, Ns, TempDir};

/// The runtime name of the podnet shim.
pub const RUNTIME: &str = "io.containerd.podnet.v2";
/// Where the shim puts standalone pods' network namespaces (its default `netns_dir`).
pub const NETNS_DIR: &str = "/var/run/netns";
/// Where pod shims listen (`shim/src/start.rs`).
pub const SHIM_SOCKET_DIR: &str = "/run/podnet/s";
/// How long [`PodnetNode::assert_clean`] waits for the shim to exit after the last delete.
const SHIM_EXIT_TIMEOUT: Duration = Duration::from_secs(5);

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// One task row of `ctr task ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub pid: i32,
    pub status: String,
}

/// See the module documentation.
pub struct PodnetNode {
    c: Option<Containerd>,
    node: Option<Ns>,
    dir: Option<TempDir>,
    /// The network's name (conflist `name`), the IPAM sub-directory.
    pub net: String,
    /// The bridge in the node namespace.
    pub bridge: String,
    /// The first three octets of the network's /24 (`10.88.<n>`).
    pub subnet: String,
    /// containerd's namespace, the leak marker.
    pub marker: String,
    pub image: &'static str,
    /// Container ids used (run or attempted), for the netns checks and cleanup.
    ids: Mutex<BTreeSet<String>>,
    /// Pod groups used (pod annotation, or the lone container's id) and their shim sockets.
    pods: Mutex<BTreeSet<(String, PathBuf)>>,
    before: Option<Snapshot>,
    _serial: MutexGuard<'static, ()>,
}

impl PodnetNode {
    /// A node with containerd and the podnet shim; see the module documentation. `prefix`
    /// names the scratch directory.
    pub fn new(prefix: &str) -> PodnetNode {
        crate::require_root();
        let serial = leaks::serial();
        // Built before the snapshot: the shared rootfs and the cached archive stay on purpose.
        busybox_archive();
        let marker = unique("pns");
        let before = Snapshot::take(&marker);
        // Short on purpose: the runtime's sockets live under the state dir.
        let dir = TempDir(PathBuf::from("/tmp").join(unique(&format!("pn{}", &prefix[..prefix.len().min(4)]))));
        fs::create_dir_all(&dir.0).expect("create scratch dir");
        let n = SUBNET.fetch_add(1, Ordering::SeqCst);
        let subnet = format!("10.88.{}", (std::process::id() % 20) * 10 + n % 10 + 10);
        let net = unique("pnet");
        let bridge = unique("pb");
        assert!(bridge.len() <= 15, "bridge name {bridge} too long");
        let mut me = PodnetNode {
            c: None,
            node: None,
            dir: Some(dir),
            net,
            bridge,
            subnet,
            marker,
            image: "",
            ids: Mutex::new(BTreeSet::new()),
            pods: Mutex::new(BTreeSet::new()),
            before: Some(before),
            _serial: serial,
        };
        let conf_dir = me.conf_dir();
        fs::create_dir_all(&conf_dir).expect("create conf dir");
        fs::write(conf_dir.join("10-podnet.conflist"), me.conflist().to_string()).expect("write conflist");
        fs::write(me.config_path(), me.config_toml(&conf_dir)).expect("write podnet config");
        me.node = Some(Ns::new("pn"));
        let opts = ContainerdOptions::podnet().namespace(&me.marker).env("PODNET_CONFIG", me.config_path());
        me.c = Some(Containerd::start(me.node(), opts));
        me.image = busybox_image(me.c());
        me
    }

    /// The conflist written as the node's default network.
    pub fn conflist(&self) -> serde_json::Value {
        json!({
            "cniVersion": "1.1.0",
            "name": self.net,
            "plugins": [{
                "type": "podnet",
                "bridge": self.bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "stateDir": self.dir().join("cni-state"),
                "capabilities": {"portMappings": true},
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.ipam_dir(),
                    "ranges": [[{"subnet": format!("{}.0/24", self.subnet)}]]
                }
            }]
        })
    }

    /// A podnet config (TOML) with `conf_dir` and the node's state dir.
    pub fn config_toml(&self, conf_dir: &Path) -> String {
        format!(
            "conf_dir = {:?}\nstate_dir = {:?}\n",
            conf_dir.display().to_string(),
            self.shim_state_dir().display().to_string()
        )
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

    /// The scratch directory (config, conf dir, state, IPAM data).
    pub fn dir(&self) -> &Path {
        &self.dir.as_ref().expect("scratch dir").0
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir().join("net.d")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir().join("podnet.toml")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir().join("ipam")
    }

    /// The shim's `state_dir`.
    pub fn shim_state_dir(&self) -> PathBuf {
        self.dir().join("st")
    }

    /// The gateway (bridge) address of the network.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// The `podnet-<id>` network namespace the shim makes for a standalone pod.
    pub fn netns_path(id: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(format!("podnet-{id}"))
    }

    /// Remembers a container id (and its pod group) for the checks and the cleanup.
    pub fn track(&self, id: &str, annotations: &[(&str, &str)]) {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string());
        let pod = annotations
            .iter()
            .find(|(k, _)| *k == "podnet.io/pod" || *k == "io.kubernetes.cri.sandbox-id")
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| id.to_string());
        let socket = self.shim_socket(&pod);
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert((pod, socket));
    }

    /// `ctr run` arguments: `run [-d] --runtime podnet <flags> --annotation k=v... image id args`.
    pub fn run_args(
        &self,
        detach: bool,
        id: &str,
        flags: &[&str],
        annotations: &[(&str, &str)],
        args: &[&str],
    ) -> Vec<String> {
        self.track(id, annotations);
        let mut v: Vec<String> = vec!["run".into()];
        if detach {
            v.push("-d".into());
        }
        v.extend(["--runtime".to_string(), RUNTIME.to_string()]);
        v.extend(flags.iter().map(|s| s.to_string()));
        for (k, val) in annotations {
            v.push("--annotation".into());
            v.push(format!("{k}={val}"));
        }
        v.push(self.image.to_string());
        v.push(id.to_string());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `ctr run -d --runtime io.containerd.podnet.v2 --annotation k=v... busybox id args...`;
    /// panics unless it succeeds.
    pub fn run_detached(&self, id: &str, annotations: &[(&str, &str)], args: &[&str]) {
        self.run_detached_with(id, &[], annotations, args);
    }

    /// Like [`PodnetNode::run_detached`] with extra `ctr run` flags (e.g. `--memory-limit N`).
    pub fn run_detached_with(&self, id: &str, flags: &[&str], annotations: &[(&str, &str)], args: &[&str]) {
        let a = self.run_args(true, id, flags, annotations, args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        self.c().ctr_ok(&a);
    }

    /// `ctr`'s output for `args`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.c().ctr(args)
    }

    /// `ctr` `args`, panicking unless it succeeds; stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.c().ctr_ok(args)
    }

    /// `ctr task exec --exec-id <unique> id args...` (no terminal); ctr's output, whose status
    /// is the process's exit code.
    pub fn exec(&self, id: &str, args: &[&str]) -> Output {
        let eid = unique("e");
        let mut a = vec!["task", "exec", "--exec-id", eid.as_str(), id];
        a.extend_from_slice(args);
        self.c().ctr(&a)
    }

    /// Like [`PodnetNode::exec`], panicking unless the process exits 0 (with the outputs and
    /// containerd's log); stdout.
    pub fn exec_ok(&self, id: &str, args: &[&str]) -> String {
        let o = self.exec(id, args);
        assert!(
            o.status.success(),
            "exec {args:?} in {id} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log (end):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.c().log_tail(40)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ctr task exec -t` under `script` (ctr needs a real terminal for `-t`): what the
    /// terminal showed (without `\r` and the `^@` that `script` adds) and the exit code of
    /// the process.
    pub fn exec_tty(&self, id: &str, args: &[&str]) -> (i32, String) {
        let c = self.c();
        let eid = unique("e");
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let mut line: Vec<String> = vec![
            quote(&c.bin_dir().join("ctr").to_string_lossy()),
            "--address".into(),
            quote(&c.address().to_string_lossy()),
            "--namespace".into(),
            quote(c.namespace()),
            "task".into(),
            "exec".into(),
            "--fifo-dir".into(),
            quote(&c.dir().join("fifo").to_string_lossy()),
            "-t".into(),
            "--exec-id".into(),
            quote(&eid),
            quote(id),
        ];
        line.extend(args.iter().map(|a| quote(a)));
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line.join(" "), "/dev/null"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TERM", "dumb");
        self.node().command(&mut cmd);
        let o = output_with_timeout(&mut cmd, Duration::from_secs(30)).expect("run script");
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        (o.status.code().unwrap_or(-1), text.replace('\r', "").replace("^@", ""))
    }

    /// The pod's IPv4 address on eth0, as the container sees it (`ip -4 -o addr show eth0`).
    pub fn pod_ip(&self, id: &str) -> String {
        let out = self.exec_ok(id, &["ip", "-4", "-o", "addr", "show", "eth0"]);
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .map(String::from)
            .unwrap_or_else(|| panic!("no IPv4 address on eth0 of {id}: {out}"))
    }

    /// `ctr task ls` as rows.
    pub fn tasks(&self) -> Vec<TaskRow> {
        self.ctr_ok(&["task", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some(TaskRow {
                    id: f.first()?.to_string(),
                    pid: f.get(1)?.parse().ok()?,
                    status: f.get(2)?.to_string(),
                })
            })
            .collect()
    }

    /// The row of task `id`, if listed.
    pub fn task(&self, id: &str) -> Option<TaskRow> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// Waits (up to `timeout`) until task `id` reports `status`; panics with the rows otherwise.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> TaskRow {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.task(id);
            if let Some(r) = row.as_ref().filter(|r| r.status == status) {
                return r.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "task {id} is not {status} after {timeout:?}: {row:?}\ncontainerd log (end):\n{}",
                    self.c().log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the task (SIGKILL), waits until it is stopped, deletes it and the container.
    pub fn remove(&self, id: &str) {
        if self.task(id).is_some_and(|t| t.status != "STOPPED") {
            self.ctr_ok(&["task", "kill", "-s", "KILL", id]);
            self.wait_status(id, "STOPPED", Duration::from_secs(10));
        }
        if self.task(id).is_some() {
            self.ctr_ok(&["task", "rm", id]);
        }
        self.ctr_ok(&["container", "rm", id]);
    }

    /// PIDs of the podnet shim daemons serving this containerd (argv[0] is the shim binary,
    /// with this containerd's `-address`, and no `start`/`delete` action); zombies excluded.
    pub fn shim_pids(&self) -> Vec<i32> {
        let addr = self.c().address().to_string_lossy().into_owned();
        let mut v: Vec<i32> = crate::containerd::processes_with_args(&["-address", &addr])
            .into_iter()
            .filter(|pid| {
                let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<String> =
                    raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                args.first().is_some_and(|a| a.ends_with("containerd-shim-podnet-v2"))
                    && !args.iter().any(|a| a == "start" || a == "delete")
                    && alive(*pid)
            })
            .collect();
        v.sort();
        v
    }

    /// The IP reservation files of the network.
    pub fn reservations(&self) -> Vec<String> {
        reservations(&self.ipam_dir(), &self.net)
    }

    /// The pod shim's socket for pod group `pod` (same derivation as the shim's `start`).
    pub fn shim_socket(&self, pod: &str) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.c().address().to_string_lossy().as_bytes());
        h.update(b"\0");
        h.update(self.marker.as_bytes());
        h.update(b"\0");
        h.update(pod.as_bytes());
        Path::new(SHIM_SOCKET_DIR).join(format!("{:x}", h.finalize()))
    }

    /// Live processes in a cgroup of this containerd's namespace (`/<namespace>/...`).
    pub fn container_processes(&self) -> Vec<String> {
        let needle = format!("/{}/", self.marker);
        let Ok(rd) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|pid| {
                alive(*pid) && fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&needle))
            })
            .map(|pid| {
                let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid}: {}", String::from_utf8_lossy(&raw).replace('\0', " ").trim())
            })
            .collect()
    }

    /// containerd's log lines from the podnet shim (`runtime=io.containerd.podnet.v2`).
    pub fn shim_log(&self) -> Vec<String> {
        self.c().log().lines().filter(|l| l.contains("runtime=io.containerd.podnet.v2")).map(String::from).collect()
    }

    /// Asserts that, with every task and container deleted, nothing of the pods is left: no
    /// task or container listed, no podnet shim for this containerd (it exits after Shutdown:
    /// waited for up to 5 s) nor its socket, no `podnet-<id>` network namespace for the ids
    /// used, no IP reservation, no podnet veth, no nft rule tagged for the network, no process
    /// in the namespace's cgroups, no container left in the shim's runtime state, no bundle, no
    /// mount under containerd's directory.
    pub fn assert_clean(&self) {
        let c = self.c();
        assert_eq!(self.ctr_ok(&["task", "ls", "-q"]).trim(), "", "tasks left");
        assert_eq!(self.ctr_ok(&["container", "ls", "-q"]).trim(), "", "containers left");
        let gone = retry((SHIM_EXIT_TIMEOUT.as_millis() / 20) as u32, Duration::from_millis(20), || {
            self.shim_pids().is_empty()
        });
        assert!(
            gone,
            "podnet shim(s) {:?} still running {SHIM_EXIT_TIMEOUT:?} after the last delete\n{}",
            self.shim_pids(),
            c.log_tail(40)
        );
        for id in self.ids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let p = Self::netns_path(id);
            assert!(!p.exists(), "network namespace {} left", p.display());
        }
        assert_eq!(self.reservations(), Vec::<String>::new(), "IP reservations left");
        assert_eq!(podnet_veths(self.node()), Vec::<String>::new(), "podnet veths left in the node namespace");
        assert_eq!(
            tagged_rules(self.node(), &format!("podnet/{}/", self.net)),
            Vec::<String>::new(),
            "tagged nft rules left"
        );
        let procs = retry(100, Duration::from_millis(20), || self.container_processes().is_empty());
        assert!(procs, "container processes left: {:?}", self.container_processes());
        let rt = self.shim_state_dir().join("runtime").join(&self.marker);
        let left: Vec<String> = crate::files_in(&rt).into_iter().filter(|f| !f.starts_with('.')).collect();
        assert_eq!(left, Vec::<String>::new(), "containers left in the shim's runtime state {}", rt.display());
        let bundles = c.state_dir().join("io.containerd.runtime.v2.task").join(&self.marker);
        assert_eq!(crate::files_in(&bundles), Vec::<String>::new(), "bundles left in {}", bundles.display());
        assert_eq!(mounts_under(c.dir()), Vec::<PathBuf>::new(), "mounts left under containerd's directory");
        for (pod, s) in self.pods.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            assert!(fs::symlink_metadata(s).is_err(), "shim socket {} of pod {pod} left", s.display());
        }
    }

    /// The task's bundle directory in containerd's state (containerd removes it once the
    /// task is deleted, after the shim's `delete` for a dead shim).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.c().state_dir().join("io.containerd.runtime.v2.task").join(&self.marker).join(id)
    }

    /// Stops containerd (its cleanup must find nothing to force), removes the node and the
    /// scratch directory, and asserts that nothing leaked since the fixture was made.
    pub fn finish(mut self) {
        let c = self.c.take().expect("containerd");
        let problems = c.shutdown();
        assert_eq!(problems, Vec::<String>::new(), "containerd's cleanup was not clean");
        self.release();
        let before = self.before.take().expect("snapshot");
        leaks::assert_no_leaks(&before, &self.marker);
    }

    /// Everything but containerd (already gone): the pods' namespaces, the node, the dir.
    fn release(&mut self) {
        for id in self.ids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let p = Self::netns_path(id);
            if p.exists() {
                eprintln!("podnet node cleanup: deleting leftover {}", p.display());
                let _ = podnet_netns::delete(&p);
            }
        }
        // A killed shim leaves its socket; no shim of ours runs any more (containerd's cleanup
        // killed the leftovers).
        for (_, s) in self.pods.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if fs::symlink_metadata(s).is_ok() {
                eprintln!("podnet node cleanup: removing leftover shim socket {}", s.display());
                let _ = fs::remove_file(s);
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

impl Drop for PodnetNode {
    fn drop(&mut self) {
        drop(self.c.take());
        self.release();
    }
}

/// `ctr events` running in the background, its lines collected by a thread.
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Events {
    /// Starts `ctr events` and waits until it is subscribed (a namespace label update it
    /// provokes shows up).
    pub fn start(n: &PodnetNode) -> Events {
        let mut child = n.c().spawn_ctr(&["events"]);
        let out = child.stdout.take().expect("ctr events stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
            }
        });
        let ev = Events { child, lines, reader: Some(reader) };
        let mut i = 0;
        let ready = retry(100, Duration::from_millis(50), || {
            i += 1;
            n.ctr_ok(&["namespaces", "label", &n.marker, &format!("podnet.test/probe={i}")]);
            ev.lines().iter().any(|l| l.contains("/namespaces/update"))
        });
        assert!(ready, "ctr events never showed a /namespaces/update: {:?}", ev.lines());
        ev
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The `/tasks/...` events (topic, JSON body) concerning container `id`, in order.
    pub fn task_events(&self, id: &str) -> Vec<(String, serde_json::Value)> {
        self.lines()
            .iter()
            .filter_map(|l| {
                let at = l.find(" /tasks/")?;
                let rest = &l[at + 1..];
                let (topic, body) = rest.split_once(' ').unwrap_or((rest, "{}"));
                let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
                (v["container_id"].as_str() == Some(id)).then(|| (topic.to_string(), v))
            })
            .collect()
    }

    /// Waits (up to `timeout`) until an event of `topic` for `id` arrived.
    pub fn wait_for(&self, id: &str, topic: &str, timeout: Duration) -> bool {
        retry((timeout.as_millis() / 20).max(1) as u32, Duration::from_millis(20), || {
            self.task_events(id).iter().any(|(t, _)| t == topic)
        })
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        drop(self.child.stderr.take());
    }
}

/// `busybox wget` of `http://host:port/path` from `ns`: the body, or None on failure. Bounded
/// by `timeout 5` (not wget's `-T`: Debian's busybox 1.35 wget crashes with it).
pub fn http_get(ns: &Ns, host: &str, port: u16, path: &str) -> Option<String> {
    let o = ns.run(&format!("timeout 5 busybox wget -q -O - http://{host}:{port}{path} 2>/dev/null"));
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A stdin-less helper process reaped on drop (for `ctr run` attached in the background).
pub struct Attached(pub Child);

impl Attached {
    /// Waits up to `timeout` for the process to exit; its exit code (or -signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                return Some(s.code().unwrap_or_else(|| -s.signal().unwrap_or(0)));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `ctr` `args` attached (stdin /dev/null, output discarded).
pub fn spawn_attached(c: &Containerd, args: &[&str]) -> Attached {
    let mut cmd = c.ctr_command(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    Attached(cmd.spawn().expect("spawn ctr"))
}
