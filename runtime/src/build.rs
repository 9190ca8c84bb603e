//! libcontainer glue shared by creates and execs: the workload that runs a spec's process, one
//! libcontainer build with its failure cleaned up and explained, id validation, oomScoreAdj.
use std::fs;
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;

use crate::error::{Error, Result};
use crate::process;
use crate::stdio;

/// libcontainer's default workload, except that a program given by absolute path needs no PATH
/// in the environment (runc's rule: the pause image's `/pause` runs with an empty env).
#[derive(Clone)]
pub(crate) struct SpecExecutor;

impl libcontainer::workload::Executor for SpecExecutor {
    fn exec(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> std::result::Result<(), libcontainer::workload::ExecutorError> {
        libcontainer::workload::default::DefaultExecutor {}.exec(spec)
    }

    fn validate(
        &self,
        spec: &libcontainer::oci_spec::runtime::Spec,
    ) -> std::result::Result<(), libcontainer::workload::ExecutorValidationError> {
        use std::os::unix::fs::PermissionsExt;
        let program = spec.process().as_ref().and_then(|p| p.args().as_ref()).and_then(|a| a.first());
        match program {
            Some(p) if p.starts_with('/') => match fs::metadata(p) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
                Ok(_) => Err(libcontainer::workload::ExecutorValidationError::ArgValidationError(format!(
                    "executable {p:?} is not an executable file"
                ))),
                Err(e) => Err(libcontainer::workload::ExecutorValidationError::ArgValidationError(format!(
                    "executable {p:?}: {e}"
                ))),
            },
            _ => libcontainer::workload::default::DefaultExecutor {}.validate(spec),
        }
    }
}

/// One libcontainer build (an init with `as_init`, or an exec with `as_tenant`, chosen by
/// `finish`) of container `id` whose state lives in `root`, with `pending`'s stdio attached.
/// The caller holds the runtime's fork lock. On failure, the helper processes the build left
/// are killed and reaped, and libcontainer's logged cause is added to the error.
pub(crate) fn libcontainer_build<T>(
    id: &str,
    root: &Path,
    pending: &mut stdio::Pending,
    what: &str,
    finish: impl FnOnce(ContainerBuilder) -> Result<T, LibcontainerError>,
) -> Result<T> {
    let before = process::thread_children();
    let (built, details) = crate::capture::errors_of(|| {
        let mut b = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(root)?
            .with_console_socket(pending.console.as_ref().map(|(p, _)| p.clone()));
        if let Some(fd) = pending.stdin.take() {
            b = b.with_stdin(fd);
        }
        if let Some(fd) = pending.stdout.take() {
            b = b.with_stdout(fd);
        }
        if let Some(fd) = pending.stderr.take() {
            b = b.with_stderr(fd);
        }
        finish(b)
    });
    built.map_err(|err| {
        process::reap_new_children(&before);
        detailed(Error::container(what, &err), details)
    })
}

/// Appends what libcontainer logged about a failure (the cause, from inside the container's
/// init) to the error.
fn detailed(err: Error, details: Vec<String>) -> Error {
    match err {
        Error::Container { context, msg } if !details.is_empty() => {
            Error::Container { context, msg: format!("{msg} ({})", details.join("; ")) }
        }
        other => other,
    }
}

/// Container ids become directory and cgroup names.
pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

pub(crate) fn set_oom_score_adj(pid: i32, score: i32) -> Result<()> {
    let path = format!("/proc/{pid}/oom_score_adj");
    fs::write(&path, score.to_string()).map_err(|e| {
        let hint = if score < 0 {
            " (this kernel refuses to lower oom_score_adj below 0 here; with containerd's CRI set restrict_oom_score_adj = true)"
        } else {
            ""
        };
        Error::io(format!("process.oomScoreAdj {score}: writing {path}{hint}"), e)
    })
}
