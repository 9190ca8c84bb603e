//! A container process's stdio: the fifo paths containerd passes (or files), or a terminal.
//!
//! - stdout/stderr fifos are handed to the process directly, opened read-write: the process
//!   writes with no copy through the runtime, and never gets EPIPE or SIGPIPE when the reader
//!   goes away for a while (a containerd restart); the reader sees EOF once the process and
//!   everything it forked have exited.
//! - stdin goes through a pipe fed by a small pump thread, so that close-stdin can deliver EOF
//!   to the process whatever the client does with its end of the fifo.
//! - with a terminal, libcontainer sends the pty master over a console socket; one pump copies
//!   the stdin fifo to the master, another the master to the stdout fifo, and resize sets the
//!   window size on the master.
//!
//! Pumps do nothing but poll/read/write on fixed buffers, and end when their source reaches
//! EOF, their destination's reader goes away, or the runtime stops them. They are plain
//! pthreads that never allocate nor touch the Rust runtime's thread registry: libcontainer
//! clones the calling process without fork handlers, and a pump starting or ending at that
//! moment must not leave a lock held in the clone.
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Where a process's stdio goes. Empty or absent paths mean /dev/null.
#[derive(Debug, Clone, Default)]
pub struct StdioConfig {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// A pty for the process; stdout carries the terminal's output and stderr is unused.
    pub terminal: bool,
}

impl StdioConfig {
    pub fn null() -> StdioConfig {
        StdioConfig::default()
    }
}

/// Stdio opened and waiting for the process to exist.
pub(crate) struct Pending {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Console socket path (terminal) and its listener.
    pub console: Option<(PathBuf, UnixListener)>,
    stdin_fifo: Option<OwnedFd>,
    stdin_pipe: Option<OwnedFd>,
    stdout_fifo: Option<OwnedFd>,
}

/// The running side of a process's stdio.
#[derive(Default)]
pub struct Io {
    stdin_stop: Mutex<Option<OwnedFd>>,
    pumps: Mutex<Vec<PumpThread>>,
    output: Mutex<Option<PumpThread>>,
    master: Option<OwnedFd>,
}

fn path_of(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| Error::io("opening /dev/null", e))
}

/// `file:///x` and plain paths; other URI schemes are refused by name.
fn local_path(p: &Path) -> Result<PathBuf> {
    let s = p.to_string_lossy();
    if let Some(rest) = s.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(Error::Unsupported(format!(
            "stdio {s:?}: the {scheme}:// scheme is not supported (fifo paths and file:// are)"
        )));
    }
    Ok(p.to_path_buf())
}

fn is_fifo(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.file_type().is_fifo()).unwrap_or(false)
}

/// Opens an output: a fifo read-write (see the module doc), anything else for append.
fn open_output(p: &Path) -> Result<OwnedFd> {
    let path = local_path(p)?;
    let mut opts = OpenOptions::new();
    if is_fifo(&path) {
        opts.read(true).write(true);
    } else {
        opts.append(true).create(true).mode(0o640);
    }
    opts.custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io(format!("opening output {}", path.display()), e))
}

/// `path`, or, when it is too long for a unix socket (108 bytes with the NUL: CRI's ids are
/// 64 characters, and an exec's socket name holds two), a name in /run derived from it.
fn short_socket_path(path: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() < 100 {
        return path.to_path_buf();
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let short = PathBuf::from(format!("/run/podnet-console-{:016x}.sock", h.finish()));
    // A leftover of a process that died before using it.
    let _ = std::fs::remove_file(&short);
    short
}

/// Opens what `cfg` names; `console_sock` is where a terminal's console socket goes.
pub(crate) fn prepare(cfg: &StdioConfig, console_sock: &Path) -> Result<Pending> {
    let mut pending = Pending {
        stdin: Some(dev_null(false)?),
        stdout: Some(dev_null(true)?),
        stderr: Some(dev_null(true)?),
        console: None,
        stdin_fifo: None,
        stdin_pipe: None,
        stdout_fifo: None,
    };
    if let Some(p) = path_of(&cfg.stdin) {
        let path = local_path(p)?;
        if is_fifo(&path) {
            // Non-blocking open: the client may open its end later.
            let fifo = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| Error::io(format!("opening stdin {}", path.display()), e))?;
            pending.stdin_fifo = Some(fifo.into());
            if !cfg.terminal {
                let (r, w) = pipe()?;
                pending.stdin = Some(r);
                pending.stdin_pipe = Some(w);
            }
        } else if !cfg.terminal {
            pending.stdin = File::open(&path)
                .map(|f| Some(OwnedFd::from(f)))
                .map_err(|e| Error::io(format!("opening stdin {}", path.display()), e))?;
        }
    }
    if cfg.terminal {
        let sock = short_socket_path(console_sock);
        let listener = UnixListener::bind(&sock)
            .map_err(|e| Error::io(format!("creating console socket {}", sock.display()), e))?;
        pending.console = Some((sock, listener));
        if let Some(p) = path_of(&cfg.stdout) {
            pending.stdout_fifo = Some(open_output(p)?);
        }
    } else {
        if let Some(p) = path_of(&cfg.stdout) {
            pending.stdout = Some(open_output(p)?);
        }
        if let Some(p) = path_of(&cfg.stderr) {
            pending.stderr = Some(open_output(p)?);
        }
    }
    Ok(pending)
}

