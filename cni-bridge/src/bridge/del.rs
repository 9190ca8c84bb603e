//! DEL and GC: every step is tried and every failure reported; an IP is never free while an
//! interface or a rule still uses it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use podnet_netns::NetNs;

use super::BridgePlugin;
use crate::args::Request;
use crate::attachment::AttachmentStore;
use crate::error::{nl_err, ErrorList, Result};
use crate::ipam::HostLocal;
use crate::names::{AttachmentId, HOST_VETH_PREFIX};
use crate::nft::Firewall;
use crate::rtnl::Rtnl;

/// What DEL does after the firewall rules: the links (whose deletion waits for an RCU grace
/// period, ~20 ms), then the addresses go back to the pool, then the record. An IP is never free
/// while an interface still uses it.
struct DelTail {
    host_veth: String,
    netns: Option<PathBuf>,
    container_id: String,
    ifname: String,
    fw_open: Option<Firewall>,
    host_local: Result<HostLocal>,
    store: AttachmentStore,
}

impl DelTail {
    /// `keep_record_on_error`: a deferred DEL keeps the record when a step failed, so that a
    /// later DEL or GC can finish the work (its caller was already told it succeeded).
    fn run(self, errs: &mut ErrorList, keep_record_on_error: bool) {
        let DelTail { host_veth, netns, container_id, ifname, fw_open, host_local, store } = self;
        let host_veth_existed = match Rtnl::new().and_then(|mut host| host.delete_link_by_name(&host_veth)) {
            Ok(existed) => existed,
            Err(e) => {
                errs.push(Err(nl_err("delete the host veth", e)));
                false
            }
        };
        // Deleting the host end deletes the pod end; only if the host end was already gone
        // can a pod end have outlived it.
        if !host_veth_existed {
            if let Some(ns) = netns.as_deref().filter(|p| p.exists()).and_then(|p| NetNs::open(p).ok()) {
                let name = ifname.clone();
                if let Ok(r) = ns.run(move || Rtnl::new().and_then(|mut nl| nl.delete_link_by_name(&name))) {
                    errs.push(r.map(drop).map_err(|e| nl_err("delete the pod interface", e)));
                }
            }
        }
        drop(fw_open);
        errs.push(host_local.and_then(|h| h.release(&container_id, &ifname)));
        if !keep_record_on_error || errs.is_empty() {
            errs.push(store.remove(&container_id, &ifname));
        }
    }
}

/// DELs waiting for [`run_deferred`]; `None`: DEL does all its work before it returns.
static DEFERRED: Mutex<Option<Vec<(String, DelTail)>>> = Mutex::new(None);

/// For a long-lived caller that answers before it finishes (podnet's shim): from now on, a DEL
/// of this process removes the attachment's firewall rules and returns; deleting its links,
/// releasing its addresses and removing its record wait for [`run_deferred`]. Until then the
/// record stays, so a DEL or GC from another process still finds the attachment.
pub fn defer_dels() {
    let mut d = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
    if d.is_none() {
        *d = Some(Vec::new());
    }
}

/// Finishes the deferred DELs, in order; returns one message per DEL that failed.
pub fn run_deferred() -> Vec<String> {
    let pending = match DEFERRED.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(list) => std::mem::take(list),
        None => return Vec::new(),
    };
    let mut failed = Vec::new();
    for (what, tail) in pending {
        let mut errs = ErrorList::default();
        tail.run(&mut errs, true);
        if let Err(e) = errs.into_result(&what) {
            failed.push(e.to_string());
        }
    }
    failed
}

