//! The QMP client against an in-process fake QEMU over `tokio::io::duplex`.
//!
//! Each test is a transcript: the fake reads what the client writes and answers as a
//! misbehaving or well-behaved QEMU would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use qmp::commands::{QueryStatus, Stop};
use qmp::{Client, Config, Disconnect, Error, ErrorClass, EventsError};
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "fake"}, "capabilities": ["oob"]}}"#;

/// No test may hang: everything runs under this deadline.
/// For paused-clock tests: virtual time jumps ahead whenever the runtime idles, so a
/// test that hangs with no timer pending would hang for ever; this one times out.
async fn paused<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("test hung (a virtual hour passed)")
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("test timed out")
}

/// The QEMU side of the socket.
struct Peer {
    io: BufReader<DuplexStream>,
}

impl Peer {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    async fn send_line(&mut self, value: Value) {
        let mut line = serde_json::to_vec(&value).unwrap();
        line.extend_from_slice(b"\r\n");
        self.send(&line).await;
    }

    /// Reads one command; returns (name, id).
    async fn command(&mut self) -> (String, Value) {
        let mut line = String::new();
        self.io.read_line(&mut line).await.unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        (v["execute"].as_str().unwrap().to_owned(), v["id"].clone())
    }

    async fn reply(&mut self, id: &Value, value: Value) {
        self.send_line(json!({"return": value, "id": id})).await;
    }

    /// Answers `qmp_capabilities`.
    async fn accept_capabilities(&mut self) {
        let (name, id) = self.command().await;
        assert_eq!(name, "qmp_capabilities");
        self.reply(&id, json!({})).await;
    }
}

fn pair(config: Config) -> (Peer, impl Future<Output = qmp::Result<Client>>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let peer = Peer {
        io: BufReader::new(b),
    };
    (peer, Client::handshake(a, config))
}

/// A client connected to a fake that has greeted and accepted capabilities.
async fn connected(config: Config) -> (Peer, Client) {
    let (mut peer, client) = pair(config);
    let peer_side = async {
        peer.send(GREETING).await;
        peer.send(b"\r\n").await;
        peer.accept_capabilities().await;
    };
    let (client, ()) = tokio::join!(client, peer_side);
    (peer, client.unwrap())
}

