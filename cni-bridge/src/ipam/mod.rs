//! host-local IPAM, in process: a drop-in for the reference `host-local` plugin
//! (containernetworking/plugins, plugins/ipam/host-local) sharing its configuration,
//! its allocation order and its on-disk store, so either can take over a data dir
//! written by the other.
//!
//! Cost: allocate, release and get touch a fixed number of files whatever the number of
//! reservations (the owner index in store.rs replaces the reference's directory walks;
//! the round-robin cursor makes the first candidate normally free). A full scan happens
//! only in list/gc and once after a foreign change to the data dir. At 10k reservations
//! an allocation is therefore as cheap as at zero, as long as the range is not so full
//! that the round robin has to step over long runs of taken addresses (a cost the
//! reference shares, and which depends on fragmentation, not on the count).

mod config;
mod dns;
mod range;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

pub use config::{IpamConfig, IpamRoute, DEFAULT_DATA_DIR};
pub use dns::{dns_for, parse_resolv_conf, Dns};
pub use range::{canonical_ip, Range, RangeSet};

use crate::error::{codes, CniError, ErrorList, Result};
use store::{Owner, Store, Txn};

/// One allocated address: the IP with its subnet's prefix length, and the range's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfigured {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// One network's store, `<data_dir>/<network>/`.
pub struct HostLocal {
    ranges: Vec<RangeSet>,
    store: Store,
}

