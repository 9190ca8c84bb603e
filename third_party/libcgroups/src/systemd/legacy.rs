//! podnet: systemd's cgroup driver on cgroup v1 (the legacy and hybrid layouts), which
//! `create_cgroup_manager` previously answered with the cgroupfs v1 manager on the literal
//! `slice:prefix:name` path. It works as runc's systemd v1 driver does:
//!
//! - the container's unit (a transient scope `<prefix>-<name>.scope` in the slice, or the slice
//!   itself when the name is one) is started, and stopped, through systemd's D-Bus API;
//! - its resources are set as unit properties (`MemoryLimit`, `CPUShares`, `CPUQuotaPerSecUSec`,
//!   `TasksMax`, `BlockIOWeight`, `DevicePolicy` + `DeviceAllow`), so that whenever systemd
//!   realizes the unit again it writes the same values, not its defaults;
//! - every v1 hierarchy (also those systemd does not manage: cpuset, freezer, hugetlb, net_cls,
//!   ...) is joined and written through cgroupfs at the unit's path, as the v1 manager does, and
//!   stats, freezing and the process list read from there.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::dbus_native::client::SystemdClient;
use super::dbus_native::dbus::DbusConnection;
use super::dbus_native::serialize::{Structure, Variant};
use super::manager::{CgroupsPath, Manager as UnifiedManager, SystemdManagerError, ensure_parent_unit};
use crate::common::{
    AnyCgroupManager, CgroupManager, ControllerOpt, FreezerState, PathBufExt, default_allow_devices, default_devices,
};
use crate::stats::Stats;
use crate::v1::manager::{Manager as FsManager, V1ManagerError};

#[derive(thiserror::Error, Debug)]
pub enum SystemdLegacyError {
    #[error(transparent)]
    Systemd(#[from] SystemdManagerError),
    #[error("cgroup v1: {0}")]
    V1(#[from] V1ManagerError),
}

impl From<super::dbus_native::utils::SystemdClientError> for SystemdLegacyError {
    fn from(e: super::dbus_native::utils::SystemdClientError) -> Self {
        SystemdLegacyError::Systemd(e.into())
    }
}

pub struct Manager {
    /// The unit's cgroup below each hierarchy's root, e.g.
    /// `/kubepods.slice/kubepods-besteffort.slice/cri-containerd-<id>.scope`.
    cgroups_path: PathBuf,
    parent: String,
    container_name: String,
    unit_name: String,
    client: DbusConnection,
    fs_manager: FsManager,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdLegacyManager")
            .field("cgroups_path", &self.cgroups_path)
            .field("unit_name", &self.unit_name)
            .finish()
    }
}

impl Manager {
    /// `cgroups_path` is in the `slice:prefix:name` form (`prefix:name` puts the unit in
    /// `system.slice`). Connects to the system bus: rootless containers are not supported on v1.
    pub fn new(cgroups_path: &Path, container_name: String) -> Result<Self, SystemdLegacyError> {
        let mut destructured: CgroupsPath = cgroups_path.try_into().map_err(SystemdManagerError::from)?;
        ensure_parent_unit(&mut destructured, true);
        let client = DbusConnection::new_system()?;
        let parent = UnifiedManager::expand_slice(&destructured.parent)?;
        let unit_name = UnifiedManager::get_unit_name(&destructured);
        // systemd's own cgroup: "" when it is the root's (systemd as PID 1).
        let root = Path::new("/").join(client.control_cgroup_root()?);
        let cgroups_path =
            root.join_safely(parent).and_then(|p| p.join_safely(&unit_name)).map_err(SystemdManagerError::from)?;
        let fs_manager = FsManager::new(&cgroups_path)?;
        Ok(Manager { cgroups_path, parent: destructured.parent, container_name, unit_name, client, fs_manager })
    }

    /// The unit's cgroup path below each hierarchy's root.
    pub fn cgroups_path(&self) -> &Path {
        &self.cgroups_path
    }

    pub fn unit_name(&self) -> &str {
        &self.unit_name
    }

    pub fn any(self) -> AnyCgroupManager {
        AnyCgroupManager::SystemdLegacy(Box::new(self))
    }
}

impl CgroupManager for Manager {
    type Error = SystemdLegacyError;

