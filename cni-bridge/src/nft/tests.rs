//! Firewall tests. The ignored ones need root: each runs in a network namespace of its own and
//! checks the result with `nft` exec'd inside that namespace (product code never execs nft).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use podnet_netns::NetNs;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const TCP: u8 = libc::IPPROTO_TCP as u8;
const UDP: u8 = libc::IPPROTO_UDP as u8;

/// A plan with every rule kind, for v4 and v6.
fn full_plan(tag: &str) -> FirewallPlan {
    FirewallPlan {
        tag: tag.into(),
        masq: vec![
            (ip("10.88.0.5"), "10.88.0.0/16".parse().unwrap()),
            (ip("fd00:88::5"), "fd00:88::/64".parse().unwrap()),
        ],
        port_maps: vec![
            PortMap {
                pod_ip: ip("10.88.0.5"),
                container_port: 80,
                host_port: 8080,
                protocol: TCP,
                host_ip: None,
                pod_net: None,
            },
            PortMap {
                pod_ip: ip("10.88.0.5"),
                container_port: 53,
                host_port: 5353,
                protocol: UDP,
                host_ip: Some(ip("192.168.77.10")),
                pod_net: None,
            },
            PortMap {
                pod_ip: ip("fd00:88::5"),
                container_port: 80,
                host_port: 8080,
                protocol: TCP,
                host_ip: None,
                pod_net: None,
            },
            // Host IP of the other family: skipped.
            PortMap {
                pod_ip: ip("fd00:88::5"),
                container_port: 81,
                host_port: 8081,
                protocol: TCP,
                host_ip: Some(ip("192.168.77.10")),
                pod_net: None,
            },
        ],
        mac_spoof: Some(("vethpodnet1".into(), [0x02, 0x42, 0xac, 0x11, 0x00, 0x05])),
    }
}

/// A smaller v4-only plan for a second attachment.
fn small_plan(tag: &str) -> FirewallPlan {
    FirewallPlan {
        tag: tag.into(),
        masq: vec![(ip("10.88.0.6"), "10.88.0.0/16".parse().unwrap())],
        port_maps: vec![PortMap {
            pod_ip: ip("10.88.0.6"),
            container_port: 443,
            host_port: 8443,
            protocol: TCP,
            host_ip: None,
            pod_net: None,
        }],
        mac_spoof: None,
    }
}

