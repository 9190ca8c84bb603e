//! The files hack/install writes, rendered before anything is written: the conflist and the
//! containerd drop-ins from deploy/'s templates (`@VARS@` substituted, then parsed and checked:
//! the result must be JSON, or TOML whose handler tables hold what the flags ask), k3s's
//! template (literal TOML below its Go template line, its `cni_conf_dir` set through the TOML
//! document), and /etc/podnet/config.toml (built as a TOML document).

use toml_edit::{DocumentMut, ImDocument, Item};

use crate::containerd::{self, V2_CRI, V3_RUNTIME};
use crate::flags::CgroupDriver;
use crate::Die;

/// The first line of every drop-in template (also in the rendered drop-in: what --uninstall
/// looks for).
pub const DROPIN_MARKER: &str = "Rendered by podnet's hack/install";
/// In the k3s template.
pub const K3S_MARKER: &str = "podnet: the CRI runtime handler `podnet` for k3s";
/// The first line of /etc/podnet/config.toml as hack/install writes it.
pub const PODNET_CONFIG_MARKER: &str = "# Written by podnet's hack/install";
/// The containerd handler's runtime type: containerd runs containerd-shim-podnet-v2.
pub const HANDLER_TYPE: &str = "io.containerd.podnet.v2";
/// k3s's template extends k3s's own with this Go template line.
const K3S_BASE: &str = r#"{{ template "base" . }}"#;

/// The values of the templates' `@VARS@`.
pub struct Vars {
    pub cni_version: String,
    pub subnet: String,
    pub subnet6: Option<String>,
    pub address: String,
    pub namespace: String,
    pub cni_conf_dir: String,
    pub conf_dir: String,
    pub restrict_oom: bool,
    pub podnet_config: String,
}

impl Vars {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "CNI_VERSION" => self.cni_version.clone(),
            // `--subnet node`: no range in the conflist, so the engine takes the node facts.
            "IPAM_RANGES" if self.subnet == "node" => "[]".to_string(),
            "IPAM_RANGES" => match &self.subnet6 {
                None => format!("[[{{\"subnet\": \"{}\"}}]]", self.subnet),
                Some(s6) => format!("[[{{\"subnet\": \"{}\"}}], [{{\"subnet\": \"{s6}\"}}]]", self.subnet),
            },
            "CONTAINERD_ADDRESS" => self.address.clone(),
            "CONTAINERD_NAMESPACE" => self.namespace.clone(),
            "PODNET_CNI_CONF_DIR" => self.cni_conf_dir.clone(),
            "CONTAINERD_CONF_DIR" => self.conf_dir.clone(),
            "RESTRICT_OOM_SCORE_ADJ" => {
                if self.restrict_oom { "restrict_oom_score_adj = true" } else { "# restrict_oom_score_adj = true" }
                    .into()
            }
            "PODNET_CONFIG" => self.podnet_config.clone(),
            _ => return None,
        })
    }
}

/// `template` (the file `shown`) with every `@NAME@` replaced, trailing newlines dropped; an
/// unknown name is an error. The values are the checked flags: no quotes, backslashes or
/// controls, so they are valid inside the templates' JSON and TOML strings as they are.
pub fn substitute(template: &str, shown: &str, vars: &Vars) -> Result<String, Die> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('@') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let name_len = after.bytes().take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_').count();
        if name_len == 0 || after.as_bytes().get(name_len) != Some(&b'@') {
            out.push('@');
            rest = after;
            continue;
        }
        let name = &after[..name_len];
        let value =
            vars.get(name).ok_or_else(|| Die::usage(format!("template {shown} has an unknown variable @{name}@")))?;
        out.push_str(&value);
        rest = &after[name_len + 1..];
    }
    out.push_str(rest);
    Ok(out.trim_end_matches('\n').to_string())
}

/// The conflist: the template rendered, and JSON.
pub fn conflist(template: &str, shown: &str, vars: &Vars) -> Result<String, Die> {
    let out = substitute(template, shown, vars)?;
    serde_json::from_str::<serde_json::Value>(&out)
        .map_err(|e| Die::usage(format!("template {shown} does not render to JSON: {e}")))?;
    Ok(out)
}

/// A string at `keys` below `item`.
fn string_at<'a>(item: &'a Item, keys: &[&str]) -> Option<&'a str> {
    keys.iter().try_fold(item, |i, k| i.get(k))?.as_str()
}

