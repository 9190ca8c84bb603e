//! The commands besides `node run`: `cluster init`, `node status`, `node leave`.

use crate::agent::{lock_run_dir, log};
use crate::config::{ClusterSettings, NodeConfig};
use crate::dataplane::Dataplane;
use crate::error::{Error, Errors, Result};
use crate::lease::LocalLease;
use crate::status::{now_unix, InPlaceStatus, Status};
use crate::store::Store;

/// `podnet cluster init`: writes the settings once; the same settings again are fine.
pub async fn cluster_init(endpoints: &[String], prefix: &str, s: &ClusterSettings) -> Result<String> {
    let mut store = Store::connect(endpoints, prefix).await.map_err(|e| {
        Error::config("--etcd-endpoints", format!("cannot reach etcd at {} ({e})", endpoints.join(", ")))
    })?;
    let json = serde_json::to_string(s).map_err(|e| Error::Other(e.to_string()))?;
    Ok(if store.init_cluster(s).await? {
        format!("initialized {prefix}/cluster: {json}\n")
    } else {
        format!("{prefix}/cluster already holds these settings: {json}\n")
    })
}

/// Whether an agent holds the run directory's lock.
fn agent_running(cfg: &NodeConfig) -> bool {
    if !cfg.lock_path().exists() {
        return false;
    }
    lock_run_dir(cfg).is_err()
}

/// `podnet node status`: the agent's report, with what the kernel holds now and the lease's
/// time left as etcd says (estimated from the last keep-alive when etcd is away).
pub async fn status(cfg: &NodeConfig, json: bool) -> Result<String> {
    let mut s = Status::load(&cfg.status_path())?;
    let alive = agent_running(cfg);
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
    let mut store = Store::connect(&cfg.etcd_endpoints, &cfg.prefix).await.map_err(|e| {
        Error::config("etcd_endpoints", format!("cannot reach etcd to release the lease ({e}); nothing was changed"))
    })?;
    let settings = store.cluster().await?;
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
    match Dataplane::open(cfg.node_ip) {
        Ok(mut dp) => errs.push(dp.remove_all(settings.as_ref().map(|s| s.vxlan_device()).as_deref())),
        Err(e) => errs.add(e),
    }
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
