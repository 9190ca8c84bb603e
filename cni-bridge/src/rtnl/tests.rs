//! Root tests: every object kind in throwaway network namespaces.

use super::*;
use podnet_netns::NetNs;
use std::os::fd::{AsFd, AsRawFd};

#[test]
#[ignore = "needs root"]
fn bridge_veth_addr_route_in_namespaces() {
    let dir = std::env::temp_dir().join(format!("podnet-rtnl-{}", std::process::id()));
    let node = NetNs::create("node", Some(&dir)).unwrap();
    let pod = NetNs::create("pod", Some(&dir)).unwrap();
    let res = node.run(|| {
        let mut nl = Rtnl::new().unwrap();
        nl.create_bridge("br-t", [2, 0, 0, 0, 0, 1], Some(1400), false, false).unwrap();
        let br = nl.link_by_name("br-t").unwrap().unwrap();
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(br.mtu, 1400);
        assert!(br.is_up());
        nl.create_veth(&VethSpec {
            host_name: "vh0",
            host_mac: [2, 0, 0, 0, 0, 2],
            peer_name: "eth0",
            peer_mac: [2, 0, 0, 0, 0, 3],
            peer_netns: pod.as_fd().as_raw_fd(),
            mtu: Some(1400),
            master: Some(br.index),
            alias: None,
        })
        .unwrap();
        let vh = nl.link_by_name("vh0").unwrap().unwrap();
        assert_eq!(vh.master, Some(br.index));
        nl.set_bridge_port(vh.index, true, false).unwrap();
        nl.add_addr(br.index, "10.9.0.1/24".parse().unwrap(), true).unwrap();
        nl.add_addr(br.index, "fd00:9::1/64".parse().unwrap(), true).unwrap();
        let addrs = nl.addrs(br.index, None).unwrap();
        assert!(addrs.iter().any(|a| a.addr.to_string() == "10.9.0.1/24"), "{addrs:?}");
        assert!(addrs.iter().any(|a| a.addr.to_string() == "fd00:9::1/64"), "{addrs:?}");
        assert!(nl.add_addr(br.index, "10.9.0.1/24".parse().unwrap(), true).unwrap_err().is(libc::EEXIST));
        assert!(nl.delete_link_by_name("vh0").unwrap());
        assert!(!nl.delete_link_by_name("vh0").unwrap());
    });
    let _ = pod.run(|| {
        let nl = Rtnl::new();
        nl.map(|mut nl| nl.link_by_name("eth0").unwrap())
    });
    drop((node, pod));
    podnet_netns::delete(dir.join("node")).unwrap();
    podnet_netns::delete(dir.join("pod")).unwrap();
    // NetNs::create made the directory a (shared) mount point of itself: undo that too.
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0, "unmount {}", dir.display());
    std::fs::remove_dir(&dir).unwrap();
    res.unwrap();
}

/// Runs `f` with fresh namespaces named `names` (in a directory of the test's own), removing
/// them and the directory afterwards, even when `f` panics.
fn in_netns(test: &str, names: &[&str], f: impl FnOnce(&[NetNs])) {
    let dir = std::env::temp_dir().join(format!("podnet-rtnl-{test}-{}", std::process::id()));
    let all: Vec<NetNs> = names.iter().map(|n| NetNs::create(n, Some(&dir)).unwrap()).collect();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&all)));
    drop(all);
    for n in names {
        podnet_netns::delete(dir.join(n)).unwrap();
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: undoes the shared bind mount NetNs::create made on the test's own directory.
    assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0, "unmount {}", dir.display());
    std::fs::remove_dir(&dir).unwrap();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// `ip -d -j <args>` (or `bridge -j`) run inside the namespace, as JSON: the kernel's view,
