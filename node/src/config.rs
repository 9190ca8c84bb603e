//! The two configurations: the node's own (`/etc/podnet/node.toml`, read by every command) and
//! the cluster's (written once into etcd by `podnet cluster init`, read by every node). Every
//! error names the key as the user wrote it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/podnet/node.toml";
pub const DEFAULT_PREFIX: &str = "/podnet";
pub const DEFAULT_RUN_DIR: &str = "/run/podnet";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podnet/node";
pub const DEFAULT_TTL: u64 = 30;
/// The Linux kernel's VXLAN port (IANA's is 4789); flannel uses it too.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// node.toml, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeConfig {
    name: Option<String>,
    node_ip: Option<String>,
    etcd_endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    subnet: Option<String>,
    ttl_seconds: Option<u64>,
    run_dir: Option<String>,
    state_dir: Option<String>,
}

/// This node's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's name (kubelet's node name): unique in the cluster.
    pub name: String,
    /// The address other nodes reach this one at (the VXLAN VTEP, the host-gw next hop).
    pub node_ip: Ipv4Addr,
    pub etcd_endpoints: Vec<String>,
    /// The etcd key prefix everything of this cluster lives under.
    pub prefix: String,
    /// A subnet given to this node (kubelet's `--pod-cidr`), instead of one leased.
    pub subnet: Option<Ipv4Net>,
    /// The lease's time to live: a node silent for longer is gone and its subnet free.
    pub ttl: Duration,
    /// Where the node's facts (`node.json`), status and lock live.
    pub run_dir: PathBuf,
    /// Where the lease is remembered across restarts.
    pub state_dir: PathBuf,
}

impl NodeConfig {
    /// Reads node.toml; `overrides` (key, value) replace its string keys (`podnet node run
    /// --name ... --node-ip ...`, as a DaemonSet passes the node's name and IP).
    pub fn load(path: &Path, overrides: &[(&str, &str)]) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        let named = |e: Error| match e {
            Error::Config { key, msg } => Error::config(format!("{}: {key}", path.display()), msg),
            e => e,
        };
        let mut t = table(&text).map_err(named)?;
        for (k, v) in overrides {
            t.insert((*k).to_string(), toml::Value::String((*v).to_string()));
        }
        Self::from_table(t).map_err(named)
    }

    #[cfg(test)]
    pub fn parse(text: &str) -> Result<NodeConfig> {
        Self::from_table(table(text)?)
    }

    fn from_table(t: toml::Table) -> Result<NodeConfig> {
        let raw: RawNodeConfig = t.try_into().map_err(|e: toml::de::Error| Error::config("node.toml", e.message()))?;
        let name = match raw.name {
            Some(n) => n,
            None => hostname().map_err(|e| Error::config("name", format!("not set and no hostname: {e}")))?,
        };
        check_name(&name)?;
        let node_ip = raw
            .node_ip
            .ok_or_else(|| Error::config("node_ip", "missing: the address other nodes reach this one at"))?;
        let node_ip = Ipv4Addr::from_str(&node_ip)
            .map_err(|_| Error::config("node_ip", format!("{node_ip:?} is not an IPv4 address")))?;
        if node_ip.is_unspecified() || node_ip.is_loopback() || node_ip.is_multicast() || node_ip.is_broadcast() {
            return Err(Error::config("node_ip", format!("{node_ip} cannot be a node's address")));
        }
        let etcd_endpoints = raw.etcd_endpoints.unwrap_or_default();
        if etcd_endpoints.is_empty() {
            return Err(Error::config("etcd_endpoints", "missing: at least one etcd URL (http://host:2379)"));
        }
        for (i, e) in etcd_endpoints.iter().enumerate() {
            check_endpoint(e).map_err(|m| Error::config(format!("etcd_endpoints[{i}]"), m))?;
        }
        let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        check_prefix(&prefix).map_err(|m| Error::config("prefix", m))?;
        let subnet = raw.subnet.map(|s| parse_v4_net(&s).map_err(|m| Error::config("subnet", m))).transpose()?;
        let ttl = raw.ttl_seconds.unwrap_or(DEFAULT_TTL);
        if !(2..=86_400).contains(&ttl) {
            return Err(Error::config("ttl_seconds", format!("{ttl} is not from 2 to 86400")));
        }
        let dir = |key: &str, v: Option<String>, default: &str| -> Result<PathBuf> {
            let p = PathBuf::from(v.unwrap_or_else(|| default.to_string()));
            if !p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(Error::config(key, format!("{} must be an absolute path without ..", p.display())));
            }
            Ok(p)
        };
        Ok(NodeConfig {
            name,
            node_ip,
            etcd_endpoints,
            prefix,
            subnet,
            ttl: Duration::from_secs(ttl),
            run_dir: dir("run_dir", raw.run_dir, DEFAULT_RUN_DIR)?,
            state_dir: dir("state_dir", raw.state_dir, DEFAULT_STATE_DIR)?,
        })
    }

    /// The node's network facts for the CNI plugin (`cni_bridge::NodeFacts`).
    pub fn facts_path(&self) -> PathBuf {
        self.run_dir.join("node.json")
    }
    /// What the running agent reports (`podnet node status` reads it).
    pub fn status_path(&self) -> PathBuf {
        self.run_dir.join("node-status.json")
    }
    /// Held (flock) by the running agent.
    pub fn lock_path(&self) -> PathBuf {
        self.run_dir.join("node.lock")
    }
    /// The lease this node holds, kept across restarts.
    pub fn lease_path(&self) -> PathBuf {
        self.state_dir.join("lease.json")
    }
}

