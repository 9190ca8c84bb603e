//! A real containerd for the end-to-end tests: [`Containerd`] runs Debian's containerd 2.x
//! (unpacked by `hack/install-containerd` under /opt/podnet) inside a test's node network
//! namespace, with its own root, state, sockets and config under a short scratch directory
//! (`/tmp/pnc<pid>x<n>/`), and [`busybox_image`] imports an OCI image built offline from
//! Debian's `busybox-static`.
//!
//! ```no_run
//! # use podnet_tests::{Ns, containerd::{Containerd, ContainerdOptions, busybox_image}};
//! let node = Ns::new("pn");
//! let c = Containerd::start(&node, ContainerdOptions::default());
//! let image = busybox_image(&c);
//! let out = c.ctr_ok(&["run", "--rm", image, "t1", "echo", "hello"]);
//! assert_eq!(out.trim(), "hello");
//! ```
//!
//! Dropping a [`Containerd`] (or [`Containerd::shutdown`], which also reports what went
//! wrong) deletes every task, container and image it holds, in every containerd namespace
//! (restarting a dead containerd once for that), stops it by PID, kills as a last resort any
//! shim still serving its address together with the shim's children (the containers),
//! unmounts what is left under its directory, removes the directory and the per-namespace
//! leftovers on the host (see [`Containerd::shutdown`]). When that went wrong, or the test is
//! panicking, or `PODNET_KEEP_CONTAINERD_LOG` is set, containerd's log is kept as
//! `/tmp/pnc<pid>x<n>.log`.
//!
//! Host-wide paths containerd uses whatever the config says: shim sockets under
//! `/run/containerd/s/` (sha256 of containerd's address, namespace and id; removed when the
//! shim exits normally, and by the cleanup otherwise) and the runc shim's runc state under
//! `/run/containerd/runc/<namespace>/` (removed with the container; the cleanup removes the
//! namespace directory). Only the (empty) directories `/run/containerd/{s,runc}` stay. ctr's
//! stdio fifos go under our directory (see [`Containerd::ctr_command_in`]).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Ns;

/// Where `hack/install-containerd` unpacks containerd 2.x.
pub const DEFAULT_BIN_DIR: &str = "/opt/podnet/containerd-2/usr/bin";

/// The containerd namespace [`Containerd::ctr`] uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "podnet-test";

/// The reference [`busybox_image`] imports the busybox image as.
pub const BUSYBOX_REF: &str = "docker.io/podnet/busybox:test";

/// Plugins of containerd 2.1 the tests do not need (checked against `containerd config
/// default` and `ctr plugins ls` of Debian's 2.1.9): CRI and its sandbox machinery, NRI,
/// tracing, the restart monitor, the snapshotters and differs other than
/// overlayfs/native/walking, and `opt` (which would create /opt/containerd on the host).
/// Kept: content, metadata, snapshots (overlayfs, native), diff (walking), images,
/// containers, tasks (runtime v2, shim manager), events, leases, namespaces, introspection,
/// transfer and streaming (`ctr images import` goes through them), the image verifier
/// (transfer needs one; its bin_dir is pointed into our directory), version, healthcheck.
pub const DEFAULT_DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.sandbox.controller.v1.shim",
    "io.containerd.grpc.v1.sandbox-controllers",
    "io.containerd.grpc.v1.sandboxes",
    "io.containerd.sandbox.store.v1.local",
    "io.containerd.nri.v1.nri",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
    "io.containerd.internal.v1.opt",
    "io.containerd.monitor.container.v1.restart",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
];

/// The same for containerd 1.7 (config `version = 2`; checked against Debian's 1.7.24; its
/// tasks service needs the v1 runtime plugin `io.containerd.runtime.v1.linux`, kept).
pub const DEFAULT_DISABLED_PLUGINS_1_7: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.nri.v1.nri",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];

