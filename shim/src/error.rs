//! The shim's errors: each says what failed and to what, and is mapped to a ttrpc code at the
//! protocol edge (`From<Error> for RpcError`), as rust-extensions' shims map theirs.
use std::io;

use containerd_shim_protos::ttrpc::proto::Code;

use crate::ttrpc::RpcError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a flag, a request, runtime options, a config file, a bundle.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request cannot be served in the current state.
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error(transparent)]
    Runtime(#[from] podnet_runtime::Error),
    #[error(transparent)]
    Cni(#[from] cni_bridge::CniError),
    /// What was being done when `source` failed; the code is the cause's.
    #[error("{context}: {source}")]
    Context { context: String, source: Box<Error> },
    /// `error`, after which undoing what was done failed too; the code is `error`'s.
    #[error("{error} (undoing what was done also failed: {undo})")]
    Undone { error: Box<Error>, undo: Box<Error> },
    /// Every failure of a teardown.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
    /// Anything else that went wrong (encoding, a peer's reply).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Collects teardown failures and keeps going (several become [`Error::Many`]).
pub type Errors = podnet_errors::Errors<Error>;

podnet_errors::combine_into!(Error::Many);

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// Prefixes the message with what was being done.
    pub fn context(self, context: impl Into<String>) -> Error {
        Error::Context { context: context.into(), source: Box::new(self) }
    }

    /// The ttrpc code containerd gets for it.
    pub fn code(&self) -> Code {
        use podnet_runtime::Error as R;
        match self {
            Error::Invalid(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::Precondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Io { .. } | Error::Internal(_) => Code::INTERNAL,
            Error::Runtime(e) => match e {
                R::Spec { .. } | R::InvalidId(_) | R::Unsupported(..) => Code::INVALID_ARGUMENT,
                R::AlreadyExists(_) => Code::ALREADY_EXISTS,
                R::State { .. } | R::Exited { .. } => Code::FAILED_PRECONDITION,
                _ => Code::UNKNOWN,
            },
            Error::Cni(_) | Error::Many(_) => Code::UNKNOWN,
            Error::Context { source, .. } => source.code(),
            Error::Undone { error, .. } => error.code(),
        }
    }
}

impl From<Error> for RpcError {
    fn from(e: Error) -> RpcError {
        RpcError::new(e.code(), e.to_string())
    }
}

/// `.context(..)` on results.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause_and_messages_keep_the_context() {
        let e = Error::Precondition("it is running".into()).context("deleting task \"a\"");
        let r = RpcError::from(e);
        assert_eq!((r.code, r.message.as_str()), (Code::FAILED_PRECONDITION, "deleting task \"a\": it is running"));
        let e = Error::from(podnet_runtime::Error::InvalidId("../x".into()));
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        let e = Error::io("/x", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.code(), Code::INTERNAL);
        assert!(e.to_string().starts_with("/x: No such file"), "{e}");
    }

    #[test]
    fn teardown_failures_are_all_reported() {
        let mut errs = Errors::new();
        errs.push(Ok(()));
        errs.add(Error::Internal("a".into()));
        errs.add(Error::Many(vec![Error::Internal("b".into()), Error::Internal("c".into())]));
        let e = errs.into_result().unwrap_err();
        assert_eq!((e.to_string().as_str(), e.code()), ("a; b; c", Code::UNKNOWN));
    }
}
