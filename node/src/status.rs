//! What the running agent reports (`<run_dir>/node-status.json`, rewritten at every change) and
//! `podnet node status`, which shows it with what the kernel holds now.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lease::{format_mac, parse_mac, write_atomic};
use crate::plan::{PeerPlan, Via, WantRoute};

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datastore {
    /// "connecting", "connected" or "unreachable".
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the state last changed (unix seconds).
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub name: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteStatus>,
    /// (IP, MAC) of the permanent neighbour on the VXLAN device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neigh: Option<(Ipv4Addr, String)>,
    /// (MAC, remote VTEP) of the FDB entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb: Option<(String, Ipv4Addr)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The last time the datastore showed this peer's lease (unix seconds).
    pub last_seen: u64,
    /// Filled in by `podnet node status` from the kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub dst: Ipv4Net,
    pub gw: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlaceStatus {
    pub route: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neigh: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: Ipv4Addr,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<i64>,
    /// The lease's time left at the last keep-alive, and when that was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<(i64, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_device: Option<String>,
    pub datastore: Datastore,
    pub peers: Vec<PeerStatus>,
    /// Why this node does not hold its subnet's lease (it ran out and another node took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_error: Option<String>,
    /// Why the last reconcile was incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_error: Option<String>,
    pub updated: u64,
}

impl Status {
    pub fn load(path: &Path) -> Result<Status> {
        let b = std::fs::read(path)
            .map_err(|e| Error::io(format!("read {} (is `podnet node run` running?)", path.display()), e))?;
        serde_json::from_slice(&b).map_err(|e| Error::Other(format!("{}: {e}", path.display())))
    }

    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.updated = now_unix();
        let b = serde_json::to_vec_pretty(self).map_err(|e| Error::Other(format!("encode status: {e}")))?;
        write_atomic(path, &b, 0o644)
    }
}

impl PeerStatus {
    pub fn from_plan(p: &PeerPlan, last_seen: u64) -> PeerStatus {
        PeerStatus {
            name: p.name.clone(),
            node_ip: p.node_ip,
            subnet: p.subnet,
            backend: p.via.map(|v| v.as_str().to_string()),
            route: p.route.map(|r| RouteStatus { dst: r.dst, gw: r.gw, oif: r.oif, onlink: r.onlink }),
            neigh: p.neigh.map(|(ip, mac)| (ip, format_mac(mac))),
            fdb: p.fdb.map(|(mac, dst)| (format_mac(mac), dst)),
            problem: p.problem.clone(),
            last_seen,
            in_place: None,
        }
    }

    /// The plan this status was made from (to check it against the kernel).
    pub fn to_plan(&self) -> PeerPlan {
        PeerPlan {
            name: self.name.clone(),
            subnet: self.subnet,
            node_ip: self.node_ip,
            via: match self.backend.as_deref() {
                Some("host-gw") => Some(Via::HostGw),
                Some("vxlan") => Some(Via::Vxlan),
                _ => None,
            },
            route: self.route.map(|r| WantRoute { dst: r.dst, gw: r.gw, oif: r.oif, onlink: r.onlink }),
            neigh: self.neigh.as_ref().and_then(|(ip, mac)| parse_mac(mac).map(|m| (*ip, m))),
            fdb: self.fdb.as_ref().and_then(|(mac, dst)| parse_mac(mac).map(|m| (m, *dst))),
            problem: self.problem.clone(),
        }
    }
}

fn ago(t: u64, now: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn yn(b: Option<bool>) -> &'static str {
    match b {
        None => "-",
        Some(true) => "yes",
        Some(false) => "NO",
    }
}