    fn add_task(&self, pid: Pid) -> Result<(), Self::Error> {
        if pid.as_raw() == -1 {
            return Ok(());
        }
        if self.client.transient_unit_exists(&self.unit_name) {
            self.client.add_process_to_unit(&self.unit_name, "", pid.as_raw() as u32)?;
        } else {
            // Started with every controller systemd manages in use (accounting, and a device
            // policy: deny all but the default devices until `apply`): systemd puts a process
            // in the slice's cgroup of a controller its unit starts without, not the unit's, and
            // a later property change does not move it back.
            let mut baseline = LinuxResources::default();
            baseline.set_devices(Some(vec![LinuxDeviceCgroup::default()]));
            let version = self.client.systemd_version()?;
            let extra = v1_properties(&baseline, version, &devices_group).into_iter().collect();
            self.client.start_transient_unit_with(
                &self.container_name,
                pid.as_raw() as u32,
                &self.parent,
                &self.unit_name,
                extra,
            )?;
        }
        // systemd places the process in the hierarchies it manages; the others are ours. The
        // paths are the same, so a start job that runs after this moves nothing.
        self.fs_manager.add_task(pid)?;
        Ok(())
    }

    fn apply(&self, controller_opt: &ControllerOpt) -> Result<(), Self::Error> {
        let version = self.client.systemd_version()?;
        let properties = v1_properties(controller_opt.resources, version, &devices_group);
        if !properties.is_empty() {
            self.client.set_unit_properties(&self.unit_name, &properties)?;
        }
        self.fs_manager.apply(controller_opt)?;
        Ok(())
    }

    fn remove(&self) -> Result<(), Self::Error> {
        if self.client.transient_unit_exists(&self.unit_name) {
            self.client.stop_transient_unit(&self.unit_name)?;
            // A scope left failed (e.g. after an OOM kill) stays loaded until reset. The unit
            // may be gone already once stopped: that is what is wanted.
            if self.client.transient_unit_exists(&self.unit_name) {
                if let Err(e) = self.client.reset_failed_unit(&self.unit_name) {
                    // Gone in between (the stop job finished): nothing to reset.
                    if self.client.transient_unit_exists(&self.unit_name) {
                        return Err(e.into());
                    }
                }
            }
        }
        // What systemd does not manage (or has not removed yet).
        self.fs_manager.remove()?;
        Ok(())
    }

    fn freeze(&self, state: FreezerState) -> Result<(), Self::Error> {
        Ok(self.fs_manager.freeze(state)?)
    }

    fn stats(&self) -> Result<Stats, Self::Error> {
        Ok(self.fs_manager.stats()?)
    }

    fn get_all_pids(&self) -> Result<Vec<Pid>, Self::Error> {
        Ok(self.fs_manager.get_all_pids()?)
    }
}

/// The unit properties of `r` on cgroup v1, as runc's systemd v1 driver sets them
/// (`genV1ResourcesProperties`). `group` names a device major in /proc/devices.
pub(crate) fn v1_properties<'a>(
    r: &LinuxResources,
    systemd_version: u32,
    group: &dyn Fn(char, i64) -> Option<String>,
) -> HashMap<&'a str, Variant> {
    let mut p = HashMap::new();
    if let Some(m) = r.memory() {
        match m.limit() {
            Some(l) if l > 0 => {
                p.insert("MemoryLimit", Variant::U64(l as u64));
            }
            Some(-1) => {
                p.insert("MemoryLimit", Variant::U64(u64::MAX));
            }
            _ => {}
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares().filter(|s| *s != 0) {
            p.insert("CPUShares", Variant::U64(s));
        }
        let quota = c.quota().unwrap_or(0);
        let period = c.period().unwrap_or(0);
        if period != 0 && systemd_version >= 242 {
            p.insert("CPUQuotaPeriodUSec", Variant::U64(period));
        }
        if quota != 0 || period != 0 {
            let mut per_sec = u64::MAX;
            if quota > 0 {
                let period = if period == 0 { 100_000 } else { period };
                per_sec = quota as u64 * 1_000_000 / period;
                // systemd takes whole percents of a CPU (10 ms per second): round up.
                if per_sec % 10_000 != 0 {
                    per_sec = (per_sec / 10_000 + 1) * 10_000;
                }
            }
            p.insert("CPUQuotaPerSecUSec", Variant::U64(per_sec));
        }
    }
    if let Some(pids) = r.pids() {
        match pids.limit() {
            l if l > 0 => {
                p.insert("TasksMax", Variant::U64(l as u64));
            }
            -1 => {
                p.insert("TasksMax", Variant::U64(u64::MAX));
            }
            _ => {}
        }
    }
    if let Some(w) = r.block_io().as_ref().and_then(|b| b.weight()).filter(|w| *w != 0) {
        p.insert("BlockIOWeight", Variant::U64(w as u64));
    }
    // An update that names no devices leaves the unit's device rules as they are.
    let Some(devices) = r.devices() else { return p };
    let mut rules: Vec<LinuxDeviceCgroup> = devices.clone();
    rules.extend(default_devices().iter().map(LinuxDeviceCgroup::from));
    rules.extend(default_allow_devices());
    let (policy, allow) = device_properties(&rules, group);
    p.insert("DevicePolicy", Variant::String(policy.into()));
    p.insert("DeviceAllow", Variant::ArrayStructString(allow.into_iter().map(|(k, v)| Structure::new(k, v)).collect()));
    p
}