/// How long [`Containerd::start`] and [`Containerd::restart`] wait for `ctr version` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one [`Containerd::ctr`] may run before it is killed.
const CTR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How to start a [`Containerd`].
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Directory holding `containerd`, `ctr` and `containerd-shim-runc-v2`; default: env
    /// `PODNET_CONTAINERD_DIR` (the binaries' directory, or a package root holding
    /// `usr/bin/`), else [`DEFAULT_BIN_DIR`].
    pub bin_dir: Option<PathBuf>,
    /// Directories put first on containerd's PATH, where it looks for shims
    /// (`containerd-shim-<name>-v2`), e.g. the podnet shim's target dir. containerd's own
    /// directory and the system directories (runc is /usr/sbin/runc) follow.
    pub path: Vec<PathBuf>,
    /// Extra environment of containerd, which its shims inherit (e.g. `PODNET_CONFIG`).
    /// containerd otherwise gets only PATH (and RUST_LOG/RUST_BACKTRACE when set).
    pub env: Vec<(String, String)>,
    /// The namespace [`Containerd::ctr`] passes to ctr.
    pub namespace: String,
    /// The config's `disabled_plugins`; None: [`DEFAULT_DISABLED_PLUGINS`] (containerd 2.x)
    /// or [`DEFAULT_DISABLED_PLUGINS_1_7`] (1.x).
    pub disabled_plugins: Option<Vec<String>>,
    /// TOML appended verbatim to the end of the generated config, e.g. a
    /// `[plugins.'io.containerd.runtime.v2.task']` table. (Do not repeat the tables the
    /// config already has: `[grpc]`, `[ttrpc]`, `[debug]` and, for 2.x,
    /// `[plugins.'io.containerd.image-verifier.v1.bindir']`.)
    pub extra_config: String,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            bin_dir: None,
            path: Vec::new(),
            env: Vec::new(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            disabled_plugins: None,
            extra_config: String::new(),
        }
    }
}

impl ContainerdOptions {
    /// The defaults plus the directory of the podnet shim binary ([`crate::plugin_binary`],
    /// which must exist) on PATH, so `--runtime io.containerd.podnet.v2` finds it.
    pub fn podnet() -> Self {
        let shim = crate::plugin_binary();
        Self::default().path(shim.parent().expect("shim binary directory"))
    }

    /// Adds a directory to the front part of containerd's PATH (after earlier ones).
    pub fn path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.path.push(dir.into());
        self
    }

    /// Sets an environment variable of containerd (and so of its shims).
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((key.to_string(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }

    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }
}

/// The directory of the containerd binaries: env `PODNET_CONTAINERD_DIR` or [`DEFAULT_BIN_DIR`].
pub fn default_bin_dir() -> PathBuf {
    match std::env::var_os("PODNET_CONTAINERD_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.join("containerd").exists() {
                d
            } else {
                d.join("usr/bin")
            }
        }
        None => PathBuf::from(DEFAULT_BIN_DIR),
    }
}

/// The version of the containerd binary in `bin_dir` (`containerd --version`, without a
/// leading `v`: "2.1.9+unknown", "1.7.24~ds1"); None when it cannot be told.
pub fn containerd_version(bin_dir: &Path) -> Option<String> {
    let out = Command::new(bin_dir.join("containerd")).arg("--version").output().ok()?;
    // "containerd github.com/containerd/containerd/v2 2.1.9+unknown" or "... v1.7.24 <rev>".
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(2).map(|v| v.trim_start_matches('v').to_string())
}

/// The major version of the containerd binary in `bin_dir` (`containerd --version`); 2 when
/// it cannot be told.
pub fn containerd_major(bin_dir: &Path) -> u32 {
    containerd_version(bin_dir).and_then(|v| v.split('.').next().and_then(|m| m.parse().ok())).unwrap_or(2)
}

/// A containerd daemon running inside a test's node namespace; see the module documentation.
pub struct Containerd {
    ns_fd: OwnedFd,
    bin_dir: PathBuf,
    dir: PathBuf,
    root: PathBuf,
    state: PathBuf,
    address: PathBuf,
    ttrpc_address: PathBuf,
    config: PathBuf,
    log_path: PathBuf,
    namespace: String,
    /// containerd's whole environment.
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Whether it ever answered: only then does `Drop` restart a dead one to clean up.
    ever_ready: bool,
    /// Set once `cleanup` ran (by `shutdown` or `Drop`).
    cleaned: bool,
    busybox_imported: AtomicBool,
}

