//! Network configuration: conflists and single plugin confs as a runtime loads them
//! (libcni), plugin input as a plugin reads it from stdin (skel), runtime-config capability
//! arguments, and the bridge plugin's settings.
//!
//! Field lookups inside plugin objects follow Go's `encoding/json`: an exact key match wins,
//! otherwise keys match ASCII case-insensitively (this is why containerd's Go-style
//! `HostPort`/`ContainerPort` keys work with the reference portmap), and `null` counts as
//! absent. The conflist's own top-level keys are matched exactly, as libcni does.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::args::{ifname_problem, is_valid_cni_name};
use crate::error::{codes, CniError, Result};
use crate::result::{CniResult, Dns};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest spec version podnet implements.
pub const LATEST_VERSION: &str = "1.1.0";
/// The reference bridge plugin's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

// ---------------------------------------------------------------------------------------------
// Versions

pub fn is_supported_version(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// "X.Y.Z" as numbers; `None` when it is not of that form.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let mut num = || -> Option<u64> {
        let s = it.next()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let ver = (num()?, num()?, num()?);
    if it.next().is_some() {
        return None;
    }
    Some(ver)
}

/// `v >= min`, both "X.Y.Z" (e.g. CHECK needs a config >= 0.4.0, GC and STATUS >= 1.1.0).
/// An unparseable version is a code-6 error, as in skel.
pub fn version_at_least(v: &str, min: &str) -> Result<bool> {
    let a =
        parse_version(v).ok_or_else(|| CniError::new(codes::DECODE_FAILURE, format!("invalid CNI version {v:?}")))?;
    let b = parse_version(min)
        .ok_or_else(|| CniError::new(codes::DECODE_FAILURE, format!("invalid CNI version {min:?}")))?;
    Ok(a >= b)
}

fn unsupported_version(v: &str) -> CniError {
    CniError::new(codes::INCOMPATIBLE_VERSION, format!("incompatible CNI versions: config is {v:?}"))
        .with_details(format!("podnet supports {}", SUPPORTED_VERSIONS.join(", ")))
}

// ---------------------------------------------------------------------------------------------
// JSON field access with errors that name the field

/// Reads fields of one JSON object and builds errors that name the full field path
/// (`runtimeConfig.portMappings[0].hostPort`). Config errors are code 7, result errors code 6.
#[derive(Clone)]
pub(crate) struct Fields<'a> {
    pub map: &'a Map<String, Value>,
    prefix: String,
    code: u32,
    fold: bool,
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    /// A plugin-level config object: Go-style case-insensitive keys, code-7 errors.
    pub fn config(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: String::new(), code: codes::INVALID_CONFIG, fold: true }
    }

    /// A CNI result object: case-insensitive keys, code-6 errors.
    pub fn result(map: &'a Map<String, Value>) -> Self {
        Fields { map, prefix: String::new(), code: codes::DECODE_FAILURE, fold: true }
    }

    /// Matches keys exactly (libcni's reading of the conflist's top level).
    pub fn exact(mut self) -> Self {
        self.fold = false;
        self
    }

    /// Field names in errors get `prefix` in front ("plugins[0]").
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The full path of `key` ("[3]" keys are appended without a dot).
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else if key.starts_with('[') {
            format!("{}{key}", self.prefix)
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn err(&self, key: &str, why: impl std::fmt::Display) -> CniError {
        let field = self.path(key);
        if self.code == codes::INVALID_CONFIG {
            CniError::invalid_config(&field, why)
        } else {
            CniError::new(self.code, format!("invalid CNI result field {field:?}: {why}"))
        }
    }

    fn missing(&self, key: &str) -> CniError {
        self.err(key, "missing required field")
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Value) -> CniError {
        self.err(key, format_args!("must be {want}, not {}", json_type(got)))
    }

    /// The value under `key` (exact match first, then case-insensitive when folding);
    /// `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        let v = match self.map.get(key) {
            Some(v) => Some(v),
            None if self.fold => self.map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v),
            None => None,
        };
        v.filter(|v| !v.is_null())
    }

    /// Fields of a nested object found under `key`.
    pub fn nested(&self, key: &str, map: &'a Map<String, Value>) -> Fields<'a> {
        Fields { map, prefix: self.path(key), code: self.code, fold: self.fold }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a boolean", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// A string that must be present and non-empty.
    pub fn required_str(&self, key: &str) -> Result<&'a str> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.missing(key)),
        }
    }

    /// An integer in `0..=max` (JSON numbers with a fraction are rejected, as Go does for int).
    pub fn uint(&self, key: &str, max: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => self.uint_value(key, v, max).map(Some),
        }
    }

    pub fn uint_value(&self, key: &str, v: &Value, max: u64) -> Result<u64> {
        let Value::Number(n) = v else {
            return Err(self.wrong_type(key, "an integer", v));
        };
        match (n.as_u64(), n.as_i64()) {
            (Some(u), _) if u <= max => Ok(u),
            (Some(_), _) | (None, Some(_)) => Err(self.err(key, format_args!("{n} is out of range 0..={max}"))),
            (None, None) => Err(self.err(key, format_args!("must be an integer, not {n}"))),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong_type(key, "an object", v)),
        }
    }

    pub fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    /// A list of strings (absent -> empty).
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let Some(items) = self.array(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.wrong_type(&format!("{key}[{i}]"), "a string", other)),
            })
            .collect()
    }

    /// The elements of an array of objects, each with its own `Fields` ("key[i]").
    pub fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>> {
        let Some(items) = self.array(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let k = format!("{key}[{i}]");
                match v {
                    Value::Object(m) => Ok(self.nested(&k, m)),
                    other => Err(self.wrong_type(&k, "an object", other)),
                }
            })
            .collect()
    }

    /// An IP address string ("" -> None).
    pub fn ip(&self, key: &str) -> Result<Option<IpAddr>> {
        match self.str(key)? {
            None | Some("") => Ok(None),
            Some(s) => {
                s.parse::<IpAddr>().map(Some).map_err(|_| self.err(key, format_args!("{s:?} is not an IP address")))
            }
        }
    }
}

