//! Names derived from an attachment's identity, so that DEL and GC can find what ADD made
//! even when the attachment record or the pod's namespace is gone.

/// FNV-1a, 64 bit: stable across builds and processes (std's hasher is not).
pub fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff; // separator, so ("ab","c") and ("a","bc") differ
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The identity of one attachment: a container's interface on a network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachmentId {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// Prefix of every host-side veth podnet creates; GC only ever deletes links with it.
pub const HOST_VETH_PREFIX: &str = "pn";

impl AttachmentId {
    pub fn new(network: &str, container_id: &str, ifname: &str) -> Self {
        AttachmentId { network: network.to_owned(), container_id: container_id.to_owned(), ifname: ifname.to_owned() }
    }

    fn hash(&self) -> u64 {
        fnv1a(&[&self.container_id, &self.ifname])
    }

    /// Host end of the veth: `pn` + 12 hex digits (14 bytes, under IFNAMSIZ).
    pub fn host_veth(&self) -> String {
        format!("{HOST_VETH_PREFIX}{:012x}", self.hash() & 0xffff_ffff_ffff)
    }

    /// Tag prefix of all firewall rules of one network.
    pub fn network_tag_prefix(network: &str) -> String {
        let net = if network.len() > 80 { format!("#{:016x}", fnv1a(&[network])) } else { network.to_owned() };
        format!("podnet/{net}/")
    }

    /// The tag on every firewall rule of this attachment (an nft rule comment).
    pub fn tag(&self) -> String {
        format!("{}{:016x}", Self::network_tag_prefix(&self.network), self.hash())
    }

    /// Tag of rules added by a separately invoked `portmap` step of a chain.
    pub fn portmap_tag(&self) -> String {
        format!("{}/pm", self.tag())
    }

    /// Locally administered unicast MACs for the pod and host ends.
    pub fn pod_mac(&self) -> [u8; 6] {
        mac_from(fnv1a(&[&self.container_id, &self.ifname, "pod"]))
    }
    pub fn host_mac(&self) -> [u8; 6] {
        mac_from(fnv1a(&[&self.container_id, &self.ifname, "host"]))
    }
}

/// A stable MAC for a bridge podnet creates, so its address never changes as ports come and go.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    mac_from(fnv1a(&[bridge, "bridge"]))
}

fn mac_from(h: u64) -> [u8; 6] {
    let b = h.to_be_bytes();
    [(b[2] & 0xfe) | 0x02, b[3], b[4], b[5], b[6], b[7]]
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.len() != 2 {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_fit() {
        let a = AttachmentId::new("net", "c1", "eth0");
        assert_eq!(a.host_veth(), AttachmentId::new("other", "c1", "eth0").host_veth());
        assert_eq!(a.host_veth().len(), 14);
        assert_ne!(a.host_veth(), AttachmentId::new("net", "c2", "eth0").host_veth());
        assert!(a.tag().starts_with("podnet/net/"));
        assert_ne!(a.tag(), AttachmentId::new("net2", "c1", "eth0").tag());
        let long = AttachmentId::new(&"n".repeat(200), &"c".repeat(64), "eth0");
        assert!(long.portmap_tag().len() < 120);
    }

    #[test]
    fn macs_are_local_unicast() {
        let a = AttachmentId::new("net", "c1", "eth0");
        for m in [a.pod_mac(), a.host_mac(), bridge_mac("cni0")] {
            assert_eq!(m[0] & 0x03, 0x02);
        }
        assert_ne!(a.pod_mac(), a.host_mac());
        assert_eq!(parse_mac(&format_mac(&a.pod_mac())), Some(a.pod_mac()));
        assert_eq!(parse_mac("zz:00:00:00:00:00"), None);
        assert_eq!(parse_mac("00:00:00:00:00"), None);
    }
}
