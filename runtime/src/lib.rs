//! podnet's container runtime: OCI containers on libcontainer (youki), the pod's pause
//! sandbox, and app containers joined to it in container mode. The shim drives it; it has no
//! containerd or protobuf types.
//!
//! Process model: every container init and exec'd process is a child of the calling process,
//! tracked by a pidfd (exits are waited for on the fd, no polling, no `waitpid(-1)`).
//!
//! Creates and execs clone the calling process (libcontainer, raw clone3, no fork handlers),
//! and libcontainer's helper process exits through `std::process::exit`, which takes the Rust
//! runtime's thread-registry lock. They are serialized here, and the runtime's own threads
//! (stdio pumps) are plain pthreads that never allocate; but a caller must not start or end
//! Rust threads, or allocate on other threads, while a create or exec is in progress, or the
//! clone can inherit a held lock and hang. The shim serves everything from one thread for that.
mod build;
mod capture;
pub mod cgroup;
pub mod container;
mod create;
pub mod error;
pub mod exec;
pub mod features;
pub mod join;
pub mod pause;
pub mod process;
pub mod sandbox;
pub mod spec;
pub mod stdio;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use container::{Container, CreateOptions, Stats, Status};
pub use error::{Error, Result};
pub use exec::{ExecInfo, ExecProcess};
pub use features::features;
pub use join::SandboxHandle;
pub use libcontainer::oci_spec;
pub use pause::PAUSE_BINARY;
pub use process::{Exit, Process};
pub use sandbox::{NsMode, SandboxConfig};
pub use stdio::{Io, StdioConfig};

/// The default state directory.
pub const DEFAULT_ROOT: &str = "/run/podnet/runtime";

/// Creates containers; holds the state directory. Containers live in `<root>/<id>`.
pub struct Runtime {
    root: PathBuf,
    pause_override: Option<PathBuf>,
    /// The pause binary once written and checked.
    pause_ready: std::sync::OnceLock<PathBuf>,
    fork_lock: Mutex<()>,
}

impl Runtime {
    /// Opens (creating it if needed) the state directory `root`.
    pub fn new(root: impl AsRef<Path>) -> Result<Runtime> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        Ok(Runtime { root, pause_override: None, pause_ready: std::sync::OnceLock::new(), fork_lock: Mutex::new(()) })
    }

    /// Uses the pause binary at `path` (static) instead of the embedded one.
    pub fn with_pause_binary(mut self, path: impl Into<PathBuf>) -> Runtime {
        self.pause_override = Some(path.into());
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