fn parse_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(CniError::new(
            codes::DECODE_FAILURE,
            format!("error parsing {what}: must be a JSON object, not {}", json_type(&other)),
        )),
        Err(e) => Err(CniError::new(codes::DECODE_FAILURE, format!("error parsing {what}: {e}"))),
    }
}

fn validate_network_name(f: &Fields, key: &str, name: &str) -> Result<()> {
    if is_valid_cni_name(name) {
        Ok(())
    } else {
        Err(f.err(key, format_args!("invalid characters in network name {name:?} (want [a-zA-Z0-9][a-zA-Z0-9_.-]*)")))
    }
}

/// The plugin's `type`, and a check of its `capabilities` map (bool values only).
fn check_plugin_object(f: &Fields) -> Result<String> {
    let plugin_type = f.required_str("type")?.to_string();
    if let Some(caps) = f.object("capabilities")? {
        let cf = f.nested("capabilities", caps);
        for (k, v) in caps {
            if !v.is_boolean() && !v.is_null() {
                return Err(cf.wrong_type(k, "a boolean", v));
            }
        }
    }
    if let Some(ipam) = f.get("ipam") {
        if !ipam.is_object() {
            return Err(f.wrong_type("ipam", "an object", ipam));
        }
    }
    Ok(plugin_type)
}

// ---------------------------------------------------------------------------------------------
// Network configuration (runtime side)

/// A conflist, or a single plugin conf normalized to a list of one (libcni's
/// `ConfListFromConf`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The selected version: `cniVersion`, or the highest supported one among `cniVersion`
    /// and `cniVersions` (SPEC.md, "Version considerations").
    pub cni_version: String,
    pub name: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConfig>,
}

impl NetworkConfig {
    /// Malformed JSON -> code 6; missing `name`/`cniVersion`/`type` or a field of the wrong
    /// type -> code 7 naming the field; no supported version -> code 1.
    /// `loadOnlyInlinedPlugins` is accepted and has no effect: podnet never loads plugin
    /// confs from a sibling directory.
    pub fn parse(bytes: &[u8]) -> Result<NetworkConfig> {
        let map = parse_object(bytes, "network configuration")?;
        let top = Fields::config(&map).exact();

        let name = top.required_str("name")?.to_string();
        validate_network_name(&top, "name", &name)?;
        let cni_version = select_version(&top)?;

        let read_bool = |key: &str| -> Result<bool> {
            match top.get(key) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
                Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
                Some(v) => Err(top.err(key, format_args!("must be true or false, not {v}"))),
            }
        };
        let disable_check = read_bool("disableCheck")?;
        let disable_gc = read_bool("disableGC")?;
        read_bool("loadOnlyInlinedPlugins")?;

        let plugins = match map.get("plugins") {
            Some(Value::Array(list)) => {
                if list.is_empty() {
                    return Err(top.err("plugins", "no plugins in list"));
                }
                let mut plugins = Vec::with_capacity(list.len());
                for (i, p) in list.iter().enumerate() {
                    let key = format!("plugins[{i}]");
                    let Value::Object(pm) = p else {
                        return Err(top.wrong_type(&key, "an object", p));
                    };
                    let pf = Fields::config(pm).with_prefix(key);
                    let plugin_type = check_plugin_object(&pf)?;
                    plugins.push(PluginConfig { plugin_type, raw: pm.clone() });
                }
                plugins
            }
            Some(other) => return Err(top.wrong_type("plugins", "an array", other)),
            None => {
                // A single plugin conf: the whole object is the plugin.
                let pf = Fields::config(&map);
                if pf.get("type").is_none() {
                    return Err(top.err(
                        "type",
                        "missing required field (a single plugin conf needs \"type\", a conflist \"plugins\")",
                    ));
                }
                let plugin_type = check_plugin_object(&pf)?;
                vec![PluginConfig { plugin_type, raw: map.clone() }]
            }
        };

        Ok(NetworkConfig { cni_version, name, disable_check, disable_gc, plugins })
    }
}

fn select_version(top: &Fields) -> Result<String> {
    let single = top.str("cniVersion")?.filter(|s| !s.is_empty());
    let Some(list) = top.array("cniVersions")? else {
        let v = single.ok_or_else(|| top.missing("cniVersion"))?;
        if !is_supported_version(v) {
            return Err(unsupported_version(v));
        }
        return Ok(v.to_string());
    };
    let mut candidates: Vec<&str> = Vec::new();
    for (i, v) in list.iter().enumerate() {
        match v {
            Value::String(s) => candidates.push(s),
            other => return Err(top.wrong_type(&format!("cniVersions[{i}]"), "a string", other)),
        }
    }
    candidates.extend(single);
    if candidates.is_empty() {
        return Err(top.missing("cniVersion"));
    }
    candidates
        .iter()
        .filter(|v| is_supported_version(v))
        .filter_map(|v| parse_version(v).map(|p| (p, *v)))
        .max()
        .map(|(_, v)| v.to_string())
        .ok_or_else(|| unsupported_version(&candidates.join(", ")))
}

/// One plugin's config in a network configuration, kept raw for passing on.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub plugin_type: String,
    pub raw: Map<String, Value>,
}

