//! A small OCI command line over podnet's runtime, for benchmarks and debugging:
//!
//!   podnet-oci [--root DIR] run ID BUNDLE   create, start, wait and delete a container;
//!                                            exits with the container's status
//!   podnet-oci [--root DIR] pause ID        create and start a pause sandbox, then stop and
//!                                            delete it (what starting a pod costs)
//!   podnet-oci write-pause PATH             write the embedded static pause binary to PATH
//!   podnet-oci features                     print the runtime's features (the OCI features
//!                                            JSON, as `runc features` prints it)
use std::path::PathBuf;
use std::process::ExitCode;

use podnet_runtime::{CreateOptions, Runtime, SandboxConfig, StdioConfig, DEFAULT_ROOT};

fn usage() -> ExitCode {
    eprintln!("usage: podnet-oci [--root DIR] run ID BUNDLE | pause ID | write-pause PATH | features");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut root = PathBuf::from(DEFAULT_ROOT);
    if args.first().map(String::as_str) == Some("--root") {
        if args.len() < 2 {
            return usage();
        }
        root = PathBuf::from(args.remove(1));
        args.remove(0);
    }
    // Needs no state directory, so it creates none.
    if args == ["features"] {
        return features();
    }
    let runtime = match Runtime::new(&root) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("podnet-oci: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["run", id, bundle] => run(&runtime, id, bundle),
        ["pause", id] => pause(&runtime, id),
        ["write-pause", path] => std::fs::write(path, podnet_runtime::PAUSE_BINARY)
            .map(|_| 0)
            .map_err(|e| podnet_runtime::Error::io(format!("writing {path}"), e)),
        _ => return usage(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("podnet-oci: {e}");
            ExitCode::from(1)
        }
    }
}

fn features() -> ExitCode {
    match serde_json::to_string_pretty(&podnet_runtime::features()) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podnet-oci: serialising the features: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(runtime: &Runtime, id: &str, bundle: &str) -> podnet_runtime::Result<u8> {
    // The container's stdio is this command's.
    let stdio = StdioConfig {
        stdin: None,
        stdout: Some("/proc/self/fd/1".into()),
        stderr: Some("/proc/self/fd/2".into()),
        terminal: false,
    };
    let t = Phases::new();
    let c = runtime.create(id, std::path::Path::new(bundle), CreateOptions { stdio, ..Default::default() })?;
    t.mark("create");
    let started = c.start();
    t.mark("start");
    let exit = match started {
        Ok(()) => c.wait(),
        Err(e) => Err(e),
    };
    t.mark("wait");
    let deleted = c.delete();
    t.mark("delete");
    let exit = exit?;
    deleted?;
    Ok(exit.code.clamp(0, 255) as u8)
}

fn pause(runtime: &Runtime, id: &str) -> podnet_runtime::Result<u8> {
    let t = Phases::new();
    let c = runtime.create_sandbox(id, &SandboxConfig::default())?;
    t.mark("create");
    let started = c.start();
    t.mark("start");
    let deleted = c.delete();
    t.mark("delete");
    started?;
    deleted?;
    Ok(0)
}

/// With PODNET_OCI_TIMING set, prints how long each phase took (to stderr).
struct Phases(Option<std::cell::Cell<std::time::Instant>>);

impl Phases {
    fn new() -> Phases {
        Phases(std::env::var_os("PODNET_OCI_TIMING").map(|_| std::cell::Cell::new(std::time::Instant::now())))
    }
    fn mark(&self, what: &str) {
        if let Some(t) = &self.0 {
            eprintln!("{what}: {:.2} ms", t.get().elapsed().as_secs_f64() * 1000.0);
            t.set(std::time::Instant::now());
        }
    }
}
