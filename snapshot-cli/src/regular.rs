//! Reading a file that another program may have replaced: only a regular file, never
//! through a symlink, never blocking (a FIFO), never more than a bound.

use std::io::Read as _;
use std::path::Path;

/// The content of `path` when it is a regular file of at most `limit` bytes;
/// `Ok(None)` when it is something else (a FIFO, a device, a directory) or larger.
///
/// # Errors
/// It cannot be opened (missing, a symlink, no permission) or read.
pub(crate) fn read_regular(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() > limit {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(u64::try_from(bytes.len())
        .is_ok_and(|n| n <= limit)
        .then_some(bytes))
}
