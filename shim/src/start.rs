//! The shim v2 subcommands containerd runs: `start` (find or spawn the pod's shim, print its
//! address) and `delete` (clean up after a shim that is gone).
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim_protos::shim::shim::DeleteResponse;
use protobuf::Message;

use crate::bundle::{group_of, BundleRecord, BundleSpec, BUNDLE_RECORD};
use crate::config::{Config, Flags};
use crate::error::{Error, Errors, Result};
use crate::pod_shim::{ensure_shim, socket_address, try_remove_dead_socket};
use crate::{mount, network};

fn bundle_dir(flags: &Flags) -> Result<PathBuf> {
    if !flags.bundle.is_empty() {
        return Ok(PathBuf::from(&flags.bundle));
    }
    std::env::current_dir().map_err(|e| Error::io("current directory (the bundle)", e))
}

/// The bootstrap reply containerd parses (version 2: the task v2 API over ttrpc; 1.7 reads it
/// too).
pub fn bootstrap_json(address: &str) -> String {
    serde_json::json!({"version": 2, "address": address, "protocol": "ttrpc"}).to_string()
}

/// `start`: returns the address to print.
pub fn start(flags: &Flags) -> Result<String> {
    if flags.id.is_empty() || flags.namespace.is_empty() {
        return Err(Error::Invalid("start needs -id and -namespace".into()));
    }
    let bundle = bundle_dir(flags)?;
    let spec = BundleSpec::read(&bundle)?;
    let group = group_of(&spec.annotations).unwrap_or_else(|| flags.id.clone());
    let shim = ensure_shim(flags, &group, &bundle, &[])?;
    let f = bundle.join("address");
    std::fs::write(&f, &shim.address).map_err(|e| Error::io(f.display().to_string(), e))?;
    if let Some(pid) = shim.pid {
        let _ = std::fs::write(bundle.join("shim.pid"), pid.to_string());
    }
    Ok(shim.address)
}

/// `delete`: what containerd runs when the shim is gone. Kills what is left of the container,
/// unmounts its rootfs and releases the pod network; reports every failure. A bundle record
/// that cannot be read is one of them, and does not stop the rest: the container and the
/// network are then looked for where podnet's config puts them.
pub fn delete(flags: &Flags) -> Result<DeleteResponse> {
    if flags.id.is_empty() {
        return Err(Error::Invalid("delete needs -id".into()));
    }
    let bundle = bundle_dir(flags)?;
    let mut errs = Errors::new();
    let (record, lost) = match BundleRecord::read(&bundle) {
        Ok(r) => (r, false),
        Err(e) => {
            errs.add(e);
            (None, true)
        }
    };
    let (root, cfg) = match &record {
        Some(r) => (r.runtime_root.clone(), None),
        None => {
            let cfg = Config::load(None).unwrap_or_else(|e| {
                errs.add(Error::Invalid(format!("{e} (looking under the default paths instead)")));
                Config::default()
            });
            (cfg.state_dir.join("runtime").join(&flags.namespace), Some(cfg))
        }
    };
    if root.exists() {
        match podnet_runtime::Runtime::new(&root) {
            Ok(rt) => {
                errs.push(rt.cleanup(&flags.id).map_err(Error::from));
            }
            Err(e) => errs.add(e.into()),
        }
    }
    mount::unmount(&bundle.join("rootfs"));
    let spec = BundleSpec::read(&bundle);
    // The dead shim's socket: nothing answers there any more (a live one is left alone).
    if let Ok(spec) = &spec {
        let group = group_of(&spec.annotations).unwrap_or_else(|| flags.id.clone());
        let path = crate::ttrpc::socket_path(&socket_address(&flags.address, &flags.namespace, &group));
        errs.push(try_remove_dead_socket(&path));
    }
    match (&record, cfg) {
        (Some(rec), _) => {
            if let Some(net) = &rec.network {
                errs.push(network::teardown(net).map_err(|e| e.context("releasing the pod network")));
            }
        }
        // Only a container that asked for a network namespace of its own can have had its
        // network from the shim (an unreadable spec could have asked for anything).
        (None, Some(cfg)) if lost && spec.as_ref().map_or(true, |s| s.wants_new("network")) => {
            errs.push(
                network::teardown_unrecorded(&cfg, &flags.namespace, &flags.id)
                    .map_err(|e| e.context("releasing the pod network without its record")),
            );
        }
        (None, _) => {}
    }
    // A record that could not be read stays, for whoever looks into why.
    if errs.is_empty() && record.is_some() {
        let path = bundle.join(BUNDLE_RECORD);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errs.add(Error::io(format!("removing {}", path.display()), e)),
        }
    }
    let mut resp = DeleteResponse::new();
    resp.exit_status = (128 + libc::SIGKILL) as u32;
    resp.exited_at = Some(SystemTime::now().into()).into();
    errs.into_result().map(|()| resp)
}

pub fn write_delete_response(resp: &DeleteResponse) -> std::io::Result<()> {
    let bytes = resp.write_to_bytes().map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_is_version_2_ttrpc() {
        let v: serde_json::Value = serde_json::from_str(&bootstrap_json("unix:///x")).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["protocol"], "ttrpc");
        assert_eq!(v["address"], "unix:///x");
    }
}
