//! Ranges, range sets and the round-robin iterator of host-local.
//!
//! Addresses are handled as `u128` internally so that one code path serves both families;
//! a range never mixes families, so the family travels with the range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// One contiguous pool inside a subnet. After parsing every field is filled: defaults are
/// the reference's (start = network+1, end = broadcast-1 for v4 / last address for v6,
/// gateway = network+1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: Option<IpAddr>,
}

/// Ranges of one family from which exactly one address is allocated per ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

/// Maps IPv4-mapped IPv6 addresses to IPv4, as Go's `To4()` does, so that
/// "::ffff:10.0.0.1" and "10.0.0.1" name the same reservation file.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

pub(crate) fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn u128_to_ip(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl Range {
    pub fn is_v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    /// True when `ip` lies between range_start and range_end (inclusive) of this range's
    /// family: the reference's notion of "in range", used for requested IPs and last_reserved_ip.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        if ip.is_ipv4() != self.is_v4() || !self.subnet.contains(&ip) {
            return false;
        }
        let v = ip_to_u128(ip);
        ip_to_u128(self.range_start) <= v && v <= ip_to_u128(self.range_end)
    }

    /// Addresses never handed out even when inside [start, end]: the gateway, the network
    /// address and (v4) the broadcast address. A user may write a range that includes
    /// them; giving them to a pod breaks its connectivity.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        if Some(ip) == self.gateway || ip == self.subnet.network() {
            return true;
        }
        self.is_v4() && ip == self.subnet.broadcast()
    }

    pub(crate) fn overlaps(&self, other: &Range) -> bool {
        if self.is_v4() != other.is_v4() {
            return false;
        }
        let (a0, a1) = (ip_to_u128(self.range_start), ip_to_u128(self.range_end));
        let (b0, b1) = (ip_to_u128(other.range_start), ip_to_u128(other.range_end));
        a0 <= b1 && b0 <= a1
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

impl RangeSet {
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.contains(ip))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn is_v4(&self) -> bool {
        self.0.first().map(Range::is_v4).unwrap_or(true)
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0.iter().any(|a| other.0.iter().any(|b| a.overlaps(b)))
    }

    /// Round-robin candidates: starts right after `last` when `last` lies in this set
    /// (so the previous allocation is tried last), otherwise at the first range's start;
    /// walks every range in order, wrapping around, and stops when back at the start.
    pub(crate) fn iter_from(&self, last: Option<IpAddr>) -> RangeIter<'_> {
        let mut it = RangeIter { set: self, idx: 0, cur: None, start: None };
        if let Some(last) = last {
            if let Some(i) = self.0.iter().position(|r| r.contains(last)) {
                it.idx = i;
                it.cur = Some(ip_to_u128(canonical_ip(last)));
            }
        }
        it
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Same walk as the reference's RangeIter, but iterative rather than recursive when
/// skipping reserved addresses, so a range full of skipped addresses cannot overflow the stack.
pub(crate) struct RangeIter<'a> {
    set: &'a RangeSet,
    idx: usize,
    cur: Option<u128>,
    start: Option<u128>,
}

impl<'a> Iterator for RangeIter<'a> {
    type Item = (IpAddr, &'a Range);

    fn next(&mut self) -> Option<Self::Item> {
        let ranges = &self.set.0;
        if ranges.is_empty() {
            return None;
        }
        loop {
            let r = &ranges[self.idx];
            let cur = match self.cur {
                None => {
                    let c = ip_to_u128(r.range_start);
                    self.start = Some(c);
                    c
                }
                Some(c) => {
                    let next = if c == ip_to_u128(r.range_end) {
                        self.idx = (self.idx + 1) % ranges.len();
                        ip_to_u128(ranges[self.idx].range_start)
                    } else {
                        c + 1
                    };
                    match self.start {
                        None => self.start = Some(next),
                        Some(s) if s == next => {
                            self.cur = Some(next);
                            return None;
                        }
                        Some(_) => {}
                    }
                    next
                }
            };
            self.cur = Some(cur);
            let r = &ranges[self.idx];
            let ip = u128_to_ip(cur, r.is_v4());
            if !r.is_reserved(ip) {
                return Some((ip, r));
            }
        }
    }
}
