//! Standalone pod networking: a network namespace `podnet-<id>` made by the shim, configured
//! in-process by the CNI engine from the default conflist, with port mappings from the
//! `podnet.io/ports` annotation; and its teardown, also from the record alone (a dead shim's
//! `delete`).
use std::path::{Path, PathBuf};

use cni_bridge::config::NetworkConfig;
use cni_bridge::engine::{self, DelTail, Request};
use cni_bridge::result::CniResult;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::error::{Error, Errors, Result};

/// `"8080:80/tcp, 127.0.0.1:8443:443, 5353:53/udp"`: hostPort:containerPort[/protocol], with
/// an optional host IP first (IPv6 in brackets).
pub const PORTS_ANNOTATION: &str = "podnet.io/ports";

/// What the shim set up for one pod, persisted so that a `delete` run without the shim can undo
/// it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetRecord {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    /// The conflist file it came from, for messages.
    pub conf_file: PathBuf,
    /// The conflist as it was read: DEL uses the configuration ADD used.
    pub conflist: Value,
    pub runtime_config: Map<String, Value>,
    pub args: Vec<(String, String)>,
    /// The ADD result (CNI JSON), PrevResult for DEL.
    pub result: Option<Value>,
}

impl NetRecord {
    /// The pod's first IP address (without prefix length), if any.
    pub fn ip(&self) -> Option<String> {
        let ips = self.result.as_ref()?.get("ips")?.as_array()?;
        let addr = ips.first()?.get("address")?.as_str()?;
        Some(addr.split('/').next().unwrap_or(addr).to_string())
    }
}

/// The default network configuration: the first `*.conflist`, `*.conf` or `*.json` in
/// `dir` by name, as libcni picks it.
pub fn default_conflist(dir: &Path) -> Result<(PathBuf, Value)> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Invalid(format!("network config directory {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
        .collect();
    files.sort();
    let file = files.into_iter().next().ok_or_else(|| {
        Error::Invalid(format!("no network configuration (*.conflist, *.conf, *.json) in {}", dir.display()))
    })?;
    let bytes = std::fs::read(&file).map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| Error::Invalid(format!("{}: invalid JSON: {e}", file.display())))?;
    Ok((file, value))
}

fn parse_conflist(rec_file: &Path, conflist: &Value) -> Result<NetworkConfig> {
    let bytes = serde_json::to_vec(conflist).map_err(|e| Error::Internal(format!("{}: {e}", rec_file.display())))?;
    NetworkConfig::parse(&bytes).map_err(|e| Error::from(e).context(rec_file.display().to_string()))
}

/// Parses the ports annotation into CNI `portMappings`.
pub fn parse_ports(spec: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "annotation {PORTS_ANNOTATION}: {item:?}: {why} (want [hostIP:]hostPort:containerPort[/tcp|udp|sctp])"
            ))
        };
        let (ports, proto) = match item.rsplit_once('/') {
            Some((p, proto)) => (p, proto.to_ascii_lowercase()),
            None => (item, "tcp".to_string()),
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad(&format!("unknown protocol {proto:?}")));
        }
        let (host_ip, rest) = if let Some(r) = ports.strip_prefix('[') {
            let (ip, rest) = r.split_once("]:").ok_or_else(|| bad("unclosed [IPv6]"))?;
            (Some(ip.to_string()), rest)
        } else {
            let parts: Vec<&str> = ports.split(':').collect();
            match parts.len() {
                2 => (None, ports),
                3 => (Some(parts[0].to_string()), &ports[parts[0].len() + 1..]),
                _ => return Err(bad("expected two or three ':'-separated parts")),
            }
        };
        if let Some(ip) = &host_ip {
            ip.parse::<std::net::IpAddr>().map_err(|_| bad(&format!("{ip:?} is not an IP address")))?;
        }
        let (h, c) = rest.split_once(':').ok_or_else(|| bad("missing containerPort"))?;
        let port = |s: &str, what: &str| -> Result<u16> {
            s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad(&format!("{what} {s:?} is not a port number")))
        };
        let mut m =
            json!({"hostPort": port(h, "hostPort")?, "containerPort": port(c, "containerPort")?, "protocol": proto});
        if let Some(ip) = host_ip {
            m["hostIP"] = Value::String(ip);
        }
        out.push(m);
    }
    Ok(out)
}

fn netns_err(e: podnet_netns::Error) -> Error {
    Error::Internal(e.to_string())
}

/// `err`, after removing the namespace at `netns`; a failure to remove it is reported with it.
fn undo_netns(netns: &Path, err: Error) -> Error {
    match podnet_netns::delete(netns) {
        Ok(()) => err,
        Err(ns) => Error::Many(vec![err, netns_err(ns)]),
    }
}

/// The network namespace the shim makes for standalone pod `id`, under `netns_dir`.
fn netns_name(id: &str) -> String {
    format!("podnet-{id}")
}

/// The CNI_ARGS a standalone pod's network is set up and torn down with.
fn pod_args(namespace: &str, id: &str) -> Vec<(String, String)> {
    vec![
        ("IgnoreUnknown".into(), "1".into()),
        ("K8S_POD_NAMESPACE".into(), namespace.to_string()),
        ("K8S_POD_NAME".into(), id.to_string()),
        ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
    ]
}

