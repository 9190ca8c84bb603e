//! What containerd says: its version (`containerd --version`), its main config.toml (read with
//! a TOML parser, never written) and the merged config `containerd config dump` prints.
//!
//! config.toml's layouts: config version 2 (containerd 1.7, and Debian's containerd 2.x
//! package) keeps CRI under `plugins."io.containerd.grpc.v1.cri"`; version 3 (containerd 2.x)
//! splits it, the runtimes under `plugins."io.containerd.cri.v1.runtime"`; version 1 (no
//! `version` key) named the plugin `cri`.

use std::ops::Range;
use std::path::Path;
use std::process::{Command, Stdio};

use toml_edit::{ImDocument, Item};

use crate::{glob, Die};

/// containerd 2.x's CRI runtime plugin (config version 3).
pub const V3_RUNTIME: &str = "io.containerd.cri.v1.runtime";
/// containerd 1.7's CRI plugin (config version 2), which 2.x migrates.
pub const V2_CRI: &str = "io.containerd.grpc.v1.cri";
/// The CRI plugin's id in a version 1 config.
const V1_CRI: &str = "cri";

/// The containerd releases podnet supports, as far as the install differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V2,
    V17,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V2 => "2",
            Family::V17 => "1.7",
        }
    }
    /// The conflist's cniVersion: containerd 1.7's libcni stops at 1.0.0.
    pub fn cni_version(self) -> &'static str {
        match self {
            Family::V2 => "1.1.0",
            Family::V17 => "1.0.0",
        }
    }
}

/// "2.1.9+unknown" / "v1.7.24" / "2" -> 2 or 1.7; anything else is not supported.
pub fn version_family(version: &str) -> Option<Family> {
    let v = version.strip_prefix('v').unwrap_or(version);
    let digit_after =
        |prefix: &str| v.strip_prefix(prefix).and_then(|r| r.chars().next()).is_some_and(|c| c.is_ascii_digit());
    if v == "2" || v == "2.x" || digit_after("2.") {
        return Some(Family::V2);
    }
    if v == "1.7" || v == "1.7.x" || digit_after("1.7.") || v.starts_with("1.7~") {
        return Some(Family::V17);
    }
    None
}

