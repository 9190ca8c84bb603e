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

/// Per-interface neighbour-table key (`/proc/sys/net/<family>/neigh/<ifname>/<key>`).
pub fn ensure_neigh(family: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    write_if_differs(&format!("/proc/sys/net/{family}/neigh/{ifname}/{key}"), value)
}

/// The value of a per-interface key, trimmed.
pub fn read_if(family: &str, ifname: &str, key: &str) -> Result<String> {
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/{key}");
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|e| CniError::io(format!("read sysctl {path}"), e))
}

fn write_if_differs(path: &str, value: &str) -> Result<()> {
    if let Ok(cur) = std::fs::read_to_string(path) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    std::fs::write(path, value).map_err(|e| CniError::io(format!("set sysctl {path} to {value}"), e))
}
