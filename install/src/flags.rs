//! hack/install's flags: parsing (`--flag value` and `--flag=value`), the --k3s presets and the
//! checks every value passes before anything is read or written.

use crate::{shell_quote, Die};

pub const USAGE: &str = "\
Usage: hack/install [FLAGS]

Installs podnet as containerd's CRI runtime handler `podnet` (root, idempotent).

  --binary PATH                install this prebuilt shim instead of running
                               `cargo build --release --locked -p podnet-shim`
  --prefix DIR                 the shim goes to DIR/bin/containerd-shim-podnet-v2 (/usr/local)
  --cni-bin-dir DIR            where the CNI plugin link `podnet` goes (/opt/cni/bin); must be
                               a CNI bin dir of containerd's CRI plugin (bin_dir / bin_dirs)
  --cni-conf-dir DIR           the handler's cni_conf_dir, holding 10-podnet.conflist
                               (/etc/podnet/cri.d); keep other conflists out of it
  --subnet CIDR|node           the pods' IPv4 range (10.89.0.0/16); `node`: none in the
                               conflist, each node's from the facts of podnet's node agent
                               (/run/podnet/node.json, docs/cluster.md)
  --subnet6 CIDR               an IPv6 range as well: dual-stack (none)
  --containerd-address PATH    containerd's gRPC socket, exactly as containerd passes it to
                               shims (/run/containerd/containerd.sock)
  --namespace NS               containerd namespace of CRI's pods (k8s.io)
  --containerd-version 2|1.7   the containerd that runs the handler (default: asks
                               `containerd --version`); 2.x gets cniVersion 1.1.0, 1.7 1.0.0
  --containerd PATH            the containerd binary to ask (default: containerd on PATH)
  --containerd-conf-dir DIR    where the drop-in podnet.toml goes (/etc/containerd/conf.d)
  --containerd-config FILE     containerd's main config, read (never written) to pick the
                               drop-in's config version and check its imports
                               (/etc/containerd/config.toml)
  --config-version 2|3         the drop-in's config version (default: config.toml's; 3 for
                               containerd 2.x without a config.toml; always 2 for 1.7)
  --cgroup-driver systemd|cgroupfs|auto
                               podnet's cgroup driver (systemd_cgroup in /etc/podnet/config.toml);
                               it must match the kubelet's. Default: containerd's SystemdCgroup
                               for runc in --containerd-config if set there, else systemd when
                               systemd is PID 1 (/run/systemd/system), else cgroupfs. auto: the
                               driver each cgroupsPath's form names (systemd form -> systemd)
  --restrict-oom-score-adj     set restrict_oom_score_adj = true in the drop-in: needed where
                               the kernel refuses oom_score_adj < 0 (affects every handler)
  --no-containerd-config       write no containerd config (e.g. kind: containerdConfigPatches)
  --k3s                        k3s: containerd address /run/k3s/containerd/containerd.sock,
                               CNI bin dir /var/lib/rancher/k3s/data/cni, and k3s's template
                               /var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl
                               instead of the drop-in (explicit flags still win)
  --destdir DIR                prefix every written path with DIR (packaging, tests), and read
                               --containerd-config under DIR too; no root needed
  --dry-run                    print what would be done, change nothing; no root
  --uninstall                  remove what these flags install (files written by podnet only)
  -h, --help                   this text
";

/// podnet's cgroup driver as --cgroup-driver names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupDriver {
    Systemd,
    Cgroupfs,
    /// systemd_cgroup unset: each cgroupsPath's form decides.
    Auto,
}

impl CgroupDriver {
    pub fn name(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => "systemd",
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Auto => "auto",
        }
    }
}

/// The flags, with the defaults and the --k3s presets applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Flags {
    pub binary: Option<String>,
    pub prefix: String,
    pub cni_bin_dir: String,
    pub cni_conf_dir: String,
    pub subnet: String,
    pub subnet6: Option<String>,
    pub address: String,
    pub namespace: String,
    /// --containerd-version as given (checked by `containerd::version_family`).
    pub containerd_version: Option<String>,
    pub containerd: Option<String>,
    pub conf_dir: String,
    pub main_config: String,
    pub config_version: Option<u8>,
    pub cgroup_driver: Option<CgroupDriver>,
    pub restrict_oom: bool,
    pub no_containerd_config: bool,
    pub k3s: bool,
    /// "" without --destdir; never ends with '/'.
    pub destdir: String,
    pub dry_run: bool,
    pub uninstall: bool,
}

pub enum Parsed {
    Help,
    Run(Box<Flags>),
}

