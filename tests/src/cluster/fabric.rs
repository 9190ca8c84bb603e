//! The wires of a simulated cluster: L2 segments (bridges in a switch namespace), a router
//! namespace between them, the nodes' and the datastore's uplinks.

use std::net::Ipv4Addr;
use std::sync::Mutex;

use super::etcd::Etcd;
use crate::Ns;

/// The host number of the datastore on segment 0 (`.100` of a /24).
pub const DATASTORE_HOST: u32 = 100;

/// The uplink's name inside a node (and the datastore).
const UPLINK: &str = "eth0";

/// One L2 segment: an IPv4 subnet on a bridge `br<index>` of the switch namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Segment {
    /// Parses `a.b.c.d/len` (the network address; /8 to /25, so that `.100` and a router fit).
    pub fn parse(cidr: &str) -> Segment {
        fn bad(cidr: &str) -> ! {
            panic!("not an IPv4 subnet a.b.c.d/len with len 8..=25: {cidr:?}")
        }
        let (addr, len) = cidr.split_once('/').unwrap_or_else(|| bad(cidr));
        let network: Ipv4Addr = addr.parse().unwrap_or_else(|_| bad(cidr));
        let prefix_len: u8 = len.parse().unwrap_or_else(|_| bad(cidr));
        if !(8..=25).contains(&prefix_len) {
            bad(cidr);
        }
        let seg = Segment { network, prefix_len };
        assert_eq!(u32::from(network) & seg.mask(), u32::from(network), "{cidr}: host bits are set");
        seg
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix_len)
    }

    /// The address of host number `n` (1 is the first).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        assert!(n >= 1 && n < self.size() - 1, "host {n} is outside {self}");
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix_len)
    }

    /// The router's address on this segment: the last usable one (`.254` of a /24).
    pub fn router(&self) -> Ipv4Addr {
        self.host(self.size() - 2)
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// How to make a node: its name, segment and uplink MTU.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub segment: usize,
    pub mtu: u32,
}

impl NodeSpec {
    /// A node on segment 0 with an MTU of 1500. `name`: lowercase letters, digits and `-`.
    pub fn new(name: &str) -> NodeSpec {
        NodeSpec { name: name.to_string(), segment: 0, mtu: 1500 }
    }

    pub fn segment(mut self, segment: usize) -> NodeSpec {
        self.segment = segment;
        self
    }

    /// The MTU of the uplink veth, both ends.
    pub fn mtu(mut self, mtu: u32) -> NodeSpec {
        self.mtu = mtu;
        self
    }
}

/// Simulated nodes' network: see the module documentation of [`crate::cluster`].
pub struct Fabric {
    segments: Vec<Segment>,
    routed: bool,
    /// The bridges `br<i>`, one per segment, and the fabric side of every uplink.
    switch: Ns,
    router: Option<Ns>,
    datastore: Ns,
    /// The next host number of each segment, and the number of the next switch port.
    next: Mutex<(Vec<u32>, u32)>,
}

impl Fabric {
    /// One L2 segment, `cidr` (e.g. `10.99.0.0/24`): nodes reach each other directly, and have
    /// no default route.
    pub fn l2(cidr: &str) -> Fabric {
        Fabric::build(&[cidr], false)
    }

    /// Segments joined by a router namespace at the last address of each (`.254`); every node
    /// has a default route via its segment's router.
    pub fn routed(cidrs: &[&str]) -> Fabric {
        assert!(!cidrs.is_empty(), "a routed fabric needs at least one segment");
        Fabric::build(cidrs, true)
    }

    fn build(cidrs: &[&str], routed: bool) -> Fabric {
        crate::require_root();
        let segments: Vec<Segment> = cidrs.iter().map(|c| Segment::parse(c)).collect();
        let switch = Ns::new("pcs");
        // Frames cross the bridges untouched, whatever br_netfilter would do.
        switch.set_bridge_nf_call(false);
        for i in 0..segments.len() {
            switch.sh(&format!("ip link add br{i} type bridge && ip link set br{i} up"));
        }
        let router = routed.then(|| {
            let r = Ns::new("pcr");
            r.sh("sysctl -qw net.ipv4.ip_forward=1");
            for (i, seg) in segments.iter().enumerate() {
                switch.sh(&format!("ip link add r{i} type veth peer name eth{i} netns {}", r.name()));
                switch.sh(&format!("ip link set r{i} master br{i} up"));
                r.sh(&format!("ip addr add {}/{} dev eth{i} && ip link set eth{i} up", seg.router(), seg.prefix_len));
            }
            r
        });
        let datastore = Ns::new("pcd");
        let f = Fabric { next: Mutex::new((vec![1; segments.len()], 0)), segments, routed, switch, router, datastore };
        let ip = f.datastore_ip();
        f.uplink(&f.datastore, "ds", 0, ip, 1500);
        f
    }

