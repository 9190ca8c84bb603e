//! The cluster harness itself (root), without the node agent: L2 and routed fabrics connect
//! their nodes (and only them), the uplink MTU is applied, etcd serves the nodes across the
//! router and keeps its data over a stop and a crash, the agent helper runs a stand-in binary
//! in a node, and nothing is left behind. Every root test holds `leaks::serial` and checks
//! that it left no namespace, mount or process.
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use podnet_tests::cluster::{
    http, our_netns, poll_until, write_node_config, Agent, Before, Fabric, Node, NodeConfig, NodeSpec,
};
use podnet_tests::containerd::alive;
use podnet_tests::leaks;
use podnet_tests::{pings, require_root, Ns, TempDir};

fn ns_inode(ns: &Ns) -> u64 {
    fs::metadata(&ns.path).map(|m| m.ino()).expect("stat namespace")
}

/// `ip -o link show <dev>`'s MTU in `ns`.
fn link_mtu(ns: &Ns, dev: &str) -> u32 {
    let line = ns.sh(&format!("ip -o link show {dev}"));
    let mtu = line.split_whitespace().skip_while(|w| *w != "mtu").nth(1);
    mtu.and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("no mtu in {line:?}"))
}

#[test]
#[ignore = "needs root"]
fn l2_fabric_nodes_reach_each_other_and_nothing_else() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    {
        let t = Instant::now();
        let f = Fabric::l2("10.99.0.0/24");
        let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| f.node(n)).collect();
        eprintln!("L2 fabric with 3 nodes in {:?}", t.elapsed());
        assert!(f.router().is_none() && f.router_ip(0).is_none());
        assert_eq!(f.datastore_ip().to_string(), "10.99.0.100");
        for (i, n) in nodes.iter().enumerate() {
            assert_eq!(n.ip().to_string(), format!("10.99.0.{}", i + 1));
            assert_eq!((n.dev(), n.mtu(), n.segment(), n.gateway()), ("eth0", 1500, 0, None));
            assert_eq!(n.cidr(), format!("10.99.0.{}/24", i + 1));
            let addrs = n.ns().sh("ip -4 -o addr show dev eth0");
            assert!(addrs.contains(&format!("inet {} ", n.cidr())), "{}: {addrs}", n.name());
            assert_eq!(n.ns().sh("sysctl -n net.ipv4.ip_forward").trim(), "1");
            assert_eq!(n.ns().sh("ip -4 route show default").trim(), "", "an L2 node has no default route");
            // No route out of the fabric.
            let out = n.ns().run("ip route get 192.0.2.1");
            assert!(!out.status.success(), "{}: 192.0.2.1 is routable: {out:?}", n.name());
            assert!(pings(n.ns(), &f.datastore_ip().to_string()), "{} does not reach the datastore", n.name());
        }
        for x in &nodes {
            for y in nodes.iter().filter(|y| y.name() != x.name()) {
                assert!(pings(x.ns(), &y.ip().to_string()), "{} does not reach {} ({})", x.name(), y.name(), y.ip());
            }
        }
        // Every node is a port of the one bridge.
        let ports = f.switch().sh("ip -o link show master br0");
        for n in &nodes {
            assert!(ports.contains(&format!(" {}@", n.port())), "{} is not on br0: {ports}", n.port());
        }
    }
    before.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn routed_fabric_crosses_the_router_and_goes_nowhere_else() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    {
        let f = Fabric::routed(&["10.99.1.0/24", "10.99.2.0/24"]);
        let a = f.node("a");
        let b = f.node("b");
        let c = f.node_on(1, "c");
        assert_eq!(
            (a.ip().to_string(), b.ip().to_string(), c.ip().to_string()),
            ("10.99.1.1".into(), "10.99.1.2".into(), "10.99.2.1".into())
        );
        assert_eq!(a.gateway().map(|g| g.to_string()).as_deref(), Some("10.99.1.254"));
        assert_eq!(c.gateway().map(|g| g.to_string()).as_deref(), Some("10.99.2.254"));
        assert_eq!(f.router_ip(1).map(|g| g.to_string()).as_deref(), Some("10.99.2.254"));
        let router = f.router().expect("a routed fabric has a router");
        assert_eq!(router.sh("sysctl -n net.ipv4.ip_forward").trim(), "1");

        for (x, y) in [(&a, &c), (&c, &a), (&a, &b)] {
            assert!(pings(x.ns(), &y.ip().to_string()), "{} does not reach {} ({})", x.name(), y.name(), y.ip());
        }
        assert!(pings(c.ns(), &f.datastore_ip().to_string()), "c (segment 1) does not reach the datastore");

        // The kernel's choice: the other segment via the router, the own segment directly.
        let via = a.ns().sh(&format!("ip route get {}", c.ip()));
        assert!(via.contains("via 10.99.1.254 dev eth0"), "a -> c: {via}");
        let direct = a.ns().sh(&format!("ip route get {}", b.ip()));
        assert!(!direct.contains(" via ") && direct.contains("dev eth0"), "a -> b: {direct}");
        // And the packets': exactly one hop, the router (TTL 1 dies there, TTL 2 arrives).
        let ttl1 = a.ns().run(&format!("ping -n -c 1 -W 1 -t 1 {}", c.ip()));
        let ttl1_out = String::from_utf8_lossy(&ttl1.stdout);
        assert!(!ttl1.status.success(), "a ping with TTL 1 crossed the router: {ttl1_out}");
        assert!(ttl1_out.contains("From 10.99.1.254") && ttl1_out.contains("Time to live exceeded"), "{ttl1_out}");
        a.ns().sh(&format!("ping -n -c 1 -W 2 -t 2 {}", c.ip()));

        // Nothing beyond the fabric: the router has no route out and says so.
        let out = router.run("ip route get 192.0.2.1");
        assert!(!out.status.success(), "the router routes 192.0.2.1: {out:?}");
        let out = a.ns().run("ping -n -c 1 -W 1 192.0.2.1");
        assert!(!out.status.success(), "192.0.2.1 answered: {out:?}");
        // Only the fabric's own links in the router: lo and one leg per segment.
        let mut links = podnet_tests::link_names(router);
        links.sort();
        assert_eq!(links, ["eth0", "eth1", "lo"]);
    }
    before.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn node_uplink_mtu_is_applied_on_both_ends() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    {
        let f = Fabric::l2("10.99.0.0/24");
        let a = f.add(NodeSpec::new("a").mtu(1400));
        let b = f.node("b");
        assert_eq!((a.mtu(), b.mtu()), (1400, 1500));
        assert_eq!(link_mtu(a.ns(), a.dev()), 1400);
        assert_eq!(link_mtu(f.switch(), a.port()), 1400);
        assert_eq!(link_mtu(b.ns(), b.dev()), 1500);
        assert_eq!(link_mtu(f.switch(), b.port()), 1500);
        // 1372 bytes of payload + 8 (ICMP) + 20 (IP) fill 1400 exactly; one more does not fit.
        a.ns().sh(&format!("ping -n -c 1 -W 2 -M do -s 1372 {}", b.ip()));
        let out = a.ns().run(&format!("ping -n -c 1 -W 1 -M do -s 1373 {}", b.ip()));
        assert!(!out.status.success(), "1401 bytes left a 1400 MTU uplink unfragmented: {out:?}");
    }
    before.assert_clean();
}

