//! The Unix socket to QEMU (shared with the `qga` crate): opening it under a
//! deadline, and splitting it into halves that wake the runtime only for what their
//! task waits on.
//!
//! Tokio's own split registers one descriptor for reading *and* writing, edge
//! triggered. On a Unix stream socket every read by the peer frees send-buffer space
//! and raises `EPOLLOUT`, so each command QEMU reads woke the runtime once for
//! nothing before its reply woke it again: an extra sleep and wake-up per round trip
//! (measured with `strace -ff`: 3 `epoll_wait` per call, one of them only `EPOLLOUT`).
//! Here the read half is registered for readability only, and the write half (a
//! duplicate of the descriptor) writes directly and registers for writability only
//! while a write would block, which a small QMP command practically never does.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

/// Connects to the Unix socket at `path`; a connect that takes longer than `within`
/// fails with [`std::io::ErrorKind::TimedOut`].
///
/// # Errors
/// The OS error (missing socket, permission denied, refused) or the timeout.
pub async fn connect_unix(path: &Path, within: Duration) -> io::Result<UnixStream> {
    tokio::time::timeout(within, UnixStream::connect(path))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The process that serves the other end (whoever listens on the path: QEMU, or a
/// proxy), read with `SO_PEERCRED` — it is recorded when the listener called
/// `listen`, so it is known even before the peer accepts.
pub fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let pid = stream.peer_cred().ok()?.pid()?;
    u32::try_from(pid).ok().filter(|&p| p > 0)
}

/// Splits a connected socket into a read half and a write half, each its own
/// descriptor, so that each connection task owns one. Must be called inside a Tokio
/// runtime.
///
/// # Errors
/// When the descriptor cannot be duplicated or registered with the runtime.
pub fn split(stream: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    // Stays non-blocking: Tokio hands it back that way, and the duplicate shares it.
    let stream = stream.into_std()?;
    let writer = stream.try_clone()?;
    let reader = register(stream, Interest::READABLE).map_err(|(e, _)| e)?;
    Ok((
        ReadHalf { fd: reader },
        WriteHalf {
            state: Some(WriteState::Plain(writer)),
        },
    ))
}

/// The most one read takes (and zeroes first).
const READ_CHUNK: usize = 64 * 1024;

/// Registers a socket with the runtime for `interest` only.
///
/// Tokio 1.54 deprecated the safe constructor in favour of an `unsafe` one (this
/// workspace forbids `unsafe`) because a generic `AsRawFd` could report a different
/// descriptor later. A std `UnixStream` owns its descriptor and reports that same one
/// until it is dropped or taken back with `into_inner`, which is what the safe
/// constructor requires.
///
/// # Errors
/// When the runtime refuses the descriptor; the stream comes back with the error.
#[allow(deprecated)]
fn register(
    stream: StdStream,
    interest: Interest,
) -> Result<AsyncFd<StdStream>, (io::Error, StdStream)> {
    AsyncFd::try_with_interest(stream, interest).map_err(|e| {
        let (stream, error) = e.into_parts();
        (error, stream)
    })
}

/// The read half of [`split`]: registered for readability only.
#[derive(Debug)]
pub struct ReadHalf {
    fd: AsyncFd<StdStream>,
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd.poll_read_ready(cx))?;
            // FramedRead hands over all its spare capacity, uninitialised, on every
            // read; zeroing all of it each time (large after a large reply) would cost
            // more than the read, so at most READ_CHUNK is offered.
            let unfilled = buf.initialize_unfilled_to(buf.remaining().min(READ_CHUNK));
            let wanted = unfilled.len();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket: wait for the next edge instead
                    // of asking the kernel again only to hear "would block" (what
                    // Tokio's own streams do; a newer event than the one read keeps
                    // the readiness set).
                    if n > 0 && n < wanted {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Would block: readiness cleared, wait for the next edge.
                Err(_would_block) => {}
            }
        }
    }
}

/// The write half of [`split`]: writes directly, and registers for writability only
/// while the socket's send buffer is full. Dropping it shuts the socket's write
/// direction down (as Tokio's owned halves do), so the peer sees the end. Polled
/// inside a Tokio runtime (a write that would block registers with it).
#[derive(Debug)]
pub struct WriteHalf {
    /// `None` only while switching between the two states.
    state: Option<WriteState>,
}

#[derive(Debug)]
enum WriteState {
    Plain(StdStream),
    Waiting(AsyncFd<StdStream>),
}

impl WriteHalf {
    fn stream(&self) -> Option<&StdStream> {
        match &self.state {
            Some(WriteState::Plain(s)) => Some(s),
            Some(WriteState::Waiting(fd)) => Some(fd.get_ref()),
            None => None,
        }
    }
}

