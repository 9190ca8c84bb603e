//! The node's network facts for the CNI plugin: what a conflist naming no subnet of its own
//! uses (docs/cluster.md).

use ipnet::Ipv4Net;

use crate::config::{ClusterSettings, NodeConfig};
use crate::error::{Error, Result};

/// Writes `<run_dir>/node.json` atomically: the node's subnet, its gateway (the subnet's first
/// address, which the bridge takes), the pods' MTU and the cluster CIDR (masquerade stops at it).
pub fn write(cfg: &NodeConfig, s: &ClusterSettings, subnet: Ipv4Net, mtu: u32) -> Result<()> {
    let gateway = subnet.hosts().next().ok_or_else(|| Error::Other(format!("{subnet} has no host addresses")))?;
    let facts = serde_json::json!({
        "node": cfg.name,
        "subnet": subnet.to_string(),
        "gateway": gateway.to_string(),
        "mtu": mtu,
        "clusterCIDR": s.cluster_cidr.to_string(),
        "backend": s.backend.as_str(),
    });
    let bytes = serde_json::to_vec_pretty(&facts).map_err(|e| Error::Other(format!("encode facts: {e}")))?;
    crate::lease::write_atomic(&cfg.facts_path(), &bytes, 0o644)
}

/// Removes the facts file (`podnet node leave`).
pub fn remove(cfg: &NodeConfig) -> Result<()> {
    let p = cfg.facts_path();
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", p.display()), e)),
    }
}
