//! containerd-shim-podnet-v2. With CNI_COMMAND set it is the `podnet` CNI plugin (also
//! installable as `bridge`, `portmap` and `loopback`: it dispatches on the config's `type`),
//! which hands the call to the pod's shim when the config names containerd (see `cni`).
//! Otherwise it is a containerd shim v2: `start`, `delete`, `-v`, `-info`, or (no action) the
//! daemon that `start` spawns.
use podnet_shim::config::Flags;
use podnet_shim::{info, log, pod_shim, server, service, start};

fn main() {
    if cni_bridge::plugin::invoked_as_plugin() {
        std::process::exit(podnet_shim::cni::plugin_main());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match Flags::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-podnet-v2: {e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!("containerd-shim-podnet-v2:");
        println!("  Version:  {}", env!("CARGO_PKG_VERSION"));
        println!("  Revision: podnet");
        println!("  Go version: none (Rust)");
        return;
    }
    // A flag, not an action, as containerd passes it (`<shim> -info`, options on stdin).
    if flags.info {
        let code = match info::run(&mut std::io::stdin().lock(), &mut std::io::stdout().lock()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("containerd-shim-podnet-v2 -info: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let code = match flags.action.as_str() {
        "start" => match start::start(&flags) {
            Ok(address) => {
                println!("{}", start::bootstrap_json(&address));
                0
            }
            Err(e) => {
                eprintln!("containerd-shim-podnet-v2 start: {e}");
                1
            }
        },
        "delete" => match start::delete(&flags) {
            Ok(resp) => match start::write_delete_response(&resp) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("containerd-shim-podnet-v2 delete: writing the response: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("containerd-shim-podnet-v2 delete: {e}");
                1
            }
        },
        "" => daemon(flags),
        other => {
            eprintln!("containerd-shim-podnet-v2: unknown action {other:?} (start, delete, -v, -info)");
            2
        }
    };
    std::process::exit(code);
}

fn daemon(flags: Flags) -> i32 {
    let listener = match pod_shim::inherited_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("containerd-shim-podnet-v2: {e}");
            return 2;
        }
    };
    log::FifoLog::open(std::path::Path::new("log"), flags.debug).install();
    std::panic::set_hook(Box::new(|info| tracing::error!("shim panicked: {info}")));
    // Orphans of the pod's processes are reparented here, and reaped with the container.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let socket = listener.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
    tracing::info!(id = %flags.id, namespace = %flags.namespace, "shim started");
    let mut shim = service::Shim::new(flags, &ttrpc_address);
    let result = server::serve(listener, &mut shim);
    if let Some(path) = socket {
        // The listener is closed: unless a new shim for the pod already answers there, the
        // socket is ours to remove.
        pod_shim::remove_dead_socket(&path);
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("serving: {e}");
            1
        }
    }
}
