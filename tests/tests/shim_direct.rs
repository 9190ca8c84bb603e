//! The shim binary driven directly, the way containerd drives it, without containerd: `start`
//! in the bundle with TTRPC_ADDRESS pointing at a fake events service, then the Task API over
//! ttrpc (Connect, Create, Start, Exec, Wait, Kill, Delete, Shutdown...), and the `delete`
//! subcommand after the daemon was killed. Everything runs in a "node" network namespace the
//! test creates; each test checks that nothing is left (processes, mounts, cgroups,
//! namespaces, runtime state, shim sockets).
//!
//! Root tests: `cargo test -p podnet-tests --test shim_direct -- --include-ignored --test-threads=1`.
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
};
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim::shim::*;
use containerd_shim_protos::ttrpc::proto::{Code, Request};
use containerd_shim_protos::types::mount::Mount;
use containerd_shim_protos::types::task::Status as TaskStatus;
use podnet_shim::config::RuntimeOptions;
use podnet_shim::pod_shim::socket_address;
use podnet_shim::ttrpc::{self as wire, Client, RpcError};
use podnet_tests::leaks::{self, Snapshot};
use podnet_tests::oci::{shared_busybox_rootfs, Spec};
use podnet_tests::rt::Reader;
use podnet_tests::{plugin_binary, podnet_veths, require_root, reservations, tagged_rules, unique, Ns, TempDir};
use protobuf::well_known_types::any::Any;
use protobuf::well_known_types::empty::Empty;
use protobuf::Message;
use serde_json::{json, Value};

const TASK: &str = "containerd.task.v2.Task";
const EVENTS: &str = "containerd.services.events.ttrpc.v1.Events";
/// Bounds every call the tests make (a hung shim fails the test instead of hanging it).
const CALL: Option<Duration> = Some(Duration::from_secs(10));
const PROCESS_SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const NETNS_DIR: &str = "/var/run/netns";

// ---------------------------------------------------------------------------------------------
// The fake events service containerd serves on TTRPC_ADDRESS.

/// One event the shim forwarded.
#[derive(Debug, Clone)]
struct Event {
    namespace: String,
    topic: String,
    type_url: String,
    value: Vec<u8>,
    has_timestamp: bool,
}

impl Event {
    fn decode<M: Message>(&self) -> M {
        M::parse_from_bytes(&self.value).unwrap_or_else(|e| panic!("event {} ({}): {e}", self.topic, self.type_url))
    }
}

/// A ttrpc server for `containerd.services.events.ttrpc.v1.Events/Forward`: records every
/// event, in arrival order, and answers Ok(Empty).
struct EventServer {
    path: PathBuf,
    events: Arc<Mutex<Vec<Event>>>,
    /// Requests that were not a well-formed Forward (a test failure).
    bad: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventServer {
    fn start(path: PathBuf) -> EventServer {
        let listener = UnixListener::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        listener.set_nonblocking(true).expect("non-blocking listener");
        let events = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, bd, st) = (events.clone(), bad.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (ev, bd, st) = (ev.clone(), bd.clone(), st.clone());
                        conns.push(std::thread::spawn(move || serve_events(s, ev, bd, st)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        EventServer { path, events, bad, stop, thread: Some(thread) }
    }

    fn events(&self) -> Vec<Event> {
        let bad = self.bad.lock().unwrap().clone();
        assert!(bad.is_empty(), "the fake events service got malformed requests: {bad:?}");
        self.events.lock().unwrap().clone()
    }

    fn topics(&self) -> Vec<String> {
        self.events().into_iter().map(|e| e.topic).collect()
    }
}

impl Drop for EventServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn serve_events(
    mut s: UnixStream,
    events: Arc<Mutex<Vec<Event>>>,
    bad: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(Duration::from_millis(50))).is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        loop {
            let frame = match wire::decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    bad.lock().unwrap().push(format!("bad frame: {e}"));
                    return;
                }
            };
            if frame.kind != wire::TYPE_REQUEST {
                continue;
            }
            let reply = match Request::parse_from_bytes(&frame.payload) {
                Err(e) => Err(RpcError::invalid(format!("malformed request: {e}"))),
                Ok(req) if req.service != EVENTS || req.method != "Forward" => {
                    Err(RpcError::new(Code::UNIMPLEMENTED, format!("{}/{} is not served", req.service, req.method)))
                }
                Ok(req) => match ForwardRequest::parse_from_bytes(&req.payload) {
                    Err(e) => Err(RpcError::invalid(format!("malformed ForwardRequest: {e}"))),
                    Ok(fwd) => {
                        let env = fwd.envelope.clone().unwrap_or_default();
                        let any = env.event.clone().unwrap_or_default();
                        events.lock().unwrap().push(Event {
                            namespace: env.namespace.clone(),
                            topic: env.topic.clone(),
                            type_url: any.type_url.clone(),
                            value: any.value.clone(),
                            has_timestamp: env.timestamp.is_some(),
                        });
                        Ok(Empty::new().write_to_bytes().expect("empty encodes"))
                    }
                },
            };
            if let Err(e) = &reply {
                bad.lock().unwrap().push(e.to_string());
            }
            if s.write_all(&wire::encode(frame.stream_id, wire::TYPE_RESPONSE, &wire::response(reply))).is_err() {
                return;
            }
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shim's log: the `log` fifo in the bundle, read as containerd reads it.

struct ShimLog {
    text: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ShimLog {
    /// Makes `<bundle>/log` a fifo and reads it on a thread until its writer is gone.
    fn open(bundle: &Path) -> ShimLog {
        let path = bundle.join("log");
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("fifo path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let text = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, st) = (text.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while !st.load(Ordering::SeqCst) {
                let mut p = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&f), events: libc::POLLIN, revents: 0 };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
                match f.read(&mut buf) {
                    // EOF after a writer came and went (the daemon exited).
                    Ok(0) if p.revents & libc::POLLHUP != 0 => return,
                    Ok(0) => {}
                    Ok(n) => t.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
                    Err(_) => {}
                }
            }
        });
        ShimLog { text, stop, thread: Some(thread) }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }
}

impl Drop for ShimLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A bundle and the test's world.

struct Bundle {
    id: String,
    dir: PathBuf,
    log: ShimLog,
}

impl Bundle {
    /// The pid `start` recorded for the daemon it spawned (none when it joined a running one).
    fn shim_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("shim.pid")).ok().and_then(|s| s.trim().parse().ok())
    }

    fn log(&self) -> String {
        let t = self.log.text();
        if t.is_empty() {
            "(nothing in the shim's log fifo)".into()
        } else {
            format!("shim log:\n{t}")
        }
    }

    fn record(&self) -> PathBuf {
        self.dir.join(podnet_shim::bundle::BUNDLE_RECORD)
    }
}

/// One test's world: a node network namespace, a scratch dir (podnet config, state dir,
/// network config dir, bundles), the fake events service, and the leak snapshot. Drop kills
/// whatever shim of this test is still alive and cleans up after it.
struct Env {
    dir: TempDir,
    node: Option<Ns>,
    events: Option<EventServer>,
    /// Part of every cgroup path of the test's containers.
    marker: String,
    /// The containerd namespace.
    namespace: String,
    /// The fake containerd address: unique per test, so it also finds the test's shims.
    address: String,
    bundles: Mutex<Vec<(String, PathBuf)>>,
    /// Every shim socket `start` returned.
    sockets: Mutex<Vec<PathBuf>>,
    started: Instant,
    before: Option<Snapshot>,
    _serial: MutexGuard<'static, ()>,
}

