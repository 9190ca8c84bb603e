//! Fixtures for the runtime's root tests: a runtime with its own state directory, a network
//! namespace the containers live in, bundles from the busybox rootfs, fifos like the ones
//! containerd passes, and the leak check around it all.
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use podnet_runtime::oci_spec::runtime::Process as OciProcess;
use podnet_runtime::{Container, Runtime, StdioConfig};

use crate::leaks::{self, Snapshot};
use crate::oci::{shared_busybox_rootfs, Spec};
use crate::{unique, Ns, TempDir};

/// One test's world. Holds the leak checker's lock; `finish` checks nothing was left.
pub struct RtEnv {
    pub runtime: Runtime,
    /// The network namespace containers are put in (no route out).
    pub ns: Ns,
    pub dir: TempDir,
    /// Part of every cgroup path the test's containers use.
    pub marker: String,
    before: Option<Snapshot>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl RtEnv {
    pub fn new(prefix: &str) -> RtEnv {
        crate::require_root();
        let serial = leaks::serial();
        let marker = unique(&format!("pn{prefix}"));
        // The rootfs is built before the snapshot (it is shared and stays).
        shared_busybox_rootfs();
        let before = Snapshot::take(&marker);
        let dir = TempDir::new(&format!("rt-{prefix}"));
        let runtime = Runtime::new(dir.path().join("root")).expect("runtime root");
        let ns = Ns::new("rt");
        RtEnv { runtime, ns, dir, marker, before: Some(before), _serial: serial }
    }

    /// A busybox spec running `args`, in the test's network namespace, with a cgroup path
    /// that carries the marker.
    pub fn spec(&self, args: &[&str]) -> Spec {
        Spec::new(&shared_busybox_rootfs(), args).namespace("network", Some(&self.ns.path)).cgroups_path(&format!(
            "/{}-{}",
            self.marker,
            unique("c")
        ))
    }

    /// Writes `spec` as a bundle in a fresh directory and returns the bundle directory.
    /// Also waits for the test process's other threads to be parked (see `quiesce`): a
    /// bundle is written right before a create.
    pub fn bundle(&self, spec: &Spec) -> PathBuf {
        let dir = self.dir.path().join(unique("bundle"));
        std::fs::create_dir_all(&dir).expect("bundle dir");
        spec.write_bundle(&dir);
        quiesce();
        dir
    }

    /// A cgroup path for a pod's sandbox.
    pub fn cgroup(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/{}-{name}", self.marker))
    }

    /// A fifo in the test directory, as containerd makes them.
    pub fn fifo(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(unique(name));
        let c = CString::new(p.as_os_str().as_bytes()).expect("fifo path");
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", p.display());
        p
    }

    /// Runs `args` as exec `id` of the running container `c` with `spec`'s process (what
    /// containerd sends: the container's process with other args), stdout and stderr on one
    /// fifo; returns the exit code and the output.
    pub fn exec_output(&self, c: &Container, spec: &Spec, id: &str, args: &[&str]) -> (i32, String) {
        let out = self.fifo(id);
        let reader = Reader::open(&out);
        quiesce();
        let stdio = StdioConfig { stdout: Some(out.clone()), stderr: Some(out), ..Default::default() };
        let exec =
            c.exec(id, &exec_process(spec, args), stdio, &self.runtime).unwrap_or_else(|e| panic!("exec {id}: {e}"));
        let exit = exec.wait().expect("wait exec");
        c.remove_exec(id).expect("remove exec");
        (exit.code, reader.text())
    }

    /// Checks that nothing the test created is left (processes, mounts, cgroups, namespaces).
    pub fn finish(mut self) {
        let before = self.before.take().expect("snapshot");
        let marker = self.marker.clone();
        // The runtime's state directory must be empty but for the pause's files.
        let left: Vec<_> = std::fs::read_dir(self.runtime.root())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let left: Vec<_> = left.into_iter().filter(|n| !n.starts_with('.')).collect();
        assert!(left.is_empty(), "runtime state left behind: {left:?}");
        // Everything but the serial lock goes before the check; the lock after it, so the next
        // test cannot start containers while this one is being checked.
        let RtEnv { runtime, ns, dir, _serial, .. } = self;
        drop((runtime, ns, dir));
        leaks::assert_no_leaks(&before, &marker);
        drop(_serial);
    }
}

/// `spec`'s process with other args: what containerd sends for an exec.
pub fn exec_process(spec: &Spec, args: &[&str]) -> OciProcess {
    let mut p = spec.value()["process"].clone();
    p["args"] = serde_json::json!(args);
    serde_json::from_value(p).expect("process JSON")
}

/// Waits until every other thread of the test process is parked (in a futex or poll wait) and
/// the set of threads is stable. libcontainer clones the calling process with a raw clone3 and
/// its helper exits through `std::process::exit`, which takes a lock of the Rust runtime's
/// thread registry; a test-harness thread starting or ending at the moment of the clone would
/// leave that lock held in the helper, which then never exits. Test code only: the shim has
/// no such thread churn.
pub fn quiesce() {
    let me = unsafe { libc::gettid() };
    let parked = || -> Option<Vec<i32>> {
        let mut tids = Vec::new();
        for e in std::fs::read_dir("/proc/self/task").ok()?.filter_map(|e| e.ok()) {
            let tid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            if tid == me {
                continue;
            }
            let wchan = std::fs::read_to_string(e.path().join("wchan")).unwrap_or_default();
            if !(wchan.contains("futex") || wchan.contains("poll")) {
                return None;
            }
            tids.push(tid);
        }
        tids.sort();
        Some(tids)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(a) = parked() {
            std::thread::sleep(std::time::Duration::from_millis(5));
            if parked() == Some(a) {
                return;
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    eprintln!("warning: other threads of the test process never settled; creating anyway");
}

/// Reads a fifo (or pipe) to EOF on a thread, as containerd's client does: opened before the
/// container is created, without blocking.
pub struct Reader(JoinHandle<Vec<u8>>);

impl Reader {
    pub fn open(path: &Path) -> Reader {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Reader(std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let mut p = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&f), events: libc::POLLIN, revents: 0 };
                unsafe { libc::poll(&mut p, 1, -1) };
                match f.read(&mut buf) {
                    Ok(0) => {
                        // EOF once a writer has come and gone (POLLHUP); before that, keep waiting.
                        if p.revents & libc::POLLHUP != 0 {
                            return out;
                        }
                    }
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => return out,
                    Err(e) => panic!("reading fifo: {e}"),
                }
            }
        }))
    }

    /// Everything written until the last writer closed.
    pub fn text(self) -> String {
        String::from_utf8_lossy(&self.0.join().expect("reader thread")).into_owned()
    }
}

