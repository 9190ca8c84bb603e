//! The cluster end to end, with what Kubernetes puts on a node (root; everything inside
//! namespaces the test creates, see `podnet_tests::cluster`):
//!
//! - [`cri_pods_on_three_nodes_reach_each_other_without_nat`]: three nodes on one L2 fabric,
//!   backend host-gw, each running the podnet node agent and a real containerd 2.x with CRI
//!   inside the node's own namespace; the podnet handler's conflist in cluster mode (its ipam
//!   names only the node facts file). One pod per node through CRI.
//! - [`kube_proxy_iptables_services_across_nodes_and_on_one_bridge`]: three nodes, backend
//!   vxlan, pods through the exec'd CNI plugin, and in every node the nat rules kube-proxy's
//!   iptables mode writes (through iptables-nft): a ClusterIP whose endpoint is on another
//!   node, a ClusterIP whose endpoint is on the client's own bridge (the hairpin case, with
//!   bridge-nf-call off), and a NodePort.
//!
//! The servers are busybox httpd with a CGI script printing `REMOTE_ADDR`: the address the
//! server's socket saw, so "no NAT" is what the server itself observed.
//!
//! ```text
//!   fabric 10.99.0.0/24 (one L2 bridge, no route out)         etcd 10.99.0.100
//!   node a 10.99.0.1          node b 10.99.0.2          node c 10.99.0.3
//!   pods 10.244.x.0/24        pods 10.244.y.0/24        pods 10.244.z.0/24   (leased)
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cni_bridge::NodeFacts;
use podnet_tests::cluster::{
    facts_conf, podnet_ok, poll_until, write_node_config, Agent, Etcd, Fabric, Node, NodeConfig,
};
use podnet_tests::cri::{container_config, node_output, pause_archive, CriClient, CriNode, CriNodeOptions, Flavour};
use podnet_tests::cri::{HANDLER_PODNET, PODNET_BRIDGE};
use podnet_tests::leaks::{self, Snapshot};
use podnet_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const PREFIX: &str = "/podnet-svc";
const CLUSTER_CIDR: &str = "10.244.0.0/16";
const FABRIC: &str = "10.99.0.0/24";
/// The port every test server listens on, and the CGI path that answers `peer=<REMOTE_ADDR>`.
const PORT: u16 = 8080;
const PEER_PATH: &str = "/cgi-bin/peer";
const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Shared: the cluster (fabric, etcd, agents) and the servers.

/// A cluster of `names` on one L2 fabric with `backend`: etcd, `podnet cluster init`, an agent
/// per node, each node's facts read once the agent wrote them and every node routing to every
/// other node's subnet. bridge-nf-call is off in every node (bridged frames skip conntrack, as
/// on a node without br_netfilter).
struct Cluster {
    // Dropped in this order: the agents, etcd, the nodes, the fabric, the scratch dir.
    agents: Vec<Agent>,
    _etcd: Etcd,
    nodes: Vec<Node>,
    _fabric: Fabric,
    facts: Vec<NodeFacts>,
    scratch: TempDir,
}

