//! DEL and GC: every step is tried and every failure reported; an IP is never free while an
//! interface or a rule still uses it.

use std::path::{Path, PathBuf};

use podnet_netns::NetNs;

use super::BridgePlugin;
use crate::args::Request;
use crate::attachment::AttachmentStore;
use crate::error::{nl_err, CniError, ErrorList, Result};
use crate::ipam::HostLocal;
use crate::names::{AttachmentId, HOST_VETH_PREFIX};
use crate::nft::Firewall;
use crate::rtnl::Rtnl;

/// What DEL does after the firewall rules, for one attachment: the links (whose deletion waits
/// for an RCU grace period, ~20 ms), then the addresses go back to the pool, then the record.
/// An IP is never free while an interface still uses it.
struct AttachmentTail {
    host_veth: String,
    netns: Option<PathBuf>,
    container_id: String,
    ifname: String,
    fw_open: Option<Firewall>,
    host_local: Result<HostLocal>,
    store: AttachmentStore,
}

impl AttachmentTail {
    /// `keep_record_on_error`: a deferred DEL keeps the record when a step failed, so that a
    /// later DEL or GC can finish the work (its caller was already told it succeeded).
    fn run(self, errs: &mut ErrorList, keep_record_on_error: bool) {
        let AttachmentTail { host_veth, netns, container_id, ifname, fw_open, host_local, store } = self;
        let host_veth_existed = match Rtnl::new().and_then(|mut host| host.delete_link_by_name(&host_veth)) {
            Ok(existed) => existed,
            Err(e) => {
                errs.add(nl_err("delete the host veth", e));
                false
            }
        };
        // Deleting the host end deletes the pod end; only if the host end was already gone
        // can a pod end have outlived it.
        if !host_veth_existed {
            if let Some(path) = netns.as_deref().filter(|p| p.exists()) {
                let name = ifname.clone();
                let entered = NetNs::open(path)
                    .and_then(|ns| ns.run(move || Rtnl::new().and_then(|mut nl| nl.delete_link_by_name(&name))));
                match entered {
                    Ok(r) => errs.push(r.map(drop).map_err(|e| nl_err("delete the pod interface", e))),
                    Err(e) => errs.add(CniError::io("delete the pod interface: entering the pod's netns", e)),
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

/// The slow part of DELs whose firewall rules are already gone: deleting their links,
/// releasing their addresses, removing their records, in order. A DEL hands it back to its
/// caller, who decides when it runs: at once ([`DelTail::run_now`], what the exec'd plugin
/// and in-process callers do through the engine), or after answering its own caller
/// ([`DelTail::run`], podnet's shim after its reply). Until it runs the records stay, so a DEL
/// or GC from another process still finds the attachments. A DEL that failed hands back
/// nothing: it finished before returning, since its caller is told it failed.
#[must_use = "a DEL is finished only when its tail has run"]
#[derive(Default)]
pub struct DelTail(Vec<(String, AttachmentTail)>);

impl std::fmt::Debug for DelTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(what, _)| what)).finish()
    }
}

impl DelTail {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends `other`'s DELs, to run after these.
    pub fn append(&mut self, mut other: DelTail) {
        self.0.append(&mut other.0);
    }

    /// Finishes the DELs, in order, after their caller was told they succeeded: a DEL with a
    /// failed step keeps its record, so that a later DEL or GC can finish the work. The error
    /// names each DEL that failed.
    pub fn run(self) -> Result<()> {
        self.finish(true)
    }

    /// Finishes the DELs, in order, before their caller is answered: a failure is the DEL's
    /// own, and the record goes anyway (the caller retries, and DEL needs no record).
    pub fn run_now(self) -> Result<()> {
        self.finish(false)
    }