impl HostLocal {
    /// Creates the network's directory if needed.
    pub fn open(conf: &IpamConfig, network: &str) -> Result<HostLocal> {
        // The name becomes a path component: refuse anything that would leave data_dir.
        if network.is_empty() || network == "." || network == ".." || network.contains('/') || network.contains('\0') {
            return Err(CniError::invalid_config("name", format!("{network:?} cannot be used as a directory name")));
        }
        Ok(HostLocal { ranges: conf.ranges.clone(), store: Store::open(&conf.data_dir, network)? })
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// How many full directory scans this instance has done (list, gc, index rebuilds).
    pub fn scans(&self) -> usize {
        self.store.scans()
    }

    /// One IP per range set, in order. Requested IPs go to the range set containing them.
    /// On any failure, whatever this call reserved is released again.
    pub fn allocate(&self, id: &str, ifname: &str, requested: &[IpAddr]) -> Result<Vec<IpamConfigured>> {
        let mut tx = self.store.lock()?;
        let me = Owner::new(id, ifname);
        let mut held = tx.lookup(&me)?;
        // The reference's GetByID also matches legacy id-only files for the duplicate check.
        let mut owned = held.clone();
        owned.extend(tx.lookup(&Owner::legacy(id))?);

        let mut want: Vec<IpAddr> = Vec::new();
        for ip in requested.iter().map(|ip| canonical_ip(*ip)) {
            if !want.contains(&ip) {
                want.push(ip);
            }
        }
        let mut got = Vec::new();
        let mut out = Vec::new();
        let mut res = Ok(());
        for (idx, set) in self.ranges.iter().enumerate() {
            match self.allocate_one(&mut tx, idx, set, &me, &owned, &mut want) {
                Ok((ip, conf)) => {
                    got.push(ip);
                    out.push(conf);
                }
                Err(e) => {
                    res = Err(e.context(format!("failed to allocate for range {idx}")));
                    break;
                }
            }
        }
        if res.is_ok() && !want.is_empty() {
            let list: Vec<String> = want.iter().map(|ip| ip.to_string()).collect();
            res = Err(CniError::new(
                codes::INTERNAL,
                format!("failed to allocate all requested IPs: {}", list.join(" ")),
            ));
        }
        match res {
            Ok(()) => {
                held.extend(&got);
                tx.set_index(&me, &held)?;
                tx.commit();
                Ok(out)
            }
            Err(e) => {
                for ip in got {
                    let _ = tx.remove(ip);
                }
                tx.commit();
                Err(e)
            }
        }
    }

    fn allocate_one(
        &self,
        tx: &mut Txn<'_>,
        idx: usize,
        set: &RangeSet,
        me: &Owner,
        owned: &[IpAddr],
        want: &mut Vec<IpAddr>,
    ) -> Result<(IpAddr, IpamConfigured)> {
        let fail = |msg: String| CniError::new(codes::INTERNAL, msg);
        // Checked for requested IPs too (the reference checks only dynamic ones): the spec
        // forbids a second address for the same attachment in the same range set.
        if let Some(ip) = owned.iter().find(|ip| set.contains(**ip)) {
            return Err(fail(format!("{ip} has been allocated to {}, duplicate allocation is not allowed", me.id)));
        }
        if let Some(pos) = want.iter().position(|ip| set.contains(*ip)) {
            let ip = want.remove(pos);
            let r = set.range_for(ip).ok_or_else(|| fail(format!("{ip} not in range set {set}")))?;
            if r.gateway == Some(ip) {
                return Err(fail(format!("requested ip {ip} is subnet's gateway")));
            }
            if r.is_reserved(ip) {
                return Err(fail(format!("requested ip {ip} is the network or broadcast address of {}", r.subnet)));
            }
            if !tx.reserve(ip, me)? {
                return Err(fail(format!("requested IP address {ip} is not available in range set {set}")));
            }
            // The cursor is only a hint: losing it costs round-robin order, not correctness.
            let _ = tx.set_last_reserved(idx, ip);
            return configured(ip, r);
        }
        let last = tx.last_reserved(idx);
        for (ip, r) in set.iter_from(last) {
            if tx.reserve(ip, me)? {
                let _ = tx.set_last_reserved(idx, ip);
                return configured(ip, r);
            }
        }
        Err(fail(format!("no IP addresses available in range set: {set}")))
    }

    /// Releases what id+ifname holds; when it holds nothing, releases legacy files holding
    /// the bare id (the reference's ReleaseByID rule). Ok when nothing is held.
    pub fn release(&self, id: &str, ifname: &str) -> Result<()> {
        let mut tx = self.store.lock()?;
        let me = Owner::new(id, ifname);
        let mut owner = me;
        let mut ips = tx.lookup(&owner)?;
        if ips.is_empty() {
            owner = Owner::legacy(id);
            ips = tx.lookup(&owner)?;
        }
        if ips.is_empty() {
            return Ok(());
        }
        let mut errs = ErrorList::default();
        let mut left = Vec::new();
        for ip in ips {
            if let Err(e) = tx.remove(ip) {
                left.push(ip);
                errs.push(Err(e));
            }
        }
        tx.set_index(&owner, &left)?;
        tx.commit();
        errs.into_result().map_err(|e| e.context(format!("host-local: releasing addresses of {}/{ifname}", owner.id)))
    }

    /// What id+ifname holds (legacy id-only files included, as the reference's GetByID).
    pub fn get(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        let mut tx = self.store.lock()?;
        let mut ips = tx.lookup(&Owner::new(id, ifname))?;
        ips.extend(tx.lookup(&Owner::legacy(id))?);
        sort_ips(&mut ips);
        Ok(ips)
    }

    /// Removes every reservation whose (id, ifname) is not in `valid`; a legacy id-only
    /// file survives when its id appears in `valid` with any ifname.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<Vec<IpAddr>> {
        let mut tx = self.store.lock()?;
        let pairs: HashSet<(&str, &str)> = valid.iter().map(|(i, f)| (i.trim(), f.as_str())).collect();
        let ids: HashSet<&str> = valid.iter().map(|(i, _)| i.trim()).collect();
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        let mut errs = ErrorList::default();
        for (ip, o) in tx.scan()? {
            let keep = match &o.ifname {
                Some(ifn) => pairs.contains(&(o.id.as_str(), ifn.as_str())),
                None => ids.contains(o.id.as_str()),
            };
            if keep {
                kept.push((ip, o));
                continue;
            }
            match tx.remove(ip) {
                Ok(true) => removed.push(ip),
                Ok(false) => {}
                Err(e) => {
                    kept.push((ip, o));
                    errs.push(Err(e));
                }
            }
        }
        tx.rebuild_with(&kept)?;
        errs.into_result().map_err(|e| e.context("host-local: gc"))?;
        sort_ips(&mut removed);
        Ok(removed)
    }

    /// Every reservation as (ip, id, ifname); ifname is empty for legacy id-only files.
    pub fn list(&self) -> Result<Vec<(IpAddr, String, String)>> {
        let tx = self.store.lock()?;
        let mut all: Vec<(IpAddr, String, String)> =
            tx.scan()?.into_iter().map(|(ip, o)| (ip, o.id, o.ifname.unwrap_or_default())).collect();
        all.sort_by_key(|a| ip_key(a.0));
        Ok(all)
    }
}

fn configured(ip: IpAddr, r: &Range) -> Result<(IpAddr, IpamConfigured)> {
    let address = IpNet::new(ip, r.subnet.prefix_len()).map_err(|e| CniError::internal("host-local: address", e))?;
    Ok((ip, IpamConfigured { address, gateway: r.gateway }))
}

fn ip_key(ip: IpAddr) -> (bool, u128) {
    (ip.is_ipv6(), range::ip_to_u128(ip))
}

fn sort_ips(ips: &mut Vec<IpAddr>) {
    ips.sort_by_key(|ip| ip_key(*ip));
    ips.dedup();
}
