//! podnet's pause binary: embedded, written once to `<root>/.podnet-pause`, its empty root,
//! and the workload that starts it with execveat on a descriptor opened before the build.
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use crate::error::{Error, Result};
use crate::Runtime;

/// The pause binary, built static by build.rs.
pub static PAUSE_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/podnet-pause"));

/// libcontainer's workload hook for the pause: exec the binary opened before the clone, with
/// no path lookup (the root is empty).
#[derive(Clone)]
pub(crate) struct PauseExecutor {
    fd: RawFd,
}

impl Executor for PauseExecutor {
    fn exec(&self, _spec: &Spec) -> std::result::Result<(), ExecutorError> {
        let argv = [c"/pause".as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        unsafe {
            libc::syscall(libc::SYS_execveat, self.fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
        };
        Err(ExecutorError::Other(format!("starting the pause binary: {}", io::Error::last_os_error())))
    }

    fn validate(&self, _spec: &Spec) -> std::result::Result<(), ExecutorValidationError> {
        Ok(())
    }
}

impl Runtime {
    /// The empty root every pause starts on: a directory with an empty `dev/`, read-only for
    /// everyone.
    pub(crate) fn pause_root(&self) -> Result<PathBuf> {
        let root = self.root.join(".pause-root");
        if !root.join("dev").is_dir() {
            fs::create_dir_all(root.join("dev")).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
            for d in [root.join("dev"), root.clone()] {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o555))
                    .map_err(|e| Error::io(format!("chmod {}", d.display()), e))?;
            }
        }
        Ok(root)
    }

    /// The pause binary opened, and the workload that execs it: keep the file open until the
    /// container is built.
    pub(crate) fn pause_executor(&self) -> Result<(File, PauseExecutor)> {
        let pause = File::open(self.pause_binary()?).map_err(|e| Error::io("opening the pause binary", e))?;
        let exec = PauseExecutor { fd: pause.as_raw_fd() };
        Ok((pause, exec))
    }

    /// Writes the embedded pause binary to `<root>/.podnet-pause` once (atomically, replacing
    /// a different version), unless a path was configured.
    pub fn pause_binary(&self) -> Result<PathBuf> {
        if let Some(p) = &self.pause_override {
            return Ok(p.clone());
        }
        if let Some(p) = self.pause_ready.get() {
            return Ok(p.clone());
        }
        let path = self.root.join(".podnet-pause");
        let current = fs::metadata(&path).map(|m| m.len() == PAUSE_BINARY.len() as u64).unwrap_or(false)
            && fs::read(&path).map(|b| b == PAUSE_BINARY).unwrap_or(false);
        if !current {
            let tmp = self.root.join(format!(".podnet-pause.{}", std::process::id()));
            let write = || -> io::Result<()> {
                fs::write(&tmp, PAUSE_BINARY)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
                fs::rename(&tmp, &path)
            };
            if let Err(e) = write() {
                let _ = fs::remove_file(&tmp);
                return Err(Error::io(format!("writing the pause binary to {}", path.display()), e));
            }
        }
        let _ = self.pause_ready.set(path.clone());
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_binary_is_static() {
        // An ELF with no PT_INTERP program header needs no dynamic loader.
        let b = PAUSE_BINARY;
        assert_eq!(&b[..4], b"\x7fELF");
        let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
        let phentsize = u16::from_le_bytes(b[54..56].try_into().unwrap()) as usize;
        let phnum = u16::from_le_bytes(b[56..58].try_into().unwrap()) as usize;
        for i in 0..phnum {
            let off = phoff + i * phentsize;
            let ptype = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
            assert_ne!(ptype, 3, "PT_INTERP found: the pause binary is dynamically linked");
        }
    }
}
