//! The CNI invocation environment (SPEC.md, "Parameters"): `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`.
//!
//! Required-ness follows the reference `skel` package: ADD and CHECK need a container id, a
//! netns and an interface name; DEL needs the container id and the interface name (containerd
//! sends DEL with an empty `CNI_NETNS` once the sandbox is gone); GC, STATUS and VERSION need
//! nothing but the command. Unlike `skel`, `CNI_PATH` is never required: podnet runs the whole
//! chain in-process and execs no plugin binary. An empty variable counts as missing.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{codes, CniError, Result};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    /// The spelling of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    fn needs_container_id(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    fn needs_netns(self) -> bool {
        matches!(self, Command::Add | Command::Check)
    }

    fn needs_ifname(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl FromStr for Command {
    type Err = CniError;

    /// Exact upper-case spelling, as `skel` accepts it.
    fn from_str(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => return Err(CniError::new(codes::INVALID_ENV, format!("unknown CNI_COMMAND: {other:?}"))),
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniArgs {
    pub command: Command,
    /// Empty when the command does not need one and none was given.
    pub container_id: String,
    /// `None` when `CNI_NETNS` is unset or empty (allowed for DEL, GC, STATUS, VERSION).
    pub netns: Option<PathBuf>,
    /// Empty when the command does not need one and none was given.
    pub ifname: String,
    /// `CNI_ARGS` split into pairs, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` split on ':' (empty entries dropped).
    pub path: Vec<PathBuf>,
}

impl CniArgs {
    /// Reads the CNI variables through `get` (tests pass a map). A variable that is unset or
    /// empty counts as missing; every missing required variable is named in one code-4 error.
    pub fn from_env_with(get: impl Fn(&str) -> Option<String>) -> Result<CniArgs> {
        let read = |name: &str| get(name).filter(|v| !v.is_empty());

        let command = match read("CNI_COMMAND") {
            Some(c) => c.parse::<Command>()?,
            None => return Err(missing(&["CNI_COMMAND"])),
        };

        let container_id = read("CNI_CONTAINERID");
        let netns = read("CNI_NETNS");
        let ifname = read("CNI_IFNAME");

        let mut absent = Vec::new();
        if command.needs_container_id() && container_id.is_none() {
            absent.push("CNI_CONTAINERID");
        }
        if command.needs_netns() && netns.is_none() {
            absent.push("CNI_NETNS");
        }
        if command.needs_ifname() && ifname.is_none() {
            absent.push("CNI_IFNAME");
        }
        if !absent.is_empty() {
            return Err(missing(&absent));
        }

        // VERSION reads nothing but the command: whatever else is set is ignored, as in skel.
        if command == Command::Version {
            return Ok(CniArgs {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                args: Vec::new(),
                path: Vec::new(),
            });
        }

        // Values are validated whenever present (skel only validates required ones): the
        // container id and ifname end up in file names and netlink requests.
        let container_id = container_id.unwrap_or_default();
        if !container_id.is_empty() {
            validate_container_id(&container_id)?;
        }
        let ifname = ifname.unwrap_or_default();
        if !ifname.is_empty() {
            validate_ifname(&ifname)?;
        }

        let args = match read("CNI_ARGS") {
            Some(a) => parse_cni_args(&a)?,
            None => Vec::new(),
        };
        let path = read("CNI_PATH")
            .map(|p| p.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
            .unwrap_or_default();

        Ok(CniArgs { command, container_id, netns: netns.map(PathBuf::from), ifname, args, path })
    }

    /// Reads the process environment. A value that is not valid UTF-8 is converted lossily
    /// (and then fails validation where it matters, e.g. the container id).
    pub fn from_env() -> Result<CniArgs> {
        CniArgs::from_env_with(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// The value of a `CNI_ARGS` key (exact, case-sensitive match; the last occurrence wins,
    /// as with the reference `LoadArgs`). Unknown keys are never an error for podnet, so
    /// `IgnoreUnknown` needs no special handling.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The runtime's side of an invocation: which container, which interface, which namespace.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: Option<&'a Path>,
    /// CNI_ARGS pairs (`IP=`, `MAC=`, `K8S_POD_NAME=` ...).
    pub args: &'a [(String, String)],
}

impl<'a> Request<'a> {
    pub fn new(container_id: &'a str, ifname: &'a str, netns: Option<&'a Path>) -> Self {
        Request { container_id, ifname, netns, args: &[] }
    }

    pub fn with_args(mut self, args: &'a [(String, String)]) -> Self {
        self.args = args;
        self
    }

    pub fn arg(&self, key: &str) -> Option<&'a str> {
        self.args.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl CniArgs {
    /// The invocation as the plugins read it.
    pub fn request(&self) -> Request<'_> {
        Request::new(&self.container_id, &self.ifname, self.netns.as_deref()).with_args(&self.args)
    }
}

fn missing(vars: &[&str]) -> CniError {
    CniError::new(codes::INVALID_ENV, format!("required environment variables [{}] missing", vars.join(",")))
}

/// Parses `CNI_ARGS` ("K=V;K2=V2"). Every pair must hold exactly one '=' and a non-empty key
/// (reference `LoadArgs`); empty segments (e.g. a trailing ';') are skipped. A bad pair is a
/// code-4 error naming `CNI_ARGS`.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(';') {
        if pair.is_empty() {
            continue;
        }
        let mut parts = pair.split('=');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(k), Some(v), None) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => return Err(CniError::invalid_env("CNI_ARGS", format_args!("invalid pair {pair:?} (want KEY=VALUE)"))),
        }
    }
    Ok(out)
}

/// The libcni name rule shared by container ids and network names:
/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn is_valid_cni_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// libcni's `ValidateContainerID`; errors are code 4 naming `CNI_CONTAINERID`.
pub fn validate_container_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(missing(&["CNI_CONTAINERID"]));
    }
    if !is_valid_cni_name(id) {
        return Err(
            CniError::invalid_env("CNI_CONTAINERID", "invalid characters in container id").with_details(id.to_string())
        );
    }
    Ok(())
}

