//! `podnet node run`: the node agent's life.
//!
//! 1. Check everything before touching anything: node.toml, the node IP's link, the cluster
//!    settings in etcd against this node (an unreachable etcd at a first start is an error).
//! 2. Take the lease: the subnet held before (remembered in `state_dir`), or the fixed one, or
//!    a free one; keep it alive every TTL/3.
//! 3. Make the VXLAN device (vxlan, auto), write the node's facts for the CNI plugin.
//! 4. List every peer, reconcile the kernel with them, then follow the watch from the revision
//!    after the listing: a peer's lease appearing or expiring is a watch event, applied at once.
//!
//! The datastore going away changes nothing in the kernel: routes stay, the agent retries with
//! backoff (500 ms doubling to a quarter of the TTL, at most 10 s), says so in its status and log, and lists again when etcd is
//! back. SIGTERM/SIGINT end the agent and leave everything in place (a restart within the TTL
//! keeps the subnet and the traffic); `podnet node leave` is what releases a node.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{ClusterSettings, NodeConfig};
use crate::dataplane::{enable_forwarding, Dataplane};
use crate::error::{Error, Result};
use crate::lease::{format_mac, LocalLease, SubnetRecord};
use crate::plan::{plan, Local};
use crate::status::{now_unix, Datastore, PeerStatus, Status};
use crate::store::{Change, Peers, Store};

macro_rules! log {
    ($($t:tt)*) => { eprintln!("podnet node: {}", format_args!($($t)*)) };
}
pub(crate) use log;

/// The run directory's lock, held for the agent's life: one agent per node (per run_dir).
pub struct RunLock {
    _file: std::fs::File,
}

pub fn lock_run_dir(cfg: &NodeConfig) -> Result<RunLock> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&cfg.run_dir)
        .map_err(|e| Error::io(format!("create {}", cfg.run_dir.display()), e))?;
    let p = cfg.lock_path();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(format!("open {}", p.display()), e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Other(format!(
                "another podnet node agent holds {} (one agent per node; stop it first)",
                p.display()
            )));
        }
        return Err(Error::io(format!("lock {}", p.display()), e));
    }
    Ok(RunLock { _file: f })
}

/// Retry delays: 500 ms doubling up to a cap below the lease's TTL, so that a lease survives an
/// outage that ends before the TTL runs out (etcd extends leases when it comes back).
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(ttl: Duration) -> Backoff {
        let cap = (ttl / 4).clamp(Duration::from_millis(500), Duration::from_secs(10));
        Backoff { next: Duration::from_millis(500).min(cap), cap }
    }
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(500).min(self.cap);
    }
}

/// Every this many ticks (TTL/3 each) the agent lists the peers again, whatever the watch said.
const RESYNC_TICKS: u32 = 30;

/// How a loop iteration ended.
enum Outcome {
    /// SIGTERM or SIGINT: leave everything as it is.
    Stop,
    /// The datastore failed: keep the kernel as it is, reconnect.
    Outage(Error),
    /// The watch was cancelled (compaction): list again.
    Resync,
}

struct Agent {
    cfg: NodeConfig,
    settings: ClusterSettings,
    dp: Dataplane,
    lease: i64,
    subnet: Ipv4Net,
    vxlan: Option<(u32, [u8; 6])>,
    peers: Peers,
    last_seen: BTreeMap<Ipv4Net, u64>,
    status: Status,
    term: Signal,
    int: Signal,
}

