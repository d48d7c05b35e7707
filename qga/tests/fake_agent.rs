//! The guest-agent client against an in-process fake qemu-ga over `tokio::io::duplex`.
//!
//! The fake parses what the client writes the way qemu-ga does: a `0xFF` byte drops
//! any partial input; each line is one request. Each test's doc line says what failure
//! of a real (or hostile) guest it simulates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use qga::commands::*;
use qga::{Client, Config, Error};
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// What the fake read from the client.
#[derive(Debug, PartialEq)]
enum Inbound {
    Sentinel,
    Request(Value),
    Garbage(Vec<u8>),
}

struct FakeAgent {
    io: DuplexStream,
    /// qemu-ga's parser state: a partial request.
    partial: Vec<u8>,
    inbox: std::collections::VecDeque<Inbound>,
}

impl FakeAgent {
    async fn next(&mut self) -> Inbound {
        loop {
            if let Some(item) = self.inbox.pop_front() {
                return item;
            }
            let mut buf = [0u8; 4096];
            let n = self.io.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed the connection");
            for &b in &buf[..n] {
                match b {
                    0xFF => {
                        self.partial.clear();
                        self.inbox.push_back(Inbound::Sentinel);
                    }
                    b'\n' => {
                        let line = std::mem::take(&mut self.partial);
                        self.inbox.push_back(match serde_json::from_slice(&line) {
                            Ok(v) => Inbound::Request(v),
                            Err(_) => Inbound::Garbage(line),
                        });
                    }
                    b => self.partial.push(b),
                }
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn reply(&mut self, value: Value) {
        let mut line = serde_json::to_vec(&json!({ "return": value })).unwrap();
        line.push(b'\n');
        self.send(&line).await;
    }

    /// Expects a request (skipping nothing); returns its name and arguments.
    async fn request(&mut self) -> (String, Value) {
        match self.next().await {
            Inbound::Request(v) => (
                v["execute"].as_str().unwrap().into(),
                v["arguments"].clone(),
            ),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    /// Expects a resync: 0xFF then guest-sync-delimited. Returns its id.
    async fn sync_request(&mut self) -> u64 {
        assert_eq!(
            self.next().await,
            Inbound::Sentinel,
            "resync must start with 0xFF"
        );
        let (name, args) = self.request().await;
        assert_eq!(name, "guest-sync-delimited");
        args["id"].as_u64().unwrap()
    }

    /// Writes a sync reply exactly as qemu-ga does: the 0xFF byte, then the line.
    async fn send_sync_reply(&mut self, id: u64) {
        let mut bytes = vec![0xFF];
        bytes.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
        self.send(&bytes).await;
    }

    /// Answers a resync the way qemu-ga does, after a parse error for the 0xFF.
    async fn answer_sync(&mut self) {
        let id = self.sync_request().await;
        self.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n")
            .await;
        self.send_sync_reply(id).await;
    }

    /// Expects the command `name`; returns its arguments.
    async fn expect(&mut self, name: &str) -> Value {
        let (got, args) = self.request().await;
        assert_eq!(got, name);
        args
    }
}

fn pair(config: Config, leftover: &[u8]) -> (FakeAgent, impl Future<Output = qga::Result<Client>>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let fake = FakeAgent {
        io: b,
        partial: leftover.to_vec(),
        inbox: Default::default(),
    };
    (fake, Client::handshake(a, config))
}

/// This process's peak resident set size (`VmHWM`), in KiB.
fn peak_rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// For paused-clock tests: virtual time jumps ahead whenever the runtime idles, so a
/// test that hangs with no timer pending would hang for ever; this one times out.
async fn paused<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("test hung (a virtual hour passed)")
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

/// A client that completed its opening sync with a well-behaved fake.
async fn synced(config: Config) -> (FakeAgent, Client) {
    let (mut fake, client) = pair(config, b"");
    let (client, ()) = tokio::join!(client, fake.answer_sync());
    (fake, client.unwrap())
}

/// A previous client's unread replies and a stale sync reply wait in the socket.
#[tokio::test]
async fn stale_replies_queued_before_the_sync_are_skipped() {
    within(async {
        let (mut fake, client) = pair(Config::default(), b"");
        fake.send(b"{\"return\": {}}\n{\"return\": 5}\n\xff{\"return\": 12345}\n\x80\x81junk")
            .await;
        let (client, ()) = tokio::join!(client, fake.answer_sync());
        let client = client.unwrap();
        let (reply, ()) = tokio::join!(client.execute(&GuestFsfreezeThaw), async {
            fake.expect("guest-fsfreeze-thaw").await;
            fake.reply(json!(2)).await;
        });
        assert_eq!(reply.unwrap(), 2);
    })
    .await;
}

/// A previous client left half a request in qemu-ga's parser.
#[tokio::test]
async fn partial_request_left_by_a_previous_client_does_not_break_the_opening() {
    within(async {
        let (mut fake, client) = pair(Config::default(), b"{\"execute\": \"guest-fsfreeze-fr");
        let (client, ()) = tokio::join!(client, fake.answer_sync());
        client.unwrap();
    })
    .await;
}

/// The agent starts after the client connected: the first sync attempts go unanswered.
#[tokio::test(start_paused = true)]
async fn sync_retries_with_new_ids_until_a_late_agent_answers() {
    paused(async {
        let (mut fake, client) = pair(Config::default().sync_timeout(Duration::from_secs(30)), b"");
        let late_agent = async {
            let first = fake.sync_request().await;
            let second = fake.sync_request().await;
            assert_ne!(first, second, "each attempt needs a new id");
            // Now the agent "starts" and answers the queued first one, then the current one.
            fake.send_sync_reply(first).await;
            fake.answer_sync().await;
        };
        let (client, ()) = tokio::join!(client, late_agent);
        client.unwrap();
    })
    .await;
}

/// No agent in the guest: nothing ever answers.
#[tokio::test(start_paused = true)]
async fn silent_agent_gives_a_sync_timeout_at_the_deadline() {
    paused(async {
        let (_fake, client) = pair(Config::default().sync_timeout(Duration::from_secs(3)), b"");
        let start = tokio::time::Instant::now();
        let err = client.await.unwrap_err();
        assert!(matches!(err, Error::SyncTimeout { .. }), "{err:?}");
        assert!(
            start.elapsed() <= Duration::from_millis(3100),
            "{:?}",
            start.elapsed()
        );
        assert!(err.to_string().contains("qemu-ga running"));
    })
    .await;
}

/// The agent answers the sync but hangs on freeze (a stuck fsfreeze hook).
#[tokio::test(start_paused = true)]
async fn hung_freeze_times_out_within_the_deadline_and_the_next_call_resyncs() {
    paused(async {
        let (mut fake, client) = synced(Config::default()).await;
        let start = tokio::time::Instant::now();
        let (reply, ()) = tokio::join!(
            client.execute_with_timeout(&GuestFsfreezeFreeze, Duration::from_secs(2)),
            async {
                fake.expect("guest-fsfreeze-freeze").await;
            }
        );
        let err = reply.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(err.to_string().contains("may still complete in the guest"));
        assert!(start.elapsed() <= Duration::from_millis(2100));
        let (reply, ()) = tokio::join!(client.execute(&GuestFsfreezeThaw), async {
            // The client must resync before its next command. Only then does the freeze
            // finally complete: its reply arrives first and is stale.
            let id = fake.sync_request().await;
            fake.reply(json!(2)).await;
            fake.send_sync_reply(id).await;
            fake.expect("guest-fsfreeze-thaw").await;
            fake.reply(json!(7)).await;
        });
        assert_eq!(
            reply.unwrap(),
            7,
            "the stale freeze reply must not be taken"
        );
    })
    .await;
}

/// The guest sends bytes that are not UTF-8 as its reply.
#[tokio::test]
async fn non_utf8_reply_is_malformed_and_the_next_call_resyncs() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            fake.send(b"{\"return\": \"\xc3\x28\"}\n").await;
        });
        assert!(matches!(reply, Err(Error::Malformed { .. })), "{reply:?}");
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.answer_sync().await;
            fake.expect("guest-ping").await;
            fake.reply(json!({})).await;
        });
        reply.unwrap();
    })
    .await;
}