impl Env {
    fn new() -> Env {
        require_root();
        let serial = leaks::serial();
        shared_busybox_rootfs();
        let marker = unique("pnsd");
        let before = Snapshot::take(&marker);
        let dir = TempDir::new("pd");
        for d in ["s", "net.d", "ipam", "cni"] {
            fs::create_dir_all(dir.path().join(d)).expect("scratch dirs");
        }
        let config = format!(
            "conf_dir = \"{}\"\nstate_dir = \"{}\"\n",
            dir.path().join("net.d").display(),
            dir.path().join("s").display()
        );
        fs::write(dir.path().join("podnet.toml"), config).expect("podnet config");
        let node = Ns::new("pdn");
        let events = EventServer::start(dir.path().join("ev.sock"));
        let address = format!("/run/podnet-test-fake/{}.sock", marker);
        Env {
            dir,
            node: Some(node),
            events: Some(events),
            marker,
            namespace: "pdtest".into(),
            address,
            bundles: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            started: Instant::now(),
            before: Some(before),
            _serial: serial,
        }
    }

    fn node(&self) -> &Ns {
        self.node.as_ref().expect("node namespace")
    }

    fn events(&self) -> &EventServer {
        self.events.as_ref().expect("events server")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("podnet.toml")
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("s")
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The runtime's state directory for the test's containerd namespace.
    fn runtime_root(&self) -> PathBuf {
        self.state_dir().join("runtime").join(&self.namespace)
    }

    /// Entries the runtime left in its state directory (dot files are its own bookkeeping).
    fn runtime_state(&self) -> Vec<String> {
        podnet_tests::files_in(&self.runtime_root()).into_iter().filter(|n| !n.starts_with('.')).collect()
    }

    /// A fifo in the scratch dir, as containerd makes them for a task's stdio.
    fn fifo(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(unique(name));
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("fifo path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
        p
    }

    /// The test's cgroup path for container `id`.
    fn cgroup(&self, id: &str) -> String {
        format!("/{}-{id}", self.marker)
    }

    /// A busybox spec running `args` on the node's network (no network namespace entry), in
    /// the test's cgroup.
    fn spec(&self, id: &str, args: &[&str]) -> Spec {
        Spec::new(&shared_busybox_rootfs(), args).remove_namespace("network").cgroups_path(&self.cgroup(id))
    }

    /// Writes `spec` as the bundle of `id`, with a `log` fifo read by the test.
    fn bundle(&self, id: &str, spec: &Spec) -> Bundle {
        let dir = self.dir.path().join(format!("b-{id}"));
        spec.write_bundle(&dir);
        let log = ShimLog::open(&dir);
        self.bundles.lock().unwrap().push((id.to_string(), dir.clone()));
        Bundle { id: id.to_string(), dir, log }
    }

    /// The shim binary with containerd's flags for `id`, `action` last, run in `bundle` inside
    /// the node namespace with TTRPC_ADDRESS and PODNET_CONFIG set.
    fn shim_command(&self, id: &str, bundle: &Path, action: &str) -> Command {
        let mut cmd = Command::new(plugin_binary());
        cmd.args(["-namespace", &self.namespace, "-address", &self.address, "-id", id]);
        if action == "delete" {
            cmd.arg("-bundle").arg(bundle);
        }
        if action == "start" {
            cmd.arg("-debug");
        }
        cmd.arg(action)
            .current_dir(bundle)
            .env_remove("CNI_COMMAND")
            .env("TTRPC_ADDRESS", &self.events().path)
            .env("PODNET_CONFIG", self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.node().command(&mut cmd);
        cmd
    }

    fn run_shim(&self, id: &str, bundle: &Path, action: &str) -> Output {
        let mut cmd = self.shim_command(id, bundle, action);
        let out = cmd.output().unwrap_or_else(|e| panic!("running the shim's {action}: {e}"));
        let stdout = match std::str::from_utf8(&out.stdout) {
            Ok(s) => format!("{:?}", s.trim_end()),
            Err(_) => format!("{} bytes", out.stdout.len()),
        };
        eprintln!(
            "shim {action} {id}: {}, stdout {stdout}, stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
        out
    }

    /// `start`, which must succeed: the address it printed and the socket path.
    fn start(&self, b: &Bundle) -> (String, PathBuf) {
        let out = self.run_shim(&b.id, &b.dir, "start");
        assert!(out.status.success(), "start of {} failed: {}", b.id, String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("start printed no JSON ({e}): {:?}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!((v["version"].as_u64(), v["protocol"].as_str()), (Some(2), Some("ttrpc")), "bootstrap reply {v}");
        let address = v["address"].as_str().unwrap_or_else(|| panic!("no address in {v}")).to_string();
        assert!(address.starts_with("unix:///run/podnet/s/"), "{address}");
        let socket = wire::socket_path(&address);
        self.sockets.lock().unwrap().push(socket.clone());
        assert!(socket.exists(), "{} does not exist after start", socket.display());
        (address, socket)
    }

    /// The shim processes of this test (found by the unique containerd address in their
    /// command line): (pid, arguments).
    fn shim_processes(&self) -> Vec<(i32, Vec<String>)> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else { return out };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.iter().any(|a| a == &self.address) && args.iter().any(|a| a.ends_with("containerd-shim-podnet-v2"))
            {
                out.push((pid, args));
            }
        }
        out
    }

    /// The shim daemons of this test (no action word).
    fn daemons(&self) -> Vec<i32> {
        self.shim_processes()
            .into_iter()
            .filter(|(_, a)| !a.last().is_some_and(|l| l == "start" || l == "delete"))
            .map(|(p, _)| p)
            .collect()
    }

    /// Kills the test's shims, runs `delete` for every bundle that still holds something, and
    /// removes shim sockets, mounts, namespaces and cgroups the test's containers left.
    /// Returns what it had to clean up. Never panics (it also runs from Drop).
    fn cleanup(&self) -> Vec<String> {
        let mut found = Vec::new();
        for (pid, args) in self.shim_processes() {
            found.push(format!("shim process {pid}: {}", args.join(" ")));
            // SAFETY: a signal to a process of this test (its unique address is in argv).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_gone(pid, Duration::from_secs(5));
        }
        let bundles = self.bundles.lock().map(|b| b.clone()).unwrap_or_default();
        for (id, dir) in &bundles {
            let netns = Path::new(NETNS_DIR).join(format!("podnet-{id}"));
            let rootfs = dir.join("rootfs");
            let holds = dir.join(podnet_shim::bundle::BUNDLE_RECORD).exists()
                || self.runtime_root().join(id).exists()
                || netns.exists()
                || is_mount_point(&rootfs);
            if holds {
                found.push(format!("container {id} still held resources"));
                if self.node.is_some() && self.events.is_some() {
                    let _ = self.shim_command(id, dir, "delete").output();
                }
                while is_mount_point(&rootfs) {
                    let c = std::ffi::CString::new(rootfs.as_os_str().as_bytes()).expect("path");
                    // SAFETY: a NUL-terminated path.
                    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                        break;
                    }
                }
                if netns.exists() {
                    let _ = podnet_netns::delete(&netns);
                }
            }
            let _ = fs::remove_file(dir.join("log"));
        }
        // The test's cgroups: kill what is in them, then remove them.
        for cg in cgroups_named(&self.marker) {
            found.push(format!("cgroup {}", cg.display()));
            for pid in fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: a process of the test's container.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    wait_gone(pid, Duration::from_secs(2));
                }
            }
            let _ = fs::remove_dir(&cg);
        }
        let mut sockets = self.sockets.lock().map(|s| s.clone()).unwrap_or_default();
        sockets.extend(
            bundles.iter().map(|(id, _)| wire::socket_path(&socket_address(&self.address, &self.namespace, id))),
        );
        sockets.sort();
        sockets.dedup();
        for socket in sockets.iter().filter(|s| s.exists()) {
            found.push(format!("shim socket {}", socket.display()));
            let _ = fs::remove_file(socket);
        }
        found
    }

    /// Checks that the test left nothing: no shim, no runtime state, no socket, and (after the
    /// node namespace is gone) no process, mount, cgroup or namespace.
    fn finish(mut self) {
        let leftovers = self.cleanup();
        assert!(leftovers.is_empty(), "the test left things behind: {leftovers:#?}");
        let state = self.runtime_state();
        assert!(state.is_empty(), "runtime state left in {}: {state:?}", self.runtime_root().display());
        self.events.take();
        self.node.take();
        let before = self.before.take().expect("snapshot");
        leaks::assert_no_leaks(&before, &self.marker);
        eprintln!("test took {:?}", self.started.elapsed());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.before.is_some() {
            let left = self.cleanup();
            if !left.is_empty() {
                eprintln!("cleaned up after a failed test: {left:#?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn connect(socket: &Path) -> Client {
    Client::connect(socket).unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()))
}

fn call<R: Message>(c: &mut Client, method: &str, req: &impl Message) -> Result<R, RpcError> {
    c.call(TASK, method, req, CALL)
}

fn create_req(b: &Bundle) -> CreateTaskRequest {
    let mut r = CreateTaskRequest::new();
    r.id = b.id.clone();
    r.bundle = b.dir.display().to_string();
    r
}

/// A shim started for `b`, its task `id` created from `req` and started, as containerd does:
/// the shim's socket, the daemon's pid, the connection, and the init's pid.
fn create_and_start(env: &Env, b: &Bundle, id: &str, req: &CreateTaskRequest) -> (PathBuf, i32, Client, i32) {
    let (_, socket) = env.start(b);
    let daemon = b.shim_pid().expect("shim.pid");
    let mut c = connect(&socket);
    let created: CreateTaskResponse =
        call(&mut c, "Create", req).unwrap_or_else(|e| panic!("Create: {e}\n{}", b.log()));
    let _: StartResponse = call(&mut c, "Start", &id_req(|r: &mut StartRequest| r.id = id.to_string())).expect("Start");
    (socket, daemon, c, created.pid as i32)
}

fn id_req<R: Message + Default>(set: impl FnOnce(&mut R)) -> R {
    let mut r = R::default();
    set(&mut r);
    r
}

fn state(c: &mut Client, id: &str, exec_id: &str) -> Result<StateResponse, RpcError> {
    call(
        c,
        "State",
        &id_req(|r: &mut StateRequest| {
            r.id = id.into();
            r.exec_id = exec_id.into();
        }),
    )
}

fn shutdown(c: &mut Client, id: &str) {
    let _: Empty = call(c, "Shutdown", &id_req(|r: &mut ShutdownRequest| r.id = id.into())).expect("Shutdown");
}

/// The rootfs mounts containerd would send for a snapshot: here a read-only bind of `source`.
fn bind_rootfs(source: &Path) -> Vec<Mount> {
    let mut m = Mount::new();
    m.type_ = "bind".into();
    m.source = source.display().to_string();
    m.options = vec!["rbind".into(), "ro".into()];
    vec![m]
}

fn alive(pid: i32) -> bool {
    // A zombie is as good as gone for these checks: it holds nothing but its pid.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(true),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `pid` to be gone; whether it is.
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Waits for the shim daemon `pid` to exit and its socket to be removed.
fn assert_shim_exits(pid: i32, socket: &Path, b: &Bundle) {
    assert!(wait_gone(pid, Duration::from_secs(5)), "shim daemon {pid} still runs 5 s after Shutdown\n{}", b.log());
    let removed = podnet_tests::retry(100, Duration::from_millis(10), || !socket.exists());
    assert!(removed, "the shim exited but left its socket {}\n{}", socket.display(), b.log());
}

fn is_mount_point(path: &Path) -> bool {
    let p = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == p))
}

/// Cgroup directories named `<marker>...` at the top of any hierarchy.
fn cgroups_named(marker: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        roots.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()));
    }
    for root in roots {
        if let Ok(rd) = fs::read_dir(&root) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(marker) && e.path().is_dir() {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

/// The cgroup directories of `cgroup_path` ("/x-y") that exist in any hierarchy.
fn cgroup_dirs(cgroup_path: &str) -> Vec<PathBuf> {
    let rel = cgroup_path.trim_start_matches('/');
    let mut out = Vec::new();
    let v2 = Path::new("/sys/fs/cgroup").join(rel);
    if v2.is_dir() {
        out.push(v2);
    }
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let p = e.path().join(rel);
            if !e.path().is_symlink() && p.is_dir() {
                out.push(p);
            }
        }
    }
    out
}

