//! The node's network facts for the CNI plugin (`cni_bridge::NodeFacts`): what a conflist
//! naming no subnet of its own uses (docs/cluster.md, "CNI: the node facts").

use cni_bridge::NodeFacts;
use ipnet::Ipv4Net;

use crate::config::{ClusterSettings, NodeConfig};
use crate::error::{Error, Result};

/// Writes `<run_dir>/node.json` atomically: the node's subnet, its gateway (the subnet's first
/// address, which the bridge takes), the pods' MTU and the cluster CIDR (masquerade stops at it).
pub fn write(cfg: &NodeConfig, s: &ClusterSettings, subnet: Ipv4Net, mtu: u32) -> Result<()> {
    let gateway = subnet.hosts().next().ok_or_else(|| Error::Other(format!("{subnet} has no host addresses")))?;
    let facts = NodeFacts {
        node: cfg.name.clone(),
        subnet,
        gateway,
        mtu,
        cluster_cidr: s.cluster_cidr,
        backend: s.backend.as_str().to_string(),
    };
    let p = cfg.facts_path();
    facts.write_atomic(&p).map_err(|e| Error::io(format!("write the node facts {}", p.display()), e))
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
