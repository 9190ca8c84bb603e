//! The install and the uninstall: what goes where, the cgroup driver and why, the advice about
//! config.toml, and the checks against the running containerd after a real install.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::containerd::{self, Dump, Family, MainConfig};
use crate::files::{same_content, Files};
use crate::flags::{CgroupDriver, Flags};
use crate::render::{self, Vars, DROPIN_MARKER, K3S_MARKER, PODNET_CONFIG_MARKER};
use crate::{log, warn, Die, ME};

const SHIM_NAME: &str = "containerd-shim-podnet-v2";
const K3S_TEMPLATE_PATH: &str = "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl";
const PODNET_CONFIG_PATH: &str = "/etc/podnet/config.toml";
const TEMPLATES: [&str; 4] = [
    "containerd/podnet-v2.toml.in",
    "containerd/podnet-v3.toml.in",
    "cni/10-podnet.conflist.in",
    "k3s/config-v3.toml.tmpl",
];

/// Everything the steps need: the flags, containerd, and where each file goes (paths as the
/// running system sees them; written under --destdir).
struct Install {
    flags: Flags,
    repo: PathBuf,
    /// None only for --uninstall without --containerd-version.
    family: Option<Family>,
    containerd: Option<String>,
    files: Files,
    shim_path: String,
    plugin_path: String,
    conflist_path: String,
    dropin_path: String,
}

fn euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Checks what the flags name on this system, then installs or uninstalls.
pub fn run(flags: Flags, repo: PathBuf) -> Result<(), Die> {
    let containerd = match &flags.containerd {
        Some(bin) if !containerd::is_executable_file(Path::new(bin)) => {
            return Err(Die::usage(format!("--containerd {}: not an executable file", crate::shell_quote(bin))))
        }
        Some(bin) => Some(bin.clone()),
        None if flags.uninstall => None,
        None => containerd::find_on_path("containerd"),
    };
    let family = match (&flags.containerd_version, &containerd) {
        (Some(v), _) => Some(containerd::version_family(v).ok_or_else(|| {
            Die::usage(format!(
                "--containerd-version {}: must be 2 (containerd 2.x) or 1.7",
                crate::shell_quote(v)
            ))
        })?),
        (None, _) if flags.uninstall => None,
        (None, None) => {
            return Err(Die::usage(
                "cannot tell containerd's version: no containerd on PATH; pass --containerd-version 2 or 1.7 (or --containerd PATH)",
            ))
        }
        (None, Some(bin)) => Some(containerd::ask_version(bin)?),
    };
    if flags.k3s && family == Some(Family::V17) {
        return Err(Die::usage(format!(
            "--k3s: only k3s with containerd 2.x (config-v3.toml.tmpl) is supported, not --containerd-version {}",
            flags.containerd_version.as_deref().unwrap_or("")
        )));
    }
    if family == Some(Family::V17) && flags.config_version == Some(3) {
        return Err(Die::usage("--config-version 3: containerd 1.7 reads only config version 2"));
    }
    if flags.k3s && flags.no_containerd_config {
        return Err(Die::usage(
            "--k3s and --no-containerd-config: --k3s writes k3s's containerd template; leave out one of them",
        ));
    }
    if let Some(binary) = &flags.binary {
        if !containerd::is_executable_file(Path::new(binary)) {
            return Err(Die::usage(format!("--binary {}: not an executable file", crate::shell_quote(binary))));
        }
    }
    let deploy = repo.join("deploy");
    for t in TEMPLATES {
        if !deploy.join(t).is_file() {
            return Err(Die::usage(format!(
                "template {}/{t} is missing (run {ME} from a podnet checkout)",
                deploy.display()
            )));
        }
    }
    if flags.destdir.is_empty() && !flags.dry_run && !euid_is_root() {
        return Err(Die::usage("needs root (or --destdir DIR to stage the files, or --dry-run)"));
    }
    let install = Install {
        files: Files { destdir: flags.destdir.clone(), dry_run: flags.dry_run },
        shim_path: format!("{}/bin/{SHIM_NAME}", flags.prefix),
        plugin_path: format!("{}/podnet", flags.cni_bin_dir),
        conflist_path: format!("{}/10-podnet.conflist", flags.cni_conf_dir),
        dropin_path: format!("{}/podnet.toml", flags.conf_dir),
        flags,
        repo,
        family,
        containerd,
    };
    if install.flags.uninstall {
        install.uninstall()
    } else {
        install.install()
    }
}

