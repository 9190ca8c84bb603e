//! The datastore: etcd v3 through `etcd-client`. The cluster settings (compare-and-swap, once),
//! a node's lease (one transaction for its subnet and name keys), the peers' records (a range
//! read, then a watch from the revision after it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnet::Ipv4Net;

use crate::config::ClusterSettings;
use crate::error::{Error, Result};
use crate::lease::{cluster_key, free_subnets, node_key, subnet_key, subnet_of_key, subnets_prefix, SubnetRecord};

/// One request's deadline: an agent waiting on a dead etcd must get back to its loop.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Store {
    pub client: Client,
    pub prefix: String,
}

/// A peer's record, or why it could not be read (it is left out of the plan, and said so).
pub type Peers = BTreeMap<Ipv4Net, SubnetRecord>;

/// A change the watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Ipv4Net, SubnetRecord),
    Gone(Ipv4Net),
}

impl Store {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Store> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from the others refuses requests (and watches) instead of
            // answering from its stale view.
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(opts))
            .await
            .map_err(|e| Error::etcd(format!("connect to {}", endpoints.join(",")), e))?;
        Ok(Store { client, prefix: prefix.to_string() })
    }

    /// Writes the settings if there are none; Ok(false) if the same ones are there already;
    /// an error naming the difference if other ones are.
    pub async fn init_cluster(&mut self, s: &ClusterSettings) -> Result<bool> {
        let key = cluster_key(&self.prefix);
        let value = serde_json::to_vec(s).map_err(|e| Error::Other(format!("encode settings: {e}")))?;
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key.clone(),
            value,
            None,
        )]);
        let resp = self.client.txn(txn).await.map_err(|e| Error::etcd(format!("write {key}"), e))?;
        if resp.succeeded() {
            return Ok(true);
        }
        match self.cluster().await? {
            Some(cur) if cur == *s => Ok(false),
            Some(cur) => Err(Error::config(
                key,
                format!(
                    "already holds other settings (clusterCIDR {}, subnetLen {}, backend {}, vni {}, port {}); \
                     they are written once",
                    cur.cluster_cidr,
                    cur.subnet_len,
                    cur.backend.as_str(),
                    cur.vni,
                    cur.port
                ),
            )),
            None => Err(Error::Datastore(format!("{key} vanished while it was being written; try again"))),
        }
    }

    pub async fn cluster(&mut self) -> Result<Option<ClusterSettings>> {
        let key = cluster_key(&self.prefix);
        let resp = self.client.get(key.clone(), None).await.map_err(|e| Error::etcd(format!("read {key}"), e))?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => ClusterSettings::from_stored(&self.prefix, kv.value()).map(Some),
        }
    }

    /// Every node's record and the revision they were read at; records that do not parse are
    /// returned apart, by key.
    pub async fn peers(&mut self) -> Result<(Peers, Vec<String>, i64)> {
        let p = subnets_prefix(&self.prefix);
        let resp = self
            .client
            .get(p.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| Error::etcd(format!("list {p}"), e))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut peers = Peers::new();
        let mut bad = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match (subnet_of_key(&self.prefix, &key), serde_json::from_slice::<SubnetRecord>(kv.value())) {
                (Some(s), Ok(r)) => {
                    peers.insert(s, r);
                }
                _ => bad.push(key),
            }
        }
        Ok((peers, bad, rev))
    }

    /// Watches the subnet records from `rev` (the one after a [`Store::peers`] read).
    pub async fn watch(&mut self, rev: i64) -> Result<WatchStream> {
        let p = subnets_prefix(&self.prefix);
        self.client
            .watch(p.clone(), Some(WatchOptions::new().with_prefix().with_start_revision(rev)))
            .await
            .map_err(|e| Error::etcd(format!("watch {p}"), e))
    }

    /// The changes of one watch response; None when the watch was cancelled (compaction: the
    /// caller lists again).
    pub fn changes(&self, resp: &etcd_client::WatchResponse) -> Option<Vec<Change>> {
        if resp.canceled() || resp.compact_revision() > 0 {
            return None;
        }
        let mut out = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key());
            let Some(subnet) = subnet_of_key(&self.prefix, &key) else { continue };
            match ev.event_type() {
                EventType::Put => match serde_json::from_slice::<SubnetRecord>(kv.value()) {
                    Ok(r) => out.push(Change::Put(subnet, r)),
                    Err(_) => out.push(Change::Gone(subnet)),
                },
                EventType::Delete => out.push(Change::Gone(subnet)),
            }
        }
        Some(out)
    }

    pub async fn grant(&mut self, ttl: Duration) -> Result<i64> {
        let resp =
            self.client.lease_grant(ttl.as_secs() as i64, None).await.map_err(|e| Error::etcd("grant a lease", e))?;
        Ok(resp.id())
    }

    /// Seconds the lease has left; None when it has expired (or never was).
    pub async fn ttl(&mut self, lease: i64) -> Result<Option<i64>> {
        let resp = self
            .client
            .lease_time_to_live(lease, None)
            .await
            .map_err(|e| Error::etcd(format!("read lease {lease:x}"), e))?;
        Ok((resp.ttl() > 0).then_some(resp.ttl()))
    }

    /// One keep-alive round trip, bounded by [`REQUEST_TIMEOUT`]: Some(TTL) when the lease was
    /// renewed (to its full TTL), None when the lease is gone.
    pub async fn keep_alive(&mut self, lease: i64, ttl: Duration) -> Result<Option<i64>> {
        // etcd-client's keep_alive makes the first round trip itself and reports a lease the
        // server no longer has (TTL <= 0) as this error; the renewed TTL is the granted one.
        let what = || format!("keep lease {lease:x} alive");
        match bounded(&what(), self.client.lease_keep_alive(lease)).await? {
            Ok(_) => Ok(Some(ttl.as_secs() as i64)),
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == "lease not found" => Ok(None),
            Err(e) => Err(Error::etcd(what(), e)),
        }
    }

    pub async fn revoke(&mut self, lease: i64) -> Result<()> {
        match self.client.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            // Already expired: nothing is left to release.
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(Error::etcd(format!("revoke lease {lease:x}"), e)),
        }
    }

    /// Creates `subnet`'s record and this node's name key under `lease`, unless either exists.
    pub async fn try_claim(&mut self, subnet: Ipv4Net, rec: &SubnetRecord, lease: i64) -> Result<bool> {
        self.put_both(subnet, rec, lease, [Cond::Free, Cond::Free], "claim").await
    }

    /// Rewrites this node's record under the lease it holds (its node IP or VTEP MAC changed,
    /// or the record was deleted by hand or lost in a restore): when both keys are bound to
    /// that lease, or the subnet key is missing and the name key is bound to it.
    pub async fn refresh(&mut self, subnet: Ipv4Net, rec: &SubnetRecord, lease: i64) -> Result<bool> {
        if self.put_both(subnet, rec, lease, [Cond::Bound, Cond::Bound], "refresh").await? {
            return Ok(true);
        }
        self.put_both(subnet, rec, lease, [Cond::Free, Cond::Bound], "restore").await
    }

    /// Puts the subnet record and the name key under `lease` in one transaction, if `cond[0]`
    /// holds for the subnet key and `cond[1]` for the name key.
    async fn put_both(
        &mut self,
        subnet: Ipv4Net,
        rec: &SubnetRecord,
        lease: i64,
        cond: [Cond; 2],
        what: &str,
    ) -> Result<bool> {
        let compare = |c: Cond, k: String| match c {
            Cond::Free => Compare::create_revision(k, CompareOp::Equal, 0),
            Cond::Bound => Compare::lease(k, CompareOp::Equal, lease),
        };
        let sk = subnet_key(&self.prefix, subnet);
        let nk = node_key(&self.prefix, &rec.node);
        let value = serde_json::to_vec(rec).map_err(|e| Error::Other(format!("encode record: {e}")))?;
        let put = || Some(PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when([compare(cond[0], sk.clone()), compare(cond[1], nk.clone())])
            .and_then([TxnOp::put(sk.clone(), value, put()), TxnOp::put(nk, sk.clone(), put())]);
        let resp = self.client.txn(txn).await.map_err(|e| Error::etcd(format!("{what} {sk}"), e))?;
        Ok(resp.succeeded())
    }

    /// Who holds `name` now: (subnet key's subnet, lease).
    pub async fn holder_of_name(&mut self, name: &str) -> Result<Option<(Option<Ipv4Net>, i64)>> {
        let nk = node_key(&self.prefix, name);
        let resp = self.client.get(nk.clone(), None).await.map_err(|e| Error::etcd(format!("read {nk}"), e))?;
        Ok(resp.kvs().first().map(|kv| (subnet_of_key(&self.prefix, &String::from_utf8_lossy(kv.value())), kv.lease())))
    }

    /// Takes a subnet for `rec.node` under `lease`: `want` first (the one held before, or the
    /// fixed one), else the first free one. `fixed`: only `want` will do.
    pub async fn claim(
        &mut self,
        want: Option<Ipv4Net>,
        fixed: bool,
        s: &ClusterSettings,
        rec: &SubnetRecord,
        lease: i64,
    ) -> Result<Ipv4Net> {
        if let Some(w) = want {
            // The key names the exact subnet: one that merely overlaps another node's (a
            // subnet remembered from before the cluster's subnet length changed) is refused here.
            let (peers, _, _) = self.peers().await?;
            let overlaps =
                peers.iter().find(|(p, r)| **p != w && r.node != rec.node && (p.contains(&w) || w.contains(*p)));
            if let Some((p, r)) = overlaps {
                if fixed {
                    return Err(Error::config("subnet", format!("{w} overlaps {p}, held by node {:?}", r.node)));
                }
            } else if w.prefix_len() == s.subnet_len
                && s.cluster_cidr.contains(&w)
                && self.try_claim(w, rec, lease).await?
            {
                return Ok(w);
            }
            if fixed {
                let (peers, _, _) = self.peers().await?;
                return Err(match peers.get(&w) {
                    Some(other) if other.node != rec.node => Error::config(
                        "subnet",
                        format!(
                            "{w} is held by node {:?} ({}); a fixed subnet must be free",
                            other.node, other.node_ip
                        ),
                    ),
                    _ => Error::Datastore(format!(
                        "could not claim {w}: the name {:?} is held by another lease (an agent of the same name, or \
                         this node's previous lease before its TTL ran out)",
                        rec.node
                    )),
                });
            }
        }
        // Bounded: each failed attempt means another node took a subnet meanwhile.
        for _ in 0..64 {
            let (peers, bad, _) = self.peers().await?;
            let mut taken: BTreeSet<Ipv4Net> = peers.keys().copied().collect();
            taken.extend(bad.iter().filter_map(|k| subnet_of_key(&self.prefix, k)));
            let Some(pick) = free_subnets(s.cluster_cidr, s.subnet_len, &taken, &rec.node).into_iter().next() else {
                return Err(Error::Datastore(format!(
                    "no free /{} left in {} ({} nodes hold one)",
                    s.subnet_len,
                    s.cluster_cidr,
                    taken.len()
                )));
            };
            if self.try_claim(pick, rec, lease).await? {
                return Ok(pick);
            }
            if let Some((_, holder)) = self.holder_of_name(&rec.node).await? {
                if holder != lease {
                    return Err(Error::Datastore(format!(
                        "the node name {:?} is held by lease {holder:x}: another agent of that name is running, or \
                         this node's previous lease has not run out yet",
                        rec.node
                    )));
                }
            }
        }
        Err(Error::Datastore("could not claim a subnet after 64 tries: too many nodes joining at once?".into()))
    }
}

/// What a key must be for [`Store::put_both`]: absent, or bound to the node's lease.
#[derive(Clone, Copy)]
enum Cond {
    Free,
    Bound,
}

/// `fut` with [`REQUEST_TIMEOUT`]: a stream-opening call tonic's own timeout does not cover.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| Error::Datastore(format!("{what}: no answer within {}s", REQUEST_TIMEOUT.as_secs())))
}
