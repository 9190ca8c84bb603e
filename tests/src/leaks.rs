//! A leak checker for the root tests that create containers: take a [`Snapshot`] before the
//! test, call [`assert_no_leaks`] after it, and the test fails if it left a mount, a cgroup,
//! a namespace or a process behind.
//!
//! ```no_run
//! # use podnet_tests::leaks;
//! let _serial = leaks::serial();
//! let marker = podnet_tests::unique("leak");
//! let before = leaks::Snapshot::take(&marker);
//! // ... create and delete containers whose cgroups path contains `marker` ...
//! leaks::assert_no_leaks(&before, &marker);
//! ```
//!
//! The checker sees the whole test process: a process or namespace another test thread
//! created in the meantime looks like a leak. So every test of a test binary (each file under
//! `tests/tests/` is its own process) that starts processes, containers or namespaces must
//! hold [`serial`] for its whole duration when any test of that binary checks for leaks.
//!
//! What counts:
//! - mounts: entries of this process's `/proc/self/mountinfo` (mount point, type, source),
//!   counted, so a second mount stacked on an existing mount point is new (the netns
//!   directory's own mount, made once per boot, is not counted);
//! - cgroups: directories anywhere under `/sys/fs/cgroup` (every v1 hierarchy and the v2 one,
//!   at `unified/` on hybrid hosts) whose path contains the marker;
//! - namespaces (net, ipc, uts, pid, mnt, cgroup): by inode, those any process lives in
//!   (`/proc/*/ns/*`), those this process's threads are in or holds a descriptor of, and
//!   those bind-mounted (nsfs mounts);
//! - processes: descendants of this process (zombies included: an unreaped child is a leak)
//!   and processes whose `/proc/<pid>/cgroup` contains the marker.
//!
//! /proc entries that vanish mid-walk or cannot be read (another user's, without root) are
//! skipped, not errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The namespace kinds checked (their names under /proc/<pid>/ns).
const NS_KINDS: [&str; 6] = ["net", "ipc", "uts", "pid", "mnt", "cgroup"];

/// Mounts made once per boot and kept on purpose: `ip netns add` and the netns crate turn the
/// netns directory into a shared mount of itself the first time a namespace is pinned there.
/// The namespaces pinned under it are still checked.
const PERSISTENT_MOUNTS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// How long [`assert_no_leaks`] waits for a leak to go away on its own (kernel teardown is
/// partly asynchronous: a namespace can outlive its last process briefly, a killed process
/// takes a moment to exit).
const SETTLE: Duration = Duration::from_secs(2);

/// The lock container tests hold for their whole duration, so that no other test thread of
/// the same process creates processes or namespaces while they check for leaks. A test that
/// panicked while holding it does not poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One process as seen in /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The state letter of /proc/<pid>/stat ("Z" for a zombie).
    pub state: String,
    pub comm: String,
    /// NUL-separated arguments joined with spaces; empty for zombies and kernel threads.
    pub cmdline: String,
    /// Why it was recorded: "child of <pid>" or its cgroup line naming the marker.
    pub why: String,
}

impl fmt::Display for ProcInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cmd = if self.cmdline.is_empty() { format!("[{}]", self.comm) } else { self.cmdline.clone() };
        write!(f, "pid {} (ppid {}, state {}): {cmd} [{}]", self.pid, self.ppid, self.state, self.why)
    }
}

/// What exists at one moment: see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// "mount point (type source)" -> how many such mounts.
    pub mounts: BTreeMap<String, usize>,
    pub cgroups: BTreeSet<PathBuf>,
    /// "net:[4026532281]" -> who holds it (a few holders, for the report).
    pub namespaces: BTreeMap<String, Vec<String>>,
    /// (pid, start time in clock ticks) -> the process; the start time tells a reused pid apart.
    pub processes: BTreeMap<(u32, u64), ProcInfo>,
}

/// Which parts a snapshot collects: a re-check only looks again at what was found leaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    mounts: bool,
    cgroups: bool,
    namespaces: bool,
    processes: bool,
}

const ALL: Parts = Parts { mounts: true, cgroups: true, namespaces: true, processes: true };

impl Snapshot {
    /// Records the mounts, namespaces and processes now, and the cgroups (and processes in
    /// cgroups) whose path contains `cgroup_name_marker`, which must not be empty.
    pub fn take(cgroup_name_marker: &str) -> Snapshot {
        Snapshot::take_parts(cgroup_name_marker, ALL)
    }