impl Cluster {
    fn new(names: &[&str], backend: &str) -> Cluster {
        let fabric = Fabric::l2(FABRIC);
        let nodes: Vec<Node> = names.iter().map(|n| fabric.node(n)).collect();
        for n in &nodes {
            n.ns().set_bridge_nf_call(false);
            let v = n.ns().sh("cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo absent");
            assert!(["0", "absent"].contains(&v.trim()), "bridge-nf-call-iptables is {v} in {}", n.name());
        }
        let etcd = fabric.start_etcd();
        let scratch = TempDir::new("pnsvc");
        podnet_ok(
            nodes[0].ns(),
            &[
                "cluster",
                "init",
                "--etcd-endpoints",
                &etcd.endpoint(),
                "--prefix",
                PREFIX,
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--backend",
                backend,
            ],
        );
        let agents: Vec<Agent> = nodes
            .iter()
            .map(|n| {
                let cfg = NodeConfig::for_node(n, &etcd, PREFIX, scratch.path());
                Agent::new(n.ns(), &write_node_config(scratch.path(), &cfg))
            })
            .collect();
        let mut c = Cluster { agents, _etcd: etcd, nodes, _fabric: fabric, facts: Vec::new(), scratch };
        for i in 0..c.nodes.len() {
            let path = c.facts_path(i);
            let f = poll_until(&format!("{}'s node facts", c.nodes[i].name()), T, || {
                NodeFacts::read(&path).map_err(|e| e.to_string())
            });
            assert_eq!(f.node, c.nodes[i].name());
            assert_eq!(f.backend, backend, "{}'s facts", f.node);
            c.facts.push(f);
        }
        // Every node routes to every other node's subnet (podnet's routes, proto 97).
        for (i, n) in c.nodes.iter().enumerate() {
            let others: Vec<String> =
                (0..c.facts.len()).filter(|j| *j != i).map(|j| c.facts[j].subnet.to_string()).collect();
            poll_until(&format!("{}'s routes to the other nodes' subnets", n.name()), T, || {
                let routes = n.ns().sh("ip route show proto 97");
                let missing: Vec<&String> =
                    others.iter().filter(|s| !routes.lines().any(|l| l.starts_with(&format!("{s} ")))).collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing {missing:?} in:\n{routes}"))
                }
            });
        }
        c
    }

    fn facts_path(&self, i: usize) -> PathBuf {
        self.scratch.path().join(self.nodes[i].name()).join("run").join("node.json")
    }

    fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Asserts that every agent still runs (a dead agent would explain any failure after).
    fn assert_agents_run(&mut self) {
        for a in &mut self.agents {
            assert!(a.running(), "the agent {} exited:\n{}", a.config().display(), a.log_tail(30));
        }
    }
}

/// The body of the CGI script: answers `peer=<the client address the server saw>`.
const PEER_CGI: [&str; 4] = ["#!/bin/sh", "echo Content-Type: text/plain", "echo", "echo \"peer=$REMOTE_ADDR\""];

/// The IPv4 address in a `peer=...` answer (busybox httpd gives v4-mapped addresses as
/// `[::ffff:a.b.c.d]`). Panics on anything else.
fn peer_of(answer: &str) -> Ipv4Addr {
    let line = answer.lines().find_map(|l| l.trim().strip_prefix("peer=")).unwrap_or_else(|| {
        panic!("no peer= line in the server's answer {answer:?}");
    });
    let addr = line.trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:");
    addr.parse().unwrap_or_else(|_| panic!("peer {line:?} is not an IPv4 address (answer {answer:?})"))
}

/// `<wget>` of the peer CGI at `host:port` through `run` (a command runner: ExecSync or a
/// namespace), retried for up to 10 s (the first packets may wait for ARP and the agent's
/// entries); the peer address the server saw.
fn fetch_peer_with(
    what: &str,
    wget: &str,
    host: &str,
    port: u16,
    mut run: impl FnMut(&str) -> Result<String, String>,
) -> Ipv4Addr {
    let cmd = format!("timeout 5 {wget} -q -O- http://{host}:{port}{PEER_PATH}");
    let answer = poll_until(what, Duration::from_secs(10), || run(&cmd));
    peer_of(&answer)
}

/// Like [`fetch_peer_with`] from a namespace, with the host's busybox.
fn fetch_peer(ns: &Ns, what: &str, host: &str, port: u16) -> Ipv4Addr {
    fetch_peer_with(what, "busybox wget", host, port, |cmd| {
        let o = node_output(ns, cmd, Duration::from_secs(10));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && out.contains("peer=") {
            Ok(out)
        } else {
            Err(format!("{} {out:?} {:?}", o.status, String::from_utf8_lossy(&o.stderr)))
        }
    })
}

/// Whether one attempt of `wget` from `ns` to `host:port` gets an answer (no retry).
fn answers_once(ns: &Ns, host: &str, port: u16) -> bool {
    let o = node_output(ns, &format!("timeout 3 busybox wget -q -O- http://{host}:{port}{PEER_PATH}"), T);
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("peer=")
}