/// read by iproute2 rather than by the crate that wrote it.
fn iproute_json(ns: &NetNs, tool: &str, args: &[&str]) -> serde_json::Value {
    let out = ns.run(|| std::process::Command::new(tool).args(args).output()).unwrap().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dummy_underlay(nl: &mut Rtnl, name: &str, addr: &str) -> u32 {
    // A bridge stands in for the node's uplink: any link with an address will do.
    nl.create_bridge(name, [2, 0, 0, 0, 9, 9], None, false, false).unwrap();
    let l = nl.link_by_name(name).unwrap().unwrap();
    nl.add_addr(l.index, addr.parse().unwrap(), true).unwrap();
    l.index
}

#[test]
#[ignore = "needs root"]
fn bridge_port_flags_vlans_and_arp_notify() {
    in_netns("ports", &["node", "pod"], |ns| {
        let (node, pod) = (&ns[0], &ns[1]);
        // Kernels without CONFIG_BRIDGE_VLAN_FILTERING (or 8021q) refuse those parts: then the
        // refusal is what is checked.
        let vlan_filtering = node
            .run(|| {
                let mut nl = Rtnl::new().unwrap();
                let filtering = match nl.create_bridge("br-p", [2, 0, 0, 0, 1, 1], None, true, true) {
                    Ok(()) => true,
                    Err(e) if e.is(libc::EOPNOTSUPP) => {
                        nl.create_bridge("br-p", [2, 0, 0, 0, 1, 1], None, false, true).unwrap();
                        false
                    }
                    Err(e) => panic!("create a vlan-filtering bridge: {e}"),
                };
                let br = nl.link_by_name("br-p").unwrap().unwrap();
                assert!(br.is_promisc());
                nl.create_veth(&VethSpec {
                    host_name: "vp0",
                    host_mac: [2, 0, 0, 0, 1, 2],
                    peer_name: "eth0",
                    peer_mac: [2, 0, 0, 0, 1, 3],
                    peer_netns: pod.as_fd().as_raw_fd(),
                    mtu: None,
                    master: Some(br.index),
                    alias: Some("podnet:tag"),
                })
                .unwrap();
                let vp = nl.link_by_name("vp0").unwrap().unwrap();
                assert_eq!(vp.kind.as_deref(), Some("veth"));
                assert!(vp.peer_index.is_some());
                nl.set_bridge_port(vp.index, true, true).unwrap();
                let pvid = BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED;
                if filtering {
                    nl.bridge_vlan(vp.index, 7, pvid, false, false).unwrap();
                    nl.bridge_vlan(vp.index, 1, 0, false, true).unwrap();
                    nl.bridge_vlan(br.index, 7, 0, true, false).unwrap();
                } else {
                    assert!(nl.bridge_vlan(vp.index, 7, pvid, false, false).is_err());
                }
                match nl.create_vlan("br-p.7", br.index, 7, Some(1400)) {
                    Ok(()) => {
                        let v = nl.link_by_name("br-p.7").unwrap().unwrap();
                        assert_eq!((v.kind.as_deref(), v.peer_index, v.mtu), (Some("vlan"), Some(br.index), 1400));
                    }
                    // No 8021q: the kernel says so in its extended ack.
                    Err(e) => {
                        assert_eq!((e.errno, e.ext.as_deref()), (libc::EOPNOTSUPP, Some("Unknown device type")), "{e}")
                    }
                }
                nl.set_arp_notify(vp.index).unwrap();
                let notify = std::fs::read_to_string("/proc/sys/net/ipv4/conf/vp0/arp_notify").unwrap();
                assert_eq!(notify.trim(), "1");
                nl.set_promisc(br.index, false).unwrap();
                assert!(!nl.link_by_index(br.index).unwrap().unwrap().is_promisc());
                filtering
            })
            .unwrap();
        let port = &iproute_json(node, "ip", &["-d", "-j", "link", "show", "vp0"])[0]["linkinfo"]["info_slave_data"];
        assert_eq!((port["hairpin"].as_bool(), port["isolated"].as_bool()), (Some(true), Some(true)), "{port}");
        if !vlan_filtering {
            return;
        }
        let vlans = iproute_json(node, "bridge", &["-j", "vlan", "show", "dev", "vp0"]);
        let vids: Vec<_> = vlans[0]["vlans"].as_array().unwrap().iter().map(|v| v["vlan"].as_u64()).collect();
        assert_eq!(vids, [Some(7)], "{vlans}");
        let flags = &vlans[0]["vlans"][0]["flags"];
        assert!(flags.as_array().is_some_and(|f| f.len() == 2), "PVID and Egress Untagged: {flags}");
    });
}

#[test]
#[ignore = "needs root"]
fn vxlan_link_neighbours_and_fdb() {
    in_netns("vxlan", &["node"], |ns| {
        let ns = &ns[0];
        ns.run(|| {
            let mut nl = Rtnl::new().unwrap();
            let uplink = dummy_underlay(&mut nl, "up0", "192.168.50.1/24");
            nl.create_vxlan(&VxlanSpec {
                name: "vx0",
                vni: 4242,
                local: Some("192.168.50.1".parse().unwrap()),
                port: 4789,
                underlay: Some(uplink),
                mtu: Some(1450),
                mac: Some([2, 0, 0, 0, 2, 1]),
            })
            .unwrap();
            let vx = nl.link_by_name("vx0").unwrap().unwrap();
            assert_eq!(vx.kind.as_deref(), Some("vxlan"));
            assert_eq!((vx.mtu, vx.mac.as_slice(), vx.is_up()), (1450, &[2u8, 0, 0, 0, 2, 1][..], true));
            let info = vx.vxlan.clone().unwrap();
            assert_eq!(
                info,
                VxlanInfo {
                    vni: Some(4242),
                    local: Some("192.168.50.1".parse().unwrap()),
                    port: Some(4789),
                    learning: Some(false),
                    underlay: Some(uplink),
                }
            );
            // The kernel's own check, with its extended-ack text: a VNI is 24 bits.
            let wide =
                VxlanSpec { name: "vx1", vni: 1 << 24, local: None, port: 4789, underlay: None, mtu: None, mac: None };
            let e = nl.create_vxlan(&wide).unwrap_err();
            assert!(e.is(libc::ERANGE), "{e}");
            assert!(e.ext.as_deref().is_some_and(|t| t.contains("VXLAN ID")), "{e:?}");
            let again =
                VxlanSpec { name: "vx0", vni: 1, local: None, port: 4789, underlay: None, mtu: None, mac: None };
            assert!(nl.create_vxlan(&again).unwrap_err().is(libc::EEXIST));

            // Neighbours: the remote VTEP's gateway address -> its MAC, permanent.
            let gw: std::net::IpAddr = "10.244.1.0".parse().unwrap();
            let mac_a = [2, 0, 0, 0, 3, 1];
            let mac_b = [2, 0, 0, 0, 3, 2];
            nl.add_neighbour(vx.index, gw, mac_a, false).unwrap();
            assert!(nl.add_neighbour(vx.index, gw, mac_a, false).unwrap_err().is(libc::EEXIST));
            nl.add_neighbour(vx.index, gw, mac_b, true).unwrap();
            nl.add_neighbour(vx.index, "fd00:244:1::".parse().unwrap(), mac_a, false).unwrap();
            let n = nl.neighbours(vx.index, Some(libc::AF_INET as u8)).unwrap();
            assert_eq!(n, [Neighbour { index: vx.index, ip: gw, mac: Some(mac_b.to_vec()), state: NUD_PERMANENT }]);
            assert_eq!(nl.neighbours(vx.index, None).unwrap().len(), 2);
            assert!(nl.neighbours(uplink, None).unwrap().iter().all(|n| n.index == uplink));
            assert!(nl.del_neighbour(vx.index, gw).unwrap());
            assert!(!nl.del_neighbour(vx.index, gw).unwrap());
            assert_eq!(nl.neighbours(vx.index, Some(libc::AF_INET as u8)).unwrap(), []);

            // FDB: the remote VTEP's MAC -> its underlay address.
            let remote: std::net::IpAddr = "192.168.50.2".parse().unwrap();
            let other: std::net::IpAddr = "192.168.50.3".parse().unwrap();
            nl.add_fdb(vx.index, mac_a, Some(remote), false).unwrap();
            assert!(nl.add_fdb(vx.index, mac_a, Some(remote), false).unwrap_err().is(libc::EEXIST));
            nl.add_fdb(vx.index, mac_a, Some(other), true).unwrap();
            nl.add_fdb(vx.index, mac_b, Some(remote), false).unwrap();
            let mut fdb = nl.fdb(vx.index).unwrap();
            fdb.sort_by_key(|e| e.mac);
            let want = |mac, dst| FdbEntry { index: vx.index, mac, dst: Some(dst), state: NUD_PERMANENT };
            assert_eq!(fdb, [want(mac_a, other), want(mac_b, remote)]);
            assert!(nl.del_fdb(vx.index, mac_b, Some(remote)).unwrap());
            assert!(!nl.del_fdb(vx.index, mac_b, Some(remote)).unwrap());
            assert_eq!(nl.fdb(vx.index).unwrap(), [want(mac_a, other)]);
        })
        .unwrap();
        // iproute2's reading of what the crate wrote: port byte order, learning, the FDB's dst.
        let vx = &iproute_json(ns, "ip", &["-d", "-j", "link", "show", "vx0"])[0]["linkinfo"]["info_data"];
        assert_eq!(vx["id"].as_u64(), Some(4242), "{vx}");
        assert_eq!(vx["port"].as_u64(), Some(4789), "{vx}");
        assert_eq!(vx["learning"].as_bool(), Some(false), "{vx}");
        assert_eq!(vx["local"].as_str(), Some("192.168.50.1"), "{vx}");
        let fdb = iproute_json(ns, "bridge", &["-j", "fdb", "show", "dev", "vx0"]);
        let e = fdb.as_array().unwrap().iter().find(|e| e["mac"] == "02:00:00:00:03:01").unwrap();
        assert_eq!((e["dst"].as_str(), e["state"].as_str()), (Some("192.168.50.3"), Some("permanent")), "{fdb}");
    });
}

#[test]
#[ignore = "needs root"]
fn routes_with_protocol_onlink_dump_and_delete() {
    in_netns("routes", &["node"], |ns| {
        ns[0]
            .run(|| {
                let mut nl = Rtnl::new().unwrap();
                let uplink = dummy_underlay(&mut nl, "up0", "192.168.60.1/24");
                nl.add_addr(uplink, "fd00:60::1/64".parse().unwrap(), true).unwrap();
                const PROTO: u8 = 0x70;
                let opts = RouteOpts { protocol: PROTO, onlink: true, replace: false };
                let spec = |dst: &str, gw: &str| RouteSpec {
                    dst: dst.parse().unwrap(),
                    gw: Some(gw.parse().unwrap()),
                    oif: uplink,
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                };
                // 10.99.0.1 is on no subnet of up0: only onlink makes it a usable gateway.
                assert!(nl.add_route(&spec("10.244.7.0/24", "10.99.0.1")).is_err());
                nl.add_route_with(&spec("10.244.7.0/24", "10.99.0.1"), &opts).unwrap();
                assert!(nl.add_route_with(&spec("10.244.7.0/24", "10.99.0.1"), &opts).unwrap_err().is(libc::EEXIST));
                nl.add_route_with(&spec("10.244.7.0/24", "10.99.0.2"), &RouteOpts { replace: true, ..opts }).unwrap();
                nl.add_route_with(&spec("fd00:244:7::/64", "fd00:99::1"), &opts).unwrap();
                // A route of another protocol, which the filtered dump leaves out.
                nl.add_route(&spec("10.244.8.0/24", "192.168.60.2")).unwrap();

                let v4 = nl.routes_by_protocol(libc::AF_INET as u8, PROTO).unwrap();
                let want = RouteInfo {
                    dst: "10.244.7.0/24".parse().unwrap(),
                    gw: Some("10.99.0.2".parse().unwrap()),
                    oif: uplink,
                    table: 254,
                    protocol: PROTO,
                    onlink: true,
                    priority: None,
                };
                assert_eq!(v4, std::slice::from_ref(&want));
                let v6 = nl.routes_by_protocol(libc::AF_INET6 as u8, PROTO).unwrap();
                assert_eq!(v6.len(), 1, "{v6:?}");
                assert_eq!((v6[0].dst.to_string(), v6[0].onlink), ("fd00:244:7::/64".to_string(), true));
                let main = nl.routes(libc::AF_INET as u8).unwrap();
                assert!(main.iter().any(|r| r.0.to_string() == "10.244.8.0/24"), "{main:?}");
                assert_eq!(nl.route_oif("10.244.7.9".parse().unwrap()).unwrap(), Some(uplink));

                assert!(nl.del_route(&want).unwrap());
                assert!(!nl.del_route(&want).unwrap());
                assert!(nl.del_route(&v6[0]).unwrap());
                assert_eq!(nl.routes_by_protocol(libc::AF_INET as u8, PROTO).unwrap(), []);
                assert_eq!(nl.routes_by_protocol(libc::AF_INET6 as u8, PROTO).unwrap(), []);
                assert!(nl.routes(libc::AF_INET as u8).unwrap().iter().any(|r| r.0.to_string() == "10.244.8.0/24"));
            })
            .unwrap();
    });
}
