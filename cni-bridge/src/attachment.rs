//! Attachment records: what one ADD set up, persisted so that DEL, CHECK and GC can undo or
//! verify it without the pod's namespace (containerd sends DEL with CNI_NETNS empty).
//! One small JSON file per attachment, written atomically (temp file + rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CniError, Result};
use crate::names::{fnv1a, AttachmentId};

/// Default directory for attachment records (`stateDir` in the plugin conf overrides it).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podnet/attachments";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub netns: String,
    pub bridge: String,
    pub host_veth: String,
    pub tag: String,
    /// The CNI result of the ADD, in the 1.1 shape.
    pub result: serde_json::Value,
}

impl Attachment {
    pub fn id(&self) -> AttachmentId {
        AttachmentId::new(&self.network, &self.container_id, &self.ifname)
    }
}

/// The records of one network: `<state dir>/<network>/<container id>-<ifname>.json`.
pub struct AttachmentStore {
    dir: PathBuf,
}

impl AttachmentStore {
    pub fn new(state_dir: Option<&Path>, network: &str) -> Self {
        let base = state_dir.unwrap_or(Path::new(DEFAULT_STATE_DIR));
        // Network names are free text; keep the directory name safe and unique.
        let safe: String =
            network.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        let dir_name = if safe == network && network != "." && network != ".." {
            safe
        } else {
            format!("{safe}-{:08x}", fnv1a(&[network]) as u32)
        };
        AttachmentStore { dir: base.join(dir_name) }
    }

    /// `<id>:<ifname>.json`: a container id never contains ':' (CNI allows
    /// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`), so the name splits back unambiguously.
    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}:{ifname}.json"))
    }

    /// Takes the network's GC lock: shared for an ADD, exclusive for GC, so GC never
    /// collects an attachment that is still being set up. Released when the file drops.
    pub fn lock(&self, exclusive: bool) -> Result<std::fs::File> {
        let path = self.dir.join(".lock");
        let what = || format!("lock {}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| CniError::io(what(), e))?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io(what(), e))?;
        let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), op) } == 0 {
                return Ok(f);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(CniError::io(what(), e));
            }
        }
    }

    pub fn save(&self, a: &Attachment) -> Result<()> {
        let path = self.path(&a.container_id, &a.ifname);
        let what = || format!("write attachment record {}", path.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| CniError::io(what(), e))?;
        let tmp = self.dir.join(format!(".{}-{}.tmp", a.container_id, a.ifname));
        let bytes = serde_json::to_vec(a).map_err(|e| CniError::internal(what(), e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| CniError::io(what(), e))?;
        f.write_all(&bytes).map_err(|e| CniError::io(what(), e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CniError::io(what(), e)
        })
    }

    pub fn load(&self, container_id: &str, ifname: &str) -> Result<Option<Attachment>> {
        let path = self.path(container_id, ifname);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| CniError::io(format!("read attachment record {}", path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io(format!("read attachment record {}", path.display()), e)),
        }
    }

    /// Removes a record; Ok when it was already gone.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(format!("remove attachment record {}", path.display()), e)),
        }
    }

    /// Every record of the network (GC only), keyed by the (container id, ifname) its file
    /// name gives, so that an unreadable record can still be collected.
    pub fn list(&self) -> Result<Vec<(String, String, Result<Attachment>)>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CniError::io(format!("list attachment records in {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some((cid, ifname)) = name.strip_suffix(".json").and_then(|n| n.split_once(':')) else { continue };
            let p = ent.path();
            let rec = std::fs::read(&p)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|e| CniError::io(format!("read attachment record {}", p.display()), e));
            out.push((cid.to_owned(), ifname.to_owned(), rec));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove_list() {
        let dir = std::env::temp_dir().join(format!("podnet-att-{}", std::process::id()));
        let store = AttachmentStore::new(Some(&dir), "net/with slash");
        let a = Attachment {
            network: "net/with slash".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            bridge: "cni0".into(),
            host_veth: "pn0".into(),
            tag: "t".into(),
            result: serde_json::json!({"cniVersion": "1.1.0"}),
        };
        assert_eq!(store.load("c1", "eth0").unwrap(), None);
        store.save(&a).unwrap();
        assert_eq!(store.load("c1", "eth0").unwrap(), Some(a.clone()));
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0.as_str(), listed[0].1.as_str()), ("c1", "eth0"));
        assert_eq!(listed[0].2.as_ref().unwrap(), &a);
        let _shared = store.lock(false).unwrap();
        let _shared2 = store.lock(false).unwrap();
        store.remove("c1", "eth0").unwrap();
        store.remove("c1", "eth0").unwrap();
        assert!(store.list().unwrap().is_empty());
        // A torn record is still listed under its attachment's name.
        std::fs::write(store.dir.join("c2:net1.json"), b"{").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].0.as_str(), listed[0].1.as_str()), ("c2", "net1"));
        assert!(listed[0].2.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
