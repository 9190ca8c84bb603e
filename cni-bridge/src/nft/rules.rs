//! podnet's rule set: the tables and chains it owns, the static jump rules, and the tagged
//! rules a [`FirewallPlan`] turns into (hostPort DNAT, hairpin and ipMasq masquerade, MAC
//! anti-spoofing), as nf_tables expressions.

use std::net::IpAddr;

use ipnet::IpNet;

use super::plan::FirewallPlan;
use super::wire::*;
use crate::error::{codes, CniError, Result};

/// The name of podnet's table in every family.
pub const TABLE: &str = "podnet";
pub const HOSTPORTS: &str = "hostports";
pub const PREROUTING: &str = "prerouting";
pub const OUTPUT: &str = "output";
pub const POSTROUTING: &str = "postrouting";

/// Longest attachment tag (it is stored as the rule comment).
pub const TAG_MAX: usize = 120;

const IFNAMSIZ: usize = 16;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_BR_PRE_ROUTING: u32 = 0;
const NF_IP_PRI_NAT_DST: i32 = -100;
const NF_IP_PRI_NAT_SRC: i32 = 100;
/// NF_BR_PRI_NAT_DST_BRIDGED ("dstnat" in the bridge family): before br_netfilter's hooks.
pub const BRIDGE_PREROUTING_PRIORITY: i32 = -300;

/// The families podnet keeps a table in, in the order `add` creates them.
pub const FAMILIES: [u8; 3] = [NFPROTO_IPV4, NFPROTO_IPV6, NFPROTO_BRIDGE];

pub fn family_name(family: u8) -> &'static str {
    match family {
        NFPROTO_IPV4 => "ip",
        NFPROTO_IPV6 => "ip6",
        NFPROTO_BRIDGE => "bridge",
        _ => "unknown",
    }
}

/// A chain of podnet's table: name and, for a base chain, its hook.
pub struct ChainSpec {
    pub name: &'static str,
    pub hook: Option<Hook>,
}

/// The chains of podnet's table in `family`, in creation order (jump targets first).
pub fn chains(family: u8) -> Vec<ChainSpec> {
    let nat = |num, priority| Some(Hook { ty: "nat", num, priority });
    match family {
        NFPROTO_BRIDGE => vec![ChainSpec {
            name: PREROUTING,
            hook: Some(Hook { ty: "filter", num: NF_BR_PRE_ROUTING, priority: BRIDGE_PREROUTING_PRIORITY }),
        }],
        _ => vec![
            ChainSpec { name: HOSTPORTS, hook: None },
            ChainSpec { name: PREROUTING, hook: nat(NF_INET_PRE_ROUTING, NF_IP_PRI_NAT_DST) },
            ChainSpec { name: OUTPUT, hook: nat(NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST) },
            ChainSpec { name: POSTROUTING, hook: nat(NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC) },
        ],
    }
}

/// One rule to install: where, what, and a description for error messages.
#[derive(Debug, Clone)]
pub struct Rule {
    pub family: u8,
    pub chain: &'static str,
    pub exprs: Vec<Expr>,
    pub what: String,
}

/// The untagged rule at the head of the ip/ip6 `prerouting` and `output` chains:
/// `fib daddr type local jump hostports`.
pub fn static_rule(family: u8, chain: &'static str) -> Rule {
    Rule {
        family,
        chain,
        exprs: vec![
            Expr::Fib { result: NFT_FIB_RESULT_ADDRTYPE, flags: NFTA_FIB_F_DADDR, dreg: NFT_REG_1 },
            Expr::Cmp { op: NFT_CMP_EQ, sreg: NFT_REG_1, data: RTN_LOCAL.to_ne_bytes().to_vec() },
            Expr::Verdict { code: NFT_JUMP, chain: Some(HOSTPORTS.into()) },
        ],
        what: "fib daddr type local jump hostports".into(),
    }
}

fn nfproto(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Loads the source or destination address of the network header into register 1.
fn load_addr(v4: bool, src: bool) -> Expr {
    let (offset, len) = match (v4, src) {
        (true, true) => (12, 4),
        (true, false) => (16, 4),
        (false, true) => (8, 16),
        (false, false) => (24, 16),
    };
    Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len, dreg: NFT_REG_1 }
}

