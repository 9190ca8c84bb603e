//! The agent's error: what failed, with the context an operator needs (the config key, the
//! etcd key, the peer), and several at once for a reconcile or a teardown that kept going.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: `key` names the setting as the user wrote it (a key of node.toml,
    /// a flag of `podnet cluster init`, or `<prefix>/cluster: <field>` for the stored settings).
    #[error("{key}: {msg}")]
    Config { key: String, msg: String },
    /// The datastore: connecting, a request, a watch.
    #[error("etcd: {what}: {source}")]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    /// The datastore answered, but not what podnet expects there.
    #[error("etcd: {0}")]
    Datastore(String),
    /// A kernel object: a route, neighbour, FDB entry, link or address.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: cni_bridge::netlink::NlError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
    #[error("{}", join(.0))]
    Many(Vec<Error>),
}

fn join(errs: &[Error]) -> String {
    let mut s = format!("{} errors: ", errs.len());
    for (i, e) in errs.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&e.to_string());
    }
    s
}

podnet_errors::combine_into!(Error::Many);

pub type Result<T, E = Error> = std::result::Result<T, E>;
pub type Errors = podnet_errors::Errors<Error>;

impl Error {
    pub fn config(key: impl Into<String>, msg: impl fmt::Display) -> Error {
        Error::Config { key: key.into(), msg: msg.to_string() }
    }
    pub fn etcd(what: impl Into<String>, source: etcd_client::Error) -> Error {
        Error::Etcd { what: what.into(), source }
    }
    pub fn nl(what: impl Into<String>, source: cni_bridge::netlink::NlError) -> Error {
        Error::Netlink { what: what.into(), source }
    }
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
    /// Whether the datastore could not be reached (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Etcd { source, .. } => match source {
                etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
                etcd_client::Error::GRpcStatus(s) => matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ),
                etcd_client::Error::WatchError(_) | etcd_client::Error::LeaseKeepAliveError(_) => true,
                _ => false,
            },
            Error::Many(v) => v.iter().any(Error::is_unreachable),
            _ => false,
        }
    }
}
