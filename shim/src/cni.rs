//! The `podnet` CNI plugin of the CRI lifecycle: the hand-off between containerd's CRI, which
//! calls CNI before any shim exists, and the pod's shim, which owns the pod's network.
//!
//! containerd exec's this binary (installed as the CNI plugin `podnet`) with the handler's
//! conflist. When the plugin's config has a `containerd` object (`address`, `namespace`,
//! optional `ttrpcAddress`), the call is handed to the pod's shim: the one `start` reaches for
//! the sandbox (CNI_CONTAINERID is the sandbox id, which is the pod's grouping key), found or
//! spawned through the same [`pod_shim::ensure_shim`] path. The shim runs the CNI engine
//! in-process over the podnet ttrpc service [`SERVICE`] and keeps the attachment; the plugin
//! prints the shim's answer. DEL and CHECK go to the shim when it is alive, and are run by the
//! plugin itself from the persisted attachment record when it is not. GC deletes the stale
//! attachments their live shims hold through those shims, then collects the rest in-process.
//! Without a `containerd` object the plugin is a plain CNI plugin running the engine itself.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_bridge::attachment::AttachmentStore;
use cni_bridge::config::{PluginInput, LATEST_VERSION};
use cni_bridge::engine::DelTail;
use cni_bridge::error::codes;
use cni_bridge::CniError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Flags;
use crate::error::{Error, Result};
use crate::pod_shim;
use crate::ttrpc::{socket_path, Client};

/// The shim's network service.
pub const SERVICE: &str = "podnet.v1.Network";
/// The config key that asks for the hand-off.
pub const HANDOFF_KEY: &str = "containerd";
/// The CNI variables an invocation carries.
const CNI_VARS: [&str; 6] = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"];
/// A call to the shim: the engine's work takes milliseconds, but the shim may be busy creating
/// a container first.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One plugin invocation, as the shim runs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invocation {
    /// The CNI_* variables.
    pub env: BTreeMap<String, String>,
    /// The config from stdin.
    pub stdin: String,
}

/// What the plugin prints and exits with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

impl Invocation {
    pub fn command(&self) -> &str {
        self.env.get("CNI_COMMAND").map(String::as_str).unwrap_or("")
    }
    fn var(&self, k: &str) -> &str {
        self.env.get(k).map(String::as_str).unwrap_or("")
    }
    /// The attachment it is about: (container id, ifname).
    pub fn attachment(&self) -> (String, String) {
        (self.var("CNI_CONTAINERID").to_string(), self.var("CNI_IFNAME").to_string())
    }
    /// Runs it with the CNI engine in this process.
    pub fn run_here(&self) -> Outcome {
        let mut out = Vec::new();
        let exit_code = cni_bridge::plugin::run(self.stdin.as_bytes(), |k| self.env.get(k).cloned(), &mut out);
        Outcome { exit_code, stdout: String::from_utf8_lossy(&out).into_owned() }
    }
    /// Runs it here, a DEL's links, addresses and record handed back to finish after the reply.
    fn run_here_deferred(&self) -> (Outcome, DelTail) {
        let mut out = Vec::new();
        let (exit_code, tail) =
            cni_bridge::plugin::run_deferred(self.stdin.as_bytes(), |k| self.env.get(k).cloned(), &mut out);
        (Outcome { exit_code, stdout: String::from_utf8_lossy(&out).into_owned() }, tail)
    }
    /// The ttrpc method for its command.
    fn method(&self) -> Option<&'static str> {
        match self.command() {
            "ADD" => Some("Add"),
            "DEL" => Some("Del"),
            "CHECK" => Some("Check"),
            _ => None,
        }
    }
}

/// Where the pod shims of the conflist's containerd live.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    pub address: String,
    pub ttrpc_address: String,
    pub namespace: String,
}

