//! podnet as a cluster network (root): simulated nodes (network namespaces on a fabric the
//! test makes, tests/src/cluster.rs), a real etcd, `podnet node run` in each node, and pods
//! attached through the exec'd podnet CNI plugin with a conflist that names no subnet (the
//! node's facts give it). Every scenario holds `leaks::serial` and ends with nothing left.
//!
//! - host-gw on one L2: pods reach pods on the other nodes with their own source IP, nodes
//!   reach the others' pods, `podnet node status` shows every entry in place;
//! - vxlan, then auto, across a router: MTU right on both, auto picks host-gw on the L2;
//! - a node leaves, one is killed, one joins, one restarts within its TTL without a lost ping;
//! - etcd down for longer than a TTL: traffic never stops, the agents recover;
//! - nodes started at the same moment never share a subnet (many rounds);
//! - bad configuration: a clear error naming the key, nothing programmed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use podnet_tests::cluster::{
    facts_conf, podnet, podnet_ok, poll_until, write_node_config, Agent, Before, Etcd, Fabric, Node, NodeConfig,
    NodeSpec,
};
use podnet_tests::{leaks, pings, require_root, unique, Background, Invocation, Ns, TempDir};
use serde_json::Value;

const CLUSTER: &str = "10.244.0.0/16";

/// One simulated cluster: the fabric, etcd, a scratch dir, the agents and the pods.
struct Cluster {
    prefix: String,
    // Dropped in this order: pods, agents, etcd, then the nodes and the fabric (daemons before
    // the namespaces they run in), the scratch dir last.
    pods: Vec<Pod>,
    agents: BTreeMap<String, Agent>,
    etcd: Etcd,
    nodes: BTreeMap<String, Node>,
    fabric: Fabric,
    scratch: TempDir,
}

struct Pod {
    ns: Ns,
    node: String,
    id: String,
    ip: String,
}

impl Cluster {
    fn new(fabric: Fabric) -> Cluster {
        let etcd = fabric.start_etcd();
        Cluster {
            prefix: format!("/{}", unique("pncl")),
            scratch: TempDir::new("pnclnet"),
            pods: Vec::new(),
            agents: BTreeMap::new(),
            etcd,
            nodes: BTreeMap::new(),
            fabric,
        }
    }

    /// A cluster of `names` on `fabric`'s first segment, initialized with `backend`.
    fn of(fabric: Fabric, names: &[&str], backend: &str) -> Cluster {
        let mut c = Cluster::new(fabric);
        for n in names {
            c.add_node(NodeSpec::new(n));
        }
        c.init(backend, &[]);
        c
    }

    fn add_node(&mut self, spec: NodeSpec) -> &Node {
        let name = spec.name.clone();
        let n = self.fabric.add(spec);
        self.nodes.insert(name.clone(), n);
        &self.nodes[&name]
    }

    fn node(&self, name: &str) -> &Node {
        &self.nodes[name]
    }

    fn init(&self, backend: &str, extra: &[&str]) {
        let ep = self.etcd.endpoint();
        let mut args = vec!["cluster", "init", "--etcd-endpoints", &ep, "--prefix", &self.prefix];
        args.extend(["--cluster-cidr", CLUSTER, "--backend", backend]);
        args.extend_from_slice(extra);
        let any = self.nodes.values().next().expect("a node");
        podnet_ok(any.ns(), &args);
    }

    fn config(&self, name: &str, subnet: Option<&str>) -> PathBuf {
        let mut cfg = NodeConfig::for_node(self.node(name), &self.etcd, &self.prefix, self.scratch.path());
        cfg.ttl_seconds = 3;
        cfg.subnet = subnet.map(String::from);
        write_node_config(self.scratch.path(), &cfg)
    }