/// The operator's table. `lease_left`: seconds, from etcd or estimated.
pub fn table(s: &Status, lease_left: &str, alive: bool) -> String {
    let now = now_unix();
    let mut out = String::new();
    let subnet = s.subnet.map_or("(none yet)".to_string(), |n| n.to_string());
    out.push_str(&format!("node       {} ({}){}\n", s.node, s.node_ip, if alive { "" } else { "  AGENT NOT RUNNING" }));
    out.push_str(&format!("subnet     {subnet}   lease {lease_left}\n"));
    out.push_str(&format!(
        "backend    {}   mtu {}{}\n",
        s.backend.as_deref().unwrap_or("?"),
        s.mtu.map_or("?".into(), |m| m.to_string()),
        s.vxlan_device.as_ref().map_or(String::new(), |d| format!("   device {d}"))
    ));
    let ds = &s.datastore;
    out.push_str(&format!(
        "datastore  {} since {}{}{}\n",
        ds.state,
        ago(ds.since, now),
        ds.retry_in_ms.map_or(String::new(), |r| format!(", retrying every {r} ms")),
        ds.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
    ));
    if let Some(e) = &s.lease_error {
        out.push_str(&format!("lease      LOST: {e}\n"));
    }
    if let Some(e) = &s.reconcile_error {
        out.push_str(&format!("reconcile  INCOMPLETE: {e}\n"));
    }
    out.push('\n');
    let rows: Vec<[String; 8]> = s
        .peers
        .iter()
        .map(|p| {
            let ip = p.in_place.unwrap_or(InPlaceStatus { route: false, neigh: None, fdb: None });
            [
                p.name.clone(),
                p.node_ip.to_string(),
                p.subnet.to_string(),
                p.backend.clone().unwrap_or_else(|| "-".into()),
                if p.route.is_some() { yn(Some(ip.route)).into() } else { "-".into() },
                yn(ip.fdb).into(),
                yn(ip.neigh).into(),
                format!(
                    "{}{}",
                    ago(p.last_seen, now),
                    p.problem.as_ref().map_or(String::new(), |e| format!("  ({e})"))
                ),
            ]
        })
        .collect();
    let head = ["PEER", "NODE IP", "SUBNET", "BACKEND", "ROUTE", "FDB", "NEIGH", "LAST SEEN"].map(String::from);
    let mut w = [0usize; 8];
    for r in std::iter::once(&head).chain(rows.iter()) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in std::iter::once(&head).chain(rows.iter()) {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no peers)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json_round_trip() {
        let plan = PeerPlan {
            name: "b".into(),
            subnet: "10.244.2.0/24".parse().unwrap(),
            node_ip: "10.99.0.2".parse().unwrap(),
            via: Some(Via::Vxlan),
            route: Some(WantRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                gw: "10.244.2.0".parse().unwrap(),
                oif: 7,
                onlink: true,
            }),
            neigh: Some(("10.244.2.0".parse().unwrap(), [2, 0, 0, 0, 0, 0xb])),
            fdb: Some(([2, 0, 0, 0, 0, 0xb], "10.99.0.2".parse().unwrap())),
            problem: None,
        };
        let mut p = PeerStatus::from_plan(&plan, now_unix());
        assert_eq!(p.to_plan(), plan);
        p.in_place = Some(InPlaceStatus { route: true, neigh: Some(true), fdb: Some(false) });
        let s = Status {
            node: "a".into(),
            node_ip: "10.99.0.1".parse().unwrap(),
            pid: 1,
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            lease_id: Some(5),
            lease_ttl: Some((10, now_unix())),
            backend: Some("vxlan".into()),
            mtu: Some(1450),
            vxlan_device: Some("podnet.1".into()),
            datastore: Datastore { state: "connected".into(), error: None, since: now_unix(), retry_in_ms: None },
            peers: vec![p],
            lease_error: None,
            reconcile_error: None,
            updated: 0,
        };
        let back: Status = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let t = table(&s, "10s left", true);
        assert!(t.contains("10.244.1.0/24   lease 10s left"), "{t}");
        let row = t.lines().find(|l| l.starts_with("b ")).unwrap();
        assert!(row.contains("vxlan") && row.contains("yes") && row.contains("NO"), "{row}");
    }
}
