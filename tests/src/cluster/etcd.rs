//! etcd as the cluster's datastore: a single-member etcd 3.4 inside a test namespace.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use super::daemon::Daemon;
use super::http::{request, HttpResponse};
use crate::Ns;

/// Debian's etcd-server (hack/setup installs it); env `PODNET_ETCD` overrides.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// How long a start waits for `/health` to answer true.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long etcd gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The member's name (one member: it never shows outside etcd's own data).
const MEMBER: &str = "pnetcd";

/// A single-member etcd running inside a namespace; see the module documentation of
/// [`crate::cluster`]. Stopped (and its data dir removed) on drop.
pub struct Etcd {
    daemon: Daemon,
    ip: Ipv4Addr,
    cleaned: bool,
}

/// One key of a range answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

impl Etcd {
    /// Starts etcd in `ns`, listening on `ip` (an address of `ns`) ports 2379 (clients) and
    /// 2380 (peers), and waits until `/health` says true. Panics with its log when it does not.
    pub fn new(ns: &Ns, ip: Ipv4Addr) -> Etcd {
        crate::require_root();
        let program = std::env::var_os("PODNET_ETCD").map(PathBuf::from).unwrap_or_else(|| ETCD_BINARY.into());
        assert!(program.exists(), "{} is missing: run hack/setup (Debian's etcd-server)", program.display());
        let dir = PathBuf::from("/tmp").join(crate::unique("pnetcd"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut daemon = Daemon::new("etcd", &ns.path, program, &dir, "etcd.log");
        let client = format!("http://{ip}:{CLIENT_PORT}");
        let peer = format!("http://{ip}:{PEER_PORT}");
        let data = dir.join("data");
        let args: Vec<String> = vec![
            format!("--name={MEMBER}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={MEMBER}={peer}"),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token={}", dir.file_name().unwrap_or_default().to_string_lossy()),
            // A lone member campaigns after one (randomized) election timeout: 1-2 s by default.
            "--heartbeat-interval=25".into(),
            "--election-timeout=250".into(),
            // 3.4's default logger (capnslog) is deprecated and says so on every start.
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ];
        daemon.args = args.into_iter().map(Into::into).collect();
        // etcd 3.4 upstream refuses to start on architectures other than amd64 (and ppc64le)
        // unless told; Debian's build has no such check. Harmless where it is not needed.
        if !matches!(std::env::consts::ARCH, "x86_64" | "powerpc64") {
            daemon.env.push(("ETCD_UNSUPPORTED_ARCH".into(), crate::containerd::oci_arch().into()));
        }
        let mut etcd = Etcd { daemon, ip, cleaned: false };
        // From here on a panic drops `etcd`, which cleans up.
        etcd.start();
        etcd
    }

    /// Starts it again on the same data dir (after [`Etcd::stop`] or [`Etcd::kill`]) and waits
    /// until it is healthy. Panics with the log when it does not come up, or when it runs.
    pub fn start(&mut self) {
        let t0 = Instant::now();
        if let Err(e) = self.daemon.spawn() {
            panic!("starting etcd: {e}");
        }
        loop {
            if let Some(status) = self.daemon.exited() {
                panic!("etcd exited during startup ({status}); its log (end):\n{}", self.log_tail(40));
            }
            let last = match self.health() {
                Ok(true) => return,
                Ok(false) => "/health answered false".to_string(),
                Err(e) => e.to_string(),
            };
            if t0.elapsed() > READY_TIMEOUT {
                self.daemon.kill();
                panic!(
                    "etcd not healthy within {READY_TIMEOUT:?} (last: {last}); its log (end):\n{}",
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (SIGTERM by PID, SIGKILL after 10 s) and reaps it; the data stays. None when
    /// it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.daemon.stop(STOP_GRACE)
    }

    /// SIGKILLs it (a crash: no shutdown at all) and reaps it; the data stays.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.daemon.kill()
    }

    /// Whether the process is running (reaps it when it has exited).
    pub fn running(&mut self) -> bool {
        self.daemon.running()
    }

    pub fn pid(&self) -> Option<i32> {
        self.daemon.pid()
    }

    /// The client URL, `http://<ip>:2379`, as the agent's `etcd_endpoints` take it.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The scratch directory: `data/` and `etcd.log`.
    pub fn dir(&self) -> &Path {
        &self.daemon.dir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.daemon.dir.join("data")
    }

    /// etcd's log, every run (each after a `=== podnet-tests: etcd starts` line).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.daemon.log_tail(lines)
    }

    /// `GET /health`: whether etcd has a leader and answers (an error when it cannot be reached).
    pub fn health(&self) -> io::Result<bool> {
        let r = request(self.daemon.ns(), "GET", &format!("{}/health", self.endpoint()), None)?;
        Ok(r.status == 200 && r.json()?["health"] == "true")
    }

    /// POSTs `body` to the v3 JSON gateway (`/v3/<path>`) from inside etcd's namespace.
    pub fn gateway(&self, path: &str, body: &Value) -> io::Result<Value> {
        let url = format!("{}/v3/{path}", self.endpoint());
        let r: HttpResponse = request(self.daemon.ns(), "POST", &url, Some(&body.to_string()))?;
        if r.status != 200 {
            return Err(io::Error::other(format!("POST {url} {body}: status {}: {}", r.status, r.body)));
        }
        r.json()
    }

    fn gateway_ok(&self, path: &str, body: Value) -> Value {
        self.gateway(path, &body).unwrap_or_else(|e| panic!("etcd v3/{path}: {e}"))
    }

    pub fn put(&self, key: &str, value: &str) {
        self.gateway_ok("kv/put", json!({"key": b64(key), "value": b64(value)}));
    }

    /// Puts `key` attached to `lease` (from [`Etcd::grant_lease`]).
    pub fn put_with_lease(&self, key: &str, value: &str, lease: i64) {
        self.gateway_ok("kv/put", json!({"key": b64(key), "value": b64(value), "lease": lease.to_string()}));
    }

    /// The value of `key`, None when there is none.
    pub fn get(&self, key: &str) -> Option<String> {
        self.range(json!({"key": b64(key)})).into_iter().next().map(|kv| kv.value)
    }

    /// The keys under `prefix` (etcd's prefix range), in key order.
    pub fn get_prefix(&self, prefix: &str) -> Vec<KeyValue> {
        self.range(json!({"key": b64(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes()))}))
    }

    /// Deletes the keys under `prefix`; returns how many there were.
    pub fn delete_prefix(&self, prefix: &str) -> i64 {
        let r = self.gateway_ok(
            "kv/deleterange",
            json!({"key": b64(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes()))}),
        );
        int(&r["deleted"])
    }

    /// A new lease of `ttl_seconds`; its ID.
    pub fn grant_lease(&self, ttl_seconds: i64) -> i64 {
        let r = self.gateway_ok("lease/grant", json!({"TTL": ttl_seconds.to_string()}));
        let id = int(&r["ID"]);
        assert!(id != 0, "lease/grant answered no ID: {r}");
        id
    }

    /// The seconds `lease` has left; -1 when it has expired or never existed.
    pub fn lease_ttl(&self, lease: i64) -> i64 {
        let r = self.gateway_ok("lease/timetolive", json!({"ID": lease.to_string()}));
        int(&r["TTL"])
    }

    fn range(&self, body: Value) -> Vec<KeyValue> {
        let r = self.gateway_ok("kv/range", body);
        let kvs = r["kvs"].as_array().cloned().unwrap_or_default();
        kvs.iter()
            .map(|kv| KeyValue {
                key: unb64(&kv["key"]),
                value: unb64(&kv["value"]),
                lease: int(&kv["lease"]),
                create_revision: int(&kv["create_revision"]),
                mod_revision: int(&kv["mod_revision"]),
            })
            .collect()
    }

    /// Stops etcd and removes its directory, as `Drop` does, and returns what went wrong:
    /// an exit nobody asked for, a SIGKILL after the grace time.
    pub fn shutdown(mut self) -> Vec<String> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.cleaned, true) {
            return Vec::new();
        }
        self.daemon.stop(STOP_GRACE);
        let problems = std::mem::take(&mut self.daemon.problems);
        let keep = !problems.is_empty() || std::thread::panicking() || super::keep_logs();
        if let Some(kept) = self.daemon.remove_dir(keep) {
            eprintln!("etcd harness: the log of {} is kept in {}", self.daemon.dir.display(), kept.display());
        }
        problems
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let problems = self.cleanup();
        if !problems.is_empty() {
            eprintln!("etcd harness ({}) cleanup:\n  {}", self.daemon.dir.display(), problems.join("\n  "));
        }
    }
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

/// A base64 field of a gateway answer as text; "" when absent (zero values are omitted).
fn unb64(v: &Value) -> String {
    let raw = B64.decode(v.as_str().unwrap_or_default()).unwrap_or_else(|e| panic!("not base64 ({e}): {v}"));
    String::from_utf8_lossy(&raw).into_owned()
}

/// An int64 field of a gateway answer (a JSON string, or a number); 0 when absent.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or_else(|e| panic!("not an int64 ({e}): {v}")),
        Value::Number(n) => n.as_i64().unwrap_or_else(|| panic!("not an int64: {v}")),
        _ => 0,
    }
}

/// The end of etcd's prefix range: the prefix with its last byte below 0xff incremented (and
/// what follows dropped); `\0` (every key) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_and_gateway_fields() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(int(&json!("7587870000000000000")), 7587870000000000000);
        assert_eq!(int(&json!(3)), 3);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(unb64(&json!("aGVsbG8=")), "hello");
        assert_eq!(unb64(&Value::Null), "");
    }
}