impl Containerd {
    /// Starts containerd inside `node` and waits (bounded) until `ctr version` answers.
    /// Panics, with containerd's log, when it does not come up.
    pub fn start(node: &Ns, opts: ContainerdOptions) -> Containerd {
        crate::require_root();
        let bin_dir = opts.bin_dir.clone().unwrap_or_else(default_bin_dir);
        for b in ["containerd", "ctr", "containerd-shim-runc-v2"] {
            assert!(
                bin_dir.join(b).exists(),
                "{} is missing: run hack/install-containerd (or set PODNET_CONTAINERD_DIR)",
                bin_dir.join(b).display()
            );
        }
        // Short on purpose: unix socket paths must fit in 108 bytes. Not $TMPDIR, which may be long.
        let dir = PathBuf::from("/tmp").join(crate::unique("pnc"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o711)).expect("chmod containerd dir");

        let path = containerd_path(&opts.path, &bin_dir);
        let mut env = vec![("PATH".to_string(), path)];
        for k in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Ok(v) = std::env::var(k) {
                env.push((k.to_string(), v));
            }
        }
        env.extend(opts.env.iter().cloned());

        let mut c = Containerd {
            ns_fd: node.ns.as_fd().try_clone_to_owned().expect("dup node namespace fd"),
            root: dir.join("root"),
            state: dir.join("state"),
            address: dir.join("c.sock"),
            ttrpc_address: dir.join("t.sock"),
            config: dir.join("config.toml"),
            log_path: dir.join("containerd.log"),
            dir,
            bin_dir,
            namespace: opts.namespace.clone(),
            env,
            child: None,
            ever_ready: false,
            cleaned: false,
            busybox_imported: AtomicBool::new(false),
        };
        // From here on a panic drops `c`, which cleans up.
        let config = c.config_text(&opts);
        fs::write(&c.config, config).unwrap_or_else(|e| panic!("writing {}: {e}", c.config.display()));
        if let Err(e) = c.spawn() {
            panic!("{e}");
        }
        c
    }

    /// The generated config: `version = 3` for containerd 2.x, `version = 2` for 1.x.
    fn config_text(&self, opts: &ContainerdOptions) -> String {
        let q = |p: &Path| toml_str(&p.to_string_lossy());
        let v1 = containerd_major(&self.bin_dir) < 2;
        let defaults = if v1 { DEFAULT_DISABLED_PLUGINS_1_7 } else { DEFAULT_DISABLED_PLUGINS };
        let disabled: Vec<String> = match &opts.disabled_plugins {
            Some(list) => list.iter().map(|p| toml_str(p)).collect(),
            None => defaults.iter().map(|p| toml_str(p)).collect(),
        };
        // 2.x's transfer service (ctr images import) needs the image verifier plugin: point
        // it at a directory of ours instead of /opt/containerd/image-verifier/bin.
        let verifier = if v1 {
            String::new()
        } else {
            format!(
                "[plugins.'io.containerd.image-verifier.v1.bindir']\n  bin_dir = {}\n\n",
                q(&self.dir.join("verifiers"))
            )
        };
        format!(
            "version = {version}\n\
             root = {root}\n\
             state = {state}\n\
             # 0: containerd leaves its own oom_score_adj alone (this kernel refuses values < 0).\n\
             oom_score = 0\n\
             disabled_plugins = [\n  {disabled}\n]\n\
             \n\
             [grpc]\n  address = {grpc}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [debug]\n  level = 'debug'\n\
             \n{verifier}{extra}",
            version = if v1 { 2 } else { 3 },
            root = q(&self.root),
            state = q(&self.state),
            disabled = disabled.join(",\n  "),
            grpc = q(&self.address),
            ttrpc = q(&self.ttrpc_address),
            extra = opts.extra_config,
        )
    }

    /// Starts the daemon and waits until it answers; on failure, the error holds its log.
    fn spawn(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("opening {}: {e}", self.log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log fd: {e}"))?;
        let mut cmd = Command::new(self.bin_dir.join("containerd"));
        cmd.arg("--config")
            .arg(&self.config)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a ^C at the terminal reaches the test, which cleans up.
            .process_group(0);
        self.enter_ns(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("spawning {}: {e}", self.bin_dir.join("containerd").display()))?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!("containerd exited during startup ({status}); its log:\n{}", self.log()));
            }
            if self.address.exists() {
                let mut cmd = self.ctr_command(&["version"]);
                if output_with_timeout(&mut cmd, Duration::from_secs(5)).is_ok_and(|o| o.status.success()) {
                    self.ever_ready = true;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer `ctr version` within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes `cmd` start inside the node namespace.
    fn enter_ns(&self, cmd: &mut Command) {
        let fd = self.ns_fd.try_clone().expect("dup node namespace fd");
        // SAFETY: pre_exec runs in the forked child before exec; setns is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// `ctr --address <sock> --namespace <namespace> <args>` as a Command (inside the node
    /// namespace, containerd's PATH), for callers that need their own stdio.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(&self.namespace, args)
    }

    /// Like [`Containerd::ctr_command`], in containerd namespace `namespace`. `run`, `tasks
    /// start` and `tasks exec` get `--fifo-dir <dir>/fifo` (unless `args` has one), so that
    /// ctr's stdio fifos live and go with our directory instead of /run/containerd/fifo.
    pub fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("ctr"));
        cmd.arg("--address").arg(&self.address).arg("--namespace").arg(namespace);
        let verb = match args {
            ["run", ..] => 1,
            ["tasks" | "task" | "t", "start" | "exec", ..] => 2,
            _ => 0,
        };
        if verb > 0 && !args.iter().any(|a| a.starts_with("--fifo-dir")) {
            cmd.args(&args[..verb]).arg("--fifo-dir").arg(self.dir.join("fifo")).args(&args[verb..]);
        } else {
            cmd.args(args);
        }
        cmd.env_clear().envs(self.env.iter().filter(|(k, _)| k == "PATH").map(|(k, v)| (k, v)));
        self.enter_ns(&mut cmd);
        cmd
    }

    /// Runs ctr with `args` (stdin /dev/null) and returns its output; killed after 60 s
    /// (then the status is a SIGKILL and stderr says so).
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(&self.namespace, args)
    }

    /// Like [`Containerd::ctr`], in containerd namespace `namespace`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        self.ctr_in_timeout(namespace, args, CTR_TIMEOUT)
    }

    fn ctr_in_timeout(&self, namespace: &str, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.ctr_command_in(namespace, args);
        output_with_timeout(&mut cmd, timeout).unwrap_or_else(|e| panic!("running ctr {args:?}: {e}"))
    }

    /// Like [`Containerd::ctr`], but panics unless ctr succeeds (with its output and the end
    /// of containerd's log); returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "`ctr {}` failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log (end):\n{}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail(60)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts ctr with `args` in the background (stdin /dev/null, stdout and stderr piped),
    /// e.g. `ctr events` or a long `ctr run`. The caller kills and waits for it.
    pub fn spawn_ctr(&self, args: &[&str]) -> Child {
        self.ctr_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning ctr {args:?}: {e}"))
    }

    /// Stops containerd (SIGTERM by PID, SIGKILL after 10 s) and starts it again with the
    /// same directories and config; waits until it answers. Shims and their tasks live on.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn() {
            panic!("restarting containerd: {e}");
        }
    }

    /// Stops containerd by PID: SIGTERM, SIGKILL after the grace time; reaps it.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; `pid` is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// The socket a shim of this containerd serves task `id` of `namespace` on (containerd
    /// 2.x's and 1.7's scheme): `/run/containerd/s/<sha256 of "<address>/<namespace>/<id>">`.
    pub fn shim_socket(&self, namespace: &str, id: &str) -> PathBuf {
        let name = sha256_hex(format!("{}/{namespace}/{id}", self.address.display()).as_bytes());
        Path::new("/run/containerd/s").join(name)
    }

    /// containerd's PID; panics when it is not running.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("containerd is not running")
    }

    /// Whether the containerd process is still running (reaps it when it is not).
    pub fn running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else { return false };
        match child.try_wait() {
            Ok(None) if alive(child.id() as i32) => true,
            // A killed multi-threaded process shows as a zombie before waitpid reports it.
            Ok(None) => {
                let _ = child.wait();
                false
            }
            _ => false,
        }
    }

    /// The gRPC socket (`ctr --address`, containerd's `[grpc] address`).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The ttrpc socket (`[ttrpc] address`), which containerd hands to shims as
    /// `TTRPC_ADDRESS` (with `GRPC_ADDRESS`, `NAMESPACE`) for publishing events.
    pub fn ttrpc_address(&self) -> &Path {
        &self.ttrpc_address
    }

    /// containerd's `state` directory (runtime v2 bundles under
    /// `io.containerd.runtime.v2.task/<namespace>/<id>`).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// containerd's `root` directory (content, metadata, snapshots).
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// The scratch directory holding root, state, sockets, config and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The namespace [`Containerd::ctr`] uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The directory of containerd, ctr and containerd-shim-runc-v2.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// containerd's log (stdout and stderr, debug level, every run since start), which
    /// includes what shims log.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of [`Containerd::log`].
    pub fn log_tail(&self, lines: usize) -> String {
        crate::last_lines(&self.log(), lines)
    }

    /// Deletes every task (SIGKILL), container and image in every containerd namespace;
    /// best effort, never panics. Returns the namespaces seen, the (namespace, id) of the
    /// tasks and containers seen, and what failed.
    fn remove_everything(&self) -> (Vec<String>, Vec<(String, String)>, Vec<String>) {
        let mut problems = Vec::new();
        let mut run = |ns: &str, args: &[&str]| -> Vec<String> {
            let mut cmd = self.ctr_command_in(ns, args);
            match output_with_timeout(&mut cmd, Duration::from_secs(20)) {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
                Ok(o) => {
                    let err = String::from_utf8_lossy(&o.stderr);
                    problems.push(format!("ctr -n {ns} {} ({}): {}", args.join(" "), o.status, err.trim()));
                    Vec::new()
                }
                Err(e) => {
                    problems.push(format!("ctr -n {ns} {}: {e}", args.join(" ")));
                    Vec::new()
                }
            }
        };
        let mut ids = Vec::new();
        let namespaces = run(&self.namespace, &["namespaces", "ls", "-q"]);
        for ns in &namespaces {
            let ns = ns.as_str();
            for task in run(ns, &["tasks", "ls", "-q"]) {
                // `rm --force` kills (SIGKILL) and waits for the task; exec processes go with it.
                run(ns, &["tasks", "rm", "--force", &task]);
                ids.push((ns.to_string(), task));
            }
            for c in run(ns, &["containers", "ls", "-q"]) {
                run(ns, &["containers", "rm", &c]);
                ids.push((ns.to_string(), c));
            }
            let images = run(ns, &["images", "ls", "-q"]);
            if !images.is_empty() {
                let mut args = vec!["images", "rm"];
                args.extend(images.iter().map(String::as_str));
                run(ns, &args);
            }
        }
        (namespaces, ids, problems)
    }

    /// The last resort for what `remove_everything` could not delete: SIGKILLs the children
    /// of every process started with `-address <our socket>` (shims; a runc shim's child is
    /// its container's init, whose death ends the container's PID namespace) and then the
    /// shims themselves, and waits briefly for them to go. Returns the PIDs it killed.
    fn kill_shims(&self) -> Vec<i32> {
        let addr = self.address.to_string_lossy().into_owned();
        let shims = processes_with_args(&["-address", &addr]);
        let children = children_of(&shims);
        for &pid in children.iter().chain(&shims) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let all: Vec<i32> = children.into_iter().chain(shims).collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && all.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        all
    }

    /// Deletes everything and stops containerd, as `Drop` does (see the module documentation),
    /// and returns what went wrong: empty when containerd deleted all its tasks, containers
    /// and images itself and no shim had to be killed. Also removes, for each containerd
    /// namespace, the empty cgroup `/<namespace>` that `ctr run`'s default cgroups path leaves
    /// and `/run/containerd/runc/<namespace>`.
    pub fn shutdown(mut self) -> Vec<String> {
        self.cleanup()
    }

    /// The work of `Drop` (once): see the module documentation.
    fn cleanup(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.cleaned, true) {
            return Vec::new();
        }
        let mut problems = Vec::new();
        // The tasks that have a shim now (their bundles), for `remove_shim_sockets`.
        let mut ids = self.bundles();
        // Dead (crashed, or a failed restart)? Bring it back once to delete what it holds.
        if !self.running() && self.ever_ready && self.root.exists() {
            if let Err(e) = self.spawn() {
                problems.push(format!("restarting the dead containerd to clean up: {e}"));
            }
        }
        let mut namespaces = vec![self.namespace.clone()];
        if self.running() {
            let (seen, seen_ids, failed) = self.remove_everything();
            namespaces.extend(seen);
            ids.extend(seen_ids);
            problems.extend(failed);
        }
        self.stop();
        let killed = self.kill_shims();
        if !killed.is_empty() {
            problems.push(format!("killed leftover shims and their containers: {killed:?}"));
        }
        self.remove_shim_sockets(&ids);
        self.unmount_all();
        remove_namespace_leftovers(&namespaces);
        // Keep the log of a failed test (or on request) for the post-mortem.
        if !problems.is_empty() || std::thread::panicking() || std::env::var_os("PODNET_KEEP_CONTAINERD_LOG").is_some()
        {
            let keep = self.dir.with_extension("log");
            if fs::copy(&self.log_path, &keep).is_ok() {
                eprintln!("containerd harness: the log of {} is kept in {}", self.dir.display(), keep.display());
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        problems
    }

    /// (namespace, id) of the task bundles under the state directory.
    fn bundles(&self) -> Vec<(String, String)> {
        let base = self.state.join("io.containerd.runtime.v2.task");
        let mut v = Vec::new();
        for ns in crate::files_in(&base) {
            for id in crate::files_in(&base.join(&ns)) {
                v.push((ns.clone(), id));
            }
        }
        v
    }

    /// Removes the sockets under `/run/containerd/s/` of this containerd's shims, which
    /// must all be gone: a shim killed, or one whose containerd was killed, leaves them. They
    /// are named after sha256(`<address>/<namespace>/<id>`) (`.../debug` for the debug
    /// socket a shim of a debug-level containerd also has); containerd's log names more of
    /// them. Only sockets derived from our own address are touched.
    fn remove_shim_sockets(&self, ids: &[(String, String)]) {
        let dir = Path::new("/run/containerd/s");
        let mut names: Vec<String> = Vec::new();
        for (ns, id) in ids {
            names.push(sha256_hex(format!("{}/{ns}/{id}", self.address.display()).as_bytes()));
            names.push(sha256_hex(format!("{}/{ns}/{id}/debug", self.address.display()).as_bytes()));
        }
        let log = self.log();
        let needle = "/run/containerd/s/";
        let mut rest = log.as_str();
        while let Some(at) = rest.find(needle) {
            rest = &rest[at + needle.len()..];
            let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            if hex.len() == 64 {
                names.push(hex);
            }
        }
        names.sort();
        names.dedup();
        for n in names {
            let p = dir.join(n);
            if fs::symlink_metadata(&p).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
                let _ = fs::remove_file(&p);
            }
        }
    }

    /// Lazily unmounts every mount under the directory, deepest first.
    fn unmount_all(&self) {
        for m in mounts_under(&self.dir) {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: `c` is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let problems = self.cleanup();
        if !problems.is_empty() {
            eprintln!("containerd harness ({}) cleanup:\n  {}", self.dir.display(), problems.join("\n  "));
        }
    }
}