fn assert_event_envelopes(env: &Env, events: &[Event]) {
    for e in events {
        assert_eq!(e.namespace, env.namespace, "envelope namespace of {e:?}");
        assert!(e.has_timestamp, "no timestamp on {e:?}");
        let kind = match e.topic.as_str() {
            "/tasks/create" => "TaskCreate",
            "/tasks/start" => "TaskStart",
            "/tasks/exit" => "TaskExit",
            "/tasks/delete" => "TaskDelete",
            "/tasks/exec-added" => "TaskExecAdded",
            "/tasks/exec-started" => "TaskExecStarted",
            other => panic!("unexpected topic {other}"),
        };
        assert_eq!(e.type_url, format!("containerd.events.{kind}"), "type_url of {}", e.topic);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The whole protocol for one task, and the events it sends.

#[test]
#[ignore = "needs root"]
fn protocol_lifecycle_and_event_order() {
    let env = Env::new();
    let id = unique("life");
    let b = env.bundle(&id, &env.spec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]));
    let (address, socket) = env.start(&b);
    assert_eq!(address, socket_address(&env.address, &env.namespace, &id), "a lone container is its own pod");
    assert_eq!(fs::read_to_string(b.dir.join("address")).unwrap_or_default(), address, "address file in the bundle");
    let daemon = b.shim_pid().expect("start records the daemon's pid in shim.pid");
    assert_eq!(env.daemons(), vec![daemon], "exactly one daemon, the one in shim.pid");
    let mut c = connect(&socket);

    let r: ConnectResponse =
        call(&mut c, "Connect", &id_req(|r: &mut ConnectRequest| r.id = id.clone())).expect("Connect");
    assert_eq!(r.shim_pid, daemon as u32, "Connect names the daemon");
    assert!(!r.version.is_empty(), "Connect reports a version");
    assert_eq!(r.task_pid, 0, "no task yet");

    // stdout and stderr: fifos the test reads, as containerd's client does.
    let (out_fifo, err_fifo) = (env.fifo("stdout"), env.fifo("stderr"));
    let (out_reader, err_reader) = (Reader::open(&out_fifo), Reader::open(&err_fifo));
    let mut req = create_req(&b);
    req.stdout = out_fifo.display().to_string();
    req.stderr = err_fifo.display().to_string();
    let created: CreateTaskResponse =
        call(&mut c, "Create", &req).unwrap_or_else(|e| panic!("Create: {e}\n{}", b.log()));
    let pid = created.pid as i32;
    assert!(pid > 0 && alive(pid), "Create returned pid {pid}");
    assert_eq!(env.events().topics(), ["/tasks/create"], "Create's event is sent before the reply");
    let st = state(&mut c, &id, "").expect("State");
    assert_eq!(st.status.enum_value_or_default(), TaskStatus::CREATED);
    assert_eq!((st.pid, st.id.as_str(), st.bundle.as_str()), (pid as u32, id.as_str(), b.dir.to_str().unwrap()));
    let cg = cgroup_dirs(&env.cgroup(&id));
    assert!(!cg.is_empty(), "the container's cgroup {} exists", env.cgroup(&id));

    let started: StartResponse =
        call(&mut c, "Start", &id_req(|r: &mut StartRequest| r.id = id.clone())).expect("Start");
    assert_eq!(started.pid as i32, pid);
    let waited: WaitResponse = call(&mut c, "Wait", &id_req(|r: &mut WaitRequest| r.id = id.clone())).expect("Wait");
    assert_eq!(waited.exit_status, 3, "Wait returns sh's exit code");
    assert!(waited.exited_at.is_some(), "Wait sets exited_at");

    assert_eq!(
        (out_reader.text().as_str(), err_reader.text().as_str()),
        ("out\n", "err\n"),
        "the process's stdout and stderr"
    );
    let st = state(&mut c, &id, "").expect("State after exit");
    assert_eq!(st.status.enum_value_or_default(), TaskStatus::STOPPED);
    assert_eq!(st.exit_status, 3);
    assert!(st.exited_at.is_some());
    assert_eq!((st.stdout.as_str(), st.stderr.as_str()), (out_fifo.to_str().unwrap(), err_fifo.to_str().unwrap()));

    let deleted: DeleteResponse =
        call(&mut c, "Delete", &id_req(|r: &mut DeleteRequest| r.id = id.clone())).expect("Delete");
    assert_eq!((deleted.exit_status, deleted.pid as i32), (3, pid));
    assert!(deleted.exited_at.is_some());
    let gone = state(&mut c, &id, "").expect_err("State of a deleted task");
    assert_eq!(gone.code, Code::NOT_FOUND, "{gone}");
    assert!(env.runtime_state().is_empty(), "runtime state after Delete: {:?}", env.runtime_state());
    assert!(!b.record().exists(), "Delete removes the bundle record");
    assert!(
        podnet_tests::retry(100, Duration::from_millis(10), || cgroup_dirs(&env.cgroup(&id)).is_empty()),
        "cgroup left after Delete"
    );

    shutdown(&mut c, &id);
    drop(c);
    assert_shim_exits(daemon, &socket, &b);

    let events = env.events().events();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(topics, ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]);
    assert_event_envelopes(&env, &events);
    let create: TaskCreate = events[0].decode();
    assert_eq!(
        (create.container_id.as_str(), create.pid as i32, create.bundle.as_str()),
        (id.as_str(), pid, b.dir.to_str().unwrap())
    );
    let start: TaskStart = events[1].decode();
    assert_eq!((start.container_id.as_str(), start.pid as i32), (id.as_str(), pid));
    let exit: TaskExit = events[2].decode();
    assert_eq!(
        (exit.container_id.as_str(), exit.id.as_str(), exit.pid as i32, exit.exit_status),
        (id.as_str(), id.as_str(), pid, 3)
    );
    assert!(exit.exited_at.is_some());
    let delete: TaskDelete = events[3].decode();
    assert_eq!((delete.container_id.as_str(), delete.pid as i32, delete.exit_status), (id.as_str(), pid, 3));
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// 2. Exec, Kill, Pids, and Shutdown while a task remains.