fn table(text: &str) -> Result<toml::Table> {
    toml::from_str(text).map_err(|e| Error::config("node.toml", e.message()))
}

fn hostname() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_string())
}

/// Node names as Kubernetes has them: DNS subdomain names (lower case alphanumerics, `-`, `.`).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "name",
            format!("{name:?} is not a node name (lower-case letters, digits, '-' and '.', at most 253)"),
        ))
    }
}

fn check_endpoint(e: &str) -> std::result::Result<(), String> {
    let rest =
        e.strip_prefix("http://").ok_or_else(|| format!("{e:?} must start with http:// (TLS is not supported yet)"))?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| format!("{e:?} has no :port"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("{e:?} is not http://host:port"));
    }
    Ok(())
}

pub fn check_prefix(p: &str) -> std::result::Result<(), String> {
    if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains("//") || p.contains('\0') {
        return Err(format!("{p:?} must start with / and not end with / (e.g. /podnet)"));
    }
    Ok(())
}

fn parse_v4_net(s: &str) -> std::result::Result<Ipv4Net, String> {
    let n =
        Ipv4Net::from_str(s).map_err(|_| format!("{s:?} is not an IPv4 CIDR (podnet's cluster network is IPv4)"))?;
    if n.trunc() != n {
        return Err(format!("{s} has host bits set; the network is {}", n.trunc()));
    }
    Ok(n)
}

/// The VXLAN backend's settings are in the cluster settings; a node's backend is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// A route per peer subnet via the peer's node IP: the peers share this node's L2.
    #[serde(rename = "host-gw")]
    HostGw,
    /// A VXLAN overlay: works across L3.
    #[serde(rename = "vxlan")]
    Vxlan,
    /// host-gw for the peers on this node's L2 subnet, vxlan for the others.
    #[serde(rename = "auto")]
    Auto,
}

impl Backend {
    pub fn parse(s: &str) -> Option<Backend> {
        match s {
            "host-gw" => Some(Backend::HostGw),
            "vxlan" => Some(Backend::Vxlan),
            "auto" => Some(Backend::Auto),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::Auto => "auto",
        }
    }
    /// Whether this node needs its VXLAN device (some peer may be reached over it).
    pub fn uses_vxlan(self) -> bool {
        self != Backend::HostGw
    }
}

