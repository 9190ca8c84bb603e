//! The shim's one thread: a poll loop over the ttrpc listener, containerd's connections, the
//! processes' pidfds and the OOM watches. Requests are handled one at a time; Wait replies are
//! sent when the process exits. No other thread runs while a container is created (the runtime
//! clones this process: see podnet-runtime's fork-safety note), except the runtime's own
//! allocation-free stdio pumps.
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use containerd_shim_protos::ttrpc::proto::{Code, Request};
use protobuf::Message;

use crate::service::{Reply, Shim};
use crate::ttrpc::{self, RpcError};

pub const TASK_SERVICES: [&str; 2] = ["containerd.task.v2.Task", "containerd.task.v3.Task"];
/// A connection whose peer does not read its replies for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often undelivered events are retried while containerd is away.
const EVENT_RETRY_MS: i32 = 500;

struct Conn {
    id: u64,
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn send(&mut self, stream_id: u32, payload: &[u8]) -> bool {
        self.stream.write_all(&ttrpc::encode(stream_id, ttrpc::TYPE_RESPONSE, payload)).is_ok()
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// Serves until the shim is done: Shutdown found it idle, or its last network went with no
/// task left.
pub fn serve(listener: UnixListener, shim: &mut Shim) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut conns: Vec<Conn> = Vec::new();
    let mut next_conn = 1u64;
    loop {
        shim.reap();
        for d in shim.take_deferred() {
            if let Some(pos) = conns.iter().position(|c| c.id == d.conn) {
                if !conns[pos].send(d.stream, &d.payload) {
                    // A partial frame would garble the connection: drop it.
                    let gone = conns.remove(pos);
                    shim.forget_conn(gone.id);
                }
            }
        }
        // A DEL's reply is out by now: finish its slow part (the veth) before anything else.
        for tail in shim.take_del_tails() {
            if let Err(e) = tail.run() {
                tracing::warn!("finishing a network DEL: {e}");
            }
        }
        if shim.shutting_down() {
            tracing::info!("shutting down: no task and no network left");
            return Ok(());
        }
        let watched = shim.watch_fds();
        let mut fds: Vec<libc::pollfd> = std::iter::once(pollfd(listener.as_raw_fd()))
            .chain(conns.iter().map(|c| pollfd(c.stream.as_raw_fd())))
            .chain(watched.iter().map(|fd| pollfd(*fd)))
            .collect();
        let timeout = if shim.events_pending() { EVENT_RETRY_MS } else { -1 };
        // SAFETY: fds is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            shim.retry_events();
            continue;
        }
        let polled = conns.len();
        if fds[0].revents != 0 {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let ok = stream.set_nonblocking(false).is_ok()
                            && stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_ok();
                        if ok {
                            conns.push(Conn { id: next_conn, stream, buf: Vec::new() });
                            next_conn += 1;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        break;
                    }
                }
            }
        }
        let conn_ready: Vec<u64> =
            conns.iter().zip(&fds[1..1 + polled]).filter(|(_, p)| p.revents != 0).map(|(c, _)| c.id).collect();
        for fd in fds[1 + polled..].iter().filter(|p| p.revents != 0) {
            shim.on_ready(fd.fd);
        }
        for id in conn_ready {
            let Some(pos) = conns.iter().position(|c| c.id == id) else { continue };
            if !serve_conn(&mut conns[pos], shim) {
                conns.remove(pos);
                shim.forget_conn(id);
            }
        }
    }
}

/// Reads what arrived and answers every complete request. False: the connection is done.
fn serve_conn(c: &mut Conn, shim: &mut Shim) -> bool {
    let mut chunk = [0u8; 16384];
    let n = match c.stream.read(&mut chunk) {
        Ok(0) => return false,
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return true,
        Err(_) => return false,
    };
    c.buf.extend_from_slice(&chunk[..n]);
    let mut heavy = false;
    loop {
        let frame = match ttrpc::decode(&mut c.buf) {
            Ok(Some(f)) => f,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!("dropping a connection: {e}");
                return false;
            }
        };
        if frame.kind != ttrpc::TYPE_REQUEST {
            continue;
        }
        let reply = match Request::parse_from_bytes(&frame.payload) {
            Err(e) => Reply::Now(Err(RpcError::invalid(format!("malformed ttrpc request: {e}")))),
            Ok(req) if req.service == crate::cni::SERVICE => {
                heavy = true;
                Reply::Now(shim.network(&req.method, &req.payload))
            }
            Ok(req) if !TASK_SERVICES.contains(&req.service.as_str()) => Reply::Now(Err(RpcError::new(
                Code::UNIMPLEMENTED,
                format!("service {} is not served here", req.service),
            ))),
            Ok(req) => {
                let r = shim.handle(&req.method, &req.payload, c.id, frame.stream_id);
                heavy |= matches!(req.method.as_str(), "Create" | "Start" | "Delete" | "Exec");
                r
            }
        };
        if let Reply::Now(result) = reply {
            if !c.send(frame.stream_id, &ttrpc::response(result)) {
                return false;
            }
        }
        if std::mem::take(&mut heavy) {
            trim();
        }
    }
}

/// Gives back memory a create or delete touched once: code and read-only data pages of the
/// binary and its libraries that are still identical to their files (dropped from this
/// process, they stay in the page cache and are faulted back in when used again), and glibc's
/// free heap. A pod's shim spends its life idle; what it holds then is what it costs.
pub fn trim() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let mut current: Option<(usize, usize)> = None;
    let mut clean_file = false;
    let mut ranges = Vec::new();
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-').filter(|_| line.contains(' ')) {
            if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                let perms = parts.next().unwrap_or("");
                let path = line.split_whitespace().nth(5).unwrap_or("");
                current = (path.starts_with('/') && (perms == "r-xp" || perms == "r--p")).then_some((lo, hi));
                clean_file = true;
                continue;
            }
        }
        match (first, parts.next()) {
            // Copy-on-write copies (relocated data) are anonymous, resident or swapped out:
            // those must stay. Dirty pages are skipped too.
            ("Anonymous:" | "Swap:" | "Private_Dirty:" | "Shared_Dirty:", Some(kb)) if kb != "0" => clean_file = false,
            ("VmFlags:", _) => {
                if let (Some(r), true) = (current.take(), clean_file) {
                    ranges.push(r);
                }
            }
            _ => {}
        }
    }
    for (lo, hi) in ranges {
        // SAFETY: a read-only private file mapping with no page that differs from the file:
        // dropping its pages loses nothing; the next access maps the file's page again.
        unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
    }
    // SAFETY: glibc's malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}