/// A POST to etcd's JSON gateway with busybox wget from a node (`timeout`: busybox 1.35's
/// `wget -T` crashes).
fn wget_post(node: &Node, url: &str, body: &str) -> std::process::Output {
    node.ns().run(&format!("timeout 5 busybox wget -qO- --post-data '{body}' {url}"))
}

#[test]
#[ignore = "needs root"]
fn etcd_serves_the_fabric_and_keeps_its_data_over_a_stop_and_a_crash() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    {
        let f = Fabric::routed(&["10.99.1.0/24", "10.99.2.0/24"]);
        let c = f.node_on(1, "c");
        let t = Instant::now();
        let mut etcd = f.start_etcd();
        eprintln!("etcd healthy in {:?} (pid {:?}, {})", t.elapsed(), etcd.pid(), etcd.dir().display());
        assert_eq!(etcd.endpoint(), "http://10.99.1.100:2379");
        assert!(etcd.data_dir().join("member").is_dir(), "no member dir in {}", etcd.data_dir().display());

        // A node on the other segment reaches it through the router.
        let health = c.ns().sh(&format!("timeout 5 busybox wget -qO- {}/health", etcd.endpoint()));
        assert!(health.contains(r#""health":"true""#), "{health}");
        let r = http(c.ns(), "GET", &format!("{}/health", etcd.endpoint()), None).expect("GET /health from c");
        assert_eq!(r.status, 200, "{r:?}");

        // Written by the node over the gateway (base64 key and value), read by the harness.
        let put = format!(r#"{{"key":"{}","value":"{}"}}"#, B64.encode("/pnt/k1"), B64.encode("v1"));
        let out = wget_post(&c, &format!("{}/v3/kv/put", etcd.endpoint()), &put);
        assert!(out.status.success(), "put from c: {out:?}");
        assert_eq!(etcd.get("/pnt/k1").as_deref(), Some("v1"));
        let lease = etcd.grant_lease(2);
        etcd.put_with_lease("/pnt/leased", "x", lease);
        let kvs = etcd.get_prefix("/pnt/");
        let keys: Vec<(&str, &str, bool)> =
            kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_str(), kv.lease == lease)).collect();
        assert_eq!(keys, [("/pnt/k1", "v1", false), ("/pnt/leased", "x", true)]);
        assert_eq!(etcd.get("/pnt/nothing"), None);

        // Stopped for longer than the lease's TTL: the node cannot reach it meanwhile.
        let status = etcd.stop().expect("etcd was running");
        eprintln!("etcd stopped: {status}");
        assert!(!etcd.running());
        let out = c.ns().run(&format!("timeout 5 busybox wget -qO- {}/health", etcd.endpoint()));
        assert!(!out.status.success(), "a stopped etcd answered: {out:?}");
        // The scenario itself (etcd down 3 s, the lease's TTL is 2 s), not a synchronization.
        std::thread::sleep(Duration::from_secs(3));
        let t = Instant::now();
        etcd.start();
        eprintln!("etcd restarted in {:?}", t.elapsed());
        let range = format!(r#"{{"key":"{}"}}"#, B64.encode("/pnt/k1"));
        let out = wget_post(&c, &format!("{}/v3/kv/range", etcd.endpoint()), &range);
        assert!(out.status.success(), "range from c: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("range answer is JSON");
        assert_eq!(v["kvs"][0]["value"], B64.encode("v1"), "{v}");
        // etcd 3.4 extends every lease to its full TTL when it comes back: the leased key
        // outlived the downtime, and goes one TTL later without keep-alives.
        assert_eq!(etcd.get("/pnt/leased").as_deref(), Some("x"), "the lease expired while etcd was down");
        assert!(etcd.lease_ttl(lease) > 0);
        poll_until("the leased key to expire after the restart", Duration::from_secs(10), || {
            match etcd.get("/pnt/leased") {
                None => Ok(()),
                Some(v) => Err(format!("/pnt/leased = {v:?}, lease TTL {}", etcd.lease_ttl(lease))),
            }
        });
        assert_eq!(etcd.lease_ttl(lease), -1);

        // A crash (SIGKILL) loses nothing acknowledged either.
        etcd.put("/pnt/k2", "v2");
        etcd.kill();
        etcd.start();
        assert_eq!(etcd.get("/pnt/k2").as_deref(), Some("v2"));
        assert_eq!(etcd.delete_prefix("/pnt/"), 2);
        assert!(etcd.get_prefix("/pnt/").is_empty());
        assert!(etcd.log().matches("=== podnet-tests: etcd starts").count() == 3, "three runs in one log");

        let dir = etcd.dir().to_path_buf();
        let problems = etcd.shutdown();
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!dir.exists(), "{} is left", dir.display());
        assert!(!dir.with_extension("log").exists(), "the log of a clean run was kept");
    }
    before.assert_clean();
}

/// A stand-in for `podnet`: prints its arguments, namespace and config, exits 0 on SIGTERM.
fn stand_in(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("podnet-stand-in");
    fs::write(
        &p,
        "#!/bin/sh\n\
         echo \"args: $*\"\n\
         echo \"netns: $(readlink /proc/self/ns/net)\"\n\
         cat \"$4\"\n\
         trap 'echo got TERM; exit 0' TERM\n\
         while :; do sleep 0.05; done\n",
    )
    .expect("write the stand-in");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod the stand-in");
    p
}

#[test]
#[ignore = "needs root"]
fn agent_helper_runs_its_binary_in_the_node_and_stops_it() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    {
        let scratch = TempDir::new("pnclh");
        let f = Fabric::l2("10.99.0.0/24");
        let a = f.node("a");
        let cfg = NodeConfig {
            name: "a".into(),
            node_ip: a.ip(),
            etcd_endpoints: vec![format!("http://{}:2379", f.datastore_ip())],
            prefix: "/podnet-test".into(),
            subnet: None,
            ttl_seconds: 4,
            run_dir: scratch.path().join("a/run"),
            state_dir: scratch.path().join("a/state"),
        };
        let path = write_node_config(scratch.path(), &cfg);
        let mut agent = Agent::with_binary(a.ns(), stand_in(scratch.path()), &path);
        let want_ns = format!("netns: net:[{}]", ns_inode(a.ns()));
        poll_until("the stand-in to print its config", Duration::from_secs(10), || {
            let log = agent.log();
            if log.contains("state_dir = ") {
                Ok(())
            } else {
                Err(log)
            }
        });
        let log = agent.log();
        assert!(log.contains(&format!("args: node run --config {}", path.display())), "{log}");
        assert!(log.contains(&want_ns), "not in node a's namespace ({want_ns}): {log}");
        assert!(log.contains("name = \"a\"\nnode_ip = \"10.99.0.1\"\n"), "{log}");

        let status = agent.stop().expect("it was running");
        assert!(status.success(), "the stand-in exits 0 on SIGTERM: {status}");
        assert!(agent.log().contains("got TERM"), "{}", agent.log());
        assert!(!agent.running());

        agent.start();
        let pid = agent.pid().expect("running again");
        let status = agent.kill().expect("it was running");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(!alive(pid));

        agent.start();
        let pid = agent.pid().expect("running again");
        let log_dir = agent.log_path().parent().expect("log dir").to_path_buf();
        drop(agent);
        assert!(!alive(pid), "the agent outlived its Agent");
        assert!(!log_dir.exists(), "{} is left", log_dir.display());
    }
    before.assert_clean();
}

