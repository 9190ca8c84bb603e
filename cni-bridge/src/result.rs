//! The CNI result (SPEC.md, "Success"), held in the 1.1 shape and written out for the
//! version the caller asked for, matching what the reference plugins print:
//!
//! * 1.1.0: everything; 1.0.0: without the 1.1 additions (interface `mtu`, `socketPath`,
//!   `pciID`; route `mtu`, `advmss`, `priority`, `table`, `scope`);
//! * 0.4.0 / 0.3.x: `ips[]` carry `"version": "4"|"6"`, interfaces only `name`, `mac`,
//!   `sandbox`, routes only `dst`, `gw`;
//! * empty lists and unset optional fields are omitted (Go `omitempty`); an interface's
//!   `name` and an ip's `address` are always written;
//! * `dns` is omitted when empty for 1.x (types100 `MarshalJSON`), but always written for
//!   0.x, as `"dns":{}` when empty (types040 has no such fixup).

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use crate::config::fields::{json_type, Fields};
use crate::config::version::{is_supported_version, version_at_least, LATEST_VERSION, SUPPORTED_VERSIONS};
use crate::error::{codes, CniError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    /// "" -> omitted.
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; None for host-side ones.
    pub sandbox: Option<String>,
    pub socket_path: Option<String>,
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length ("10.1.2.3/24").
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().unwrap_or("").is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        put_list(&mut m, "nameservers", &self.nameservers);
        if let Some(d) = self.domain.as_deref().filter(|d| !d.is_empty()) {
            m.insert("domain".into(), d.into());
        }
        put_list(&mut m, "search", &self.search);
        put_list(&mut m, "options", &self.options);
        Value::Object(m)
    }

    /// Reads a `dns` object (config or result; the error code follows `f`).
    pub(crate) fn from_fields(f: &Fields) -> Result<Dns> {
        Ok(Dns {
            nameservers: f.strings("nameservers")?,
            domain: f.str("domain")?.filter(|d| !d.is_empty()).map(str::to_string),
            search: f.strings("search")?,
            options: f.strings("options")?,
        })
    }
}

fn put_list(m: &mut Map<String, Value>, key: &str, list: &[String]) {
    if !list.is_empty() {
        m.insert(key.into(), list.iter().map(|s| Value::String(s.clone())).collect());
    }
}

fn put_str(m: &mut Map<String, Value>, key: &str, s: Option<&str>) {
    if let Some(s) = s.filter(|s| !s.is_empty()) {
        m.insert(key.into(), s.into());
    }
}

/// Go's `int` with `omitempty`: 0 is not written.
fn put_nonzero(m: &mut Map<String, Value>, key: &str, n: Option<u32>) {
    if let Some(n) = n.filter(|n| *n != 0) {
        m.insert(key.into(), n.into());
    }
}

impl CniResult {
    /// An empty result of `version`.
    pub fn new(version: impl Into<String>) -> CniResult {
        CniResult { cni_version: version.into(), ..CniResult::default() }
    }