    fn facts_path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name).join("run/node.json")
    }

    /// Starts `name`'s agent and waits for its facts.
    fn start(&mut self, name: &str) {
        let cfg = self.config(name, None);
        let a = Agent::new(self.node(name).ns(), &cfg);
        self.agents.insert(name.to_string(), a);
        self.wait_facts(name);
    }

    fn wait_facts(&self, name: &str) -> Value {
        let p = self.facts_path(name);
        let agent = &self.agents[name];
        poll_until(&format!("{name}'s node facts"), Duration::from_secs(15), || {
            std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| agent.log_tail(10))
        })
    }

    fn facts(&self, name: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.facts_path(name)).expect("facts")).expect("facts JSON")
    }

    fn subnet(&self, name: &str) -> String {
        self.facts(name)["subnet"].as_str().expect("subnet").to_string()
    }

    fn conf(&self, node: &str) -> Value {
        facts_conf("podnet", "podnet0", &self.scratch.path().join(node), &self.facts_path(node))
    }

    /// A pod on `node` through the CNI plugin; returns its index in `pods`.
    fn add_pod(&mut self, node: &str) -> usize {
        let ns = Ns::new("pnclp");
        let id = unique("pod");
        let out = Invocation::new("ADD", &id, Some(&ns.path)).run(self.node(node).ns(), &self.conf(node)).ok();
        let v = out.json();
        let ip = v["ips"][0]["address"].as_str().expect("pod address").split('/').next().expect("ip").to_string();
        self.pods.push(Pod { ns, node: node.to_string(), id, ip });
        self.pods.len() - 1
    }

    fn del_pods(&mut self) {
        for p in std::mem::take(&mut self.pods) {
            let conf = self.conf(&p.node);
            Invocation::new("DEL", &p.id, Some(&p.ns.path)).run(self.node(&p.node).ns(), &conf).ok();
        }
    }

    fn status(&self, name: &str) -> Value {
        let cfg = self.config_path(name);
        let out =
            podnet_ok(self.node(name).ns(), &["node", "status", "--json", "--config", cfg.to_str().expect("path")]);
        serde_json::from_str(&out).expect("status JSON")
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(format!("{name}.toml"))
    }

    fn leave(&self, name: &str) {
        let cfg = self.config_path(name);
        podnet_ok(self.node(name).ns(), &["node", "leave", "--config", cfg.to_str().expect("path")]);
    }

    /// podnet's routes in `name` (`ip route show proto 97`).
    fn routes(&self, name: &str) -> String {
        self.node(name).ns().sh("ip route show proto 97")
    }

    fn finish(mut self, before: Before) {
        self.del_pods();
        for (name, a) in std::mem::take(&mut self.agents) {
            let errs = a.shutdown();
            assert!(errs.is_empty(), "{name}'s agent: {errs:?}");
        }
        drop(self);
        before.assert_clean();
    }
}

/// A server in `pod` that answers each connection with `ss`'s line for it: the peer address
/// the server saw.
fn peer_server(pod: &Ns, port: u16) -> Background {
    let bg = pod.spawn(&format!("busybox nc -ll -p {port} -e /usr/bin/ss -Htn sport = :{port}"));
    pod.wait_listening("tcp", port);
    bg
}

