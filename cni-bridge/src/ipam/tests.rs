use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;
use crate::error::codes;

struct TmpDir(PathBuf);

impl TmpDir {
    fn new() -> TmpDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "podnet-ipam-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

/// A config over `ranges` with its data dir in `tmp`.
fn conf(tmp: &TmpDir, ranges: serde_json::Value) -> IpamConfig {
    IpamConfig::from_json(&json!({"type": "host-local", "ranges": ranges, "dataDir": tmp.0})).unwrap()
}

fn v4_29(tmp: &TmpDir) -> HostLocal {
    HostLocal::open(&conf(tmp, json!([[{"subnet": "10.1.2.0/29"}]])), "net").unwrap()
}

fn addrs(v: &[IpamConfigured]) -> Vec<String> {
    v.iter().map(|c| c.address.to_string()).collect()
}

fn net_dir(tmp: &TmpDir) -> PathBuf {
    tmp.0.join("net")
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

fn err_of(ipam: serde_json::Value) -> CniError {
    IpamConfig::from_json(&ipam).unwrap_err()
}

// ---------- configuration ----------

#[test]
fn parses_ranges_routes_and_defaults() {
    let c = IpamConfig::from_json(&json!({
        "type": "host-local",
        "ranges": [
            [{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.3.0/24", "rangeStart": "10.1.3.10", "rangeEnd": "10.1.3.20", "gateway": "10.1.3.254"}],
            [{"subnet": "fd00:1::/64"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.2.254"}],
        "resolvConf": "/etc/resolv.conf",
        "someUnknownField": {"x": 1}
    }))
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/cni/networks"));
    assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    assert_eq!(c.ranges.len(), 2);
    let r = &c.ranges[0].0[0];
    assert_eq!((r.range_start, r.range_end, r.gateway), (ip("10.1.2.1"), ip("10.1.2.254"), Some(ip("10.1.2.1"))));
    let r = &c.ranges[0].0[1];
    assert_eq!((r.range_start, r.range_end, r.gateway), (ip("10.1.3.10"), ip("10.1.3.20"), Some(ip("10.1.3.254"))));
    let r = &c.ranges[1].0[0];
    assert_eq!(r.range_start, ip("fd00:1::1"));
    assert_eq!(r.range_end, ip("fd00:1::ffff:ffff:ffff:ffff"));
    assert_eq!(r.gateway, Some(ip("fd00:1::1")));
    assert_eq!(c.routes[0], IpamRoute::new("0.0.0.0/0".parse().unwrap(), None));
    assert_eq!(c.routes[1].gw, Some(ip("10.1.2.254")));
}

#[test]
fn parses_legacy_single_range_first() {
    let c = IpamConfig::from_json(&json!({
        "type": "host-local", "subnet": "10.9.0.0/16", "rangeStart": "10.9.1.0", "gateway": "10.9.0.254",
        "dataDir": "/tmp/x", "ranges": [[{"subnet": "fd00::/120"}]]
    }))
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.ranges.len(), 2);
    assert_eq!(
        c.ranges[0].0[0],
        Range {
            subnet: "10.9.0.0/16".parse().unwrap(),
            range_start: ip("10.9.1.0"),
            range_end: ip("10.9.255.254"),
            gateway: Some(ip("10.9.0.254")),
        }
    );
    assert_eq!(c.ranges[1].0[0].range_end, ip("fd00::ff"));
    assert_eq!(c.ranges[0].to_string(), "10.9.1.0-10.9.255.254");
}

#[test]
fn rejects_bad_configs_naming_the_field() {
    let r = |ranges: serde_json::Value| json!({"type": "host-local", "ranges": ranges});
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (json!({"type": "dhcp", "subnet": "10.0.0.0/24"}), "ipam.type", "host-local"),
        (json!({"subnet": "10.0.0.0/24"}), "ipam.type", "missing"),
        (json!("host-local"), "ipam", "object"),
        (r(json!([[{"subnet": "10.1.2.3/24"}]])), "ipam.ranges[0][0].subnet", "host bits"),
        (r(json!([[{"subnet": "10.1.2.0/33"}]])), "ipam.ranges[0][0].subnet", "not a CIDR"),
        (r(json!([[{"subnet": "banana"}]])), "ipam.ranges[0][0].subnet", "not a CIDR"),
        (r(json!([[{"subnet": 10}]])), "ipam.ranges[0][0].subnet", "must be a string"),
        (r(json!([[{"rangeStart": "10.0.0.1"}]])), "ipam.ranges[0][0].subnet", "missing"),
        (r(json!([[{"subnet": "10.0.0.0/31"}]])), "ipam.ranges[0][0].subnet", "too small"),
        (
            r(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]])),
            "ipam.ranges[0][0].rangeStart",
            "not in subnet",
        ),
        (
            r(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "fd00::5"}]])),
            "ipam.ranges[0][0].rangeStart",
            "not in subnet",
        ),
        (
            r(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.x"}]])),
            "ipam.ranges[0][0].rangeStart",
            "not an IP",
        ),
        (
            r(json!([[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}]])),
            "ipam.ranges[0][0].rangeEnd",
            "not in subnet",
        ),
        (r(json!([[{"subnet": "10.0.0.0/24", "gateway": "10.0.1.1"}]])), "ipam.ranges[0][0].gateway", "not in subnet"),
        (
            r(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]])),
            "ipam.ranges[0][0].rangeEnd",
            "before rangeStart",
        ),
        (r(json!([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]])), "ipam.ranges[0][1]", "overlaps with"),
        (r(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/16"}]])), "ipam.ranges[1]", "overlaps with"),
        (
            r(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.1.0/24"}, {"subnet": "fd00::/64"}]])),
            "ipam.ranges[1][1].subnet",
            "mixes address families",
        ),
        (r(json!([[]])), "ipam.ranges[0]", "empty range set"),
        (r(json!([{"subnet": "10.0.0.0/24"}])), "ipam.ranges[0]", "list of ranges"),
        (r(json!({"subnet": "10.0.0.0/24"})), "ipam.ranges", "list of range sets"),
        (json!({"type": "host-local"}), "ipam.ranges", "no IP ranges"),
        (json!({"type": "host-local", "subnet": "10.0.0.7/24"}), "ipam.subnet", "host bits"),
        (
            json!({"type": "host-local", "subnet": "10.0.0.0/24", "gateway": "10.0.9.1"}),
            "ipam.gateway",
            "not in subnet",
        ),
        (
            json!({"type": "host-local", "subnet": "10.0.0.0/24", "ranges": [[{"subnet": "10.0.0.128/25"}]]}),
            "ipam.ranges[0]",
            "overlaps with",
        ),
        (
            json!({"type": "host-local", "subnet": "10.0.0.0/24", "routes": [{"dst": "10.300.0.0/16"}]}),
            "ipam.routes[0].dst",
            "not a CIDR",
        ),
        (
            json!({"type": "host-local", "subnet": "10.0.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}),
            "ipam.routes[0].gw",
            "not an IP",
        ),
    ];
    for (input, field, why) in cases {
        let e = err_of(input.clone());
        assert_eq!(e.code, codes::INVALID_CONFIG, "{input}: {e}");
        assert!(e.msg.contains(&format!("{field:?}")), "{input}: expected field {field} in {:?}", e.msg);
        assert!(e.msg.contains(why), "{input}: expected {why:?} in {:?}", e.msg);
    }
}

#[test]
fn keys_fold_case_like_the_reference() {
    // host-local decodes its config with Go's encoding/json: keys match case-insensitively.
    let c = IpamConfig::from_json(&json!({
        "Type": "host-local", "DataDir": "/tmp/x",
        "Ranges": [[{"Subnet": "10.9.0.0/24", "RangeStart": "10.9.0.10", "Gateway": "10.9.0.254"}]],
        "Routes": [{"Dst": "0.0.0.0/0", "GW": "10.9.0.254", "MTU": 1400}]
    }))
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    assert_eq!(c.ranges[0].0[0].range_start, ip("10.9.0.10"));
    assert_eq!(c.ranges[0].0[0].gateway, Some(ip("10.9.0.254")));
    assert_eq!((c.routes[0].gw, c.routes[0].mtu), (Some(ip("10.9.0.254")), Some(1400)));
    // Errors name the field as podnet spells it.
    let e = err_of(json!({"type": "host-local", "Subnet": "10.0.0.7/24"}));
    assert!(e.msg.contains("\"ipam.subnet\""), "{e}");
}

#[test]
fn disjoint_ranges_in_one_subnet_are_fine() {
    let c = IpamConfig::from_json(&json!({"type": "host-local", "ranges": [[
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
        {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.20", "rangeEnd": "10.0.0.29"}
    ]]}))
    .unwrap();
    assert_eq!(c.ranges[0].to_string(), "10.0.0.10-10.0.0.19,10.0.0.20-10.0.0.29");
}

// ---------- allocation ----------

#[test]
fn allocates_in_order_skipping_gateway_until_exhausted() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    let mut got = Vec::new();
    for i in 0..5 {
        let r = h.allocate(&format!("c{i}"), "eth0", &[]).unwrap();
        assert_eq!(r[0].gateway, Some(ip("10.1.2.1")));
        got.extend(addrs(&r));
    }
    assert_eq!(got, ["10.1.2.2/29", "10.1.2.3/29", "10.1.2.4/29", "10.1.2.5/29", "10.1.2.6/29"]);
    let e = h.allocate("c5", "eth0", &[]).unwrap_err();
    assert!(e.msg.contains("no IP addresses available in range set: 10.1.2.1-10.1.2.6"), "{e}");
    assert!(e.msg.contains("failed to allocate for range 0"), "{e}");
    assert_eq!(h.list().unwrap().len(), 5);
}

#[test]
fn files_are_in_reference_format() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    h.allocate(" c0 ", "eth0", &[]).unwrap();
    let d = net_dir(&tmp);
    assert_eq!(read(&d.join("10.1.2.2")), "c0\r\neth0");
    assert_eq!(read(&d.join("last_reserved_ip.0")), "10.1.2.2");
    assert!(d.join("lock").exists());
    // Nothing podnet adds may look like a reservation to the reference's recursive walks.
    for e in fs::read_dir(d.join(".podnet-index")).unwrap() {
        let e = e.unwrap();
        assert!(e.file_name().to_str().unwrap().parse::<IpAddr>().is_err());
        let text = read(&e.path());
        assert_ne!(text.trim(), "c0\r\neth0");
        assert_ne!(text.trim(), "c0");
    }
}

#[test]
fn round_robin_continues_after_last_reserved_and_wraps() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    assert_eq!(addrs(&h.allocate("a", "eth0", &[]).unwrap()), ["10.1.2.2/29"]);
    assert_eq!(addrs(&h.allocate("b", "eth0", &[]).unwrap()), ["10.1.2.3/29"]);
    h.release("a", "eth0").unwrap();
    // .2 is free again, but round robin goes on from .3.
    assert_eq!(addrs(&h.allocate("c", "eth0", &[]).unwrap()), ["10.1.2.4/29"]);
    fs::write(net_dir(&tmp).join("last_reserved_ip.0"), "10.1.2.6").unwrap();
    // Wraps to the range start, skips the gateway .1, finds .2.
    assert_eq!(addrs(&h.allocate("d", "eth0", &[]).unwrap()), ["10.1.2.2/29"]);
    // Then .3 and .4 are taken: the next free one is .5.
    assert_eq!(addrs(&h.allocate("e", "eth0", &[]).unwrap()), ["10.1.2.5/29"]);
    // A cursor outside the set is ignored (the reference restarts at the range start).
    fs::write(net_dir(&tmp).join("last_reserved_ip.0"), "192.168.0.9").unwrap();
    assert_eq!(addrs(&h.allocate("f", "eth0", &[]).unwrap()), ["10.1.2.6/29"]);
}

#[test]
fn iterator_matches_reference_walk() {
    let set = RangeSet(vec![
        Range {
            subnet: "10.0.0.0/29".parse().unwrap(),
            range_start: ip("10.0.0.0"),
            range_end: ip("10.0.0.3"),
            gateway: Some(ip("10.0.0.1")),
        },
        Range {
            subnet: "10.0.1.0/29".parse().unwrap(),
            range_start: ip("10.0.1.2"),
            range_end: ip("10.0.1.7"),
            gateway: Some(ip("10.0.1.1")),
        },
    ]);
    let walk =
        |last: Option<&str>| -> Vec<String> { set.iter_from(last.map(ip)).map(|(a, _)| a.to_string()).collect() };
    // Network (.0), gateway (.1) and broadcast (.7) are never offered.
    assert_eq!(walk(None), ["10.0.0.2", "10.0.0.3", "10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6"]);
    assert_eq!(
        walk(Some("10.0.0.3")),
        ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6", "10.0.0.2", "10.0.0.3"]
    );
    assert_eq!(walk(Some("10.0.1.4"))[0], "10.0.1.5");
    assert_eq!(walk(Some("10.0.1.4")).last().map(String::as_str), Some("10.0.1.4"));
}

#[test]
fn requested_ips() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    assert_eq!(addrs(&h.allocate("a", "eth0", &ips(&["10.1.2.5"])).unwrap()), ["10.1.2.5/29"]);
    assert_eq!(read(&net_dir(&tmp).join("last_reserved_ip.0")), "10.1.2.5");
    let e = h.allocate("b", "eth0", &ips(&["10.1.2.5"])).unwrap_err();
    assert!(e.msg.contains("requested IP address 10.1.2.5 is not available"), "{e}");
    let e = h.allocate("b", "eth0", &ips(&["10.9.9.9"])).unwrap_err();
    assert!(e.msg.contains("failed to allocate all requested IPs: 10.9.9.9"), "{e}");
    let e = h.allocate("b", "eth0", &ips(&["10.1.2.1"])).unwrap_err();
    assert!(e.msg.contains("10.1.2.1 is subnet's gateway"), "{e}");
    // Two requested IPs for one range set: the second cannot be satisfied.
    let e = h.allocate("b", "eth0", &ips(&["10.1.2.2", "10.1.2.3"])).unwrap_err();
    assert!(e.msg.contains("10.1.2.3"), "{e}");
    // Failed calls leave nothing behind.
    assert_eq!(h.list().unwrap(), vec![(ip("10.1.2.5"), "a".into(), "eth0".into())]);
    // IPv4-mapped IPv6 is the same address.
    assert_eq!(addrs(&h.allocate("c", "eth0", &ips(&["::ffff:10.1.2.6"])).unwrap()), ["10.1.2.6/29"]);
}