/// The guest answers with a value of the wrong type.
#[tokio::test]
async fn return_of_the_wrong_type_is_a_decode_error() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(client.execute(&GuestFsfreezeStatus), async {
            fake.expect("guest-fsfreeze-status").await;
            fake.reply(json!("melting")).await;
        });
        assert!(matches!(reply, Err(Error::Decode { .. })), "{reply:?}");
        let (reply, ()) = tokio::join!(client.execute(&GuestFsfreezeFreeze), async {
            fake.expect("guest-fsfreeze-freeze").await;
            fake.reply(json!(-1)).await;
        });
        assert!(matches!(reply, Err(Error::Decode { .. })), "{reply:?}");
    })
    .await;
}

/// The guest starts a reply and never finishes it.
#[tokio::test(start_paused = true)]
async fn reply_that_never_ends_times_out() {
    paused(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(
            client.execute_with_timeout(&GuestPing, Duration::from_secs(1)),
            async {
                fake.expect("guest-ping").await;
                fake.send(b"{\"return\": {\"aaaa").await;
            }
        );
        assert!(reply.unwrap_err().is_timeout());
    })
    .await;
}

/// The guest streams a 100 MiB line with no newline.
#[tokio::test]
async fn hundred_mib_line_is_rejected_early_without_buffering_it() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        let chunk = vec![b'x'; 64 * 1024];
        let peak_before = peak_rss_kib();
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            for _ in 0..(100 * 1024 * 1024 / chunk.len()) {
                if fake.io.write_all(&chunk).await.is_err() {
                    break;
                }
                counter.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            fake.send(b"\n").await;
        });
        let err = reply.unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLong { limit, .. } if limit == 1024 * 1024),
            "{err:?}"
        );
        // The client kept reading (and discarding) all of it, and is still usable.
        assert_eq!(written.load(Ordering::Relaxed), 100 * 1024 * 1024);
        // Had it buffered the line, the peak resident size would have grown by 100 MiB.
        let grown = peak_rss_kib().saturating_sub(peak_before);
        assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB");
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.answer_sync().await;
            fake.expect("guest-ping").await;
            fake.reply(json!({})).await;
        });
        reply.unwrap();
    })
    .await;
}