/// One device rule reduced to what it matches.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    typ: char,
    major: i64,
    minor: i64,
    access: String,
}

/// The device rules (applied in order, as the v1 devices controller applies them) as
/// `DevicePolicy` and `DeviceAllow`. systemd takes allow lists only: a list that ends up
/// allowing everything is `auto` with no entries; one that ends up allowing by default with
/// exceptions cannot be expressed and becomes deny-all (as runc does), the cgroupfs writes
/// that follow then applying the exceptions.
fn device_properties(
    rules: &[LinuxDeviceCgroup],
    group: &dyn Fn(char, i64) -> Option<String>,
) -> (&'static str, Vec<(String, String)>) {
    let mut default_allow = true;
    let mut list: Vec<Rule> = Vec::new();
    for d in rules {
        let typ = match d.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::P => continue,
            LinuxDeviceType::A => 'a',
        };
        let major = d.major().unwrap_or(-1);
        let minor = d.minor().unwrap_or(-1);
        let access = d.access().clone().unwrap_or_else(|| "rwm".into());
        if typ == 'a' && major == -1 && minor == -1 {
            // "a *:* ..." resets the list.
            default_allow = d.allow();
            list.clear();
            continue;
        }
        let rule = Rule { typ, major, minor, access };
        if d.allow() != default_allow {
            match list.iter_mut().find(|r| r.typ == rule.typ && r.major == rule.major && r.minor == rule.minor) {
                Some(r) => {
                    for ch in rule.access.chars() {
                        if !r.access.contains(ch) {
                            r.access.push(ch);
                        }
                    }
                }
                None => list.push(rule),
            }
        } else if let Some(i) =
            list.iter().position(|r| r.typ == rule.typ && r.major == rule.major && r.minor == rule.minor)
        {
            let left: String = list[i].access.chars().filter(|c| !rule.access.contains(*c)).collect();
            if left.is_empty() {
                list.remove(i);
            } else {
                list[i].access = left;
            }
        }
    }
    if default_allow {
        if list.is_empty() {
            return ("auto", Vec::new());
        }
        tracing::warn!("systemd takes no deny-list device rules: the unit gets deny-all, cgroupfs the rules");
        return ("strict", Vec::new());
    }
    let mut allow = Vec::new();
    for r in list {
        let kind = if r.typ == 'b' { "block" } else { "char" };
        let types: &[char] = if r.typ == 'a' { &['c', 'b'] } else { &[r.typ] };
        for &t in types {
            let kind = if r.typ == 'a' { if t == 'b' { "block" } else { "char" } } else { kind };
            let entry = match (r.major, r.minor) {
                (-1, -1) => Some(format!("{kind}-*")),
                // systemd has no way to say "any major, minor n".
                (-1, _) => None,
                (major, -1) => group(t, major),
                (major, minor) => Some(format!("/dev/{kind}/{major}:{minor}")),
            };
            match entry {
                Some(e) => allow.push((e, r.access.clone())),
                None => tracing::warn!(?r, "device rule not expressible as a systemd DeviceAllow entry, skipped"),
            }
        }
    }
    ("strict", allow)
}

