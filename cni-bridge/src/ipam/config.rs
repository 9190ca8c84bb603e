//! Parsing and validation of host-local's `ipam` object.
//!
//! Every error is code 7 and names the field as written by the user (e.g.
//! `ipam.ranges[1][0].subnet`, or `ipam.subnet` for the legacy single-range form), so a
//! broken conflist can be fixed without reading podnet's source.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::range::{canonical_ip, ip_to_u128, u128_to_ip, Range, RangeSet};
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
        let obj = ipam.as_object().ok_or_else(|| CniError::invalid_config("ipam", "must be an object"))?;
        match opt_str(obj, "type", "ipam.type")? {
            Some("host-local") => {}
            Some(t) => return Err(CniError::invalid_config("ipam.type", format!("{t:?} is not \"host-local\""))),
            None => return Err(CniError::invalid_config("ipam.type", "missing; must be \"host-local\"")),
        }

        // (range set, path used in error messages)
        let mut sets: Vec<(RangeSet, String)> = Vec::new();
        if let Some(rt) = ip_ranges.filter(|v| !v.is_null()) {
            parse_set_list(rt, "runtimeConfig.ipRanges", &mut sets)?;
        }
        // The legacy form only counts when it has a subnet: the reference ignores stray
        // rangeStart/rangeEnd/gateway at the top level otherwise.
        if obj.get("subnet").is_some_and(|v| !v.is_null()) {
            let r = parse_range(obj, "ipam")?;
            sets.push((RangeSet(vec![r]), "ipam".to_string()));
        }
        if let Some(v) = obj.get("ranges").filter(|v| !v.is_null()) {
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

        let mut routes = Vec::new();
        if let Some(v) = obj.get("routes").filter(|v| !v.is_null()) {
            let list = v.as_array().ok_or_else(|| CniError::invalid_config("ipam.routes", "must be a list"))?;
            for (i, r) in list.iter().enumerate() {
                let path = format!("ipam.routes[{i}]");
                let o = r.as_object().ok_or_else(|| CniError::invalid_config(&path, "must be an object"))?;
                let dst_path = format!("{path}.dst");
                let dst = match opt_str(o, "dst", &dst_path)? {
                    Some(s) => parse_cidr(s, &dst_path)?,
                    None => return Err(CniError::invalid_config(&dst_path, "missing")),
                };
                let gw_path = format!("{path}.gw");
                let gw =
                    opt_str(o, "gw", &gw_path)?.filter(|s| !s.is_empty()).map(|s| parse_ip(s, &gw_path)).transpose()?;
                let mut route = IpamRoute::new(dst, gw);
                for (key, slot, max) in [
                    ("mtu", &mut route.mtu, u32::MAX as u64),
                    ("advmss", &mut route.advmss, u32::MAX as u64),
                    ("priority", &mut route.priority, u32::MAX as u64),
                    ("table", &mut route.table, u32::MAX as u64),
                    ("scope", &mut route.scope, 255),
                ] {
                    if let Some(v) = o.get(key).filter(|v| !v.is_null()) {
                        let n = v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
                            CniError::invalid_config(
                                &format!("{path}.{key}"),
                                format!("must be an integer from 0 to {max}"),
                            )
                        })?;
                        *slot = Some(n as u32);
                    }
                }
                routes.push(route);
            }
        }

        let data_dir = opt_str(obj, "dataDir", "ipam.dataDir")?.filter(|s| !s.is_empty()).unwrap_or(DEFAULT_DATA_DIR);
        let resolv_conf = opt_str(obj, "resolvConf", "ipam.resolvConf")?.filter(|s| !s.is_empty()).map(PathBuf::from);

        Ok(IpamConfig {
            ranges: sets.into_iter().map(|(s, _)| s).collect(),
            routes,
            data_dir: PathBuf::from(data_dir),
            resolv_conf,
        })
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
            let r = parse_range(o, &rpath)?;
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

/// One range object; `path` prefixes field names (`ipam` for the legacy form).
fn parse_range(o: &Map<String, Value>, path: &str) -> Result<Range> {
    let subnet_path = format!("{path}.subnet");
    let subnet = match opt_str(o, "subnet", &subnet_path)? {
        Some(s) => parse_cidr(s, &subnet_path)?,
        None => return Err(CniError::invalid_config(&subnet_path, "missing")),
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
        let fpath = format!("{path}.{field}");
        let Some(s) = opt_str(o, field, &fpath)?.filter(|s| !s.is_empty()) else {
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
        return Err(CniError::invalid_config(
            &format!("{path}.rangeEnd"),
            format!("rangeEnd {range_end} is before rangeStart {range_start}"),
        ));
    }
    Ok(Range { subnet, range_start, range_end, gateway })
}

fn opt_str<'a>(o: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(CniError::invalid_config(path, format!("must be a string, not {other}"))),
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
