//! The node's network facts: the pod subnet the podnet node agent (`podnet node run`) leased
//! for this node, its gateway, the MTU pods get and the cluster's CIDR, in one small JSON file
//! the agent writes ([`NodeFacts::write_atomic`]) and the CNI engine reads ([`NodeFacts::read`])
//! when a conflist's `ipam` names no range, so that one conflist serves every node
//! (docs/cluster.md).
//!
//! ```json
//! {"node": "node-3", "subnet": "10.244.3.0/24", "gateway": "10.244.3.1", "mtu": 1450,
//!  "clusterCIDR": "10.244.0.0/16", "backend": "vxlan"}
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where the agent writes the facts and the engine reads them unless `ipam.nodeFacts` says
/// otherwise.
pub const DEFAULT_NODE_FACTS: &str = "/run/podnet/node.json";

/// The smallest MTU an IPv4 host must accept (RFC 791), and the largest an IP packet can use.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65535;

/// One node's network facts. Field names on disk are camelCase (`clusterCIDR` as spelt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The node's name.
    pub node: String,
    /// The node's pod subnet, inside `cluster_cidr`.
    pub subnet: Ipv4Net,
    /// The pods' gateway, inside `subnet` (the agent writes the subnet's first host).
    pub gateway: Ipv4Addr,
    /// The MTU pods get (the overlay's, when there is one).
    pub mtu: u32,
    /// The whole cluster's pod network; traffic inside it is not masqueraded.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    /// How nodes reach each other's pods ("vxlan", "host-gw", ...): informational.
    #[serde(default)]
    pub backend: String,
}

/// One field of a facts value that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field:?}: {why}")]
pub struct InvalidFact {
    pub field: &'static str,
    pub why: String,
}

/// Why a facts file could not be had; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum NodeFactsError {
    #[error("node facts file {} does not exist", .path.display())]
    Missing { path: PathBuf },
    #[error("cannot read node facts file {}: {source}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("node facts file {} is not a JSON object: {why}", .path.display())]
    Malformed { path: PathBuf, why: String },
    #[error("node facts file {}: {source}", .path.display())]
    Invalid { path: PathBuf, source: InvalidFact },
}

impl NodeFactsError {
    pub fn path(&self) -> &Path {
        match self {
            NodeFactsError::Missing { path }
            | NodeFactsError::Unreadable { path, .. }
            | NodeFactsError::Malformed { path, .. }
            | NodeFactsError::Invalid { path, .. } => path,
        }
    }
}

fn invalid(field: &'static str, why: impl fmt::Display) -> InvalidFact {
    InvalidFact { field, why: why.to_string() }
}

