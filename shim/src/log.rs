//! The shim's log: logfmt lines (as containerd's own shims write) to the `log` fifo containerd
//! opens in the bundle directory. Writes never block the shim: when containerd is not reading
//! (restarting), lines are dropped.
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Where lines go: the bundle's `log` fifo, once one is open.
static OUT: Mutex<Option<File>> = Mutex::new(None);

fn open_fifo(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path).ok()
}

/// A shim spawned by the CNI plugin starts with no bundle, so no log: the first bundle it
/// gets (the sandbox's, at Create) gives it one.
pub fn adopt(bundle: &Path) {
    let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
    if out.is_none() {
        *out = open_fifo(&bundle.join("log"));
    }
}

pub struct FifoLog {
    max: Level,
    next_span: AtomicU64,
}

impl FifoLog {
    /// Opens `path` (the bundle's `log` fifo) for writing without waiting for a reader; no fifo
    /// or no reader means no log.
    pub fn open(path: &Path, debug: bool) -> FifoLog {
        *OUT.lock().unwrap_or_else(|p| p.into_inner()) = open_fifo(path);
        FifoLog { max: if debug { Level::DEBUG } else { Level::INFO }, next_span: AtomicU64::new(1) }
    }

    /// Installs this as the process-wide subscriber.
    pub fn install(self) {
        let _ = tracing::subscriber::set_global_default(self);
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        self.push(field.name(), &v);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value);
    }
}

impl Line {
    fn push(&mut self, name: &str, value: &str) {
        let name = if name == "message" { "msg" } else { name };
        let _ = write!(self.0, " {name}=");
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=') {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, "{:?}", value);
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

impl Subscriber for FifoLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // libcontainer and libcgroups narrate every create at info and warn (unsupported v1
        // controllers...): their lines are debug material.
        let ours = m.target().starts_with("podnet");
        (ours && *m.level() <= self.max) || (!ours && self.max == Level::DEBUG)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let level = match *e.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let mut line = Line(format!("time=\"{}\" level={level}", rfc3339(SystemTime::now())));
        e.record(&mut line);
        let _ = write!(line.0, " runtime=io.containerd.podnet.v2 pid={}", std::process::id());
        line.0.push('\n');
        let mut out = OUT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = out.as_mut() {
            // EAGAIN (nobody reading) or EPIPE (reader gone): the line is dropped.
            let _ = f.write_all(line.0.as_bytes());
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.000000Z");
    }

    #[test]
    fn values_are_quoted_when_needed() {
        let mut l = Line(String::new());
        l.push("message", "hello world");
        l.push("id", "abc");
        assert_eq!(l.0, " msg=\"hello world\" id=abc");
    }
}