#[test]
fn duplicate_allocation_is_refused() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    h.allocate("a", "eth0", &[]).unwrap();
    let e = h.allocate("a", "eth0", &[]).unwrap_err();
    assert!(e.msg.contains("10.1.2.2 has been allocated to a, duplicate allocation is not allowed"), "{e}");
    // Another interface of the same container is another attachment.
    assert_eq!(addrs(&h.allocate("a", "eth1", &[]).unwrap()), ["10.1.2.3/29"]);
}

#[test]
fn release_is_idempotent_and_exact() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    h.release("nobody", "eth0").unwrap();
    h.allocate("a", "eth0", &[]).unwrap();
    h.allocate("a", "eth1", &[]).unwrap();
    assert_eq!(h.get("a", "eth0").unwrap(), ips(&["10.1.2.2"]));
    h.release("a", "eth0").unwrap();
    h.release("a", "eth0").unwrap();
    assert!(h.get("a", "eth0").unwrap().is_empty());
    assert!(!net_dir(&tmp).join("10.1.2.2").exists());
    assert_eq!(h.get("a", "eth1").unwrap(), ips(&["10.1.2.3"]));
}

#[test]
fn legacy_id_only_files() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    let d = net_dir(&tmp);
    fs::write(d.join("10.1.2.4"), "old\n").unwrap();
    // Held by the id whatever the ifname, as the reference's GetByID.
    assert_eq!(h.get("old", "eth0").unwrap(), ips(&["10.1.2.4"]));
    let e = h.allocate("old", "eth0", &[]).unwrap_err();
    assert!(e.msg.contains("duplicate allocation"), "{e}");
    assert_eq!(h.list().unwrap(), vec![(ip("10.1.2.4"), "old".into(), String::new())]);
    // ReleaseByID: id+ifname files first; the bare-id files only when there were none.
    fs::write(d.join("10.1.2.5"), "old\r\neth0").unwrap();
    h.release("old", "eth0").unwrap();
    assert!(!d.join("10.1.2.5").exists());
    assert!(d.join("10.1.2.4").exists());
    h.release("old", "eth0").unwrap();
    assert!(!d.join("10.1.2.4").exists());
}

