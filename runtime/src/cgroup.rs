//! The cgroup drivers, chosen as runc's is chosen.
//!
//! - **cgroupfs**: `linux.cgroupsPath` is a directory below each hierarchy's root; a relative
//!   path is below the caller's own cgroup in that hierarchy (runc's cgroupfs driver, also for
//!   a path in the systemd form: its colons are part of the name).
//! - **systemd**: `linux.cgroupsPath` is `slice:prefix:name`; the container's cgroup is the
//!   transient unit `<prefix>-<name>.scope` in that slice, started and stopped by systemd over
//!   D-Bus (libcgroups' systemd manager on cgroup v2, podnet's patched v1 manager on legacy and
//!   hybrid hosts), its limits set as unit properties.
//!
//! podnet's `systemd_cgroup` (config key, per Create) picks: `true` is the systemd driver (an
//! error without systemd), `false` is cgroupfs, unset is systemd when the path is in the
//! systemd form and systemd runs this host, cgroupfs otherwise.
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libcgroups::common::{create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager};

use crate::error::{Error, Result};

/// A container's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// The file in a container's state directory that records its driver, for `cleanup` after the
/// shim that made it is gone.
const DRIVER_FILE: &str = "cgroup-driver";

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }

    /// Records the driver in the container's directory.
    pub(crate) fn save(self, dir: &Path) -> Result<()> {
        let path = dir.join(DRIVER_FILE);
        fs::write(&path, self.name()).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    /// The driver recorded in `dir`; cgroupfs for a container made before drivers were
    /// recorded (podnet then had no other).
    pub(crate) fn load(dir: &Path) -> Result<Driver> {
        let path = dir.join(DRIVER_FILE);
        match fs::read_to_string(&path) {
            Ok(s) if s == "systemd" => Ok(Driver::Systemd),
            Ok(s) if s == "cgroupfs" => Ok(Driver::Cgroupfs),
            Ok(s) => Err(Error::Container {
                context: format!("reading {}", path.display()),
                msg: format!("unknown cgroup driver {s:?}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Driver::Cgroupfs),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// A container's cgroup: the spec's path, its driver, and the directory it is below each
/// hierarchy's root.
pub(crate) struct Cgroup {
    id: String,
    /// `linux.cgroupsPath` as prepared.
    pub(crate) path: PathBuf,
    /// The directory (see [`dir_of`]).
    pub(crate) dir: PathBuf,
    pub(crate) driver: Driver,
    /// Built on first use for cgroupfs (building one reads mountinfo once per controller, which
    /// costs milliseconds on a v1 host); at once for systemd, whose unit path only systemd knows.
    mgr: Mutex<Option<AnyCgroupManager>>,
}

impl Cgroup {
    pub(crate) fn open(id: &str, path: &Path, driver: Driver) -> Result<Cgroup> {
        let (dir, mgr) = match driver {
            Driver::Systemd => {
                let m = manager(id, path, driver)?;
                (dir_of(&m, path), Some(m))
            }
            Driver::Cgroupfs => (path.to_path_buf(), None),
        };
        Ok(Cgroup { id: id.to_string(), path: path.to_path_buf(), dir, driver, mgr: Mutex::new(mgr) })
    }

    /// Runs `f` with the manager.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&AnyCgroupManager) -> Result<T>) -> Result<T> {
        let mut guard = self.mgr.lock().unwrap_or_else(|p| p.into_inner());
        let m = match guard.take() {
            Some(m) => m,
            None => manager(&self.id, &self.path, self.driver)?,
        };
        let r = f(&m);
        *guard = Some(m);
        r
    }

    /// True if the directory exists in any hierarchy podnet uses.
    pub(crate) fn exists(&self) -> bool {
        exists(&self.dir)
    }

    /// Removes the cgroup (and the systemd unit, stopped and its failed state reset) if there
    /// is one. Its processes must be gone.
    pub(crate) fn remove(&self) -> Result<()> {
        if self.driver == Driver::Cgroupfs && !self.exists() {
            return Ok(());
        }
        self.with(|m| {
            m.remove().map_err(|e| {
                Error::container(format!("removing cgroup {} ({} driver)", self.dir.display(), self.driver.name()), &e)
            })
        })
    }
}

/// True if systemd runs this host (as libcgroups and sd_booted(3) decide).
pub fn systemd_booted() -> bool {
    libcgroups::systemd::booted()
}

/// True if `path` is in the systemd driver's `slice:prefix:name` form.
pub fn is_systemd_form(path: &Path) -> bool {
    !path.is_absolute() && path.to_string_lossy().contains(':')
}

/// The driver and cgroupsPath of container `id`: `path` is the spec's (None: unset),
/// `systemd_cgroup` podnet's setting, `cgroupfs_default` the path for an unset one on cgroupfs.
/// `booted` says whether systemd runs the host. Errors are messages for `linux.cgroupsPath`.
pub fn choose(
    id: &str,
    path: Option<&Path>,
    systemd_cgroup: Option<bool>,
    booted: bool,
    cgroupfs_default: &str,
) -> Result<(Driver, PathBuf), String> {
    let systemd = match systemd_cgroup {
        Some(true) => {
            if !booted {
                return Err("systemd_cgroup = true, but systemd is not running on this host (no /run/systemd/system): set systemd_cgroup = false, or leave it unset".into());
            }
            true
        }
        Some(false) => false,
        None => booted && path.is_some_and(is_systemd_form),
    };
    if !systemd {
        return Ok((Driver::Cgroupfs, path.map(Path::to_path_buf).unwrap_or_else(|| cgroupfs_default.into())));
    }
    let Some(path) = path else {
        // runc's default for its systemd driver, with podnet's prefix.
        return Ok((Driver::Systemd, PathBuf::from(format!("system.slice:podnet:{id}"))));
    };
    let text = path.to_string_lossy();
    let parts: Vec<&str> = text.split(':').collect();
    if path.is_absolute() || parts.len() != 3 {
        return Err(format!(
            "{text:?} is not in the systemd driver's slice:prefix:name form (systemd_cgroup is on; a cgroupfs path needs systemd_cgroup = false)"
        ));
    }
    let (slice, prefix, name) = (parts[0], parts[1], parts[2]);
    if !slice.is_empty() {
        check_slice(slice).map_err(|why| format!("{text:?}: slice {slice:?} {why}"))?;
    }
    if prefix.is_empty() && !name.ends_with(".slice") {
        return Err(format!("{text:?}: the prefix is empty"));
    }
    if name.is_empty() || name.contains('/') {
        return Err(format!("{text:?}: the name {name:?} is not a unit name"));
    }
    Ok((Driver::Systemd, path.to_path_buf()))
}

/// A slice name systemd can make: `<a>-<b>.slice`, each dash-separated part non-empty, no `/`.
fn check_slice(slice: &str) -> Result<(), &'static str> {
    let Some(stem) = slice.strip_suffix(".slice") else { return Err("does not end in .slice") };
    if stem == "-" {
        return Ok(());
    }
    if stem.is_empty() || stem.contains('/') || stem.split('-').any(str::is_empty) {
        return Err("is not a slice name systemd can make (a-b-c.slice, no empty parts, no '/')");
    }
    if !stem.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\".contains(&b)) {
        return Err("has characters systemd does not take in a unit name");
    }
    Ok(())
}

/// The cgroup manager of container `id`.
fn manager(id: &str, path: &Path, driver: Driver) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_path_buf(),
        systemd_cgroup: driver == Driver::Systemd,
        container_name: id.to_string(),
    })
    .map_err(|e| Error::container(format!("cgroup {} ({} driver)", path.display(), driver.name()), &e))
}