    /// The result as `version` prints it (see the module docs). An unsupported version is a
    /// code-1 error. `self.cni_version` is ignored: the output carries `version`.
    pub fn to_json(&self, version: &str) -> Result<Value> {
        if !is_supported_version(version) {
            return Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!("cannot convert result to CNI version {version:?}"),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        let v1 = version_at_least(version, "1.0.0")?;
        let v11 = version_at_least(version, "1.1.0")?;

        let mut out = Map::new();
        out.insert("cniVersion".into(), version.into());

        if !self.interfaces.is_empty() {
            let list = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("name".into(), i.name.clone().into());
                    put_str(&mut m, "mac", Some(&i.mac));
                    if v11 {
                        put_nonzero(&mut m, "mtu", i.mtu);
                    }
                    put_str(&mut m, "sandbox", i.sandbox.as_deref());
                    if v11 {
                        put_str(&mut m, "socketPath", i.socket_path.as_deref());
                        put_str(&mut m, "pciID", i.pci_id.as_deref());
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(list));
        }

        if !self.ips.is_empty() {
            let list = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    if !v1 {
                        let fam = if matches!(ip.address, IpNet::V4(_)) { "4" } else { "6" };
                        m.insert("version".into(), fam.into());
                    }
                    if let Some(i) = ip.interface {
                        m.insert("interface".into(), i.into());
                    }
                    m.insert("address".into(), ip.address.to_string().into());
                    if let Some(gw) = ip.gateway {
                        m.insert("gateway".into(), gw.to_string().into());
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("ips".into(), Value::Array(list));
        }

        if !self.routes.is_empty() {
            let list = self
                .routes
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    m.insert("dst".into(), r.dst.to_string().into());
                    if let Some(gw) = r.gw {
                        m.insert("gw".into(), gw.to_string().into());
                    }
                    if v11 {
                        put_nonzero(&mut m, "mtu", r.mtu);
                        put_nonzero(&mut m, "advmss", r.advmss);
                        put_nonzero(&mut m, "priority", r.priority);
                        if let Some(t) = r.table {
                            m.insert("table".into(), t.into());
                        }
                        if let Some(s) = r.scope {
                            m.insert("scope".into(), s.into());
                        }
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("routes".into(), Value::Array(list));
        }

        if !v1 || !self.dns.is_empty() {
            out.insert("dns".into(), self.dns.to_json());
        }
        Ok(Value::Object(out))
    }

    /// Parses a result of any supported version (0.3.0 .. 1.1.0; the shapes are read as one
    /// superset, `ips[].version` is ignored). A missing or unsupported `cniVersion` is a
    /// code-1 error; a malformed field is a code-6 error naming it ("ips[0].address").
    pub fn from_json(v: &Value) -> Result<CniResult> {
        let Value::Object(map) = v else {
            return Err(CniError::new(
                codes::DECODE_FAILURE,
                format!("error parsing CNI result: must be a JSON object, not {}", json_type(v)),
            ));
        };
        let f = Fields::result(map);
        let cni_version = match f.str("cniVersion")? {
            Some(s) if is_supported_version(s) => s.to_string(),
            Some(s) => {
                return Err(CniError::new(codes::INCOMPATIBLE_VERSION, format!("unsupported CNI result version {s:?}"))
                    .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))))
            }
            None => {
                return Err(CniError::new(codes::INCOMPATIBLE_VERSION, "CNI result has no cniVersion"));
            }
        };

        let u32_field =
            |f: &Fields, key: &str| -> Result<Option<u32>> { Ok(f.uint(key, u64::from(u32::MAX))?.map(|n| n as u32)) };
        let nonzero = |n: Option<u32>| n.filter(|n| *n != 0);
        let net = |f: &Fields, key: &str| -> Result<IpNet> {
            let s = f.str(key)?.ok_or_else(|| f.err(key, "missing required field"))?;
            s.parse::<IpNet>()
                .map_err(|_| f.err(key, format_args!("{s:?} is not an address with prefix (want 10.1.2.3/24)")))
        };

        let interfaces = f
            .objects("interfaces")?
            .iter()
            .map(|i| {
                Ok(Interface {
                    name: i.str("name")?.unwrap_or("").to_string(),
                    mac: i.str("mac")?.unwrap_or("").to_string(),
                    mtu: nonzero(u32_field(i, "mtu")?),
                    sandbox: i.str("sandbox")?.filter(|s| !s.is_empty()).map(str::to_string),
                    socket_path: i.str("socketPath")?.filter(|s| !s.is_empty()).map(str::to_string),
                    pci_id: i.str("pciID")?.filter(|s| !s.is_empty()).map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let ips = f
            .objects("ips")?
            .iter()
            .map(|ip| {
                Ok(IpConfig {
                    address: net(ip, "address")?,
                    gateway: ip.ip("gateway")?,
                    interface: ip.uint("interface", u64::from(u32::MAX))?.map(|n| n as usize),
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let routes = f
            .objects("routes")?
            .iter()
            .map(|r| {
                Ok(Route {
                    dst: net(r, "dst")?,
                    gw: r.ip("gw")?,
                    mtu: nonzero(u32_field(r, "mtu")?),
                    advmss: nonzero(u32_field(r, "advmss")?),
                    priority: nonzero(u32_field(r, "priority")?),
                    table: u32_field(r, "table")?,
                    scope: u32_field(r, "scope")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let dns = match f.object("dns")? {
            Some(d) => Dns::from_fields(&f.nested("dns", d))?,
            None => Dns::default(),
        };

        Ok(CniResult { cni_version, interfaces, ips, routes, dns })
    }
}

/// The VERSION answer: `{"cniVersion": <requested if supported, else latest>,
/// "supportedVersions": [...]}`.
pub fn version_info(cni_version: &str) -> Value {
    let v = if is_supported_version(cni_version) { cni_version } else { LATEST_VERSION };
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:00".into(),
                    mtu: Some(1500),
                    ..Default::default()
                },
                Interface { name: "veth1234".into(), mac: "aa:bb:cc:dd:ee:01".into(), ..Default::default() },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:02".into(),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/cni-1".into()),
                    socket_path: Some("/run/sock".into()),
                    pci_id: Some("0000:00:1f.6".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.88.0.5/16".parse().unwrap(),
                    gateway: Some("10.88.0.1".parse().unwrap()),
                    interface: Some(2),
                },
                IpConfig { address: "fd00::5/64".parse().unwrap(), gateway: None, interface: Some(2) },
            ],
            routes: vec![
                Route::new("0.0.0.0/0".parse().unwrap(), Some("10.88.0.1".parse().unwrap())),
                Route {
                    dst: "10.99.0.0/16".parse().unwrap(),
                    gw: None,
                    mtu: Some(1400),
                    advmss: Some(1360),
                    priority: Some(10),
                    table: Some(0),
                    scope: Some(253),
                },
            ],
            dns: Dns {
                nameservers: vec!["10.88.0.1".into()],
                domain: Some("cluster.local".into()),
                search: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    #[test]
    fn v110_full_shape() {
        let v = sample().to_json("1.1.0").unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "cni0", "mac": "aa:bb:cc:dd:ee:00", "mtu": 1500},
                    {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1450, "sandbox": "/var/run/netns/cni-1",
                     "socketPath": "/run/sock", "pciID": "0000:00:1f.6"}
                ],
                "ips": [
                    {"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
                    {"interface": 2, "address": "fd00::5/64"}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "10.88.0.1"},
                    {"dst": "10.99.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 0, "scope": 253}
                ],
                "dns": {"nameservers": ["10.88.0.1"], "domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]}
            })
        );
    }

    #[test]
    fn v100_drops_11_fields() {
        let v = sample().to_json("1.0.0").unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["interfaces"][0], json!({"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"}));
        assert_eq!(
            v["interfaces"][2],
            json!({"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/cni-1"})
        );
        assert_eq!(v["routes"][1], json!({"dst": "10.99.0.0/16"}));
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn v040_adds_ip_versions() {
        for ver in ["0.4.0", "0.3.1", "0.3.0"] {
            let v = sample().to_json(ver).unwrap();
            assert_eq!(v["cniVersion"], ver);
            assert_eq!(
                v["ips"][0],
                json!({"version": "4", "interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"})
            );
            assert_eq!(v["ips"][1], json!({"version": "6", "interface": 2, "address": "fd00::5/64"}));
            assert_eq!(v["interfaces"][0], json!({"name": "cni0", "mac": "aa:bb:cc:dd:ee:00"}));
            assert_eq!(v["routes"][1], json!({"dst": "10.99.0.0/16"}));
        }
    }

    #[test]
    fn empty_fields_are_omitted_like_go() {
        let r = CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface { name: "eth0".into(), ..Default::default() }],
            ips: vec![IpConfig { address: "10.0.0.2/24".parse().unwrap(), gateway: None, interface: None }],
            ..Default::default()
        };
        // 1.x: empty dns and routes are left out.
        for ver in ["1.0.0", "1.1.0"] {
            assert_eq!(
                r.to_json(ver).unwrap(),
                json!({"cniVersion": ver, "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.0.0.2/24"}]})
            );
        }
        // 0.x: "dns": {} is always there.
        assert_eq!(
            r.to_json("0.4.0").unwrap(),
            json!({"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}], "ips": [{"version": "4", "address": "10.0.0.2/24"}], "dns": {}})
        );
        assert_eq!(CniResult::new("1.1.0").to_json("1.1.0").unwrap(), json!({"cniVersion": "1.1.0"}));
        assert_eq!(CniResult::new("1.1.0").to_json("0.3.1").unwrap(), json!({"cniVersion": "0.3.1", "dns": {}}));
    }

    #[test]
    fn round_trip_per_version() {
        let full = sample();
        // 1.1.0 keeps everything.
        let back = CniResult::from_json(&full.to_json("1.1.0").unwrap()).unwrap();
        assert_eq!(back, full);

        // 1.0.0 and 0.x lose exactly the fields they cannot carry.
        let mut v10 = full.clone();
        for i in &mut v10.interfaces {
            i.mtu = None;
            i.socket_path = None;
            i.pci_id = None;
        }
        for r in &mut v10.routes {
            *r = Route::new(r.dst, r.gw);
        }
        for ver in ["1.0.0", "0.4.0", "0.3.1", "0.3.0"] {
            let back = CniResult::from_json(&full.to_json(ver).unwrap()).unwrap();
            assert_eq!(back.cni_version, ver);
            assert_eq!(CniResult { cni_version: "1.1.0".into(), ..back.clone() }, v10, "{ver}");
            // And a second trip is stable.
            assert_eq!(CniResult::from_json(&back.to_json(ver).unwrap()).unwrap(), back);
        }
    }

    #[test]
    fn parses_reference_plugin_output() {
        // What the reference bridge + host-local print for 0.4.0.
        let v: Value = serde_json::from_str(
            r#"{
              "cniVersion": "0.4.0",
              "interfaces": [
                {"name": "cni0", "mac": "1a:2b:3c:4d:5e:6f"},
                {"name": "veth3e5a1d2b", "mac": "2a:2b:3c:4d:5e:6f"},
                {"name": "eth0", "mac": "3a:2b:3c:4d:5e:6f", "sandbox": "/var/run/netns/cni-x"}
              ],
              "ips": [{"version": "4", "interface": 2, "address": "10.88.0.2/16", "gateway": "10.88.0.1"}],
              "routes": [{"dst": "0.0.0.0/0"}],
              "dns": {}
            }"#,
        )
        .unwrap();
        let r = CniResult::from_json(&v).unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/var/run/netns/cni-x"));
        assert_eq!(r.ips[0].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.routes[0], Route::new("0.0.0.0/0".parse().unwrap(), None));
        assert!(r.dns.is_empty());
        assert_eq!(r.to_json("0.4.0").unwrap(), v);
    }

    #[test]
    fn from_json_errors() {
        let cases = [
            (json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}), "ips[0].address"),
            (json!({"cniVersion": "1.0.0", "ips": [{}]}), "ips[0].address"),
            (json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": "x"}]}), "ips[0].gateway"),
            (json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": -1}]}), "ips[0].interface"),
            (json!({"cniVersion": "1.0.0", "ips": {}}), "ips"),
            (json!({"cniVersion": "1.0.0", "interfaces": [{"name": 1}]}), "interfaces[0].name"),
            (json!({"cniVersion": "1.1.0", "interfaces": [{"name": "a", "mtu": "big"}]}), "interfaces[0].mtu"),
            (json!({"cniVersion": "1.1.0", "routes": [{"gw": "10.0.0.1"}]}), "routes[0].dst"),
            (json!({"cniVersion": "1.1.0", "routes": [{"dst": "0.0.0.0/0", "table": "main"}]}), "routes[0].table"),
            (json!({"cniVersion": "1.1.0", "dns": {"nameservers": [1]}}), "dns.nameservers[0]"),
        ];
        for (v, field) in cases {
            let e = CniResult::from_json(&v).unwrap_err();
            assert_eq!(e.code, codes::DECODE_FAILURE, "{v}: {}", e.msg);
            assert!(e.msg.contains(&format!("\"{field}\"")), "{v}: want {field} in {}", e.msg);
        }
        assert_eq!(CniResult::from_json(&json!({"cniVersion": "0.2.0", "ip4": {}})).unwrap_err().code, 1);
        assert_eq!(CniResult::from_json(&json!({"ips": []})).unwrap_err().code, 1);
        assert_eq!(CniResult::from_json(&json!([])).unwrap_err().code, 6);
        assert_eq!(CniResult::new("1.0.0").to_json("2.0.0").unwrap_err().code, 1);
    }

    #[test]
    fn version_answer() {
        let all = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert_eq!(version_info("1.0.0"), json!({"cniVersion": "1.0.0", "supportedVersions": all}));
        assert_eq!(version_info(""), json!({"cniVersion": "1.1.0", "supportedVersions": all}));
        assert_eq!(version_info("9.0.0")["cniVersion"], "1.1.0");
    }
}