impl Drop for Pending {
    /// A create that failed before the terminal was received leaves no socket behind.
    fn drop(&mut self) {
        if let Some((path, _)) = &self.console {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Pending {
    /// The process exists: receive the pty master (terminal) and start the pumps. The fds
    /// meant for the process were moved into it by libcontainer and are closed here.
    pub(crate) fn start(mut self, what: &str) -> Result<Io> {
        let (console, stdin_fifo, stdin_pipe, stdout_fifo) =
            (self.console.take(), self.stdin_fifo.take(), self.stdin_pipe.take(), self.stdout_fifo.take());
        let mut io = Io::default();
        let master = match console {
            Some((path, listener)) => {
                let m = receive_master(&listener);
                let _ = std::fs::remove_file(&path);
                Some(m.map_err(|e| Error::io(format!("{what}: receiving the terminal from {}", path.display()), e))?)
            }
            None => None,
        };
        if let Some(fifo) = stdin_fifo {
            let (dst, send_eof) = match (&master, stdin_pipe) {
                (Some(m), _) => (dup(m)?, true),
                (None, Some(w)) => (w, false),
                (None, None) => return Ok(io),
            };
            let stop = eventfd()?;
            let stop_rx = dup(&stop)?;
            *io.stdin_stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(stop);
            io.pumps.lock().unwrap_or_else(|p| p.into_inner()).push(spawn_pump(
                "stdin",
                fifo,
                dst,
                Some(stop_rx),
                send_eof,
            )?);
        }
        if let (Some(m), Some(out)) = (&master, stdout_fifo) {
            let h = spawn_pump("tty-out", dup(m)?, out, None, false)?;
            *io.output.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
        }
        io.master = master;
        Ok(io)
    }
}

impl Io {
    /// Delivers EOF to the process's stdin (with a terminal: stops copying and sends the
    /// terminal's EOF character). Idempotent.
    pub fn close_stdin(&self) {
        if let Some(stop) = self.stdin_stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let one: u64 = 1;
            unsafe { libc::write(stop.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    /// Sets the terminal's window size.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        let Some(master) = &self.master else {
            return Err(Error::Unsupported("resize: the process has no terminal".into()));
        };
        let ws = libc::winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(Error::io("resize: TIOCSWINSZ", io::Error::last_os_error()));
        }
        Ok(())
    }

    pub fn has_terminal(&self) -> bool {
        self.master.is_some()
    }

    /// Waits until the terminal output has been copied out (the process side closed). Call it
    /// after the process exited and before reporting the exit, so no output is lost.
    pub fn wait_output(&self) {
        if let Some(h) = self.output.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.join();
        }
    }

    /// Like [`Io::wait_output`], for at most `timeout`: a background process that keeps the
    /// terminal open, or a reader that went away, must not stall the caller. False if the
    /// output was still being copied (the pump stays joinable).
    pub fn wait_output_for(&self, timeout: std::time::Duration) -> bool {
        let mut slot = self.output.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            None => true,
            Some(h) => match h.join_for(timeout) {
                Ok(()) => true,
                Err(h) => {
                    *slot = Some(h);
                    false
                }
            },
        }
    }

    /// Stops the stdin pump and joins every pump (the process must be gone). A pump still busy
    /// after a grace period (its terminal held open by an escaped process, or an output fifo
    /// nobody reads) is detached rather than waited for.
    pub fn shutdown(&self) {
        const GRACE: std::time::Duration = std::time::Duration::from_secs(2);
        self.close_stdin();
        self.wait_output_for(GRACE);
        drop(self.output.lock().unwrap_or_else(|p| p.into_inner()).take());
        for h in self.pumps.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = h.join_for(GRACE);
        }
    }
}