/// The cluster's settings, the JSON at `<prefix>/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettings {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    /// Each node's subnet is a /subnetLen of the cluster CIDR.
    pub subnet_len: u8,
    pub backend: Backend,
    pub vni: u32,
    pub port: u16,
}

impl ClusterSettings {
    /// Validates settings; `key` turns a field name into what the user knows it as (a flag of
    /// `cluster init`, or the etcd key and field).
    pub fn validate(&self, key: impl Fn(&str) -> String) -> Result<()> {
        let c = self.cluster_cidr;
        if c.trunc() != c {
            return Err(Error::config(
                key("clusterCIDR"),
                format!("{c} has host bits set; the network is {}", c.trunc()),
            ));
        }
        if self.subnet_len <= c.prefix_len() {
            return Err(Error::config(
                key("subnetLen"),
                format!("/{} is not longer than the cluster CIDR's /{}", self.subnet_len, c.prefix_len()),
            ));
        }
        // A node subnet needs its network address, a gateway, at least one pod and broadcast.
        if self.subnet_len > 30 {
            return Err(Error::config(
                key("subnetLen"),
                format!("/{} leaves no room for pods (at most /30)", self.subnet_len),
            ));
        }
        if !(1..(1 << 24)).contains(&self.vni) {
            return Err(Error::config(key("vni"), format!("{} is not from 1 to 16777215", self.vni)));
        }
        if self.port == 0 {
            return Err(Error::config(key("port"), "0 is not a UDP port"));
        }
        Ok(())
    }