/// Removes what `ctr run` and the runc shim leave per containerd namespace on the host once
/// its containers are gone: the empty cgroup `/<namespace>` in every hierarchy (`ctr run`'s
/// default cgroups path is `/<namespace>/<id>`; empty per-container ones too, left by
/// containers killed without a delete) and `/run/containerd/runc/<namespace>` (with the runc
/// state of containers whose init is dead). rmdir only removes an empty directory, so one in
/// use by another containerd with the same namespace stays (a container created in that very
/// instant could fail: give concurrent instances in one test process distinct namespaces).
fn remove_namespace_leftovers(namespaces: &[String]) {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(rd) = fs::read_dir(root) {
        hierarchies.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
    }
    for ns in namespaces {
        if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
            continue;
        }
        for h in &hierarchies {
            let dir = h.join(ns);
            // Per-container cgroups left by containers killed without runc's delete.
            if let Ok(rd) = fs::read_dir(&dir) {
                for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                    let _ = fs::remove_dir(e.path());
                }
            }
            let _ = fs::remove_dir(&dir);
        }
        // The runc shim's runc root for the namespace (`/run/containerd/runc/<namespace>`),
        // after the state of containers whose init is dead (left when their shim was killed).
        let runc_root = Path::new("/run/containerd/runc").join(ns);
        if let Ok(rd) = fs::read_dir(&runc_root) {
            for e in rd.flatten() {
                let state = fs::read(e.path().join("state.json")).ok();
                let v: Option<serde_json::Value> = state.and_then(|b| serde_json::from_slice(&b).ok());
                let pid = v.and_then(|v| v["init_process_pid"].as_i64());
                if pid.is_some_and(|p| !alive(p as i32)) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = fs::remove_dir(&runc_root);
    }
}

