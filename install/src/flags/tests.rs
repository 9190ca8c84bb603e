use super::*;

fn parse_ok(args: &[&str]) -> Flags {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match parse(&args) {
        Ok(Parsed::Run(f)) => *f,
        Ok(Parsed::Help) => panic!("{args:?}: help"),
        Err(e) => panic!("{args:?}: {}", e.msg),
    }
}

fn parse_err(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    match parse(&args) {
        Err(e) => {
            assert_eq!(e.code, 2);
            e.msg
        }
        Ok(_) => panic!("{args:?} should fail"),
    }
}

#[test]
fn defaults_and_k3s_presets() {
    let f = parse_ok(&[]);
    assert_eq!(
        (f.prefix.as_str(), f.cni_bin_dir.as_str(), f.address.as_str(), f.containerd_version),
        ("/usr/local", "/opt/cni/bin", "/run/containerd/containerd.sock", None)
    );
    let f = parse_ok(&["--k3s"]);
    assert_eq!(f.cni_bin_dir, "/var/lib/rancher/k3s/data/cni");
    assert_eq!(f.address, "/run/k3s/containerd/containerd.sock");
    assert_eq!(f.containerd_version.as_deref(), Some("2"));
    // Explicit flags win over the presets; the last of a flag wins.
    let f =
        parse_ok(&["--k3s", "--cni-bin-dir=/opt/cni/bin", "--containerd-address", "/a", "--containerd-address", "/b"]);
    assert_eq!((f.cni_bin_dir.as_str(), f.address.as_str()), ("/opt/cni/bin", "/b"));
    let f = parse_ok(&["--destdir", "/tmp/stage/", "--cgroup-driver", "auto", "--config-version=2", "--dry-run"]);
    assert_eq!(f.destdir, "/tmp/stage");
    assert_eq!((f.cgroup_driver, f.config_version, f.dry_run), (Some(CgroupDriver::Auto), Some(2), true));
}

#[test]
fn flag_syntax_errors() {
    assert_eq!(parse_err(&["--subnet"]), "--subnet needs a value (see --help)");
    assert_eq!(parse_err(&["--subnet="]), "--subnet needs a value (see --help)");
    assert_eq!(parse_err(&["--dry-run=yes"]), "--dry-run takes no value");
    assert_eq!(parse_err(&["--frobnicate"]), "unknown flag '--frobnicate' (see --help)");
    assert_eq!(parse_err(&["--frob=1"]), "unknown flag '--frob' (see --help)");
    assert_eq!(parse_err(&["-h=1"]), "unknown flag '-h=1' (see --help)");
    assert_eq!(parse_err(&["extra"]), "unknown flag 'extra' (see --help)");
    assert!(matches!(parse(&["--help".into(), "--frobnicate".into()]), Ok(Parsed::Help)));
    assert!(parse(&["--frobnicate".into(), "-h".into()]).is_err());
}

#[test]
fn value_checks_name_the_flag() {
    for (args, msg) in [
        (&["--subnet", "10.89.0.0/33"][..], "--subnet '10.89.0.0/33': prefix length must be 8 to 30 (room for a gateway and pods)"),
        (&["--subnet", "10.300.0.0/16"], "--subnet '10.300.0.0/16': octet 300 is over 255"),
        (&["--subnet", "fd89::/64"], "--subnet 'fd89::/64': not an IPv4 CIDR like 10.89.0.0/16"),
        (&["--subnet6", "10.1.0.0/16"], "--subnet6 '10.1.0.0/16': not an IPv6 CIDR like fd89::/64"),
        (&["--subnet6", "fd89:::/64"], "--subnet6 'fd89:::/64': not an IPv6 address"),
        (&["--subnet6", "fd89::/121"], "--subnet6 'fd89::/121': prefix length must be 8 to 120"),
        (&["--namespace", "k8s/io"], "--namespace 'k8s/io': not a containerd namespace (letters and digits, '.', '_', '-' between them)"),
        (&["--namespace", "a..b"], "--namespace 'a..b': not a containerd namespace (letters and digits, '.', '_', '-' between them)"),
        (&["--cgroup-driver", "systemdd"], "--cgroup-driver 'systemdd': must be systemd, cgroupfs or auto"),
        (&["--config-version", "4"], "--config-version '4': must be 2 or 3"),
        (&["--prefix", "usr/local"], "--prefix 'usr/local': must be an absolute path"),
        (&["--prefix", "/a/../b"], "--prefix '/a/../b': must not contain . or .. components"),
        (&["--cni-bin-dir", "/opt/cni bin"], "--cni-bin-dir '/opt/cni bin': must not contain spaces, quotes, backslashes, '|', '&' or control characters"),
        (&["--containerd-conf-dir", "/etc/a|b"], "--containerd-conf-dir '/etc/a|b': must not contain spaces, quotes, backslashes, '|', '&' or control characters"),
        (&["--cni-conf-dir", "/"], "--cni-conf-dir and --containerd-conf-dir must not be /"),
    ] {
        assert_eq!(parse_err(args), msg, "{args:?}");
    }
    parse_ok(&["--subnet", "10.89.0.0/8", "--subnet6", "fd89::/64", "--namespace", "pods.example-1_a"]);
    parse_ok(&["--subnet6", "fd89:1:2::1/120", "--prefix", "/a/.b/c."]);
}