/// Whether `text` is a conflist with a plugin of type `podnet`.
fn is_podnet_conflist(text: &str) -> bool {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else { return false };
    json["plugins"].as_array().is_some_and(|ps| ps.iter().any(|p| p["type"] == "podnet"))
}

/// The decisions of an install that depend on config.toml.
struct Decided {
    /// The drop-in's config version.
    config_version: u8,
    driver: CgroupDriver,
    driver_reason: String,
}

/// The drop-in's config version: the flag, 2 for 1.7, else config.toml's (3 without one).
fn config_version(flag: Option<u8>, family: Family, main: Option<&MainConfig>) -> u8 {
    match (flag, family) {
        (Some(v), _) => v,
        (None, Family::V17) => 2,
        (None, Family::V2) if main.and_then(|m| m.version) == Some(2) => 2,
        (None, Family::V2) => 3,
    }
}

/// podnet's cgroup driver and why: the flag; k3s's own choice; containerd's SystemdCgroup for
/// runc (the kubelet's driver must match runc's, and podnet's the kubelet's); systemd as PID 1;
/// else cgroupfs.
fn cgroup_driver(flags: &Flags, main: Option<&MainConfig>, systemd_booted: bool) -> (CgroupDriver, String) {
    if let Some(d) = flags.cgroup_driver {
        return (d, "--cgroup-driver".into());
    }
    if flags.k3s {
        return (
            CgroupDriver::Auto,
            "k3s picks its kubelet's driver itself: podnet follows each cgroupsPath's form".into(),
        );
    }
    if let Some(on) = main.and_then(|m| m.runc_systemd_cgroup) {
        let driver = if on { CgroupDriver::Systemd } else { CgroupDriver::Cgroupfs };
        return (driver, format!("SystemdCgroup = {on} for runc in {}", flags.main_config));
    }
    if systemd_booted {
        (CgroupDriver::Systemd, "systemd is PID 1 (/run/systemd/system)".into())
    } else {
        (CgroupDriver::Cgroupfs, "systemd is not PID 1 (no /run/systemd/system)".into())
    }
}

impl Install {
    fn family(&self) -> Family {
        self.family.unwrap_or(Family::V2)
    }

