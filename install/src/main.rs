//! podnet-install: the installer hack/install runs (`hack/install` finds or builds this binary
//! and passes it its flags). It reads containerd's config.toml with a TOML parser (toml_edit) to
//! pick the drop-in's config version, check its imports and take runc's SystemdCgroup, renders
//! deploy/'s templates (checking that each renders to what the flags ask), and installs,
//! reports or removes podnet's files. `--help` lists the flags.
//!
//! Modules: `flags` (parsing and checks), `containerd` (what containerd's configs and binary
//! say), `glob` (containerd's `imports` patterns), `render` (the templates and
//! /etc/podnet/config.toml), `files` (writes, links, removals under --destdir), `install`
//! (the install and uninstall steps and their advice).

mod containerd;
mod files;
mod flags;
mod glob;
mod install;
mod render;

use std::path::PathBuf;

/// The name every message starts with: users run hack/install, not this binary.
pub const ME: &str = "hack/install";

/// Why the installer stops: a message and the exit status (2 for what the user can fix in
/// the flags or the system, as hack/install's `die`; other statuses for failed commands).
#[derive(Debug)]
pub struct Die {
    pub code: i32,
    pub msg: String,
}

impl Die {
    pub fn usage(msg: impl Into<String>) -> Die {
        Die { code: 2, msg: msg.into() }
    }
    /// A failed write, link or removal.
    pub fn io(what: impl std::fmt::Display, err: std::io::Error) -> Die {
        Die { code: 1, msg: format!("{what}: {err}") }
    }
}

pub fn log(msg: &str) {
    println!("{ME}: {msg}");
}

pub fn warn(msg: &str) {
    eprintln!("{ME}: warning: {msg}");
}

/// `s` quoted as bash's `${s@Q}` quotes it (the form hack/install's messages have used).
pub fn shell_quote(s: &str) -> String {
    if s.chars().any(char::is_control) {
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\x1b' => out.push_str("\\E"),
                '\'' => out.push_str("\\'"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\{:03o}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run(args: Vec<std::ffi::OsString>) -> Result<(), Die> {
    let mut args = args
        .into_iter()
        .map(|a| a.into_string().map_err(|a| Die::usage(format!("{}: arguments must be UTF-8", a.to_string_lossy()))));
    // hack/install passes its checkout first: the templates and the shim's sources are there.
    let repo = match (args.next().transpose()?, args.next().transpose()?) {
        (Some(flag), Some(dir)) if flag == "--repo" => PathBuf::from(dir),
        _ => return Err(Die::usage("run as hack/install (podnet-install --repo CHECKOUT [FLAGS])")),
    };
    let args = args.collect::<Result<Vec<String>, Die>>()?;
    match flags::parse(&args)? {
        flags::Parsed::Help => {
            print!("{}", flags::USAGE);
            Ok(())
        }
        flags::Parsed::Run(flags) => install::run(*flags, repo),
    }
}

fn main() {
    if let Err(die) = run(std::env::args_os().skip(1).collect()) {
        eprintln!("{ME}: {}", die.msg);
        std::process::exit(die.code);
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_as_bash_does() {
        assert_eq!(shell_quote("10.89.0.0/33"), "'10.89.0.0/33'");
        assert_eq!(shell_quote("/opt/cni bin"), "'/opt/cni bin'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\tb"), r"$'a\tb'");
    }
}
