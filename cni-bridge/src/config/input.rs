//! Plugin input as a plugin reads it from stdin (skel): one plugin's conf with the network's
//! name and version, the previous result, the runtime's capability arguments, GC's list.

use serde_json::{Map, Value};

use super::conflist::{check_plugin_object, validate_network_name};
use super::fields::{parse_object, Fields};
use super::runtime::RuntimeConfig;
use super::version::{is_supported_version, unsupported_version};
use crate::error::Result;
use crate::result::CniResult;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{codes, CniError};
    use serde_json::json;

    fn input_err(v: Value) -> CniError {
        PluginInput::parse(v.to_string().as_bytes()).unwrap_err()
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
}