/// The container's cgroup directory below the hierarchy roots: the unit's for the systemd
/// driver, the spec's path for cgroupfs (relative: below the caller's own cgroup, see
/// [`in_hierarchy`]).
fn dir_of(mgr: &AnyCgroupManager, path: &Path) -> PathBuf {
    match mgr {
        AnyCgroupManager::SystemdLegacy(m) => m.cgroups_path().to_path_buf(),
        AnyCgroupManager::Systemd(m) => m.cgroups_path().to_path_buf(),
        _ => path.to_path_buf(),
    }
}

/// `dir` in the hierarchy mounted at `mount`: an absolute `dir` is below its root, a relative
/// one below this process's own cgroup there (runc's rule).
pub fn in_hierarchy(mount: &Path, dir: &Path) -> PathBuf {
    if let Ok(rel) = dir.strip_prefix("/") {
        return mount.join(rel);
    }
    let own = fs::read_to_string("/proc/self/cgroup").ok().and_then(|t| own_cgroup(&t, mount)).unwrap_or_default();
    mount.join(own.trim_start_matches('/')).join(dir)
}

/// This process's cgroup (from /proc/self/cgroup's text) in the hierarchy mounted at `mount`:
/// `/sys/fs/cgroup` or `/sys/fs/cgroup/unified` is the unified one (`0::`), any other the v1
/// hierarchy of the controllers its name lists (`cpu,cpuacct`), or `name=<x>`.
fn own_cgroup(text: &str, mount: &Path) -> Option<String> {
    let unified = mount == Path::new("/sys/fs/cgroup") || mount == Path::new("/sys/fs/cgroup/unified");
    let name = mount.file_name()?.to_string_lossy().into_owned();
    let mut want: Vec<&str> = name.split(',').collect();
    want.sort_unstable();
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = if unified {
            ctrls.is_empty()
        } else {
            let mut have: Vec<&str> =
                ctrls.split(',').map(|c| if c == "name=systemd" { "systemd" } else { c }).collect();
            have.sort_unstable();
            !ctrls.is_empty() && have == want
        };
        hit.then(|| path.to_string())
    })
}