#[test]
#[ignore = "needs root"]
fn exec_kill_pids_and_early_shutdown() {
    let env = Env::new();
    let id = unique("exec");
    let spec = env.spec(&id, &["sleep", "1000"]);
    let mut process = spec.value()["process"].clone();
    let b = env.bundle(&id, &spec);
    let (socket, daemon, mut c, init) = create_and_start(&env, &b, &id, &create_req(&b));

    process["args"] = json!(["sh", "-c", "exit 5"]);
    let exec_req = |exec_id: &str| {
        id_req(|r: &mut ExecProcessRequest| {
            r.id = id.clone();
            r.exec_id = exec_id.into();
            let mut any = Any::new();
            any.type_url = PROCESS_SPEC_TYPE.into();
            any.value = serde_json::to_vec(&process).expect("process JSON");
            r.spec = Some(any).into();
        })
    };
    let _: Empty = call(&mut c, "Exec", &exec_req("e1")).unwrap_or_else(|e| panic!("Exec: {e}\n{}", b.log()));
    let again = call::<Empty>(&mut c, "Exec", &exec_req("e1")).expect_err("a second exec with the same id");
    assert_eq!(again.code, Code::ALREADY_EXISTS, "{again}");
    let st = state(&mut c, &id, "e1").expect("State of the exec");
    assert_eq!(st.status.enum_value_or_default(), TaskStatus::CREATED);

    let started: StartResponse = call(
        &mut c,
        "Start",
        &id_req(|r: &mut StartRequest| {
            r.id = id.clone();
            r.exec_id = "e1".into();
        }),
    )
    .unwrap_or_else(|e| panic!("Start of the exec: {e}\n{}", b.log()));
    let exec_pid = started.pid as i32;
    assert!(exec_pid > 0 && exec_pid != init, "exec pid {exec_pid} (init {init})");
    let waited: WaitResponse = call(
        &mut c,
        "Wait",
        &id_req(|r: &mut WaitRequest| {
            r.id = id.clone();
            r.exec_id = "e1".into();
        }),
    )
    .expect("Wait for the exec");
    assert_eq!(waited.exit_status, 5);
    let st = state(&mut c, &id, "e1").expect("State of the exited exec");
    assert_eq!((st.status.enum_value_or_default(), st.exit_status, st.pid as i32), (TaskStatus::STOPPED, 5, exec_pid));

    let kill = |exec_id: &str, signal: u32| {
        id_req(|r: &mut KillRequest| {
            r.id = id.clone();
            r.exec_id = exec_id.into();
            r.signal = signal;
        })
    };
    let e = call::<Empty>(&mut c, "Kill", &kill("e1", 15)).expect_err("Kill of an exited exec");
    assert_eq!(e.code, Code::NOT_FOUND, "{e}");
    let pids: PidsResponse = call(&mut c, "Pids", &id_req(|r: &mut PidsRequest| r.id = id.clone())).expect("Pids");
    let listed: Vec<i32> = pids.processes.iter().map(|p| p.pid as i32).collect();
    assert!(listed.contains(&init), "Pids {listed:?} lacks the init {init}");
    assert!(!listed.contains(&exec_pid), "Pids {listed:?} still lists the exited exec {exec_pid}");

    let deleted: DeleteResponse = call(
        &mut c,
        "Delete",
        &id_req(|r: &mut DeleteRequest| {
            r.id = id.clone();
            r.exec_id = "e1".into();
        }),
    )
    .expect("Delete of the exec");
    assert_eq!((deleted.exit_status, deleted.pid as i32), (5, exec_pid));
    let e = call::<DeleteResponse>(
        &mut c,
        "Delete",
        &id_req(|r: &mut DeleteRequest| {
            r.id = id.clone();
            r.exec_id = "e1".into();
        }),
    )
    .expect_err("a second Delete of the exec");
    assert_eq!(e.code, Code::NOT_FOUND, "{e}");

    // containerd may send Shutdown while tasks remain: ignored.
    shutdown(&mut c, &id);
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(daemon), "the shim exited on Shutdown although a task remains\n{}", b.log());
    let mut c2 = connect(&socket);
    let r: ConnectResponse = call(&mut c2, "Connect", &id_req(|r: &mut ConnectRequest| r.id = id.clone()))
        .expect("Connect after an ignored Shutdown");
    assert_eq!((r.shim_pid as i32, r.task_pid as i32), (daemon, init));
    drop(c2);

    let _: Empty = call(&mut c, "Kill", &kill("", 9)).expect("Kill of the init");
    let waited: WaitResponse = call(&mut c, "Wait", &id_req(|r: &mut WaitRequest| r.id = id.clone())).expect("Wait");
    assert_eq!(waited.exit_status, 137);
    let e = call::<Empty>(&mut c, "Kill", &kill("", 9)).expect_err("Kill of the exited init");
    assert_eq!(e.code, Code::NOT_FOUND, "{e}");
    let deleted: DeleteResponse =
        call(&mut c, "Delete", &id_req(|r: &mut DeleteRequest| r.id = id.clone())).expect("Delete");
    assert_eq!(deleted.exit_status, 137);
    shutdown(&mut c, &id);
    drop(c);
    assert_shim_exits(daemon, &socket, &b);

    let events = env.events().events();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_event_envelopes(&env, &events);
    let added: TaskExecAdded = events[2].decode();
    assert_eq!((added.container_id.as_str(), added.exec_id.as_str()), (id.as_str(), "e1"));
    let es: TaskExecStarted = events[3].decode();
    assert_eq!((es.container_id.as_str(), es.exec_id.as_str(), es.pid as i32), (id.as_str(), "e1", exec_pid));
    let exit: TaskExit = events[4].decode();
    assert_eq!(
        (exit.container_id.as_str(), exit.id.as_str(), exit.pid as i32, exit.exit_status),
        (id.as_str(), "e1", exec_pid, 5)
    );
    let exit: TaskExit = events[5].decode();
    assert_eq!((exit.id.as_str(), exit.pid as i32, exit.exit_status), (id.as_str(), init, 137));
    env.finish();
}