/// Creates the pod's namespace and runs ADD of the default network in it. On failure nothing is
/// left.
pub fn setup(cfg: &Config, namespace: &str, id: &str, ports: &[Value]) -> Result<NetRecord> {
    let (conf_file, conflist) = default_conflist(&cfg.conf_dir)?;
    let net = parse_conflist(&conf_file, &conflist)?;
    let ns = podnet_netns::NetNs::create(&netns_name(id), Some(&cfg.netns_dir)).map_err(netns_err)?;
    let mut runtime_config = Map::new();
    if !ports.is_empty() {
        runtime_config.insert("portMappings".into(), Value::Array(ports.to_vec()));
    }
    let mut rec = NetRecord {
        container_id: id.to_string(),
        ifname: cfg.ifname.clone(),
        netns: ns.path().to_path_buf(),
        conf_file,
        conflist,
        runtime_config,
        args: pod_args(namespace, id),
        result: None,
    };
    drop(ns);
    // CRI brings lo up beside the pod's network; a standalone pod gets it here.
    let lo =
        NetworkConfig::parse(br#"{"cniVersion":"1.1.0","name":"podnet-loopback","plugins":[{"type":"loopback"}]}"#)
            .map_err(|e| Error::from(e).context("loopback config"));
    if let Err(e) = lo.and_then(|lo| {
        engine::add_network(&lo, &Request::new(id, "lo", Some(&rec.netns)), &Map::new()).map_err(Error::from)
    }) {
        return Err(undo_netns(&rec.netns, e.context(format!("setting lo up in {}", rec.netns.display()))));
    }
    let req = Request::new(id, &rec.ifname, Some(&rec.netns)).with_args(&rec.args);
    match engine::add_network(&net, &req, &rec.runtime_config) {
        Ok(result) => {
            rec.result = result.to_json(&net.cni_version).ok();
            Ok(rec)
        }
        Err(e) => Err(undo_netns(
            &rec.netns,
            Error::from(e).context(format!("network {:?} from {}", net.name, rec.conf_file.display())),
        )),
    }
}

/// DEL of the network, then the namespace; both are tried, all failures are reported.
pub fn teardown(rec: &NetRecord) -> Result<()> {
    // Not deferring, the DEL finished before it returned: it hands nothing back.
    let (_empty, r) = teardown_with(rec, false);
    r
}

/// [`teardown`] for the shim, which answers first: the DEL's links, addresses and records are
/// handed back, to run after the reply ([`DelTail::run`]).
pub fn teardown_deferred(rec: &NetRecord) -> (DelTail, Result<()>) {
    teardown_with(rec, true)
}

fn teardown_with(rec: &NetRecord, defer: bool) -> (DelTail, Result<()>) {
    let mut errs = Errors::new();
    let mut tail = DelTail::default();
    match parse_conflist(&rec.conf_file, &rec.conflist) {
        Ok(net) => {
            let prev = rec.result.as_ref().and_then(|v| CniResult::from_json(v).ok());
            let netns = rec.netns.exists().then_some(rec.netns.as_path());
            let req = Request::new(&rec.container_id, &rec.ifname, netns).with_args(&rec.args);
            let del = if defer {
                engine::del_network_deferred(&net, &req, &rec.runtime_config, prev.as_ref())
            } else {
                engine::del_network(&net, &req, &rec.runtime_config, prev.as_ref()).map(|()| DelTail::default())
            };
            match del {
                Ok(t) => tail = t,
                Err(e) => errs.add(Error::from(e).context(format!("DEL of network {:?}", net.name))),
            }
        }
        Err(e) => errs.add(e),
    }
    errs.push(podnet_netns::delete(&rec.netns).map_err(netns_err));
    (tail, errs.into_result())
}

/// The network of standalone pod `id` whose record is lost (unreadable): DEL of the default
/// network, which finds the veth, the addresses and the rules from the engine's own attachment
/// record (and is a no-op for a network the pod never joined), then the namespace
/// `podnet-<id>`. Everything is tried; all failures are reported.
pub fn teardown_unrecorded(cfg: &Config, namespace: &str, id: &str) -> Result<()> {
    let netns = cfg.netns_dir.join(netns_name(id));
    match default_conflist(&cfg.conf_dir) {
        Ok((conf_file, conflist)) => teardown(&NetRecord {
            container_id: id.to_string(),
            ifname: cfg.ifname.clone(),
            netns,
            conf_file,
            conflist,
            runtime_config: Map::new(),
            args: pod_args(namespace, id),
            result: None,
        }),
        Err(e) => Err(undo_netns(&netns, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_annotation() {
        let p = parse_ports("8080:80/tcp, 127.0.0.1:8443:443,5353:53/UDP,[::1]:9000:90").unwrap();
        assert_eq!(p[0], json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}));
        assert_eq!(p[1]["hostIP"], "127.0.0.1");
        assert_eq!(p[2]["protocol"], "udp");
        assert_eq!(p[3]["hostIP"], "::1");
        assert!(parse_ports("").unwrap().is_empty());
        for bad in ["80", "x:80", "80:0", "1:2:3:4", "80:80/icmp", "nothost:80:80", "[::1:80:80"] {
            let e = parse_ports(bad).unwrap_err().to_string();
            assert!(e.contains(PORTS_ANNOTATION), "{bad}: {e}");
        }
    }

    #[test]
    fn default_conflist_is_the_first_by_name() {
        let dir = std::env::temp_dir().join(format!("podnet-shim-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("20-b.conflist"), r#"{"name":"b"}"#).unwrap();
        std::fs::write(dir.join("10-a.conf"), r#"{"name":"a"}"#).unwrap();
        std::fs::write(dir.join("00-readme.txt"), "x").unwrap();
        let (f, v) = default_conflist(&dir).unwrap();
        assert!(f.ends_with("10-a.conf"));
        assert_eq!(v["name"], "a");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(default_conflist(&dir).unwrap_err().to_string().contains(&dir.display().to_string()));
    }
}
