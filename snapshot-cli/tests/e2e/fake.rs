//! A fake qemu-ga on a Unix socket, for guests the rig cannot boot (Windows) and for
//! agents that misbehave in ways a real one will not on demand.

use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How a fake agent misbehaves.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Fake {
    /// Never answers the freeze (a hung fsfreeze hook).
    HangOnFreeze,
    /// A Windows guest whose VSS thawed by itself: the thaw fails with its 10 s error.
    WindowsAutoThaw,
    /// A guest that stays frozen whatever the thaw says.
    StuckFrozen,
    /// Reports thawed until a freeze arrives; that freeze fails (a hook error after
    /// some filesystems froze), and the guest stays frozen whatever the thaw says.
    FreezeFailsAndSticks,
}

/// A fake qemu-ga on its own socket. Records whether a thaw arrived.
pub(crate) async fn fake_agent(path: std::path::PathBuf, fake: Fake, thawed: Arc<AtomicBool>) {
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).split(b'\n');
    let mut froze = false;
    while let Ok(Some(raw)) = lines.next_segment().await {
        let line: Vec<u8> = raw.into_iter().filter(|&b| b != 0xFF).collect();
        let Ok(req) = serde_json::from_slice::<serde_json::Value>(&line) else {
            continue;
        };
        let reply = match req["execute"].as_str().unwrap_or("") {
            "guest-sync-delimited" => {
                let mut bytes = vec![0xFF];
                bytes.extend(format!("{{\"return\": {}}}\n", req["arguments"]["id"]).bytes());
                write.write_all(&bytes).await.unwrap();
                continue;
            }
            "guest-info" => json!({"version": "fake", "supported_commands": [
                {"name": "guest-fsfreeze-freeze", "enabled": true, "success-response": true}]}),
            "guest-fsfreeze-status" if fake == Fake::StuckFrozen || froze => json!("frozen"),
            "guest-fsfreeze-status" => json!("thawed"),
            "guest-get-osinfo" if fake == Fake::WindowsAutoThaw => json!({"id": "mswindows"}),
            "guest-get-osinfo" => json!({"id": "fake"}),
            "guest-fsfreeze-freeze" if fake == Fake::HangOnFreeze => continue,
            "guest-fsfreeze-freeze" if fake == Fake::FreezeFailsAndSticks => {
                froze = true;
                let error = json!({"error": {"class": "GenericError",
                    "desc": "failed to freeze /data2: Device or resource busy"}});
                let mut out = serde_json::to_vec(&error).unwrap();
                out.push(b'\n');
                write.write_all(&out).await.unwrap();
                continue;
            }
            "guest-fsfreeze-freeze" => json!(1),
            "guest-fsfreeze-thaw" => {
                thawed.store(true, Ordering::SeqCst);
                if fake == Fake::WindowsAutoThaw {
                    let error = json!({"error": {"class": "GenericError",
                        "desc": "couldn't hold writes: fsfreeze is limited up to 10 seconds:  (error: 80042314)"}});
                    let mut out = serde_json::to_vec(&error).unwrap();
                    out.push(b'\n');
                    write.write_all(&out).await.unwrap();
                    continue;
                }
                json!(0)
            }
            _ => json!({}),
        };
        let mut out = serde_json::to_vec(&json!({ "return": reply })).unwrap();
        out.push(b'\n');
        write.write_all(&out).await.unwrap();
    }
}
