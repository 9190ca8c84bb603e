//! libcontainer reports a failure inside the container's init as one line ("failed to prepare
//! rootfs") and logs the cause with `tracing` in the child process, where it is lost. While a
//! container is built, the building thread's tracing goes to this subscriber instead: it writes
//! error events to a pipe the child inherits, and the parent appends them to its error.
use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Runs `f` with this thread's error events captured; returns what `f` returned and the
/// captured lines (only read if `f` failed).
pub(crate) fn errors_of<T, E>(f: impl FnOnce() -> Result<T, E>) -> (Result<T, E>, Vec<String>) {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return (f(), Vec::new());
    }
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let sub = PipeSubscriber { fd: w.as_raw_fd() };
    let result = tracing::subscriber::with_default(sub, f);
    drop(w);
    if result.is_ok() {
        return (result, Vec::new());
    }
    let mut text = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut text);
    let mut lines: Vec<String> = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !lines.iter().any(|x| x == l) {
            lines.push(l.to_string());
        }
    }
    (result, lines)
}

struct PipeSubscriber {
    fd: i32,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
}

impl Subscriber for PipeSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() > Level::ERROR {
            return;
        }
        let mut f = Fields(String::new());
        event.record(&mut f);
        // Keep each line short of PIPE_BUF so that writes from parent and children never mix.
        let mut line = f.0.replace('\n', " ");
        if line.len() > 1000 {
            let mut cut = 1000;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        line.push('\n');
        unsafe { libc::write(self.fd, line.as_ptr().cast(), line.len()) };
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn captures_errors_of_failures_only() {
        let (r, lines) = super::errors_of(|| -> Result<(), ()> {
            tracing::error!(path = "/x", "failed to mount");
            tracing::info!("not this");
            Err(())
        });
        assert!(r.is_err());
        assert_eq!(lines, vec!["failed to mount path=\"/x\"".to_string()]);
        let (r, lines) = super::errors_of(|| -> Result<(), ()> {
            tracing::error!("ignored");
            Ok(())
        });
        assert!(r.is_ok() && lines.is_empty());
    }
}
