//! What this runtime supports, as the OCI runtime spec's features document (`features.md`):
//! `podnet-oci features` prints it, as `runc features` does, and the shim's `-info` answer
//! carries it to containerd. Every group is taken from the code that handles the field (podnet's
//! own, libcontainer's, or the libraries under it), so that a caller may rely on what it says:
//! containerd refuses a task with idmapped mounts when they are not offered, and its CRI offers
//! recursive read-only volumes and user-namespaced pods for a handler from these features.
//!
//! A few parts depend on the host and are looked up each time: the seccomp architectures and
//! filter flags the linked libseccomp (and the kernel under it) accepts.
use std::collections::HashMap;
use std::str::FromStr;

use libcontainer::oci_spec::runtime::{
    Apparmor, Arch, Cgroup, Features, IDMap, IntelRdt, LinuxFeature, LinuxNamespaceType, LinuxSeccompAction,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, MemoryPolicy, MemoryPolicyFlagType, MemoryPolicyModeType,
    MountExtensions, NetDevices, Seccomp, Selinux,
};
use libcontainer::syscall::linux::MountOption;
use libseccomp::{ScmpAction, ScmpArch, ScmpFilterContext, ScmpVersion};

/// The oldest runtime-spec version podnet runs: `spec::prepare` takes any 1.x.
pub const OCI_VERSION_MIN: &str = "1.0.0";
/// The newest runtime-spec version whose fields podnet's spec types know. oci-spec 0.10 models
/// runtime-spec 1.3.0 (netDevices, memoryPolicy, intelRdt.schemata), though its `VERSION`
/// constant still says 1.1.0; a newer 1.x spec is accepted, and its new fields are ignored.
pub const OCI_VERSION_MAX: &str = "1.3.0";

/// The hooks libcontainer runs (`prestart`, `createRuntime` and `poststart` from the calling
/// process, `createContainer` and `startContainer` in the container's init) and podnet runs
/// itself (`poststop`, at delete).
const HOOKS: [&str; 6] = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];

/// The recursive mount options libcontainer's `MountRecursive` parses and applies with
/// `mount_setattr(AT_RECURSIVE)` to the whole tree below the mount, in `parse_mount` and
/// `mount_into_container`. (`ridmap` and `idmap` are skipped there and refused by its mount
/// validation: see `mount_extensions`.)
const RECURSIVE_MOUNT_OPTIONS: [&str; 18] = [
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rrelatime",
    "rnorelatime",
    "rnoatime",
    "ratime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// Every namespace kind oci-spec has: libcontainer's `namespaces.rs` maps each one to its clone
/// flag (time included, with `linux.timeOffsets` written before the init runs).
const NAMESPACES: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Time,
    LinuxNamespaceType::User,
    LinuxNamespaceType::Uts,
];

/// Every seccomp action oci-spec has: libcontainer's `seccomp::translate_action` maps each one
/// to libseccomp's (`SCMP_ACT_NOTIFY` with the notify fd sent to `listenerPath`).
const SECCOMP_ACTIONS: [LinuxSeccompAction; 9] = [
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActNotify,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];

/// Every comparison operator oci-spec has: libcontainer's `seccomp::translate_op` maps each.
const SECCOMP_OPERATORS: [LinuxSeccompOperator; 7] = [
    LinuxSeccompOperator::ScmpCmpEq,
    LinuxSeccompOperator::ScmpCmpGe,
    LinuxSeccompOperator::ScmpCmpGt,
    LinuxSeccompOperator::ScmpCmpLe,
    LinuxSeccompOperator::ScmpCmpLt,
    LinuxSeccompOperator::ScmpCmpMaskedEq,
    LinuxSeccompOperator::ScmpCmpNe,
];