/// `ip[6] saddr|daddr == ip`.
fn addr_eq(ip: &IpAddr, src: bool) -> [Expr; 2] {
    [load_addr(ip.is_ipv4(), src), Expr::Cmp { op: NFT_CMP_EQ, sreg: NFT_REG_1, data: ip_bytes(ip) }]
}

/// `ip[6] saddr|daddr (==|!=) net` as payload + bitwise mask + cmp, the way nft encodes a
/// prefix (a full-length prefix is a plain compare).
fn addr_in(net: &IpNet, src: bool, op: u32) -> Vec<Expr> {
    let net = net.trunc();
    let mut v = vec![load_addr(net.addr().is_ipv4(), src)];
    if net.prefix_len() != net.max_prefix_len() {
        let mask = ip_bytes(&net.netmask());
        let xor = vec![0u8; mask.len()];
        v.push(Expr::Bitwise { sreg: NFT_REG_1, dreg: NFT_REG_1, mask, xor });
    }
    v.push(Expr::Cmp { op, sreg: NFT_REG_1, data: ip_bytes(&net.addr()) });
    v
}

/// `ct status dnat`: the connection's destination was NATed.
fn ct_status_dnat() -> [Expr; 3] {
    [
        Expr::Ct { key: NFT_CT_STATUS, dreg: NFT_REG_1 },
        Expr::Bitwise { sreg: NFT_REG_1, dreg: NFT_REG_1, mask: IPS_DST_NAT.to_ne_bytes().to_vec(), xor: vec![0; 4] },
        Expr::Cmp { op: NFT_CMP_NEQ, sreg: NFT_REG_1, data: vec![0; 4] },
    ]
}

fn proto_name(p: u8) -> Option<&'static str> {
    match i32::from(p) {
        libc::IPPROTO_TCP => Some("tcp"),
        libc::IPPROTO_UDP => Some("udp"),
        libc::IPPROTO_SCTP => Some("sctp"),
        _ => None,
    }
}

fn bad_plan(tag: &str, why: impl std::fmt::Display) -> CniError {
    CniError::new(codes::INTERNAL, format!("invalid firewall plan for {tag:?}: {why}"))
}

pub fn check_tag(tag: &str) -> Result<()> {
    if tag.is_empty() || tag.len() > TAG_MAX || tag.contains('\0') {
        return Err(bad_plan(tag, format!("the tag must be 1 to {TAG_MAX} bytes without NUL")));
    }
    Ok(())
}

/// The tagged rules of a plan, in installation order. Port maps whose host IP is of another
/// family than their pod IP are skipped; anything else malformed is an error.
pub fn plan_rules(plan: &FirewallPlan) -> Result<Vec<Rule>> {
    check_tag(&plan.tag)?;
    rules_of(plan)
}