#[test]
fn plan_rule_counts() {
    // 3 DNAT (one map skipped), v4 hairpin + localhost, v6 hairpin, 2 masq, 1 anti-spoof.
    assert_eq!(Firewall::plan_rule_count(&full_plan("a")), 9);
    assert_eq!(Firewall::plan_rule_count(&small_plan("b")), 4);
    assert_eq!(Firewall::plan_rule_count(&FirewallPlan { tag: "c".into(), ..Default::default() }), 0);
    // The count does not depend on the tag, even an empty one that add() would refuse.
    assert_eq!(Firewall::plan_rule_count(&small_plan("")), 4);
    assert!(rules::plan_rules(&small_plan("")).is_err());
    let mut bad = small_plan("d");
    bad.port_maps[0].protocol = 1;
    assert!(rules::plan_rules(&bad).is_err());
    assert_eq!(Firewall::plan_rule_count(&bad), 0);
    let long = FirewallPlan { tag: "x".repeat(TAG_MAX + 1), ..small_plan("") };
    let e = rules::plan_rules(&long).unwrap_err();
    assert_eq!(Firewall::plan_rule_count(&long), 4);
    assert!(e.msg.contains("tag"), "{e}");
    let mut mixed = small_plan("e");
    mixed.masq[0].1 = "fd00::/64".parse().unwrap();
    assert!(rules::plan_rules(&mixed).is_err());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` with a fresh network namespace and removes it afterwards, even when `f` panics.
fn with_netns(name: &str, f: impl FnOnce(&NetNs)) {
    assert!(is_root(), "root integration test run without root");
    let dir: PathBuf = std::env::temp_dir().join(format!("podnet-nft-{name}-{}", std::process::id()));
    let ns = NetNs::create(name, Some(&dir)).unwrap();
    let path = ns.path().to_path_buf();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ns)));
    drop(ns);
    podnet_netns::delete(&path).unwrap();
    unmount_dir(&dir);
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn unmount_dir(dir: &Path) {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: undoes the shared bind mount NetNs::create made on the test's own directory.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(dir);
}

/// Runs `nft <args>` inside the namespace (the child inherits the thread's namespace).
fn nft(ns: &NetNs, args: &[&str]) -> String {
    let out = ns.run(|| Command::new("nft").args(args).output()).unwrap().unwrap();
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The rules of `nft -j list ruleset` in podnet's tables: (family, chain, comment, rule json).
fn json_rules(ns: &NetNs) -> Vec<(String, String, Option<String>, serde_json::Value)> {
    let v: serde_json::Value = serde_json::from_str(&nft(ns, &["-j", "list", "ruleset"])).unwrap();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    items
        .into_iter()
        .filter_map(|i| i.get("rule").cloned())
        .filter(|r| r["table"] == "podnet")
        .map(|r| {
            (
                r["family"].as_str().unwrap().to_owned(),
                r["chain"].as_str().unwrap().to_owned(),
                r.get("comment").and_then(|c| c.as_str()).map(str::to_owned),
                r,
            )
        })
        .collect()
}

fn count_untagged(rules: &[(String, String, Option<String>, serde_json::Value)]) -> usize {
    rules.iter().filter(|r| r.2.is_none()).count()
}

/// The text lines of `nft list ruleset` that contain `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
#[ignore = "needs root"]
fn add_installs_every_rule_kind() {
    with_netns("nft-kinds", |ns| {
        let plan = full_plan("podnet-test-a");
        ns.run(|| Firewall::new().unwrap().add(&plan).unwrap()).unwrap();

        let text = nft(ns, &["list", "ruleset"]);
        println!("{text}");
        let tagged = |needle: &str| {
            let l = lines_with(&text, needle);
            assert_eq!(l.len(), 1, "expected one rule with {needle:?} in\n{text}");
            assert!(l[0].contains("comment \"podnet-test-a\""), "no comment on {:?}", l[0]);
        };
        // Chains.
        for c in [
            "type nat hook prerouting priority dstnat",
            // nft prints -100 as "dstnat" only for prerouting.
            "type nat hook output priority -100",
            "type nat hook postrouting priority srcnat",
        ] {
            assert_eq!(lines_with(&text, c).len(), 2, "{c} in ip and ip6:\n{text}");
        }
        assert_eq!(lines_with(&text, "chain hostports").len(), 2);
        assert_eq!(lines_with(&text, "type filter hook prerouting priority dstnat").len(), 1, "{text}");
        // Static jumps, untagged.
        let jumps = lines_with(&text, "fib daddr type local jump hostports");
        assert_eq!(jumps.len(), 4, "{text}");
        assert!(jumps.iter().all(|l| !l.contains("comment")));
        // DNAT.
        tagged("tcp dport 8080 counter packets 0 bytes 0 dnat to 10.88.0.5:80");
        tagged("ip daddr 192.168.77.10 udp dport 5353 counter packets 0 bytes 0 dnat to 10.88.0.5:53");
        tagged("tcp dport 8080 counter packets 0 bytes 0 dnat to [fd00:88::5]:80");
        assert!(lines_with(&text, "8081").is_empty(), "mismatched host IP family not skipped");
        // Hairpin.
        tagged("ip saddr 10.88.0.5 ip daddr 10.88.0.5 ct status dnat counter packets 0 bytes 0 masquerade");
        tagged("ip saddr 127.0.0.0/8 ip daddr 10.88.0.5 ct status dnat counter packets 0 bytes 0 masquerade");
        tagged("ip6 saddr fd00:88::5 ip6 daddr fd00:88::5 ct status dnat counter packets 0 bytes 0 masquerade");
        // ipMasq.
        tagged(
            "ip saddr 10.88.0.5 ip daddr != 10.88.0.0/16 ip daddr != 224.0.0.0/4 counter packets 0 bytes 0 masquerade",
        );
        tagged(
            "ip6 saddr fd00:88::5 ip6 daddr != fd00:88::/64 ip6 daddr != ff00::/8 counter packets 0 bytes 0 masquerade",
        );
        // Anti-spoofing.
        tagged("iifname \"vethpodnet1\" ether saddr != 02:42:ac:11:00:05 counter packets 0 bytes 0 drop");

        // The JSON view: every rule in the right chain, all 9 tagged rules carry the comment.
        let rules = json_rules(ns);
        let tagged: Vec<_> = rules.iter().filter(|r| r.2.as_deref() == Some("podnet-test-a")).collect();
        assert_eq!(tagged.len(), Firewall::plan_rule_count(&plan));
        assert_eq!(count_untagged(&rules), 4);
        assert_eq!(rules.len(), 13);
        let dnat = tagged.iter().find(|r| r.0 == "ip" && r.1 == "hostports").unwrap();
        let exprs = dnat.3["expr"].as_array().unwrap();
        let nat = exprs.iter().find_map(|e| e.get("dnat")).unwrap();
        assert_eq!(nat["addr"], "10.88.0.5");
        assert_eq!(nat["port"], 80);
        let spoof = tagged.iter().find(|r| r.0 == "bridge").unwrap();
        assert_eq!(spoof.1, "prerouting");
        assert!(spoof.3["expr"].to_string().contains("\"drop\""));
        let n = ns
            .run(|| {
                let mut fw = Firewall::new().unwrap();
                (fw.count("podnet-test-a").unwrap(), fw.tags().unwrap())
            })
            .unwrap();
        assert_eq!(n, (9, vec!["podnet-test-a".to_owned()]));
    });
}

#[test]
#[ignore = "needs root"]
fn add_keeps_static_rules_single_and_remove_is_exact() {
    with_netns("nft-remove", |ns| {
        let (a, b) = (full_plan("tag-a"), small_plan("tag-b"));
        let (na, nb) = (Firewall::plan_rule_count(&a), Firewall::plan_rule_count(&b));
        ns.run(|| {
            let mut fw = Firewall::new().unwrap();
            fw.add(&a).unwrap();
            fw.add(&b).unwrap();
            // A second add of the same plan is allowed (it appends) but never repeats the
            // static rules; take it back out with the rest below.
            fw.add(&b).unwrap();
            assert_eq!(fw.count("tag-a").unwrap(), na);
            assert_eq!(fw.count("tag-b").unwrap(), 2 * nb);
            assert_eq!(fw.tags().unwrap(), vec!["tag-a".to_owned(), "tag-b".to_owned()]);
        })
        .unwrap();
        let rules = json_rules(ns);
        assert_eq!(count_untagged(&rules), 4, "static rules duplicated");
        assert_eq!(rules.len(), 4 + na + 2 * nb);

        let removed = ns.run(|| Firewall::new().unwrap().remove("tag-a").unwrap()).unwrap();
        assert_eq!(removed, na);
        let rules = json_rules(ns);
        assert!(rules.iter().all(|r| r.2.as_deref() != Some("tag-a")));
        assert_eq!(rules.iter().filter(|r| r.2.as_deref() == Some("tag-b")).count(), 2 * nb);
        assert_eq!(count_untagged(&rules), 4);

        ns.run(|| {
            let mut fw = Firewall::new().unwrap();
            assert_eq!(fw.remove("tag-a").unwrap(), 0);
            assert_eq!(fw.count("tag-a").unwrap(), 0);
            assert_eq!(fw.tags().unwrap(), vec!["tag-b".to_owned()]);
            assert_eq!(fw.remove("tag-b").unwrap(), 2 * nb);
            assert!(fw.tags().unwrap().is_empty());
            // Adding again after everything tagged is gone reuses the tables and chains.
            fw.add(&a).unwrap();
            assert_eq!(fw.count("tag-a").unwrap(), na);
        })
        .unwrap();
        assert_eq!(count_untagged(&json_rules(ns)), 4);
    });
}

#[test]
#[ignore = "needs root"]
fn remove_tags_count_without_tables() {
    with_netns("nft-empty", |ns| {
        ns.run(|| {
            let mut fw = Firewall::new().unwrap();
            assert_eq!(fw.remove("nothing").unwrap(), 0);
            assert!(fw.tags().unwrap().is_empty());
            assert_eq!(fw.count("nothing").unwrap(), 0);
            // An empty plan creates nothing.
            fw.add(&FirewallPlan { tag: "empty".into(), ..Default::default() }).unwrap();
        })
        .unwrap();
        assert!(!nft(ns, &["list", "ruleset"]).contains("podnet"));
    });
}

#[test]
#[ignore = "needs root"]
fn concurrent_adds_never_duplicate_static_rules() {
    with_netns("nft-race", |ns| {
        const N: usize = 8;
        ns.run(|| {
            let fws: Vec<Firewall> = (0..N).map(|_| Firewall::new().unwrap()).collect();
            std::thread::scope(|s| {
                for (i, mut fw) in fws.into_iter().enumerate() {
                    s.spawn(move || {
                        let mut p = small_plan(&format!("race-{i}"));
                        p.masq.push((ip("fd00:88::6"), "fd00:88::/64".parse().unwrap()));
                        fw.add(&p).unwrap();
                    });
                }
            });
        })
        .unwrap();
        let rules = json_rules(ns);
        assert_eq!(count_untagged(&rules), 4, "static rules duplicated under concurrency");
        assert_eq!(rules.len(), 4 + N * 5);
    });
}

#[test]
#[ignore = "needs root"]
fn conflicting_chain_is_reported_with_context() {
    with_netns("nft-conflict", |ns| {
        nft(ns, &["add", "table", "ip", "podnet"]);
        nft(ns, &["add", "chain", "ip", "podnet", "postrouting", "{ type nat hook postrouting priority 50; }"]);
        let e = ns.run(|| Firewall::new().unwrap().add(&small_plan("t")).unwrap_err()).unwrap();
        assert!(e.msg.contains("creating chain ip podnet postrouting"), "{e}");
        assert!(e.msg.contains("for \"t\""), "{e}");
        // The kernel refuses to move an existing chain's priority (EOPNOTSUPP on 6.x).
        assert!(e.msg.contains("os error"), "{e}");
        // Nothing of the failed batch was applied.
        assert!(json_rules(ns).is_empty());
    });
}

#[test]
#[ignore = "needs root"]
fn stale_generation_is_refused_with_erestart() {
    with_netns("nft-genid", |ns| {
        ns.run(|| {
            let mut fw = Firewall::new().unwrap();
            let stale = fw.genid().unwrap();
            fw.add(&small_plan("bump")).unwrap();
            assert_ne!(fw.genid().unwrap(), stale);
            let msgs = vec![wire::new_table(wire::NFPROTO_IPV4, "podnet-stale")];
            let (_, e) = fw.sock.batch(wire::batch_begin(Some(stale)), msgs, wire::batch_end()).unwrap_err();
            assert!(e.is(libc::ERESTART), "{e}");
            // The same batch at the current generation goes through.
            let fresh = fw.genid().unwrap();
            let msgs = vec![wire::new_table(wire::NFPROTO_IPV4, "podnet-stale")];
            fw.sock.batch(wire::batch_begin(Some(fresh)), msgs, wire::batch_end()).unwrap();
        })
        .unwrap();
        assert!(nft(ns, &["list", "tables"]).contains("table ip podnet-stale"));
    });
}
