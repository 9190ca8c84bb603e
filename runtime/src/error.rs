//! The runtime's errors. Every message names what was being done and to what; libcontainer's
//! error chains are flattened into the text because their top level alone says little.
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle's config.json is unreadable, malformed, or asks for something impossible.
    /// `field` is the JSON path of the offending value (for example `process.capabilities.bounding[1]`).
    #[error("{file}: {field}: {msg}")]
    Spec { file: PathBuf, field: String, msg: String },
    #[error("container id {0:?} is invalid: use 1-1024 characters of [A-Za-z0-9_.-], not starting with '.'")]
    InvalidId(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("{what} {id:?}: {op} is not possible: it is {state}")]
    State { what: &'static str, id: String, op: &'static str, state: &'static str },
    #[error("{what} {id:?} has already exited")]
    Exited { what: &'static str, id: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    /// A failure reported by libcontainer or libcgroups, with its whole cause chain.
    #[error("{context}: {msg}")]
    Container { context: String, msg: String },
    #[error("{0}")]
    Unsupported(String),
    /// Teardown keeps going after a failure; this carries every failure it met.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// Wraps an error from libcontainer/libcgroups, keeping every `source()` in the text.
    pub fn container(context: impl Into<String>, err: &(dyn std::error::Error + 'static)) -> Error {
        Error::Container { context: context.into(), msg: chain(err) }
    }

    pub fn spec(file: impl Into<PathBuf>, field: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::Spec { file: file.into(), field: field.into(), msg: msg.into() }
    }

    /// True when the error means the target is already gone (teardown treats that as done).
    pub fn is_gone(&self) -> bool {
        match self {
            Error::Exited { .. } => true,
            Error::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENOENT))
            }
            _ => false,
        }
    }
}

/// Joins an error and its sources ("a: b: c"), skipping a source whose text the previous
/// level already contains (thiserror's `transparent` and `{0}` variants repeat it).
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Collects teardown failures and keeps going (podnet's one collector; several become
/// [`Error::Many`]).
pub type Errors = podnet_errors::Errors<Error>;

podnet_errors::combine_into!(Error::Many);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    #[test]
    fn chain_keeps_causes() {
        let e = Outer(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(chain(&e).starts_with("outer: No such file"));
    }

    #[test]
    fn errors_collect_all() {
        let mut errs = Errors::default();
        errs.push(Ok(()));
        errs.add(Error::Unsupported("a".into()));
        errs.add(Error::Unsupported("b".into()));
        let e = errs.into_result().unwrap_err();
        assert_eq!(e.to_string(), "a; b");
    }
}
