//! The engine's entry points, dispatch only: one plugin step by type (what an exec'd plugin
//! runs), and ADD / DEL of a whole network configuration in-process, in the order libcni
//! would exec its plugins (ADD forward, DEL reverse; the shim's standalone pods). CHECK, GC
//! and STATUS run per plugin step: the runtimes that call them exec the plugin.

use serde_json::{Map, Value};

use crate::args::Command;
pub use crate::args::Request;
pub use crate::bridge::del::DelTail;
use crate::bridge::BridgePlugin;
use crate::config::{NetworkConfig, PluginInput};
use crate::error::{codes, CniError, ErrorList, Result};
use crate::result::CniResult;
use crate::{loopback, portmap};

/// Plugin types the engine runs. `podnet` is bridge + host-local + portmap in one step.
pub const PLUGIN_TYPES: &[&str] = &["podnet", "bridge", "portmap", "loopback"];

fn unknown_type(t: &str) -> CniError {
    CniError::invalid_config("type", format!("unknown plugin type {t:?}: podnet runs {}", PLUGIN_TYPES.join(", ")))
}

/// Validates a plugin's configuration without touching the system.
pub fn validate(input: &PluginInput) -> Result<()> {
    match input.plugin_type.as_str() {
        "podnet" => BridgePlugin::from_input(input).and_then(|_| portmap::check_options(&input.raw)),
        "bridge" => BridgePlugin::from_input(input).map(drop),
        "portmap" => portmap::check_options(&input.raw),
        "loopback" => Ok(()),
        t => Err(unknown_type(t)),
    }
}

/// Runs one plugin step, as an exec'd plugin would. ADD returns the result; the other
/// commands return `None` on success.
/// DEL finishes before it returns (see [`del_plugin`] for one that hands its tail back).
pub fn run_plugin(cmd: Command, input: &PluginInput, req: &Request<'_>) -> Result<Option<CniResult>> {
    if cmd == Command::Del {
        return del_plugin(input, req)?.run_now().map(|()| None);
    }
    let t = input.plugin_type.as_str();
    match (t, cmd) {
        ("podnet" | "bridge", _) => {
            let p = BridgePlugin::from_input(input)?;
            match cmd {
                Command::Add => {
                    if t == "podnet" {
                        portmap::check_options(&input.raw)?;
                    }
                    p.add(input, req, t == "podnet").map(Some)
                }
                Command::Check => p.check(input, req).map(|()| None),
                Command::Gc => p.gc(&valid_attachments(input)?).map(|()| None),
                Command::Status => p.status().map(|()| None),
                Command::Del | Command::Version => Ok(None),
            }
        }
        ("portmap", Command::Add) => portmap::add(input, req).map(Some),
        ("portmap", Command::Check) => portmap::check(input, req).map(|()| None),
        ("portmap", Command::Gc) => portmap::gc(input, &valid_attachments(input)?).map(|()| None),
        ("loopback", Command::Add) => loopback::add(input, req).map(Some),
        ("loopback", Command::Check) => loopback::check(req).map(|()| None),
        ("portmap" | "loopback", _) => Ok(None),
        (t, _) => Err(unknown_type(t)),
    }
}

/// DEL of one plugin step. The bridge's links, addresses and record are handed back once its
/// rules are gone, for the caller to finish ([`DelTail`]); a DEL that failed has finished.
pub fn del_plugin(input: &PluginInput, req: &Request<'_>) -> Result<DelTail> {
    match input.plugin_type.as_str() {
        "podnet" | "bridge" => BridgePlugin::from_input(input)?.del(req),
        "portmap" => portmap::del(input, req).map(|()| DelTail::default()),
        "loopback" => loopback::del(req).map(|()| DelTail::default()),
        t => Err(unknown_type(t)),
    }
}

fn valid_attachments(input: &PluginInput) -> Result<Vec<(String, String)>> {
    input
        .valid_attachments
        .clone()
        .ok_or_else(|| CniError::invalid_config("cni.dev/valid-attachments", "required for GC"))
}