/// The containerd drop-in of config version `version`: the template rendered, parsed, and its
/// version, handler and restrict_oom_score_adj checked against what was asked.
pub fn dropin(template: &str, shown: &str, vars: &Vars, version: u8) -> Result<String, Die> {
    let out = substitute(template, shown, vars)?;
    let doc = ImDocument::parse(out.as_str()).map_err(|e| {
        let message = e.message().trim_end().replace('\n', "; ");
        let at = containerd::at(&format!("template {shown}, rendered"), &out, e.span());
        Die::usage(format!("{at}not valid TOML: {message}"))
    })?;
    let root = doc.as_item();
    let plugin = if version == 3 { V3_RUNTIME } else { V2_CRI };
    let cri = root.get("plugins").and_then(|p| p.get(plugin));
    let handler = ["plugins", plugin, "containerd", "runtimes", "podnet"];
    let restrict = cri.and_then(|c| c.get("restrict_oom_score_adj")).and_then(Item::as_bool);
    let checks = [
        (root.get("version").and_then(Item::as_integer) == Some(version.into()), format!("version = {version}")),
        (
            string_at(root, &[&handler[..], &["runtime_type"]].concat()) == Some(HANDLER_TYPE),
            "the podnet handler".into(),
        ),
        (
            string_at(root, &[&handler[..], &["cni_conf_dir"]].concat()) == Some(&vars.cni_conf_dir),
            "cni_conf_dir".into(),
        ),
        (
            string_at(root, &[&handler[..], &["options", "ConfigPath"]].concat()) == Some(&vars.podnet_config),
            "ConfigPath".into(),
        ),
        (restrict == vars.restrict_oom.then_some(true), "restrict_oom_score_adj as asked".into()),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(Die::usage(format!(
            "template {shown} does not render to a drop-in with {what} in [plugins.\"{plugin}\"]"
        ))),
        None => Ok(out),
    }
}

/// k3s's template with the handler's `cni_conf_dir` set to `cni_conf_dir` (the rest,
/// comments and layout included, as it is).
pub fn k3s(template: &str, shown: &str, cni_conf_dir: &str) -> Result<String, Die> {
    let (first, rest) = template.split_once('\n').unwrap_or((template, ""));
    if first.trim() != K3S_BASE {
        return Err(Die::usage(format!("template {shown} does not start with {K3S_BASE}")));
    }
    let mut doc = rest.parse::<DocumentMut>().map_err(|e| {
        let shift = first.len() + 1;
        let span = e.span().map(|s| s.start + shift..s.end + shift);
        let message = e.message().trim_end().replace('\n', "; ");
        Die::usage(format!("{}not valid TOML: {message}", containerd::at(shown, template, span)))
    })?;
    let keys = ["plugins", V3_RUNTIME, "containerd", "runtimes", "podnet", "cni_conf_dir"];
    let value = keys
        .iter()
        .try_fold(doc.as_item_mut(), |item, k| item.get_mut(k))
        .and_then(Item::as_value_mut)
        .filter(|v| v.is_str())
        .ok_or_else(|| Die::usage(format!("template {shown} has no cni_conf_dir in the podnet handler's table")))?;
    let decor = value.decor().clone();
    *value = cni_conf_dir.into();
    *value.decor_mut() = decor;
    Ok(format!("{first}\n{doc}").trim_end_matches('\n').to_string())
}

/// /etc/podnet/config.toml: `systemd_cgroup` for the driver (none for auto), under a comment
/// that says why.
pub fn podnet_config(driver: CgroupDriver, reason: &str) -> String {
    let header = format!(
        "{PODNET_CONFIG_MARKER} (cgroup driver: {reason}).\n\
         # podnet shim config: docs/install.md. The cgroup driver must match the kubelet's.\n"
    );
    let mut doc = DocumentMut::new();
    let systemd = match driver {
        CgroupDriver::Systemd => Some(true),
        CgroupDriver::Cgroupfs => Some(false),
        CgroupDriver::Auto => None,
    };
    match systemd {
        Some(on) => {
            doc.insert("systemd_cgroup", toml_edit::value(on));
            if let Some(mut key) = doc.key_mut("systemd_cgroup") {
                key.leaf_decor_mut().set_prefix(header);
            }
        }
        None => doc.set_trailing(format!(
            "{header}# systemd_cgroup unset: the driver each linux.cgroupsPath names (slice:prefix:name -> systemd)\n"
        )),
    }
    doc.to_string().trim_end_matches('\n').to_string()
}

#[cfg(test)]
mod tests;