const VALUE_FLAGS: &[&str] = &[
    "--binary",
    "--prefix",
    "--cni-bin-dir",
    "--cni-conf-dir",
    "--subnet",
    "--subnet6",
    "--containerd-address",
    "--namespace",
    "--containerd-version",
    "--containerd",
    "--containerd-conf-dir",
    "--containerd-config",
    "--config-version",
    "--destdir",
    "--cgroup-driver",
];
const SWITCHES: &[&str] =
    &["--restrict-oom-score-adj", "--no-containerd-config", "--k3s", "--dry-run", "--uninstall", "--help"];

fn unknown(flag: &str) -> Die {
    Die::usage(format!("unknown flag {} (see --help)", shell_quote(flag)))
}

/// Parses and checks the flags: every error names its flag. --help wins where it comes
/// before a bad flag, as flags are taken in order.
pub fn parse(args: &[String]) -> Result<Parsed, Die> {
    let mut raw: Vec<(String, String)> = Vec::new();
    let mut switches: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if arg.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if VALUE_FLAGS.contains(&flag.as_str()) {
            let value = match inline {
                Some(v) => v,
                None => it.next().cloned().ok_or_else(|| Die::usage(format!("{flag} needs a value (see --help)")))?,
            };
            if value.is_empty() {
                return Err(Die::usage(format!("{flag} needs a value (see --help)")));
            }
            raw.push((flag, value));
            continue;
        }
        if inline.is_some() {
            if !flag.starts_with("--") || flag.chars().any(char::is_whitespace) {
                return Err(unknown(&flag));
            }
            if SWITCHES.contains(&flag.as_str()) {
                return Err(Die::usage(format!("{flag} takes no value")));
            }
            return Err(unknown(&flag));
        }
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            f if SWITCHES.contains(&f) => switches.push(flag),
            _ => return Err(unknown(&flag)),
        }
    }
    let get = |name: &str| raw.iter().rev().find(|(f, _)| f == name).map(|(_, v)| v.clone());
    let on = |name: &str| switches.iter().any(|s| s == name);
    let k3s = on("--k3s");
    let mut flags = Flags {
        binary: get("--binary"),
        prefix: get("--prefix").unwrap_or_else(|| "/usr/local".into()),
        cni_bin_dir: get("--cni-bin-dir")
            .unwrap_or_else(|| if k3s { "/var/lib/rancher/k3s/data/cni" } else { "/opt/cni/bin" }.into()),
        cni_conf_dir: get("--cni-conf-dir").unwrap_or_else(|| "/etc/podnet/cri.d".into()),
        subnet: get("--subnet").unwrap_or_else(|| "10.89.0.0/16".into()),
        subnet6: get("--subnet6"),
        address: get("--containerd-address").unwrap_or_else(|| {
            if k3s { "/run/k3s/containerd/containerd.sock" } else { "/run/containerd/containerd.sock" }.into()
        }),
        namespace: get("--namespace").unwrap_or_else(|| "k8s.io".into()),
        containerd_version: get("--containerd-version").or_else(|| k3s.then(|| "2".into())),
        containerd: get("--containerd"),
        conf_dir: get("--containerd-conf-dir").unwrap_or_else(|| "/etc/containerd/conf.d".into()),
        main_config: get("--containerd-config").unwrap_or_else(|| "/etc/containerd/config.toml".into()),
        config_version: None,
        cgroup_driver: None,
        restrict_oom: on("--restrict-oom-score-adj"),
        no_containerd_config: on("--no-containerd-config"),
        k3s,
        destdir: get("--destdir").unwrap_or_default(),
        dry_run: on("--dry-run"),
        uninstall: on("--uninstall"),
    };
    check(&mut flags, get("--cgroup-driver"), get("--config-version"))?;
    Ok(Parsed::Run(Box::new(flags)))
}

