//! CNI errors: every failure leaves the engine as a `CniError` carrying a spec error code,
//! a message naming what was being done and to what, and optional details.

use std::fmt;

/// Error codes from the CNI specification (SPEC.md, "Error").
pub mod codes {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// Plugin-specific errors start at 100.
    pub const INTERNAL: u32 = 999;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// A bad field in the network configuration (code 7), naming the field.
    pub fn invalid_config(field: &str, why: impl fmt::Display) -> Self {
        CniError::new(codes::INVALID_CONFIG, format!("invalid network config field {field:?}: {why}"))
    }

    pub fn invalid_env(var: &str, why: impl fmt::Display) -> Self {
        CniError::new(codes::INVALID_ENV, format!("invalid environment variable {var}: {why}"))
    }

    pub fn io(what: impl fmt::Display, err: impl fmt::Display) -> Self {
        CniError::new(codes::IO_FAILURE, format!("{what}: {err}"))
    }

    pub fn internal(what: impl fmt::Display, err: impl fmt::Display) -> Self {
        CniError::new(codes::INTERNAL, format!("{what}: {err}"))
    }

    /// Prefix the message with what was being done (netavark's `wrap!` habit).
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The error object of the spec: `{cniVersion, code, msg, details}`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// A netlink failure as a CNI error naming what was being done.
pub(crate) fn nl_err(what: &str, e: crate::netlink::NlError) -> CniError {
    CniError::new(codes::INTERNAL, format!("{what}: {e}"))
}

/// Collects every error of a teardown so that one failure never stops the rest: podnet's one
/// collector. `into_result()` gives the one error, or one whose message lists them all (with
/// the first one's code); the caller adds what was being done with [`CniError::context`].
pub type ErrorList = podnet_errors::Errors<CniError>;

impl podnet_errors::Combine for CniError {
    fn combine(errs: Vec<CniError>) -> CniError {
        let code = errs.first().map_or(codes::INTERNAL, |e| e.code);
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        CniError::new(code, format!("{} errors: {}", msgs.len(), msgs.join("; ")))
    }
}