/// Every architecture oci-spec has but `SCMP_ARCH_NATIVE` (not an architecture of its own):
/// libcontainer's `seccomp::translate_arch` maps each one to libseccomp's, which may not know
/// them all (see `seccomp_archs`).
const SECCOMP_ARCHS: [Arch; 23] = [
    Arch::ScmpArchAarch64,
    Arch::ScmpArchArm,
    Arch::ScmpArchLoongarch64,
    Arch::ScmpArchM68k,
    Arch::ScmpArchMips,
    Arch::ScmpArchMips64,
    Arch::ScmpArchMips64n32,
    Arch::ScmpArchMipsel,
    Arch::ScmpArchMipsel64,
    Arch::ScmpArchMipsel64n32,
    Arch::ScmpArchParisc,
    Arch::ScmpArchParisc64,
    Arch::ScmpArchPpc,
    Arch::ScmpArchPpc64,
    Arch::ScmpArchPpc64le,
    Arch::ScmpArchRiscv64,
    Arch::ScmpArchS390,
    Arch::ScmpArchS390x,
    Arch::ScmpArchSh,
    Arch::ScmpArchSheb,
    Arch::ScmpArchX32,
    Arch::ScmpArchX86,
    Arch::ScmpArchX86_64,
];

/// Every filter flag oci-spec has: libcontainer's `initialize_seccomp` sets each one through
/// the matching libseccomp filter attribute.
const SECCOMP_FLAGS: [LinuxSeccompFilterFlag; 4] = [
    LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
    LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    LinuxSeccompFilterFlag::SeccompFilterFlagLog,
    LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
];

/// The memory policy modes libcontainer's `process::memory_policy` passes to set_mempolicy(2):
/// every mode oci-spec has.
const MEMORY_POLICY_MODES: [MemoryPolicyModeType; 7] = [
    MemoryPolicyModeType::MpolDefault,
    MemoryPolicyModeType::MpolBind,
    MemoryPolicyModeType::MpolInterleave,
    MemoryPolicyModeType::MpolWeightedInterleave,
    MemoryPolicyModeType::MpolPreferred,
    MemoryPolicyModeType::MpolPreferredMany,
    MemoryPolicyModeType::MpolLocal,
];

/// The memory policy flags libcontainer's `process::memory_policy` passes (and checks against
/// the mode): every flag oci-spec has.
const MEMORY_POLICY_FLAGS: [MemoryPolicyFlagType; 3] = [
    MemoryPolicyFlagType::MpolFNumaBalancing,
    MemoryPolicyFlagType::MpolFRelativeNodes,
    MemoryPolicyFlagType::MpolFStaticNodes,
];

/// The annotation that names the linked libseccomp's version, as runc names it.
pub const LIBSECCOMP_VERSION_ANNOTATION: &str = "io.github.seccomp.libseccomp.version";
/// The annotation that names podnet's version.
pub const PODNET_VERSION_ANNOTATION: &str = "io.podnet.version";

/// podnet's runtime features.
pub fn features() -> Features {
    let mut f = Features::default();
    f.set_oci_version_min(OCI_VERSION_MIN.to_string());
    f.set_oci_version_max(OCI_VERSION_MAX.to_string());
    f.set_hooks(Some(HOOKS.iter().map(|h| h.to_string()).collect()));
    f.set_mount_options(Some(mount_options()));
    f.set_linux(Some(linux()));
    f.set_annotations(Some(annotations()));
    // podnet-runtime reads no annotation of config.json; the shim adds the ones it reads.
    f.set_potentially_unsafe_config_annotations(Some(Vec::new()));
    f
}

/// Options libcontainer parses into mount(2) flags that its fd-based mount path (fsmount and
/// mount_setattr, which take only the read-only, nosuid, nodev, noexec and atime attributes)
/// never passes on: a tmpfs with `sync` comes out without it. Not offered, then.
const DROPPED_MOUNT_OPTIONS: [&str; 4] = ["sync", "dirsync", "mand", "remount"];

/// The mount options libcontainer parses and applies (`MountOption::known_options` but the
/// dropped ones; every propagation name among them, which podnet's copy of libcontainer
/// applies once the mount is in place) and the recursive ones, sorted.
fn mount_options() -> Vec<String> {
    let mut all = MountOption::known_options();
    all.retain(|o| !DROPPED_MOUNT_OPTIONS.contains(&o.as_str()));
    all.extend(RECURSIVE_MOUNT_OPTIONS.iter().map(|o| o.to_string()));
    all.sort();
    all.dedup();
    all
}

