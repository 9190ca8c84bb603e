//! Helpers shared by the root integration tests: a "node" network namespace per test (with no
//! route out), pod namespaces inside it, the plugin binary exec'd as a runtime would, and
//! commands run inside a namespace. Everything a test creates is removed by `Drop`, even
//! when the test fails, and deleting the node namespace takes its bridges, veths and nft
//! tables with it: nothing touches the host's own interfaces, routes or firewall.

pub mod cluster;
pub mod confinement;
pub mod containerd;
pub mod cri;
pub mod cri_stream;
pub mod leaks;
pub mod mounts;
pub mod node;
pub mod oci;
pub mod rt;
pub mod shim;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use podnet_netns::NetNs;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test loudly when not root: root tests are `#[ignore]`d and run on purpose.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "this integration test needs root (run hack/test as root)");
}

/// A unique short name for this process and call ("t<pid>x<n>").
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// The last `n` lines of `text` (a log's tail for a failure message).
pub fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace created for a test, deleted on drop; or one opened by [`Ns::open`],
/// which is left alone.
pub struct Ns {
    pub ns: NetNs,
    pub path: PathBuf,
    /// Whether dropping it deletes the namespace (made by [`Ns::new`]).
    owned: bool,
}

impl Ns {
    /// A new namespace under /var/run/netns with a unique name, `lo` up.
    pub fn new(prefix: &str) -> Ns {
        let name = unique(prefix);
        let ns = NetNs::create(&name, None).expect("create test namespace");
        let path = ns.path().to_path_buf();
        let me = Ns { ns, path, owned: true };
        me.sh("ip link set lo up");
        me
    }

    /// An existing namespace (e.g. a cluster node's, `/var/run/netns/<name>`), opened without
    /// owning it: dropping the `Ns` closes its descriptor and does not delete the namespace.
    pub fn open(path: &Path) -> Ns {
        let ns = NetNs::open(path).unwrap_or_else(|e| panic!("opening network namespace {}: {e}", path.display()));
        Ns { ns, path: path.to_path_buf(), owned: false }
    }

    /// Runs a command line (through sh) inside the namespace; returns its output.
    pub fn run(&self, cmdline: &str) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(cmdline);
        self.command(&mut cmd).output().expect("spawn command in namespace")
    }

    /// Like `run`, but panics unless the command succeeds; returns stdout.
    pub fn sh(&self, cmdline: &str) -> String {
        let o = self.run(cmdline);
        assert!(
            o.status.success(),
            "`{cmdline}` failed in {}: {}{}",
            self.path.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Makes `cmd` start inside this namespace.
    pub fn command<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        let fd = self.ns.as_fd().try_clone_to_owned().expect("dup namespace fd");
        // SAFETY: pre_exec runs in the forked child before exec; setns is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs a closure inside the namespace (on a dedicated thread).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).expect("enter namespace")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.owned {
            let _ = podnet_netns::delete(&self.path);
        }
    }
}

/// The plugin binary: containerd-shim-podnet-v2 next to the test binaries' target dir.
pub fn plugin_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PODNET_PLUGIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/containerd-shim-podnet-v2
    let p = exe.parent().and_then(|d| d.parent()).map(|d| d.join("containerd-shim-podnet-v2")).expect("target dir");
    assert!(p.exists(), "{} is missing: build it first (cargo build -p podnet-shim)", p.display());
    p
}

/// What one plugin invocation printed and returned.
#[derive(Debug)]
pub struct PluginOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("plugin printed no JSON ({e}): {self:?}"))
    }
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "plugin failed: {self:?}");
        self
    }
}

/// One exec of a CNI plugin binary the way a runtime does it: config on stdin, CNI_* env,
/// in the node namespace.
pub struct Invocation<'a> {
    pub binary: PathBuf,
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<&'a Path>,
    pub args: &'a str,
    pub cni_path: Option<String>,
}

