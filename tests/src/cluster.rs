//! A simulated podnet cluster on one machine: nodes in their own network namespaces joined by
//! a fabric namespace, a real etcd as the datastore, and the node agent run in each node.
//!
//! ```no_run
//! # use podnet_tests::cluster::{Agent, Fabric, NodeConfig, write_node_config, poll_until};
//! # use std::time::Duration;
//! let f = Fabric::routed(&["10.99.1.0/24", "10.99.2.0/24"]);
//! let a = f.node("a"); // segment 0: 10.99.1.1, default route via 10.99.1.254
//! let c = f.node_on(1, "c"); // segment 1: 10.99.2.1
//! let etcd = f.start_etcd(); // in f.datastore(), at http://10.99.1.100:2379
//! let scratch = podnet_tests::TempDir::new("pncl");
//! let cfg = NodeConfig::for_node(&a, &etcd, "/podnet-test", scratch.path());
//! let agent = Agent::new(a.ns(), &write_node_config(scratch.path(), &cfg));
//! // Whatever the agent writes under its prefix:
//! let keys = || Some(etcd.get_prefix("/podnet-test/")).filter(|kvs| !kvs.is_empty()).ok_or("none");
//! poll_until("a's keys in etcd", Duration::from_secs(10), keys);
//! ```
//!
//! - [`Fabric`]: the wires. [`Fabric::l2`] is one L2 segment (a bridge in the fabric's switch
//!   namespace); [`Fabric::routed`] is several segments joined by a router namespace
//!   (forwarding on, the last address of each segment, `.254` in a /24), where nodes and the
//!   datastore have a default route via their segment's router. A [`Node`] has its own
//!   namespace (`lo` up, `net.ipv4.ip_forward=1`) and an uplink `eth0` (a veth into its
//!   segment's bridge) with the next free address of the segment, from `.1` up, and an MTU
//!   ([`NodeSpec::mtu`], default 1500, on both ends of the veth). Nothing is connected to the
//!   host and the router has no default route: no packet leaves the fabric. The datastore
//!   namespace ([`Fabric::datastore`]) sits on segment 0 at `.100`.
//! - [`Etcd`]: Debian's etcd 3.4 (`/usr/bin/etcd`) as a single-member cluster in a namespace,
//!   client URL `http://<ip>:2379`, peer URL `http://<ip>:2380`, data dir and log under
//!   `/tmp/pnetcd<pid>x<n>/`; [`Etcd::stop`] and [`Etcd::start`] restart it on the same data;
//!   the `put`/`get`/lease helpers go through etcd's v3 JSON gateway from inside its namespace.
//! - [`Agent`]: `podnet node run --config <file>` in a node's namespace ([`podnet_binary`]:
//!   `podnet` next to the test binaries' target dir), log in a scratch dir;
//!   [`write_node_config`] writes the agent's TOML; [`podnet`] runs the CLI in a namespace.
//! - [`poll_until`]: waiting on a condition with a deadline, the last observation in the panic.
//!
//! Everything is removed on drop: the namespaces (a node's when its [`Node`] drops, which takes
//! its veth with it; the switch, router and datastore with the [`Fabric`]), etcd (SIGTERM by
//! PID, SIGKILL after a grace time; its directory), agents (SIGKILL by PID). Drop the daemons
//! before the fabric (declare them after it): a daemon's namespace lives as long as it runs.
//! A daemon's log is kept as `/tmp/<its dir>.log` when the test panics, when something went
//! wrong stopping it, or when `PODNET_KEEP_CLUSTER_LOGS` is set; a panicking test also prints
//! the end of every agent's log.
//!
//! etcd 3.4 quirks the tests meet: a single member elects itself after up to one election
//! timeout, so etcd runs with `--heartbeat-interval 25 --election-timeout 250` (ready in about
//! 0.1-0.3 s instead of about 1 s); JSON gateway int64 fields (revisions, lease IDs, TTLs) are
//! strings and zero-valued fields are omitted; and a restarted etcd extends every lease to its
//! full TTL when it becomes leader, so a lease does not expire because etcd was down longer
//! than its TTL: it expires one TTL after the restart unless kept alive.