fn linux() -> LinuxFeature {
    let mut l = LinuxFeature::default();
    l.set_namespaces(Some(NAMESPACES.to_vec()));
    l.set_capabilities(Some(capabilities()));
    l.set_cgroup(Some(cgroup()));
    l.set_seccomp(Some(seccomp()));
    // libcontainer writes the profile to /proc/self/attr/apparmor/exec where the kernel has
    // AppArmor; where it has none, `spec::prepare` skips the profile with a warning, as runc
    // does. Support is compiled in either way, which is what the field says.
    let mut apparmor = Apparmor::default();
    apparmor.set_enabled(Some(true));
    l.set_apparmor(Some(apparmor));
    // libcontainer applies no SELinux process label ("youki does not support selinux yet").
    let mut selinux = Selinux::default();
    selinux.set_enabled(Some(false));
    l.set_selinux(Some(selinux));
    l.set_intel_rdt(Some(intel_rdt()));
    l.set_memory_policy(Some(memory_policy()));
    l.set_mount_extensions(Some(mount_extensions()));
    // libcontainer moves `linux.netDevices` into the container's network namespace (the one
    // it creates or the pod's, by path) and sets their name and addresses; the kernel moves
    // them back when that namespace goes, as the spec says.
    let mut net_devices = NetDevices::default();
    net_devices.set_enabled(Some(true));
    l.set_net_devices(Some(net_devices));
    l
}

/// The caps crate's list, which libcontainer's `CapabilityExt` maps one to one onto oci-spec's
/// `Capability` (what podnet's spec parser accepts), in the kernel's order.
fn capabilities() -> Vec<String> {
    let mut caps: Vec<caps::Capability> = caps::all().into_iter().collect();
    caps.sort_by_key(|c| c.index());
    caps.iter().map(|c| c.to_string()).collect()
}

/// podnet builds libcontainer and libcgroups with their `v1`, `v2` and `systemd` features
/// (runtime/Cargo.toml): the systemd driver works on v2 and, with podnet's patched libcgroups,
/// on v1 (`cgroup.rs`); as root only, so not for systemd user instances. libcgroups has no rdma
/// controller, so `linux.resources.rdma` is not applied.
fn cgroup() -> Cgroup {
    let mut c = Cgroup::default();
    c.set_v1(Some(true));
    c.set_v2(Some(true));
    c.set_systemd(Some(true));
    c.set_systemd_user(Some(false));
    c.set_rdma(Some(false));
    c
}

/// podnet builds libcontainer with `libseccomp`. The actions and operators are the ones
/// libcontainer translates; the architectures and supported flags are the ones the linked
/// libseccomp accepts here.
fn seccomp() -> Seccomp {
    let mut s = Seccomp::default();
    s.set_enabled(Some(true));
    s.set_actions(Some(SECCOMP_ACTIONS.to_vec()));
    s.set_operators(Some(SECCOMP_OPERATORS.iter().map(|o| o.to_string()).collect()));
    s.set_archs(Some(seccomp_archs()));
    s.set_known_flags(Some(SECCOMP_FLAGS.iter().map(|f| f.to_string()).collect()));
    s.set_supported_flags(Some(
        SECCOMP_FLAGS.iter().filter(|f| seccomp_flag_supported(**f)).map(|f| f.to_string()).collect(),
    ));
    s
}

/// The architectures a filter of the linked libseccomp takes here: libcontainer adds every
/// arch of the profile with seccomp_arch_add, which fails, and the create with it, for an
/// architecture of the other byte order than the machine's (libseccomp keeps one byte order
/// per filter) or one this libseccomp does not know (2.5 has no loongarch64, m68k or SuperH).
fn seccomp_archs() -> Vec<Arch> {
    let Ok(mut ctx) = ScmpFilterContext::new(ScmpAction::Allow) else { return Vec::new() };
    SECCOMP_ARCHS
        .iter()
        .copied()
        .filter(|arch| libseccomp_arch(*arch).is_some_and(|a| ctx.add_arch(a).is_ok()))
        .collect()
}

/// oci-spec's and libseccomp's names of an architecture are the same `SCMP_ARCH_*` strings.
fn libseccomp_arch(arch: Arch) -> Option<ScmpArch> {
    ScmpArch::from_str(&arch.to_string()).ok()
}

