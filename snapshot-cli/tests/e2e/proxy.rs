//! A QMP proxy that holds back chosen commands: a real QEMU behind a slow monitor, to
//! make a `transaction` answer after the freeze deadline.

use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Forwards `listen` to `upstream`; a client line executing `command` reaches QEMU
/// only `delay` later. Stops when dropped.
pub(crate) struct DelayProxy(JoinHandle<()>);

impl DelayProxy {
    pub(crate) fn start(listen: &Path, upstream: &Path, command: &str, delay: Duration) -> Self {
        let listener = UnixListener::bind(listen).unwrap();
        let upstream = upstream.to_owned();
        let command = command.to_owned();
        Self(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = UnixStream::connect(&upstream).await.unwrap();
                let (cr, mut cw) = client.into_split();
                let (sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let mut sr = sr;
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let command = command.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(cr);
                    let mut line = Vec::new();
                    while lines.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                        let executes = serde_json::from_slice::<serde_json::Value>(&line)
                            .is_ok_and(|v| v["execute"] == command.as_str());
                        if executes {
                            tokio::time::sleep(delay).await;
                        }
                        if sw.write_all(&line).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        }))
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.0.abort();
    }
}