fn lost() -> io::Error {
    io::Error::other("qmp socket write half lost its descriptor")
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.state.take() {
                None => return Poll::Ready(Err(lost())),
                Some(WriteState::Plain(stream)) => match (&stream).write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match register(stream, Interest::WRITABLE) {
                            Ok(fd) => this.state = Some(WriteState::Waiting(fd)),
                            // Kept, so the drop still shuts the write direction down.
                            Err((e, stream)) => {
                                this.state = Some(WriteState::Plain(stream));
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                    result => {
                        this.state = Some(WriteState::Plain(stream));
                        return Poll::Ready(result);
                    }
                },
                Some(WriteState::Waiting(fd)) => {
                    let step = match fd.poll_write_ready(cx) {
                        Poll::Pending => None,
                        Poll::Ready(Err(e)) => Some(Err(e)),
                        // Would block again: readiness cleared, wait for the next edge.
                        Poll::Ready(Ok(mut guard)) => {
                            match guard.try_io(|fd| fd.get_ref().write(buf)) {
                                Ok(result) => Some(result),
                                Err(_would_block) => {
                                    this.state = Some(WriteState::Waiting(fd));
                                    continue;
                                }
                            }
                        }
                    };
                    let Some(result) = step else {
                        this.state = Some(WriteState::Waiting(fd));
                        return Poll::Pending;
                    };
                    // Written (or failed): stop listening for writability, so the
                    // peer's reads no longer wake the runtime.
                    this.state = Some(WriteState::Plain(fd.into_inner()));
                    return Poll::Ready(result);
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(
            self.stream()
                .map_or(Ok(()), |s| s.shutdown(Shutdown::Write)),
        )
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        if let Some(stream) = self.stream() {
            // The peer may be gone already; nothing to report to anyone.
            drop(stream.shutdown(Shutdown::Write));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every test ends well inside this, or failed (a lost wake-up hangs, not fails).
    const BOUND: Duration = Duration::from_secs(10);

    async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
        tokio::time::timeout(BOUND, f)
            .await
            .unwrap_or_else(|_| panic!("{what} hung"))
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_peer_then_goes_back_to_plain() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, mut write) = split(ours).unwrap();
        let data = payload(8 << 20);
        let expected = data.clone();
        let reader = tokio::spawn(async move {
            // Let the writer fill the buffer and block first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        bounded("the blocked write", write.write_all(&data))
            .await
            .unwrap();
        assert!(
            matches!(write.state, Some(WriteState::Plain(_))),
            "still registered for writability after the write completed"
        );
        drop(write); // shuts the write direction: the peer sees the end
        let got = bounded("the peer's read", reader).await.unwrap();
        assert!(got == expected, "bytes lost or reordered");
    }

    #[tokio::test]
    async fn a_cancelled_blocked_write_resumes_and_blocks_again_without_losing_a_byte() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (_read, mut write) = split(ours).unwrap();
        let data = payload(4 << 20);
        // Nobody reads: the write blocks, and its caller gives up (a timeout).
        let mut sent = 0;
        let gave_up = tokio::time::timeout(Duration::from_millis(100), async {
            while sent < data.len() {
                sent += write.write(&data[sent..]).await.unwrap();
            }
        })
        .await;
        assert!(gave_up.is_err(), "4 MiB fit in the socket buffer");
        assert!(matches!(write.state, Some(WriteState::Waiting(_))));
        // The rest goes out once the peer reads, blocking (re-registering) again on
        // the way; the peer sees exactly the bytes whose writes returned, in order.
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        bounded("the resumed write", write.write_all(&data[sent..]))
            .await
            .unwrap();
        drop(write);
        let got = bounded("the peer's read", reader).await.unwrap();
        assert!(got == data, "bytes lost, doubled or reordered");
    }

    #[tokio::test]
    async fn the_peer_closing_while_a_write_is_blocked_fails_the_write() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (_read, mut write) = split(ours).unwrap();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(peer);
        });
        let result = bounded(
            "a write to a peer that closed",
            write.write_all(&payload(8 << 20)),
        )
        .await;
        closer.await.unwrap();
        let kind = result.unwrap_err().kind();
        assert!(
            matches!(
                kind,
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{kind:?}"
        );
    }

    #[tokio::test]
    async fn the_read_half_sees_every_byte_then_the_end() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (mut read, _write) = split(ours).unwrap();
        let writer = tokio::spawn(async move {
            for chunk in [&b"{\"return\": {}}\n"[..], b"{\"ret", b"urn\": 1}\n"] {
                peer.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut got = Vec::new();
        bounded("the read", read.read_to_end(&mut got))
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(got, b"{\"return\": {}}\n{\"return\": 1}\n");
    }

    #[tokio::test]
    async fn a_read_after_a_large_one_still_gets_everything() {
        // A reply larger than one read chunk, then a small one: the bounded chunk
        // must not lose or reorder anything.
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let (mut read, _write) = split(ours).unwrap();
        let mut data = payload(3 * READ_CHUNK + 17);
        data.extend_from_slice(b"tail\n");
        let sent = data.clone();
        let writer = tokio::spawn(async move { peer.write_all(&sent).await.unwrap() });
        let mut got = Vec::new();
        bounded("the read", read.read_to_end(&mut got))
            .await
            .unwrap();
        writer.await.unwrap();
        assert!(got == data);
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_fails_instead_of_hanging() {
        let (ours, peer) = UnixStream::pair().unwrap();
        let (_read, mut write) = split(ours).unwrap();
        drop(peer);
        let result = bounded("a write to a closed peer", write.write_all(b"x\n")).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
