//! The CNI plugin edge: one invocation's config (stdin) and CNI_* variables in, the result
//! (or an error object) written out, exit status 0 or 1 as the spec requires. The process's
//! own stdin, stdout and environment are read by the binary (the shim's `cni::plugin_main`).

use std::io::Write;

use crate::args::{CniArgs, Command};
use crate::config::{PluginInput, LATEST_VERSION};
use crate::engine::{del_plugin, run_plugin, DelTail};
use crate::error::{codes, CniError, Result};
use crate::result::version_info;

/// Whether the process was exec'd as a CNI plugin (CNI_COMMAND is set).
pub fn invoked_as_plugin() -> bool {
    std::env::var_os("CNI_COMMAND").is_some()
}

/// One invocation: `stdin` is the plugin config, `env` looks up CNI_* variables. A DEL is
/// finished before the answer is written, as an exec'd plugin's must be.
pub fn run(stdin: &[u8], env: impl Fn(&str) -> Option<String>, out: &mut impl Write) -> i32 {
    let answer = invoke(stdin, env).and_then(|(json, tail)| tail.run_now().map(|()| json));
    emit(out, &answer_version(stdin), answer)
}

/// [`run`] for a caller that answers before a DEL is finished (podnet's shim): the answer is
/// written once the DEL's rules are gone, and the rest of it is handed back, to run after the
/// answer is delivered ([`DelTail::run`]).
pub fn run_deferred(stdin: &[u8], env: impl Fn(&str) -> Option<String>, out: &mut impl Write) -> (i32, DelTail) {
    let (answer, tail) = match invoke(stdin, env) {
        Ok((json, tail)) => (Ok(json), tail),
        Err(e) => (Err(e), DelTail::default()),
    };
    (emit(out, &answer_version(stdin), answer), tail)
}

/// The version to answer in: the config's if it is readable, else the latest.
fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_owned))
        .unwrap_or_else(|| LATEST_VERSION.to_owned())
}

/// Writes the result (or the error object); returns the exit status.
fn emit(out: &mut impl Write, version: &str, answer: Result<Option<serde_json::Value>>) -> i32 {
    match answer {
        Ok(Some(json)) => match serde_json::to_writer(&mut *out, &json) {
            Ok(()) => {
                let _ = out.flush();
                0
            }
            Err(e) => emit_error(out, version, &CniError::io("write the result", e)),
        },
        Ok(None) => 0,
        Err(e) => emit_error(out, version, &e),
    }
}

fn invoke(stdin: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<(Option<serde_json::Value>, DelTail)> {
    if env("CNI_COMMAND").as_deref() == Some("VERSION") {
        return Ok((Some(version_info(&answer_version(stdin))), DelTail::default()));
    }
    let args = CniArgs::from_env_with(env)?;
    let input = PluginInput::parse(stdin)?;
    let min = match args.command {
        Command::Gc | Command::Status => Some("1.1.0"),
        Command::Check => Some("0.4.0"),
        _ => None,
    };
    if let Some(min) = min {
        if !crate::config::version_at_least(&input.cni_version, min)? {
            return Err(CniError::new(
                codes::INCOMPATIBLE_VERSION,
                format!(
                    "{} needs cniVersion {min} or later, the config has {}",
                    args.command.as_str(),
                    input.cni_version
                ),
            ));
        }
    }
    let req = args.request();
    if args.command == Command::Del {
        return del_plugin(&input, &req).map(|tail| (None, tail));
    }
    match run_plugin(args.command, &input, &req)? {
        Some(res) => Ok((Some(res.to_json(&input.cni_version)?), DelTail::default())),
        None => Ok((None, DelTail::default())),
    }
}

fn emit_error(out: &mut impl Write, version: &str, e: &CniError) -> i32 {
    let _ = serde_json::to_writer(&mut *out, &e.to_json(version));
    let _ = out.flush();
    1
}
