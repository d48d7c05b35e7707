//! One qsnap per VM: an advisory lock keyed on the QMP socket's canonical path.
//!
//! QEMU serves one client per socket, so a second coordinator would otherwise hang on
//! the busy socket until its greeting timeout; worse, a `qsnap freeze` or a guardian
//! could thaw or freeze in the middle of another run. Every command that changes guest
//! or disk state takes this lock.
//!
//! Where: `/run/lock/qsnap` for root (one place for every root process, whatever its
//! `$TMPDIR` or private `/tmp`), `$XDG_RUNTIME_DIR/qsnap` for other users, and a
//! per-user directory in the temporary directory when neither exists.
//!
//! The lock is a `flock` on an open file description. The guardian inherits a
//! duplicate of the descriptor ([`VmLock::inheritable`]), so the lock stays held — and
//! nobody else can start freezing the VM — until both the coordinator and its guardian
//! are gone.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Held for as long as qsnap works on the VM; released on drop (and by the kernel if
/// the process dies, once no inherited copy remains).
#[derive(Debug)]
pub struct VmLock {
    held: Vec<(File, PathBuf)>,
}

impl VmLock {
    /// Takes the lock for the VM whose QMP (or agent) socket is `socket`, without
    /// waiting.
    ///
    /// # Errors
    /// [`Error::Busy`] when another process holds it; [`Error::Io`] or
    /// [`Error::Invalid`] when the lock directory or file cannot be used.
    pub fn acquire(socket: &Path) -> Result<Self> {
        Self::acquire_all(&[socket])
    }

    /// Takes the locks of every socket given (the QMP socket, and the agent's: `qsnap
    /// freeze` and `thaw` know only the latter), all or none.
    ///
    /// # Errors
    /// As [`VmLock::acquire`].
    pub fn acquire_all(sockets: &[&Path]) -> Result<Self> {
        let mut held = Vec::new();
        for socket in sockets {
            held.push(lock_one(socket)?);
        }
        Ok(Self { held })
    }

    /// The first lock file.
    pub fn path(&self) -> &Path {
        self.held
            .first()
            .map_or(Path::new(""), |(_, p)| p.as_path())
    }

    /// Duplicates of the locks' descriptors without close-on-exec: a child spawned
    /// while they are open holds the same locks until it exits. Drop them right after
    /// the spawn.
    pub(crate) fn inheritable(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.held
            .iter()
            .map(|(f, _)| Ok(rustix::io::dup(f)?))
            .collect()
    }
}

fn lock_one(socket: &Path) -> Result<(File, PathBuf)> {
    {
        let qmp = socket;
        let path = lock_path(qmp)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(io("cannot open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok((file, path)),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
                qmp: qmp.to_owned(),
                lock: path,
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io("cannot lock", &path)(e)),
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// The lock file for the VM at `qmp` (its directory is created if needed).
///
/// # Errors
/// As [`VmLock::acquire`].
pub fn lock_path(qmp: &Path) -> Result<PathBuf> {
    let dir = lock_dir()?;
    let canonical = std::fs::canonicalize(qmp).unwrap_or_else(|_| qmp.to_owned());
    Ok(dir.join(format!(
        "{:016x}.lock",
        fnv1a(canonical.as_os_str().as_encoded_bytes())
    )))
}

/// The directory for locks and guardian logs, created if missing and checked to be a
/// directory owned by this user (a directory someone else made could be a trap).
fn lock_dir() -> Result<PathBuf> {
    let uid = rustix::process::getuid();
    let dir = choose_dir(
        uid.as_raw(),
        Path::new("/run/lock").is_dir(),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        &std::env::temp_dir(),
    );
    match std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(&dir)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(io("cannot create lock directory", &dir)(e));
        }
        _ => {}
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(io("cannot inspect", &dir))?;
    if !meta.is_dir() || meta.uid() != uid.as_raw() {
        return Err(Error::Invalid(format!(
            "lock directory {} is not a directory owned by this user",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Root: `/run/lock/qsnap` (or `/run/qsnap` without `/run/lock`); others:
/// `$XDG_RUNTIME_DIR/qsnap`, else a per-user directory in `tmp`.
fn choose_dir(uid: u32, run_lock: bool, xdg: Option<PathBuf>, tmp: &Path) -> PathBuf {
    match (uid, xdg) {
        (0, _) if run_lock => PathBuf::from("/run/lock/qsnap"),
        (0, _) => PathBuf::from("/run/qsnap"),
        (_, Some(run)) if run.is_absolute() => run.join("qsnap"),
        _ => tmp.join(format!("qsnap-locks-{uid}")),
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

    #[test]
    fn a_duplicated_descriptor_keeps_the_lock_after_the_original_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let first = VmLock::acquire_all(&[&sock, &dir.path().join("qga.sock")]).unwrap();
        let inherited = first.inheritable().unwrap();
        assert_eq!(inherited.len(), 2);
        drop(first);
        assert!(matches!(VmLock::acquire(&sock), Err(Error::Busy { .. })));
        assert!(matches!(
            VmLock::acquire(&dir.path().join("qga.sock")),
            Err(Error::Busy { .. })
        ));
        drop(inherited);
        VmLock::acquire(&sock).unwrap();
    }

    #[test]
    fn a_symlinked_socket_path_shares_the_lock_of_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        std::fs::write(&sock, b"").unwrap();
        let link = dir.path().join("alias.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let _held = VmLock::acquire(&sock).unwrap();
        assert!(matches!(VmLock::acquire(&link), Err(Error::Busy { .. })));
    }

    #[test]
    fn root_locks_in_run_lock_whatever_its_tmpdir_users_in_their_runtime_dir() {
        let tmp = Path::new("/tmp/private-123");
        let xdg = Some(PathBuf::from("/run/user/1000"));
        assert_eq!(
            choose_dir(0, true, xdg.clone(), tmp),
            Path::new("/run/lock/qsnap")
        );
        assert_eq!(choose_dir(0, false, None, tmp), Path::new("/run/qsnap"));
        assert_eq!(
            choose_dir(1000, true, xdg, tmp),
            Path::new("/run/user/1000/qsnap")
        );
        assert_eq!(
            choose_dir(1000, true, Some(PathBuf::new()), tmp),
            Path::new("/tmp/private-123/qsnap-locks-1000")
        );
    }
}