/// Mount points at or under `dir` in this process's mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The PIDs whose parent is one of `parents`.
fn children_of(parents: &[i32]) -> Vec<i32> {
    if parents.is_empty() {
        return Vec::new();
    }
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<i32>().ok());
            ppid.is_some_and(|p| parents.contains(&p))
        })
        .collect()
}

/// PIDs of the processes whose argv holds `needle` as consecutive arguments.
pub fn processes_with_args(needle: &[&str]) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
            args.windows(needle.len()).any(|w| w.iter().zip(needle).all(|(a, n)| *a == n.as_bytes()))
        })
        .collect()
}

/// Whether process `pid` exists and is not a zombie (this machine's init reaps orphans late).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// containerd's PATH: `extra`, then containerd's own directory, then this process's PATH
/// with the system directories appended when missing.
fn containerd_path(extra: &[PathBuf], bin_dir: &Path) -> String {
    let mut parts: Vec<String> = extra.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    parts.push(bin_dir.to_string_lossy().into_owned());
    let inherited = std::env::var("PATH").unwrap_or_default();
    parts.extend(inherited.split(':').filter(|s| !s.is_empty()).map(String::from));
    for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        if !parts.iter().any(|p| p == d) {
            parts.push(d.to_string());
        }
    }
    let mut seen = std::collections::HashSet::new();
    parts.retain(|p| seen.insert(p.clone()));
    parts.join(":")
}