    /// A new node on segment 0.
    pub fn node(&self, name: &str) -> Node {
        self.add(NodeSpec::new(name))
    }

    /// A new node on `segment`.
    pub fn node_on(&self, segment: usize, name: &str) -> Node {
        self.add(NodeSpec::new(name).segment(segment))
    }

    /// A new node as `spec` says: its namespace, uplink and address (the segment's next free).
    pub fn add(&self, spec: NodeSpec) -> Node {
        let NodeSpec { name, segment, mtu } = spec;
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "node name {name:?}: use lowercase letters, digits and -"
        );
        let seg = *self.segments.get(segment).unwrap_or_else(|| panic!("no segment {segment} in {:?}", self.segments));
        let (host, port) = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let mut host = next.0[segment];
            let router_host = u32::from(seg.router()) - u32::from(seg.network);
            while (segment == 0 && host == DATASTORE_HOST) || host == router_host {
                host += 1;
            }
            assert!(host < router_host, "segment {seg} is full");
            next.0[segment] = host + 1;
            next.1 += 1;
            (host, next.1)
        };
        let ns = Ns::new(&format!("pc-{name}-"));
        let ip = seg.host(host);
        self.uplink(&ns, &format!("s{segment}p{port}"), segment, ip, mtu);
        ns.sh("sysctl -qw net.ipv4.ip_forward=1");
        Node {
            ns,
            name,
            ip,
            prefix_len: seg.prefix_len,
            segment,
            mtu,
            gateway: self.routed.then(|| seg.router()),
            port: format!("s{segment}p{port}"),
        }
    }

    /// A veth from bridge `br<segment>` (the switch side named `port`) to `eth0` in `ns`, with
    /// `ip` and, in a routed fabric, the default route via the segment's router.
    fn uplink(&self, ns: &Ns, port: &str, segment: usize, ip: Ipv4Addr, mtu: u32) {
        let seg = self.segments[segment];
        self.switch
            .sh(&format!("ip link add {port} mtu {mtu} type veth peer name {UPLINK} mtu {mtu} netns {}", ns.name()));
        self.switch.sh(&format!("ip link set {port} master br{segment} up"));
        ns.sh(&format!("ip addr add {ip}/{} dev {UPLINK} && ip link set {UPLINK} up", seg.prefix_len));
        if self.routed {
            ns.sh(&format!("ip route add default via {}", seg.router()));
        }
    }

    /// The namespace to run the datastore in: on segment 0 at [`Fabric::datastore_ip`].
    pub fn datastore(&self) -> &Ns {
        &self.datastore
    }

    /// Host [`DATASTORE_HOST`] (`.100`) of segment 0.
    pub fn datastore_ip(&self) -> Ipv4Addr {
        self.segments[0].host(DATASTORE_HOST)
    }

    /// Starts [`Etcd`] in the datastore namespace at the datastore's address.
    pub fn start_etcd(&self) -> Etcd {
        Etcd::new(&self.datastore, self.datastore_ip())
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The router namespace (a routed fabric only).
    pub fn router(&self) -> Option<&Ns> {
        self.router.as_ref()
    }

    /// The router's address on `segment` (a routed fabric only).
    pub fn router_ip(&self, segment: usize) -> Option<Ipv4Addr> {
        self.routed.then(|| self.segments[segment].router())
    }

    /// The switch namespace: bridges `br<segment>`, the nodes' ports `s<segment>p<n>`
    /// ([`Node::port`]), the datastore's `ds`, the router's `r<segment>`.
    pub fn switch(&self) -> &Ns {
        &self.switch
    }

    /// The names of the namespaces the fabric itself made (not the nodes').
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.switch.name(), self.datastore.name()];
        v.extend(self.router.iter().map(Ns::name));
        v
    }
}

/// A simulated node: its own network namespace, with an uplink into the fabric. Dropping it
/// deletes the namespace (and so the uplink).
pub struct Node {
    ns: Ns,
    name: String,
    ip: Ipv4Addr,
    prefix_len: u8,
    segment: usize,
    mtu: u32,
    gateway: Option<Ipv4Addr>,
    port: String,
}

impl Node {
    pub fn ns(&self) -> &Ns {
        &self.ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node IP (on [`Node::dev`]).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `<ip>/<prefix length>`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.ip, self.prefix_len)
    }

    /// The uplink inside the node: `eth0`.
    pub fn dev(&self) -> &str {
        UPLINK
    }

    /// The uplink's MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn segment(&self) -> usize {
        self.segment
    }

    /// The default route's gateway (a routed fabric), None on an L2 fabric.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// The uplink's other end, in [`Fabric::switch`]: set it down there to cut the node off.
    pub fn port(&self) -> &str {
        &self.port
    }
}