/// Opens a fifo for writing (the runtime holds its read side open).
pub fn writer(path: &Path) -> File {
    OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()))
}

pub fn write_line(f: &mut File, line: &str) {
    f.write_all(line.as_bytes()).expect("write fifo");
    f.write_all(b"\n").expect("write fifo");
}

/// A pod as the shim keeps one: the pause sandbox, and app containers created with its join
/// handle (container mode). Deleting it deletes every member, then the sandbox, whatever fails
/// on the way.
pub struct Pod {
    sandbox: Container,
    members: std::sync::Mutex<Vec<std::sync::Arc<Container>>>,
}

/// Creates the pod `id` (its pause sandbox); `start` runs the pause.
pub fn create_pod(runtime: &Runtime, id: &str, cfg: &podnet_runtime::SandboxConfig) -> podnet_runtime::Result<Pod> {
    Ok(Pod { sandbox: runtime.create_sandbox(id, cfg)?, members: Default::default() })
}

impl Pod {
    pub fn sandbox(&self) -> &Container {
        &self.sandbox
    }

    pub fn start(&self) -> podnet_runtime::Result<()> {
        self.sandbox.start()
    }

    /// Creates an app container from `bundle` joined to the pod's namespaces.
    pub fn create_container(
        &self,
        runtime: &Runtime,
        id: &str,
        bundle: &Path,
        stdio: StdioConfig,
    ) -> podnet_runtime::Result<std::sync::Arc<Container>> {
        let handle =
            self.sandbox.sandbox_handle().ok_or_else(|| podnet_runtime::Error::Unsupported("not a sandbox".into()))?;
        let opts = podnet_runtime::CreateOptions { stdio, sandbox: Some(handle), ..Default::default() };
        let c = std::sync::Arc::new(runtime.create(id, bundle, opts)?);
        self.members.lock().unwrap_or_else(|p| p.into_inner()).push(c.clone());
        Ok(c)
    }

    /// Deletes the member `id` and forgets it.
    pub fn delete_container(&self, id: &str) -> podnet_runtime::Result<()> {
        let c = {
            let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let i = m.iter().position(|c| c.id() == id).unwrap_or_else(|| panic!("{id} is not in the pod"));
            m.remove(i)
        };
        c.delete().map(|_| ())
    }

    /// Deletes every member, then the sandbox; reports every failure.
    pub fn delete(&self) -> podnet_runtime::Result<()> {
        let mut errs = podnet_runtime::error::Errors::new();
        let members: Vec<_> = self.members.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for c in members {
            errs.push(c.delete().map(drop));
        }
        errs.push(self.sandbox.delete().map(drop));
        errs.into_result()
    }
}