/// `char-<name>` / `block-<name>` for a major of /proc/devices.
fn devices_group(typ: char, major: i64) -> Option<String> {
    let text = fs::read_to_string("/proc/devices").ok()?;
    devices_group_in(&text, typ, major)
}

fn devices_group_in(text: &str, typ: char, major: i64) -> Option<String> {
    let (section, kind) = if typ == 'b' { ("Block devices:", "block") } else { ("Character devices:", "char") };
    let mut inside = false;
    for line in text.lines() {
        if line.ends_with(':') {
            inside = line == section;
            continue;
        }
        if !inside {
            continue;
        }
        let mut f = line.split_whitespace();
        if let (Some(m), Some(name)) = (f.next(), f.next()) {
            if m.parse::<i64>().ok() == Some(major) {
                return Some(format!("{kind}-{name}"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    use super::*;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(typ).access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().unwrap()
    }

    fn no_group(_: char, _: i64) -> Option<String> {
        None
    }

    #[test]
    fn limits_become_v1_unit_properties() {
        let r = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(64 << 20).build().unwrap())
            .cpu(LinuxCpuBuilder::default().shares(512u64).quota(25_000i64).period(100_000u64).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        let p = v1_properties(&r, 252, &no_group);
        assert_eq!(p["MemoryLimit"], Variant::U64(64 << 20));
        assert_eq!(p["CPUShares"], Variant::U64(512));
        assert_eq!(p["CPUQuotaPerSecUSec"], Variant::U64(250_000));
        assert_eq!(p["CPUQuotaPeriodUSec"], Variant::U64(100_000));
        assert_eq!(p["TasksMax"], Variant::U64(u64::MAX));
        // Not a whole percent: rounded up, as systemd takes it.
        let r = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(1_234i64).period(100_000u64).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(v1_properties(&r, 241, &no_group)["CPUQuotaPerSecUSec"], Variant::U64(20_000));
        assert!(!v1_properties(&r, 241, &no_group).contains_key("CPUQuotaPeriodUSec"));
    }

    #[test]
    fn device_rules_become_an_allow_list() {
        // What containerd's CRI writes: deny all, then the defaults and one explicit device.
        let rules = [
            rule(false, LinuxDeviceType::A, None, None, "rwm"),
            rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwm"),
            rule(true, LinuxDeviceType::C, Some(136), None, "rwm"),
            rule(true, LinuxDeviceType::C, None, None, "m"),
            rule(true, LinuxDeviceType::C, Some(1), Some(5), "r"),
            rule(false, LinuxDeviceType::C, Some(1), Some(5), "r"),
        ];
        let group = |t: char, m: i64| (t == 'c' && m == 136).then(|| "char-pts".to_string());
        let (policy, allow) = device_properties(&rules, &group);
        assert_eq!(policy, "strict");
        assert_eq!(
            allow,
            vec![
                ("/dev/char/1:3".to_string(), "rwm".to_string()),
                ("char-pts".to_string(), "rwm".to_string()),
                ("char-*".to_string(), "m".to_string()),
            ]
        );
        // Allow all: systemd's auto with no entries.
        let (policy, allow) = device_properties(&[rule(true, LinuxDeviceType::A, None, None, "rwm")], &group);
        assert_eq!((policy, allow.len()), ("auto", 0));
        // Allow by default with an exception: not expressible, deny-all.
        let rules =
            [rule(true, LinuxDeviceType::A, None, None, "rwm"), rule(false, LinuxDeviceType::C, Some(1), Some(3), "w")];
        assert_eq!(device_properties(&rules, &group), ("strict", Vec::new()));
    }

    #[test]
    fn device_groups_from_proc_devices() {
        let text = "Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  8 sd\n";
        assert_eq!(devices_group_in(text, 'c', 136).as_deref(), Some("char-pts"));
        assert_eq!(devices_group_in(text, 'b', 8).as_deref(), Some("block-sd"));
        assert_eq!(devices_group_in(text, 'b', 1), None);
    }
}