#[test]
#[ignore = "needs root"]
fn fabric_etcd_and_agents_leave_no_namespace_behind() {
    require_root();
    let _serial = leaks::serial();
    let before = Before::take();
    let all_before: BTreeSet<String> = our_netns();
    let made: Vec<String>;
    let dirs: Vec<PathBuf>;
    {
        let scratch = TempDir::new("pnclh");
        let f = Fabric::routed(&["10.99.1.0/24", "10.99.2.0/24"]);
        let nodes = [f.node("a"), f.node_on(1, "b")];
        let etcd = f.start_etcd();
        let agents: Vec<Agent> = nodes
            .iter()
            .map(|n| {
                let cfg = NodeConfig::for_node(n, &etcd, "/podnet-test", scratch.path());
                Agent::with_binary(n.ns(), stand_in(scratch.path()), &write_node_config(scratch.path(), &cfg))
            })
            .collect();
        let mut names = f.namespaces();
        names.extend(nodes.iter().map(|n| n.ns().name()));
        assert_eq!(names.len(), 5, "switch, datastore, router and two nodes: {names:?}");
        let now = our_netns();
        for n in &names {
            assert!(now.contains(n), "{n} is not in `ip netns list`: {now:?}");
        }
        made = names;
        dirs = agents
            .iter()
            .filter_map(|a| a.log_path().parent().map(PathBuf::from))
            .chain([etcd.dir().to_path_buf()])
            .collect();
        // Dropped in reverse: agents, etcd, nodes, fabric, scratch.
    }
    let after = our_netns();
    assert_eq!(after, all_before, "made {made:?}");
    for d in &dirs {
        assert!(!d.exists(), "{} is left", d.display());
    }
    before.assert_clean();
}

