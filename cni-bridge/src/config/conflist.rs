//! Network configuration as a runtime loads it (libcni): a conflist, or a single plugin conf
//! normalized to a list of one, and the stdin each plugin of it is given.

use serde_json::{Map, Value};

use super::fields::{parse_object, Fields};
use super::version::{is_supported_version, parse_version, unsupported_version};
use crate::args::is_valid_cni_name;
use crate::error::Result;

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

pub(super) fn validate_network_name(f: &Fields, key: &str, name: &str) -> Result<()> {
    if is_valid_cni_name(name) {
        Ok(())
    } else {
        Err(f.err(key, format_args!("invalid characters in network name {name:?} (want [a-zA-Z0-9][a-zA-Z0-9_.-]*)")))
    }
}

/// The plugin's `type`, and a check of its `capabilities` map (bool values only).
pub(super) fn check_plugin_object(f: &Fields) -> Result<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginInput;
    use crate::error::{codes, CniError};
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
}