/// The error arrives as soon as the limit is passed, long before the line ends.
#[tokio::test]
async fn over_long_reply_fails_as_soon_as_the_limit_is_passed() {
    within(async {
        let (mut fake, client) = synced(Config::default().max_frame(4096)).await;
        let written = Arc::new(AtomicUsize::new(0));
        let counter = written.clone();
        let feeder = async move {
            fake.expect("guest-ping").await;
            loop {
                if fake.io.write_all(&[b'y'; 1024]).await.is_err() {
                    break;
                }
                counter.fetch_add(1024, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        };
        let handle = tokio::spawn(feeder);
        let err = client.execute(&GuestPing).await.unwrap_err();
        let seen = written.load(Ordering::Relaxed);
        handle.abort();
        assert!(
            matches!(err, Error::FrameTooLong { limit: 4096, .. }),
            "{err:?}"
        );
        assert!(seen < 64 * 1024 + 8192, "error only after {seen} bytes");
    })
    .await;
}

/// Sync replies meant for another client (other ids) arrive around ours.
#[tokio::test]
async fn replies_meant_for_someone_else_are_discarded() {
    within(async {
        let (mut fake, client) = pair(Config::default(), b"");
        let client = tokio::spawn(client);
        let id = fake.sync_request().await;
        assert_ne!(id, 1);
        fake.send(b"\xff{\"return\": 1}\n{\"return\": {}}\n\xff{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}\n")
            .await;
        // None of that is the reply to our sync: the opening must still be waiting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!client.is_finished(), "the client took a stale reply for its sync");
        fake.send_sync_reply(id).await;
        let client = client.await.unwrap().unwrap();
        // In sync now: the next command goes out without another resync.
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            fake.reply(json!({})).await;
        });
        reply.unwrap();
    })
    .await;
}

/// Frozen guests disable most commands; unknown commands are "not found".
#[tokio::test]
async fn disabled_and_not_found_errors_are_told_apart() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (disabled, ()) = tokio::join!(client.execute(&GuestGetFsinfo), async {
            fake.expect("guest-get-fsinfo").await;
            fake.send(br#"{"error": {"class": "CommandNotFound", "desc": "Command guest-get-fsinfo has been disabled: the command is not allowed"}}
"#).await;
        });
        assert!(disabled.unwrap_err().is_disabled());
        let (missing, ()) = tokio::join!(client.execute_raw("guest-x", Value::Null), async {
            fake.expect("guest-x").await;
            fake.send(br#"{"error": {"class": "CommandNotFound", "desc": "The command guest-x has not been found"}}
"#).await;
        });
        assert!(matches!(missing, Err(Error::NotFound { .. })), "{missing:?}");
    })
    .await;
}

/// A hostile guest puts terminal escape sequences in its error text.
#[tokio::test]
async fn guest_error_text_is_escaped_for_display() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            fake.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"\\u001b]0;pwned\\u0007\\r\\nok\"}}\n")
                .await;
        });
        let err = reply.unwrap_err();
        let shown = err.agent_error().unwrap().to_string();
        assert!(!shown.contains('\x1b') && !shown.contains('\r'), "{shown:?}");
        assert!(shown.contains("pwned"));
    })
    .await;
}

/// A drop guard queues a thaw, then every handle goes away.
#[tokio::test]
async fn detached_command_runs_after_every_handle_is_dropped() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let rx = client.execute_detached(&GuestFsfreezeThaw).unwrap();
        drop(rx);
        drop(client);
        fake.expect("guest-fsfreeze-thaw").await;
        fake.reply(json!(2)).await;
    })
    .await;
}

/// The agent closes the socket in the middle of a reply.
#[tokio::test]
async fn agent_closing_mid_reply_is_a_disconnect_for_this_and_later_calls() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            fake.send(b"{\"ret").await;
            drop(fake);
        });
        let err = reply.unwrap_err();
        assert!(err.is_disconnected(), "{err:?}");
        assert!(
            client
                .execute(&GuestPing)
                .await
                .unwrap_err()
                .is_disconnected()
        );
    })
    .await;
}