/// The rules of a plan without validating its tag (the count does not depend on it).
pub fn rules_of(plan: &FirewallPlan) -> Result<Vec<Rule>> {
    let tag = plan.tag.as_str();
    let mut out = Vec::new();

    // hostPort DNAT, and the pod IPs (with the sources) that need hairpin masquerade.
    let mut hairpin: Vec<(IpAddr, IpNet)> = Vec::new();
    for pm in &plan.port_maps {
        let Some(proto) = proto_name(pm.protocol) else {
            return Err(bad_plan(tag, format!("port map protocol {} is not tcp, udp or sctp", pm.protocol)));
        };
        if pm.host_port == 0 || pm.container_port == 0 {
            return Err(bad_plan(tag, format!("port map {}:{} has a zero port", pm.host_port, pm.container_port)));
        }
        if pm.host_ip.is_some_and(|h| h.is_ipv4() != pm.pod_ip.is_ipv4()) {
            continue;
        }
        let family = nfproto(&pm.pod_ip);
        let mut exprs = Vec::new();
        let mut what = String::new();
        if let Some(h) = pm.host_ip.filter(|h| !h.is_unspecified()) {
            exprs.extend(addr_eq(&h, false));
            what = format!("daddr {h} ");
        }
        exprs.extend([
            Expr::Meta { key: NFT_META_L4PROTO, dreg: NFT_REG_1 },
            Expr::Cmp { op: NFT_CMP_EQ, sreg: NFT_REG_1, data: vec![pm.protocol] },
            Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2, dreg: NFT_REG_1 },
            Expr::Cmp { op: NFT_CMP_EQ, sreg: NFT_REG_1, data: pm.host_port.to_be_bytes().to_vec() },
            Expr::Counter,
            Expr::Immediate { dreg: NFT_REG_1, data: ip_bytes(&pm.pod_ip) },
            Expr::Immediate { dreg: NFT_REG_2, data: pm.container_port.to_be_bytes().to_vec() },
            Expr::Nat {
                ty: NFT_NAT_DNAT,
                family: u32::from(family),
                reg_addr_min: Some(NFT_REG_1),
                reg_proto_min: Some(NFT_REG_2),
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            },
        ]);
        let to = std::net::SocketAddr::new(pm.pod_ip, pm.container_port);
        out.push(Rule {
            family,
            chain: HOSTPORTS,
            exprs,
            what: format!("{what}{proto} dport {} dnat to {to}", pm.host_port),
        });
        if !hairpin.iter().any(|(p, _)| *p == pm.pod_ip) {
            let from = pm.pod_net.filter(|n| n.contains(&pm.pod_ip)).unwrap_or_else(|| IpNet::from(pm.pod_ip));
            hairpin.push((pm.pod_ip, from));
        }
    }

    // Hairpin: a pod (or, with its subnet known, any pod of that subnet) reaching the pod's
    // hostPort, and (IPv4) the node's loopback reaching one.
    for (pod, from) in &hairpin {
        let family = nfproto(pod);
        // Masquerade DNAT'd traffic from `src` to the pod.
        let masq_from = |src: &IpNet, what: String| {
            let mut exprs = addr_in(src, true, NFT_CMP_EQ);
            exprs.extend(addr_eq(pod, false));
            exprs.extend(ct_status_dnat());
            exprs.extend([Expr::Counter, Expr::Masq]);
            Rule { family, chain: POSTROUTING, exprs, what }
        };
        out.push(masq_from(from, format!("hairpin masquerade of {pod}")));
        if pod.is_ipv4() {
            let lo: IpNet = IpNet::new(IpAddr::from([127, 0, 0, 0]), 8).map_err(|e| bad_plan(tag, e))?;
            out.push(masq_from(&lo, format!("localhost hostPort masquerade to {pod}")));
        }
    }

    // ipMasq: traffic leaving the pod subnet, except multicast.
    for (pod, subnet) in &plan.masq {
        if pod.is_ipv4() != subnet.addr().is_ipv4() {
            return Err(bad_plan(tag, format!("masquerade of {pod} with subnet {subnet} of another family")));
        }
        let family = nfproto(pod);
        let mcast: IpNet = if pod.is_ipv4() {
            IpNet::new(IpAddr::from([224, 0, 0, 0]), 4)
        } else {
            IpNet::new(IpAddr::from([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8)
        }
        .map_err(|e| bad_plan(tag, e))?;
        let mut exprs: Vec<Expr> = addr_eq(pod, true).into();
        exprs.extend(addr_in(subnet, false, NFT_CMP_NEQ));
        exprs.extend(addr_in(&mcast, false, NFT_CMP_NEQ));
        exprs.extend([Expr::Counter, Expr::Masq]);
        out.push(Rule { family, chain: POSTROUTING, exprs, what: format!("masquerade of {pod} leaving {subnet}") });
    }

    // MAC anti-spoofing on the host side of the pod's veth.
    if let Some((veth, mac)) = &plan.mac_spoof {
        if veth.is_empty() || veth.len() >= IFNAMSIZ || veth.contains('\0') {
            return Err(bad_plan(tag, format!("interface name {veth:?} is not 1 to {} bytes", IFNAMSIZ - 1)));
        }
        let mut name = veth.as_bytes().to_vec();
        name.resize(IFNAMSIZ, 0);
        let m = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        out.push(Rule {
            family: NFPROTO_BRIDGE,
            chain: PREROUTING,
            exprs: vec![
                Expr::Meta { key: NFT_META_IIFNAME, dreg: NFT_REG_1 },
                Expr::Cmp { op: NFT_CMP_EQ, sreg: NFT_REG_1, data: name },
                Expr::Payload { base: NFT_PAYLOAD_LL_HEADER, offset: 6, len: 6, dreg: NFT_REG_1 },
                Expr::Cmp { op: NFT_CMP_NEQ, sreg: NFT_REG_1, data: mac.to_vec() },
                Expr::Counter,
                Expr::Verdict { code: NF_DROP, chain: None },
            ],
            what: format!("iifname {veth} ether saddr != {m} drop"),
        });
    }
    Ok(out)
}