/// A pump running on its own pthread. Its arguments travel packed in the thread's argument
/// pointer, so the thread never allocates or frees; it closes the fds itself when it ends.
pub(crate) struct PumpThread {
    tid: libc::pthread_t,
    joined: bool,
}

impl PumpThread {
    fn join(mut self) {
        self.joined = true;
        unsafe { libc::pthread_join(self.tid, std::ptr::null_mut()) };
    }

    /// Joins within `timeout`, or gives the handle back.
    fn join_for(mut self, timeout: std::time::Duration) -> std::result::Result<(), PumpThread> {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime into a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        let total = now.tv_nsec + i64::from(timeout.subsec_nanos());
        let deadline = libc::timespec {
            tv_sec: now.tv_sec + timeout.as_secs() as libc::time_t + (total / 1_000_000_000) as libc::time_t,
            tv_nsec: (total % 1_000_000_000) as _,
        };
        // SAFETY: a thread of ours that was not joined or detached yet.
        match unsafe { libc::pthread_timedjoin_np(self.tid, std::ptr::null_mut(), &deadline) } {
            0 => {
                self.joined = true;
                Ok(())
            }
            _ => Err(self),
        }
    }
}

impl Drop for PumpThread {
    fn drop(&mut self) {
        if !self.joined {
            unsafe { libc::pthread_detach(self.tid) };
        }
    }
}

const FD_BITS: u32 = 21;
const FD_MASK: u64 = (1 << FD_BITS) - 1;

extern "C" fn pump_main(arg: *mut libc::c_void) -> *mut libc::c_void {
    let a = arg as usize as u64;
    let src = (a & FD_MASK) as i32;
    let dst = ((a >> FD_BITS) & FD_MASK) as i32;
    let stop = ((a >> (2 * FD_BITS)) & FD_MASK) as i32 - 1;
    let eof = a >> 63 != 0;
    // SAFETY: the spawner handed these fds over (into_raw_fd); this thread owns them now.
    let (src, dst) = unsafe { (OwnedFd::from_raw_fd(src), OwnedFd::from_raw_fd(dst)) };
    let stop = (stop >= 0).then(|| unsafe { OwnedFd::from_raw_fd(stop) });
    pump(src, dst, stop, eof);
    std::ptr::null_mut()
}

fn spawn_pump(name: &str, src: OwnedFd, dst: OwnedFd, stop: Option<OwnedFd>, eof_char: bool) -> Result<PumpThread> {
    use std::os::fd::IntoRawFd;
    let limit = FD_MASK as i32 - 1;
    if src.as_raw_fd() > limit || dst.as_raw_fd() > limit || stop.as_ref().is_some_and(|s| s.as_raw_fd() > limit) {
        return Err(Error::Unsupported(format!("starting the {name} pump: file descriptor numbers above {limit}")));
    }
    let (src, dst) = (src.into_raw_fd(), dst.into_raw_fd());
    let stop = stop.map(|s| s.into_raw_fd()).unwrap_or(-1);
    let packed = src as u64 | (dst as u64) << FD_BITS | ((stop + 1) as u64) << (2 * FD_BITS) | (eof_char as u64) << 63;
    let mut tid: libc::pthread_t = 0;
    let mut attr: libc::pthread_attr_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 64 * 1024);
        let r = libc::pthread_create(&mut tid, &attr, pump_main, packed as usize as *mut libc::c_void);
        libc::pthread_attr_destroy(&mut attr);
        r
    };
    if r != 0 {
        for fd in [src, dst, stop] {
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
        }
        return Err(Error::io(format!("starting the {name} pump"), io::Error::from_raw_os_error(r)));
    }
    Ok(PumpThread { tid, joined: false })
}