    fn take_parts(marker: &str, parts: Parts) -> Snapshot {
        assert!(!marker.is_empty(), "the leak marker must not be empty: every cgroup would match");
        // Unlike other processes' entries, our own is always there: without it the check is blind.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
        let mut snap = Snapshot::default();
        if parts.mounts {
            let mounts = mountinfo.lines().filter_map(MountLine::parse);
            for m in mounts.filter(|m| !PERSISTENT_MOUNTS.contains(&m.point.as_str())) {
                *snap.mounts.entry(format!("{} ({} {})", m.point, m.fstype, m.source)).or_default() += 1;
            }
        }
        if parts.cgroups {
            walk_cgroups(Path::new("/sys/fs/cgroup"), marker, &mut snap.cgroups);
        }
        if parts.namespaces {
            collect_namespaces(&mountinfo, &mut snap.namespaces);
        }
        if parts.processes {
            snap.processes = related_processes(marker);
        }
        snap
    }

    /// What `after` has that this snapshot has not.
    pub fn leaks_in(&self, after: &Snapshot) -> Leaks {
        let mounts = after
            .mounts
            .iter()
            .filter(|(k, n)| **n > self.mounts.get(*k).copied().unwrap_or(0))
            .map(|(k, n)| {
                let extra = n - self.mounts.get(k).copied().unwrap_or(0);
                if extra == 1 {
                    k.clone()
                } else {
                    format!("{k} x{extra}")
                }
            })
            .collect();
        let cgroups = after.cgroups.difference(&self.cgroups).cloned().collect();
        let namespaces = after
            .namespaces
            .iter()
            .filter(|(k, _)| !self.namespaces.contains_key(*k))
            .map(|(k, holders)| format!("{k} held by {}", holders.join(", ")))
            .collect();
        let processes = after
            .processes
            .iter()
            .filter(|(k, _)| !self.processes.contains_key(*k))
            .map(|(_, p)| p.to_string())
            .collect();
        Leaks { mounts, cgroups, namespaces, processes }
    }
}

/// What a test left behind, readable with `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leaks {
    pub mounts: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub namespaces: Vec<String>,
    pub processes: Vec<String>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.cgroups.is_empty() && self.namespaces.is_empty() && self.processes.is_empty()
    }

    fn parts(&self) -> Parts {
        Parts {
            mounts: !self.mounts.is_empty(),
            cgroups: !self.cgroups.is_empty(),
            namespaces: !self.namespaces.is_empty(),
            processes: !self.processes.is_empty(),
        }
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn section(f: &mut fmt::Formatter<'_>, title: &str, items: &[String]) -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "{title}:")?;
            items.iter().try_for_each(|i| writeln!(f, "  {i}"))
        }
        section(f, "new mounts", &self.mounts)?;
        let cgroups: Vec<String> = self.cgroups.iter().map(|p| p.display().to_string()).collect();
        section(f, "new cgroups", &cgroups)?;
        section(f, "new namespaces", &self.namespaces)?;
        section(f, "new processes", &self.processes)
    }
}

/// One check, without waiting: what exists now that did not at `before`.
pub fn find_leaks(before: &Snapshot, marker: &str) -> Leaks {
    before.leaks_in(&Snapshot::take(marker))
}

/// Panics with the list of mounts, cgroups, namespaces and processes that exist now and did
/// not at `before`. Whatever is found is looked at again a few times over about two seconds
/// first, since the kernel tears some things down asynchronously; only what is still there
/// then fails the test.
pub fn assert_no_leaks(before: &Snapshot, marker: &str) {
    let mut leaks = find_leaks(before, marker);
    let deadline = Instant::now() + SETTLE;
    let mut pause = Duration::from_millis(10);
    while !leaks.is_empty() && Instant::now() < deadline {
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(250));
        // Only the parts found leaking: the others were already clean.
        leaks = before.leaks_in(&Snapshot::take_parts(marker, leaks.parts()));
    }
    assert!(leaks.is_empty(), "the test left things behind (still there after {SETTLE:?}):\n{leaks}");
}

// ---------------------------------------------------------------------------------------------
// Mounts.

/// The fields of a mountinfo line the checker uses.
struct MountLine {
    /// Field 4: the root of the mount within its filesystem ("net:[4026532281]" for nsfs).
    root: String,
    /// Field 5.
    point: String,
    fstype: String,
    source: String,
}

