//! Opening a Unix socket under a deadline (shared with the `qga` crate).

use std::path::Path;
use std::time::Duration;
use tokio::net::UnixStream;

/// Connects to the Unix socket at `path`; a connect that takes longer than `within`
/// fails with [`std::io::ErrorKind::TimedOut`].
///
/// # Errors
/// The OS error (missing socket, permission denied, refused) or the timeout.
pub async fn connect_unix(path: &Path, within: Duration) -> std::io::Result<UnixStream> {
    tokio::time::timeout(within, UnixStream::connect(path))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}