/// Whether libcontainer's call for `flag` succeeds here: libseccomp refuses a filter attribute
/// that it, or the kernel under it, does not support (its API level says which).
fn seccomp_flag_supported(flag: LinuxSeccompFilterFlag) -> bool {
    let Ok(mut ctx) = ScmpFilterContext::new(ScmpAction::Allow) else { return false };
    let set = match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => ctx.set_ctl_log(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => ctx.set_ctl_tsync(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => ctx.set_ctl_ssb(true),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => ctx.set_ctl_waitkill(true),
    };
    set.is_ok()
}

/// libcontainer creates the resctrl group of `linux.intelRdt` at create, but only its own
/// delete removes it, and podnet's `Container::delete` does not run that: the group would be
/// left behind. Not offered, then (nor tested: this machine has no RDT).
fn intel_rdt() -> IntelRdt {
    let mut r = IntelRdt::default();
    r.set_enabled(Some(false));
    r
}

fn memory_policy() -> MemoryPolicy {
    let mut m = MemoryPolicy::default();
    m.set_modes(Some(MEMORY_POLICY_MODES.iter().map(|v| v.to_string()).collect()));
    m.set_flags(Some(MEMORY_POLICY_FLAGS.iter().map(|v| v.to_string()).collect()));
    m
}

/// libcontainer 0.7 refuses every idmapped mount (`container::mount_validation`: "idmapped
/// mounts are not supported"), so `idmap`/`ridmap` and mounts' uid/gid mappings do not work.
/// When this is false containerd refuses a task with idmapped mounts before its Create reaches
/// the shim, and containerd's CRI offers user-namespaced pods only to a runtime with them.
fn mount_extensions() -> MountExtensions {
    let mut idmap = IDMap::default();
    idmap.set_enabled(Some(false));
    let mut m = MountExtensions::default();
    m.set_idmap(Some(idmap));
    m
}

fn annotations() -> HashMap<String, String> {
    let mut a = HashMap::new();
    a.insert(PODNET_VERSION_ANNOTATION.to_string(), env!("CARGO_PKG_VERSION").to_string());
    if let Ok(v) = ScmpVersion::current() {
        a.insert(LIBSECCOMP_VERSION_ANNOTATION.to_string(), v.to_string());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::syscall::linux::MountRecursive;
    use serde_json::Value;

    fn json() -> Value {
        serde_json::to_value(features()).expect("features serialise")
    }

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().filter_map(Value::as_str).collect()
    }

    #[test]
    fn serialises_with_the_oci_field_names() {
        let j = json();
        for key in [
            "ociVersionMin",
            "ociVersionMax",
            "hooks",
            "mountOptions",
            "linux",
            "annotations",
            "potentiallyUnsafeConfigAnnotations",
        ] {
            assert!(j.get(key).is_some_and(|v| !v.is_null()), "{key} missing in {j}");
        }
        let l = &j["linux"];
        for key in [
            "namespaces",
            "capabilities",
            "cgroup",
            "seccomp",
            "apparmor",
            "selinux",
            "intelRdt",
            "memoryPolicy",
            "mountExtensions",
            "netDevices",
        ] {
            assert!(l.get(key).is_some_and(|v| !v.is_null()), "linux.{key} missing in {l}");
        }
        for key in ["enabled", "actions", "operators", "archs", "knownFlags", "supportedFlags"] {
            assert!(l["seccomp"].get(key).is_some(), "linux.seccomp.{key} missing");
        }
        assert_eq!(
            l["cgroup"],
            serde_json::json!({"v1": true, "v2": true, "systemd": true, "systemdUser": false, "rdma": false})
        );
        assert_eq!(l["mountExtensions"], serde_json::json!({"idmap": {"enabled": false}}));
        assert_eq!(l["selinux"]["enabled"], false);
        assert_eq!(l["intelRdt"], serde_json::json!({"enabled": false}));
        // It reads back as the same document.
        let back: Features = serde_json::from_value(j.clone()).expect("features parse back");
        assert_eq!(back, features());
    }

    #[test]
    fn mount_options_have_rro_rrw_and_every_propagation_name() {
        let j = json();
        let opts = strings(&j["mountOptions"]);
        for o in
            ["rro", "rrw", "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"]
        {
            assert!(opts.contains(&o), "{o} missing: {opts:?}");
        }
        for o in ["ro", "rw", "bind", "rbind", "nosuid", "nodev", "noexec", "relatime", "strictatime"] {
            assert!(opts.contains(&o), "{o} missing: {opts:?}");
        }
        assert!(!opts.contains(&"idmap") && !opts.contains(&"ridmap"), "idmapped mounts are not supported: {opts:?}");
        for o in DROPPED_MOUNT_OPTIONS {
            assert!(!opts.contains(&o), "{o} is dropped by libcontainer's mount path: {opts:?}");
        }
        let mut sorted = opts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, opts, "sorted, each once");
    }

    #[test]
    fn every_option_is_one_libcontainer_parses() {
        for o in mount_options() {
            let known = MountOption::from_str(&o).is_ok() || MountRecursive::from_str(&o).is_ok();
            assert!(known, "libcontainer does not parse {o:?}");
        }
        for o in RECURSIVE_MOUNT_OPTIONS {
            assert!(MountRecursive::from_str(o).is_ok(), "{o} is not a recursive option of libcontainer's");
        }
    }

    #[test]
    fn namespaces_and_capabilities_use_the_oci_names() {
        let j = json();
        assert_eq!(
            strings(&j["linux"]["namespaces"]),
            ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"]
        );
        let caps = strings(&j["linux"]["capabilities"]);
        assert_eq!(caps.first(), Some(&"CAP_CHOWN"));
        for c in ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF", "CAP_PERFMON", "CAP_CHECKPOINT_RESTORE"] {
            assert!(caps.contains(&c), "{c} missing: {caps:?}");
        }
        // Each is a name podnet's spec parser takes.
        for c in &caps {
            let parsed: Result<libcontainer::oci_spec::runtime::Capability, _> =
                serde_json::from_value(Value::String(c.to_string()));
            assert!(parsed.is_ok(), "oci-spec does not parse {c}");
        }
    }

    #[test]
    fn seccomp_lists_what_libcontainer_translates() {
        let j = json();
        let s = &j["linux"]["seccomp"];
        assert_eq!(s["enabled"], true);
        let actions = strings(&s["actions"]);
        for a in ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG"] {
            assert!(actions.contains(&a), "{a} missing: {actions:?}");
        }
        assert_eq!(strings(&s["operators"]).len(), 7);
        assert!(strings(&s["operators"]).contains(&"SCMP_CMP_MASKED_EQ"));
        // Every arch name is libseccomp's too, and the machine's own is among those accepted.
        for a in SECCOMP_ARCHS {
            assert!(libseccomp_arch(a).is_some(), "libseccomp has no name {a}");
        }
        let archs = strings(&s["archs"]);
        let native = if cfg!(target_arch = "x86_64") { "SCMP_ARCH_X86_64" } else { "SCMP_ARCH_AARCH64" };
        assert!(archs.contains(&native), "{native} missing: {archs:?}");
        let known = strings(&s["knownFlags"]);
        assert_eq!(known.len(), 4, "{known:?}");
        assert!(strings(&s["supportedFlags"]).iter().all(|f| known.contains(f)), "supported is a subset of known");
    }

    #[test]
    fn hooks_memory_policy_and_versions() {
        let j = json();
        assert_eq!(strings(&j["hooks"]).len(), 6);
        assert!(strings(&j["linux"]["memoryPolicy"]["modes"]).contains(&"MPOL_INTERLEAVE"));
        assert!(strings(&j["linux"]["memoryPolicy"]["flags"]).contains(&"MPOL_F_STATIC_NODES"));
        assert_eq!(j["ociVersionMin"], "1.0.0");
        assert!(j["ociVersionMax"].as_str().is_some_and(|v| v.starts_with("1.")));
        assert_eq!(j["annotations"][PODNET_VERSION_ANNOTATION], env!("CARGO_PKG_VERSION"));
    }
}