#[tokio::test]
async fn greeting_split_across_reads_is_assembled() {
    within(async {
        let (mut peer, client) = pair(Config::default());
        let peer_side = async {
            for chunk in GREETING.chunks(7) {
                peer.send(chunk).await;
                tokio::task::yield_now().await;
            }
            peer.send(b"\r\n").await;
            peer.accept_capabilities().await;
        };
        let (client, ()) = tokio::join!(client, peer_side);
        let client = client.unwrap();
        assert_eq!(client.greeting().version.qemu.to_string(), "10.0.2");
        assert_eq!(client.greeting().capabilities, ["oob"]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn silent_peer_gives_greeting_timeout() {
    paused(async {
        let (_peer, client) = pair(Config::default().greeting_timeout(Duration::from_secs(2)));
        let err = client.await.unwrap_err();
        assert!(matches!(err, Error::GreetingTimeout { .. }), "{err:?}");
        assert!(err.to_string().contains("another client"));
    })
    .await;
}

#[tokio::test]
async fn first_message_not_a_greeting_is_a_protocol_error() {
    within(async {
        let (mut peer, client) = pair(Config::default());
        peer.send(b"{\"return\": {}}\n").await;
        let err = client.await.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    })
    .await;
}

#[tokio::test]
async fn events_before_and_after_a_reply_are_all_delivered() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let mut events = client.events();
        let peer_side = async {
            let (name, id) = peer.command().await;
            assert_eq!(name, "stop");
            peer.send_line(
                json!({"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}),
            )
            .await;
            peer.reply(&id, json!({})).await;
            peer.send_line(json!({"event": "X", "data": {"n": 1}}))
                .await;
        };
        let (reply, ()) = tokio::join!(client.execute(&Stop), peer_side);
        reply.unwrap();
        let first = events.recv().await.unwrap();
        assert_eq!(
            (first.event.as_str(), first.timestamp.microseconds),
            ("STOP", 2)
        );
        let second = events.recv().await.unwrap();
        assert_eq!(
            (second.event.as_str(), &second.data),
            ("X", &json!({"n": 1}))
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_commands_answered_out_of_order_get_their_own_replies() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let peer_side = async {
            let (_, id1) = peer.command().await;
            let (_, id2) = peer.command().await;
            assert_ne!(id1, id2);
            peer.reply(&id2, json!("second")).await;
            peer.reply(&id1, json!("first")).await;
        };
        let (a, b, ()) = tokio::join!(
            client.execute_raw("a", Value::Null),
            client.execute_raw("b", Value::Null),
            peer_side
        );
        assert_eq!(a.unwrap(), json!("first"));
        assert_eq!(b.unwrap(), json!("second"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn execute_timeout_then_late_reply_is_dropped() {
    paused(async {
        let (mut peer, client) = connected(Config::default()).await;
        let err = client
            .execute_raw_with_timeout("slow", Value::Null, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(err.to_string().contains("may still carry it out"));
        let (_, late_id) = peer.command().await;
        peer.reply(&late_id, json!("late")).await;
        let peer_side = async {
            let (_, id) = peer.command().await;
            assert_ne!(id, late_id);
            peer.reply(&id, json!({"status": "running", "running": true}))
                .await;
        };
        let (status, ()) = tokio::join!(client.execute(&QueryStatus), peer_side);
        assert_eq!(status.unwrap().status, "running");
        assert!(client.closed().is_none());
    })
    .await;
}

#[tokio::test]
async fn error_reply_is_mapped_to_its_class() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let peer_side = async {
            let (_, id) = peer.command().await;
            peer.send_line(
                json!({"error": {"class": "DeviceNotFound", "desc": "no vblk9"}, "id": id}),
            )
            .await;
        };
        let (reply, ()) = tokio::join!(client.execute_raw("query-x", json!({"a": 1})), peer_side);
        let err = reply.unwrap_err();
        let qmp = err.qmp_error().expect("a QEMU error");
        assert_eq!(qmp.class, ErrorClass::DeviceNotFound);
        assert_eq!(qmp.desc, "no vblk9");
    })
    .await;
}

#[tokio::test]
async fn reply_of_the_wrong_type_is_a_decode_error() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let peer_side = async {
            let (_, id) = peer.command().await;
            peer.reply(&id, json!([1, 2])).await;
        };
        let (reply, ()) = tokio::join!(client.execute(&QueryStatus), peer_side);
        assert!(matches!(reply.unwrap_err(), Error::Decode { .. }));
    })
    .await;
}

#[tokio::test]
async fn peer_closing_mid_frame_fails_pending_and_later_calls_with_the_cause() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let peer_side = async {
            peer.command().await;
            peer.command().await;
            peer.send(b"{\"ret").await;
            drop(peer);
        };
        let (a, b, ()) = tokio::join!(
            client.execute_raw("a", Value::Null),
            client.execute_raw("b", Value::Null),
            peer_side
        );
        for result in [a, b] {
            let err = result.unwrap_err();
            assert!(
                matches!(err, Error::Disconnected(Disconnect::Truncated { len: 5 })),
                "{err:?}"
            );
        }
        let later = client.execute(&QueryStatus).await.unwrap_err();
        assert!(later.is_disconnected());
        assert!(matches!(
            client.closed(),
            Some(Disconnect::Truncated { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn reply_over_the_limit_closes_with_a_clear_error() {
    within(async {
        let (mut peer, client) = connected(Config::default().max_frame(1024)).await;
        let peer_side = async {
            let (_, id) = peer.command().await;
            let big = serde_json::to_vec(&json!({"return": "x".repeat(1 << 20), "id": id}));
            // The client hangs up once the limit is passed, so this write may fail.
            let _ = peer.io.get_mut().write_all(&big.unwrap()).await;
        };
        let (reply, ()) = tokio::join!(client.execute_raw("big", Value::Null), peer_side);
        let err = reply.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Disconnected(Disconnect::FrameTooLong { limit: 1024 })
            ),
            "{err:?}"
        );
        let chain = format!("{}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("1024-byte limit"), "{chain}");
    })
    .await;
}

#[tokio::test]
async fn slow_event_consumer_is_told_how_many_it_missed() {
    within(async {
        let (mut peer, client) = connected(Config::default().event_capacity(2)).await;
        let mut events = client.events();
        let peer_side = async {
            for n in 0..5 {
                peer.send_line(json!({"event": "E", "data": {"n": n}}))
                    .await;
            }
            let (_, id) = peer.command().await;
            peer.reply(&id, json!({})).await;
        };
        // The reply proves the reader passed all five events without waiting for us.
        let (reply, ()) = tokio::join!(client.execute_raw("sync", Value::Null), peer_side);
        reply.unwrap();
        assert_eq!(events.recv().await.unwrap_err(), EventsError::Lagged(3));
        assert_eq!(events.recv().await.unwrap().data, json!({"n": 3}));
        assert_eq!(events.recv().await.unwrap().data, json!({"n": 4}));
    })
    .await;
}

#[tokio::test]
async fn unparseable_line_and_unknown_id_are_ignored() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let peer_side = async {
            let (_, id) = peer.command().await;
            peer.send(b"\xff\xfenot json\n").await;
            peer.send_line(json!({"return": 1, "id": 999_999})).await;
            peer.send_line(json!({"return": 2})).await;
            peer.reply(&id, json!(3)).await;
        };
        let (reply, ()) = tokio::join!(client.execute_raw("x", Value::Null), peer_side);
        assert_eq!(reply.unwrap(), json!(3));
        assert!(client.closed().is_none());
    })
    .await;
}

/// QEMU exits (e.g. the guest powered off) right after an event.
#[tokio::test]
async fn event_stream_ends_after_the_buffered_events_when_the_peer_closes() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        let mut events = client.events();
        peer.send_line(json!({"event": "SHUTDOWN", "data": {"guest": true}}))
            .await;
        drop(peer);
        assert_eq!(events.recv().await.unwrap().event, "SHUTDOWN");
        assert_eq!(events.recv().await.unwrap_err(), EventsError::Closed);
        // A subscription made after the end ends at once.
        assert_eq!(
            client.events().recv().await.unwrap_err(),
            EventsError::Closed
        );
    })
    .await;
}

#[tokio::test]
async fn dropping_every_handle_closes_the_socket() {
    within(async {
        let (mut peer, client) = connected(Config::default()).await;
        drop(client);
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut peer.io, &mut rest)
            .await
            .unwrap();
        assert!(rest.is_empty());
    })
    .await;
}
