//! The bundle as the shim sees it: the parts of config.json it reads before the runtime reads
//! it all ([`BundleSpec`]), the pod a container belongs to ([`group_of`]), and the record the
//! shim leaves in each bundle for a `delete` run after it is gone ([`BundleRecord`]).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::network::NetRecord;

pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANN_RUNC_GROUP: &str = "io.containerd.runc.v2.group";
/// podnet's own pod annotation: containers naming the same pod share one shim and the first
/// one's namespaces.
pub const ANN_POD: &str = "podnet.io/pod";
/// What the shim records in each bundle, for `delete` after the shim is gone.
pub const BUNDLE_RECORD: &str = "podnet.json";

/// The pod-grouping key of a bundle's annotations (None: the container is its own pod).
pub fn group_of(annotations: &serde_json::Map<String, Value>) -> Option<String> {
    [ANN_SANDBOX_ID, ANN_RUNC_GROUP, ANN_POD]
        .iter()
        .find_map(|k| annotations.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from))
}

/// The parts of a bundle's config.json the shim looks at before the runtime reads it all.
pub struct BundleSpec {
    pub annotations: serde_json::Map<String, Value>,
    /// (namespace type, has a path) for each namespace the spec lists.
    pub namespaces: Vec<(String, bool)>,
    /// `root.path` (relative to the bundle unless absolute) and `process.args[0]`.
    pub root: Option<String>,
    pub program: Option<String>,
}

impl BundleSpec {
    pub fn read(bundle: &Path) -> Result<BundleSpec> {
        let file = bundle.join("config.json");
        let bytes = std::fs::read(&file).map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: invalid JSON: {e}", file.display())))?;
        let annotations = v.get("annotations").and_then(Value::as_object).cloned().unwrap_or_default();
        let namespaces = v
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        let t = n.get("type")?.as_str()?.to_string();
                        let has_path = n.get("path").and_then(Value::as_str).is_some_and(|p| !p.is_empty());
                        Some((t, has_path))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let string = |p: &str| v.pointer(p).and_then(Value::as_str).map(String::from);
        Ok(BundleSpec { annotations, namespaces, root: string("/root/path"), program: string("/process/args/0") })
    }

    /// Whether the process's program is missing from the container's root (a pod sandbox
    /// created without the pause image's rootfs): then the shim runs its own pause.
    pub fn program_missing(&self, bundle: &Path) -> bool {
        let (Some(root), Some(program)) = (&self.root, &self.program) else { return false };
        let root = bundle.join(root);
        // A bare name would be looked up in PATH: only absolute paths are checked.
        program.starts_with('/') && root.join(program.trim_start_matches('/')).symlink_metadata().is_err()
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).and_then(Value::as_str)
    }

    /// Whether the spec asks for a new namespace of `kind` (listed, without a path).
    pub fn wants_new(&self, kind: &str) -> bool {
        self.namespaces.iter().any(|(t, p)| t == kind && !p)
    }
}

/// The record in each bundle: where the runtime keeps the container, and the pod's network.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BundleRecord {
    pub runtime_root: PathBuf,
    pub network: Option<NetRecord>,
}

impl BundleRecord {
    pub fn write(&self, bundle: &Path) -> Result<()> {
        let path = bundle.join(BUNDLE_RECORD);
        let bytes =
            serde_json::to_vec(self).map_err(|e| Error::Internal(format!("encoding {}: {e}", path.display())))?;
        std::fs::write(&path, bytes).map_err(|e| Error::io(path.display().to_string(), e))
    }
    /// None: the bundle has no record (the shim set nothing up for it). A record that cannot
    /// be read is an error naming it, never "nothing there": the pod may still hold a network.
    pub fn read(bundle: &Path) -> Result<Option<BundleRecord>> {
        let path = bundle.join(BUNDLE_RECORD);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("bundle record {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("bundle record {}: corrupt: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_shim::tests::Scratch;

    #[test]
    fn a_corrupt_or_unreadable_bundle_record_is_an_error_naming_it() {
        let dir = Scratch::new("bundle-record");
        let path = dir.0.join(BUNDLE_RECORD);
        assert!(BundleRecord::read(&dir.0).unwrap().is_none(), "no record: nothing was set up");
        BundleRecord { runtime_root: "/r".into(), network: None }.write(&dir.0).unwrap();
        assert_eq!(BundleRecord::read(&dir.0).unwrap().unwrap().runtime_root, Path::new("/r"));
        std::fs::write(&path, b"{\"runtime_root\": ").unwrap();
        let e = BundleRecord::read(&dir.0).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("corrupt"), "{e}");
        // A directory where the record should be: unreadable, not absent.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let e = BundleRecord::read(&dir.0).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
}