/// Whether `path` is a file someone may execute (bash's `-f && -x`).
pub fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` on $PATH, as `command -v` finds it.
pub fn find_on_path(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable_file(p))
        .map(|p| p.display().to_string())
}

/// The version `containerd --version` reports (its third word: "containerd <module> <version>
/// <commit>").
pub fn ask_version(containerd: &str) -> Result<Family, Die> {
    let failed = || Die::usage(format!("'{containerd} --version' failed; pass --containerd-version 2 or 1.7"));
    let out = Command::new(containerd).arg("--version").stdin(Stdio::null()).stderr(Stdio::null()).output();
    let out = out.map_err(|_| failed())?;
    if !out.status.success() {
        return Err(failed());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let reported = text.lines().next().and_then(|l| l.split_whitespace().nth(2)).unwrap_or("");
    version_family(reported).ok_or_else(|| {
        Die::usage(format!("containerd {reported} ({containerd}) is not supported: podnet needs containerd 1.7 or 2.x"))
    })
}

/// Line and column (1-based) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// "FILE: line L, column C: " for a span of `text`, or "FILE: " without one.
pub fn at(file: &str, text: &str, span: Option<Range<usize>>) -> String {
    match span {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{file}: line {line}, column {column}: ")
        }
        None => format!("{file}: "),
    }
}

/// What hack/install takes from containerd's main config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainConfig {
    /// `version = N`; none is config version 1.
    pub version: Option<i64>,
    /// The `imports` entries, as written (relative ones are relative to config.toml's dir).
    pub imports: Vec<String>,
    /// runc's `SystemdCgroup` under the CRI plugin this config version configures runc in.
    pub runc_systemd_cgroup: Option<bool>,
    /// Whether it configures the version 2 (or 1) CRI plugin: containerd 1.7 replaces that
    /// whole table with an imported one.
    pub v2_cri_tables: bool,
}

impl MainConfig {
    /// Parses config.toml (`file` names it in errors): a malformed one is an error that names
    /// the file and the line, as is a key of the wrong type.
    pub fn parse(text: &str, file: &str) -> Result<MainConfig, Die> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let message = e.message().trim_end().replace('\n', "; ");
            Die::usage(format!("{}not valid TOML: {message}", at(file, text, e.span())))
        })?;
        let root = doc.as_item();
        let wrong = |item: &Item, what: &str| Die::usage(format!("{}{what}", at(file, text, item.span())));
        let version = match root.get("version") {
            None => None,
            Some(v) => Some(v.as_integer().ok_or_else(|| wrong(v, "`version` is not an integer"))?),
        };
        let imports = match root.get("imports") {
            None => Vec::new(),
            Some(item) => {
                let not_strings = || wrong(item, "`imports` is not an array of strings");
                let array = item.as_array().ok_or_else(not_strings)?;
                array.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(not_strings)).collect::<Result<_, _>>()?
            }
        };
        let plugins = root.get("plugins");
        let runc_plugins: &[&str] = match version {
            Some(3) => &[V3_RUNTIME],
            Some(2) => &[V2_CRI],
            _ => &[V2_CRI, V1_CRI],
        };
        let mut runc_systemd_cgroup = None;
        for plugin in runc_plugins {
            let setting = lookup(plugins, &[plugin, "containerd", "runtimes", "runc", "options", "SystemdCgroup"]);
            if let Some(item) = setting {
                let on = item.as_bool().ok_or_else(|| wrong(item, "runc's `SystemdCgroup` is not true or false"))?;
                runc_systemd_cgroup = Some(on);
                break;
            }
        }
        let v2_cri_tables = [V2_CRI, V1_CRI].iter().any(|p| lookup(plugins, &[p]).is_some());
        Ok(MainConfig { version, imports, runc_systemd_cgroup, v2_cri_tables })
    }

    /// Reads and parses config.toml at `file` (`shown` names it in errors); `None` when it is
    /// not a file.
    pub fn read(file: &Path, shown: &str) -> Result<Option<MainConfig>, Die> {
        if !file.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(file).map_err(|e| Die::usage(format!("{shown}: cannot read it: {e}")))?;
        MainConfig::parse(&text, shown).map(Some)
    }

    /// Whether one of the imports (an entry, or a pattern matching it) names `dropin`;
    /// `main_config` is config.toml's path, which relative entries are relative to.
    pub fn imports_file(&self, main_config: &str, dropin: &str) -> bool {
        let dir = Path::new(main_config).parent().unwrap_or(Path::new("/"));
        self.imports.iter().filter(|e| !e.is_empty()).any(|entry| {
            let entry = if entry.starts_with('/') { entry.clone() } else { dir.join(entry).display().to_string() };
            glob::matches(&entry, dropin)
        })
    }
}

/// The item at `keys` below `from` (tables, inline tables and dotted keys alike).
fn lookup<'a>(from: Option<&'a Item>, keys: &[&str]) -> Option<&'a Item> {
    keys.iter().try_fold(from?, |item, key| item.get(key))
}

/// What `containerd config dump` shows of the merged config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    /// A `runtimes.podnet` table under either CRI plugin.
    pub podnet_handler: bool,
    /// The CRI plugin's CNI plugin dirs (`bin_dir` of 1.7 and 2.0, `bin_dirs` of 2.1), in order.
    pub cni_bin_dirs: Vec<String>,
}

impl Dump {
    pub fn parse(text: &str) -> Result<Dump, String> {
        let doc = ImDocument::parse(text).map_err(|e| e.to_string())?;
        let plugins = doc.as_item().get("plugins");
        let podnet_handler =
            [V3_RUNTIME, V2_CRI].iter().any(|p| lookup(plugins, &[p, "containerd", "runtimes", "podnet"]).is_some());
        let mut cni_bin_dirs = Vec::new();
        for plugin in [V3_RUNTIME, V2_CRI] {
            for key in ["bin_dir", "bin_dirs"] {
                match lookup(plugins, &[plugin, "cni", key]) {
                    Some(Item::Value(toml_edit::Value::String(s))) => cni_bin_dirs.push(s.value().clone()),
                    Some(item) => {
                        let dirs = item.as_array().into_iter().flatten().filter_map(|v| v.as_str());
                        cni_bin_dirs.extend(dirs.map(str::to_owned));
                    }
                    None => {}
                }
            }
        }
        cni_bin_dirs.retain(|d| !d.is_empty());
        Ok(Dump { podnet_handler, cni_bin_dirs })
    }
}

#[cfg(test)]
mod tests;