/// What the server on `ip:port` saw of a connection from `client`.
fn seen_by(client: &Ns, ip: &str, port: u16) -> String {
    let o = client.run(&format!("timeout 5 busybox nc {ip} {port} </dev/null"));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn names_peer(line: &str, ip: &str) -> bool {
    line.split_whitespace()
        .last()
        .is_some_and(|peer| peer.starts_with(&format!("{ip}:")) || peer.contains(&format!(":{ip}]:")))
}

fn mtu(ns: &Ns, dev: &str) -> u32 {
    let out = ns.sh(&format!("ip -o link show {dev}"));
    out.split(" mtu ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|m| m.parse().ok()).expect("mtu")
}

/// Pings `ip` from `ns` every 50 ms for `count` pings: (sent, received).
fn ping_run(ns: &Ns, ip: &str, count: u32) -> (u32, u32) {
    let out = ns.run(&format!("ping -q -c {count} -i 0.05 -W 1 {ip}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("ping: {text}"));
    let n: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    (n[0], n[1])
}

#[test]
#[ignore = "needs root"]
fn host_gw_on_one_l2_pods_reach_pods_with_their_own_ip() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::of(Fabric::l2("10.99.0.0/24"), &["a", "b", "c"], "host-gw");
    for n in ["a", "b", "c"] {
        c.start(n);
    }
    let subnets: BTreeSet<String> = ["a", "b", "c"].iter().map(|n| c.subnet(n)).collect();
    assert_eq!(subnets.len(), 3, "distinct subnets: {subnets:?}");
    for n in ["a", "b", "c"] {
        assert_eq!(c.facts(n)["mtu"], 1500, "host-gw pods get the underlay's MTU");
        assert_eq!(c.facts(n)["clusterCIDR"], CLUSTER);
    }
    // Each node routes the two others' subnets via their node IPs.
    for n in ["a", "b", "c"] {
        poll_until(&format!("{n}'s routes"), Duration::from_secs(5), || {
            let r = c.routes(n);
            let ok = ["a", "b", "c"].iter().filter(|p| **p != n).all(|p| {
                r.lines().any(|l| l.starts_with(&c.subnet(p)) && l.contains(&format!("via {}", c.node(p).ip())))
            });
            if ok {
                Ok(())
            } else {
                Err(r)
            }
        });
    }
    let pods: Vec<usize> = ["a", "b", "c"].iter().map(|n| c.add_pod(n)).collect();
    let servers: Vec<Background> = pods.iter().map(|&i| peer_server(&c.pods[i].ns, 7000)).collect();
    for &i in &pods {
        let p = &c.pods[i];
        let subnet: ipnet::Ipv4Net = c.subnet(&p.node).parse().expect("subnet");
        assert!(subnet.contains(&p.ip.parse::<std::net::Ipv4Addr>().expect("ip")), "{} not in {subnet}", p.ip);
        assert_eq!(mtu(&p.ns, "eth0"), 1500);
        for &j in &pods {
            if i == j {
                continue;
            }
            let q = &c.pods[j];
            assert!(pings(&p.ns, &q.ip), "pod on {} -> pod on {} ({})", p.node, q.node, q.ip);
            let seen = seen_by(&p.ns, &q.ip, 7000);
            assert!(names_peer(&seen, &p.ip), "the server on {} saw {seen:?}, not {}", q.node, p.ip);
            // Node -> pod on another node.
            assert!(pings(c.node(&p.node).ns(), &q.ip), "node {} -> pod on {}", p.node, q.node);
        }
    }
    drop(servers);
    let st = c.status("a");
    let peers = st["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{st}");
    for p in peers {
        assert_eq!(p["backend"], "host-gw", "{p}");
        assert_eq!(p["inPlace"]["route"], true, "{p}");
    }
    assert_eq!(st["datastore"]["state"], "connected");
    assert!(st["leaseSecondsLeft"].as_i64().is_some_and(|t| t > 0), "{st}");
    let table = podnet_ok(c.node("a").ns(), &["node", "status", "--config", c.config_path("a").to_str().expect("p")]);
    assert!(table.contains("PEER") && table.contains("host-gw") && table.contains("yes"), "{table}");
    c.finish(before);
}

#[test]
#[ignore = "needs root"]
fn vxlan_then_auto_across_a_router_with_the_right_mtu() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::new(Fabric::routed(&["10.99.1.0/24", "10.99.2.0/24"]));
    c.add_node(NodeSpec::new("a"));
    c.add_node(NodeSpec::new("b"));
    c.add_node(NodeSpec::new("c").segment(1));
    for (round, backend) in ["vxlan", "auto"].into_iter().enumerate() {
        c.prefix = format!("/{}", unique("pncl"));
        c.init(backend, &[]);
        for n in ["a", "b", "c"] {
            c.start(n);
            assert_eq!(c.facts(n)["mtu"], 1450, "{backend}: pods behind VXLAN get the underlay MTU - 50");
            assert_eq!(mtu(c.node(n).ns(), "podnet.1"), 1450);
        }
        let (a, b, cc) = (c.add_pod("a"), c.add_pod("b"), c.add_pod("c"));
        for (x, y) in [(a, b), (a, cc), (b, cc), (cc, a)] {
            let (p, q) = (&c.pods[x], &c.pods[y]);
            assert_eq!(mtu(&p.ns, "eth0"), 1450);
            poll_until(&format!("{backend}: {} -> {}", p.node, q.node), Duration::from_secs(5), || {
                pings(&p.ns, &q.ip).then_some(()).ok_or_else(|| c.routes(&p.node))
            });
            // A full-size packet with DF set crosses the overlay: the MTU is right end to end.
            let big = p.ns.run(&format!("ping -c1 -W2 -M do -s {} {}", 1450 - 28, q.ip));
            assert!(big.status.success(), "{backend}: {}-byte DF ping {} -> {}", 1450, p.node, q.node);
        }
        let ra = c.routes("a");
        let (sb, sc) = (c.subnet("b"), c.subnet("c"));
        let line = |s: &str| ra.lines().find(|l| l.starts_with(s)).unwrap_or_else(|| panic!("{s} in {ra}")).to_string();
        if backend == "vxlan" {
            assert!(line(&sb).contains("dev podnet.1") && line(&sb).contains("onlink"), "{ra}");
        } else {
            assert!(line(&sb).contains(&format!("via {} dev eth0", c.node("b").ip())), "auto: host-gw on the L2: {ra}");
        }
        assert!(line(&sc).contains("dev podnet.1") && line(&sc).contains("onlink"), "{backend}: vxlan across L3: {ra}");
        let fdb = c.node("a").ns().sh("bridge fdb show dev podnet.1");
        assert!(fdb.contains(&format!("dst {}", c.node("c").ip())), "{fdb}");
        let st = c.status("a");
        let by: BTreeMap<String, &Value> = st["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| (p["name"].as_str().unwrap_or("").into(), p))
            .collect();
        assert_eq!(by["c"]["backend"], "vxlan");
        assert_eq!(by["b"]["backend"], if backend == "auto" { "host-gw" } else { "vxlan" });
        for p in by.values() {
            assert_eq!(p["inPlace"]["route"], true, "{p}");
        }
        assert_eq!(by["c"]["inPlace"]["fdb"], true);
        assert_eq!(by["c"]["inPlace"]["neigh"], true);
        c.del_pods();
        // Stop and leave: the next round starts from a clean node.
        for n in ["a", "b", "c"] {
            let mut ag = c.agents.remove(n).expect("agent");
            ag.stop();
            c.leave(n);
            assert_eq!(c.routes(n).trim(), "", "round {round}: {n} left routes");
            assert!(!c.node(n).ns().sh("ip -o link").contains("podnet.1"), "{n} kept its VXLAN device");
            // The bridge is the CNI plugin's and outlives its pods; the next round's subnet differs.
            c.node(n).ns().sh("ip link del podnet0");
        }
    }
    c.finish(before);
}

#[test]
#[ignore = "needs root"]
fn nodes_leave_die_join_and_restart_without_a_lost_ping() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::of(Fabric::l2("10.99.0.0/24"), &["a", "b", "c", "d"], "vxlan");
    for n in ["a", "b", "c"] {
        c.start(n);
    }
    let (pa, pb) = (c.add_pod("a"), c.add_pod("b"));
    let (a_ns, b_ip) = (&c.pods[pa].ns, c.pods[pb].ip.clone());
    poll_until("a's pod -> b's pod", Duration::from_secs(5), || pings(a_ns, &b_ip).then_some(()).ok_or(()));

    // b's agent restarts within its TTL: same subnet, not one ping lost meanwhile.
    let sb = c.subnet("b");
    let (sent, got) = thread::scope(|s| {
        let pinger = s.spawn(|| ping_run(a_ns, &b_ip, 60));
        thread::sleep(Duration::from_millis(500));
        let ag = c.agents.get_mut("b").expect("b");
        ag.stop();
        ag.start();
        pinger.join().expect("pinger")
    });
    assert_eq!((sent, got), (60, 60), "pings lost while b's agent restarted");
    poll_until("b's agent back", Duration::from_secs(10), || {
        c.agents["b"].log().contains("took back lease").then_some(()).ok_or_else(|| c.agents["b"].log_tail(5))
    });
    assert_eq!(c.subnet("b"), sb, "b kept its subnet");

    // c leaves cleanly: gone from a and b at once.
    let sc = c.subnet("c");
    let mut ag = c.agents.remove("c").expect("c");
    ag.stop();
    c.leave("c");
    for n in ["a", "b"] {
        poll_until(&format!("{n} drops c"), Duration::from_secs(10), || {
            let r = c.routes(n);
            (!r.contains(&sc)).then_some(()).ok_or(r)
        });
    }
    assert_eq!(c.routes("c").trim(), "", "c removed its own routes");

    // b is killed: its lease expires after the TTL (3 s) and a drops it.
    c.agents.get_mut("b").expect("b").kill();
    poll_until("a drops the killed b", Duration::from_secs(8), || {
        let r = c.routes("a");
        (!r.contains(&sb)).then_some(()).ok_or(r)
    });
    // The same reconcile removes the route first, then the FDB entry.
    poll_until("a drops b's FDB entry", Duration::from_secs(5), || {
        let fdb = c.node("a").ns().sh("bridge fdb show dev podnet.1");
        (!fdb.contains(&format!("dst {}", c.node("b").ip()))).then_some(()).ok_or(fdb)
    });

    // d joins with a subnet of its own; a routes it.
    c.start("d");
    let sd = c.subnet("d");
    assert!(sd != c.subnet("a"), "d got a's subnet");
    poll_until("a routes d", Duration::from_secs(10), || {
        let r = c.routes("a");
        r.contains(&sd).then_some(()).ok_or(r)
    });
    let pd = c.add_pod("d");
    let d_ip = c.pods[pd].ip.clone();
    assert!(pings(&c.pods[pa].ns, &d_ip), "a's pod -> d's pod");
    let st = c.status("a");
    let names: Vec<&str> = st["peers"].as_array().expect("peers").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, vec![c.node("d").name()], "{st}");
    // Someone deletes a's VXLAN device: the agent makes it again, with its entries.
    c.node("a").ns().sh("ip link del podnet.1");
    poll_until("a's pod -> d's pod again", Duration::from_secs(10), || {
        pings(&c.pods[pa].ns, &d_ip).then_some(()).ok_or_else(|| c.agents["a"].log_tail(5))
    });
    c.finish(before);
}

#[test]
#[ignore = "needs root"]
fn etcd_down_longer_than_the_ttl_stops_no_traffic_and_agents_recover() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::of(Fabric::l2("10.99.0.0/24"), &["a", "b"], "host-gw");
    for n in ["a", "b"] {
        c.start(n);
    }
    let (pa, pb) = (c.add_pod("a"), c.add_pod("b"));
    let (a_ns, b_ip) = (&c.pods[pa].ns, c.pods[pb].ip.clone());
    poll_until("a's pod -> b's pod", Duration::from_secs(5), || pings(a_ns, &b_ip).then_some(()).ok_or(()));
    let lease_a = c.status("a")["leaseId"].clone();
    let routes_a = c.routes("a");
    // 160 pings at 50 ms: about 8 s, while etcd is away for more than twice the TTL (3 s).
    let cfg_a = c.config_path("a");
    let (nodes, etcd) = (&c.nodes, &mut c.etcd);
    let (sent, got) = thread::scope(|s| {
        let pinger = s.spawn(|| ping_run(a_ns, &b_ip, 160));
        thread::sleep(Duration::from_millis(300));
        etcd.stop();
        thread::sleep(Duration::from_secs(7));
        // While it is away: routes as they were, the status says so.
        let a = nodes["a"].ns();
        assert_eq!(a.sh("ip route show proto 97"), routes_a, "routes changed while etcd was away");
        let out = podnet_ok(a, &["node", "status", "--json", "--config", cfg_a.to_str().expect("path")]);
        let st: Value = serde_json::from_str(&out).expect("status JSON");
        assert_eq!(st["datastore"]["state"], "unreachable", "{st}");
        assert!(st["datastore"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{st}");
        etcd.start();
        pinger.join().expect("pinger")
    });
    assert_eq!((sent, got), (160, 160), "pings lost during the etcd outage");
    for n in ["a", "b"] {
        poll_until(&format!("{n} reconnected"), Duration::from_secs(10), || {
            let st = c.status(n);
            (st["datastore"]["state"] == "connected" && st["leaseSecondsLeft"].as_i64().is_some_and(|t| t > 0))
                .then_some(())
                .ok_or(st)
        });
    }
    assert_eq!(c.status("a")["leaseId"], lease_a, "etcd extends leases when it comes back: the same lease is kept");
    assert!(c.agents["a"].log().contains("datastore reachable again"), "{}", c.agents["a"].log_tail(10));
    assert!(pings(a_ns, &b_ip));

    // a's agent frozen past its TTL: its lease runs out and b drops its route; thawed, a holds
    // the same subnet again under a new lease (its pods keep their addresses) and b routes it.
    let sa = c.subnet("a");
    let pid = c.agents["a"].pid().expect("a's pid");
    // SAFETY: signals to the agent process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    poll_until("b drops the frozen a", Duration::from_secs(10), || {
        let r = c.routes("b");
        (!r.contains(&sa)).then_some(()).ok_or(r)
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    poll_until("b routes a again", Duration::from_secs(10), || {
        let r = c.routes("b");
        r.contains(&sa).then_some(()).ok_or(r)
    });
    assert_eq!(c.subnet("a"), sa);
    let st = c.status("a");
    assert_ne!(st["leaseId"], lease_a, "a new lease: {st}");
    assert!(st.get("leaseError").is_none(), "{st}");
    assert!(pings(a_ns, &b_ip));
    c.finish(before);
}

#[test]
#[ignore = "needs root"]
fn nodes_started_at_the_same_moment_never_share_a_subnet() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::new(Fabric::l2("10.99.0.0/24"));
    let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
    for n in &names {
        c.add_node(NodeSpec::new(n));
    }
    let ep = c.etcd.endpoint();
    for round in 0..6 {
        // A small cluster CIDR (16 subnets for 8 nodes) so that their first picks collide often.
        c.prefix = format!("/{}", unique("pncl"));
        let mut args = vec!["cluster", "init", "--etcd-endpoints", &ep, "--prefix", &c.prefix];
        args.extend(["--cluster-cidr", "10.244.0.0/22", "--subnet-len", "26", "--backend", "host-gw"]);
        podnet_ok(c.node("n0").ns(), &args);
        let cfgs: Vec<PathBuf> = names.iter().map(|n| c.config(n, None)).collect();
        for (n, cfg) in names.iter().zip(&cfgs) {
            let a = Agent::new(c.node(n).ns(), cfg);
            c.agents.insert(n.clone(), a);
        }
        let subnets: Vec<String> =
            names.iter().map(|n| c.wait_facts(n)["subnet"].as_str().unwrap_or("").to_string()).collect();
        let unique_subnets: BTreeSet<&String> = subnets.iter().collect();
        assert_eq!(unique_subnets.len(), names.len(), "round {round}: {subnets:?}");
        let held = c.etcd.get_prefix(&format!("{}/subnets/", c.prefix));
        assert_eq!(held.len(), names.len(), "round {round}: {held:?}");
        for n in &names {
            let mut a = c.agents.remove(n).expect("agent");
            a.stop();
            c.leave(n);
        }
        assert!(c.etcd.get_prefix(&format!("{}/subnets/", c.prefix)).is_empty(), "leave released every lease");
    }
    c.finish(before);
}

#[test]
#[ignore = "needs root"]
fn bad_config_is_refused_naming_the_key_and_nothing_is_programmed() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::new(Fabric::l2("10.99.0.0/24"));
    c.add_node(NodeSpec::new("a"));
    c.add_node(NodeSpec::new("b"));
    let ep = c.etcd.endpoint();
    let ns = c.node("a").ns();
    // `cluster init` refuses bad settings, naming the flag, and writes nothing.
    for (extra, flag) in [
        (vec!["--cluster-cidr", "10.244.0.0/16", "--subnet-len", "16"], "--subnet-len"),
        (vec!["--cluster-cidr", "10.244.0.0/16", "--backend", "bgp"], "--backend"),
        (vec!["--cluster-cidr", "10.244.0.1/16"], "--cluster-cidr"),
        (vec!["--cluster-cidr", "10.244.0.0/16", "--vni", "0"], "--vni"),
    ] {
        let mut args = vec!["cluster", "init", "--etcd-endpoints", &ep, "--prefix", &c.prefix];
        args.extend(extra.iter().copied());
        let o = podnet(ns, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(flag), "{extra:?}: {err}");
    }
    assert!(c.etcd.get_prefix(&c.prefix).is_empty());
    // Written once: other settings later are refused, naming the key.
    c.init("vxlan", &[]);
    let mut args = vec!["cluster", "init", "--etcd-endpoints", &ep, "--prefix", &c.prefix];
    args.extend(["--cluster-cidr", "10.245.0.0/16"]);
    let o = podnet(ns, &args);
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{}/cluster", c.prefix)), "{o:?}");

    // Each bad agent config: the agent exits with an error naming the key; nothing programmed.
    let run_bad = |c: &Cluster, cfg: PathBuf, key: &str| {
        let mut a = Agent::new(c.node("a").ns(), &cfg);
        let status = poll_until("the agent to exit", Duration::from_secs(15), || a.exited().ok_or(()));
        let log = a.log();
        assert!(!status.success() && log.contains(key), "expected an error naming {key}: {log}");
        assert_eq!(c.routes("a").trim(), "", "{key}: routes programmed");
        assert!(!c.node("a").ns().sh("ip -o link").contains("podnet."), "{key}: VXLAN device made");
        assert!(!c.facts_path("a").exists(), "{key}: facts written");
        assert!(c.etcd.get_prefix(&format!("{}/subnets/", c.prefix)).is_empty(), "{key}: a lease taken");
    };
    run_bad(&c, c.config("a", Some("10.99.0.0/24")), "subnet");
    run_bad(&c, c.config("a", Some("10.244.3.0/25")), "subnet");
    // An unreachable etcd at a first start.
    let mut cfg = NodeConfig::for_node(c.node("a"), &c.etcd, &c.prefix, c.scratch.path());
    cfg.etcd_endpoints = vec![format!("http://{}:2999", c.node("b").ip())];
    run_bad(&c, write_node_config(c.scratch.path(), &cfg), "etcd_endpoints");
    // Stored settings podnet cannot use, and a cluster CIDR overlapping the node network.
    let key = format!("{}/cluster", c.prefix);
    c.etcd.put(&key, r#"{"clusterCIDR":"10.244.0.0/16","subnetLen":24,"backend":"bgp","vni":1,"port":8472}"#);
    run_bad(&c, c.config("a", None), &format!("{key}: backend"));
    c.etcd.put(&key, r#"{"clusterCIDR":"10.96.0.0/11","subnetLen":24,"backend":"vxlan","vni":1,"port":8472}"#);
    run_bad(&c, c.config("a", None), &format!("{key}: clusterCIDR"));
    c.etcd.put(&key, r#"{"clusterCIDR":"10.0.0.0/8","subnetLen":24,"backend":"vxlan","vni":1,"port":8472}"#);
    run_bad(&c, c.config("a", None), &format!("{key}: clusterCIDR"));
    // A fixed subnet another node holds.
    c.etcd.put(&key, r#"{"clusterCIDR":"10.244.0.0/16","subnetLen":24,"backend":"vxlan","vni":1,"port":8472}"#);
    let cfg_b = c.config("b", Some("10.244.9.0/24"));
    c.agents.insert("b".into(), Agent::new(c.node("b").ns(), &cfg_b));
    assert_eq!(c.wait_facts("b")["subnet"], "10.244.9.0/24");
    let mut a = Agent::new(c.node("a").ns(), &c.config("a", Some("10.244.9.0/24")));
    let status = poll_until("a to exit", Duration::from_secs(15), || a.exited().ok_or(()));
    assert!(!status.success() && a.log().contains("subnet: 10.244.9.0/24 is held by node"), "{}", a.log());
    assert!(!c.facts_path("a").exists());
    c.finish(before);
}

#[test]
#[ignore = "needs root"]
fn a_starting_agent_removes_only_its_own_stale_entries_and_never_overwrites_others() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let mut c = Cluster::of(Fabric::l2("10.99.0.0/24"), &["a", "b"], "host-gw");
    // b holds a fixed subnet; a already has a route to it that podnet did not make, a stale
    // podnet route to a node long gone, and a route of someone else's.
    c.agents.insert("b".into(), Agent::new(c.node("b").ns(), &c.config("b", Some("10.244.9.0/24"))));
    c.wait_facts("b");
    let a = c.node("a").ns();
    let b_ip = c.node("b").ip();
    a.sh(&format!("ip route add 10.244.9.0/24 via {b_ip} proto static"));
    a.sh(&format!("ip route add 10.244.77.0/24 via {b_ip} proto 97"));
    a.sh(&format!("ip route add 10.250.0.0/16 via {b_ip} proto static"));
    c.start("a");
    poll_until("a removes the stale podnet route", Duration::from_secs(5), || {
        let r = c.routes("a");
        (!r.contains("10.244.77.0")).then_some(()).ok_or(r)
    });
    let all = c.node("a").ns().sh("ip route");
    assert!(all.contains("10.250.0.0/16") && all.contains("proto static"), "someone else's route stays: {all}");
    assert!(all.lines().any(|l| l.starts_with("10.244.9.0/24") && l.contains("proto static")), "{all}");
    let st = c.status("a");
    assert!(st["reconcileError"].as_str().is_some_and(|e| e.contains("not made by podnet is in the way")), "{st}");
    assert_eq!(st["peers"][0]["inPlace"]["route"], false, "{st}");
    // Once the foreign route is gone, the agent's retry (every TTL/3) puts podnet's in.
    c.node("a").ns().sh("ip route del 10.244.9.0/24 proto static");
    poll_until("a routes b's subnet", Duration::from_secs(5), || {
        let r = c.routes("a");
        r.contains("10.244.9.0/24").then_some(()).ok_or(r)
    });
    c.finish(before);
}