impl Handoff {
    /// The `containerd` object of a plugin config, if it has one.
    pub fn from_config(conf: &Value) -> Result<Option<Handoff>, CniError> {
        let Some(h) = conf.get(HANDOFF_KEY) else { return Ok(None) };
        let obj = h.as_object().ok_or_else(|| CniError::invalid_config(HANDOFF_KEY, "must be an object"))?;
        let field = |k: &str, required: bool| -> Result<Option<String>, CniError> {
            match obj.get(k) {
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(Value::String(_)) | None if !required => Ok(None),
                Some(Value::String(_)) | None => {
                    Err(CniError::invalid_config(&format!("{HANDOFF_KEY}.{k}"), "is required (a non-empty string)"))
                }
                Some(other) => Err(CniError::invalid_config(
                    &format!("{HANDOFF_KEY}.{k}"),
                    format!("must be a string, not {other}"),
                )),
            }
        };
        let address = field("address", true)?.unwrap_or_default();
        let namespace = field("namespace", true)?.unwrap_or_default();
        let ttrpc_address = field("ttrpcAddress", false)?.unwrap_or_else(|| format!("{address}.ttrpc"));
        Ok(Some(Handoff { address, ttrpc_address, namespace }))
    }

    /// The shim's flags for pod `id`, as containerd would give them.
    fn flags(&self, id: &str) -> Flags {
        Flags {
            namespace: self.namespace.clone(),
            id: id.to_string(),
            address: self.address.clone(),
            ..Flags::default()
        }
    }

    /// The socket of pod `id`'s shim.
    pub fn socket(&self, id: &str) -> PathBuf {
        socket_path(&pod_shim::socket_address(&self.address, &self.namespace, id))
    }

    /// Sends `inv` to the shim of pod `id`, spawning it first if `spawn` and it is not running.
    /// Err: the shim could not be reached (or spawned).
    pub fn call(&self, id: &str, inv: &Invocation, spawn: bool) -> Result<Outcome> {
        let method =
            inv.method().ok_or_else(|| Error::Invalid(format!("{} is not handed to the shim", inv.command())))?;
        let path = if spawn {
            let env = [("TTRPC_ADDRESS".to_string(), self.ttrpc_address.clone())];
            let shim = pod_shim::ensure_shim(&self.flags(id), id, Path::new(pod_shim::SOCKET_DIR), &env)?;
            socket_path(&shim.address)
        } else {
            self.socket(id)
        };
        let mut client =
            Client::connect(&path).map_err(|e| Error::io(format!("connecting to {}", path.display()), e))?;
        let payload = serde_json::to_vec(inv).map_err(|e| Error::Internal(format!("encoding the request: {e}")))?;
        let reply = client
            .call_raw(SERVICE, method, payload, Some(CALL_TIMEOUT))
            .map_err(|e| Error::Internal(format!("{} at {}: {}", SERVICE, path.display(), e.message)))?;
        serde_json::from_slice(&reply).map_err(|e| Error::Internal(format!("decoding the shim's reply: {e}")))
    }
}

/// The shim side: runs a handed-off invocation with the engine; returns it (for the attachment
/// it names) with its outcome, and what of a DEL is left to run after the reply.
pub fn serve(method: &str, payload: &[u8]) -> Result<(Invocation, Outcome, DelTail)> {
    let inv: Invocation = serde_json::from_slice(payload)
        .map_err(|e| Error::Invalid(format!("{SERVICE}/{method}: malformed request: {e}")))?;
    if inv.method() != Some(method) {
        return Err(Error::Invalid(format!("{SERVICE}/{method}: CNI_COMMAND is {:?}", inv.command())));
    }
    let (outcome, tail) = inv.run_here_deferred();
    Ok((inv, outcome, tail))
}

/// The plugin's entry (CNI_COMMAND is set): config on stdin, the result on stdout.
pub fn plugin_main() -> i32 {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        return emit(&Outcome::error(LATEST_VERSION, &CniError::io("read the network configuration from stdin", e)));
    }
    let env: BTreeMap<String, String> =
        CNI_VARS.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    let inv = Invocation { env, stdin: String::from_utf8_lossy(&stdin).into_owned() };
    emit(&invoke(&inv))
}

fn emit(o: &Outcome) -> i32 {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(o.stdout.as_bytes());
    let _ = out.flush();
    o.exit_code
}