    fn finish(self, keep_record_on_error: bool) -> Result<()> {
        let mut failed = ErrorList::default();
        for (what, tail) in self.0 {
            let mut errs = ErrorList::default();
            tail.run(&mut errs, keep_record_on_error);
            failed.push(errs.into_result().map_err(|e| e.context(what)));
        }
        failed.into_result()
    }
}

impl BridgePlugin {
    /// DEL: idempotent, works without the pod's namespace, and reports every failure after
    /// trying every step. Once the firewall rules are gone, the rest is handed back to run
    /// when the caller chooses ([`DelTail`]).
    pub fn del(&self, req: &Request<'_>) -> Result<DelTail> {
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
        let tail = AttachmentTail {
            host_veth: id.host_veth(),
            netns: req.netns.map(Path::to_path_buf),
            container_id: req.container_id.to_owned(),
            ifname: req.ifname.to_owned(),
            fw_open,
            host_local: self.host_local(),
            store: self.store(),
        };
        let what = format!("DEL {}/{} on network {}", req.container_id, req.ifname, self.network);
        if errs.is_empty() {
            // The rules are gone: the caller may answer now, and run the links, the address
            // and the record right after, in order (see [`DelTail`]).
            return Ok(DelTail(vec![(what, tail)]));
        }
        tail.run(&mut errs, false);
        errs.into_result().map_err(|e| e.context(what)).map(|()| DelTail::default())
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
                        errs.push(self.del(&Request::new(&cid, &ifname, None)).and_then(DelTail::run_now));
                    } else if let Err(e) = rec {
                        errs.add(e);
                    }
                }
            }
            Err(e) => errs.add(e),
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
        errs.into_result().map_err(|e| e.context(format!("GC of network {}", self.network)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::Attachment;
    use crate::error::codes;

    fn record(store: &AttachmentStore, cid: &str) {
        store
            .save(&Attachment {
                network: "tailnet".into(),
                container_id: cid.into(),
                ifname: "eth0".into(),
                netns: String::new(),
                bridge: "cni0".into(),
                host_veth: format!("pntail{cid}"),
                tag: String::new(),
                result: serde_json::json!({}),
            })
            .unwrap();
    }

    /// A tail whose address release fails (and whose veth is already gone).
    fn failing_tail(store_dir: &Path, cid: &str) -> DelTail {
        let tail = AttachmentTail {
            host_veth: format!("pntail{cid}"),
            netns: None,
            container_id: cid.into(),
            ifname: "eth0".into(),
            fw_open: None,
            host_local: Err(CniError::new(codes::IO_FAILURE, "IPAM store unusable")),
            store: AttachmentStore::new(Some(store_dir), "tailnet"),
        };
        DelTail(vec![(format!("DEL {cid}/eth0 on network tailnet"), tail)])
    }

    #[test]
    #[ignore = "needs root"]
    fn a_tail_run_after_the_reply_keeps_the_record_when_a_step_fails() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "root test run without root");
        let dir = std::env::temp_dir().join(format!("podnet-deltail-{}", std::process::id()));
        let ns = NetNs::create("deltail", Some(&dir.join("ns"))).unwrap();
        let ns_path = ns.path().to_path_buf();
        let state = dir.join("state");
        let store = AttachmentStore::new(Some(&state), "tailnet");
        record(&store, "a");
        record(&store, "b");
        // In a namespace of the test's own: the veth deletions find nothing.
        let (after_reply, now) = ns
            .run({
                let state = state.clone();
                move || (failing_tail(&state, "a").run(), failing_tail(&state, "b").run_now())
            })
            .unwrap();
        let e = after_reply.unwrap_err();
        assert!(e.msg.starts_with("DEL a/eth0 on network tailnet: IPAM store unusable"), "{e}");
        assert!(store.load("a", "eth0").unwrap().is_some(), "run() must keep the record for a later DEL or GC");
        assert!(now.unwrap_err().msg.contains("DEL b/eth0"));
        assert!(store.load("b", "eth0").unwrap().is_none(), "run_now() removes the record anyway");
        // Several DELs: one error naming each that failed; an empty tail is fine.
        let mut both = failing_tail(&state, "a");
        both.append(failing_tail(&state, "c"));
        assert!(!both.is_empty());
        let e = ns.run(move || both.run()).unwrap().unwrap_err();
        assert!(e.msg.contains("DEL a/eth0") && e.msg.contains("DEL c/eth0"), "{e}");
        DelTail::default().run().unwrap();
        drop(ns);
        podnet_netns::delete(&ns_path).unwrap();
        let c = std::ffi::CString::new(dir.join("ns").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: undoes the bind mount NetNs::create made on the test's own directory.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&dir);
    }
}