/// A TOML literal string (single quotes); panics on a quote or newline in `s`.
fn toml_str(s: &str) -> String {
    assert!(!s.contains('\'') && !s.contains('\n'), "cannot quote {s:?} for TOML");
    format!("'{s}'")
}

/// Runs `cmd` with stdout and stderr captured (stdin /dev/null); SIGKILLs it after
/// `timeout`, reporting that on stderr.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            timed_out = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if timed_out {
        let _ = write!(stderr, "\n(killed after {timeout:?})");
    }
    Ok(Output { status, stdout, stderr })
}

// ---------------------------------------------------------------------------------------------
// The busybox OCI image.

/// Bumped when the image's content or layout changes, so an older cached archive is not reused.
const ARCHIVE_VERSION: u32 = 1;

/// A fixed mtime for every tar entry: the archive is byte-for-byte reproducible.
const EPOCH: u64 = 0;

/// Imports the busybox image (built once per process, see [`busybox_archive`]) into `c`'s
/// namespace, once per [`Containerd`]; returns its reference ([`BUSYBOX_REF`]). The image
/// has `sh` as Cmd and the usual PATH; every busybox applet is on it.
pub fn busybox_image(c: &Containerd) -> &'static str {
    if c.busybox_imported.load(Ordering::SeqCst) {
        return BUSYBOX_REF;
    }
    let archive = busybox_archive();
    let platform = format!("linux/{}", oci_arch());
    let archive_s = archive.to_string_lossy();
    c.ctr_ok(&["images", "import", "--platform", &platform, &archive_s]);
    let images = c.ctr_ok(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l.trim() == BUSYBOX_REF),
        "importing {} did not create {BUSYBOX_REF}; images: {images}",
        archive.display()
    );
    c.busybox_imported.store(true, Ordering::SeqCst);
    BUSYBOX_REF
}