    /// Reads the stored settings; errors name `<prefix>/cluster` and the field.
    pub fn from_stored(prefix: &str, bytes: &[u8]) -> Result<ClusterSettings> {
        let where_ = format!("{prefix}/cluster");
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::config(&where_, format!("not JSON: {e}")))?;
        if let Some(b) = v.get("backend").and_then(|b| b.as_str()) {
            if Backend::parse(b).is_none() {
                return Err(Error::config(
                    format!("{where_}: backend"),
                    format!("unknown backend {b:?} (host-gw, vxlan or auto)"),
                ));
            }
        }
        let s: ClusterSettings = serde_json::from_value(v)
            .map_err(|e| Error::config(&where_, format!("not podnet's cluster settings: {e}")))?;
        s.validate(|f| format!("{where_}: {f}"))?;
        Ok(s)
    }

    /// The settings `podnet cluster init` writes, from its flags.
    pub fn from_flags(
        cluster_cidr: &str,
        subnet_len: Option<&str>,
        backend: Option<&str>,
        vni: Option<&str>,
        port: Option<&str>,
    ) -> Result<ClusterSettings> {
        let cluster_cidr = parse_v4_net(cluster_cidr).map_err(|m| Error::config("--cluster-cidr", m))?;
        let num = |flag: &str, v: Option<&str>, default: u64, max: u64| -> Result<u64> {
            match v {
                None => Ok(default),
                Some(s) => s
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| Error::config(flag, format!("{s:?} is not a number from 0 to {max}"))),
            }
        };
        let backend = match backend {
            None => Backend::Vxlan,
            Some(b) => Backend::parse(b)
                .ok_or_else(|| Error::config("--backend", format!("unknown backend {b:?} (host-gw, vxlan or auto)")))?,
        };
        let s = ClusterSettings {
            cluster_cidr,
            subnet_len: num("--subnet-len", subnet_len, 24, 32)? as u8,
            backend,
            vni: num("--vni", vni, 1, u64::from(u32::MAX))? as u32,
            port: num("--port", port, u64::from(DEFAULT_VXLAN_PORT), u64::from(u16::MAX))? as u16,
        };
        s.validate(|f| match f {
            "clusterCIDR" => "--cluster-cidr".into(),
            "subnetLen" => "--subnet-len".into(),
            f => format!("--{f}"),
        })?;
        Ok(s)
    }

    /// The node's own checks against the cluster: its node network must not overlap the
    /// cluster CIDR, and a fixed subnet must be one of the cluster's subnets.
    pub fn check_node(&self, prefix: &str, node_net: Ipv4Net, fixed: Option<Ipv4Net>) -> Result<()> {
        let c = self.cluster_cidr;
        if c.contains(&node_net.network()) || node_net.contains(&c.network()) {
            return Err(Error::config(
                format!("{prefix}/cluster: clusterCIDR"),
                format!("{c} overlaps this node's network {node_net}: pod and node addresses would collide"),
            ));
        }
        if let Some(s) = fixed {
            if !c.contains(&s) {
                return Err(Error::config("subnet", format!("{s} is outside the cluster CIDR {c}")));
            }
            if s.prefix_len() != self.subnet_len {
                return Err(Error::config(
                    "subnet",
                    format!("{s} is a /{}; the cluster's node subnets are /{}", s.prefix_len(), self.subnet_len),
                ));
            }
        }
        Ok(())
    }

    /// The MTU pods get over an underlay of `mtu`: VXLAN costs 50 bytes (outer IPv4 20, UDP 8,
    /// VXLAN 8, inner Ethernet 14), and under `auto` any peer may be behind it.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        if self.backend.uses_vxlan() {
            underlay_mtu.saturating_sub(50)
        } else {
            underlay_mtu
        }
    }

    /// The VXLAN device's name: one per VNI, as flannel names `flannel.<vni>`.
    pub fn vxlan_device(&self) -> String {
        format!("podnet.{}", self.vni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(extra: &str) -> Result<NodeConfig> {
        NodeConfig::parse(&format!(
            "name = \"a\"\nnode_ip = \"10.99.0.1\"\netcd_endpoints = [\"http://10.99.0.100:2379\"]\n{extra}"
        ))
    }

    fn err_key(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(Error::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn node_config_defaults_and_keys() {
        let c = node("").unwrap();
        assert_eq!(c.prefix, "/podnet");
        assert_eq!(c.ttl, Duration::from_secs(30));
        assert_eq!(c.facts_path(), PathBuf::from("/run/podnet/node.json"));
        assert_eq!(c.subnet, None);
        let c = node("subnet = \"10.244.9.0/24\"\nttl_seconds = 4\nrun_dir = \"/tmp/r\"").unwrap();
        assert_eq!(c.subnet, Some("10.244.9.0/24".parse().unwrap()));
        assert_eq!(c.ttl, Duration::from_secs(4));
        for (extra, key) in [
            ("subnet = \"10.244.9.1/24\"", "subnet"),
            ("subnet = \"fd00::/64\"", "subnet"),
            ("ttl_seconds = 1", "ttl_seconds"),
            ("prefix = \"podnet\"", "prefix"),
            ("prefix = \"/podnet/\"", "prefix"),
            ("run_dir = \"run\"", "run_dir"),
            ("state_dir = \"/var/../x\"", "state_dir"),
            ("bogus = 1", "node.toml"),
        ] {
            assert_eq!(err_key(node(extra)), key, "{extra}");
        }
        assert_eq!(err_key(NodeConfig::parse("name = \"a\"\netcd_endpoints = [\"http://e:2379\"]")), "node_ip");
        assert_eq!(err_key(NodeConfig::parse("name = \"a\"\nnode_ip = \"10.0.0.1\"")), "etcd_endpoints");
        assert_eq!(
            err_key(NodeConfig::parse("name = \"A_b\"\nnode_ip = \"10.0.0.1\"\netcd_endpoints = [\"http://e:1\"]")),
            "name"
        );
        assert_eq!(
            err_key(NodeConfig::parse("name = \"a\"\nnode_ip = \"10.0.0.1\"\netcd_endpoints = [\"https://e:1\"]")),
            "etcd_endpoints[0]"
        );
        assert_eq!(
            err_key(NodeConfig::parse("name = \"a\"\nnode_ip = \"127.0.0.1\"\netcd_endpoints = [\"http://e:1\"]")),
            "node_ip"
        );
    }

    #[test]
    fn cluster_settings_from_flags() {
        let s = ClusterSettings::from_flags("10.244.0.0/16", None, None, None, None).unwrap();
        assert_eq!((s.subnet_len, s.backend, s.vni, s.port), (24, Backend::Vxlan, 1, 8472));
        assert_eq!(s.vxlan_device(), "podnet.1");
        assert_eq!(s.pod_mtu(1500), 1450);
        let h = ClusterSettings::from_flags("10.244.0.0/16", Some("26"), Some("host-gw"), None, None).unwrap();
        assert_eq!(h.pod_mtu(1500), 1500);
        for (args, key) in [
            (("10.244.0.0/16", Some("16"), None, None), "--subnet-len"),
            (("10.244.0.0/16", Some("8"), None, None), "--subnet-len"),
            (("10.244.0.0/16", Some("31"), None, None), "--subnet-len"),
            (("10.244.0.0/16", None, Some("bgp"), None), "--backend"),
            (("10.244.0.0/16", None, None, Some("0")), "--vni"),
            (("10.244.0.0/16", None, None, Some("16777216")), "--vni"),
            (("10.244.0.1/16", None, None, None), "--cluster-cidr"),
            (("fd00::/48", None, None, None), "--cluster-cidr"),
        ] {
            let r = ClusterSettings::from_flags(args.0, args.1, args.2, args.3, None);
            assert_eq!(err_key(r), key, "{args:?}");
        }
    }

    #[test]
    fn stored_settings_round_trip_and_errors_name_the_key() {
        let s = ClusterSettings::from_flags("10.244.0.0/16", None, Some("auto"), Some("7"), None).unwrap();
        let bytes = serde_json::to_vec(&s).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"clusterCIDR":"10.244.0.0/16","subnetLen":24,"backend":"auto","vni":7,"port":8472}"#
        );
        assert_eq!(ClusterSettings::from_stored("/p", &bytes).unwrap(), s);
        let bad = br#"{"clusterCIDR":"10.244.0.0/16","subnetLen":24,"backend":"bgp","vni":7,"port":8472}"#;
        assert_eq!(err_key(ClusterSettings::from_stored("/p", bad)), "/p/cluster: backend");
        let bad = br#"{"clusterCIDR":"10.244.0.0/16","subnetLen":12,"backend":"vxlan","vni":7,"port":8472}"#;
        assert_eq!(err_key(ClusterSettings::from_stored("/p", bad)), "/p/cluster: subnetLen");
        assert_eq!(err_key(ClusterSettings::from_stored("/p", b"{")), "/p/cluster");
    }

    #[test]
    fn node_checks_against_the_cluster() {
        let s = ClusterSettings::from_flags("10.244.0.0/16", None, None, None, None).unwrap();
        let net = "10.99.0.0/24".parse().unwrap();
        s.check_node("/p", net, None).unwrap();
        s.check_node("/p", net, Some("10.244.9.0/24".parse().unwrap())).unwrap();
        assert_eq!(err_key(s.check_node("/p", "10.244.3.0/24".parse().unwrap(), None)), "/p/cluster: clusterCIDR");
        assert_eq!(err_key(s.check_node("/p", "10.0.0.0/8".parse().unwrap(), None)), "/p/cluster: clusterCIDR");
        assert_eq!(err_key(s.check_node("/p", net, Some("10.245.0.0/24".parse().unwrap()))), "subnet");
        assert_eq!(err_key(s.check_node("/p", net, Some("10.244.8.0/23".parse().unwrap()))), "subnet");
    }
}
