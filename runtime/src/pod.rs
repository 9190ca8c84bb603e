//! A pod: the pause sandbox and the app containers that joined it. Deleting the pod deletes
//! every member and then the sandbox, whatever fails on the way.
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::container::{Container, CreateOptions};
use crate::error::{Error, Errors, Result};
use crate::sandbox::{SandboxConfig, SandboxHandle};
use crate::stdio::StdioConfig;
use crate::Runtime;

pub struct Pod {
    sandbox: Container,
    members: Mutex<Vec<Arc<Container>>>,
}

impl Runtime {
    /// Creates the pod `id` (its pause sandbox); `start` runs the pause.
    pub fn create_pod(&self, id: &str, cfg: &SandboxConfig) -> Result<Pod> {
        Ok(Pod { sandbox: self.create_sandbox(id, cfg)?, members: Mutex::new(Vec::new()) })
    }
}

impl Pod {
    pub fn id(&self) -> &str {
        self.sandbox.id()
    }

    pub fn sandbox(&self) -> &Container {
        &self.sandbox
    }

    pub fn start(&self) -> Result<()> {
        self.sandbox.start()
    }

    pub fn handle(&self) -> Result<SandboxHandle> {
        self.sandbox.sandbox_handle().ok_or_else(|| Error::Unsupported("not a sandbox".into()))
    }

    /// Creates an app container from `bundle` joined to the pod's namespaces (container mode).
    pub fn create_container(
        &self,
        runtime: &Runtime,
        id: &str,
        bundle: &Path,
        stdio: StdioConfig,
    ) -> Result<Arc<Container>> {
        let opts = CreateOptions { stdio, sandbox: Some(self.handle()?), ..Default::default() };
        let c = Arc::new(runtime.create(id, bundle, opts)?);
        self.adopt(c.clone());
        Ok(c)
    }

    /// Makes `c` a member: it is deleted with the pod. For containers that joined the pod's
    /// namespaces through the paths in their own spec (CRI).
    pub fn adopt(&self, c: Arc<Container>) {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }

    pub fn container(&self, id: &str) -> Option<Arc<Container>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|c| c.id() == id).cloned()
    }

    /// Deletes the member `id` (killing it if it still runs) and forgets it.
    pub fn delete_container(&self, id: &str) -> Result<()> {
        let c = {
            let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
            let Some(i) = m.iter().position(|c| c.id() == id) else {
                return Err(Error::State {
                    what: "container",
                    id: id.to_string(),
                    op: "delete",
                    state: "not in this pod",
                });
            };
            m.remove(i)
        };
        c.delete().map(|_| ())
    }

    /// Deletes every member, then the sandbox; reports every failure.
    pub fn delete(&self) -> Result<()> {
        let mut errs = Errors::default();
        let members: Vec<_> = self.members.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for c in members {
            errs.push(c.delete().map(|_| ()));
        }
        errs.push(self.sandbox.delete().map(|_| ()));
        errs.into_result()
    }
}
