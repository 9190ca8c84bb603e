//! What the confinement tests compare between a container's init and an exec (and between
//! handlers): the confinement fields of `/proc/<pid>/status`, a seccomp profile that refuses
//! two syscalls, and a probe that tries them.
use serde_json::{json, Value};

/// The fields of /proc/<pid>/status that make up a process's confinement.
pub const FIELDS: [&str; 9] =
    ["Seccomp", "Seccomp_filters", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "Uid"];

/// The confinement lines of a /proc/<pid>/status text, white space folded, in [`FIELDS`] order.
pub fn confinement(status: &str) -> Vec<String> {
    FIELDS
        .iter()
        .map(|f| {
            let line =
                status.lines().find(|l| l.starts_with(&format!("{f}:"))).unwrap_or_else(|| panic!("no {f}:\n{status}"));
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// The value of `name` among [`confinement`] lines ("" when absent).
pub fn field<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines.iter().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or("")
}

/// A profile that refuses sethostname and every chmod with EPERM and allows the rest, in the
/// OCI form (which is also the Docker form containerd reads for CRI's Localhost profiles and
/// `ctr run --seccomp-profile`).
pub fn refusing_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
        "syscalls": [{ "names": ["sethostname", "chmod", "fchmod", "fchmodat", "fchmodat2"],
                       "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }]
    })
}

/// A shell script that tries the two syscalls [`refusing_profile`] refuses (chmod on
/// `writable_dir`) and prints each one's exit status. The container needs CAP_SYS_ADMIN for
/// only the profile to refuse sethostname.
pub fn probe(writable_dir: &str) -> String {
    format!("hostname probe-host 2>&1; echo hostname=$?; chmod 1777 {writable_dir} 2>&1; echo chmod=$?")
}