impl MountLine {
    /// Parses `id parent maj:min root point options [optional...] - fstype source super`.
    fn parse(line: &str) -> Option<MountLine> {
        let fields: Vec<&str> = line.split(' ').collect();
        let dash = fields.iter().skip(6).position(|f| *f == "-")? + 6;
        Some(MountLine {
            root: unescape(fields.get(3)?),
            point: unescape(fields.get(4)?),
            fstype: (*fields.get(dash + 1)?).to_string(),
            source: unescape(fields.get(dash + 2)?),
        })
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match code {
            Some(d) => {
                out.push(d.iter().fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Cgroups.

/// Adds the directories under `dir` whose path contains `marker`, without following
/// symlinks (v1 hosts link `cpu` and `cpuacct` to `cpu,cpuacct`: one walk is enough).
fn walk_cgroups(dir: &Path, marker: &str, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if path.to_string_lossy().contains(marker) {
            out.insert(path.clone());
        }
        walk_cgroups(&path, marker, out);
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces.

/// How many holders a namespace's report names.
const MAX_HOLDERS: usize = 3;

fn add_ns(out: &mut BTreeMap<String, Vec<String>>, id: String, holder: impl FnOnce() -> String) {
    let holders = out.entry(id).or_default();
    if holders.len() < MAX_HOLDERS {
        holders.push(holder());
    }
}

/// The namespace id ("net:[4026532281]") a /proc ns link or fd points to, if of a checked kind.
fn ns_id(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?.to_string_lossy().into_owned();
    let (kind, rest) = target.split_once(':')?;
    (NS_KINDS.contains(&kind) && rest.starts_with('[')).then_some(target)
}

fn collect_namespaces(mountinfo: &str, out: &mut BTreeMap<String, Vec<String>>) {
    for pid in pids() {
        let dir = PathBuf::from(format!("/proc/{pid}/ns"));
        for kind in NS_KINDS {
            if let Some(id) = ns_id(&dir.join(kind)) {
                add_ns(out, id, || format!("pid {pid} ({})", comm(pid)));
            }
        }
    }
    // This process's threads (a thread may have setns'd elsewhere) and descriptors.
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let tid = task.file_name().to_string_lossy().into_owned();
            for kind in NS_KINDS {
                if let Some(id) = ns_id(&task.path().join("ns").join(kind)) {
                    add_ns(out, id, || format!("test thread {tid}"));
                }
            }
        }
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        for fd in fds.flatten() {
            if let Some(id) = ns_id(&fd.path()) {
                add_ns(out, id, || format!("test fd {}", fd.file_name().to_string_lossy()));
            }
        }
    }
    for m in mountinfo.lines().filter_map(MountLine::parse).filter(|m| m.fstype == "nsfs") {
        let id = m.root.trim_start_matches('/').to_string();
        let point = m.point;
        add_ns(out, id, || format!("bind mount at {point}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// The numeric entries of /proc.
fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end().to_string()).unwrap_or_default()
}

/// What /proc/<pid>/stat says: (comm, state, ppid, start time).
fn stat(pid: u32) -> Option<(String, String, u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may itself hold spaces and parentheses: split at the last ')'.
    let (head, tail) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let rest: Vec<&str> = tail.split_whitespace().collect();
    // rest[0] is field 3 (state), rest[1] field 4 (ppid), rest[19] field 22 (starttime).
    Some((comm, rest.first()?.to_string(), rest.get(1)?.parse().ok()?, rest.get(19)?.parse().ok()?))
}

fn related_processes(marker: &str) -> BTreeMap<(u32, u64), ProcInfo> {
    let me = std::process::id();
    let all: BTreeMap<u32, (String, String, u32, u64)> =
        pids().into_iter().filter_map(|p| Some((p, stat(p)?))).collect();
    let mut out = BTreeMap::new();
    for (&pid, (comm, state, ppid, start)) in &all {
        if pid == me {
            continue;
        }
        // Walk up the parent chain; bounded, in case /proc changed under us into a cycle.
        let mut descendant = false;
        let mut p = *ppid;
        for _ in 0..all.len() {
            if p == me {
                descendant = true;
                break;
            }
            match all.get(&p) {
                Some((_, _, pp, _)) if p > 1 => p = *pp,
                _ => break,
            }
        }
        let why = if descendant {
            Some(format!("descendant of test process {me}"))
        } else {
            fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|c| c.lines().find(|l| l.contains(marker)).map(|l| format!("cgroup {l}")))
        };
        let Some(why) = why else { continue };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        out.insert(
            (pid, *start),
            ProcInfo { pid, ppid: *ppid, state: state.clone(), comm: comm.clone(), cmdline, why },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn mountinfo_lines_parse() {
        let line = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        let m = MountLine::parse(line).expect("a valid line");
        let got = (m.root.as_str(), m.point.as_str(), m.fstype.as_str(), m.source.as_str());
        assert_eq!(got, ("/mnt1", "/mnt two", "ext3", "/dev/root"));
        let line = "612 29 0:4 net:[4026532281] /run/netns/x rw shared:5 - nsfs nsfs rw";
        let ns = MountLine::parse(line).expect("nsfs line");
        assert_eq!((ns.root.as_str(), ns.fstype.as_str()), ("net:[4026532281]", "nsfs"));
        assert!(MountLine::parse("garbage").is_none());
    }

    #[test]
    fn stat_parses_odd_comm() {
        let (comm, state, ppid, _) = stat(std::process::id()).expect("own stat");
        assert!(!comm.is_empty());
        assert!(["R", "S", "D"].contains(&state.as_str()), "state {state}");
        assert!(ppid > 0 || std::process::id() == 1);
    }

    #[test]
    fn snapshot_takes_without_root() {
        let _serial = serial();
        let marker = crate::unique("leakunit");
        let s = Snapshot::take(&marker);
        assert!(s.mounts.keys().any(|m| m.starts_with("/ ")), "no root mount in {:?}", s.mounts);
        assert!(s.cgroups.is_empty(), "no cgroup can hold a fresh marker: {:?}", s.cgroups);
        // Our own namespaces are always readable.
        let own = fs::read_link("/proc/self/ns/net").expect("own netns link").to_string_lossy().into_owned();
        assert!(s.namespaces.contains_key(&own), "{own} not in {:?}", s.namespaces.keys());
        assert!(find_leaks(&s, &marker).is_empty(), "{}", find_leaks(&s, &marker));
    }

    #[test]
    fn children_and_zombies_are_leaks() {
        let _serial = serial();
        let marker = crate::unique("leakunit");
        let before = Snapshot::take(&marker);
        let mut child = Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().expect("spawn sleep");
        let leaks = find_leaks(&before, &marker);
        assert_eq!(leaks.processes.len(), 1, "{leaks}");
        assert!(leaks.processes[0].contains("sleep 30"), "{leaks}");
        child.kill().expect("kill sleep");
        // Killed but not reaped: a zombie, still a leak.
        let zombie = crate::retry(200, Duration::from_millis(10), || {
            find_leaks(&before, &marker).processes.first().is_some_and(|p| p.contains("state Z"))
        });
        assert!(zombie, "{}", find_leaks(&before, &marker));
        child.wait().expect("reap sleep");
        assert_no_leaks(&before, &marker);
    }

    /// The checker against real leaks of each kind: a bind-mounted network namespace, a cgroup
    /// with a process in it, and that process.
    #[test]
    #[ignore = "needs root"]
    fn root_leaks_are_found_and_clear() {
        crate::require_root();
        let _serial = serial();
        let marker = crate::unique("leakroot");
        let before = Snapshot::take(&marker);
        let sh = |cmd: &str| {
            let ok = Command::new("sh").arg("-c").arg(cmd).status().expect("spawn sh").success();
            assert!(ok, "`{cmd}` failed");
        };
        // Any hierarchy will do: pids exists on v1 and hybrid hosts, the root on pure v2.
        let base = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|b| Path::new(b).join("cgroup.procs").exists())
            .expect("a cgroup hierarchy");
        let cg = Path::new(base).join(&marker);
        sh(&format!("ip netns add {marker}"));
        fs::create_dir(&cg).expect("create test cgroup");
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        fs::write(cg.join("cgroup.procs"), child.id().to_string()).expect("move sleep into the test cgroup");

        let leaks = find_leaks(&before, &marker);
        let cleanup = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_dir(&cg);
            let _ = Command::new("ip").args(["netns", "del", &marker]).status();
        };
        let text = leaks.to_string();
        let found = leaks.mounts.iter().any(|m| m.contains(&marker))
            && leaks.cgroups == [cg.clone()]
            && leaks.namespaces.iter().any(|n| n.starts_with("net:[") && n.contains(&marker))
            && leaks.processes.len() == 1
            && leaks.processes[0].contains("sleep 30");
        cleanup(&mut child);
        assert!(found, "not every leak was found:\n{text}");
        assert_no_leaks(&before, &marker);
    }

    #[test]
    fn report_lists_each_kind() {
        let leaks = Leaks {
            mounts: vec!["/x (tmpfs tmpfs)".into()],
            cgroups: vec![PathBuf::from("/sys/fs/cgroup/m")],
            namespaces: vec!["net:[1] held by pid 2 (x)".into()],
            processes: vec![],
        };
        let text = leaks.to_string();
        for needle in ["new mounts:\n  /x", "new cgroups:\n  /sys/fs/cgroup/m", "new namespaces:\n  net:[1]"] {
            assert!(text.contains(needle), "{text}");
        }
        assert!(!text.contains("processes"));
        assert!(Leaks::default().is_empty());
    }

    #[test]
    fn unescape_handles_octal() {
        assert_eq!(unescape("/a\\040b\\134c\\"), "/a b\\c\\");
    }
}