/// The busybox image as an OCI image layout tar (`oci-layout`, `index.json`,
/// `blobs/sha256/...`), built once per process from [`crate::oci::shared_busybox_rootfs`]
/// (one uncompressed layer: busybox, a symlink per applet, /etc/passwd and /etc/group, /tmp,
/// /proc, /sys, /dev, ...) and cached under the temp dir, keyed by the rootfs (so by the
/// busybox binary). Its index names the manifest `docker.io/podnet/busybox:test`.
pub fn busybox_archive() -> &'static Path {
    static ARCHIVE: OnceLock<PathBuf> = OnceLock::new();
    ARCHIVE.get_or_init(build_archive)
}

/// This machine's architecture as OCI names it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn build_archive() -> PathBuf {
    let rootfs = crate::oci::shared_busybox_rootfs();
    let key = rootfs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = std::env::temp_dir().join(format!("podnet-busybox-oci-v{ARCHIVE_VERSION}-{key}.tar"));
    if path.exists() {
        return path;
    }
    let bytes = image_layout_tar(&rootfs)
        .unwrap_or_else(|e| panic!("building the busybox image from {}: {e}", rootfs.display()));
    // Written under a unique name and renamed: readers only ever see a complete archive.
    let tmp = path.with_extension(format!("tar.{}", crate::unique("tmp")));
    fs::write(&tmp, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    fs::rename(&tmp, &path).unwrap_or_else(|e| {
        let _ = fs::remove_file(&tmp);
        panic!("renaming {} to {}: {e}", tmp.display(), path.display())
    });
    path
}