impl Outcome {
    fn error(version: &str, e: &CniError) -> Outcome {
        Outcome { exit_code: 1, stdout: e.to_json(version).to_string() }
    }
}

/// One invocation: handed to the pod's shim when the config asks for it, else run here.
pub fn invoke(inv: &Invocation) -> Outcome {
    let conf: Option<Value> = serde_json::from_str(&inv.stdin).ok();
    let version =
        conf.as_ref().and_then(|c| c.get("cniVersion").and_then(Value::as_str)).unwrap_or(LATEST_VERSION).to_string();
    let handoff = match conf.as_ref().map(Handoff::from_config).transpose() {
        Ok(h) => h.flatten(),
        Err(e) => return Outcome::error(&version, &e),
    };
    let Some(h) = handoff else { return inv.run_here() };
    let (id, _) = inv.attachment();
    if id.is_empty() {
        // No pod to hand it to: the engine reports the missing CNI_CONTAINERID (code 4).
        return inv.run_here();
    }
    match inv.command() {
        "ADD" => match h.call(&id, inv, true) {
            Ok(o) => o,
            Err(e) => Outcome::error(
                &version,
                &CniError::new(codes::TRY_AGAIN, format!("podnet: handing ADD of {id:?} to the pod's shim: {e}")),
            ),
        },
        // The shim holds the attachment while it runs; once it is gone, the persisted record
        // is enough to undo or check it here.
        "DEL" | "CHECK" => match h.call(&id, inv, false) {
            Ok(o) => o,
            Err(_) => {
                if inv.command() == "DEL" {
                    // The DEL itself can still succeed: this goes to containerd's log (it
                    // passes a plugin's stderr on), not into the CNI result.
                    if let Err(e) = pod_shim::try_remove_dead_socket(&h.socket(&id)) {
                        eprintln!("podnet: DEL of {id:?}: {e}");
                    }
                }
                inv.run_here()
            }
        },
        "GC" => gc(&h, inv),
        _ => inv.run_here(),
    }
}

/// GC: stale attachments whose shims are alive are deleted by those shims (which then exit
/// when they hold nothing else), then the engine collects what is left (and reports a bad
/// config). Records that could not be listed are an error even when the engine's own GC
/// passes: their shims were never asked.
fn gc(h: &Handoff, inv: &Invocation) -> Outcome {
    let unlisted = PluginInput::parse(inv.stdin.as_bytes())
        .ok()
        .and_then(|input| hand_stale_to_shims(h, inv, &input).err().map(|e| (input.cni_version, e)));
    let outcome = inv.run_here();
    match unlisted {
        Some((version, e)) if outcome.exit_code == 0 => Outcome::error(&version, &e),
        _ => outcome,
    }
}

