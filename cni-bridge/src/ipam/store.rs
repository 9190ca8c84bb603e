//! The on-disk store, byte-compatible with the reference host-local's disk backend, plus
//! an index that makes lookups by owner O(1).
//!
//! Layout of `<dataDir>/<net>/` (the reference's, untouched):
//! - `<ip>`: the reservation itself; its existence is the lock on the address, its content
//!   `<id>\r\n<ifname>` (or a bare `<id>` from old host-local versions) names the owner.
//! - `last_reserved_ip.<range set index>`: the round-robin cursor.
//! - `lock`: flock(LOCK_EX) on it serialises every process, the reference included.
//!
//! podnet adds `.podnet-index/`:
//! - `<16 hex digits>`: a bucket (FNV-1a of the owner) listing the IPs each owner holds.
//! - `state`: the net dir's inode and mtime right after podnet's last change.
//!
//! The IP files stay the only truth; the index is a cache. It is trusted only while
//! `state` matches the net dir: the reference (or a crash) changing anything in the net
//! dir changes its mtime, and then the index is rebuilt by one scan. To make a foreign
//! change within the same clock tick still visible, podnet sets the dir's mtime two
//! seconds in the past after each of its changes: any later real change stamps "now",
//! which cannot equal that even on filesystems with 1 s or 2 s timestamp granularity.
//! `state` is emptied before podnet touches anything and rewritten only when the index is
//! complete again, so a crash at any point leaves an empty or missing `state`, i.e. a
//! rebuild. Nothing under `.podnet-index/` parses as an IP or has
//! content equal to `<id>\r\n<ifname>` or `<id>`, so the reference's recursive walks
//! (ReleaseByID, GetByID) never mistake it for a reservation.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::error::{CniError, Result};

const LINE_BREAK: &str = "\r\n";
const LAST_IP_PREFIX: &str = "last_reserved_ip.";
const INDEX_DIR: &str = ".podnet-index";
const STATE_FILE: &str = "state";
const BUCKET_MAGIC: &str = "podnet-ipam-index 1";
const STATE_MAGIC: &str = "podnet-ipam-state 1";

/// Who holds a reservation. `ifname` is None for legacy files holding only the id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub id: String,
    pub ifname: Option<String>,
}

impl Owner {
    /// The reference trims the id (Go's TrimSpace) before writing and matching.
    pub fn new(id: &str, ifname: &str) -> Owner {
        Owner { id: id.trim().to_string(), ifname: Some(ifname.to_string()) }
    }

    pub fn legacy(id: &str) -> Owner {
        Owner { id: id.trim().to_string(), ifname: None }
    }

    /// Mirrors the reference's match on TrimSpace(content).
    fn from_content(data: &str) -> Owner {
        let t = data.trim();
        match t.split_once(LINE_BREAK) {
            Some((id, ifname)) => Owner { id: id.to_string(), ifname: Some(ifname.to_string()) },
            None => Owner { id: t.to_string(), ifname: None },
        }
    }

    fn content(&self) -> String {
        match &self.ifname {
            Some(ifn) => format!("{}{LINE_BREAK}{ifn}", self.id),
            None => self.id.clone(),
        }
    }

    fn bucket(&self) -> String {
        // FNV-1a: stable across builds (std's hasher is not); collisions are harmless since
        // a bucket holds full owner records.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        match &self.ifname {
            Some(ifn) => {
                eat(b"i\0");
                eat(self.id.as_bytes());
                eat(b"\0");
                eat(ifn.as_bytes());
            }
            None => {
                eat(b"l\0");
                eat(self.id.as_bytes());
            }
        }
        format!("{h:016x}")
    }
}

pub(crate) struct Store {
    dir: PathBuf,
    index: PathBuf,
    lock_file: File,
    // flock is per open file description, so threads sharing this Store need their own
    // exclusion on top of it.
    mutex: Mutex<()>,
    /// Full scans done by this Store: lets tests prove the steady state never scans.
    scans: AtomicUsize,
}