/// The OCI image layout, as a tar, of a one-layer image of `rootfs`.
pub fn image_layout_tar(rootfs: &Path) -> io::Result<Vec<u8>> {
    let layer = layer_tar(rootfs)?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let arch = oci_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "podnet-tests: busybox-static", "comment": "built offline by tests/src/containerd.rs" }]
    }))?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len()
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len()
        }]
    }))?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let tag = BUSYBOX_REF.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": {
                "io.containerd.image.name": BUSYBOX_REF,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    }))?;

    let mut b = tar::Builder::new(Vec::new());
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| -> io::Result<()> {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, path, data)
    };
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| -> io::Result<()> {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, path, io::empty())
    };
    file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    file(&mut b, "index.json", &index)?;
    dir(&mut b, "blobs/")?;
    dir(&mut b, "blobs/sha256/")?;
    for (digest, data) in [(&manifest_digest, &manifest), (&config_digest, &config), (&layer_digest, &layer)] {
        file(&mut b, &format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), data)?;
    }
    b.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(EPOCH);
    h
}

/// A deterministic tar of the tree at `rootfs`: entries sorted by path, owned by 0:0, a
/// fixed mtime, modes as on disk.
pub fn layer_tar(rootfs: &Path) -> io::Result<Vec<u8>> {
    let mut entries = Vec::new();
    walk(rootfs, Path::new(""), &mut entries)?;
    entries.sort();
    let mut b = tar::Builder::new(Vec::new());
    for rel in entries {
        let full = rootfs.join(&rel);
        let meta = fs::symlink_metadata(&full)?;
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&full)?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, &rel, &target)?;
        } else if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, mode, 0);
            b.append_data(&mut h, format!("{}/", rel.display()), io::empty())?;
        } else if ft.is_file() {
            let data = fs::read(&full)?;
            let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
            b.append_data(&mut h, &rel, data.as_slice())?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a file, dir or symlink", full.display()),
            ));
        }
    }
    b.into_inner()
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(root.join(rel))? {
        let e = e?;
        let r = rel.join(e.file_name());
        let is_dir = e.file_type()?.is_dir();
        out.push(r.clone());
        if is_dir {
            walk(root, &r, out)?;
        }
    }
    Ok(())
}