impl<'a> Invocation<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: Option<&'a Path>) -> Self {
        Invocation { binary: plugin_binary(), command, container_id, ifname: "eth0", netns, args: "", cni_path: None }
    }

    pub fn run(&self, node: &Ns, conf: &serde_json::Value) -> PluginOutput {
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear()
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_NETNS", self.netns.map(|p| p.display().to_string()).unwrap_or_default())
            .env("CNI_ARGS", self.args)
            .env("CNI_PATH", self.cni_path.clone().unwrap_or_else(|| "/usr/lib/cni".into()))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        node.command(&mut cmd);
        let mut child = cmd.spawn().expect("spawn plugin");
        let input = serde_json::to_vec(conf).expect("encode conf");
        child.stdin.take().expect("stdin").write_all(&input).expect("write stdin");
        let o = child.wait_with_output().expect("wait plugin");
        PluginOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Files in a directory (names), sorted; empty when the directory is missing.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The IP reservation files of a host-local network dir (what the reference writes).
pub fn reservations(data_dir: &Path, network: &str) -> Vec<String> {
    files_in(&data_dir.join(network)).into_iter().filter(|f| f.parse::<std::net::IpAddr>().is_ok()).collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers of the CNI suites (cni_bridge_suite, cni_ipam_suite, cni_verbs, cni_bad_input).

/// Link names in a namespace (`ip -o link`), without the `@peer` suffix, in index order.
pub fn link_names(ns: &Ns) -> Vec<String> {
    ns.sh("ip -o link show")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Host veths named like podnet's (`pn` + 12 hex digits) in a namespace, sorted.
pub fn podnet_veths(ns: &Ns) -> Vec<String> {
    let mut v: Vec<String> = link_names(ns)
        .into_iter()
        .filter(|n| n.len() == 14 && n.starts_with("pn") && n[2..].bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    v
}

/// Lines of `nft list ruleset` in `ns` whose comment starts with `tag_prefix` (a whole tag or a
/// network's `podnet/<net>/` prefix).
pub fn tagged_rules(ns: &Ns, tag_prefix: &str) -> Vec<String> {
    let needle = format!("comment \"{tag_prefix}");
    ns.sh("nft list ruleset").lines().filter(|l| l.contains(&needle)).map(|l| l.trim().to_string()).collect()
}

/// Asserts that a plugin run failed the CNI way: non-zero exit, and stdout holding exactly an
/// error object `{cniVersion, code, msg[, details]}` with `code` and a msg containing every
/// one of `needles`. Returns the message.
pub fn assert_cni_error(out: &PluginOutput, code: u64, needles: &[&str]) -> String {
    assert_ne!(out.code, 0, "plugin should have failed: {out:?}");
    let v = out.json();
    let obj = v.as_object().unwrap_or_else(|| panic!("error is not an object: {out:?}"));
    for k in obj.keys() {
        assert!(["cniVersion", "code", "msg", "details"].contains(&k.as_str()), "unexpected key {k} in {out:?}");
    }
    assert!(obj.get("cniVersion").and_then(|v| v.as_str()).is_some_and(|s| !s.is_empty()), "no cniVersion: {out:?}");
    assert_eq!(obj.get("code").and_then(|c| c.as_u64()), Some(code), "wrong code: {out:?}");
    let msg = obj.get("msg").and_then(|m| m.as_str()).unwrap_or_else(|| panic!("no msg: {out:?}")).to_string();
    for n in needles {
        assert!(msg.contains(n), "msg {msg:?} does not name {n:?}");
    }
    msg
}

/// Execs the plugin binary with exactly `env` (plus PATH), `stdin` on its stdin, inside `node`
/// when given: for the cases `Invocation` cannot express (a variable absent altogether).
pub fn run_plugin_env(node: Option<&Ns>, env: &[(&str, &str)], stdin: &[u8]) -> PluginOutput {
    let mut cmd = Command::new(plugin_binary());
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(n) = node {
        n.command(&mut cmd);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    // A binary that does not read its stdin (not in plugin mode) closes the pipe: not an error here.
    let _ = child.stdin.take().expect("stdin").write_all(stdin);
    let o = child.wait_with_output().expect("wait plugin");
    PluginOutput {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Asserts that network `net` left nothing in `node` or on disk: no podnet veth, no rule
/// tagged for the network, no IP reservation under `ipam_dir`, no attachment record under
/// `state_dir`.
pub fn assert_nothing_left(node: &Ns, net: &str, ipam_dir: &Path, state_dir: &Path) {
    assert_eq!(podnet_veths(node), Vec::<String>::new(), "host veths left behind");
    assert_eq!(tagged_rules(node, &format!("podnet/{net}/")), Vec::<String>::new(), "tagged rules left behind");
    assert_eq!(reservations(ipam_dir, net), Vec::<String>::new(), "IP reservations left behind");
    let records: Vec<String> = files_in(&state_dir.join(net)).into_iter().filter(|f| f.ends_with(".json")).collect();
    assert_eq!(records, Vec::<String>::new(), "attachment records left behind");
}

// ---------------------------------------------------------------------------------------------
// Helpers of the connectivity and compatibility suites (cni_connectivity, cni_compat).

/// A process started in the background inside a namespace; killed and reaped on drop.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Calls `f` up to `tries` times, `pause` apart, until it returns true; whether it did.
pub fn retry(tries: u32, pause: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    for i in 0..tries {
        if f() {
            return true;
        }
        if i + 1 < tries {
            std::thread::sleep(pause);
        }
    }
    false
}

impl Ns {
    /// The namespace's name (its file name under /var/run/netns).
    pub fn name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Starts `cmdline` (through `sh -c "exec ..."`) in the background inside the namespace,
    /// stdin, stdout and stderr on /dev/null unless the command line redirects them.
    pub fn spawn(&self, cmdline: &str) -> Background {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!("exec {cmdline}")).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        Background(self.command(&mut cmd).spawn().expect("spawn background command in namespace"))
    }

    /// Waits until a `proto` ("tcp" or "udp") socket is bound to local `port` in this
    /// namespace: up to 300 looks with `ss`, 10 ms apart; panics when none appears.
    pub fn wait_listening(&self, proto: &str, port: u16) {
        let flag = if proto == "udp" { "u" } else { "t" };
        let probe = format!("ss -Hln{flag} 'sport = :{port}'");
        let up = retry(300, std::time::Duration::from_millis(10), || !self.sh(&probe).trim().is_empty());
        assert!(up, "nothing listens on {proto} port {port} in {}", self.path.display());
    }

    /// A veth pair between this namespace and `peer`: `here` (address `here_addr`, a CIDR)
    /// in this one, `there` (`there_addr`) in `peer`, both up.
    pub fn veth_to(&self, here: &str, here_addr: &str, peer: &Ns, there: &str, there_addr: &str) {
        self.sh(&format!("ip link add {here} type veth peer name {there} netns {}", peer.name()));
        self.sh(&format!("ip addr add {here_addr} dev {here} && ip link set {here} up"));
        peer.sh(&format!("ip addr add {there_addr} dev {there} && ip link set {there} up"));
    }
}

impl Ns {
    /// Sets br_netfilter's `bridge-nf-call-iptables`/`-ip6tables` in this namespace (they are
    /// per namespace) when the module is loaded; a no-op without it. Off, bridged frames skip
    /// conntrack, as on a node without the module.
    pub fn set_bridge_nf_call(&self, on: bool) {
        let v = u8::from(on);
        self.sh(&format!(
            "[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || \
             sysctl -qw net.bridge.bridge-nf-call-iptables={v} net.bridge.bridge-nf-call-ip6tables={v}"
        ));
    }
}

/// The attachment records (`<id>:<ifname>.json`) in a network's state dir.
pub fn records_in(dir: &Path) -> Vec<String> {
    files_in(dir).into_iter().filter(|f| f.ends_with(".json")).collect()
}

/// The common setup of the CNI suites: a node and a pod namespace, and a scratch dir holding
/// the IPAM data dir (`ipam/`) and the attachment records (`state/`).
pub struct Site {
    pub node: Ns,
    pub pod: Ns,
    pub data: TempDir,
}

impl Site {
    pub fn new(scratch_prefix: &str) -> Site {
        require_root();
        Site { node: Ns::new("pn"), pod: Ns::new("pp"), data: TempDir::new(scratch_prefix) }
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.data.path().join("ipam")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.data.path().join("state")
    }
}

/// Pings `dst` from `ns`: up to 5 one-second attempts.
pub fn pings(ns: &Ns, dst: &str) -> bool {
    let cmd = if dst.contains(':') { "busybox ping6" } else { "busybox ping" };
    retry(5, std::time::Duration::from_millis(100), || ns.run(&format!("{cmd} -c 1 -W 1 {dst}")).status.success())
}

/// Connects to `host`:`port` over TCP from `ns` and returns what the server sent (trimmed), or
/// None when the connection failed. Bounded by `timeout 5` and a 2 s connect timeout.
pub fn fetch(ns: &Ns, host: &str, port: u16) -> Option<String> {
    let o = ns.run(&format!("timeout 5 busybox nc -w 2 {host} {port} </dev/null"));
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !out.is_empty()).then_some(out)
}

/// `base` with `extra`'s top-level keys set over it; an `ipam` object in `extra` is merged
/// key by key into the base's ipam instead of replacing it.
pub fn merge_conf(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(extra) = extra else { panic!("extra conf keys must be an object") };
    for (k, v) in extra {
        match v {
            serde_json::Value::Object(ipam) if k == "ipam" => {
                for (ik, iv) in ipam {
                    base["ipam"][ik] = iv;
                }
            }
            v => base[k] = v,
        }
    }
    base
}