/// A slow fsfreeze hook: the freeze does not answer, and the agent cannot answer a
/// resync either. The thaw must still be written at once, behind the freeze, without a
/// resync first — and the call after it must resync, because the freeze's reply, the
/// parse error for the `0xFF` and the thaw's reply are all still to come.
#[tokio::test]
async fn urgent_thaw_is_written_behind_a_freeze_that_has_not_answered() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let freezer = client.clone();
        let freeze = tokio::spawn(async move { freezer.execute(&GuestFsfreezeFreeze).await });
        fake.expect("guest-fsfreeze-freeze").await;
        // The hook is running: nothing is answered. The thaw goes out anyway.
        client.execute_urgent(&GuestFsfreezeThaw).unwrap();
        assert_eq!(fake.next().await, Inbound::Sentinel, "0xFF first");
        fake.expect("guest-fsfreeze-thaw").await;
        // The hook ends: the agent answers the freeze, the 0xFF, then the thaw.
        fake.reply(json!(2)).await;
        fake.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n")
            .await;
        fake.reply(json!(2)).await;
        assert_eq!(freeze.await.unwrap().unwrap(), 2, "the freeze got its own reply");
        // The next call must not take the thaw's `2` for its answer.
        let (reply, ()) = tokio::join!(client.execute(&GuestFsfreezeStatus), async {
            fake.answer_sync().await;
            fake.expect("guest-fsfreeze-status").await;
            fake.reply(json!("thawed")).await;
        });
        assert_eq!(reply.unwrap(), FsfreezeStatus::Thawed);
    })
    .await;
}

/// A thaw queued while a resync is unanswered (the hook blocks even the sync) is
/// written at once too, and the sync that then succeeds does not count as a clean
/// stream: the thaw's reply may still arrive after the sync's.
#[tokio::test]
async fn urgent_write_during_a_resync_keeps_the_stream_dirty() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        // A garbled reply forces a resync before the next command.
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            fake.send(b"not json\n").await;
        });
        assert!(matches!(reply, Err(Error::Malformed { .. })), "{reply:?}");
        let pinger = client.clone();
        let ping = tokio::spawn(async move { pinger.execute(&GuestPing).await });
        let id = fake.sync_request().await;
        client.execute_urgent(&GuestFsfreezeThaw).unwrap();
        assert_eq!(fake.next().await, Inbound::Sentinel);
        fake.expect("guest-fsfreeze-thaw").await;
        fake.send_sync_reply(id).await;
        // The ping is written only after a second, clean resync.
        fake.send(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error\"}}\n")
            .await;
        fake.reply(json!(0)).await;
        fake.answer_sync().await;
        fake.expect("guest-ping").await;
        fake.reply(json!({})).await;
        ping.await.unwrap().unwrap();
    })
    .await;
}

/// The guest names an unknown status: serde quotes the guest's bytes in its error,
/// and they must reach a terminal escaped.
#[tokio::test]
async fn decode_errors_escape_the_guests_bytes() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(client.execute(&GuestFsfreezeStatus), async {
            fake.expect("guest-fsfreeze-status").await;
            fake.reply(json!("\u{1b}]0;owned\u{7}\u{1b}[2J")).await;
        });
        let err = reply.unwrap_err();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text}"
        );
        assert!(text.contains("\\u{1b}]0;owned"), "{text}");
    })
    .await;
}

/// A busy agent delays the resync before a freeze; the caller gives up (its deadline)
/// and writes the thaw urgently. When the resync finally completes, the abandoned
/// freeze must not be written after its own thaw.
#[tokio::test]
async fn a_command_whose_caller_left_during_the_resync_is_never_written() {
    within(async {
        let (mut fake, client) = synced(Config::default()).await;
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.expect("guest-ping").await;
            fake.send(b"garbage\n").await;
        });
        assert!(reply.is_err(), "a garbled reply forces a resync");
        let freezer = client.clone();
        let freeze = tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(100),
                freezer.execute(&GuestFsfreezeFreeze),
            )
            .await
        });
        let id = fake.sync_request().await;
        assert!(freeze.await.unwrap().is_err(), "the caller gave up");
        client.execute_urgent(&GuestFsfreezeThaw).unwrap();
        assert_eq!(fake.next().await, Inbound::Sentinel);
        fake.expect("guest-fsfreeze-thaw").await;
        fake.send_sync_reply(id).await;
        // Next on the wire: the resync the urgent thaw requires, then the ping —
        // never the abandoned freeze.
        let (reply, ()) = tokio::join!(client.execute(&GuestPing), async {
            fake.answer_sync().await;
            fake.expect("guest-ping").await;
            fake.reply(json!({})).await;
        });
        reply.unwrap();
    })
    .await;
}
