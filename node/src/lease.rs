//! What a node's lease is, in etcd and on its disk: the keys, the record a peer reads, the
//! choice of a free subnet, and the copy the node keeps to get the same subnet back after a
//! restart.
//!
//! Keys under the cluster's prefix:
//! - `<prefix>/cluster`: the [`ClusterSettings`](crate::config::ClusterSettings), no lease;
//! - `<prefix>/subnets/<a.b.c.d-len>`: a [`SubnetRecord`], bound to the node's etcd lease;
//! - `<prefix>/nodes/<name>`: the subnet key's name, bound to the same lease, so a name is held
//!   by one node at a time.
//!
//! Both leased keys are created in one transaction that fails if either exists: two nodes
//! starting at once can never hold one subnet, and a node is in the map at most once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub fn cluster_key(prefix: &str) -> String {
    format!("{prefix}/cluster")
}
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{prefix}/subnets/")
}
pub fn subnet_key(prefix: &str, subnet: Ipv4Net) -> String {
    format!("{prefix}/subnets/{}-{}", subnet.network(), subnet.prefix_len())
}
pub fn node_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/nodes/{name}")
}

/// The subnet a `<prefix>/subnets/` key names.
pub fn subnet_of_key(prefix: &str, key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    let (ip, len) = rest.split_once('-')?;
    Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok().filter(|n| n.trunc() == *n)
}

/// What a node publishes with its subnet: all a peer needs to reach its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubnetRecord {
    pub node: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    /// The MAC of the node's VXLAN device (vxlan and auto backends).
    #[serde(rename = "vtepMAC", default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<String>,
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The subnets of `cluster` of length `len` not in `taken`, in order, starting after a point
/// derived from `seed` (the node's name), so nodes starting together mostly try different ones
/// first and the transaction rarely has to retry.
pub fn free_subnets(cluster: Ipv4Net, len: u8, taken: &BTreeSet<Ipv4Net>, seed: &str) -> Vec<Ipv4Net> {
    let Ok(all) = cluster.subnets(len) else {
        return Vec::new();
    };
    let all: Vec<Ipv4Net> = all.collect();
    if all.is_empty() {
        return Vec::new();
    }
    let start = (fnv(seed) % all.len() as u64) as usize;
    all[start..]
        .iter()
        .chain(&all[..start])
        .copied()
        .filter(|s| !taken.iter().any(|t| t.contains(s) || s.contains(t)))
        .collect()
}

pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// The MAC of a node's VXLAN device: derived from its name and VNI, so it stays the same over
/// restarts and reboots (peers' FDB entries stay right); locally administered, unicast.
pub fn vtep_mac(node: &str, vni: u32) -> [u8; 6] {
    let h = fnv(&format!("{node}/{vni}")).to_be_bytes();
    [(h[0] & 0xfe) | 0x02, h[1], h[2], h[3], h[4], h[5]]
}

/// The lease a node remembers: the subnet it held and the etcd lease that held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalLease {
    pub subnet: Ipv4Net,
    pub lease_id: i64,
    /// The cluster prefix it was taken under: another cluster's lease is not this one's.
    pub prefix: String,
}

impl LocalLease {
    /// None when there is none; an unreadable or corrupt file is an error (it may hold the only
    /// record of which subnet is this node's).
    pub fn load(path: &Path) -> Result<Option<LocalLease>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Other(format!("{}: not a lease record ({e}); remove it to take a new subnet", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Other(format!("encode lease: {e}")))?;
        write_atomic(path, &bytes, 0o600)
    }

    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }
}

/// Writes `path` whole or not at all (cni-bridge's [`cni_bridge::atomic_file::write`]); the
/// directory is created 0700 if missing.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    cni_bridge::atomic_file::write(path, bytes, mode, 0o700)
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let s: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(subnet_key("/p", s), "/p/subnets/10.244.3.0-24");
        assert_eq!(subnet_of_key("/p", "/p/subnets/10.244.3.0-24"), Some(s));
        assert_eq!(subnet_of_key("/p", "/p/subnets/10.244.3.1-24"), None);
        assert_eq!(subnet_of_key("/p", "/q/subnets/10.244.3.0-24"), None);
        assert_eq!(subnet_of_key("/p", "/p/subnets/junk"), None);
    }

    #[test]
    fn free_subnets_skip_taken_and_overlapping() {
        let c: Ipv4Net = "10.244.0.0/22".parse().unwrap();
        let taken: BTreeSet<Ipv4Net> = ["10.244.1.0/24".parse().unwrap(), "10.244.2.0/23".parse().unwrap()].into();
        let free = free_subnets(c, 24, &taken, "a");
        assert_eq!(free, vec!["10.244.0.0/24".parse::<Ipv4Net>().unwrap()]);
        let all = free_subnets(c, 24, &BTreeSet::new(), "b");
        assert_eq!(all.len(), 4);
        // Different names start at different places (mostly).
        let starts: BTreeSet<Ipv4Net> =
            (0..20).map(|i| free_subnets(c, 24, &BTreeSet::new(), &format!("n{i}"))[0]).collect();
        assert!(starts.len() > 1);
    }

    #[test]
    fn macs() {
        let m = vtep_mac("node-a", 1);
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_eq!(m, vtep_mac("node-a", 1));
        assert_ne!(m, vtep_mac("node-b", 1));
        assert_eq!(parse_mac(&format_mac(m)), Some(m));
        assert_eq!(parse_mac("aa:bb"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
    }

    #[test]
    fn record_json() {
        let r = SubnetRecord { node: "a".into(), node_ip: "10.99.0.1".parse().unwrap(), vtep_mac: None };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"node":"a","nodeIP":"10.99.0.1"}"#);
    }

    #[test]
    fn local_lease_file() {
        let dir = std::env::temp_dir().join(format!("podnet-lease-{}", std::process::id()));
        let p = dir.join("s/lease.json");
        assert_eq!(LocalLease::load(&p).unwrap(), None);
        let l = LocalLease { subnet: "10.244.3.0/24".parse().unwrap(), lease_id: 42, prefix: "/p".into() };
        l.save(&p).unwrap();
        assert_eq!(LocalLease::load(&p).unwrap(), Some(l));
        std::fs::write(&p, b"junk").unwrap();
        assert!(LocalLease::load(&p).is_err());
        LocalLease::remove(&p).unwrap();
        LocalLease::remove(&p).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
