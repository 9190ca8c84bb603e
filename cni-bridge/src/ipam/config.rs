//! Parsing and validation of host-local's `ipam` object.
//!
//! Every error is code 7 and names the field as written by the user (e.g.
//! `ipam.ranges[1][0].subnet`, or `ipam.subnet` for the legacy single-range form), so a
//! broken conflist can be fixed without reading podnet's source. Keys are read through the
//! crate's field reader ([`Fields`]), with its one key rule.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::Value;

use super::range::{canonical_ip, ip_to_u128, u128_to_ip, Range, RangeSet};
use crate::config::Fields;
use crate::error::{CniError, Result};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, PartialEq)]
pub struct IpamConfig {
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<IpamRoute>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

/// A route of `ipam.routes`: the CNI result's route type, with the 1.1 fields (mtu, advmss,
/// priority, table, scope) kept for the pod's routing table and the result alike.
pub type IpamRoute = crate::result::Route;

impl IpamConfig {
    /// `ipam` is the "ipam" object of the plugin configuration.
    pub fn from_json(ipam: &Value) -> Result<IpamConfig> {
        Self::from_json_with_ip_ranges(ipam, None)
    }

    /// Like `from_json`, plus the `ipRanges` capability (`runtimeConfig.ipRanges`), whose
    /// range sets come first, as in the reference.
    pub fn from_json_with_ip_ranges(ipam: &Value, ip_ranges: Option<&Value>) -> Result<IpamConfig> {
        let f = host_local_fields(ipam)?;
        // (range set, path used in error messages)
        let mut sets: Vec<(RangeSet, String)> = Vec::new();
        if let Some(rt) = ip_ranges.filter(|v| !v.is_null()) {
            parse_set_list(rt, "runtimeConfig.ipRanges", &mut sets)?;
        }
        // The legacy form only counts when it has a subnet: the reference ignores stray
        // rangeStart/rangeEnd/gateway at the top level otherwise.
        if f.get("subnet").is_some() {
            let r = parse_range(&f)?;
            sets.push((RangeSet(vec![r]), "ipam".to_string()));
        }
        if let Some(v) = f.get("ranges") {
            parse_set_list(v, "ipam.ranges", &mut sets)?;
        }
        if sets.is_empty() {
            return Err(CniError::invalid_config("ipam.ranges", "no IP ranges specified"));
        }
        for (i, (a, apath)) in sets.iter().enumerate() {
            for (b, bpath) in &sets[..i] {
                if a.overlaps(b) {
                    return Err(CniError::invalid_config(
                        apath,
                        format!("range set {a} overlaps with range set {b} ({bpath})"),
                    ));
                }
            }
        }
        Self::with_ranges(&f, sets.into_iter().map(|(s, _)| s).collect())
    }

    /// The `ipam` object read for everything but its ranges, which the caller supplies: the
    /// node facts' range set in cluster mode (none when the facts could not be read: DEL and
    /// GC release by container id and need no range). `subnet` and `ranges` are not read.
    pub fn from_json_with_ranges(ipam: &Value, ranges: Vec<RangeSet>) -> Result<IpamConfig> {
        Self::with_ranges(&host_local_fields(ipam)?, ranges)
    }

    /// Routes, data dir and resolvConf of a host-local object, with `ranges`.
    fn with_ranges(f: &Fields, ranges: Vec<RangeSet>) -> Result<IpamConfig> {
        let mut routes = Vec::new();
        if let Some(v) = f.get("routes") {
            let list = v.as_array().ok_or_else(|| f.err("routes", "must be a list"))?;
            for (i, r) in list.iter().enumerate() {
                let key = format!("routes[{i}]");
                let o = r.as_object().ok_or_else(|| f.err(&key, "must be an object"))?;
                let rf = f.nested(&key, o);
                let dst = match opt_str(&rf, "dst")? {
                    Some(s) => parse_cidr(s, &rf.path("dst"))?,
                    None => return Err(rf.err("dst", "missing")),
                };
                let gw =
                    opt_str(&rf, "gw")?.filter(|s| !s.is_empty()).map(|s| parse_ip(s, &rf.path("gw"))).transpose()?;
                let mut route = IpamRoute::new(dst, gw);
                for (key, slot, max) in [
                    ("mtu", &mut route.mtu, u32::MAX as u64),
                    ("advmss", &mut route.advmss, u32::MAX as u64),
                    ("priority", &mut route.priority, u32::MAX as u64),
                    ("table", &mut route.table, u32::MAX as u64),
                    ("scope", &mut route.scope, 255),
                ] {
                    if let Some(v) = rf.get(key) {
                        let n = v
                            .as_u64()
                            .filter(|n| *n <= max)
                            .ok_or_else(|| rf.err(key, format_args!("must be an integer from 0 to {max}")))?;
                        *slot = Some(n as u32);
                    }
                }
                routes.push(route);
            }
        }

        let data_dir = opt_str(f, "dataDir")?.filter(|s| !s.is_empty()).unwrap_or(DEFAULT_DATA_DIR);
        let resolv_conf = opt_str(f, "resolvConf")?.filter(|s| !s.is_empty()).map(PathBuf::from);

        Ok(IpamConfig { ranges, routes, data_dir: PathBuf::from(data_dir), resolv_conf })
    }
}

/// The fields of a host-local `ipam` object (its `type` checked), errors prefixed `ipam.`.
fn host_local_fields(ipam: &Value) -> Result<Fields<'_>> {
    let obj = ipam.as_object().ok_or_else(|| CniError::invalid_config("ipam", "must be an object"))?;
    let f = Fields::config(obj).with_prefix("ipam");
    match opt_str(&f, "type")? {
        Some("host-local") => Ok(f),
        Some(t) => Err(f.err("type", format_args!("{t:?} is not \"host-local\""))),
        None => Err(f.err("type", "missing; must be \"host-local\"")),
    }
}