impl Store {
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| CniError::io(format!("host-local: creating {}", dir.display()), e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .or_else(|_| File::open(&lock_path))
            .map_err(|e| CniError::io(format!("host-local: opening {}", lock_path.display()), e))?;
        Ok(Store { index: dir.join(INDEX_DIR), dir, lock_file, mutex: Mutex::new(()), scans: AtomicUsize::new(0) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn scans(&self) -> usize {
        self.scans.load(Ordering::Relaxed)
    }

    /// Takes the thread mutex and the flock, and brings the index up to date.
    pub fn lock(&self) -> Result<Txn<'_>> {
        let guard = self.mutex.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(self.lock_file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(CniError::io(format!("host-local: locking {}/lock", self.dir.display()), e));
            }
        }
        let mut tx = Txn { store: self, _guard: guard, dirty: false, broken: false };
        if !tx.is_fresh() {
            tx.rebuild()?;
        }
        Ok(tx)
    }
}

/// One locked operation. Mutations mark it dirty (removing `state`); `commit` restores
/// `state`, or rebuilds the index if some index update failed on the way.
pub(crate) struct Txn<'a> {
    store: &'a Store,
    _guard: MutexGuard<'a, ()>,
    dirty: bool,
    broken: bool,
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        // SAFETY: as in lock(); the mutex guard field is dropped after this.
        unsafe { libc::flock(self.store.lock_file.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn io_err(what: impl std::fmt::Display, path: &Path, e: std::io::Error) -> CniError {
    CniError::io(format!("host-local: {what} {}", path.display()), e)
}

impl Txn<'_> {
    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    fn state_path(&self) -> PathBuf {
        self.store.index.join(STATE_FILE)
    }

    fn is_fresh(&self) -> bool {
        let Ok(text) = fs::read_to_string(self.state_path()) else { return false };
        let Ok(md) = fs::metadata(&self.store.dir) else { return false };
        let mut lines = text.lines();
        lines.next() == Some(STATE_MAGIC) && lines.next() == Some(stamp(&md).as_str())
    }

    fn touch(&mut self) -> Result<()> {
        if !self.dirty {
            // Emptied in place rather than removed: creating a file costs far more than
            // truncating one on some filesystems, and empty reads as stale all the same.
            let p = self.state_path();
            match fs::OpenOptions::new().write(true).truncate(true).open(&p) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("invalidating index", &p, e)),
            }
            self.dirty = true;
        }
        Ok(())
    }

    /// Best effort: when it fails, `state` stays absent and the next operation rebuilds,
    /// so the reservation just made is not put at risk by an index problem.
    pub fn commit(&mut self) {
        if self.broken {
            let _ = self.rebuild();
        } else if self.dirty {
            let _ = self.finish();
        }
    }

    fn finish(&mut self) -> Result<()> {
        let dir = &self.store.dir;
        let f = File::open(dir).map_err(|e| io_err("opening", dir, e))?;
        let now = SystemTime::now();
        // Fails without ownership of the dir; then the real mtime is recorded, which only
        // misses a foreign change made within the same clock tick.
        let _ = f.set_modified(now.checked_sub(Duration::from_secs(2)).unwrap_or(now));
        let md = f.metadata().map_err(|e| io_err("stat", dir, e))?;
        let p = self.state_path();
        fs::write(&p, format!("{STATE_MAGIC}\n{}\n", stamp(&md))).map_err(|e| io_err("writing", &p, e))?;
        self.dirty = false;
        Ok(())
    }