    fn template(&self, name: &str) -> Result<(String, String), Die> {
        let path = self.repo.join("deploy").join(name);
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| Die::usage(format!("template {shown}: {e}")))?;
        Ok((text, shown))
    }

    fn writes_dropin(&self) -> bool {
        !self.flags.k3s && !self.flags.no_containerd_config
    }

    /// config.toml, read only where the install depends on it: for the drop-in, and for the
    /// cgroup driver unless the flag or --k3s decides it.
    fn main_config(&self) -> Result<Option<MainConfig>, Die> {
        let needed = self.writes_dropin() || (self.flags.cgroup_driver.is_none() && !self.flags.k3s);
        if !needed {
            return Ok(None);
        }
        MainConfig::read(&self.files.at(&self.flags.main_config), &self.flags.main_config)
    }

    fn install(&self) -> Result<(), Die> {
        let f = &self.flags;
        let family = self.family();
        // Everything is read and rendered before anything is written.
        let main = self.main_config()?;
        let decided = {
            let (driver, driver_reason) = cgroup_driver(f, main.as_ref(), Path::new("/run/systemd/system").is_dir());
            Decided { config_version: config_version(f.config_version, family, main.as_ref()), driver, driver_reason }
        };
        let vars = Vars {
            cni_version: family.cni_version().into(),
            subnet: f.subnet.clone(),
            subnet6: f.subnet6.clone(),
            address: f.address.clone(),
            namespace: f.namespace.clone(),
            cni_conf_dir: f.cni_conf_dir.clone(),
            conf_dir: f.conf_dir.clone(),
            restrict_oom: f.restrict_oom,
            podnet_config: PODNET_CONFIG_PATH.into(),
        };
        let (text, shown) = self.template("cni/10-podnet.conflist.in")?;
        let conflist = render::conflist(&text, &shown, &vars)?;
        let podnet_config = render::podnet_config(decided.driver, &decided.driver_reason);
        let podnet_config_dest = self.files.at(PODNET_CONFIG_PATH);
        let write_podnet_config =
            !podnet_config_dest.is_file() || self.files.contains(PODNET_CONFIG_PATH, PODNET_CONFIG_MARKER);
        let containerd_config = if f.k3s {
            if self.files.at(K3S_TEMPLATE_PATH).is_file() && !self.files.contains(K3S_TEMPLATE_PATH, K3S_MARKER) {
                return Err(Die::usage(format!(
                    "{K3S_TEMPLATE_PATH} exists and was not written by podnet: add the podnet table of deploy/k3s/config-v3.toml.tmpl to it by hand (nothing written)"
                )));
            }
            let (text, shown) = self.template("k3s/config-v3.toml.tmpl")?;
            Some(render::k3s(&text, &shown, &f.cni_conf_dir)?)
        } else if !f.no_containerd_config {
            let (text, shown) = self.template(&format!("containerd/podnet-v{}.toml.in", decided.config_version))?;
            Some(render::dropin(&text, &shown, &vars, decided.config_version)?)
        } else {
            None
        };

        let binary = match &f.binary {
            Some(b) => PathBuf::from(b),
            None => self.build_shim()?,
        };

        let what = if f.k3s {
            format!("k3s template {K3S_TEMPLATE_PATH}")
        } else if f.no_containerd_config {
            "no containerd config".into()
        } else {
            format!("drop-in config version {}", decided.config_version)
        };
        log(&format!("containerd {}: conflist cniVersion {}, {what}", family.name(), family.cni_version()));
        self.files.install_binary(&binary, &self.shim_path)?;
        self.files.link(&self.plugin_path, &self.shim_path)?;
        self.files.write(&self.conflist_path, &conflist)?;
        log(&format!("podnet's cgroup driver: {} ({})", decided.driver.name(), decided.driver_reason));
        if write_podnet_config {
            self.files.write(PODNET_CONFIG_PATH, &podnet_config)?;
        } else {
            let want = match decided.driver {
                CgroupDriver::Systemd => "systemd_cgroup = true",
                CgroupDriver::Cgroupfs => "systemd_cgroup = false",
                CgroupDriver::Auto => "no systemd_cgroup key",
            };
            warn(&format!(
                "{PODNET_CONFIG_PATH} exists and was not written by podnet: left alone; it should have {want}"
            ));
        }
        match (&containerd_config, f.k3s) {
            (Some(text), true) => self.files.write(K3S_TEMPLATE_PATH, text)?,
            (Some(text), false) => {
                self.files.write(&self.dropin_path, text)?;
                self.advise_main_config(main.as_ref(), decided.config_version);
            }
            (None, _) => {}
        }
        if !f.dry_run && !f.k3s {
            self.verify_with_containerd();
        }
        self.hint_oom_score_adj();
        if !f.dry_run && f.destdir.is_empty() {
            println!();
            if f.k3s {
                println!("Next: restart k3s (systemctl restart k3s, or k3s-agent) and create a RuntimeClass with handler podnet.");
            } else if !f.no_containerd_config {
                println!(
                    "Next: restart containerd (systemctl restart containerd), then: crictl runp -r podnet pod.json"
                );
            }
        }
        Ok(())
    }

    /// `cargo build --release --locked -p podnet-shim` in the checkout (announced only, with
    /// --dry-run): the shim to install.
    fn build_shim(&self) -> Result<PathBuf, Die> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.repo.join("target"));
        let binary = target.join("release").join(SHIM_NAME);
        if self.flags.dry_run {
            log(&format!("would run: cargo build --release --locked -p podnet-shim (in {})", self.repo.display()));
            return Ok(binary);
        }
        if containerd::find_on_path("cargo").is_none() {
            return Err(Die::usage("cargo is not on PATH: build the shim first and pass --binary PATH"));
        }
        log("cargo build --release --locked -p podnet-shim");
        let status = Command::new("cargo")
            .args(["build", "--release", "--locked", "-p", "podnet-shim"])
            .current_dir(&self.repo)
            .status()
            .map_err(|e| Die::io("cannot run cargo", e))?;
        if !status.success() {
            return Err(Die {
                code: status.code().unwrap_or(1),
                msg: "cargo build --release --locked -p podnet-shim failed".into(),
            });
        }
        if !containerd::is_executable_file(&binary) {
            return Err(Die::usage(format!("cargo build left no {}", binary.display())));
        }
        Ok(binary)
    }
}

mod advice;
mod uninstall;

#[cfg(test)]
mod tests;
