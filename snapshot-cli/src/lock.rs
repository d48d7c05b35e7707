//! One coordinator per VM: an advisory lock keyed on the QMP socket's path.
//!
//! QEMU serves one client per socket, so a second coordinator would otherwise hang on
//! the busy socket until its greeting timeout. The lock makes it fail at once.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Held for as long as the coordinator works on the VM; released on drop (and by the
/// kernel if the process dies).
#[derive(Debug)]
pub struct VmLock {
    _file: File,
    path: PathBuf,
}

impl VmLock {
    /// Takes the lock for the VM whose QMP socket is `qmp`, without waiting.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds it; [`Error::Io`] when the lock file
    /// cannot be created.
    pub fn acquire(qmp: &Path) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "qsnap-locks-{}",
            rustix::process::getuid().as_raw()
        ));
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { what, path, source }
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(io("cannot create lock directory", &dir)(e));
            }
            _ => {}
        }
        // A directory in /tmp someone else made could be a trap: insist it is ours.
        let meta = std::fs::symlink_metadata(&dir).map_err(io("cannot inspect", &dir))?;
        if !meta.is_dir() || meta.uid() != rustix::process::getuid().as_raw() {
            return Err(Error::Invalid(format!(
                "lock directory {} is not a directory owned by this user",
                dir.display()
            )));
        }
        let canonical = std::fs::canonicalize(qmp).unwrap_or_else(|_| qmp.to_owned());
        let path = dir.join(format!(
            "{:016x}.lock",
            fnv1a(canonical.as_os_str().as_encoded_bytes())
        ));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(io("cannot open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
                qmp: qmp.to_owned(),
                lock: path,
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io("cannot lock", &path)(e)),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_the_same_socket_is_busy_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let first = VmLock::acquire(&sock).unwrap();
        let err = VmLock::acquire(&sock).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err:?}");
        assert!(err.to_string().contains("another qsnap"));
        let other = VmLock::acquire(&dir.path().join("other.sock")).unwrap();
        assert_ne!(other.path(), first.path());
        drop(first);
        VmLock::acquire(&sock).unwrap();
    }
}
