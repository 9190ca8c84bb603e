//! Writing, linking and removing podnet's files as the running system will see them
//! (`path`), under --destdir (`at(path)`), each step saying what it does; with --dry-run only
//! saying it. Files are written to a temporary name and renamed into place.

use std::io::ErrorKind;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{log, Die};

pub struct Files {
    /// "" or a dir without a trailing '/'.
    pub destdir: String,
    pub dry_run: bool,
}

fn create_parent(dest: &Path) -> Result<(), Die> {
    match dest.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Die::io(format!("cannot create {}", dir.display()), e)),
        None => Ok(()),
    }
}

/// `dest` with `.tmp.<pid>` appended: the name a file is written under before the rename.
fn temporary(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(name)
}

fn rename(tmp: &Path, dest: &Path) -> Result<(), Die> {
    std::fs::rename(tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        Die::io(format!("cannot rename {} to {}", tmp.display(), dest.display()), e)
    })
}

impl Files {
    /// Where `path` is written: under --destdir.
    pub fn at(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("{}{path}", self.destdir))
    }

    /// Writes `content` and a newline (mode 0644) unless `path` already holds exactly that.
    pub fn write(&self, path: &str, content: &str) -> Result<(), Die> {
        let dest = self.at(path);
        let content = content.trim_end_matches('\n');
        let is_file = std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_file());
        if is_file && std::fs::read_to_string(&dest).is_ok_and(|old| old.trim_end_matches('\n') == content) {
            log(&format!("{path} is up to date"));
            return Ok(());
        }
        if self.dry_run {
            log(&format!("would write {path}:"));
            for line in content.lines() {
                println!("    {line}");
            }
            return Ok(());
        }
        create_parent(&dest)?;
        let tmp = temporary(&dest);
        std::fs::write(&tmp, format!("{content}\n"))
            .map_err(|e| Die::io(format!("cannot write {}", tmp.display()), e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Die::io(format!("cannot chmod {}", tmp.display()), e))?;
        rename(&tmp, &dest)?;
        log(&format!("wrote {path}"));
        Ok(())
    }

    /// Installs the binary `src` as `path` (mode 0755) unless it is there already. A new
    /// inode, renamed into place: running shims keep their (old) binary.
    pub fn install_binary(&self, src: &Path, path: &str) -> Result<(), Die> {
        let dest = self.at(path);
        if dest.is_file() && same_content(src, &dest) {
            log(&format!("{path} is up to date"));
            return Ok(());
        }
        if self.dry_run {
            log(&format!("would install {} as {path}", src.display()));
            return Ok(());
        }
        create_parent(&dest)?;
        let tmp = temporary(&dest);
        std::fs::copy(src, &tmp)
            .map_err(|e| Die::io(format!("cannot copy {} to {}", src.display(), tmp.display()), e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Die::io(format!("cannot chmod {}", tmp.display()), e))?;
        rename(&tmp, &dest)?;
        log(&format!("installed {path}"));
        Ok(())
    }

    /// Makes `path` a symbolic link to `target` unless it is one already.
    pub fn link(&self, path: &str, target: &str) -> Result<(), Die> {
        let dest = self.at(path);
        let meta = std::fs::symlink_metadata(&dest).ok();
        let is_link = meta.as_ref().is_some_and(|m| m.file_type().is_symlink());
        if is_link && std::fs::read_link(&dest).is_ok_and(|t| t == Path::new(target)) {
            log(&format!("{path} -> {target} is up to date"));
            return Ok(());
        }
        if self.dry_run {
            log(&format!("would link {path} -> {target}"));
            return Ok(());
        }
        if meta.is_some_and(|m| m.is_dir()) {
            return Err(Die::usage(format!("{path} is a directory")));
        }
        create_parent(&dest)?;
        let tmp = temporary(&dest);
        let _ = std::fs::remove_file(&tmp);
        symlink(target, &tmp).map_err(|e| Die::io(format!("cannot link {} -> {target}", tmp.display()), e))?;
        rename(&tmp, &dest)?;
        log(&format!("linked {path} -> {target}"));
        Ok(())
    }

    /// Removes `path` if it is there (a file or a link, never a directory).
    pub fn remove(&self, path: &str) -> Result<(), Die> {
        let dest = self.at(path);
        if std::fs::symlink_metadata(&dest).is_err() {
            log(&format!("{path} is not there"));
            return Ok(());
        }
        if self.dry_run {
            log(&format!("would remove {path}"));
            return Ok(());
        }
        std::fs::remove_file(&dest).map_err(|e| Die::io(format!("cannot remove {}", dest.display()), e))?;
        log(&format!("removed {path}"));
        Ok(())
    }

    /// Removes the directory `path` if it is empty (and there).
    pub fn remove_empty_dir(&self, path: &str) -> Result<(), Die> {
        let dest = self.at(path);
        if self.dry_run || !dest.is_dir() {
            return Ok(());
        }
        match std::fs::remove_dir(&dest) {
            Err(e) if e.kind() != ErrorKind::DirectoryNotEmpty => {
                Err(Die::io(format!("cannot remove {}", dest.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Whether `path` is a regular file (links followed) holding `needle`.
    pub fn contains(&self, path: &str, needle: &str) -> bool {
        std::fs::read(self.at(path)).is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
    }
}

/// Whether both files can be read and hold the same bytes (`cmp -s`).
pub fn same_content(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> (PathBuf, Files) {
        let dir = std::env::temp_dir().join(format!("podnet-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = Files { destdir: dir.display().to_string(), dry_run: false };
        (dir, files)
    }

    #[test]
    fn write_is_idempotent_and_0644() {
        let (dir, files) = scratch("write");
        files.write("/etc/x/a.toml", "a = 1\n\n").unwrap();
        let p = dir.join("etc/x/a.toml");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 1\n");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        files.write("/etc/x/a.toml", "a = 1").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
        files.remove("/etc/x/a.toml").unwrap();
        files.remove_empty_dir("/etc/x").unwrap();
        assert!(!dir.join("etc/x").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn link_replaces_a_file_and_refuses_a_directory() {
        let (dir, files) = scratch("link");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/podnet"), "old").unwrap();
        files.link("/bin/podnet", "/usr/local/bin/shim").unwrap();
        assert_eq!(std::fs::read_link(dir.join("bin/podnet")).unwrap(), Path::new("/usr/local/bin/shim"));
        std::fs::create_dir_all(dir.join("bin/dir")).unwrap();
        let err = files.link("/bin/dir", "/x").unwrap_err();
        assert_eq!(err.code, 2);
        assert!(err.msg.contains("/bin/dir is a directory"), "{}", err.msg);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