#[test]
fn dual_stack_and_rollback() {
    let tmp = TmpDir::new();
    let c = conf(&tmp, json!([[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00:1::/64", "rangeEnd": "fd00:1::3"}]]));
    let h = HostLocal::open(&c, "net").unwrap();
    let r = h.allocate("a", "eth0", &[]).unwrap();
    assert_eq!(addrs(&r), ["10.1.2.2/24", "fd00:1::2/64"]);
    assert_eq!(r[1].gateway, Some(ip("fd00:1::1")));
    let d = net_dir(&tmp);
    assert_eq!(read(&d.join("fd00:1::2")), "a\r\neth0");
    assert_eq!(read(&d.join("last_reserved_ip.1")), "fd00:1::2");
    // Requested v6 only: v4 stays dynamic.
    let r = h.allocate("b", "eth0", &ips(&["fd00:1::3"])).unwrap();
    assert_eq!(addrs(&r), ["10.1.2.3/24", "fd00:1::3/64"]);
    // v6 exhausted: the v4 address taken by this call is given back.
    let e = h.allocate("c", "eth0", &[]).unwrap_err();
    assert!(
        e.msg.contains("failed to allocate for range 1: no IP addresses available in range set: fd00:1::1-fd00:1::3"),
        "{e}"
    );
    assert!(!d.join("10.1.2.4").exists());
    assert!(h.get("c", "eth0").unwrap().is_empty());
    assert_eq!(h.get("a", "eth0").unwrap(), ips(&["10.1.2.2", "fd00:1::2"]));
    h.release("a", "eth0").unwrap();
    assert_eq!(h.list().unwrap().len(), 2);
}

#[test]
fn gc_keeps_valid_and_removes_the_rest() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    h.allocate("a", "eth0", &[]).unwrap(); // .2
    h.allocate("b", "eth0", &[]).unwrap(); // .3
    h.allocate("a", "eth1", &[]).unwrap(); // .4
    fs::write(net_dir(&tmp).join("10.1.2.5"), "d").unwrap();
    fs::write(net_dir(&tmp).join("10.1.2.6"), "e").unwrap();
    let valid = vec![("a".to_string(), "eth0".to_string()), ("d".to_string(), "eth9".to_string())];
    assert_eq!(h.gc(&valid).unwrap(), ips(&["10.1.2.3", "10.1.2.4", "10.1.2.6"]));
    assert_eq!(
        h.list().unwrap(),
        vec![(ip("10.1.2.2"), "a".into(), "eth0".into()), (ip("10.1.2.5"), "d".into(), String::new())]
    );
    assert!(h.get("b", "eth0").unwrap().is_empty());
    assert!(h.gc(&valid).unwrap().is_empty());
}

#[test]
fn concurrent_allocations_are_unique() {
    let tmp = TmpDir::new();
    let c = conf(&tmp, json!([[{"subnet": "10.7.0.0/24"}], [{"subnet": "fd00:7::/120"}]]));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                // One HostLocal per thread, like separate plugin processes.
                let h = HostLocal::open(&c, "net").unwrap();
                let mut mine = Vec::new();
                for i in 0..15 {
                    let id = format!("t{t}-{i}");
                    let r = h.allocate(&id, "eth0", &[]).unwrap();
                    mine.extend(r.iter().map(|c| c.address.addr()));
                    if i % 3 == 0 {
                        h.release(&id, "eth0").unwrap();
                    }
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let h = HostLocal::open(&c, "net").unwrap();
    let listed = h.list().unwrap();
    assert_eq!(listed.len(), 8 * 10 * 2);
    let mut seen: Vec<IpAddr> = listed.iter().map(|(ip, _, _)| *ip).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), listed.len());
    for (ip, id, ifname) in &listed {
        assert!(h.get(id, ifname).unwrap().contains(ip));
    }
    assert_eq!(all.len(), 8 * 15 * 2);
}

#[test]
fn reads_a_data_dir_written_by_the_reference() {
    let tmp = TmpDir::new();
    let d = net_dir(&tmp);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("lock"), "").unwrap();
    fs::write(d.join("10.1.2.2"), "c1\r\neth0").unwrap();
    fs::write(d.join("10.1.2.3"), "c2\r\neth0").unwrap();
    fs::write(d.join("last_reserved_ip.0"), "10.1.2.3").unwrap();
    let h = v4_29(&tmp);
    assert_eq!(h.get("c1", "eth0").unwrap(), ips(&["10.1.2.2"]));
    assert_eq!(addrs(&h.allocate("c3", "eth0", &[]).unwrap()), ["10.1.2.4/29"]);
    // The reference reserves and releases behind podnet's back, within the same instant.
    fs::write(d.join("10.1.2.5"), "c4\r\neth0").unwrap();
    fs::remove_file(d.join("10.1.2.2")).unwrap();
    assert_eq!(h.get("c4", "eth0").unwrap(), ips(&["10.1.2.5"]));
    assert!(h.get("c1", "eth0").unwrap().is_empty());
    let e = h.allocate("c4", "eth0", &[]).unwrap_err();
    assert!(e.msg.contains("duplicate"), "{e}");
    h.release("c2", "eth0").unwrap();
    assert!(!d.join("10.1.2.3").exists());
    // And the reference reads what podnet wrote.
    assert_eq!(read(&d.join("10.1.2.4")), "c3\r\neth0");
}

#[test]
fn steady_state_never_scans() {
    let tmp = TmpDir::new();
    let c = conf(&tmp, json!([[{"subnet": "10.8.0.0/22"}]]));
    let h = HostLocal::open(&c, "net").unwrap();
    h.get("x", "eth0").unwrap();
    let base = h.scans();
    for i in 0..300 {
        h.allocate(&format!("c{i}"), "eth0", &[]).unwrap();
    }
    for i in (0..300).step_by(2) {
        assert_eq!(h.get(&format!("c{i}"), "eth0").unwrap().len(), 1);
        h.release(&format!("c{i}"), "eth0").unwrap();
    }
    assert!(h.allocate("c1", "eth0", &[]).is_err());
    assert_eq!(h.scans(), base, "allocate/get/release must not scan the directory");
    // A second process's changes are picked up without a scan either.
    let other = HostLocal::open(&c, "net").unwrap();
    other.allocate("o", "eth0", &[]).unwrap();
    assert_eq!(h.get("o", "eth0").unwrap().len(), 1);
    assert_eq!(h.scans() + other.scans(), base);
}

#[test]
fn index_survives_damage() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    h.allocate("a", "eth0", &[]).unwrap();
    h.allocate("b", "eth0", &[]).unwrap();
    let idx = net_dir(&tmp).join(".podnet-index");
    // A crash between steps leaves no state file: the next call rescans.
    fs::remove_file(idx.join("state")).unwrap();
    assert_eq!(h.get("a", "eth0").unwrap(), ips(&["10.1.2.2"]));
    // Garbage buckets are detected and rebuilt.
    for e in fs::read_dir(&idx).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "state" {
            fs::write(&p, "junk").unwrap();
        }
    }
    assert_eq!(h.get("b", "eth0").unwrap(), ips(&["10.1.2.3"]));
    // The whole index gone.
    fs::remove_dir_all(&idx).unwrap();
    h.release("a", "eth0").unwrap();
    assert!(h.get("a", "eth0").unwrap().is_empty());
    assert_eq!(h.get("b", "eth0").unwrap(), ips(&["10.1.2.3"]));
}

