//! Waiting for IPv6 duplicate address detection, only when a conf sets `enabledad`.
//! Event driven: the watcher subscribes to address notifications before the addresses are
//! added, then blocks until each leaves the tentative state (or fails DAD).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use podnet_netns::NetNs;

use crate::error::{codes, nl_err, CniError, Result};
use crate::rtnl::{Rtnl, IFA_F_DADFAILED, IFA_F_TENTATIVE};

const RTNLGRP_IPV6_IFADDR: u32 = 9;
/// The kernel's DAD takes about a second by default (1 probe, 1 s retransmit timer).
const DAD_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DadWatch {
    nl: Rtnl,
}

impl DadWatch {
    pub fn new(pod: &NetNs) -> Result<DadWatch> {
        let nl = pod
            .run(|| {
                let mut nl = Rtnl::new()?;
                nl.subscribe(RTNLGRP_IPV6_IFADDR)?;
                Ok::<_, crate::netlink::NlError>(nl)
            })
            .map_err(|e| CniError::io("enter the pod network namespace", e))?
            .map_err(|e| nl_err("subscribe to address events in the pod", e))?;
        Ok(DadWatch { nl })
    }

    /// Blocks until every address in `ips` on link `index` is past DAD.
    pub fn wait(&mut self, index: u32, ips: &[IpAddr]) -> Result<()> {
        let deadline = Instant::now() + DAD_TIMEOUT;
        loop {
            // Read the current state after each batch of events: notifications only say
            // that something changed.
            let addrs =
                self.nl.addrs(index, Some(libc::AF_INET6 as u8)).map_err(|e| nl_err("list pod addresses", e))?;
            let mut pending = false;
            for ip in ips {
                match addrs.iter().find(|a| a.addr.addr() == *ip) {
                    Some(a) if a.flags & IFA_F_DADFAILED != 0 => {
                        return Err(CniError::new(
                            codes::INTERNAL,
                            format!("duplicate address detection failed for {ip}"),
                        ))
                    }
                    Some(a) if a.flags & IFA_F_TENTATIVE != 0 => pending = true,
                    Some(_) => {}
                    None => return Err(CniError::new(codes::INTERNAL, format!("address {ip} disappeared during DAD"))),
                }
            }
            if !pending {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CniError::new(
                    codes::TRY_AGAIN,
                    format!("duplicate address detection did not finish within {DAD_TIMEOUT:?}"),
                ));
            }
            self.nl.wait_event(left).map_err(|e| nl_err("wait for address events", e))?;
        }
    }
}