/// Why `name` is not a usable interface name (libcni's `ValidateInterfaceName`: non-empty,
/// at most 15 bytes, not "." or "..", no '/', ':' or whitespace), or `None` when it is fine.
pub fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("interface name is empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("interface name is too long (at most 15 bytes)")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        Some("interface name contains / or : or whitespace characters")
    } else {
        None
    }
}

/// Validates `CNI_IFNAME`; errors are code 4 naming the variable.
pub fn validate_ifname(name: &str) -> Result<()> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(why) => Err(CniError::invalid_env("CNI_IFNAME", why).with_details(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn full(cmd: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "abc123".into()),
            ("CNI_NETNS", "/var/run/netns/cni-1".into()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into()),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni".into()),
        ]
    }

    fn without(cmd: &str, drop: &[&str]) -> Result<CniArgs> {
        let vars: Vec<(&str, String)> = full(cmd).into_iter().filter(|(k, _)| !drop.contains(k)).collect();
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        CniArgs::from_env_with(env(&pairs))
    }

    #[test]
    fn add_full_environment() {
        let a = without("ADD", &[]).unwrap();
        assert_eq!(a.command, Command::Add);
        assert_eq!(a.container_id, "abc123");
        assert_eq!(a.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(a.ifname, "eth0");
        assert_eq!(a.path, vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
        assert_eq!(a.arg("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(a.arg("K8S_POD_NAMESPACE"), Some("default"));
        assert_eq!(a.arg("IgnoreUnknown"), Some("1"));
        assert_eq!(a.arg("k8s_pod_name"), None);
        assert_eq!(a.arg("IP"), None);
    }

    #[test]
    fn add_and_check_require_id_netns_ifname() {
        for cmd in ["ADD", "CHECK"] {
            for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
                let e = without(cmd, &[var]).unwrap_err();
                assert_eq!(e.code, codes::INVALID_ENV, "{cmd} without {var}");
                assert!(e.msg.contains(var), "{cmd} without {var}: {}", e.msg);
            }
            // CNI_PATH and CNI_ARGS are optional.
            assert!(without(cmd, &["CNI_PATH", "CNI_ARGS"]).is_ok());
        }
    }

    #[test]
    fn missing_variables_are_all_named() {
        let e = without("ADD", &["CNI_NETNS", "CNI_IFNAME"]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"), "{}", e.msg);
    }

    #[test]
    fn empty_counts_as_missing() {
        let e = CniArgs::from_env_with(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_NETNS"));
    }

    #[test]
    fn del_allows_empty_netns() {
        let a = CniArgs::from_env_with(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(a.command, Command::Del);
        assert_eq!(a.netns, None);
        for var in ["CNI_CONTAINERID", "CNI_IFNAME"] {
            let e = without("DEL", &[var]).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains(var));
        }
    }

    #[test]
    fn gc_status_version_need_only_the_command() {
        for (cmd, want) in [("GC", Command::Gc), ("STATUS", Command::Status), ("VERSION", Command::Version)] {
            let a = CniArgs::from_env_with(env(&[("CNI_COMMAND", cmd)])).unwrap();
            assert_eq!(a.command, want);
            assert!(a.container_id.is_empty() && a.ifname.is_empty() && a.netns.is_none());
        }
        // VERSION ignores everything else, even garbage.
        let a =
            CniArgs::from_env_with(env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "garbage"), ("CNI_IFNAME", "a/b")]))
                .unwrap();
        assert_eq!(a.command, Command::Version);
    }

    #[test]
    fn command_missing_or_unknown() {
        let e = CniArgs::from_env_with(env(&[])).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = CniArgs::from_env_with(env(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_COMMAND") && e.msg.contains("FROB"));
        assert!("add".parse::<Command>().is_err());
        for c in [Command::Add, Command::Del, Command::Check, Command::Gc, Command::Status, Command::Version] {
            assert_eq!(c.as_str().parse::<Command>().unwrap(), c);
            assert_eq!(c.to_string(), c.as_str());
        }
    }

    #[test]
    fn container_id_validation() {
        for bad in ["-abc", "_abc", ".abc", "a b", "a/b", "../etc", "abc:1", "ä"] {
            let e = CniArgs::from_env_with(env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", bad),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
            ]))
            .unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.contains("CNI_CONTAINERID"), "{bad}: {}", e.msg);
        }
        for good in ["a", "0", "abc-def_1.2", "A.b-C_d"] {
            assert!(validate_container_id(good).is_ok(), "{good}");
        }
        assert_eq!(validate_container_id("").unwrap_err().code, 4);
    }

    #[test]
    fn ifname_validation() {
        let long = "a".repeat(16);
        for bad in [".", "..", "eth/0", "eth:0", "eth 0", "eth\t0", "e\u{a0}", long.as_str()] {
            let e =
                CniArgs::from_env_with(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", bad)]))
                    .unwrap_err();
            assert_eq!(e.code, 4, "{bad:?}");
            assert!(e.msg.contains("CNI_IFNAME"), "{bad:?}: {}", e.msg);
        }
        assert!(validate_ifname(&"a".repeat(15)).is_ok());
        assert!(validate_ifname("eth0.100").is_ok());
        assert!(ifname_problem("").is_some());
        // 15 bytes, not characters.
        assert!(ifname_problem("ééééééééé").is_some());
    }

    #[test]
    fn cni_args_parsing() {
        assert_eq!(parse_cni_args("").unwrap(), vec![]);
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;IP=10.1.2.3;EMPTY=").unwrap(),
            vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("IP".into(), "10.1.2.3".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        assert_eq!(parse_cni_args("A=1;").unwrap(), vec![("A".into(), "1".into())]);
        for bad in ["A", "A=1;B", "A=1=2", "=1", "A=1;;=x"] {
            let e = parse_cni_args(bad).unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.contains("CNI_ARGS"), "{bad}: {}", e.msg);
        }
        let e = without("ADD", &[]).map(|_| ()).and_then(|_| {
            CniArgs::from_env_with(env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_NETNS", "/n"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAME"),
            ]))
            .map(|_| ())
        });
        assert_eq!(e.unwrap_err().code, 4);
    }

    #[test]
    fn last_duplicate_arg_wins() {
        let a = CniArgs::from_env_with(env(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "IP=1.1.1.1;IP=2.2.2.2")])).unwrap();
        assert_eq!(a.arg("IP"), Some("2.2.2.2"));
    }

    #[test]
    fn cni_name_rule() {
        assert!(is_valid_cni_name("cbr0-net.1_x"));
        assert!(!is_valid_cni_name(""));
        assert!(!is_valid_cni_name("-x"));
        assert!(!is_valid_cni_name("a/b"));
    }
}