#[test]
fn index_buckets_round_trip_odd_names() {
    let tmp = TmpDir::new();
    let h = v4_29(&tmp);
    h.allocate("id with spaces%and\tstuff", "eth 0", &[]).unwrap();
    h.allocate("ünïcode", "eth0", &[]).unwrap();
    assert_eq!(h.get("id with spaces%and\tstuff", "eth 0").unwrap(), ips(&["10.1.2.2"]));
    assert_eq!(h.get("ünïcode", "eth0").unwrap(), ips(&["10.1.2.3"]));
}

#[test]
fn open_rejects_path_like_network_names() {
    let tmp = TmpDir::new();
    let c = conf(&tmp, json!([[{"subnet": "10.1.2.0/29"}]]));
    for bad in ["", ".", "..", "a/b"] {
        let e = HostLocal::open(&c, bad).err().unwrap();
        assert_eq!(e.code, codes::INVALID_CONFIG);
    }
}

// ---------- resolv.conf ----------

#[test]
fn parses_resolv_conf() {
    let tmp = TmpDir::new();
    let p = tmp.0.join("resolv.conf");
    fs::write(
        &p,
        "# comment\n; another\nnameserver 10.0.0.10\nnameserver fd00::10 ignored\n\ndomain example.com\n\
         search a.example b.example\nsearch c.example\noptions ndots:5 edns0\nsortlist 10.0.0.0\nnameserver\n",
    )
    .unwrap();
    let dns = parse_resolv_conf(&p).unwrap();
    assert_eq!(
        dns,
        Dns {
            nameservers: vec!["10.0.0.10".into(), "fd00::10".into()],
            domain: Some("example.com".into()),
            search: vec!["a.example".into(), "b.example".into(), "c.example".into()],
            options: vec!["ndots:5".into(), "edns0".into()],
        }
    );
    assert_eq!(
        dns.to_json(),
        json!({"nameservers": ["10.0.0.10", "fd00::10"], "domain": "example.com",
               "search": ["a.example", "b.example", "c.example"], "options": ["ndots:5", "edns0"]})
    );
    assert_eq!(Dns::default().to_json(), json!({}));
    let e = parse_resolv_conf(&tmp.0.join("missing")).unwrap_err();
    assert_eq!(e.code, codes::IO_FAILURE);
}

#[test]
fn route_fields_of_cni_1_1_are_kept() {
    let c = IpamConfig::from_json(&json!({"type": "host-local", "subnet": "10.1.0.0/24", "routes": [
        {"dst": "10.9.0.0/16", "gw": "10.1.0.254", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0}
    ]}))
    .unwrap();
    let r = &c.routes[0];
    assert_eq!((r.mtu, r.advmss, r.priority, r.table, r.scope), (Some(1400), Some(1360), Some(10), Some(100), Some(0)));
    let e = IpamConfig::from_json(&json!({"type": "host-local", "subnet": "10.1.0.0/24", "routes": [
        {"dst": "10.9.0.0/16", "scope": 300}
    ]}))
    .unwrap_err();
    assert_eq!(e.code, codes::INVALID_CONFIG);
    assert!(e.msg.contains("ipam.routes[0].scope"), "{e}");
}