/// A task deleted before it was started: a pending Wait is answered, and containerd still gets
/// the task's exit before its delete.
#[test]
#[ignore = "needs root"]
fn delete_of_a_created_task_answers_its_waiter() {
    let env = Env::new();
    let id = unique("unstarted");
    let b = env.bundle(&id, &env.spec(&id, &["sleep", "1000"]));
    let (_, socket) = env.start(&b);
    let daemon = b.shim_pid().expect("shim.pid");
    let mut c = connect(&socket);
    let created: CreateTaskResponse =
        call(&mut c, "Create", &create_req(&b)).unwrap_or_else(|e| panic!("Create: {e}\n{}", b.log()));
    let pid = created.pid as i32;
    // Wait on a second connection, as containerd does: it is answered when the task goes.
    let mut waiter = connect(&socket);
    let wid = id.clone();
    let wait = std::thread::spawn(move || {
        call::<WaitResponse>(&mut waiter, "Wait", &id_req(|r: &mut WaitRequest| r.id = wid))
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(!wait.is_finished(), "Wait returned for a task that never ran");
    let deleted: DeleteResponse = call(&mut c, "Delete", &id_req(|r: &mut DeleteRequest| r.id = id.clone()))
        .unwrap_or_else(|e| panic!("Delete of a created task: {e}\n{}", b.log()));
    assert_eq!(deleted.pid as i32, pid);
    let waited = wait.join().expect("wait thread").unwrap_or_else(|e| panic!("Wait: {e}\n{}", b.log()));
    assert_eq!(waited.exit_status, deleted.exit_status, "Wait and Delete report the same exit");
    assert!(wait_gone(pid, Duration::from_secs(5)), "the created process {pid} survived Delete");
    shutdown(&mut c, &id);
    drop(c);
    assert_shim_exits(daemon, &socket, &b);
    let events = env.events().events();
    let topics: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
    assert_eq!(topics, ["/tasks/create", "/tasks/exit", "/tasks/delete"]);
    assert_event_envelopes(&env, &events);
    let exit: TaskExit = events[1].decode();
    assert_eq!((exit.id.as_str(), exit.pid as i32, exit.exit_status), (id.as_str(), pid, deleted.exit_status));
    env.finish();
}

/// CRI's sandbox container whose rootfs has no pause binary (the pinned pause image is
/// accepted, not required): the shim runs its embedded pause with the rest of the spec.
#[test]
#[ignore = "needs root"]
fn a_sandbox_without_a_pause_binary_runs_the_embedded_pause() {
    let env = Env::new();
    let id = unique("sbx");
    let empty = env.dir.path().join("empty-root");
    fs::create_dir_all(&empty).expect("empty rootfs");
    let spec = Spec::new(&empty, &["/pause"])
        .remove_namespace("network")
        .cgroups_path(&env.cgroup(&id))
        .annotation("io.kubernetes.cri.container-type", "sandbox")
        .annotation("io.kubernetes.cri.sandbox-id", &id);
    let b = env.bundle(&id, &spec);
    let (_, socket) = env.start(&b);
    let daemon = b.shim_pid().expect("shim.pid");
    let mut c = connect(&socket);
    let created: CreateTaskResponse =
        call(&mut c, "Create", &create_req(&b)).unwrap_or_else(|e| panic!("Create: {e}\n{}", b.log()));
    let started: StartResponse = call(&mut c, "Start", &id_req(|r: &mut StartRequest| r.id = id.clone()))
        .unwrap_or_else(|e| panic!("Start: {e}\n{}", b.log()));
    let pid = started.pid as i32;
    assert_eq!(pid, created.pid as i32, "StartResponse.pid is the pause's pid");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    assert!(exe.to_string_lossy().contains(".podnet-pause"), "the sandbox runs the embedded pause, not {exe:?}");
    assert!(b.log().contains("embedded pause"), "the shim says why: {}", b.log());
    // A SIGTERM that reaches the pause (its pid namespace's init) before it blocks the signal
    // is dropped by the kernel: wait until it waits for signals.
    let waiting = || fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default().contains("sigtimedwait");
    assert!(podnet_tests::retry(500, Duration::from_millis(10), waiting), "the pause never waited for signals");
    let _: Empty = call(
        &mut c,
        "Kill",
        &id_req(|r: &mut KillRequest| {
            r.id = id.clone();
            r.signal = libc::SIGTERM as u32;
        }),
    )
    .expect("Kill");
    let waited: WaitResponse = call(&mut c, "Wait", &id_req(|r: &mut WaitRequest| r.id = id.clone())).expect("Wait");
    assert_eq!(waited.exit_status, 0, "the pause exits 0 on SIGTERM");
    let _: DeleteResponse = call(&mut c, "Delete", &id_req(|r: &mut DeleteRequest| r.id = id.clone())).expect("Delete");
    shutdown(&mut c, &id);
    drop(c);
    assert_shim_exits(daemon, &socket, &b);
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. Pod grouping: one shim per pod.

#[test]
#[ignore = "needs root"]
fn grouped_containers_share_one_shim() {
    let env = Env::new();
    let (a, bb, other) = (unique("ga"), unique("gb"), unique("gc"));
    let ba = env.bundle(&a, &env.spec(&a, &["true"]).annotation("podnet.io/pod", "grp"));
    let bb = env.bundle(&bb, &env.spec(&bb, &["true"]).annotation("podnet.io/pod", "grp"));
    let bc = env.bundle(&other, &env.spec(&other, &["true"]));

    let (addr_a, sock_a) = env.start(&ba);
    let (addr_b, _) = env.start(&bb);
    assert_eq!(addr_a, addr_b, "two containers of one pod get one shim");
    assert_eq!(
        addr_a,
        socket_address(&env.address, &env.namespace, "grp"),
        "the pod's address comes from the annotation"
    );
    let (addr_c, sock_c) = env.start(&bc);
    assert_ne!(addr_c, addr_a, "a container of no pod gets its own shim");
    assert_eq!(addr_c, socket_address(&env.address, &env.namespace, &other));
    for (b, addr) in [(&ba, &addr_a), (&bb, &addr_a), (&bc, &addr_c)] {
        assert_eq!(&fs::read_to_string(b.dir.join("address")).unwrap_or_default(), addr, "address file of {}", b.id);
    }

    let pid_a = ba.shim_pid().expect("the first start spawns the pod's shim");
    assert_eq!(bb.shim_pid(), None, "the second start joins the running shim instead of spawning one");
    let pid_c = bc.shim_pid().expect("the third start spawns another shim");
    let mut daemons = env.daemons();
    daemons.sort();
    let mut want = vec![pid_a, pid_c];
    want.sort();
    assert_eq!(daemons, want, "one daemon per pod: {:?}", env.shim_processes());

    // start again for a member of the running pod: same address, still one daemon for it.
    let (again, _) = env.start(&bb);
    assert_eq!(again, addr_a);
    assert_eq!(env.daemons().len(), 2, "{:?}", env.shim_processes());

    for (b, sock, pid) in [(&ba, &sock_a, pid_a), (&bc, &sock_c, pid_c)] {
        let mut c = connect(sock);
        let r: ConnectResponse =
            call(&mut c, "Connect", &id_req(|r: &mut ConnectRequest| r.id = b.id.clone())).expect("Connect");
        assert_eq!(r.shim_pid as i32, pid);
        shutdown(&mut c, &b.id);
        drop(c);
        assert_shim_exits(pid, sock, b);
    }
    assert!(env.events().topics().is_empty(), "no task, no event");
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// 4. Bad input: Create is refused with a message naming the problem, and nothing is left.

/// Starts a shim for `b`, runs `prepare`, sends Create (with `options`), which must fail;
/// checks that no create event went out and nothing of the container is left, then shuts the
/// shim down and waits for it to exit. Returns the error.
fn refused_create(env: &Env, b: &Bundle, options: Option<Any>, rootfs: Vec<Mount>, prepare: impl FnOnce()) -> RpcError {
    let (_, socket) = env.start(b);
    let daemon = b.shim_pid().expect("shim.pid");
    prepare();
    let mut c = connect(&socket);
    let mut req = create_req(b);
    req.options = options.into();
    req.rootfs = rootfs;
    let err = match call::<CreateTaskResponse>(&mut c, "Create", &req) {
        Ok(r) => panic!("Create of {} succeeded (pid {})\n{}", b.id, r.pid, b.log()),
        Err(e) => e,
    };
    eprintln!("{}: refused: {err}", b.id);
    assert!(!err.message.is_empty());
    assert!(
        !env.events().topics().iter().any(|t| t == "/tasks/create"),
        "a create event for a refused Create: {:?}",
        env.events().topics()
    );
    let st = state(&mut c, &b.id, "").expect_err("State of a refused task");
    assert_eq!(st.code, Code::NOT_FOUND, "{st}");
    assert!(env.runtime_state().is_empty(), "runtime state left by a refused Create: {:?}", env.runtime_state());
    assert!(!b.record().exists(), "bundle record left by a refused Create");
    assert!(
        !Path::new(NETNS_DIR).join(format!("podnet-{}", b.id)).exists(),
        "network namespace left by a refused Create"
    );
    assert!(cgroup_dirs(&env.cgroup(&b.id)).is_empty(), "cgroup left by a refused Create");
    assert!(!is_mount_point(&b.dir.join("rootfs")), "rootfs left mounted by a refused Create");
    shutdown(&mut c, &b.id);
    drop(c);
    assert_shim_exits(daemon, &socket, b);
    err
}

#[test]
#[ignore = "needs root"]
fn refuses_corrupt_config_json() {
    let env = Env::new();
    let id = unique("badjson");
    let b = env.bundle(&id, &env.spec(&id, &["true"]));
    let config = b.dir.join("config.json");
    let err = refused_create(&env, &b, None, Vec::new(), || {
        let text = fs::read_to_string(&config).expect("config.json");
        fs::write(&config, &text[..text.len() / 2]).expect("truncating config.json");
    });
    assert_eq!(err.code, Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains(&config.display().to_string()), "the message names config.json: {err}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn refuses_a_field_of_the_wrong_type() {
    let env = Env::new();
    let id = unique("badfield");
    let mut spec = env.spec(&id, &["true"]);
    spec.value_mut()["process"]["args"] = json!("sh");
    let b = env.bundle(&id, &spec);
    let err = refused_create(&env, &b, None, Vec::new(), || {});
    assert_eq!(err.code, Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("process.args"), "the message names the field: {err}");
    assert!(err.message.contains("config.json"), "the message names the file: {err}");

    // The same with the rootfs as mounts: the shim mounts them first and must undo that.
    let id = unique("badfieldm");
    let mut spec = Spec::new(Path::new("rootfs"), &["true"]).remove_namespace("network").cgroups_path(&env.cgroup(&id));
    spec.value_mut()["process"]["args"] = json!("sh");
    let b = env.bundle(&id, &spec);
    let err = refused_create(&env, &b, None, bind_rootfs(&shared_busybox_rootfs()), || {});
    assert!(err.message.contains("process.args"), "the message names the field: {err}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn refuses_unknown_options_type() {
    let env = Env::new();
    let id = unique("badopts");
    let b = env.bundle(&id, &env.spec(&id, &["true"]));
    let mut any = Any::new();
    any.type_url = "containerd.runc.v1.Options".into();
    let err = refused_create(&env, &b, Some(any), Vec::new(), || {});
    assert_eq!(err.code, Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains("containerd.runc.v1.Options"), "the message names the type: {err}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn refuses_a_missing_config_path() {
    let env = Env::new();
    let id = unique("badcfg");
    let b = env.bundle(&id, &env.spec(&id, &["true"]));
    let missing = env.dir.path().join("no-such-podnet.toml");
    let opts = RuntimeOptions { config_path: missing.display().to_string(), ..Default::default() };
    let err = refused_create(&env, &b, Some(opts.encode()), Vec::new(), || {});
    assert_eq!(err.code, Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains(&missing.display().to_string()), "the message names the path: {err}");
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn refuses_a_missing_rootfs() {
    let env = Env::new();
    let id = unique("badroot");
    let missing = format!("/nonexistent/podnet-rootfs-{id}");
    let mut spec = env.spec(&id, &["true"]);
    spec.value_mut()["root"]["path"] = json!(missing);
    let b = env.bundle(&id, &spec);
    let err = refused_create(&env, &b, None, Vec::new(), || {});
    assert_eq!(err.code, Code::INVALID_ARGUMENT, "{err}");
    assert!(err.message.contains(&missing), "the message names the rootfs: {err}");
    assert!(err.message.contains("root.path"), "the message names the field: {err}");

    // A rootfs mount whose source does not exist.
    let id = unique("badmnt");
    let spec = Spec::new(Path::new("rootfs"), &["true"]).remove_namespace("network").cgroups_path(&env.cgroup(&id));
    let b = env.bundle(&id, &spec);
    let err = refused_create(&env, &b, None, bind_rootfs(Path::new(&missing)), || {});
    assert!(err.message.contains(&missing), "the message names the mount source: {err}");
    assert!(err.message.contains(&b.dir.join("rootfs").display().to_string()), "the message names the target: {err}");
    env.finish();
}

/// A conflist of type podnet for the test's node: bridge `bridge`, subnet `subnet`, IPAM data
/// and attachment records in the test's scratch dir.
fn conflist(env: &Env, net: &str, bridge: &str, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": net,
        "plugins": [{
            "type": "podnet",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "stateDir": env.dir.path().join("cni").display().to_string(),
            "ipam": {
                "type": "host-local",
                "dataDir": env.ipam_dir().display().to_string(),
                "ranges": [[{ "subnet": subnet }]]
            }
        }]
    })
}

/// A bridge name (at most 15 bytes) unique to this process and call.
fn bridge_name() -> String {
    let n = unique("");
    format!("pd{}", &n[n.len().saturating_sub(12)..])
}

#[test]
#[ignore = "needs root"]
fn refused_network_sandboxes_release_the_network() {
    let env = Env::new();
    let conf = env.conf_dir().join("10-test.conflist");
    let net = "pdbad";
    let bridge = bridge_name();
    let good = conflist(&env, net, &bridge, "10.213.1.0/24");
    // Each case: the conflist text, and what the message must say besides the file.
    let mut unknown_type = good.clone();
    unknown_type["plugins"].as_array_mut().unwrap().push(json!({"type": "no-such-plugin"}));
    let mut bad_route = good.clone();
    bad_route["plugins"][0]["ipam"]["routes"] = json!([{ "dst": "10.99.0.0/16", "gw": "192.0.2.1" }]);
    let cases = [
        ("unparsable JSON", "{\"cniVersion\": \"1.1.0\", \"name\": ".to_string(), "invalid JSON"),
        ("a plugin type podnet does not run", unknown_type.to_string(), "no-such-plugin"),
        // ADD fails after the IP was reserved and the veth made: both must be undone.
        ("a route through an unreachable gateway", bad_route.to_string(), "10.99.0.0/16"),
    ];
    for (what, text, needle) in cases {
        fs::write(&conf, text).expect("writing the conflist");
        let id = unique("badnet");
        // A sandbox that asks for a new network namespace: the shim sets its network up.
        let spec = Spec::new(&shared_busybox_rootfs(), &["true"]).cgroups_path(&env.cgroup(&id));
        let b = env.bundle(&id, &spec);
        let err = refused_create(&env, &b, None, Vec::new(), || {});
        assert!(err.message.contains(&conf.display().to_string()), "{what}: the message names the conflist: {err}");
        assert!(err.message.contains(needle), "{what}: the message says {needle:?}: {err}");
        assert!(!Path::new(NETNS_DIR).join(format!("podnet-{id}")).exists(), "{what}: network namespace left");
        assert_eq!(reservations(&env.ipam_dir(), net), Vec::<String>::new(), "{what}: IP reservation left");
        assert_eq!(podnet_veths(env.node()), Vec::<String>::new(), "{what}: host veth left");
        assert_eq!(tagged_rules(env.node(), &format!("podnet/{net}/")), Vec::<String>::new(), "{what}: nft rules left");
    }

    // A good network, and a container the runtime refuses after the network was set up: the
    // network is released again.
    fs::write(&conf, good.to_string()).expect("writing the conflist");
    {
        let what = "a bad spec after the network was set up";
        let needle = "process.args";
        let id = unique("badnet");
        let mut spec = Spec::new(&shared_busybox_rootfs(), &["true"]).cgroups_path(&env.cgroup(&id));
        spec.value_mut()["process"]["args"] = json!("sh");
        let b = env.bundle(&id, &spec);
        let err = refused_create(&env, &b, None, Vec::new(), || {});
        assert!(err.message.contains(needle), "{what}: the message says {needle:?}: {err}");
        assert!(b.log().contains("pod network set up"), "{what}: the network was never set up\n{}", b.log());
        assert!(!Path::new(NETNS_DIR).join(format!("podnet-{id}")).exists(), "{what}: network namespace left");
        assert_eq!(reservations(&env.ipam_dir(), net), Vec::<String>::new(), "{what}: IP reservation left");
        assert_eq!(podnet_veths(env.node()), Vec::<String>::new(), "{what}: host veth left");
        assert_eq!(tagged_rules(env.node(), &format!("podnet/{net}/")), Vec::<String>::new(), "{what}: nft rules left");
    }
    env.finish();
}

#[test]
#[ignore = "needs root"]
fn start_fails_without_a_usable_config_json() {
    let env = Env::new();
    // No config.json at all.
    let id = unique("noconf");
    let b = env.bundle(&id, &env.spec(&id, &["true"]));
    fs::remove_file(b.dir.join("config.json")).expect("removing config.json");
    let out = env.run_shim(&id, &b.dir, "start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start without config.json succeeded: {out:?}");
    assert!(stderr.contains("config.json"), "stderr names config.json: {stderr}");
    assert!(out.stdout.is_empty(), "start printed an address although it failed: {out:?}");
    // Invalid JSON.
    let id2 = unique("badconf");
    let b2 = env.bundle(&id2, &env.spec(&id2, &["true"]));
    fs::write(b2.dir.join("config.json"), "{\"ociVersion\": ").expect("corrupting config.json");
    let out = env.run_shim(&id2, &b2.dir, "start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start with corrupt config.json succeeded: {out:?}");
    assert!(stderr.contains(&b2.dir.join("config.json").display().to_string()), "stderr names config.json: {stderr}");
    // Neither spawned a shim nor left a socket.
    assert!(env.shim_processes().is_empty(), "{:?}", env.shim_processes());
    for i in [&id, &id2] {
        let socket = wire::socket_path(&socket_address(&env.address, &env.namespace, i));
        assert!(!socket.exists(), "{} left by a failed start", socket.display());
    }
    assert!(b.shim_pid().is_none() && b2.shim_pid().is_none());
    env.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. `delete` after the daemon was SIGKILLed.

#[test]
#[ignore = "needs root"]
fn delete_cleans_up_after_a_killed_shim() {
    let env = Env::new();
    let net = "pddel";
    let conf = env.conf_dir().join("10-test.conflist");
    fs::write(&conf, conflist(&env, net, &bridge_name(), "10.213.2.0/24").to_string()).expect("conflist");
    let id = unique("del");
    // A lone sandbox with a network namespace of its own (the shim makes it), its rootfs a
    // read-only bind mount containerd would have made from a snapshot.
    let mut spec = Spec::new(Path::new("rootfs"), &["sleep", "1000"]).cgroups_path(&env.cgroup(&id));
    spec.value_mut()["root"]["readonly"] = json!(true);
    let b = env.bundle(&id, &spec);
    let rootfs = b.dir.join("rootfs");
    let mut req = create_req(&b);
    req.rootfs = bind_rootfs(&shared_busybox_rootfs());
    let (socket, daemon, c, pid) = create_and_start(&env, &b, &id, &req);
    drop(c);

    let netns = Path::new(NETNS_DIR).join(format!("podnet-{id}"));
    assert!(netns.exists(), "{} after Create", netns.display());
    let ips = reservations(&env.ipam_dir(), net);
    assert_eq!(ips.len(), 1, "one IP reserved: {ips:?}");
    assert!(ips[0].starts_with("10.213.2."), "{ips:?}");
    let held = fs::read_to_string(env.ipam_dir().join(net).join(&ips[0])).unwrap_or_default();
    assert!(held.starts_with(&id), "reservation {} holds {held:?}", ips[0]);
    assert!(is_mount_point(&rootfs), "the rootfs is mounted on {}", rootfs.display());
    assert!(b.record().exists(), "the bundle record exists");
    let cg = cgroup_dirs(&env.cgroup(&id));
    assert!(!cg.is_empty(), "the container's cgroup exists");
    assert!(alive(pid));
    let container_net = fs::read_link(format!("/proc/{pid}/ns/net")).expect("container netns").display().to_string();
    let pinned = fs::metadata(&netns).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
    assert_eq!(container_net, format!("net:[{pinned}]"), "the container lives in the shim's pod netns");

    // SAFETY: the test's own shim daemon.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    assert!(wait_gone(daemon, Duration::from_secs(5)), "the daemon survived SIGKILL");
    assert!(alive(pid), "the container outlives its shim");

    let t = Instant::now();
    let out = env.run_shim(&id, &b.dir, "delete");
    eprintln!("delete took {:?}", t.elapsed());
    assert!(out.status.success(), "delete failed: {}", String::from_utf8_lossy(&out.stderr));
    let resp = DeleteResponse::parse_from_bytes(&out.stdout)
        .unwrap_or_else(|e| panic!("delete's stdout is no DeleteResponse ({e}): {:?}", out.stdout));
    assert_eq!(resp.exit_status, 137, "{resp:?}");
    assert!(resp.exited_at.is_some(), "{resp:?}");

    assert!(wait_gone(pid, Duration::from_secs(5)), "the container process {pid} survived delete");
    assert!(
        podnet_tests::retry(200, Duration::from_millis(10), || cgroup_dirs(&env.cgroup(&id)).is_empty()),
        "cgroup left: {:?}",
        cgroup_dirs(&env.cgroup(&id))
    );
    assert_eq!(reservations(&env.ipam_dir(), net), Vec::<String>::new(), "IP reservation left");
    assert!(!netns.exists(), "{} left", netns.display());
    assert!(!is_mount_point(&rootfs), "rootfs still mounted");
    assert!(!b.record().exists(), "bundle record left");
    assert!(env.runtime_state().is_empty(), "runtime state left: {:?}", env.runtime_state());
    assert_eq!(podnet_veths(env.node()), Vec::<String>::new(), "host veth left");
    assert_eq!(tagged_rules(env.node(), &format!("podnet/{net}/")), Vec::<String>::new(), "nft rules left");

    let out = env.run_shim(&id, &b.dir, "delete");
    assert!(out.status.success(), "a second delete failed: {}", String::from_utf8_lossy(&out.stderr));
    DeleteResponse::parse_from_bytes(&out.stdout).expect("the second delete prints a DeleteResponse too");

    // A killed shim cannot remove its socket; the next `start` for the pod replaces it (as
    // containerd's runc shim does). The test removes it.
    let _ = fs::remove_file(&socket);
    let events = env.events().topics();
    assert_eq!(events, ["/tasks/create", "/tasks/start"]);
    env.finish();
}

/// The engine's attachment records of network `net` under the test conflist's stateDir.
fn attachment_records(env: &Env, net: &str) -> Vec<String> {
    let dir = env.dir.path().join("cni").join(net);
    podnet_tests::files_in(&dir).into_iter().filter(|f| !f.starts_with('.')).collect()
}

/// A dead shim's `delete` whose bundle record is corrupt (a torn write, a full disk): the error
/// names the record, and the pod's network is still released from what is known without it
/// (the default network's attachment record, the namespace `podnet-<id>`), with the container.
#[test]
#[ignore = "needs root"]
fn delete_with_a_corrupt_bundle_record_names_it_and_still_releases_the_network() {
    let env = Env::new();
    let net = "pdcor";
    let mut list = conflist(&env, net, &bridge_name(), "10.213.3.0/24");
    list["plugins"][0]["capabilities"] = json!({"portMappings": true});
    fs::write(env.conf_dir().join("10-test.conflist"), list.to_string()).expect("conflist");
    let id = unique("cor");
    let spec = Spec::new(&shared_busybox_rootfs(), &["sleep", "1000"])
        .cgroups_path(&env.cgroup(&id))
        .annotation("podnet.io/ports", "18080:80/tcp");
    let b = env.bundle(&id, &spec);
    let (socket, daemon, c, pid) = create_and_start(&env, &b, &id, &create_req(&b));
    drop(c);
    let netns = Path::new(NETNS_DIR).join(format!("podnet-{id}"));
    assert!(netns.exists(), "{} after Create", netns.display());
    assert_eq!(reservations(&env.ipam_dir(), net).len(), 1, "one IP reserved");
    assert_eq!(podnet_veths(env.node()).len(), 1, "one host veth");
    let rules = tagged_rules(env.node(), &format!("podnet/{net}/"));
    assert!(rules.iter().any(|r| r.contains("18080")), "a hostPort rule: {rules:#?}");
    assert_eq!(attachment_records(&env, net).len(), 1, "one attachment record");

    // SAFETY: the test's own shim daemon.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    assert!(wait_gone(daemon, Duration::from_secs(5)), "the daemon survived SIGKILL");
    fs::write(b.record(), b"{\"runtime_root\": \"/run/po").expect("corrupting the bundle record");

    let out = env.run_shim(&id, &b.dir, "delete");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "delete with a corrupt record succeeded: {out:?}");
    assert!(stderr.contains(&b.record().display().to_string()), "the error names the record: {stderr}");
    assert!(wait_gone(pid, Duration::from_secs(5)), "the container process {pid} survived delete");
    assert!(
        podnet_tests::retry(200, Duration::from_millis(10), || cgroup_dirs(&env.cgroup(&id)).is_empty()),
        "cgroup left: {:?}",
        cgroup_dirs(&env.cgroup(&id))
    );
    assert!(env.runtime_state().is_empty(), "runtime state left: {:?}", env.runtime_state());
    assert!(!netns.exists(), "{} left", netns.display());
    assert_eq!(reservations(&env.ipam_dir(), net), Vec::<String>::new(), "IP reservation left");
    assert_eq!(podnet_veths(env.node()), Vec::<String>::new(), "host veth left");
    assert_eq!(tagged_rules(env.node(), &format!("podnet/{net}/")), Vec::<String>::new(), "nft rules left");
    assert_eq!(attachment_records(&env, net), Vec::<String>::new(), "attachment record left");
    assert!(!socket.exists(), "the dead shim's socket {} left", socket.display());
    // The unreadable record stays for whoever looks into it; a second delete says so again.
    assert!(b.record().exists(), "the corrupt record was removed");
    let again = env.run_shim(&id, &b.dir, "delete");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("corrupt"), "{again:?}");
    fs::remove_file(b.record()).expect("removing the corrupt record");
    assert_eq!(env.events().topics(), ["/tasks/create", "/tasks/start"]);
    env.finish();
}