/// Asks each live pod shim that holds an attachment of the network not in the valid list to
/// DEL it.
fn hand_stale_to_shims(h: &Handoff, inv: &Invocation, input: &PluginInput) -> Result<(), CniError> {
    let valid = input.valid_attachments.as_deref().unwrap_or(&[]);
    let state_dir = input.raw.get("stateDir").and_then(Value::as_str).map(Path::new);
    for (cid, ifname, _) in AttachmentStore::new(state_dir, &input.name).list()? {
        if valid.iter().any(|(c, i)| *c == cid && *i == ifname) || !h.socket(&cid).exists() {
            continue;
        }
        let mut env = inv.env.clone();
        env.insert("CNI_COMMAND".into(), "DEL".into());
        env.insert("CNI_CONTAINERID".into(), cid.clone());
        env.insert("CNI_IFNAME".into(), ifname.clone());
        env.insert("CNI_NETNS".into(), String::new());
        let del = Invocation { env, stdin: inv.stdin.clone() };
        // Not reachable or failed: the engine's GC removes it.
        if h.call(&cid, &del, false).is_ok_and(|o| o.exit_code == 0) {
            tracing::info!(container = %cid, "GC: the pod's shim released a stale attachment");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handoff_settings() {
        assert_eq!(Handoff::from_config(&json!({"type": "podnet"})).unwrap(), None);
        let h = Handoff::from_config(&json!({"containerd": {"address": "/run/c.sock", "namespace": "k8s.io"}}))
            .unwrap()
            .unwrap();
        assert_eq!(h.ttrpc_address, "/run/c.sock.ttrpc");
        assert_eq!(h.socket("pod1"), socket_path(&pod_shim::socket_address("/run/c.sock", "k8s.io", "pod1")));
        let h = Handoff::from_config(&json!({"containerd": {"address": "a", "namespace": "n", "ttrpcAddress": "t"}}))
            .unwrap()
            .unwrap();
        assert_eq!(h.ttrpc_address, "t");
        for (bad, needle) in [
            (json!({"containerd": "x"}), "containerd"),
            (json!({"containerd": {"namespace": "n"}}), "containerd.address"),
            (json!({"containerd": {"address": "a", "namespace": ""}}), "containerd.namespace"),
            (json!({"containerd": {"address": 3, "namespace": "n"}}), "containerd.address"),
        ] {
            let e = Handoff::from_config(&bad).unwrap_err();
            assert_eq!(e.code, codes::INVALID_CONFIG);
            assert!(e.msg.contains(needle) || e.details.contains(needle), "{bad}: {e:?}");
        }
    }

    #[test]
    fn a_bad_handoff_object_is_a_cni_error() {
        let inv = Invocation {
            env: [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stdin: json!({"cniVersion": "1.0.0", "name": "n", "type": "podnet", "containerd": {"address": "a"}})
                .to_string(),
        };
        let o = invoke(&inv);
        assert_eq!(o.exit_code, 1);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn no_container_id_is_the_engines_error_not_a_spawn() {
        let inv = Invocation {
            env: [("CNI_COMMAND".to_string(), "ADD".to_string()), ("CNI_IFNAME".to_string(), "eth0".to_string())].into(),
            stdin: json!({"cniVersion": "1.1.0", "name": "n", "type": "podnet", "containerd": {"address": "/nonexistent/c.sock", "namespace": "k8s.io"}})
                .to_string(),
        };
        let o = invoke(&inv);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!((o.exit_code, v["code"].as_u64()), (1, Some(4)), "{}", o.stdout);
        assert!(o.stdout.contains("CNI_CONTAINERID"), "{}", o.stdout);
    }

    #[test]
    fn gc_reports_attachment_records_it_cannot_list() {
        let dir = std::env::temp_dir().join(format!("podnet-cni-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A file where the state directory should be: `<stateDir>/<network>` cannot be listed.
        let state_dir = dir.join("state");
        std::fs::write(&state_dir, b"").unwrap();
        let conf = json!({
            "cniVersion": "1.1.0", "name": "gcnet", "type": "podnet", "stateDir": state_dir,
            "containerd": {"address": "/nonexistent/c.sock", "namespace": "k8s.io"},
            "cni.dev/valid-attachments": [],
        });
        let input = PluginInput::parse(conf.to_string().as_bytes()).unwrap();
        let h = Handoff::from_config(&conf).unwrap().unwrap();
        let inv = Invocation { env: [("CNI_COMMAND".to_string(), "GC".to_string())].into(), stdin: conf.to_string() };
        let e = hand_stale_to_shims(&h, &inv, &input).unwrap_err();
        assert!(e.msg.contains(&state_dir.join("gcnet").display().to_string()), "{e:?}");
        // An empty network (no directory yet) has nothing to hand over.
        std::fs::remove_file(&state_dir).unwrap();
        hand_stale_to_shims(&h, &inv, &input).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shim_refuses_a_method_that_does_not_match_the_command() {
        let inv = Invocation { env: [("CNI_COMMAND".to_string(), "DEL".to_string())].into(), stdin: "{}".into() };
        let e = serve("Add", &serde_json::to_vec(&inv).unwrap()).unwrap_err();
        assert!(e.to_string().contains("CNI_COMMAND"), "{e:?}");
        assert!(serve("Add", b"nope").unwrap_err().to_string().contains("malformed"));
    }
}
