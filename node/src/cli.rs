//! The commands besides `node run`: `cluster init`, `node status`, `node leave`.

use crate::agent::{lock_run_dir, log};
use crate::config::{ClusterSettings, NodeConfig};
use crate::dataplane::Dataplane;
use crate::error::{Error, Errors, Result};
use crate::lease::LocalLease;
use crate::status::{now_unix, InPlaceStatus, Status};
use crate::store::Store;

/// An unreachable etcd named as the setting that points at it (etcd-client connects lazily:
/// the first request is what finds out).
fn unreachable_as(key: &str, endpoints: &[String], e: Error) -> Error {
    if e.is_unreachable() {
        Error::config(key, format!("cannot reach etcd at {} ({e}); nothing was changed", endpoints.join(", ")))
    } else {
        e
    }
}

/// `podnet cluster init`: writes the settings once; the same settings again are fine.
pub async fn cluster_init(endpoints: &[String], prefix: &str, s: &ClusterSettings) -> Result<String> {
    let named = |e| unreachable_as("--etcd-endpoints", endpoints, e);
    let mut store = Store::connect(endpoints, prefix).await.map_err(named)?;
    let json = serde_json::to_string(s).map_err(|e| Error::Other(e.to_string()))?;
    Ok(if store.init_cluster(s).await.map_err(named)? {
        format!("initialized {prefix}/cluster: {json}\n")
    } else {
        format!("{prefix}/cluster already holds these settings: {json}\n")
    })
}

/// Whether the agent that wrote `s` still runs: its pid is alive and is a `podnet` process
/// (no lock is taken, so a starting agent never finds the run directory busy because of us).
fn agent_running(s: &Status) -> bool {
    std::fs::read(format!("/proc/{}/cmdline", s.pid))
        .is_ok_and(|c| c.split(|b| *b == 0).next().is_some_and(|argv0| argv0.ends_with(b"podnet")))
}

/// `podnet node status`: the agent's report, with what the kernel holds now and the lease's
/// time left as etcd says (estimated from the last keep-alive when etcd is away).
pub async fn status(cfg: &NodeConfig, json: bool) -> Result<String> {
    let mut s = Status::load(&cfg.status_path())?;
    let alive = agent_running(&s);
    let mut dp = Dataplane::open(cfg.node_ip)?;
    let vxlan = match &s.vxlan_device {
        Some(name) => dp.link(name)?.map(|l| l.index),
        None => None,
    };
    let plans: Vec<_> = s.peers.iter().map(|p| p.to_plan()).collect();
    let places = dp.in_place(&plans, vxlan)?;
    for (p, ip) in s.peers.iter_mut().zip(places) {
        p.in_place = Some(InPlaceStatus { route: ip.route, neigh: ip.neigh, fdb: ip.fdb });
    }
    let estimate = s.lease_ttl.map(|(ttl, at)| ttl - now_unix().saturating_sub(at) as i64);
    let (left, left_text) = match s.lease_id {
        None => (None, "none".to_string()),
        Some(id) => {
            let asked = async {
                let mut store = Store::connect(&cfg.etcd_endpoints, &cfg.prefix).await?;
                store.ttl(id).await
            };
            match tokio::time::timeout(std::time::Duration::from_secs(4), asked).await {
                Ok(Ok(Some(t))) => (Some(t), format!("{id:x}, {t}s left")),
                Ok(Ok(None)) => (Some(0), format!("{id:x} EXPIRED")),
                Ok(Err(_)) | Err(_) => {
                    (estimate, format!("{id:x}, about {}s left (etcd unreachable)", estimate.unwrap_or(0).max(0)))
                }
            }
        }
    };
    if json {
        let mut v = serde_json::to_value(&s).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("leaseSecondsLeft".into(), left.into());
            o.insert("agentRunning".into(), alive.into());
        }
        let mut out = serde_json::to_string_pretty(&v).map_err(|e| Error::Other(e.to_string()))?;
        out.push('\n');
        return Ok(out);
    }
    Ok(crate::status::table(&s, &left_text, alive))
}

/// `podnet node leave`: releases the lease (its keys go with it, so every peer removes its
/// entries for this node) and removes this node's own routes, VXLAN device and facts. The
/// agent must be stopped first; etcd must be reachable (otherwise nothing is changed).
pub async fn leave(cfg: &NodeConfig) -> Result<String> {
    let _lock = lock_run_dir(cfg).map_err(|e| {
        Error::Other(format!("{e}: stop the agent (e.g. `systemctl stop podnet-node`) before `podnet node leave`"))
    })?;
    let local = LocalLease::load(&cfg.lease_path())?;
    let named = |e| unreachable_as("etcd_endpoints", &cfg.etcd_endpoints, e);
    let mut store = Store::connect(&cfg.etcd_endpoints, &cfg.prefix).await.map_err(named)?;
    let settings = store.cluster().await.map_err(named)?;
    let mut errs = Errors::new();
    let mut released = Vec::new();
    if let Some(l) = local.as_ref().filter(|l| l.prefix == cfg.prefix) {
        match store.revoke(l.lease_id).await {
            Ok(()) => released.push(format!("lease {:x} ({})", l.lease_id, l.subnet)),
            Err(e) => errs.add(e),
        }
    }
    // The name may still be held by a lease this node no longer remembers (state wiped).
    match store.holder_of_name(&cfg.name).await {
        Ok(Some((subnet, lease))) => match store.revoke(lease).await {
            Ok(()) => released.push(format!("lease {lease:x} ({})", subnet.map_or("?".into(), |s| s.to_string()))),
            Err(e) => errs.add(e),
        },
        Ok(None) => {}
        Err(e) => errs.add(e),
    }
    // The VXLAN device: the settings' one; without settings (or on host-gw), any of podnet's.
    let vxlan = settings.as_ref().filter(|s| s.backend.uses_vxlan()).map(|s| s.vxlan_device());
    errs.push(crate::dataplane::remove_all(vxlan.as_deref()));
    errs.push(crate::facts::remove(cfg));
    if errs.is_empty() {
        errs.push(LocalLease::remove(&cfg.lease_path()));
        let st = cfg.status_path();
        if let Err(e) = std::fs::remove_file(&st) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errs.add(Error::io(format!("remove {}", st.display()), e));
            }
        }
    }
    errs.into_result()?;
    log!("left the cluster");
    Ok(if released.is_empty() {
        "held no lease; removed this node's routes and devices\n".to_string()
    } else {
        format!("released {}; removed this node's routes and devices\n", released.join(", "))
    })
}