impl PluginConfig {
    /// The capability names this plugin declares with `true` (`"capabilities": {...}`).
    pub fn capabilities(&self) -> Vec<&str> {
        let f = Fields::config(&self.raw);
        match f.get("capabilities") {
            Some(Value::Object(caps)) => {
                caps.iter().filter(|(_, v)| v.as_bool() == Some(true)).map(|(k, _)| k.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The stdin object libcni builds for this plugin (`buildOneConfig`): the raw object with
    /// `name` and `cniVersion` of the network, `prevResult` when given, and `runtimeConfig`
    /// holding the runtime's capability arguments that this plugin declares (only set when
    /// at least one matches, like `injectRuntimeConfig`; a static `runtimeConfig` in the raw
    /// object is otherwise left alone).
    pub fn stdin_for(
        &self,
        net: &NetworkConfig,
        prev_result: Option<&Value>,
        runtime_config: &Map<String, Value>,
    ) -> Value {
        let mut obj = self.raw.clone();
        obj.insert("name".into(), Value::String(net.name.clone()));
        obj.insert("cniVersion".into(), Value::String(net.cni_version.clone()));
        if let Some(prev) = prev_result {
            obj.insert("prevResult".into(), prev.clone());
        }
        let rc: Map<String, Value> = self
            .capabilities()
            .into_iter()
            .filter_map(|cap| runtime_config.get(cap).map(|v| (cap.to_string(), v.clone())))
            .collect();
        if !rc.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(obj)
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin input (plugin side)

/// A single plugin conf as a plugin binary reads it from stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInput {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// The whole stdin object.
    pub raw: Map<String, Value>,
    pub prev_result: Option<CniResult>,
    pub runtime_config: RuntimeConfig,
    /// GC only: `cni.dev/valid-attachments` (or the misspelt `cni.dev/attachments` that
    /// libcni also sends) as (containerID, ifname) pairs.
    pub valid_attachments: Option<Vec<(String, String)>>,
}

impl PluginInput {
    /// Malformed JSON -> code 6; missing `name`/`cniVersion`/`type` or a bad field -> code 7
    /// naming it; unsupported `cniVersion` -> code 1; a malformed `prevResult` -> code 6
    /// naming the field inside it.
    pub fn parse(bytes: &[u8]) -> Result<PluginInput> {
        let raw = parse_object(bytes, "network configuration")?;
        let f = Fields::config(&raw);

        let name = f.required_str("name")?.to_string();
        validate_network_name(&f, "name", &name)?;
        let cni_version = f.required_str("cniVersion")?.to_string();
        if !is_supported_version(&cni_version) {
            return Err(unsupported_version(&cni_version));
        }
        let plugin_type = check_plugin_object(&f)?;

        let prev_result = match f.get("prevResult") {
            None => None,
            Some(Value::Object(prev)) => {
                // A result without a version has the config's version (version.ParsePrevResult).
                let mut prev = prev.clone();
                let has_version = Fields::result(&prev).str("cniVersion").ok().flatten().is_some_and(|s| !s.is_empty());
                if !has_version {
                    prev.insert("cniVersion".into(), Value::String(cni_version.clone()));
                }
                Some(CniResult::from_json(&Value::Object(prev)).map_err(|e| e.context("prevResult"))?)
            }
            Some(other) => return Err(f.wrong_type("prevResult", "an object", other)),
        };

        let runtime_config = match f.object("runtimeConfig")? {
            Some(rc) => RuntimeConfig::parse(&f.nested("runtimeConfig", rc))?,
            None => RuntimeConfig::default(),
        };

        let valid_attachments = {
            let key = if f.get("cni.dev/valid-attachments").is_some() {
                "cni.dev/valid-attachments"
            } else {
                "cni.dev/attachments"
            };
            match f.array(key)? {
                None => None,
                Some(_) => Some(
                    f.objects(key)?
                        .iter()
                        .map(|a| {
                            Ok((
                                a.str("containerID")?.unwrap_or("").to_string(),
                                a.str("ifname")?.unwrap_or("").to_string(),
                            ))
                        })
                        .collect::<Result<Vec<_>>>()?,
                ),
            }
        };

        Ok(PluginInput { cni_version, name, plugin_type, raw, prev_result, runtime_config, valid_attachments })
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime config (capability arguments)

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    /// `ips` entries ("10.1.2.3/24" or "10.1.2.3"): the address only.
    pub ips: Vec<IpAddr>,
    /// `mac` ("" -> None). Not validated here.
    pub mac: Option<String>,
    /// The whole `runtimeConfig` object, for capabilities not modelled here
    /// (`ipRanges`, `bandwidth`, `dns`, ...).
    pub raw: Map<String, Value>,
}

impl RuntimeConfig {
    fn parse(f: &Fields) -> Result<RuntimeConfig> {
        let port_mappings = f.objects("portMappings")?.iter().map(PortMapping::parse).collect::<Result<Vec<_>>>()?;
        let ips = f
            .strings("ips")?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let addr = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
                let ok_prefix = match s.split_once('/') {
                    Some((_, p)) => s.parse::<ipnet::IpNet>().is_ok() && !p.is_empty(),
                    None => true,
                };
                match addr.parse::<IpAddr>() {
                    Ok(ip) if ok_prefix => Ok(ip),
                    _ => Err(
                        f.err(&format!("ips[{i}]"), format_args!("{s:?} is not an IP address (want <ip>[/<prefix>])"))
                    ),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mac = f.str("mac")?.filter(|s| !s.is_empty()).map(str::to_string);
        Ok(RuntimeConfig { port_mappings, ips, mac, raw: f.map.clone() })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// IANA protocol number (for nf_tables `meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
            Protocol::Sctp => libc::IPPROTO_SCTP as u8,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `runtimeConfig.portMappings` entry. Keys match case-insensitively, so both the
/// CONVENTIONS.md spelling (`hostPort`, `containerPort`, `protocol`, `hostIP`) and the
/// Go-style one containerd's CRI sends (`HostPort`, `ContainerPort`, `Protocol`, `HostIP`)
/// are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    fn parse(f: &Fields) -> Result<PortMapping> {
        let port = |key: &str| -> Result<u16> {
            let Some(v) = f.get(key) else {
                return Err(f.err(key, "missing required field"));
            };
            let n =
                f.uint_value(key, v, 65535).map_err(|_| f.err(key, format_args!("invalid port {v} (want 1-65535)")))?;
            match u16::try_from(n) {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(f.err(key, format_args!("invalid port {n} (want 1-65535)"))),
            }
        };
        let host_port = port("hostPort")?;
        let container_port = port("containerPort")?;
        let protocol = match f.str("protocol")? {
            None | Some("") => Protocol::Tcp,
            Some(p) if p.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
            Some(p) if p.eq_ignore_ascii_case("udp") => Protocol::Udp,
            Some(p) if p.eq_ignore_ascii_case("sctp") => Protocol::Sctp,
            Some(p) => return Err(f.err("protocol", format_args!("unknown protocol {p:?} (want tcp, udp or sctp)"))),
        };
        let host_ip = f.ip("hostIP")?;
        Ok(PortMapping { host_port, container_port, protocol, host_ip })
    }
}

// ---------------------------------------------------------------------------------------------
// Bridge plugin settings

/// The reference bridge plugin's settings (plus podnet's `stateDir`).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// `bridge`, default "cni0" (also when empty).
    pub bridge: String,
    /// `isGateway`; forced on by `isDefaultGateway`, as the reference does.
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    /// `ipMasqBackend` ("iptables" | "nftables"); podnet always programs nf_tables.
    pub ip_masq_backend: Option<String>,
    /// `mtu`; 0 -> None (kernel default).
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// `vlan`; 0 -> None; 1..=4094.
    pub vlan: Option<u16>,
    /// `vlanTrunk` collected like the reference: sorted, deduplicated ids.
    pub vlan_trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
    /// `macspoofchk`
    pub mac_spoof_check: bool,
    /// `enabledad`
    pub enable_dad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// The container MAC from the config: `args.cni.mac`, overridden by `runtimeConfig.mac`.
    /// (The reference also takes `MAC` from CNI_ARGS, below both; merge that at the caller.)
    pub mac: Option<String>,
    /// The raw `ipam` object.
    pub ipam: Option<Value>,
    /// `dns`, when present.
    pub dns: Option<Dns>,
    /// podnet extension: where attachment records live (absolute path).
    pub state_dir: Option<PathBuf>,
}

impl BridgeConfig {
    pub fn from_raw(raw: &Map<String, Value>) -> Result<BridgeConfig> {
        let f = Fields::config(raw);
        let flag = |key: &str| -> Result<bool> { Ok(f.bool(key)?.unwrap_or(false)) };

        let bridge = match f.str("bridge")? {
            None | Some("") => DEFAULT_BRIDGE.to_string(),
            Some(b) => {
                if let Some(why) = ifname_problem(b) {
                    return Err(f.err("bridge", format_args!("{b:?}: {why}")));
                }
                b.to_string()
            }
        };
        let is_default_gateway = flag("isDefaultGateway")?;
        let is_gateway = flag("isGateway")? || is_default_gateway;

        let ip_masq_backend = match f.str("ipMasqBackend")? {
            None => None,
            Some(b @ ("iptables" | "nftables")) => Some(b.to_string()),
            Some(b) => {
                return Err(f.err("ipMasqBackend", format_args!("unknown backend {b:?} (want iptables or nftables)")))
            }
        };

        let mtu = match f.uint("mtu", u64::from(u32::MAX))? {
            None | Some(0) => None,
            Some(m) => Some(m as u32),
        };
        let vlan = match f.uint("vlan", 4094)? {
            None | Some(0) => None,
            Some(v) => Some(v as u16),
        };
        let vlan_trunk = collect_vlan_trunk(&f)?;

        let mut mac = None;
        if let Some(args) = f.object("args")? {
            let af = f.nested("args", args);
            if let Some(cni) = af.object("cni")? {
                mac = af.nested("cni", cni).str("mac")?.filter(|m| !m.is_empty()).map(str::to_string);
            }
        }
        if let Some(rc) = f.object("runtimeConfig")? {
            if let Some(m) = f.nested("runtimeConfig", rc).str("mac")?.filter(|m| !m.is_empty()) {
                mac = Some(m.to_string());
            }
        }

        let ipam = match f.get("ipam") {
            None => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(v) => return Err(f.wrong_type("ipam", "an object", v)),
        };
        let dns = match f.object("dns")? {
            None => None,
            Some(d) => Some(Dns::from_fields(&f.nested("dns", d))?),
        };
        let state_dir = match f.str("stateDir")? {
            None | Some("") => None,
            Some(d) if d.starts_with('/') => Some(PathBuf::from(d)),
            Some(d) => return Err(f.err("stateDir", format_args!("{d:?} is not an absolute path"))),
        };

        Ok(BridgeConfig {
            bridge,
            is_gateway,
            is_default_gateway,
            force_address: flag("forceAddress")?,
            ip_masq: flag("ipMasq")?,
            ip_masq_backend,
            mtu,
            hairpin_mode: flag("hairpinMode")?,
            promisc_mode: flag("promiscMode")?,
            vlan,
            vlan_trunk,
            preserve_default_vlan: flag("preserveDefaultVlan")?,
            mac_spoof_check: flag("macspoofchk")?,
            enable_dad: flag("enabledad")?,
            disable_container_interface: flag("disableContainerInterface")?,
            port_isolation: flag("portIsolation")?,
            mac,
            ipam,
            dns,
            state_dir,
        })
    }
}

/// The reference's `collectVlanTrunk`: entries are `{minID, maxID}` ranges and/or `{id}`.
fn collect_vlan_trunk(f: &Fields) -> Result<Vec<u16>> {
    let mut ids = Vec::new();
    for (i, e) in f.objects("vlanTrunk")?.iter().enumerate() {
        let id = |key: &str| -> Result<Option<u16>> {
            match e.get(key) {
                None => Ok(None),
                Some(v) => match e.uint_value(key, v, 4094) {
                    Ok(n) if n >= 1 => Ok(Some(n as u16)),
                    _ => Err(e.err(key, format_args!("invalid VLAN id {v} (want 1-4094)"))),
                },
            }
        };
        match (id("minID")?, id("maxID")?) {
            (Some(lo), Some(hi)) => {
                if hi < lo {
                    return Err(f.err(&format!("vlanTrunk[{i}]"), "minID is greater than maxID"));
                }
                ids.extend(lo..=hi);
            }
            (None, Some(_)) => return Err(e.err("minID", "minID and maxID must be set together")),
            (Some(_), None) => return Err(e.err("maxID", "minID and maxID must be set together")),
            (None, None) => {}
        }
        if let Some(single) = id("id")? {
            ids.push(single);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONFLIST: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "podnet-net",
        "disableCheck": "true",
        "plugins": [
            {"type": "bridge", "bridge": "cni-podnet0", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]},
             "capabilities": {"ips": true, "mac": false}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    }"#;

    fn parse_err(s: &str) -> CniError {
        NetworkConfig::parse(s.as_bytes()).unwrap_err()
    }

    fn input_err(v: Value) -> CniError {
        PluginInput::parse(v.to_string().as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_conflist() {
        let n = NetworkConfig::parse(CONFLIST.as_bytes()).unwrap();
        assert_eq!(n.cni_version, "1.0.0");
        assert_eq!(n.name, "podnet-net");
        assert!(n.disable_check);
        assert!(!n.disable_gc);
        let types: Vec<&str> = n.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap", "loopback"]);
        assert_eq!(n.plugins[0].raw["bridge"], "cni-podnet0");
        assert_eq!(n.plugins[0].capabilities(), vec!["ips"]);
        assert_eq!(n.plugins[1].capabilities(), vec!["portMappings"]);
        assert!(n.plugins[2].capabilities().is_empty());
    }

    #[test]
    fn parses_single_conf_as_list_of_one() {
        let n = NetworkConfig::parse(
            br#"{"cniVersion":"0.4.0","name":"mynet","type":"bridge","bridge":"br0","disableGC":true}"#,
        )
        .unwrap();
        assert_eq!(n.cni_version, "0.4.0");
        assert_eq!(n.name, "mynet");
        assert!(n.disable_gc);
        assert_eq!(n.plugins.len(), 1);
        assert_eq!(n.plugins[0].plugin_type, "bridge");
        assert_eq!(n.plugins[0].raw["bridge"], "br0");
    }

    #[test]
    fn cni_versions_picks_highest_supported() {
        let n = NetworkConfig::parse(
            br#"{"cniVersion":"0.3.1","cniVersions":["0.4.0","1.0.0","9.9.9"],"name":"n","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(n.cni_version, "1.0.0");
        let n = NetworkConfig::parse(br#"{"cniVersions":["1.1.0","0.3.1"],"name":"n","plugins":[{"type":"bridge"}]}"#)
            .unwrap();
        assert_eq!(n.cni_version, "1.1.0");
        let e = parse_err(r#"{"cniVersions":["2.0.0"],"name":"n","plugins":[{"type":"bridge"}]}"#);
        assert_eq!(e.code, codes::INCOMPATIBLE_VERSION);
        let e = parse_err(r#"{"cniVersions":["1.0.0", 1],"name":"n","plugins":[{"type":"bridge"}]}"#);
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("cniVersions[1]"), "{}", e.msg);
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = parse_err(r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"}"#);
        assert_eq!(e.code, codes::DECODE_FAILURE);
        assert!(e.msg.contains("line 1 column"), "{}", e.msg);
        assert_eq!(parse_err("[1,2]").code, codes::DECODE_FAILURE);

        let cases: &[(&str, &str)] = &[
            (r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#, "\"name\""),
            (r#"{"cniVersion":"1.0.0","name":"","plugins":[{"type":"bridge"}]}"#, "\"name\""),
            (r#"{"cniVersion":"1.0.0","name":7,"plugins":[{"type":"bridge"}]}"#, "\"name\""),
            (r#"{"cniVersion":"1.0.0","name":"../etc","plugins":[{"type":"bridge"}]}"#, "\"name\""),
            (r#"{"name":"n","plugins":[{"type":"bridge"}]}"#, "\"cniVersion\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"bridge":"x"}]}"#, "\"plugins[0].type\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"loopback"},{"type":""}]}"#, "\"plugins[1].type\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#, "\"plugins\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":{}}"#, "\"plugins\""),
            (r#"{"cniVersion":"1.0.0","name":"n","plugins":[3]}"#, "\"plugins[0]\""),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "\"type\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","disableCheck":"maybe","plugins":[{"type":"b"}]}"#,
                "\"disableCheck\"",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n","disableGC":1,"plugins":[{"type":"b"}]}"#, "\"disableGC\""),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"b","capabilities":{"portMappings":"yes"}}]}"#,
                "\"plugins[0].capabilities.portMappings\"",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"b","ipam":"host-local"}]}"#,
                "\"plugins[0].ipam\"",
            ),
        ];
        for (conf, field) in cases {
            let e = parse_err(conf);
            assert_eq!(e.code, codes::INVALID_CONFIG, "{conf}: {}", e.msg);
            assert!(e.msg.contains(field), "{conf}: want {field} in {}", e.msg);
        }

        let e = parse_err(r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"bridge"}]}"#);
        assert_eq!(e.code, codes::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains("0.2.0"));
    }

    #[test]
    fn stdin_for_injects_and_filters_capabilities() {
        let n = NetworkConfig::parse(CONFLIST.as_bytes()).unwrap();
        let rc = json!({
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "ips": ["10.88.0.5/16"],
            "mac": "c2:11:22:33:44:55",
            "bandwidth": {"ingressRate": 1}
        });
        let rc = rc.as_object().unwrap();
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.5/16"}]});

        let bridge = n.plugins[0].stdin_for(&n, None, rc);
        assert_eq!(bridge["name"], "podnet-net");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert_eq!(bridge["type"], "bridge");
        assert!(bridge.get("prevResult").is_none());
        // "mac" is declared false, so only "ips" passes.
        assert_eq!(bridge["runtimeConfig"], json!({"ips": ["10.88.0.5/16"]}));

        let pm = n.plugins[1].stdin_for(&n, Some(&prev), rc);
        assert_eq!(pm["prevResult"], prev);
        assert_eq!(
            pm["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
        );

        // No capabilities: no runtimeConfig at all.
        let lo = n.plugins[2].stdin_for(&n, Some(&prev), rc);
        assert!(lo.get("runtimeConfig").is_none());
        // Declared capability the runtime did not pass: no runtimeConfig either.
        let lo = n.plugins[1].stdin_for(&n, None, &Map::new());
        assert!(lo.get("runtimeConfig").is_none());

        // The result parses back as plugin input.
        let input = PluginInput::parse(pm.to_string().as_bytes()).unwrap();
        assert_eq!(input.plugin_type, "portmap");
        assert_eq!(input.runtime_config.port_mappings.len(), 1);
        assert!(input.prev_result.is_some());
    }

    #[test]
    fn single_conf_stdin_overrides_name_and_version() {
        let n = NetworkConfig::parse(br#"{"cniVersion":"0.4.0","name":"mynet","type":"bridge"}"#).unwrap();
        let v = n.plugins[0].stdin_for(&n, None, &Map::new());
        assert_eq!(v, json!({"cniVersion":"0.4.0","name":"mynet","type":"bridge"}));
    }

    #[test]
    fn port_mappings_camel_case_and_go_style() {
        let v = json!({
            "cniVersion": "1.0.0", "name": "n", "type": "portmap",
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                {"HostPort": 5353, "ContainerPort": 53, "Protocol": "UDP", "HostIP": ""},
                {"hostPort": 9000, "containerPort": 9000},
                {"HostPort": 3868, "ContainerPort": 3868, "Protocol": "sctp", "HostIP": "::1"}
            ]}
        });
        let input = PluginInput::parse(v.to_string().as_bytes()).unwrap();
        let pm = &input.runtime_config.port_mappings;
        assert_eq!(
            pm[0],
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: Some("127.0.0.1".parse().unwrap())
            }
        );
        assert_eq!(pm[1], PortMapping { host_port: 5353, container_port: 53, protocol: Protocol::Udp, host_ip: None });
        assert_eq!(
            pm[2],
            PortMapping { host_port: 9000, container_port: 9000, protocol: Protocol::Tcp, host_ip: None }
        );
        assert_eq!(pm[3].protocol, Protocol::Sctp);
        assert_eq!(pm[3].host_ip, Some("::1".parse().unwrap()));
        assert_eq!(Protocol::Udp.to_string(), "udp");
        assert_eq!(Protocol::Tcp.number(), 6);
    }

    #[test]
    fn port_mapping_errors_name_the_field() {
        let cases = [
            (json!([{"hostPort": 0, "containerPort": 80}]), "runtimeConfig.portMappings[0].hostPort"),
            (json!([{"hostPort": 65536, "containerPort": 80}]), "runtimeConfig.portMappings[0].hostPort"),
            (json!([{"hostPort": -1, "containerPort": 80}]), "runtimeConfig.portMappings[0].hostPort"),
            (json!([{"hostPort": "80", "containerPort": 80}]), "runtimeConfig.portMappings[0].hostPort"),
            (json!([{"hostPort": 80.5, "containerPort": 80}]), "runtimeConfig.portMappings[0].hostPort"),
            (
                json!([{"hostPort": 80, "containerPort": 80}, {"HostPort": 81}]),
                "runtimeConfig.portMappings[1].containerPort",
            ),
            (json!([{"hostPort": 80, "containerPort": 0}]), "runtimeConfig.portMappings[0].containerPort"),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
                "runtimeConfig.portMappings[0].protocol",
            ),
            (json!([{"hostPort": 80, "containerPort": 80, "protocol": 6}]), "runtimeConfig.portMappings[0].protocol"),
            (
                json!([{"hostPort": 80, "containerPort": 80, "HostIP": "localhost"}]),
                "runtimeConfig.portMappings[0].hostIP",
            ),
            (json!(["80:80"]), "runtimeConfig.portMappings[0]"),
            (json!({"hostPort": 80}), "runtimeConfig.portMappings"),
        ];
        for (pm, field) in cases {
            let e = input_err(
                json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap", "runtimeConfig": {"portMappings": pm}}),
            );
            assert_eq!(e.code, codes::INVALID_CONFIG, "{pm}: {}", e.msg);
            assert!(e.msg.contains(&format!("\"{field}\"")), "{pm}: want {field} in {}", e.msg);
        }
    }

    #[test]
    fn runtime_config_ips_and_mac() {
        let v = json!({
            "cniVersion": "1.1.0", "name": "n", "type": "bridge",
            "runtimeConfig": {"ips": ["10.1.2.3/24", "10.1.2.4", "2001:db8::5/64"], "mac": "c2:11:22:33:44:55",
                              "ipRanges": [[{"subnet": "10.9.0.0/16"}]]}
        });
        let input = PluginInput::parse(v.to_string().as_bytes()).unwrap();
        let rc = &input.runtime_config;
        assert_eq!(
            rc.ips,
            vec!["10.1.2.3".parse::<IpAddr>().unwrap(), "10.1.2.4".parse().unwrap(), "2001:db8::5".parse().unwrap()]
        );
        assert_eq!(rc.mac.as_deref(), Some("c2:11:22:33:44:55"));
        assert!(rc.raw.contains_key("ipRanges"));

        for bad in [json!(["10.1.2.300"]), json!(["10.1.2.3/33"]), json!(["10.1.2.3/"]), json!([5])] {
            let e =
                input_err(json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "runtimeConfig": {"ips": bad}}));
            assert_eq!(e.code, 7, "{bad}");
            assert!(e.msg.contains("runtimeConfig.ips[0]"), "{bad}: {}", e.msg);
        }
        let e = input_err(json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "runtimeConfig": {"mac": 1}}));
        assert!(e.msg.contains("runtimeConfig.mac"));
        let e = input_err(json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "runtimeConfig": []}));
        assert!(e.msg.contains("\"runtimeConfig\""));
    }

    #[test]
    fn plugin_input_basics_and_errors() {
        let input = PluginInput::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"bridge","bridge":"br0"}"#).unwrap();
        assert_eq!(input.cni_version, "0.3.1");
        assert_eq!(input.name, "n");
        assert_eq!(input.plugin_type, "bridge");
        assert_eq!(input.raw["bridge"], "br0");
        assert!(input.prev_result.is_none() && input.valid_attachments.is_none());
        assert_eq!(input.runtime_config, RuntimeConfig::default());

        assert_eq!(PluginInput::parse(b"{").unwrap_err().code, 6);
        for (v, field) in [
            (json!({"cniVersion": "1.0.0", "type": "bridge"}), "\"name\""),
            (json!({"cniVersion": "1.0.0", "name": "a b", "type": "bridge"}), "\"name\""),
            (json!({"name": "n", "type": "bridge"}), "\"cniVersion\""),
            (json!({"cniVersion": "1.0.0", "name": "n"}), "\"type\""),
            (json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "prevResult": "x"}), "\"prevResult\""),
        ] {
            let e = input_err(v.clone());
            assert_eq!(e.code, 7, "{v}");
            assert!(e.msg.contains(field), "{v}: {}", e.msg);
        }
        let e = input_err(json!({"cniVersion": "0.2.0", "name": "n", "type": "bridge"}));
        assert_eq!(e.code, 1);
    }

    #[test]
    fn plugin_input_prev_result() {
        // A 0.4.0 prevResult without its own cniVersion takes the config's.
        let v = json!({
            "cniVersion": "0.4.0", "name": "n", "type": "portmap",
            "prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
                           "ips": [{"version": "4", "address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 0}]}
        });
        let input = PluginInput::parse(v.to_string().as_bytes()).unwrap();
        let prev = input.prev_result.unwrap();
        assert_eq!(prev.cni_version, "0.4.0");
        assert_eq!(prev.ips[0].address, "10.88.0.5/16".parse::<ipnet::IpNet>().unwrap());
        assert_eq!(prev.ips[0].interface, Some(0));

        let e = input_err(json!({"cniVersion": "1.0.0", "name": "n", "type": "portmap",
                                 "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}}));
        assert_eq!(e.code, codes::DECODE_FAILURE);
        assert!(e.msg.contains("prevResult") && e.msg.contains("ips[0].address"), "{}", e.msg);
    }

    #[test]
    fn gc_valid_attachments() {
        let v = json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge",
                       "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]});
        let input = PluginInput::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(input.valid_attachments, Some(vec![("c1".into(), "eth0".into()), ("c2".into(), "net1".into())]));
        // The misspelt key libcni also sends.
        let v = json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "cni.dev/attachments": []});
        assert_eq!(PluginInput::parse(v.to_string().as_bytes()).unwrap().valid_attachments, Some(vec![]));
        let e = input_err(
            json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "cni.dev/valid-attachments": [{"containerID": 1}]}),
        );
        assert!(e.msg.contains("cni.dev/valid-attachments[0].containerID"), "{}", e.msg);
    }

    fn bridge(v: Value) -> Result<BridgeConfig> {
        BridgeConfig::from_raw(v.as_object().unwrap())
    }

    #[test]
    fn bridge_defaults() {
        let b = bridge(json!({"type": "bridge"})).unwrap();
        assert_eq!(b.bridge, "cni0");
        assert!(!b.is_gateway && !b.is_default_gateway && !b.ip_masq && !b.hairpin_mode && !b.promisc_mode);
        assert!(!b.force_address && !b.mac_spoof_check && !b.enable_dad);
        assert_eq!(b.mtu, None);
        assert_eq!(b.vlan, None);
        assert!(b.vlan_trunk.is_empty());
        assert_eq!(b.ipam, None);
        assert_eq!(b.dns, None);
        assert_eq!(b.state_dir, None);
        assert_eq!(b.mac, None);
        assert_eq!(bridge(json!({"bridge": ""})).unwrap().bridge, "cni0");
    }

    #[test]
    fn bridge_full() {
        let b = bridge(json!({
            "type": "bridge", "bridge": "cni-podnet0", "isDefaultGateway": true, "forceAddress": true,
            "ipMasq": true, "ipMasqBackend": "nftables", "mtu": 1450, "hairpinMode": true, "promiscMode": true, "vlan": 100,
            "vlanTrunk": [{"minID": 10, "maxID": 12}, {"id": 11}, {"id": 200}], "preserveDefaultVlan": true,
            "macspoofchk": true, "enabledad": true, "portIsolation": true, "disableContainerInterface": false,
            "args": {"cni": {"mac": "aa:bb:cc:dd:ee:01"}},
            "ipam": {"type": "host-local", "subnet": "10.88.0.0/16"},
            "dns": {"nameservers": ["10.88.0.1"], "domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]},
            "stateDir": "/run/podnet/state",
            "someUnknownKey": {"x": 1}
        }))
        .unwrap();
        assert_eq!(b.bridge, "cni-podnet0");
        assert!(b.is_default_gateway && b.is_gateway, "isDefaultGateway implies isGateway");
        assert!(b.force_address && b.ip_masq && b.hairpin_mode && b.promisc_mode && b.mac_spoof_check && b.enable_dad);
        assert!(b.preserve_default_vlan && b.port_isolation && !b.disable_container_interface);
        assert_eq!(b.ip_masq_backend.as_deref(), Some("nftables"));
        assert_eq!(b.mtu, Some(1450));
        assert_eq!(b.vlan, Some(100));
        assert_eq!(b.vlan_trunk, vec![10, 11, 12, 200]);
        assert_eq!(b.mac.as_deref(), Some("aa:bb:cc:dd:ee:01"));
        assert_eq!(b.ipam.as_ref().unwrap()["type"], "host-local");
        let dns = b.dns.unwrap();
        assert_eq!(dns.nameservers, vec!["10.88.0.1"]);
        assert_eq!(dns.domain.as_deref(), Some("cluster.local"));
        assert_eq!(dns.search, vec!["svc.cluster.local"]);
        assert_eq!(dns.options, vec!["ndots:5"]);
        assert_eq!(b.state_dir, Some(PathBuf::from("/run/podnet/state")));

        // runtimeConfig.mac beats args.cni.mac; Go-style case-insensitive keys work.
        let b = bridge(json!({"IsGateway": true, "MTU": 9000, "args": {"cni": {"mac": "aa:aa:aa:aa:aa:aa"}},
                              "runtimeConfig": {"mac": "bb:bb:bb:bb:bb:bb"}}))
        .unwrap();
        assert!(b.is_gateway);
        assert_eq!(b.mtu, Some(9000));
        assert_eq!(b.mac.as_deref(), Some("bb:bb:bb:bb:bb:bb"));
        assert_eq!(bridge(json!({"mtu": 0, "vlan": 0})).unwrap().mtu, None);
        assert_eq!(bridge(json!({"mtu": null})).unwrap().mtu, None);
    }

    #[test]
    fn bridge_errors_name_the_field() {
        let cases = [
            (json!({"mtu": "abc"}), "mtu"),
            (json!({"mtu": -1}), "mtu"),
            (json!({"mtu": 1500.5}), "mtu"),
            (json!({"mtu": 5_000_000_000u64}), "mtu"),
            (json!({"isGateway": "yes"}), "isGateway"),
            (json!({"isDefaultGateway": 1}), "isDefaultGateway"),
            (json!({"ipMasq": "true"}), "ipMasq"),
            (json!({"hairpinMode": []}), "hairpinMode"),
            (json!({"macspoofchk": "on"}), "macspoofchk"),
            (json!({"enabledad": 0}), "enabledad"),
            (json!({"vlan": 4095}), "vlan"),
            (json!({"vlan": -3}), "vlan"),
            (json!({"vlan": "10"}), "vlan"),
            (json!({"bridge": 5}), "bridge"),
            (json!({"bridge": "this-name-is-too-long"}), "bridge"),
            (json!({"bridge": "br/0"}), "bridge"),
            (json!({"ipam": "host-local"}), "ipam"),
            (json!({"dns": {"nameservers": "1.1.1.1"}}), "dns.nameservers"),
            (json!({"dns": {"domain": 3}}), "dns.domain"),
            (json!({"dns": {"search": [1]}}), "dns.search[0]"),
            (json!({"stateDir": "relative/dir"}), "stateDir"),
            (json!({"stateDir": false}), "stateDir"),
            (json!({"ipMasqBackend": "pf"}), "ipMasqBackend"),
            (json!({"vlanTrunk": [{"minID": 5}]}), "vlanTrunk[0].maxID"),
            (json!({"vlanTrunk": [{"minID": 9, "maxID": 5}]}), "vlanTrunk[0]"),
            (json!({"vlanTrunk": [{"id": 0}]}), "vlanTrunk[0].id"),
            (json!({"vlanTrunk": [{"id": 4095}]}), "vlanTrunk[0].id"),
            (json!({"args": {"cni": {"mac": 1}}}), "args.cni.mac"),
            (json!({"runtimeConfig": {"mac": true}}), "runtimeConfig.mac"),
        ];
        for (v, field) in cases {
            let e = bridge(v.clone()).unwrap_err();
            assert_eq!(e.code, codes::INVALID_CONFIG, "{v}: {}", e.msg);
            assert!(e.msg.contains(&format!("\"{field}\"")), "{v}: want {field} in {}", e.msg);
        }
    }

    #[test]
    fn versions() {
        assert!(version_at_least("1.1.0", "1.1.0").unwrap());
        assert!(version_at_least("1.0.0", "0.4.0").unwrap());
        assert!(!version_at_least("0.3.1", "0.4.0").unwrap());
        assert!(version_at_least("0.10.0", "0.4.0").unwrap());
        assert_eq!(version_at_least("1.0", "0.4.0").unwrap_err().code, 6);
        assert_eq!(parse_version("1.2.3"), Some((1, 2, 3)));
        assert_eq!(parse_version("1.2.3.4"), None);
        assert_eq!(parse_version("1.x.3"), None);
        assert!(is_supported_version("0.3.0") && !is_supported_version("0.2.0"));
    }
}