fn parse_set_list(v: &Value, path: &str, out: &mut Vec<(RangeSet, String)>) -> Result<()> {
    let list = v.as_array().ok_or_else(|| CniError::invalid_config(path, "must be a list of range sets"))?;
    for (i, set) in list.iter().enumerate() {
        let set_path = format!("{path}[{i}]");
        let items = set.as_array().ok_or_else(|| CniError::invalid_config(&set_path, "must be a list of ranges"))?;
        if items.is_empty() {
            return Err(CniError::invalid_config(&set_path, "empty range set"));
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let rpath = format!("{set_path}[{j}]");
            let o = item.as_object().ok_or_else(|| CniError::invalid_config(&rpath, "must be an object"))?;
            let r = parse_range(&Fields::config(o).with_prefix(rpath.as_str()))?;
            if let Some(first) = ranges.first() {
                if first.is_v4() != r.is_v4() {
                    return Err(CniError::invalid_config(
                        &format!("{rpath}.subnet"),
                        format!("{} mixes address families with {} in one range set", r.subnet, first.subnet),
                    ));
                }
            }
            if let Some((k, other)) = ranges.iter().enumerate().find(|(_, o)| o.overlaps(&r)) {
                return Err(CniError::invalid_config(
                    &rpath,
                    format!("range {r} overlaps with range {other} ({set_path}[{k}])"),
                ));
            }
            ranges.push(r);
        }
        out.push((RangeSet(ranges), set_path));
    }
    Ok(())
}

/// One range object (the `ipam` object itself for the legacy form).
fn parse_range(f: &Fields) -> Result<Range> {
    let subnet_path = f.path("subnet");
    let subnet = match opt_str(f, "subnet")? {
        Some(s) => parse_cidr(s, &subnet_path)?,
        None => return Err(f.err("subnet", "missing")),
    };
    if subnet.trunc() != subnet {
        return Err(CniError::invalid_config(
            &subnet_path,
            format!(
                "{subnet} has host bits set; for a /{} the network address is {}",
                subnet.prefix_len(),
                subnet.network()
            ),
        ));
    }
    // A /31, /32 (or v6 /127, /128) leaves nothing once network, gateway and broadcast are out.
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(CniError::invalid_config(&subnet_path, format!("network {subnet} too small to allocate from")));
    }
    let v4 = subnet.addr().is_ipv4();
    let net = ip_to_u128(subnet.network());
    let first = u128_to_ip(net + 1, v4);
    let last = if v4 { u128_to_ip(ip_to_u128(subnet.broadcast()) - 1, true) } else { subnet.broadcast() };

    let in_subnet = |field: &str| -> Result<Option<IpAddr>> {
        let fpath = f.path(field);
        let Some(s) = opt_str(f, field)?.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let ip = parse_ip(s, &fpath)?;
        if ip.is_ipv4() != v4 || !subnet.contains(&ip) {
            return Err(CniError::invalid_config(&fpath, format!("{ip} is not in subnet {subnet}")));
        }
        Ok(Some(ip))
    };
    let range_start = in_subnet("rangeStart")?.unwrap_or(first);
    let range_end = in_subnet("rangeEnd")?.unwrap_or(last);
    let gateway = Some(in_subnet("gateway")?.unwrap_or(first));
    if ip_to_u128(range_start) > ip_to_u128(range_end) {
        return Err(f.err("rangeEnd", format_args!("rangeEnd {range_end} is before rangeStart {range_start}")));
    }
    Ok(Range { subnet, range_start, range_end, gateway })
}

fn opt_str<'a>(f: &Fields<'a>, key: &str) -> Result<Option<&'a str>> {
    match f.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(f.err(key, format_args!("must be a string, not {other}"))),
    }
}

fn parse_cidr(s: &str, path: &str) -> Result<IpNet> {
    IpNet::from_str(s.trim())
        .map_err(|_| CniError::invalid_config(path, format!("{s:?} is not a CIDR (address/prefix)")))
}

fn parse_ip(s: &str, path: &str) -> Result<IpAddr> {
    IpAddr::from_str(s.trim())
        .map(canonical_ip)
        .map_err(|_| CniError::invalid_config(path, format!("{s:?} is not an IP address")))
}
