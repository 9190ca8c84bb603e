//! `podnet`: the node agent and its operator commands.
//!
//! ```text
//! podnet cluster init --etcd-endpoints URL[,URL...] --cluster-cidr CIDR [--prefix /podnet]
//!                     [--subnet-len 24] [--backend host-gw|vxlan|auto] [--vni 1] [--port 8472]
//! podnet node run     [--config /etc/podnet/node.toml] [--name N] [--node-ip IP] [--subnet CIDR]
//! podnet node status  [--config /etc/podnet/node.toml] [--json]
//! podnet node leave   [--config /etc/podnet/node.toml]
//! ```

mod agent;
mod cli;
mod config;
mod dataplane;
mod error;
mod facts;
mod lease;
mod plan;
mod status;
mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use config::{check_prefix, ClusterSettings, NodeConfig, DEFAULT_CONFIG, DEFAULT_PREFIX};
use error::{Error, Result};

const USAGE: &str = "usage:
  podnet cluster init --etcd-endpoints URL[,URL...] --cluster-cidr CIDR [--prefix /podnet]
                      [--subnet-len 24] [--backend host-gw|vxlan|auto] [--vni 1] [--port 8472]
  podnet node run     [--config /etc/podnet/node.toml] [--name N] [--node-ip IP] [--subnet CIDR]
  podnet node status  [--config /etc/podnet/node.toml] [--json]
  podnet node leave   [--config /etc/podnet/node.toml]
(--name, --node-ip and --subnet, given to every node command, replace node.toml's keys)
";

/// `--flag value` pairs and bare `--switch`es; anything not in `allowed` is an error.
fn flags(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        if switches.contains(&name) && inline.is_none() {
            out.insert(name.to_string(), String::new());
        } else if with_value.contains(&name) {
            let v = match inline {
                Some(v) => v,
                None => it.next().cloned().ok_or_else(|| Error::config(name, "needs a value"))?,
            };
            if out.insert(name.to_string(), v).is_some() {
                return Err(Error::config(name, "given twice"));
            }
        } else {
            return Err(Error::Other(format!("unknown argument {a:?}\n{USAGE}")));
        }
    }
    Ok(out)
}

/// node.toml, with `--name`, `--node-ip` and `--subnet` in place of its keys.
fn node_config(f: &BTreeMap<String, String>) -> Result<NodeConfig> {
    let path = f.get("--config").map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from);
    let overrides: Vec<(&str, &str)> = [("--name", "name"), ("--node-ip", "node_ip"), ("--subnet", "subnet")]
        .into_iter()
        .filter_map(|(flag, key)| f.get(flag).map(|v| (key, v.as_str())))
        .collect();
    NodeConfig::load(&path, &overrides)
}

const NODE_FLAGS: [&str; 4] = ["--config", "--name", "--node-ip", "--subnet"];

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime", e))
}

fn main_() -> Result<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().take(2).map(String::as_str).collect();
    let rest = args.get(2..).unwrap_or_default();
    match words.as_slice() {
        ["cluster", "init"] => {
            let f = flags(
                rest,
                &["--etcd-endpoints", "--prefix", "--cluster-cidr", "--subnet-len", "--backend", "--vni", "--port"],
                &[],
            )?;
            let endpoints: Vec<String> = f
                .get("--etcd-endpoints")
                .ok_or_else(|| Error::config("--etcd-endpoints", "missing"))?
                .split(',')
                .map(str::to_string)
                .collect();
            let prefix = f.get("--prefix").map_or(DEFAULT_PREFIX, String::as_str);
            check_prefix(prefix).map_err(|m| Error::config("--prefix", m))?;
            let cidr = f.get("--cluster-cidr").ok_or_else(|| Error::config("--cluster-cidr", "missing"))?;
            let s = ClusterSettings::from_flags(
                cidr,
                f.get("--subnet-len").map(String::as_str),
                f.get("--backend").map(String::as_str),
                f.get("--vni").map(String::as_str),
                f.get("--port").map(String::as_str),
            )?;
            runtime()?.block_on(cli::cluster_init(&endpoints, prefix, &s))
        }
        ["node", "run"] => {
            let f = flags(rest, &NODE_FLAGS, &[])?;
            let cfg = node_config(&f)?;
            runtime()?.block_on(agent::run(cfg))?;
            Ok(String::new())
        }
        ["node", "status"] => {
            let f = flags(rest, &NODE_FLAGS, &["--json"])?;
            let cfg = node_config(&f)?;
            runtime()?.block_on(cli::status(&cfg, f.contains_key("--json")))
        }
        ["node", "leave"] => {
            let f = flags(rest, &NODE_FLAGS, &[])?;
            let cfg = node_config(&f)?;
            runtime()?.block_on(cli::leave(&cfg))
        }
        ["--help"] | ["-h"] | ["help"] => Ok(USAGE.to_string()),
        ["--version"] => Ok(format!("podnet {}\n", env!("CARGO_PKG_VERSION"))),
        _ => Err(Error::Other(format!("unknown command\n{USAGE}"))),
    }
}

fn main() -> ExitCode {
    match main_() {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podnet: {e}");
            ExitCode::FAILURE
        }
    }
}
