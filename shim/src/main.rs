//! containerd-shim-podnet-v2. Exec'd with CNI_COMMAND set, it is the `podnet` CNI plugin
//! (also installable under the names `bridge`, `portmap` and `loopback`: it dispatches on the
//! config's `type`). The shim v2 role comes with the shim issue.

fn main() {
    if cni_bridge::plugin::invoked_as_plugin() {
        std::process::exit(cni_bridge::plugin::main());
    }
    match std::env::args().nth(1).as_deref() {
        Some("-v") | Some("--version") => {
            println!("containerd-shim-podnet-v2 {}", env!("CARGO_PKG_VERSION"));
        }
        _ => {
            eprintln!("containerd-shim-podnet-v2: set CNI_COMMAND to run as the podnet CNI plugin; the shim v2 role is not built yet");
            std::process::exit(2);
        }
    }
}