/// The IPv4 addresses of a namespace (`ip -4 -o addr`).
fn addresses(ns: &Ns) -> Vec<Ipv4Addr> {
    ns.sh("ip -4 -o addr show")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next().and_then(|a| a.parse().ok()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. CRI on a real containerd in each node's namespace.

/// ExecSync `sh -c script` in container `id`: Ok(stdout) on exit 0.
fn exec(c: &CriClient, id: &str, script: &str) -> Result<String, String> {
    match c.exec_sync(id, &["sh", "-c", script], 10) {
        Ok((out, _, 0)) => Ok(out),
        Ok((out, err, code)) => Err(format!("exit {code}, stdout {out:?}, stderr {err:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// One pod's server container: busybox httpd on [`PORT`] with the peer CGI.
fn peer_server_container() -> podnet_tests::cri::v1::ContainerConfig {
    let lines: Vec<String> = PEER_CGI.iter().map(|l| format!("'{l}'")).collect();
    let script = format!(
        "mkdir -p /www/cgi-bin && printf '%s\\n' {} > /www{PEER_PATH} && chmod 755 /www{PEER_PATH} && \
         exec httpd -f -p {PORT} -h /www",
        lines.join(" ")
    );
    container_config("web", &["sh", "-c", &script])
}

/// One pod per node through CRI (containerd 2.x inside the cluster node's namespace, the podnet
/// handler in cluster mode): each pod's IP is in its node's leased subnet, its eth0 has the
/// facts' MTU; every pod reaches every other node's pod and the server sees the client pod's own
/// IP; every node reaches the other nodes' pods from its own address. Then the pods go through
/// CRI and each containerd stops with nothing left (`CriNode::finish`), and nothing leaked.
#[test]
#[ignore = "needs root"]
fn cri_pods_on_three_nodes_reach_each_other_without_nat() {
    require_root();
    let _serial = leaks::serial();
    let t0 = Instant::now();
    // Built before the snapshot: the cached image archives stay on purpose.
    podnet_tests::containerd::busybox_archive();
    pause_archive();
    let marker = unique("pnsvc");
    let before = Snapshot::take(&marker);
    {
        let mut cl = Cluster::new(&["a", "b", "c"], "host-gw");
        let t_cluster = t0.elapsed();
        let cri: Vec<CriNode> = (0..3)
            .map(|i| {
                let opts = CriNodeOptions::default()
                    .flavour(Flavour::Containerd2)
                    .netns(&cl.node(i).ns().path)
                    .node_facts(&cl.facts_path(i))
                    .caller_checks_leaks();
                CriNode::with(&format!("cl{}", cl.node(i).name()), opts)
            })
            .collect();
        let t_containerd = t0.elapsed();
        for n in &cri {
            let ipam = &n.podnet_conflist()["plugins"][0]["ipam"];
            assert!(ipam.get("ranges").is_none() && ipam.get("subnet").is_none(), "not in cluster mode: {ipam}");
        }

        // One pod per node, a server in it.
        let mut pods = Vec::new();
        for (i, n) in cri.iter().enumerate() {
            let cfg = n.pod_config(&format!("web-{}", cl.node(i).name()));
            let pod = n.run_pod(&cfg, HANDLER_PODNET);
            let ctr = n.start_container(&pod, &cfg, peer_server_container());
            let ip: Ipv4Addr = n.pod_ip(&pod).parse().expect("the pod's IPv4 address");
            let f = &cl.facts[i];
            assert!(
                f.subnet.contains(&ip) && ip != f.gateway,
                "pod {ip} of node {} is not a pod address of its subnet {}",
                f.node,
                f.subnet
            );
            let inside = exec(n.client(), &ctr, "ip -4 -o addr show eth0; ip link show eth0; ip route show default")
                .expect("the container's view of its network");
            assert!(inside.contains(&format!("inet {ip}/{}", f.subnet.prefix_len())), "{inside}");
            assert!(inside.contains(&format!("mtu {}", f.mtu)), "not the facts' MTU {}: {inside}", f.mtu);
            assert!(inside.contains(&format!("default via {}", f.gateway)), "not via the facts' gateway: {inside}");
            pods.push((pod, ctr, ip));
        }

        // Pod to pod across nodes, through CRI's ExecSync: the server sees the client pod's IP.
        for (i, n) in cri.iter().enumerate() {
            for (j, (_, _, server_ip)) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
                let what = format!("pod on {} -> pod on {} ({server_ip})", cl.node(i).name(), cl.node(j).name());
                let seen = fetch_peer_with(&what, "wget", &server_ip.to_string(), PORT, |cmd| {
                    exec(n.client(), &pods[i].1, cmd)
                });
                assert_eq!(seen, pods[i].2, "{what}: the server saw {seen}, not the client pod's own address");
            }
        }
        // Node to the other nodes' pods: the server sees the node's own address (host-gw routes
        // from the uplink, no NAT).
        for i in 0..3 {
            for (j, (_, _, server_ip)) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
                let what = format!("node {} -> pod on {} ({server_ip})", cl.node(i).name(), cl.node(j).name());
                let seen = fetch_peer(cl.node(i).ns(), &what, &server_ip.to_string(), PORT);
                assert_eq!(seen, cl.node(i).ip(), "{what}: the server saw {seen}, not the node's address");
            }
        }
        // Cluster mode on each node: the pod's bridge port is isolated.
        for n in &cri {
            let ports = n.node().sh(&format!("bridge -d link show master {PODNET_BRIDGE}"));
            assert!(ports.contains("isolated on"), "the pod's port is not isolated: {ports}");
        }
        let t_checks = t0.elapsed();

        // The pods go through CRI; each containerd stops with nothing left of them.
        for (n, (pod, _, _)) in cri.iter().zip(&pods) {
            n.stop_and_remove(pod);
        }
        for n in cri {
            n.finish();
        }
        // The node namespaces are the cluster's: still there, with only the cluster's links.
        for i in 0..3 {
            let node = cl.node(i);
            assert!(node.ns().path.exists(), "{}'s namespace went with its containerd", node.name());
            let veths = node.ns().sh("ip -o link show type veth");
            assert_eq!(veths.lines().count(), 1, "{}: only its uplink should be a veth: {veths}", node.name());
        }
        cl.assert_agents_run();
        eprintln!(
            "timing: cluster {t_cluster:?}, 3 containerds {:?}, pods and checks {:?}, teardown {:?}",
            t_containerd - t_cluster,
            t_checks - t_containerd,
            t0.elapsed() - t_checks
        );
    }
    leaks::assert_no_leaks(&before, &marker);
    eprintln!("total {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Services as kube-proxy's iptables mode writes them.

/// The network name of the exec'd plugin's conflist.
const NET: &str = "podnet";
const BRIDGE: &str = "cni0";
const MASQ_MARK: &str = "0x4000/0x4000";

/// A Service port as kube-proxy sees it: `namespace/name:port`, ClusterIP, NodePort, endpoint.
struct Service {
    name: &'static str,
    cluster_ip: &'static str,
    port: u16,
    node_port: Option<u16>,
    endpoint: Ipv4Addr,
}

impl Service {
    /// A chain name suffix like kube-proxy's: 16 characters of a SHA-256 of the service port
    /// name (and of the endpoint for a KUBE-SEP chain); kube-proxy base32-encodes it, hex here.
    fn hash(&self, extra: &str) -> String {
        let h = Sha256::digest(format!("default/{}:http{extra}", self.name).as_bytes());
        format!("{h:X}")[..16].to_string()
    }
    fn svc(&self) -> String {
        format!("KUBE-SVC-{}", self.hash(""))
    }
    fn ext(&self) -> String {
        format!("KUBE-EXT-{}", self.hash(""))
    }
    fn sep(&self) -> String {
        format!("KUBE-SEP-{}", self.hash(&self.endpoint.to_string()))
    }
}

/// The nat table rules of kube-proxy's iptables mode for `services` (shape of kube-proxy 1.30,
/// `iptables-save -t nat`), for `iptables-restore --noflush`.
fn kube_proxy_nat_rules(services: &[Service]) -> String {
    let mut chains =
        vec!["KUBE-SERVICES".to_string(), "KUBE-NODEPORTS".into(), "KUBE-POSTROUTING".into(), "KUBE-MARK-MASQ".into()];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_string(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".into(),
        format!("-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN"),
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE \
         --random-fully"
            .into(),
    ];
    for s in services {
        let (svc, sep, name) = (s.svc(), s.sep(), format!("default/{}:http", s.name));
        let ep = format!("{}:{PORT}", s.endpoint);
        chains.extend([svc.clone(), sep.clone()]);
        rules.push(format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {} -j {svc}",
            s.cluster_ip, s.port
        ));
        rules.push(format!(
            "-A {svc} ! -s {CLUSTER_CIDR} -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp \
             --dport {} -j KUBE-MARK-MASQ",
            s.cluster_ip, s.port
        ));
        rules.push(format!("-A {svc} -m comment --comment \"{name} -> {ep}\" -j {sep}"));
        rules.push(format!("-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ", s.endpoint));
        rules.push(format!("-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}"));
        if let Some(np) = s.node_port {
            let ext = s.ext();
            chains.push(ext.clone());
            rules
                .push(format!("-A KUBE-NODEPORTS -p tcp -m comment --comment \"{name}\" -m tcp --dport {np} -j {ext}"));
            rules.push(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            ));
            rules.push(format!("-A {ext} -j {svc}"));
        }
    }
    // Last in KUBE-SERVICES, as kube-proxy keeps it.
    rules.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in \
         this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .into(),
    );
    let mut text = String::from("*nat\n");
    for c in chains {
        text.push_str(&format!(":{c} - [0:0]\n"));
    }
    for r in rules {
        text.push_str(&r);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// The filter table of a node whose FORWARD policy is drop: kube-proxy's KUBE-FORWARD
/// (`iptables-save -t filter` of kube-proxy 1.30, without its nfacct counter), then what
/// docs/cluster.md asks for, the cluster CIDR accepted both ways.
fn forward_rules() -> String {
    format!(
        "*filter\n\
         :FORWARD DROP [0:0]\n\
         :KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate \
         RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -s {CLUSTER_CIDR} -j ACCEPT\n\
         -A FORWARD -d {CLUSTER_CIDR} -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Runs `iptables-restore <args>` in `ns` with `rules` on its stdin; panics with its error.
fn iptables_restore(ns: &Ns, args: &str, rules: &str) {
    let o = ns.run(&format!("iptables-restore {args} <<'EOF'\n{rules}EOF"));
    assert!(
        o.status.success(),
        "iptables-restore {args} failed in {}: {}\n{rules}",
        ns.name(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The lines of `iptables-save` in `ns` that are rules or chains (no comments, no COMMIT).
fn iptables_state(ns: &Ns) -> Vec<String> {
    ns.sh("iptables-save")
        .lines()
        .filter(|l| l.starts_with("-A ") || (l.starts_with(':') && !l.contains(" ACCEPT ")))
        .map(str::to_string)
        .collect()
}

/// nft tables in `ns` (`family name`).
fn nft_tables(ns: &Ns) -> Vec<String> {
    ns.sh("nft list tables").lines().filter_map(|l| l.strip_prefix("table ")).map(str::to_string).collect()
}

/// A pod of the exec'd plugin: its namespace, node index, container id, IP and server.
struct Pod {
    ns: Ns,
    node: usize,
    id: String,
    ip: Ipv4Addr,
    _server: Option<Background>,
}

/// The podnet conflist of node `i` in cluster mode (as hack/demo-multinode writes it).
fn plugin_conf(cl: &Cluster, i: usize) -> Value {
    facts_conf(NET, BRIDGE, &cl.scratch.path().join(cl.node(i).name()), &cl.facts_path(i))
}

/// ADD of a pod on node `i` through the exec'd plugin, with a peer server on [`PORT`] when
/// `www` (the CGI's document root) is given.
fn add_pod(cl: &Cluster, i: usize, name: &str, www: Option<&Path>) -> Pod {
    let ns = Ns::new("psv");
    let id = format!("{name}-{}", ns.name());
    let res = Invocation::new("ADD", &id, Some(&ns.path)).run(cl.node(i).ns(), &plugin_conf(cl, i)).ok().json();
    let addr = res["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("no address in {res}"));
    let ip: Ipv4Addr = addr.split('/').next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{res}"));
    assert!(cl.facts[i].subnet.contains(&ip), "pod {ip} not in {}'s subnet {}", cl.node(i).name(), cl.facts[i].subnet);
    let server = www.map(|w| {
        let bg = ns.spawn(&format!("busybox httpd -f -p {PORT} -h {}", w.display()));
        ns.wait_listening("tcp", PORT);
        bg
    });
    Pod { ns, node: i, id, ip, _server: server }
}

fn del_pod(cl: &Cluster, pod: &Pod) {
    Invocation::new("DEL", &pod.id, Some(&pod.ns.path)).run(cl.node(pod.node).ns(), &plugin_conf(cl, pod.node)).ok();
}

/// kube-proxy's nat rules (iptables mode, through iptables-nft) in every node of a vxlan
/// cluster of three, pods through the exec'd plugin: (a) a pod on node a reaches ClusterIP
/// 10.96.0.10:80, whose only endpoint is a pod on node b, which sees the client pod's IP;
/// (b) ClusterIP 10.96.0.11:80, whose only endpoint is another pod on a's own bridge, works
/// with bridge-nf-call off (the hairpin case), the endpoint seeing the client pod's IP;
/// (c) NodePort 30080 on a, from node c's host namespace to a's node IP, reaches the pod on b
/// (masqueraded to an address of a's, kube-proxy's MASQUERADE). Node a's FORWARD policy is
/// drop with the cluster CIDR accepted both ways (what docs/cluster.md asks of a node), and
/// without those two rules the hairpin Service fails: that traffic is routed by the node.
/// Every node filters reverse paths strictly (`rp_filter=1`). Then every rule and table the
/// test made is removed and nothing is left.
#[test]
#[ignore = "needs root"]
fn kube_proxy_iptables_services_across_nodes_and_on_one_bridge() {
    require_root();
    let _serial = leaks::serial();
    let t0 = Instant::now();
    let marker = unique("pnsvc");
    let before = Snapshot::take(&marker);
    {
        let mut cl = Cluster::new(&["a", "b", "c"], "vxlan");
        let t_cluster = t0.elapsed();
        // Strict reverse-path filtering everywhere (the effective value is the maximum of
        // `all` and the interface's): every path below is symmetric, so it passes.
        for n in &cl.nodes {
            n.ns().sh("sysctl -qw net.ipv4.conf.all.rp_filter=1");
        }
        let www = TempDir::new("pnsvc-www");
        let cgi = www.path().join(PEER_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(cgi.parent().expect("cgi-bin")).expect("create cgi-bin");
        std::fs::write(&cgi, PEER_CGI.join("\n") + "\n").expect("write the CGI script");
        std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod CGI");

        let client = add_pod(&cl, 0, "client", Some(www.path()));
        let local = add_pod(&cl, 0, "local", Some(www.path()));
        let remote = add_pod(&cl, 1, "remote", Some(www.path()));
        let services = [
            Service { name: "remote", cluster_ip: "10.96.0.10", port: 80, node_port: Some(30080), endpoint: remote.ip },
            Service { name: "local", cluster_ip: "10.96.0.11", port: 80, node_port: None, endpoint: local.ip },
        ];
        let rules = kube_proxy_nat_rules(&services);
        let tables_before: BTreeMap<usize, Vec<String>> = (0..3).map(|i| (i, nft_tables(cl.node(i).ns()))).collect();
        for i in 0..3 {
            iptables_restore(cl.node(i).ns(), "--noflush", &rules);
        }
        // Node a: FORWARD policy drop, kube-proxy's KUBE-FORWARD, the cluster CIDR accepted
        // both ways.
        let a = cl.node(0).ns();
        iptables_restore(a, "--noflush", &forward_rules());
        let nat = a.sh("iptables-save -t nat");
        for s in &services {
            assert!(nat.contains(&format!("-j DNAT --to-destination {}:{PORT}", s.endpoint)), "{nat}");
        }
        assert_eq!(a.sh("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

        // (a) ClusterIP -> endpoint on another node; no NAT of the client pod.
        let seen = fetch_peer(&client.ns, "pod on a -> ClusterIP 10.96.0.10 (endpoint on b)", "10.96.0.10", 80);
        assert_eq!(seen, client.ip, "the endpoint on b saw {seen}, not the client pod's IP");
        // (b) ClusterIP -> endpoint on the client's own bridge (hairpin), bridge-nf-call off.
        let seen =
            fetch_peer(&client.ns, "pod on a -> ClusterIP 10.96.0.11 (endpoint on a's bridge)", "10.96.0.11", 80);
        assert_eq!(seen, client.ip, "the endpoint on a's bridge saw {seen}, not the client pod's IP");
        // (c) NodePort on a, from c's host namespace, to the pod on b: masqueraded by
        // kube-proxy's rule to an address of a.
        let (c_ns, a_ip) = (cl.node(2).ns(), cl.node(0).ip().to_string());
        let seen = fetch_peer(c_ns, "node c -> NodePort a:30080 (endpoint on b)", &a_ip, 30080);
        let a_addrs = addresses(a);
        assert!(a_addrs.contains(&seen), "the NodePort's endpoint saw {seen}, not one of a's addresses {a_addrs:?}");
        eprintln!("NodePort a:30080 from c: the endpoint on b saw {seen} (a: {a_addrs:?})");
        // The same Services from a pod on another node (b's kube-proxy rules).
        let seen = fetch_peer(&remote.ns, "pod on b -> ClusterIP 10.96.0.11 (endpoint on a)", "10.96.0.11", 80);
        assert_eq!(seen, remote.ip, "the endpoint on a saw {seen}, not the pod on b's IP");

        // Without the cluster CIDR accepts in a's FORWARD, the hairpin Service fails: it is
        // routed by the node, and KUBE-FORWARD accepts only marked packets (to be masqueraded)
        // and established connections, not a pod's new connection. The NodePort, marked by
        // KUBE-EXT, still passes.
        let cidr_accepts =
            [format!("FORWARD -s {CLUSTER_CIDR} -j ACCEPT"), format!("FORWARD -d {CLUSTER_CIDR} -j ACCEPT")];
        for r in &cidr_accepts {
            a.sh(&format!("iptables -D {r}"));
        }
        assert!(!answers_once(&client.ns, "10.96.0.11", 80), "the hairpin Service answered with a's FORWARD dropping");
        assert!(!answers_once(&client.ns, "10.96.0.10", 80), "the ClusterIP answered with a's FORWARD dropping");
        assert!(answers_once(c_ns, &a_ip, 30080), "the NodePort (marked, accepted by KUBE-FORWARD) failed");
        for r in &cidr_accepts {
            a.sh(&format!("iptables -A {r}"));
        }
        assert!(answers_once(&client.ns, "10.96.0.11", 80), "the hairpin Service with a's FORWARD accepting again");
        let t_checks = t0.elapsed();

        // Remove every rule and the tables iptables-nft made; the pods go.
        for i in 0..3 {
            let ns = cl.node(i).ns();
            iptables_restore(ns, "", "*nat\nCOMMIT\n");
            if i == 0 {
                iptables_restore(ns, "", "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
            }
            assert_eq!(iptables_state(ns), Vec::<String>::new(), "iptables rules left in {}", cl.node(i).name());
            for t in nft_tables(ns) {
                if !tables_before[&i].contains(&t) {
                    ns.sh(&format!("nft delete table {t}"));
                }
            }
            assert_eq!(nft_tables(ns), tables_before[&i], "tables left in {}", cl.node(i).name());
        }
        for p in [&client, &local, &remote] {
            del_pod(&cl, p);
        }
        for i in 0..3 {
            let d = cl.scratch.path().join(cl.node(i).name());
            assert_nothing_left(cl.node(i).ns(), NET, &d.join("ipam"), &d.join("cni-state"));
        }
        cl.assert_agents_run();
        eprintln!("timing: cluster {t_cluster:?}, pods and checks {:?}", t_checks - t_cluster);
    }
    leaks::assert_no_leaks(&before, &marker);
    eprintln!("total {:?}", t0.elapsed());
}
