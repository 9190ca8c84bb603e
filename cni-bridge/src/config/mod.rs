//! Network configuration: conflists and single plugin confs as a runtime loads them
//! ([`conflist`], libcni), plugin input as a plugin reads it from stdin ([`input`], skel),
//! runtime-config capability arguments ([`runtime`]) and spec versions ([`version`]), all
//! read through one field reader ([`fields`]) with one key rule. Each plugin's own settings
//! live beside the plugin (the bridge's in `bridge/config.rs`, host-local's in
//! `ipam/config.rs`).

mod conflist;
pub(crate) mod fields;
mod input;
mod runtime;
pub mod version;

pub use conflist::{NetworkConfig, PluginConfig};
pub(crate) use fields::Fields;
pub use input::PluginInput;
pub use runtime::{PortMapping, Protocol, RuntimeConfig};
pub use version::{is_supported_version, parse_version, version_at_least, LATEST_VERSION, SUPPORTED_VERSIONS};
