//! Network sysctls of the calling thread's namespace (/proc/sys/net follows the thread).

use crate::error::{CniError, Result};

/// Sets `/proc/sys/<key>` (dotted, e.g. `net.ipv4.ip_forward`) to `value`.
pub fn ensure(key: &str, value: &str) -> Result<()> {
    write_if_differs(&format!("/proc/sys/{}", key.replace('.', "/")), value)
}

/// Per-interface key; interface names may contain dots, which sysctl paths keep as-is.
pub fn ensure_if(family: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    write_if_differs(&format!("/proc/sys/net/{family}/conf/{ifname}/{key}"), value)
}

fn write_if_differs(path: &str, value: &str) -> Result<()> {
    if let Ok(cur) = std::fs::read_to_string(path) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    std::fs::write(path, value).map_err(|e| CniError::io(format!("set sysctl {path} to {value}"), e))
}