    /// All reservations, read from the IP files themselves (O(n), for rebuild/list/gc).
    pub fn scan(&self) -> Result<Vec<(IpAddr, Owner)>> {
        let dir = &self.store.dir;
        self.store.scans.fetch_add(1, Ordering::Relaxed);
        let rd = fs::read_dir(dir).map_err(|e| io_err("reading", dir, e))?;
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| io_err("reading", dir, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(ip) = IpAddr::from_str(name) else { continue };
            // Only the names the reference itself produces (net.IP.String()).
            if ip.to_string() != name || !ent.file_type().map(|t| t.is_file()).unwrap_or(false) {
                continue;
            }
            if let Ok(data) = fs::read(ent.path()) {
                out.push((ip, Owner::from_content(&String::from_utf8_lossy(&data))));
            }
        }
        Ok(out)
    }

    fn rebuild(&mut self) -> Result<()> {
        let entries = self.scan()?;
        self.rebuild_with(&entries)
    }

    /// Makes the index describe exactly `entries` (which must be what is on disk). Only
    /// buckets whose content differs are rewritten: after a foreign change to a big data
    /// dir, reading 10k small files is far cheaper than recreating them.
    pub fn rebuild_with(&mut self, entries: &[(IpAddr, Owner)]) -> Result<()> {
        self.touch()?;
        let idx = &self.store.index;
        fs::DirBuilder::new().recursive(true).mode(0o755).create(idx).map_err(|e| io_err("creating", idx, e))?;
        let mut by_owner: HashMap<&Owner, Vec<IpAddr>> = HashMap::new();
        for (ip, o) in entries {
            by_owner.entry(o).or_default().push(*ip);
        }
        let mut buckets: HashMap<String, Vec<(Owner, Vec<IpAddr>)>> = HashMap::new();
        for (o, mut ips) in by_owner {
            ips.sort();
            buckets.entry(o.bucket()).or_default().push((o.clone(), ips));
        }
        for ent in fs::read_dir(idx).map_err(|e| io_err("reading", idx, e))? {
            let ent = ent.map_err(|e| io_err("reading", idx, e))?;
            let p = ent.path();
            let keep = ent.file_name().to_str().is_some_and(|n| buckets.contains_key(n))
                && ent.file_type().map(|t| t.is_file()).unwrap_or(false);
            if keep {
                continue;
            }
            let r = if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|e| io_err("clearing", &p, e))?;
        }
        for (name, mut recs) in buckets {
            recs.sort_by(|a, b| (&a.0.id, &a.0.ifname).cmp(&(&b.0.id, &b.0.ifname)));
            let text = render_bucket(&recs);
            let p = idx.join(name);
            if fs::read(&p).ok().as_deref() != Some(text.as_bytes()) {
                fs::write(&p, text).map_err(|e| io_err("writing", &p, e))?;
            }
        }
        self.broken = false;
        self.finish()
    }

    fn read_bucket(&self, owner: &Owner) -> std::result::Result<Vec<(Owner, Vec<IpAddr>)>, ()> {
        match fs::read_to_string(self.store.index.join(owner.bucket())) {
            Ok(text) => parse_bucket(&text).ok_or(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(_) => Err(()),
        }
    }

    /// What `owner` holds according to the index, checked against the IP files (one read
    /// per IP held); any disagreement means the index is stale, and it is rebuilt.
    pub fn lookup(&mut self, owner: &Owner) -> Result<Vec<IpAddr>> {
        if let Ok(recs) = self.read_bucket(owner) {
            let ips = recs.into_iter().find(|(o, _)| o == owner).map(|(_, ips)| ips).unwrap_or_default();
            if ips.iter().all(|ip| self.read_owner(*ip).as_ref() == Some(owner)) {
                return Ok(ips);
            }
        }
        self.rebuild()?;
        Ok(self
            .read_bucket(owner)
            .unwrap_or_default()
            .into_iter()
            .find(|(o, _)| o == owner)
            .map(|(_, ips)| ips)
            .unwrap_or_default())
    }

    pub fn read_owner(&self, ip: IpAddr) -> Option<Owner> {
        fs::read(self.ip_path(ip)).ok().map(|d| Owner::from_content(&String::from_utf8_lossy(&d)))
    }

    /// Records that `owner` now holds exactly `ips`. A failure only flags the index for a
    /// rebuild at commit: the IP files already say the truth.
    pub fn set_index(&mut self, owner: &Owner, ips: &[IpAddr]) -> Result<()> {
        self.touch()?;
        let Ok(mut recs) = self.read_bucket(owner) else {
            self.broken = true;
            return Ok(());
        };
        recs.retain(|(o, _)| o != owner);
        if !ips.is_empty() {
            recs.push((owner.clone(), ips.to_vec()));
        }
        let p = self.store.index.join(owner.bucket());
        let r = if recs.is_empty() {
            fs::remove_file(&p).or_else(|e| if e.kind() == ErrorKind::NotFound { Ok(()) } else { Err(e) })
        } else {
            fs::write(&p, render_bucket(&recs))
        };
        if r.is_err() {
            self.broken = true;
        }
        Ok(())
    }

    /// O_CREAT|O_EXCL, as the reference: creating the file is what claims the address.
    /// Ok(false) when someone holds it already.
    pub fn reserve(&mut self, ip: IpAddr, owner: &Owner) -> Result<bool> {
        self.touch()?;
        let p = self.ip_path(ip);
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("reserving", &p, e)),
        };
        if let Err(e) = f.write_all(owner.content().as_bytes()) {
            drop(f);
            if fs::remove_file(&p).is_err() {
                self.broken = true;
            }
            return Err(io_err("writing", &p, e));
        }
        Ok(true)
    }

    /// Ok(false) when the file was already gone.
    pub fn remove(&mut self, ip: IpAddr) -> Result<bool> {
        self.touch()?;
        let p = self.ip_path(ip);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => {
                self.broken = true;
                Err(io_err("releasing", &p, e))
            }
        }
    }

    pub fn last_reserved(&self, set_idx: usize) -> Option<IpAddr> {
        let text = fs::read_to_string(self.store.dir.join(format!("{LAST_IP_PREFIX}{set_idx}"))).ok()?;
        IpAddr::from_str(text.trim()).ok()
    }

    pub fn set_last_reserved(&mut self, set_idx: usize, ip: IpAddr) -> Result<()> {
        // Creating it changes the net dir, hence touch().
        self.touch()?;
        let p = self.store.dir.join(format!("{LAST_IP_PREFIX}{set_idx}"));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()))
            .map_err(|e| io_err("writing", &p, e))
    }
}

