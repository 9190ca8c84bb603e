//! `resolvConf`: the DNS section of the result, read from a resolv.conf-style file.

use std::path::Path;

use crate::error::{CniError, Result};
pub use crate::result::Dns;

/// The result's DNS: the conf's `dns` if it says anything, else IPAM's resolvConf.
pub fn dns_for(conf: Option<&Dns>, resolv_conf: Option<&Path>) -> Result<Dns> {
    if let Some(d) = conf.filter(|d| !d.is_empty()) {
        return Ok(d.clone());
    }
    match resolv_conf {
        Some(p) => parse_resolv_conf(p),
        None => Ok(Dns::default()),
    }
}

/// Same rules as the reference: `#`/`;` comments, a keyword needs at least one value,
/// only the first value of `nameserver`/`domain` counts, the last `domain` wins.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns> {
    let text = std::fs::read(path).map_err(|e| CniError::io(format!("reading resolvConf {}", path.display()), e))?;
    Ok(parse_resolv_text(&String::from_utf8_lossy(&text)))
}

pub(crate) fn parse_resolv_text(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 2 {
            continue;
        }
        let rest = fields[1..].iter().map(|s| s.to_string());
        match fields[0] {
            "nameserver" => dns.nameservers.push(fields[1].to_string()),
            "domain" => dns.domain = Some(fields[1].to_string()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}