impl BridgePlugin {
    /// DEL: idempotent, works without the pod's namespace, and reports every failure after
    /// trying every step.
    pub fn del(&self, req: &Request<'_>) -> Result<()> {
        let id = AttachmentId::new(&self.network, req.container_id, req.ifname);
        let mut errs = ErrorList::default();
        // Rules, then links, then the addresses go back to the pool: an IP is never free
        // while an interface or a rule still uses it.
        let (tag, pm_tag) = (id.tag(), id.portmap_tag());
        // The firewall socket stays open until the links are gone: closing it right after its
        // commit waits for the kernel to free the removed rules (an RCU grace period); kept
        // open, that wait overlaps the one the veth deletion makes anyway (~10 ms per DEL).
        let mut fw_open = None;
        errs.push(Firewall::new().and_then(|mut fw| {
            let r = fw.remove_where(&tag, |t| t == tag || t == pm_tag).map(drop);
            fw_open = Some(fw);
            r
        }));
        let tail = DelTail {
            host_veth: id.host_veth(),
            netns: req.netns.map(Path::to_path_buf),
            container_id: req.container_id.to_owned(),
            ifname: req.ifname.to_owned(),
            fw_open,
            host_local: self.host_local(),
            store: self.store(),
        };
        let what = format!("DEL {}/{} on network {}", req.container_id, req.ifname, self.network);
        let deferred = {
            let mut d = DEFERRED.lock().unwrap_or_else(|p| p.into_inner());
            match d.as_mut() {
                // The rules are gone and the caller is answered now; the links, the address and
                // the record go right after, in order (see [`defer_dels`]).
                Some(list) if errs.is_empty() => {
                    list.push((what.clone(), tail));
                    None
                }
                _ => Some(tail),
            }
        };
        if let Some(tail) = deferred {
            tail.run(&mut errs, false);
        }
        errs.into_result(&what)
    }

    /// GC: removes every attachment of this network that is not in `valid`: its records,
    /// IP reservations, firewall rules and host veths.
    pub fn gc(&self, valid: &[(String, String)]) -> Result<()> {
        let mut errs = ErrorList::default();
        let is_valid = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
        let store = self.store();
        // Wait for in-flight ADDs, and keep new ones out while collecting.
        let _gc_guard = store.lock(true)?;
        match store.list() {
            Ok(records) => {
                for (cid, ifname, rec) in records {
                    if !is_valid(&cid, &ifname) {
                        // DEL needs no record, so a torn one is collected too.
                        errs.push(self.del(&Request::new(&cid, &ifname, None)));
                    } else if let Err(e) = rec {
                        errs.0.push(e);
                    }
                }
            }
            Err(e) => errs.0.push(e),
        }
        errs.push(self.host_local().and_then(|h| h.gc(valid)).map(drop));
        let valid_tags: Vec<String> = valid
            .iter()
            .flat_map(|(c, i)| {
                let id = AttachmentId::new(&self.network, c, i);
                [id.tag(), id.portmap_tag()]
            })
            .collect();
        let prefix = AttachmentId::network_tag_prefix(&self.network);
        errs.push(Firewall::new().and_then(|mut fw| {
            fw.remove_where(&format!("stale rules of network {}", self.network), |t| {
                t.starts_with(&prefix) && !valid_tags.iter().any(|v| v == t)
            })
            .map(drop)
        }));
        let valid_veths: Vec<String> =
            valid.iter().map(|(c, i)| AttachmentId::new(&self.network, c, i).host_veth()).collect();
        match Rtnl::new().and_then(|mut host| host.links().map(|l| (host, l))) {
            Ok((mut host, links)) => {
                // Only veths stamped with this network's tag prefix: another network may
                // share the bridge.
                for l in links {
                    let ours = l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix));
                    if ours && l.name.starts_with(HOST_VETH_PREFIX) && !valid_veths.contains(&l.name) {
                        errs.push(
                            host.delete_link_by_name(&l.name)
                                .map(drop)
                                .map_err(|e| nl_err(&format!("delete stale veth {}", l.name), e)),
                        );
                    }
                }
            }
            Err(e) => errs.push(Err(nl_err("list links", e))),
        }
        errs.into_result(&format!("GC of network {}", self.network))
    }
}