fn plugin_input(net: &NetworkConfig, i: usize, prev: Option<&Value>, rc: &Map<String, Value>) -> Result<PluginInput> {
    let stdin = net.plugins[i].stdin_for(net, prev, rc);
    let bytes = serde_json::to_vec(&stdin).map_err(|e| CniError::internal("encode plugin config", e))?;
    PluginInput::parse(&bytes).map_err(|e| e.context(format!("plugins[{i}]")))
}

/// Validates every plugin of a network configuration.
fn validate_network(net: &NetworkConfig) -> Result<()> {
    for i in 0..net.plugins.len() {
        validate(&plugin_input(net, i, None, &Map::new())?).map_err(|e| e.context(format!("plugins[{i}]")))?;
    }
    Ok(())
}

/// ADD of a whole network configuration; on failure, the steps already done are deleted.
pub fn add_network(net: &NetworkConfig, req: &Request<'_>, runtime_config: &Map<String, Value>) -> Result<CniResult> {
    validate_network(net)?;
    let mut prev: Option<Value> = None;
    for i in 0..net.plugins.len() {
        let step = plugin_input(net, i, prev.as_ref(), runtime_config)
            .and_then(|input| run_plugin(Command::Add, &input, req).map(|r| (r, input)));
        match step {
            Ok((Some(r), input)) => prev = Some(r.to_json(&input.cni_version)?),
            Ok((None, _)) => {}
            Err(e) => {
                // The failed step undid its own work; DEL the steps before it, as libcni's
                // caller would.
                let chain = Chain { net, req, runtime_config };
                let undo = chain.del(prev.as_ref(), i, false).and_then(DelTail::run_now);
                return Err(match undo {
                    Ok(()) => e,
                    Err(u) => e.with_details(format!("cleanup after the failed ADD also failed: {u}")),
                });
            }
        }
    }
    let prev = prev.ok_or_else(|| CniError::new(codes::INTERNAL, "the network configuration produced no result"))?;
    CniResult::from_json(&prev)
}

/// A network configuration run in-process for one attachment: what each plugin step reads.
struct Chain<'a> {
    net: &'a NetworkConfig,
    req: &'a Request<'a>,
    runtime_config: &'a Map<String, Value>,
}

impl Chain<'_> {
    /// DEL of the plugins before `upto`, in reverse order; every plugin runs even if one
    /// fails. Without `defer`, each DEL finishes before the next, as exec'd plugins would;
    /// with it, the bridge's tails are handed back in order, unless a DEL failed: then they
    /// run now, and the error (which the caller reports) covers them.
    fn del(&self, prev: Option<&Value>, upto: usize, defer: bool) -> Result<DelTail> {
        let mut errs = ErrorList::default();
        let mut tails = DelTail::default();
        for i in (0..upto).rev() {
            let del =
                plugin_input(self.net, i, prev, self.runtime_config).and_then(|input| del_plugin(&input, self.req));
            match del {
                Ok(tail) if defer => tails.append(tail),
                Ok(tail) => errs.push(tail.run_now()),
                Err(e) => errs.add(e),
            }
        }
        if errs.is_empty() {
            return Ok(tails);
        }
        errs.push(tails.run_now());
        errs.into_result()
            .map_err(|e| e.context(format!("DEL of network {}", self.net.name)))
            .map(|()| DelTail::default())
    }
}

/// DEL of a whole network configuration, in reverse order; every plugin runs even if one fails.
pub fn del_network(
    net: &NetworkConfig,
    req: &Request<'_>,
    runtime_config: &Map<String, Value>,
    prev: Option<&CniResult>,
) -> Result<()> {
    let prev = prev.map(|p| p.to_json(&net.cni_version)).transpose()?;
    Chain { net, req, runtime_config }.del(prev.as_ref(), net.plugins.len(), false)?.run_now()
}

/// [`del_network`] for a caller that answers before the DEL is finished (podnet's shim): once
/// every plugin's rules are gone, the links, addresses and records are handed back, to run
/// after the answer ([`DelTail::run`]).
pub fn del_network_deferred(
    net: &NetworkConfig,
    req: &Request<'_>,
    runtime_config: &Map<String, Value>,
    prev: Option<&CniResult>,
) -> Result<DelTail> {
    let prev = prev.map(|p| p.to_json(&net.cni_version)).transpose()?;
    Chain { net, req, runtime_config }.del(prev.as_ref(), net.plugins.len(), true)
}