mod agent;
mod daemon;
mod etcd;
mod fabric;
mod http;

use std::fmt::Debug;
use std::time::{Duration, Instant};

pub use agent::{podnet, podnet_binary, podnet_ok, write_node_config, Agent, NodeConfig};
pub use etcd::{Etcd, KeyValue, CLIENT_PORT, ETCD_BINARY, PEER_PORT};
pub use fabric::{Fabric, Node, NodeSpec, Segment, DATASTORE_HOST};
pub use http::{http, HttpResponse};

/// What exists before a test: this process's named network namespaces and a leak snapshot.
pub struct Before {
    netns: std::collections::BTreeSet<String>,
    snapshot: crate::leaks::Snapshot,
    marker: String,
}

impl Before {
    pub fn take() -> Before {
        let marker = crate::unique("pncl");
        Before { netns: our_netns(), snapshot: crate::leaks::Snapshot::take(&marker), marker }
    }

    /// Panics when a named namespace of this process, a mount, a namespace or a process is new.
    pub fn assert_clean(self) {
        let left: Vec<String> = our_netns().difference(&self.netns).cloned().collect();
        assert!(left.is_empty(), "network namespaces left behind: {left:?}");
        crate::leaks::assert_no_leaks(&self.snapshot, &self.marker);
    }
}

/// The names in `ip netns list` made by this process (`unique()` names end in `<pid>x<n>`).
pub fn our_netns() -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let tag = format!("{}x", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| {
            n.rsplit_once(&tag).is_some_and(|(head, n)| {
                !head.ends_with(|c: char| c.is_ascii_digit()) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .map(String::from)
        .collect()
}

/// A cluster-mode podnet plugin config (what hack/demo-multinode writes, as libcni hands it
/// over): network `name`, bridge `bridge`, no subnet, the node facts file `facts`, state and
/// IPAM data under `dir` (`cni-state/`, `ipam/`).
pub fn facts_conf(name: &str, bridge: &str, dir: &std::path::Path, facts: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "podnet",
        "bridge": bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": true,
        "stateDir": dir.join("cni-state"),
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam"), "nodeFacts": facts}
    })
}

/// Calls `f` until it returns `Ok`, for at most `timeout`, and returns the value; between
/// calls it sleeps 10 ms, doubling up to 200 ms. `Err` carries what was observed instead:
/// on timeout the panic names `what` and shows the last observation.
pub fn poll_until<T, E: Debug>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, E>) -> T {
    let start = Instant::now();
    match poll(timeout, f) {
        Ok(v) => v,
        Err(last) => panic!("timed out after {:?} waiting for {what}; last observation: {last:?}", start.elapsed()),
    }
}

/// Like [`poll_until`], without the panic: the value, or the last observation at the deadline.
/// `f` runs at least once.
pub fn poll<T, E>(timeout: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(last);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Whether the logs of the cluster's daemons are kept even when nothing went wrong.
fn keep_logs() -> bool {
    std::env::var_os("PODNET_KEEP_CLUSTER_LOGS").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_until_returns_the_first_ok() {
        let mut n = 0;
        let v = poll_until("three calls", Duration::from_secs(5), || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(n)
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible; last observation: \"still 7\"")]
    fn poll_until_panics_with_the_last_observation() {
        poll_until("the impossible", Duration::from_millis(50), || Err::<(), _>("still 7"));
    }

    #[test]
    fn poll_calls_at_least_once() {
        assert_eq!(poll(Duration::ZERO, || Ok::<_, ()>(1)), Ok(1));
        assert_eq!(poll(Duration::ZERO, || Err::<(), _>(2)), Err(2));
    }
}
