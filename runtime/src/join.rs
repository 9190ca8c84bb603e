//! What a container needs to join a sandbox's namespaces (container mode): the pause (or the
//! first container of a standalone pod) and the kinds of namespaces it shares.
use std::sync::Arc;

use libcontainer::oci_spec::runtime::LinuxNamespaceType;

use crate::error::{Error, Result};
use crate::process::Process;

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