/// The checks of the values, in the order hack/install has always made them.
fn check(flags: &mut Flags, cgroup_driver: Option<String>, config_version: Option<String>) -> Result<(), Die> {
    for (flag, path) in [
        ("--prefix", &flags.prefix),
        ("--cni-bin-dir", &flags.cni_bin_dir),
        ("--cni-conf-dir", &flags.cni_conf_dir),
        ("--containerd-address", &flags.address),
        ("--containerd-conf-dir", &flags.conf_dir),
        ("--containerd-config", &flags.main_config),
    ] {
        check_path(flag, path)?;
    }
    if !flags.destdir.is_empty() {
        check_path("--destdir", &flags.destdir)?;
    }
    if let Some(d) = flags.destdir.strip_suffix('/') {
        flags.destdir = d.to_string();
    }
    if flags.cni_conf_dir == "/" || flags.conf_dir == "/" {
        return Err(Die::usage("--cni-conf-dir and --containerd-conf-dir must not be /"));
    }
    if flags.subnet == "node" {
        if flags.subnet6.is_some() {
            return Err(Die::usage("--subnet6 cannot go with --subnet node: a node's facts give one IPv4 subnet"));
        }
    } else {
        check_cidr4("--subnet", &flags.subnet)?;
    }
    if let Some(s6) = &flags.subnet6 {
        check_cidr6("--subnet6", s6)?;
    }
    check_namespace(&flags.namespace)?;
    flags.cgroup_driver = match cgroup_driver.as_deref() {
        None => None,
        Some("systemd") => Some(CgroupDriver::Systemd),
        Some("cgroupfs") => Some(CgroupDriver::Cgroupfs),
        Some("auto") => Some(CgroupDriver::Auto),
        Some(other) => {
            return Err(Die::usage(format!(
                "--cgroup-driver {}: must be systemd, cgroupfs or auto",
                shell_quote(other)
            )))
        }
    };
    flags.config_version = match config_version.as_deref() {
        None => None,
        Some("2") => Some(2),
        Some("3") => Some(3),
        Some(other) => return Err(Die::usage(format!("--config-version {}: must be 2 or 3", shell_quote(other)))),
    };
    Ok(())
}

/// Paths end up in JSON and TOML strings: absolute, and none of " ' \ | & spaces or controls.
pub fn check_path(flag: &str, path: &str) -> Result<(), Die> {
    let q = shell_quote(path);
    if !path.starts_with('/') {
        return Err(Die::usage(format!("{flag} {q}: must be an absolute path")));
    }
    if path.chars().any(|c| matches!(c, '"' | '\'' | '\\' | '|' | '&' | ' ') || c.is_control()) {
        return Err(Die::usage(format!(
            "{flag} {q}: must not contain spaces, quotes, backslashes, '|', '&' or control characters"
        )));
    }
    if path.contains("/../") || path.ends_with("/..") || path.contains("/./") {
        return Err(Die::usage(format!("{flag} {q}: must not contain . or .. components")));
    }
    Ok(())
}

/// 1 to `max` ASCII digits.
fn digits(s: &str, max: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub fn check_cidr4(flag: &str, cidr: &str) -> Result<(), Die> {
    let q = shell_quote(cidr);
    let malformed = || Die::usage(format!("{flag} {q}: not an IPv4 CIDR like 10.89.0.0/16"));
    let (addr, prefix) = cidr.split_once('/').ok_or_else(malformed)?;
    let octets: Vec<&str> = addr.split('.').collect();
    if octets.len() != 4 || octets.iter().any(|o| digits(o, 3).is_none()) {
        return Err(malformed());
    }
    let prefix = digits(prefix, 2).ok_or_else(malformed)?;
    for o in &octets {
        if digits(o, 3).is_some_and(|v| v > 255) {
            return Err(Die::usage(format!("{flag} {q}: octet {o} is over 255")));
        }
    }
    if !(8..=30).contains(&prefix) {
        return Err(Die::usage(format!("{flag} {q}: prefix length must be 8 to 30 (room for a gateway and pods)")));
    }
    Ok(())
}

pub fn check_cidr6(flag: &str, cidr: &str) -> Result<(), Die> {
    let q = shell_quote(cidr);
    let (addr, prefix) = cidr
        .split_once('/')
        .filter(|(a, p)| {
            !a.is_empty() && a.chars().all(|c| c.is_ascii_hexdigit() || c == ':') && digits(p, 3).is_some()
        })
        .ok_or_else(|| Die::usage(format!("{flag} {q}: not an IPv6 CIDR like fd89::/64")))?;
    if !(addr.matches(':').count() >= 2 || addr.contains("::")) || addr.contains(":::") {
        return Err(Die::usage(format!("{flag} {q}: not an IPv6 address")));
    }
    if !digits(prefix, 3).is_some_and(|p| (8..=120).contains(&p)) {
        return Err(Die::usage(format!("{flag} {q}: prefix length must be 8 to 120")));
    }
    Ok(())
}

/// containerd's namespace rule (identifiers.Validate): letters/digits, single . _ - between.
pub fn check_namespace(ns: &str) -> Result<(), Die> {
    let alnum_runs =
        ns.split(['.', '_', '-']).all(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()));
    if alnum_runs && ns.len() <= 76 {
        return Ok(());
    }
    Err(Die::usage(format!(
        "--namespace {}: not a containerd namespace (letters and digits, '.', '_', '-' between them)",
        shell_quote(ns)
    )))
}

#[cfg(test)]
mod tests;
