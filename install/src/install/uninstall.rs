//! --uninstall: removes what the same flags install, and only files podnet wrote (the link to
//! the shim, the shim, a conflist of type `podnet`, the drop-in or k3s template and
//! /etc/podnet/config.toml with hack/install's markers). A step that fails does not stop the
//! others: the errors are reported together at the end.

use super::*;

impl Install {
    pub(super) fn uninstall(&self) -> Result<(), Die> {
        let mut errors = Vec::new();
        self.uninstall_steps(&mut |r| {
            if let Err(e) = r {
                errors.push(e)
            }
        });
        if errors.is_empty() {
            if !self.flags.dry_run {
                let what = if self.flags.k3s { "k3s" } else { "containerd" };
                log(&format!("done; restart {what} so that it forgets the handler"));
            }
            return Ok(());
        }
        let code = errors.iter().map(|e| e.code).max().unwrap_or(1);
        let msgs: Vec<String> = errors.into_iter().map(|e| e.msg).collect();
        Err(Die { code, msg: format!("uninstall incomplete: {}", msgs.join("; ")) })
    }

    /// Each removal, its result handed to `step`.
    fn uninstall_steps(&self, step: &mut dyn FnMut(Result<(), Die>)) {
        let f = &self.flags;
        let files = &self.files;
        if !f.dry_run {
            let from = if f.destdir.is_empty() { String::new() } else { format!(" from {}", f.destdir) };
            log(&format!("uninstalling{from}"));
        }
        // The plugin link: only a link to the shim, or a copy of the shim.
        let plugin = files.at(&self.plugin_path);
        match std::fs::symlink_metadata(&plugin) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&plugin) {
                Err(e) => step(Err(Die::io(format!("cannot read {}", plugin.display()), e))),
                Ok(target) if target == Path::new(&self.shim_path) => step(files.remove(&self.plugin_path)),
                Ok(target) => warn(&format!(
                    "{} points to {}, not {}: left alone",
                    self.plugin_path,
                    target.display(),
                    self.shim_path
                )),
            },
            Ok(m) if m.is_file() => {
                let shim = files.at(&self.shim_path);
                if shim.is_file() && same_content(&plugin, &shim) {
                    step(files.remove(&self.plugin_path));
                } else {
                    warn(&format!("{} is not podnet's shim: left alone", self.plugin_path));
                }
            }
            _ => log(&format!("{} is not there", self.plugin_path)),
        }
        step(files.remove(&self.shim_path));
        let conflist = files.at(&self.conflist_path);
        let podnet_conflist = std::fs::read_to_string(&conflist).is_ok_and(|t| is_podnet_conflist(&t));
        if conflist.is_file() && !podnet_conflist {
            warn(&format!("{} is not a podnet conflist: left alone", self.conflist_path));
        } else {
            step(files.remove(&self.conflist_path));
        }
        step(files.remove_empty_dir(&f.cni_conf_dir));
        if f.k3s {
            if files.at(K3S_TEMPLATE_PATH).is_file() && !files.contains(K3S_TEMPLATE_PATH, K3S_MARKER) {
                warn(&format!("{K3S_TEMPLATE_PATH} was not written by podnet: left alone"));
            } else {
                step(files.remove(K3S_TEMPLATE_PATH));
            }
        } else if !f.no_containerd_config {
            if files.at(&self.dropin_path).is_file() && !files.contains(&self.dropin_path, DROPIN_MARKER) {
                warn(&format!("{} was not written by podnet: left alone", self.dropin_path));
            } else {
                step(files.remove(&self.dropin_path));
            }
        }
        if files.at(PODNET_CONFIG_PATH).is_file() && !files.contains(PODNET_CONFIG_PATH, PODNET_CONFIG_MARKER) {
            warn(&format!("{PODNET_CONFIG_PATH} was not written by podnet's hack/install: left alone"));
        } else {
            step(files.remove(PODNET_CONFIG_PATH));
        }
    }
}
