//! Builds the pause binary (pause/pause.c) as a static executable that the runtime embeds.
//! It must be static: the pause starts on an empty root where no dynamic loader exists.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=pause/pause.c");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let status = Command::new(&cc)
        .args(["-static", "-Os", "-s", "-Wall", "-Werror"])
        .arg(format!("-DPODNET_VERSION=\"{version}\""))
        .arg("-o")
        .arg(out.join("podnet-pause"))
        .arg("pause/pause.c")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            panic!("building pause/pause.c with {cc} -static failed ({s}); the static C library (libc6-dev) is needed")
        }
        Err(e) => panic!("cannot run the C compiler {cc:?} to build pause/pause.c: {e}"),
    }
}