#[test]
fn node_config_is_the_agents_toml() {
    let scratch = TempDir::new("pnclh");
    let mut cfg = NodeConfig {
        name: "a".into(),
        node_ip: "10.99.0.1".parse().unwrap(),
        etcd_endpoints: vec!["http://10.99.0.100:2379".into()],
        prefix: "/podnet-test-xyz".into(),
        subnet: None,
        ttl_seconds: 4,
        run_dir: "/tmp/x/a/run".into(),
        state_dir: "/tmp/x/a/state".into(),
    };
    let path = write_node_config(scratch.path(), &cfg);
    assert_eq!(path, scratch.path().join("a.toml"));
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "name = \"a\"\n\
         node_ip = \"10.99.0.1\"\n\
         etcd_endpoints = [\"http://10.99.0.100:2379\"]\n\
         prefix = \"/podnet-test-xyz\"\n\
         ttl_seconds = 4\n\
         run_dir = \"/tmp/x/a/run\"\n\
         state_dir = \"/tmp/x/a/state\"\n"
    );
    cfg.subnet = Some("10.244.9.0/24".into());
    cfg.etcd_endpoints.push("http://10.99.0.101:2379".into());
    cfg.prefix = "/odd \"quoted\" \\ prefix".into();
    let text = cfg.to_toml();
    assert!(
        text.contains("prefix = \"/odd \\\"quoted\\\" \\\\ prefix\"\nsubnet = \"10.244.9.0/24\"\nttl_seconds = 4\n"),
        "{text}"
    );
    let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("not TOML ({e}): {text}"));
    assert_eq!(v["prefix"].as_str(), Some("/odd \"quoted\" \\ prefix"));
    assert_eq!(v["subnet"].as_str(), Some("10.244.9.0/24"));
    assert_eq!(v["ttl_seconds"].as_integer(), Some(4));
    let eps: Vec<&str> = v["etcd_endpoints"].as_array().unwrap().iter().filter_map(|e| e.as_str()).collect();
    assert_eq!(eps, ["http://10.99.0.100:2379", "http://10.99.0.101:2379"]);
}
