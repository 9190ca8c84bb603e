//! The loopback plugin: `lo` up inside the pod.

use podnet_netns::NetNs;

use crate::args::Request;
use crate::config::PluginInput;
use crate::error::{codes, nl_err, CniError, Result};
use crate::result::{CniResult, Interface, IpConfig};
use crate::rtnl::Rtnl;

fn with_lo<T: Send>(req: &Request<'_>, f: impl FnOnce(&mut Rtnl, u32) -> Result<T> + Send) -> Result<T> {
    let path = req.netns.ok_or_else(|| CniError::invalid_env("CNI_NETNS", "required by loopback"))?;
    let ns = NetNs::open(path).map_err(|e| CniError::io("open the pod network namespace", e))?;
    ns.run(move || {
        let mut nl = Rtnl::new().map_err(|e| nl_err("open rtnetlink in the pod", e))?;
        let lo = nl
            .link_by_name("lo")
            .map_err(|e| nl_err("look up lo", e))?
            .ok_or_else(|| CniError::new(codes::INTERNAL, "the pod has no lo"))?;
        f(&mut nl, lo.index)
    })
    .map_err(|e| CniError::io("enter the pod network namespace", e))?
}

pub fn add(input: &PluginInput, req: &Request<'_>) -> Result<CniResult> {
    with_lo(req, |nl, idx| nl.set_up(idx).map_err(|e| nl_err("set lo up", e)))?;
    if let Some(prev) = &input.prev_result {
        return Ok(prev.clone());
    }
    let sandbox = req.netns.map(|p| p.display().to_string());
    let mut res = CniResult::new(&input.cni_version);
    res.interfaces.push(Interface {
        name: "lo".into(),
        mac: "00:00:00:00:00:00".into(),
        sandbox,
        ..Default::default()
    });
    for a in ["127.0.0.1/8", "::1/128"] {
        let address = a.parse().map_err(|e| CniError::internal("loopback address", e))?;
        res.ips.push(IpConfig { address, gateway: None, interface: Some(0) });
    }
    Ok(res)
}

/// DEL: nothing to release; a namespace that is already gone (or a leftover path that is
/// no longer a namespace) is fine.
pub fn del(req: &Request<'_>) -> Result<()> {
    match req.netns.filter(|p| NetNs::open(p).is_ok()) {
        Some(_) => {
            with_lo(req, |nl, idx| nl.set_flags(idx, 0, libc::IFF_UP as u32).map_err(|e| nl_err("set lo down", e)))
        }
        None => Ok(()),
    }
}

pub fn check(req: &Request<'_>) -> Result<()> {
    let up = with_lo(req, |nl, idx| {
        Ok(nl.link_by_index(idx).map_err(|e| nl_err("look up lo", e))?.is_some_and(|l| l.is_up()))
    })?;
    if up {
        Ok(())
    } else {
        Err(CniError::new(codes::INTERNAL, "CHECK: lo is down in the pod"))
    }
}
