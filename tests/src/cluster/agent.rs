//! The node agent (`podnet node run`) and the `podnet` CLI, run inside a node's namespace, and
//! the agent's config file.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use super::daemon::Daemon;
use super::etcd::Etcd;
use super::fabric::Node;
use crate::Ns;

/// How long the agent gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long one [`podnet`] CLI run may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of each agent's log a panicking test prints.
const LOG_TAIL_ON_PANIC: usize = 30;

/// The `podnet` binary: env `PODNET_BIN`, else `podnet` next to the test binaries' target dir
/// (`target/<profile>/podnet`, built by `cargo build --workspace`). Panics when it is missing.
pub fn podnet_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PODNET_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/podnet
    let p = exe.parent().and_then(|d| d.parent()).map(|d| d.join("podnet")).expect("target dir");
    assert!(p.exists(), "{} is missing: build it first (cargo build --workspace; the node/ crate)", p.display());
    p
}

/// The agent's config (`podnet node run --config`), as [`write_node_config`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub node_ip: Ipv4Addr,
    pub etcd_endpoints: Vec<String>,
    /// The etcd key prefix of the cluster (one per test, so tests can share an etcd).
    pub prefix: String,
    /// The node's pod subnet; None: the agent leases one from the cluster's range.
    pub subnet: Option<String>,
    pub ttl_seconds: u64,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl NodeConfig {
    /// The config of `node` against `etcd`: its name and IP, etcd's endpoint, `prefix`, a TTL
    /// of 4 s, no subnet, and `<scratch>/<name>/run` and `<scratch>/<name>/state` (not created).
    pub fn for_node(node: &Node, etcd: &Etcd, prefix: &str, scratch: &Path) -> NodeConfig {
        NodeConfig {
            name: node.name().to_string(),
            node_ip: node.ip(),
            etcd_endpoints: vec![etcd.endpoint()],
            prefix: prefix.to_string(),
            subnet: None,
            ttl_seconds: 4,
            run_dir: scratch.join(node.name()).join("run"),
            state_dir: scratch.join(node.name()).join("state"),
        }
    }

    /// The TOML text, keys in the order above, `subnet` only when set.
    pub fn to_toml(&self) -> String {
        let endpoints: Vec<String> = self.etcd_endpoints.iter().map(|e| toml_basic(e)).collect();
        let mut t = format!(
            "name = {}\nnode_ip = {}\netcd_endpoints = [{}]\nprefix = {}\n",
            toml_basic(&self.name),
            toml_basic(&self.node_ip.to_string()),
            endpoints.join(", "),
            toml_basic(&self.prefix)
        );
        if let Some(s) = &self.subnet {
            t.push_str(&format!("subnet = {}\n", toml_basic(s)));
        }
        t.push_str(&format!(
            "ttl_seconds = {}\nrun_dir = {}\nstate_dir = {}\n",
            self.ttl_seconds,
            toml_basic(&self.run_dir.to_string_lossy()),
            toml_basic(&self.state_dir.to_string_lossy())
        ));
        t
    }
}

/// Writes `cfg` as `<dir>/<name>.toml` (creating `dir`); returns the path.
pub fn write_node_config(dir: &Path, cfg: &NodeConfig) -> PathBuf {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(format!("{}.toml", cfg.name));
    fs::write(&path, cfg.to_toml()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A TOML basic string ("..."), escaped.
fn toml_basic(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `podnet node run --config <file>` running inside a node's namespace, stdout and stderr in
/// `/tmp/pnag<pid>x<n>/agent.log`. SIGKILLed on drop.
pub struct Agent {
    daemon: Daemon,
    config: PathBuf,
    cleaned: bool,
}

impl Agent {
    /// Starts [`podnet_binary`] `node run --config <config>` in `ns`. It does not wait for
    /// anything: what "ready" means is the agent's (poll etcd or `podnet node status`).
    pub fn new(ns: &Ns, config: &Path) -> Agent {
        Agent::with_binary(ns, podnet_binary(), config)
    }

    /// Like [`Agent::new`], with another binary taking the same arguments.
    pub fn with_binary(ns: &Ns, binary: PathBuf, config: &Path) -> Agent {
        crate::require_root();
        let dir = PathBuf::from("/tmp").join(crate::unique("pnag"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let node = config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut daemon = Daemon::new(&format!("agent {node}"), &ns.path, binary, &dir, "agent.log");
        daemon.args = vec!["node".into(), "run".into(), "--config".into(), config.into()];
        let mut agent = Agent { daemon, config: config.to_path_buf(), cleaned: false };
        agent.start();
        agent
    }

    /// Starts it again (after [`Agent::stop`] or [`Agent::kill`]), same config; the log goes on.
    pub fn start(&mut self) {
        if let Err(e) = self.daemon.spawn() {
            panic!("starting the {}: {e}", self.daemon.what);
        }
    }

    /// SIGTERM by PID, waits (SIGKILL after 10 s); its exit status. None when not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.daemon.stop(STOP_GRACE)
    }

    /// SIGKILL by PID (a crash), reaped. None when it was not running.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.daemon.kill()
    }

    /// Whether it is running (reaps it when it has exited).
    pub fn running(&mut self) -> bool {
        self.daemon.running()
    }

    /// Its exit status once it has exited on its own (reaped); None while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.daemon.exited()
    }

    pub fn pid(&self) -> Option<i32> {
        self.daemon.pid()
    }

    /// Its stdout and stderr, every run (each after a `=== podnet-tests: agent <name> starts` line).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    pub fn log_path(&self) -> &Path {
        &self.daemon.log_path
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Kills it and removes its directory, as `Drop` does; returns what went wrong (it had
    /// exited on its own, unnoticed; a stop that needed SIGKILL).
    pub fn shutdown(mut self) -> Vec<String> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.cleaned, true) {
            return Vec::new();
        }
        if let Some(status) = self.daemon.exited() {
            let what = &self.daemon.what;
            self.daemon.problems.push(format!("{what} had exited on its own ({status}), unnoticed"));
        }
        self.daemon.kill();
        let problems = std::mem::take(&mut self.daemon.problems);
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!("--- {} ({}), last lines of its log:", self.daemon.what, self.config.display());
            eprintln!("{}", self.daemon.log_tail(LOG_TAIL_ON_PANIC));
        }
        if let Some(kept) = self.daemon.remove_dir(!problems.is_empty() || panicking || super::keep_logs()) {
            eprintln!("agent harness: the log of the {} is kept in {}", self.daemon.what, kept.display());
        }
        problems
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let problems = self.cleanup();
        if !problems.is_empty() {
            eprintln!("agent harness cleanup:\n  {}", problems.join("\n  "));
        }
    }
}

/// Runs the `podnet` CLI ([`podnet_binary`]) with `args` inside `ns` (stdin /dev/null; PATH,
/// RUST_LOG and RUST_BACKTRACE only); killed after 60 s.
pub fn podnet(ns: &Ns, args: &[&str]) -> Output {
    let mut cmd = Command::new(podnet_binary());
    cmd.args(args).env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for k in ["RUST_LOG", "RUST_BACKTRACE"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    ns.command(&mut cmd);
    crate::containerd::output_with_timeout(&mut cmd, CLI_TIMEOUT)
        .unwrap_or_else(|e| panic!("running podnet {args:?}: {e}"))
}

/// Like [`podnet`], but panics unless it succeeds (with its output); returns stdout.
pub fn podnet_ok(ns: &Ns, args: &[&str]) -> String {
    let o = podnet(ns, args);
    assert!(
        o.status.success(),
        "`podnet {}` failed in {} ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        ns.name(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