impl NodeFacts {
    /// Reads and validates a facts file. Keys are matched exactly; unknown keys are ignored (a
    /// newer agent may write more).
    pub fn read(path: &Path) -> Result<NodeFacts, NodeFactsError> {
        let bytes = fs::read(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NodeFactsError::Missing { path: path.to_path_buf() },
            _ => NodeFactsError::Unreadable { path: path.to_path_buf(), source: e },
        })?;
        let obj = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(m)) => m,
            Ok(other) => {
                let why = format!("found {}", crate::config::fields::json_type(&other));
                return Err(NodeFactsError::Malformed { path: path.to_path_buf(), why });
            }
            Err(e) => return Err(NodeFactsError::Malformed { path: path.to_path_buf(), why: e.to_string() }),
        };
        Self::from_map(&obj).map_err(|source| NodeFactsError::Invalid { path: path.to_path_buf(), source })
    }

    /// The facts of a parsed JSON object, validated.
    pub fn from_map(obj: &Map<String, Value>) -> Result<NodeFacts, InvalidFact> {
        let string = |field: &'static str| -> Result<Option<&str>, InvalidFact> {
            match obj.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(other) => Err(invalid(field, format_args!("must be a string, not {other}"))),
            }
        };
        let required = |field: &'static str| -> Result<&str, InvalidFact> {
            string(field)?.filter(|s| !s.is_empty()).ok_or_else(|| invalid(field, "missing"))
        };
        let net = |field: &'static str| -> Result<Ipv4Net, InvalidFact> {
            let s = required(field)?;
            s.parse().map_err(|_| invalid(field, format_args!("{s:?} is not an IPv4 CIDR (address/prefix)")))
        };
        let gateway = required("gateway")?;
        let gateway =
            gateway.parse().map_err(|_| invalid("gateway", format_args!("{gateway:?} is not an IPv4 address")))?;
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => return Err(invalid("mtu", "missing")),
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| invalid("mtu", format_args!("must be an integer, not {v}")))?,
        };
        let facts = NodeFacts {
            node: required("node")?.to_string(),
            subnet: net("subnet")?,
            gateway,
            mtu,
            cluster_cidr: net("clusterCIDR")?,
            backend: string("backend")?.unwrap_or_default().to_string(),
        };
        facts.check()?;
        Ok(facts)
    }

    /// The rules a facts value must satisfy: the subnet inside the cluster CIDR, with room for
    /// pods; the gateway a host address of the subnet; the MTU in 576..=65535.
    pub fn check(&self) -> Result<(), InvalidFact> {
        if self.node.is_empty() {
            return Err(invalid("node", "missing"));
        }
        for (field, net) in [("subnet", self.subnet), ("clusterCIDR", self.cluster_cidr)] {
            if net.trunc() != net {
                return Err(invalid(field, format_args!("{net} has host bits set (the network is {})", net.trunc())));
            }
        }
        if self.subnet.prefix_len() > 30 {
            return Err(invalid("subnet", format_args!("{} is too small to allocate from (at most /30)", self.subnet)));
        }
        if !self.cluster_cidr.contains(&self.subnet) {
            return Err(invalid(
                "clusterCIDR",
                format_args!("{} does not contain the subnet {}", self.cluster_cidr, self.subnet),
            ));
        }
        let gw = self.gateway;
        if !self.subnet.contains(&gw) {
            return Err(invalid("gateway", format_args!("{gw} is not in the subnet {}", self.subnet)));
        }
        if gw == self.subnet.network() || gw == self.subnet.broadcast() {
            return Err(invalid(
                "gateway",
                format_args!("{gw} is the network or broadcast address of {}", self.subnet),
            ));
        }
        if !MTU_RANGE.contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                format_args!("{} is out of range {}..={}", self.mtu, MTU_RANGE.start(), MTU_RANGE.end()),
            ));
        }
        Ok(())
    }

    /// Writes the facts to `path` so that a reader sees the old file or the new one, never a
    /// part: a temp file with a unique name in the same directory (created 0755 if missing),
    /// mode 0644, fsynced, renamed over `path`, and the directory fsynced. Invalid facts are
    /// refused (`InvalidInput`) and nothing is written.
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        self.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        // Readers (the CNI plugin) may run as other users.
        crate::atomic_file::write(path, &bytes, 0o644, 0o755)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct TmpDir(PathBuf);

    impl TmpDir {
        fn new() -> TmpDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "podnet-facts-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TmpDir(p)
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn good() -> Value {
        json!({"node": "node-3", "subnet": "10.244.3.0/24", "gateway": "10.244.3.1", "mtu": 1450,
               "clusterCIDR": "10.244.0.0/16", "backend": "vxlan"})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut f = good();
        if v.is_null() {
            f.as_object_mut().unwrap().remove(key);
        } else {
            f[key] = v;
        }
        f
    }

    fn facts() -> NodeFacts {
        NodeFacts::from_map(good().as_object().unwrap()).unwrap()
    }

    #[test]
    fn reads_every_field() {
        let f = facts();
        assert_eq!(f.node, "node-3");
        assert_eq!(f.subnet, "10.244.3.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(f.gateway, Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(f.mtu, 1450);
        assert_eq!(f.cluster_cidr, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(f.backend, "vxlan");
        // backend is informational and may be absent; unknown keys are ignored.
        let f = NodeFacts::from_map(with("backend", Value::Null).as_object().unwrap()).unwrap();
        assert_eq!(f.backend, "");
        assert!(NodeFacts::from_map(with("leaseExpires", json!("tomorrow")).as_object().unwrap()).is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (with("node", Value::Null), "node", "missing"),
            (with("node", json!("")), "node", "missing"),
            (with("node", json!(3)), "node", "must be a string"),
            (with("subnet", Value::Null), "subnet", "missing"),
            (with("subnet", json!("10.244.3.0")), "subnet", "not an IPv4 CIDR"),
            (with("subnet", json!("fd00::/64")), "subnet", "not an IPv4 CIDR"),
            (with("subnet", json!("10.244.3.7/24")), "subnet", "host bits"),
            (with("subnet", json!("10.244.3.0/31")), "subnet", "too small"),
            (with("subnet", json!("10.245.3.0/24")), "clusterCIDR", "does not contain the subnet 10.245.3.0/24"),
            (with("clusterCIDR", json!("10.244.0.0/24")), "clusterCIDR", "does not contain"),
            (with("clusterCIDR", json!("10.244.1.0/16")), "clusterCIDR", "host bits"),
            (with("clusterCIDR", Value::Null), "clusterCIDR", "missing"),
            (with("gateway", json!("10.244.4.1")), "gateway", "not in the subnet 10.244.3.0/24"),
            (with("gateway", json!("10.244.3.0")), "gateway", "network or broadcast"),
            (with("gateway", json!("10.244.3.255")), "gateway", "network or broadcast"),
            (with("gateway", json!("gw")), "gateway", "not an IPv4 address"),
            (with("mtu", Value::Null), "mtu", "missing"),
            (with("mtu", json!(575)), "mtu", "out of range 576..=65535"),
            (with("mtu", json!(65536)), "mtu", "out of range"),
            (with("mtu", json!("1450")), "mtu", "must be an integer"),
            (with("mtu", json!(-1)), "mtu", "must be an integer"),
            (with("backend", json!(false)), "backend", "must be a string"),
        ];
        for (v, field, why) in cases {
            let e = NodeFacts::from_map(v.as_object().unwrap()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.to_string().contains(why), "{v}: want {why:?} in {e}");
            assert!(e.to_string().starts_with(&format!("field \"{field}\": ")), "{e}");
        }
        assert!(NodeFacts::from_map(with("mtu", json!(576)).as_object().unwrap()).is_ok());
        assert!(NodeFacts::from_map(with("mtu", json!(65535)).as_object().unwrap()).is_ok());
    }

    #[test]
    fn read_errors_name_the_file() {
        let tmp = TmpDir::new();
        let p = tmp.0.join("node.json");
        let e = NodeFacts::read(&p).unwrap_err();
        assert!(matches!(e, NodeFactsError::Missing { .. }), "{e:?}");
        assert_eq!(e.to_string(), format!("node facts file {} does not exist", p.display()));
        assert_eq!(e.path(), p);

        fs::write(&p, "{\"node\": ").unwrap();
        let e = NodeFacts::read(&p).unwrap_err();
        assert!(matches!(e, NodeFactsError::Malformed { .. }) && e.to_string().contains(&p.display().to_string()));
        fs::write(&p, "[1]").unwrap();
        let e = NodeFacts::read(&p).unwrap_err();
        assert!(e.to_string().ends_with("is not a JSON object: found an array"), "{e}");

        fs::write(&p, with("mtu", json!(70000)).to_string()).unwrap();
        let e = NodeFacts::read(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("node facts file {}: field \"mtu\": 70000 is out of range 576..=65535", p.display())
        );

        // A directory in the file's place cannot be read.
        let d = tmp.0.join("dir.json");
        fs::create_dir(&d).unwrap();
        let e = NodeFacts::read(&d).unwrap_err();
        assert!(matches!(e, NodeFactsError::Unreadable { .. }) && e.to_string().contains("dir.json"), "{e}");
    }

    #[test]
    fn write_atomic_round_trips_with_mode_0644_and_no_temp_left() {
        let tmp = TmpDir::new();
        let p = tmp.0.join("run/podnet/node.json");
        let f = facts();
        f.write_atomic(&p).unwrap();
        assert_eq!(NodeFacts::read(&p).unwrap(), f);
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        // The on-disk names are the documented ones.
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["backend", "clusterCIDR", "gateway", "mtu", "node", "subnet"]);
        assert_eq!(v["subnet"], "10.244.3.0/24");

        // A rewrite replaces the file; serde's own Deserialize reads what write_atomic wrote.
        let g = NodeFacts { mtu: 1400, ..f.clone() };
        g.write_atomic(&p).unwrap();
        assert_eq!(serde_json::from_slice::<NodeFacts>(&fs::read(&p).unwrap()).unwrap(), g);
        let names: Vec<String> =
            fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["node.json"], "a temp file was left behind");

        // Invalid facts are refused and leave the old file alone.
        let bad = NodeFacts { gateway: Ipv4Addr::new(10, 9, 9, 9), ..f };
        let e = bad.write_atomic(&p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("field \"gateway\""), "{e}");
        assert_eq!(NodeFacts::read(&p).unwrap(), g);
    }
}
