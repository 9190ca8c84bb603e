//! The shim's command line (what containerd passes), podnet's config file, and the runtime
//! options containerd sends with Create.
use std::path::{Path, PathBuf};

use protobuf::well_known_types::any::Any;
use protobuf::CodedInputStream;
use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG: &str = "/etc/podnet/config.toml";
/// Overrides [`DEFAULT_CONFIG`] for a shim that gets no options (set in containerd's
/// environment; containerd passes its environment on to shims).
pub const CONFIG_ENV: &str = "PODNET_CONFIG";
pub const DEFAULT_CONF_DIR: &str = "/etc/podnet/net.d";
pub const DEFAULT_STATE_DIR: &str = "/run/podnet";
pub const DEFAULT_NETNS_DIR: &str = "/var/run/netns";

/// The flags containerd gives every shim invocation, and the action.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flags {
    pub namespace: String,
    pub id: String,
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    pub debug: bool,
    /// `start`, `delete`, or empty for the daemon.
    pub action: String,
    pub version: bool,
    /// `-info`: containerd asks what the runtime supports (see `info`).
    pub info: bool,
}

impl Flags {
    /// Go-style flags: `-name value`, `-name=value`, `--name`; then the action word.
    pub fn parse(args: &[String]) -> Result<Flags> {
        let mut f = Flags::default();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            i += 1;
            if !a.starts_with('-') {
                if !f.action.is_empty() {
                    return Err(Error::Invalid(format!("unexpected argument {a:?} after {:?}", f.action)));
                }
                f.action = a.clone();
                continue;
            }
            let name = a.trim_start_matches('-');
            let (name, inline) = match name.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (name, None),
            };
            match name {
                "v" | "version" => f.version = true,
                "info" => f.info = true,
                "debug" => f.debug = inline.as_deref().map(|v| v == "true" || v == "1").unwrap_or(true),
                "namespace" | "id" | "address" | "publish-binary" | "bundle" => {
                    let value = match inline {
                        Some(v) => v,
                        None => {
                            let v = args
                                .get(i)
                                .cloned()
                                .ok_or_else(|| Error::Invalid(format!("flag -{name} needs a value")))?;
                            i += 1;
                            v
                        }
                    };
                    match name {
                        "namespace" => f.namespace = value,
                        "id" => f.id = value,
                        "address" => f.address = value,
                        "publish-binary" => f.publish_binary = value,
                        "bundle" => f.bundle = value,
                        _ => {}
                    }
                }
                other => return Err(Error::Invalid(format!("unknown flag -{other}"))),
            }
        }
        Ok(f)
    }
}

/// podnet's config file (TOML).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the default network configuration (the first `*.conflist`/`*.conf` by name) is
    /// looked up for standalone pods.
    pub conf_dir: PathBuf,
    /// The shim's state: container state, network records.
    pub state_dir: PathBuf,
    /// Where standalone pods' network namespaces are mounted (`podnet-<id>`).
    pub netns_dir: PathBuf,
    /// The pod's interface name.
    pub ifname: String,
    /// The cgroup driver, as runc's `SystemdCgroup`: `true` runs every container in a systemd
    /// scope (`linux.cgroupsPath` in the `slice:prefix:name` form; an error if systemd does not
    /// run the host), `false` takes every path as a cgroupfs path. Unset: systemd for paths in
    /// the systemd form where systemd runs the host, cgroupfs otherwise.
    pub systemd_cgroup: Option<bool>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            conf_dir: DEFAULT_CONF_DIR.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            netns_dir: DEFAULT_NETNS_DIR.into(),
            ifname: "eth0".into(),
            systemd_cgroup: None,
        }
    }
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Invalid(format!("{origin}: {}", e.message())))
    }

    /// `path` must exist; the default path may be absent (defaults then).
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        let (path, required) = match (path, env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Config::default()),
            Err(e) => Err(Error::Invalid(format!("podnet config {}: {e}", path.display()))),
        }
    }

    /// The config for a Create with these options.
    pub fn for_options(opts: &RuntimeOptions) -> Result<Config> {
        if !opts.config_path.is_empty() {
            Config::load(Some(Path::new(&opts.config_path)))
        } else if !opts.config_body.is_empty() {
            Config::parse(&opts.config_body, "runtime options config_body")
        } else {
            Config::load(None)
        }
    }
}

/// `runtimeoptions.v1.Options`: what CRI sends for a runtime handler that is not runc (the
/// handler's `options` table), and `ctr run --runtime-config-path`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeOptions {
    pub type_url: String,
    pub config_path: String,
    pub config_body: String,
}

pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

impl RuntimeOptions {
    /// None or an empty Any: no options. Any other type is refused, naming it.
    pub fn from_any(any: Option<&Any>) -> Result<RuntimeOptions> {
        let Some(any) = any else { return Ok(RuntimeOptions::default()) };
        if any.type_url.is_empty() && any.value.is_empty() {
            return Ok(RuntimeOptions::default());
        }
        let name = any.type_url.rsplit('/').next().unwrap_or("");
        if name != RUNTIME_OPTIONS_TYPE {
            return Err(Error::Invalid(format!(
                "unsupported runtime options type {:?}: the podnet shim takes {RUNTIME_OPTIONS_TYPE} (config_path) or none",
                any.type_url
            )));
        }
        RuntimeOptions::decode(&any.value).map_err(|e| Error::Invalid(format!("decoding {RUNTIME_OPTIONS_TYPE}: {e}")))
    }

    fn decode(bytes: &[u8]) -> protobuf::Result<RuntimeOptions> {
        let mut o = RuntimeOptions::default();
        let mut is = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = is.read_raw_tag_or_eof()? {
            match tag {
                10 => o.type_url = is.read_string()?,
                18 => o.config_path = is.read_string()?,
                26 => o.config_body = is.read_string()?,
                _ => is.skip_field(protobuf::rt::WireType::new(tag & 7).unwrap_or(protobuf::rt::WireType::Varint))?,
            }
        }
        Ok(o)
    }

    pub fn encode(&self) -> Any {
        let mut out = Vec::new();
        {
            let mut os = protobuf::CodedOutputStream::vec(&mut out);
            for (field, v) in [(1, &self.type_url), (2, &self.config_path), (3, &self.config_body)] {
                if !v.is_empty() {
                    let _ = os.write_string(field, v);
                }
            }
            let _ = os.flush();
        }
        let mut any = Any::new();
        any.type_url = RUNTIME_OPTIONS_TYPE.to_string();
        any.value = out;
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags_as_containerd_passes_them() {
        let f =
            Flags::parse(&args("-namespace k8s.io -address /run/c.sock -publish-binary /bin/c -id abc -debug start"))
                .unwrap();
        assert_eq!((f.namespace.as_str(), f.id.as_str(), f.action.as_str(), f.debug), ("k8s.io", "abc", "start", true));
        let f = Flags::parse(&args("--namespace=n -id x -bundle /b delete")).unwrap();
        assert_eq!((f.bundle.as_str(), f.action.as_str()), ("/b", "delete"));
        assert!(Flags::parse(&args("-v")).unwrap().version);
        let f = Flags::parse(&args("-info")).unwrap();
        assert!(f.info && f.action.is_empty());
        assert!(Flags::parse(&args("-bogus 1")).unwrap_err().to_string().contains("-bogus"));
        assert!(Flags::parse(&args("-id")).unwrap_err().to_string().contains("needs a value"));
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c = Config::parse("conf_dir = \"/x\"\n", "t").unwrap();
        assert_eq!(c.conf_dir, PathBuf::from("/x"));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        let e = Config::parse("conf_dri = \"/x\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("conf_dri") && e.starts_with("t.toml"), "{e}");
        assert_eq!(c.systemd_cgroup, None);
        assert_eq!(Config::parse("systemd_cgroup = true\n", "t").unwrap().systemd_cgroup, Some(true));
        let e = Config::parse("systemd_cgroup = \"yes\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("bool"), "{e}");
        let e = Config::parse("state_dir = 3\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("state_dir") || e.contains("string"), "{e}");
    }

    #[test]
    fn runtime_options_round_trip_and_unknown_types() {
        let o = RuntimeOptions { config_path: "/etc/podnet/a.toml".into(), ..Default::default() };
        let any = o.encode();
        assert_eq!(RuntimeOptions::from_any(Some(&any)).unwrap(), o);
        let mut any2 = any.clone();
        any2.type_url = "type.googleapis.com/runtimeoptions.v1.Options".into();
        assert_eq!(RuntimeOptions::from_any(Some(&any2)).unwrap(), o);
        assert_eq!(RuntimeOptions::from_any(None).unwrap(), RuntimeOptions::default());
        let mut runc = Any::new();
        runc.type_url = "containerd.runc.v1.Options".into();
        let e = RuntimeOptions::from_any(Some(&runc)).unwrap_err().to_string();
        assert!(e.contains("containerd.runc.v1.Options"), "{e}");
    }
}
