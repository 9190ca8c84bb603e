//! What hack/install says after writing the drop-in: whether config.toml imports it (and the
//! line to add), version and 1.7 caveats, what `containerd config dump` makes of the result,
//! and whether the kernel lets pods lower oom_score_adj.

use super::*;

impl Install {
    /// Advice about config.toml (read only): the imports line, and 1.7's whole-table
    /// replacement.
    pub(super) fn advise_main_config(&self, main: Option<&MainConfig>, config_version: u8) {
        let main_config = &self.flags.main_config;
        let dropin = &self.dropin_path;
        let glob = format!("{}/*.toml", self.flags.conf_dir);
        let Some(main) = main else {
            println!();
            println!("containerd reads {dropin} only if its config imports it, and {main_config} does not exist.");
            println!("Create {main_config} with:");
            println!("    version = {config_version}");
            println!("    imports = [\"{glob}\"]");
            return;
        };
        if main.imports_file(main_config, dropin) {
            log(&format!("{main_config} imports {dropin}"));
        } else {
            println!();
            println!("{main_config} does not import {dropin}. Add this line near its top (before any [table]),");
            println!("or add the path to its existing imports list:");
            println!("    imports = [\"{glob}\"]");
        }
        match main.version {
            Some(v) if v != i64::from(config_version) => warn(&format!(
                "{main_config} is config version {v} but the drop-in is version {config_version}; containerd ignores the settings of the older version when they are mixed"
            )),
            Some(_) => {}
            None => warn(&format!(
                "{main_config} has no 'version = N' line (config version 1): convert it to version {config_version}"
            )),
        }
        if self.family() == Family::V17 && main.v2_cri_tables {
            println!();
            warn(&format!(
                "containerd 1.7 does not merge imported plugin tables: the imported {dropin} REPLACES the whole"
            ));
            warn(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"] table of {main_config}, whose CRI settings would be lost."
            ));
            warn(&format!(
                "Either move those settings into {dropin}, or copy its tables into {main_config} and do not import it."
            ));
        }
    }

    /// After a real install: asks containerd what it makes of the merged config.
    pub(super) fn verify_with_containerd(&self) {
        let main_config = &self.flags.main_config;
        let Some(containerd) = &self.containerd else { return };
        if !self.flags.destdir.is_empty() || !Path::new(main_config).is_file() {
            return;
        }
        let out = Command::new(containerd)
            .args(["-c", main_config, "config", "dump"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            _ => {
                warn(&format!(
                    "'{containerd} -c {main_config} config dump' failed: check the config before restarting containerd"
                ));
                return;
            }
        };
        let dump = match Dump::parse(&String::from_utf8_lossy(&out.stdout)) {
            Ok(d) => d,
            Err(e) => {
                warn(&format!("containerd -c {main_config} config dump is not TOML ({e}): check the config"));
                return;
            }
        };
        if dump.podnet_handler {
            log(&format!("containerd -c {main_config} config dump shows the podnet handler"));
        } else {
            warn(&format!(
                "containerd -c {main_config} config dump does not show the podnet handler (see the imports advice above)"
            ));
        }
        let dirs = &dump.cni_bin_dirs;
        if let Some(first) = dirs.first() {
            if !dirs.contains(&self.flags.cni_bin_dir) {
                warn(&format!(
                    "containerd's CRI plugin looks for CNI plugins in: {}; {} is not there.",
                    dirs.join(" "),
                    self.plugin_path
                ));
                warn(&format!(
                    "Rerun with --cni-bin-dir {first}, or add {} to the CRI plugin's CNI bin_dir(s).",
                    self.flags.cni_bin_dir
                ));
            }
        }
    }

    /// Where the kernel refuses oom_score_adj < 0, pods fail unless CRI restricts it.
    pub(super) fn hint_oom_score_adj(&self) {
        if self.flags.restrict_oom || !self.flags.destdir.is_empty() || !euid_is_root() {
            return;
        }
        if !can_lower_oom_score_adj() {
            warn("this kernel refuses oom_score_adj < 0: pods will fail to start unless containerd's CRI plugin");
            warn("has restrict_oom_score_adj = true (rerun with --restrict-oom-score-adj)");
        }
    }
}

/// Whether this process may set its oom_score_adj to -1 (it is put back after).
fn can_lower_oom_score_adj() -> bool {
    const FILE: &str = "/proc/self/oom_score_adj";
    let Ok(old) = std::fs::read_to_string(FILE) else { return false };
    if std::fs::write(FILE, "-1").is_err() {
        return false;
    }
    // Raising it back is always allowed.
    let _ = std::fs::write(FILE, old.trim());
    true
}