/// True if the cgroup directory `dir` (see [`dir_of`]) exists in any hierarchy podnet uses.
fn exists(dir: &Path) -> bool {
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
        .iter()
        .any(|root| in_hierarchy(Path::new(root), dir).is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(path: Option<&str>, setting: Option<bool>, booted: bool) -> Result<(Driver, PathBuf), String> {
        choose("c1", path.map(Path::new), setting, booted, "/podnet/c1")
    }

    #[test]
    fn the_driver_is_chosen_as_runcs() {
        let slice = "kubepods-besteffort-pod1.slice:cri-containerd:c1";
        // Unset: the path's form, where systemd runs.
        assert_eq!(pick(Some(slice), None, true).unwrap(), (Driver::Systemd, PathBuf::from(slice)));
        assert_eq!(pick(Some(slice), None, false).unwrap(), (Driver::Cgroupfs, PathBuf::from(slice)));
        assert_eq!(pick(Some("/k8s/c1"), None, true).unwrap(), (Driver::Cgroupfs, PathBuf::from("/k8s/c1")));
        assert_eq!(pick(None, None, true).unwrap(), (Driver::Cgroupfs, PathBuf::from("/podnet/c1")));
        // false: cgroupfs, the systemd form taken literally, as runc's cgroupfs driver does.
        assert_eq!(pick(Some(slice), Some(false), true).unwrap(), (Driver::Cgroupfs, PathBuf::from(slice)));
        // true: systemd, or a clear error.
        assert_eq!(pick(Some(slice), Some(true), true).unwrap().0, Driver::Systemd);
        assert_eq!(pick(None, Some(true), true).unwrap().1, PathBuf::from("system.slice:podnet:c1"));
        let e = pick(Some(slice), Some(true), false).unwrap_err();
        assert!(e.contains("systemd is not running"), "{e}");
        let e = pick(Some("/k8s/c1"), Some(true), true).unwrap_err();
        assert!(e.contains("slice:prefix:name"), "{e}");
    }

    #[test]
    fn slices_systemd_cannot_make_are_refused() {
        for bad in ["kubepods-.slice:p:n", "a/b.slice:p:n", "kubepods:p:n", "-a.slice:p:n", "k p.slice:p:n"] {
            let e = pick(Some(bad), Some(true), true).unwrap_err();
            assert!(e.contains("slice"), "{bad}: {e}");
        }
        assert!(pick(Some("a:b"), Some(true), true).unwrap_err().contains("slice:prefix:name"));
        assert!(pick(Some("a.slice::n"), Some(true), true).unwrap_err().contains("prefix"));
        assert!(pick(Some(":p:n"), Some(true), true).is_ok(), "an empty slice is system.slice");
        assert!(pick(Some("-.slice:p:n"), Some(true), true).is_ok(), "the root slice");
    }

    #[test]
    fn own_cgroup_per_hierarchy() {
        let t = "12:cpu,cpuacct:/a\n4:memory:/m/x\n1:name=systemd:/s\n0::/u\n";
        assert_eq!(own_cgroup(t, Path::new("/sys/fs/cgroup/memory")).as_deref(), Some("/m/x"));
        assert_eq!(own_cgroup(t, Path::new("/sys/fs/cgroup/cpu,cpuacct")).as_deref(), Some("/a"));
        assert_eq!(own_cgroup(t, Path::new("/sys/fs/cgroup/systemd")).as_deref(), Some("/s"));
        assert_eq!(own_cgroup(t, Path::new("/sys/fs/cgroup/unified")).as_deref(), Some("/u"));
        assert_eq!(own_cgroup(t, Path::new("/sys/fs/cgroup")).as_deref(), Some("/u"));
        assert_eq!(own_cgroup(t, Path::new("/sys/fs/cgroup/pids")), None);
        assert_eq!(
            in_hierarchy(Path::new("/sys/fs/cgroup/pids"), Path::new("/k/c")),
            PathBuf::from("/sys/fs/cgroup/pids/k/c")
        );
    }
}
