//! Writing a small file whole or not at all, for files other processes read while it changes
//! (the node facts, the node agent's lease and status).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a part: a
/// temp file with a unique name in the same directory (created with `dir_mode` if missing),
/// mode `mode` whatever the umask, fsynced, renamed over `path`, and the directory fsynced.
/// On failure the temp file is removed; if that fails too, the error says so.
pub fn write(path: &Path, bytes: &[u8], mode: u32, dir_mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::DirBuilder::new().recursive(true).mode(dir_mode).create(dir)?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}-{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    let written = (|| {
        // The umask may have narrowed the mode.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        return Err(match fs::remove_file(&tmp) {
            Ok(()) => e,
            Err(r) if r.kind() == io::ErrorKind::NotFound => e,
            Err(r) => io::Error::new(e.kind(), format!("{e} (and remove {}: {r})", tmp.display())),
        });
    }
    fs::File::open(dir)?.sync_all()
}
