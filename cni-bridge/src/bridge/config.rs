//! The bridge plugin's settings, read like the reference bridge plugin reads them.

use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::args::ifname_problem;
use crate::config::Fields;
use crate::error::Result;
use crate::result::Dns;

/// The reference bridge plugin's default bridge name.
pub const DEFAULT_BRIDGE: &str = "cni0";

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
    use crate::error::codes;
    use serde_json::json;

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
}
