use super::*;
use crate::flags::{parse, Parsed};

fn flags(args: &[&str]) -> Flags {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match parse(&args) {
        Ok(Parsed::Run(f)) => *f,
        _ => panic!("{args:?}"),
    }
}

fn main_config(text: &str) -> MainConfig {
    MainConfig::parse(text, "/etc/containerd/config.toml").unwrap()
}

#[test]
fn the_dropin_follows_config_toml_s_version() {
    let v2 = main_config("version = 2\n");
    let v3 = main_config("version = 3\n");
    let v1 = main_config("imports = []\n");
    assert_eq!(config_version(None, Family::V2, None), 3);
    assert_eq!(config_version(None, Family::V2, Some(&v2)), 2);
    assert_eq!(config_version(None, Family::V2, Some(&v3)), 3);
    assert_eq!(config_version(None, Family::V2, Some(&v1)), 3);
    assert_eq!(config_version(None, Family::V17, Some(&v3)), 2);
    assert_eq!(config_version(Some(3), Family::V2, Some(&v2)), 3);
}

#[test]
fn the_cgroup_driver_and_why() {
    let runc = |on: bool| {
        main_config(&format!(
            "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\nSystemdCgroup = {on}\n"
        ))
    };
    let (on, off) = (runc(true), runc(false));
    let plain = flags(&[]);
    assert_eq!(
        cgroup_driver(&flags(&["--cgroup-driver", "cgroupfs"]), Some(&on), true),
        (CgroupDriver::Cgroupfs, "--cgroup-driver".into())
    );
    assert_eq!(cgroup_driver(&flags(&["--k3s"]), Some(&on), true).0, CgroupDriver::Auto);
    assert_eq!(
        cgroup_driver(&plain, Some(&on), false),
        (CgroupDriver::Systemd, "SystemdCgroup = true for runc in /etc/containerd/config.toml".into())
    );
    assert_eq!(cgroup_driver(&plain, Some(&off), true).0, CgroupDriver::Cgroupfs);
    let none = main_config("version = 3\n");
    assert_eq!(
        cgroup_driver(&plain, Some(&none), true),
        (CgroupDriver::Systemd, "systemd is PID 1 (/run/systemd/system)".into())
    );
    assert_eq!(
        cgroup_driver(&plain, None, false),
        (CgroupDriver::Cgroupfs, "systemd is not PID 1 (no /run/systemd/system)".into())
    );
}

#[test]
fn podnet_conflists() {
    assert!(is_podnet_conflist(r#"{"plugins": [{"type": "portmap"}, {"type":"podnet"}]}"#));
    assert!(!is_podnet_conflist(r#"{"plugins": [{"type": "bridge"}]}"#));
    assert!(!is_podnet_conflist("{}"));
    assert!(!is_podnet_conflist("not json \"type\": \"podnet\""));
}
