//! `runtimeConfig`: the capability arguments a runtime passes (port mappings, IPs, MAC), the
//! rest kept raw.

use std::net::IpAddr;

use serde_json::{Map, Value};

use super::fields::Fields;
use crate::error::Result;

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
    pub(super) fn parse(f: &Fields) -> Result<RuntimeConfig> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginInput;
    use crate::error::{codes, CniError};
    use serde_json::json;

    fn input_err(v: Value) -> CniError {
        PluginInput::parse(v.to_string().as_bytes()).unwrap_err()
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
}