pub async fn run(cfg: NodeConfig) -> Result<()> {
    let _lock = lock_run_dir(&cfg)?;
    let local = LocalLease::load(&cfg.lease_path())?.filter(|l| l.prefix == cfg.prefix);
    let dp = Dataplane::open(cfg.node_ip)?;
    let mut status = Status {
        node: cfg.name.clone(),
        node_ip: cfg.node_ip,
        pid: std::process::id(),
        subnet: local.as_ref().map(|l| l.subnet),
        lease_id: local.as_ref().map(|l| l.lease_id),
        lease_ttl: None,
        backend: None,
        mtu: None,
        vxlan_device: None,
        datastore: Datastore { state: "connecting".into(), error: None, since: now_unix(), retry_in_ms: None },
        peers: Vec::new(),
        lease_error: None,
        reconcile_error: None,
        updated: 0,
    };
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("install SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("install SIGINT handler", e))?;

    // The first contact. At a first start (no lease remembered) an unreachable etcd is a
    // configuration error; a node that held a lease keeps its routes and waits for etcd.
    let mut backoff = Backoff::new(cfg.ttl);
    let (mut store, settings) = loop {
        let contact = tokio::select! {
            r = first_contact(&cfg) => r,
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        };
        match contact {
            Ok(x) => break x,
            Err(e) if local.is_none() && e.is_unreachable() => {
                return Err(Error::config(
                    "etcd_endpoints",
                    format!("cannot reach etcd at {} ({e}); nothing was set up", cfg.etcd_endpoints.join(", ")),
                ));
            }
            Err(e) if e.is_unreachable() => {
                let wait = backoff.next();
                log!("{e}; the kernel is left as it is; retrying in {}ms", wait.as_millis());
                status.datastore = unreachable(&status.datastore, &e, wait);
                status.save(&cfg.status_path())?;
                if wait_or_signal(wait, &mut term, &mut int).await {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    };
    settings.check_node(&cfg.prefix, dp.underlay.net.trunc(), cfg.subnet)?;

    // The lease.
    let rec = SubnetRecord {
        node: cfg.name.clone(),
        node_ip: cfg.node_ip,
        vtep_mac: settings.backend.uses_vxlan().then(|| format_mac(crate::lease::vtep_mac(&cfg.name, settings.vni))),
    };
    let (lease, subnet) = tokio::select! {
        r = take_lease(&mut store, &cfg, &settings, local.as_ref(), &rec) => r?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    log!("holds {subnet} (lease {lease:x}, TTL {}s), backend {}", cfg.ttl.as_secs(), settings.backend.as_str());

    let mut agent = Agent {
        cfg,
        settings,
        dp,
        lease,
        subnet,
        vxlan: None,
        peers: Peers::new(),
        last_seen: BTreeMap::new(),
        status,
        term,
        int,
    };
    agent.setup_node()?;
    agent.status.datastore = connected();
    agent.save_status();
    agent.main_loop(store).await
}

/// Connects and reads the cluster settings.
async fn first_contact(cfg: &NodeConfig) -> Result<(Store, ClusterSettings)> {
    let mut store = Store::connect(&cfg.etcd_endpoints, &cfg.prefix).await?;
    let settings = store.cluster().await?.ok_or_else(|| {
        Error::config(
            format!("{}/cluster", cfg.prefix),
            "missing: the cluster is not initialized (run `podnet cluster init --cluster-cidr ...` once)",
        )
    })?;
    Ok((store, settings))
}

/// The lease this node will hold: the remembered one if it is still alive, the remembered
/// subnet under a new lease if that is still free, else the fixed or a free subnet.
async fn take_lease(
    store: &mut Store,
    cfg: &NodeConfig,
    s: &ClusterSettings,
    local: Option<&LocalLease>,
    rec: &SubnetRecord,
) -> Result<(i64, Ipv4Net)> {
    if let Some(l) = local {
        let keep = cfg.subnet.is_none_or(|f| f == l.subnet)
            && s.cluster_cidr.contains(&l.subnet)
            && l.subnet.prefix_len() == s.subnet_len;
        if keep && store.ttl(l.lease_id).await?.is_some() && store.refresh(l.subnet, rec, l.lease_id).await? {
            // Renewed at once: the lease may have had only a moment left.
            store.keep_alive(l.lease_id, cfg.ttl).await?;
            log!("took back lease {:x} for {}", l.lease_id, l.subnet);
            return Ok((l.lease_id, l.subnet));
        }
        if !keep {
            store.revoke(l.lease_id).await?;
        }
    }
    let lease = store.grant(cfg.ttl).await?;
    let want = cfg.subnet.or(local.map(|l| l.subnet));
    let claimed = match store.claim(want, cfg.subnet.is_some(), s, rec, lease).await {
        Ok(n) => {
            LocalLease { subnet: n, lease_id: lease, prefix: cfg.prefix.clone() }.save(&cfg.lease_path()).map(|()| n)
        }
        Err(e) => Err(e),
    };
    match claimed {
        Ok(subnet) => Ok((lease, subnet)),
        Err(e) => {
            // Nothing keeps a lease this node will not use: its keys go with it.
            if let Err(r) = store.revoke(lease).await {
                log!("could not revoke the unused lease {lease:x}: {r}");
            }
            Err(e)
        }
    }
}

fn connected() -> Datastore {
    Datastore { state: "connected".into(), error: None, since: now_unix(), retry_in_ms: None }
}

fn unreachable(prev: &Datastore, e: &Error, wait: Duration) -> Datastore {
    let since = if prev.state == "unreachable" { prev.since } else { now_unix() };
    Datastore {
        state: "unreachable".into(),
        error: Some(e.to_string()),
        since,
        retry_in_ms: Some(wait.as_millis() as u64),
    }
}

/// Sleeps `d`; true if a stop signal came first.
async fn wait_or_signal(d: Duration, term: &mut Signal, int: &mut Signal) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = term.recv() => true,
        _ = int.recv() => true,
    }
}

impl Agent {
    /// Forwarding, the VXLAN device, the facts file.
    fn setup_node(&mut self) -> Result<()> {
        enable_forwarding()?;
        let s = &self.settings;
        self.vxlan =
            if s.backend.uses_vxlan() { Some(self.dp.ensure_vxlan(s, &self.cfg.name, self.subnet)?) } else { None };
        let mtu = s.pod_mtu(self.dp.underlay.mtu);
        self.status.subnet = Some(self.subnet);
        self.status.lease_id = Some(self.lease);
        self.status.backend = Some(s.backend.as_str().into());
        self.status.mtu = Some(mtu);
        self.status.vxlan_device = s.backend.uses_vxlan().then(|| s.vxlan_device());
        crate::facts::write(&self.cfg, s, self.subnet, mtu)
    }

    async fn main_loop(&mut self, mut store: Store) -> Result<()> {
        let mut backoff = Backoff::new(self.cfg.ttl);
        let mut last_resync = None;
        loop {
            match self.follow(&mut store).await {
                Outcome::Stop => {
                    log!("stopping; routes, VXLAN entries and the lease stay (the lease runs out after its TTL)");
                    return Ok(());
                }
                Outcome::Resync => {
                    // A watch cancelled again right away (e.g. refused) must not spin.
                    if last_resync.is_some_and(|t: std::time::Instant| t.elapsed() < Duration::from_secs(1)) {
                        let wait = backoff.next();
                        log!("the watch was cancelled again; listing again in {}ms", wait.as_millis());
                        if wait_or_signal(wait, &mut self.term, &mut self.int).await {
                            return Ok(());
                        }
                    }
                    last_resync = Some(std::time::Instant::now());
                }
                Outcome::Outage(mut e) => {
                    // Reconnect until etcd answers; the kernel stays as it is meanwhile.
                    loop {
                        let wait = backoff.next();
                        log!("datastore: {e}; routes stay as they are; retrying in {}ms", wait.as_millis());
                        self.status.datastore = unreachable(&self.status.datastore, &e, wait);
                        self.save_status();
                        if wait_or_signal(wait, &mut self.term, &mut self.int).await {
                            return Ok(());
                        }
                        match self.reconnect().await {
                            Ok(s) => {
                                store = s;
                                break;
                            }
                            Err(e2) if e2.is_unreachable() => e = e2,
                            Err(e2) => return Err(e2),
                        }
                    }
                    log!("datastore reachable again");
                    backoff.reset();
                    self.status.datastore = connected();
                }
            }
        }
    }

    async fn reconnect(&mut self) -> Result<Store> {
        let mut store = Store::connect(&self.cfg.etcd_endpoints, &self.cfg.prefix).await?;
        self.keep_alive(&mut store).await?;
        Ok(store)
    }

    /// Keeps the lease alive. A lease that ran out (etcd lost it, or this node was cut off for
    /// longer than the TTL) is taken again for the same subnet: this node's pods have their
    /// addresses from it, so the node never moves to another one while it runs. If another
    /// node took the subnet meanwhile, that is said in the status and log and tried again at
    /// every tick.
    async fn keep_alive(&mut self, store: &mut Store) -> Result<()> {
        if let Some(ttl) = store.keep_alive(self.lease, self.cfg.ttl).await? {
            self.status.lease_ttl = Some((ttl, now_unix()));
            return Ok(());
        }
        let lease = store.grant(self.cfg.ttl).await?;
        let rec = self.record();
        let taken = store.try_claim(self.subnet, &rec, lease).await.and_then(|ok| {
            if ok {
                LocalLease { subnet: self.subnet, lease_id: lease, prefix: self.cfg.prefix.clone() }
                    .save(&self.cfg.lease_path())
                    .map(|()| true)
            } else {
                Ok(false)
            }
        });
        match taken {
            Ok(true) => {
                log!("lease {:x} for {} ran out; holding it again under lease {lease:x}", self.lease, self.subnet);
                self.lease = lease;
                self.status.lease_id = Some(lease);
                self.status.lease_ttl = Some((self.cfg.ttl.as_secs() as i64, now_unix()));
                self.status.lease_error = None;
                Ok(())
            }
            Err(e) => {
                // The datastore failed midway: the caller treats it as an outage.
                if let Err(r) = store.revoke(lease).await {
                    log!("could not revoke the unused lease {lease:x}: {r}");
                }
                Err(e)
            }
            Ok(false) => {
                if let Err(r) = store.revoke(lease).await {
                    log!("could not revoke the unused lease {lease:x}: {r}");
                }
                let holder =
                    self.peers.get(&self.subnet).map_or("another node".to_string(), |r| format!("node {:?}", r.node));
                let msg = format!(
                    "lease {:x} for {} ran out and {holder} holds the subnet now: this node's pods are unreachable \
                     from the others; drain the node and restart its agent",
                    self.lease, self.subnet
                );
                if self.status.lease_error.as_deref() != Some(msg.as_str()) {
                    log!("{msg}");
                }
                self.status.lease_error = Some(msg);
                Ok(())
            }
        }
    }

    /// Makes the VXLAN device again if it is gone or was replaced (its index changed).
    fn check_vxlan(&mut self) -> Result<()> {
        let Some((index, _)) = self.vxlan else { return Ok(()) };
        let name = self.settings.vxlan_device();
        if self.dp.link(&name)?.is_some_and(|l| l.index == index) {
            return Ok(());
        }
        log!("{name} is gone or was replaced; making it again");
        self.vxlan = Some(self.dp.ensure_vxlan(&self.settings, &self.cfg.name, self.subnet)?);
        Ok(())
    }

    fn record(&self) -> SubnetRecord {
        SubnetRecord {
            node: self.cfg.name.clone(),
            node_ip: self.cfg.node_ip,
            vtep_mac: self.vxlan.map(|(_, mac)| format_mac(mac)),
        }
    }

    /// Lists the peers, reconciles, then applies the watch's changes until something ends it.
    async fn follow(&mut self, store: &mut Store) -> Outcome {
        let (peers, bad, rev) = match store.peers().await {
            Ok(x) => x,
            Err(e) => return Outcome::Outage(e),
        };
        for k in &bad {
            log!("ignoring {k}: not a podnet subnet record");
        }
        let now = now_unix();
        self.last_seen = peers.keys().map(|k| (*k, now)).collect();
        self.peers = peers;
        let t = std::time::Instant::now();
        self.apply();
        log!("reconciled with {} peers in {} us", self.status.peers.len(), t.elapsed().as_micros());
        let mut watch = match store.watch(rev + 1).await {
            Ok(w) => w,
            Err(e) => return Outcome::Outage(e),
        };
        let period = (self.cfg.ttl / 3).max(Duration::from_millis(500));
        let mut ticks: u32 = 0;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = watch.message() => match msg {
                    Ok(Some(resp)) => match store.changes(&resp) {
                        Some(changes) if !changes.is_empty() => {
                            let now = now_unix();
                            for c in changes {
                                match c {
                                    Change::Put(s, r) => {
                                        if s != self.subnet && self.peers.get(&s) != Some(&r) {
                                            log!("peer {} ({}) holds {s}", r.node, r.node_ip);
                                        }
                                        self.last_seen.insert(s, now);
                                        self.peers.insert(s, r);
                                    }
                                    Change::Gone(s) => {
                                        match self.peers.remove(&s) {
                                            Some(r) if s != self.subnet => log!("peer {} released {s}", r.node),
                                            _ => {}
                                        }
                                        self.last_seen.remove(&s);
                                    }
                                }
                            }
                            self.apply();
                        }
                        Some(_) => {}
                        None => return Outcome::Resync,
                    },
                    Ok(None) => return Outcome::Outage(Error::Datastore("the watch ended".into())),
                    Err(e) => return Outcome::Outage(Error::etcd("watch", e)),
                },
                _ = tick.tick() => {
                    if let Err(e) = self.keep_alive(store).await {
                        return Outcome::Outage(e);
                    }
                    // Our own record must still be there: it is the peers' only way to us.
                    if self.status.lease_error.is_none() && !self.peers.contains_key(&self.subnet) {
                        match store.refresh(self.subnet, &self.record(), self.lease).await {
                            Ok(true) => log!("put this node's record for {} back", self.subnet),
                            Ok(false) => log!("could not put this node's record for {} back: its keys are bound to another lease", self.subnet),
                            Err(e) => return Outcome::Outage(e),
                        }
                    }
                    ticks += 1;
                    // A safety net under the watch: list again now and then.
                    if ticks.is_multiple_of(RESYNC_TICKS) {
                        return Outcome::Resync;
                    }
                    // The kernel may have lost entries meanwhile (a link down, the VXLAN device
                    // deleted): every tick reconciles, which is a few dumps when nothing changed.
                    if let Err(e) = self.check_vxlan() {
                        log!("{e}");
                    }
                    // While the watch is live, every peer it holds was seen just now.
                    let now = now_unix();
                    for (s, t) in self.last_seen.iter_mut() {
                        if self.peers.contains_key(s) {
                            *t = now;
                        }
                    }
                    self.apply();
                }
                _ = self.term.recv() => return Outcome::Stop,
                _ = self.int.recv() => return Outcome::Stop,
            }
        }
    }

    /// Reconciles the kernel with the peers and writes the status.
    fn apply(&mut self) {
        let me = Local {
            name: &self.cfg.name,
            subnet: self.subnet,
            node_ip: self.cfg.node_ip,
            node_net: self.dp.underlay.net.trunc(),
            underlay: self.dp.underlay.index,
            vxlan: self.vxlan.map(|(i, _)| i),
        };
        let plans = plan(&self.settings, &me, &self.peers);
        let res = self.dp.reconcile(&plans, me.vxlan);
        if let Err(e) = &res {
            log!("reconcile incomplete: {e}");
        }
        for p in plans.iter().filter(|p| p.problem.is_some()) {
            log!("peer {} ({}): {}", p.name, p.subnet, p.problem.as_deref().unwrap_or_default());
        }
        self.status.reconcile_error = res.err().map(|e| e.to_string());
        self.status.peers = plans
            .iter()
            .map(|p| PeerStatus::from_plan(p, self.last_seen.get(&p.subnet).copied().unwrap_or(0)))
            .collect();
        self.save_status();
    }

    fn save_status(&mut self) {
        if let Err(e) = self.status.save(&self.cfg.status_path()) {
            log!("could not write the status: {e}");
        }
    }
}