fn stamp(md: &fs::Metadata) -> String {
    format!("{} {} {}", md.ino(), md.mtime(), md.mtime_nsec())
}

// Bucket lines: `i <id> <ifname> <ip>...` or `l <id> <ip>...`, fields %-escaped so that
// any byte string round-trips and a line never contains a bare space or newline.
fn render_bucket(recs: &[(Owner, Vec<IpAddr>)]) -> String {
    let mut s = format!("{BUCKET_MAGIC}\n");
    for (o, ips) in recs {
        match &o.ifname {
            Some(ifn) => s.push_str(&format!("i {} {}", escape(&o.id), escape(ifn))),
            None => s.push_str(&format!("l {}", escape(&o.id))),
        }
        for ip in ips {
            s.push(' ');
            s.push_str(&ip.to_string());
        }
        s.push('\n');
    }
    s
}

fn parse_bucket(text: &str) -> Option<Vec<(Owner, Vec<IpAddr>)>> {
    let mut lines = text.lines();
    if lines.next()? != BUCKET_MAGIC {
        return None;
    }
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let mut f = line.split(' ');
        let owner = match f.next()? {
            "i" => Owner { id: unescape(f.next()?)?, ifname: Some(unescape(f.next()?)?) },
            "l" => Owner { id: unescape(f.next()?)?, ifname: None },
            _ => return None,
        };
        let ips = f.map(|s| IpAddr::from_str(s).ok()).collect::<Option<Vec<_>>>()?;
        out.push((owner, ips));
    }
    Some(out)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