fn set_nonblocking(fd: RawFd) {
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Copies src to dst until src's EOF, dst's reader leaving, or `stop`. On `stop` it first
/// copies what was already written to src (containerd writes, then closes stdin), then sends
/// the terminal's EOF character if asked.
fn pump(src: OwnedFd, dst: OwnedFd, stop: Option<OwnedFd>, eof_char: bool) {
    set_nonblocking(src.as_raw_fd());
    set_nonblocking(dst.as_raw_fd());
    let mut buf = [0u8; 8192];
    let (mut start, mut end) = (0usize, 0usize);
    let mut stopping = false;
    let stop_fd = stop.as_ref().map(|s| s.as_raw_fd()).unwrap_or(-1);
    loop {
        if stopping && start == end {
            // Draining: take what src holds now, without waiting for more.
            let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if eof_char {
                    // VEOF (^D) on a canonical-mode terminal is what a typed end of input is.
                    let eot = [4u8];
                    unsafe { libc::write(dst.as_raw_fd(), eot.as_ptr().cast(), 1) };
                }
                return;
            }
            (start, end) = (0, n as usize);
        }
        let mut fds = [
            libc::pollfd { fd: src.as_raw_fd(), events: if start == end { libc::POLLIN } else { 0 }, revents: 0 },
            libc::pollfd { fd: dst.as_raw_fd(), events: if start == end { 0 } else { libc::POLLOUT }, revents: 0 },
            libc::pollfd { fd: if stopping { -1 } else { stop_fd }, events: libc::POLLIN, revents: 0 },
        ];
        if unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return; // nobody reads dst any more
        }
        if fds[2].revents != 0 {
            stopping = true;
        }
        if start != end && fds[1].revents & libc::POLLOUT != 0 {
            let n = unsafe { libc::write(dst.as_raw_fd(), buf[start..end].as_ptr().cast(), end - start) };
            if n < 0 {
                if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                    return;
                }
            } else {
                start += n as usize;
            }
            continue;
        }
        if start == end && fds[0].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let n = unsafe { libc::read(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => return, // EOF
                n if n < 0 => {
                    if io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                        return; // EIO: the terminal's other side is closed
                    }
                }
                n => (start, end) = (0, n as usize),
            }
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::io("creating the stdin pipe", io::Error::last_os_error()));
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn eventfd() -> Result<OwnedFd> {
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(Error::io("creating an eventfd", io::Error::last_os_error()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone().map_err(|e| Error::io("dup", e))
}

/// Accepts libcontainer's connection on the console socket and takes the pty master from it.
fn receive_master(listener: &UnixListener) -> io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    // libcontainer connected before the container's init started, and the init sent the
    // master before reporting itself ready, so both are already queued.
    let (conn, _) = listener.accept()?;
    let mut name = [0u8; 4096];
    let mut iov = libc::iovec { iov_base: name.as_mut_ptr().cast(), iov_len: name.len() };
    let mut cmsg = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const RawFd);
            return Ok(OwnedFd::from_raw_fd(fd));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no terminal fd in the console socket message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn other_schemes_are_refused() {
        let e = local_path(Path::new("binary:///usr/bin/logger")).unwrap_err().to_string();
        assert!(e.contains("binary://"), "{e}");
        assert_eq!(local_path(Path::new("file:///tmp/x")).unwrap(), PathBuf::from("/tmp/x"));
    }

    #[test]
    fn pump_copies_until_eof_and_stops_on_request() {
        let (src_r, src_w) = pipe().unwrap();
        let (dst_r, dst_w) = pipe().unwrap();
        let h = spawn_pump("t", src_r, dst_w, None, false).unwrap();
        let mut w = File::from(src_w);
        w.write_all(b"hello").unwrap();
        drop(w);
        h.join();
        let mut out = String::new();
        File::from(dst_r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello");

        // Stop: the destination gets EOF although the source stays open.
        let (src_r, _src_w) = pipe().unwrap();
        let (dst_r, dst_w) = pipe().unwrap();
        let stop = eventfd().unwrap();
        let h = spawn_pump("t", src_r, dst_w, Some(dup(&stop).unwrap()), false).unwrap();
        let io = Io { stdin_stop: Mutex::new(Some(stop)), ..Io::default() };
        io.close_stdin();
        h.join();
        let mut out = Vec::new();
        File::from(dst_r).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn pump_ends_when_the_reader_leaves() {
        let (src_r, _src_w) = pipe().unwrap();
        let (dst_r, dst_w) = pipe().unwrap();
        let h = spawn_pump("t", src_r, dst_w, None, false).unwrap();
        drop(dst_r);
        h.join();
    }
}
