//! Raw-socket peers for the simulator's own tests: they speak the wire protocols by
//! hand, so the simulator is proven without the project's clients.

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A raw socket that reads `\n`-terminated lines.
pub(super) struct Raw {
    pub(super) stream: UnixStream,
    buf: Vec<u8>,
}

impl Raw {
    pub(super) async fn connect(path: &Path) -> Raw {
        Raw {
            stream: UnixStream::connect(path).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next line, `\n` included; panics on EOF.
    pub(super) async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return self.buf.drain(..=i).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "EOF; partial: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next line, or `None` when nothing complete arrives within `d`.
    pub(super) async fn line_within(&mut self, d: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(d, self.line()).await.ok()
    }

    /// The next line parsed as JSON (a leading 0xFF is skipped).
    pub(super) async fn json(&mut self) -> Value {
        let line = self.line().await;
        let start = usize::from(line.first() == Some(&0xFF));
        serde_json::from_slice(&line[start..]).unwrap()
    }

    /// True when the peer closed the connection within `d` (what it sent first is
    /// discarded).
    pub(super) async fn closed_within(&mut self, d: Duration) -> bool {
        let mut chunk = [0u8; 4096];
        let eof = async { while matches!(self.stream.read(&mut chunk).await, Ok(1..)) {} };
        tokio::time::timeout(d, eof).await.is_ok()
    }

    /// Sends a guest-agent request and returns the next reply.
    pub(super) async fn qga(&mut self, name: &str, args: Value) -> Value {
        self.send(&request(name, args)).await;
        self.json().await
    }
}

/// A guest-agent request line.
pub(super) fn request(name: &str, args: Value) -> Vec<u8> {
    let mut v = json!({"execute": name, "arguments": args})
        .to_string()
        .into_bytes();
    v.push(b'\n');
    v
}

/// A QMP client by hand: ids, events collected on the side.
pub(super) struct Qmp {
    pub(super) raw: Raw,
    pub(super) greeting: Value,
    pub(super) events: Vec<Value>,
    next_id: u64,
}

impl Qmp {
    /// Connects and reads the greeting, without negotiating.
    pub(super) async fn connect(path: &Path) -> Qmp {
        let mut raw = Raw::connect(path).await;
        let greeting = raw.json().await;
        Qmp {
            raw,
            greeting,
            events: Vec::new(),
            next_id: 0,
        }
    }

    /// Connects and negotiates capabilities.
    pub(super) async fn open(path: &Path) -> Qmp {
        let mut q = Qmp::connect(path).await;
        assert_eq!(
            q.cmd("qmp_capabilities", json!({})).await,
            json!({"return": {}, "id": 1})
        );
        q
    }

    /// Sends a command and returns its whole reply, events set aside.
    pub(super) async fn cmd(&mut self, name: &str, args: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let line = json!({"execute": name, "arguments": args, "id": id}).to_string() + "\r\n";
        self.raw.send(line.as_bytes()).await;
        loop {
            let msg = self.raw.json().await;
            if msg.get("event").is_some() {
                self.events.push(msg);
            } else {
                assert_eq!(msg["id"], json!(id), "reply out of order: {msg}");
                return msg;
            }
        }
    }

    /// The `return` of a command that must succeed.
    pub(super) async fn ok(&mut self, name: &str, args: Value) -> Value {
        let reply = self.cmd(name, args).await;
        assert!(reply.get("return").is_some(), "{name} failed: {reply}");
        reply["return"].clone()
    }

    /// The `desc` of a command that must fail.
    pub(super) async fn err(&mut self, name: &str, args: Value) -> String {
        let reply = self.cmd(name, args).await;
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} succeeded: {reply}"))
            .to_owned()
    }

    /// Waits for the event `name` (already received or coming) and returns its data.
    pub(super) async fn event(&mut self, name: &str) -> Value {
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i)["data"].clone();
            }
            let msg = self.raw.json().await;
            assert!(msg.get("event").is_some(), "unexpected reply: {msg}");
            self.events.push(msg);
        }
    }

    /// Waits for job `id` to conclude; returns its `query-jobs` entry.
    pub(super) async fn concluded(&mut self, id: &str) -> Value {
        loop {
            let jobs = self.ok("query-jobs", json!({})).await;
            let job = jobs
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["id"] == id)
                .cloned()
                .unwrap();
            if job["status"] == "concluded" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Runs a `blockdev-create` job to success and dismisses it.
    pub(super) async fn create(&mut self, id: &str, options: Value) {
        self.ok("blockdev-create", json!({"job-id": id, "options": options}))
            .await;
        let job = self.concluded(id).await;
        assert!(job.get("error").is_none(), "{job}");
        self.ok("job-dismiss", json!({"id": id})).await;
    }

    /// The rig's pre-create sequence: an overlay node `name` over disk `i`'s image,
    /// added with `backing: null`.
    pub(super) async fn overlay(&mut self, dir: &Path, i: usize, name: &str) {
        let path = dir.join(format!("{name}.qcow2"));
        std::fs::File::create_new(&path).unwrap();
        let filename = path.to_str().unwrap();
        let file = format!("{name}-file");
        self.create(
            &format!("{name}-c1"),
            json!({"driver": "file", "filename": filename, "size": 0}),
        )
        .await;
        self.ok(
            "blockdev-add",
            json!({"driver": "file", "node-name": file, "filename": filename}),
        )
        .await;
        let backing = dir.join(format!("disk{i}.qcow2"));
        let options = json!({"driver": "qcow2", "file": file, "size": 64u64 << 20,
            "backing-file": backing, "backing-fmt": "qcow2", "cluster-size": 65536});
        self.create(&format!("{name}-c2"), options).await;
        self.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": name, "file": file, "backing": null}),
        )
        .await;
    }

    /// `transaction` of one `blockdev-snapshot` per `(node, overlay)`.
    pub(super) async fn snapshot(&mut self, pairs: &[(&str, &str)]) -> Value {
        let actions: Vec<Value> = pairs
            .iter()
            .map(|(node, overlay)| json!({"type": "blockdev-snapshot", "data": {"node": node, "overlay": overlay}}))
            .collect();
        self.cmd("transaction", json!({"actions": actions})).await
    }

    /// A real qcow2 image `dir/{name}.qcow2` of `size` bytes, added as node `name`
    /// (over `{name}-file`) and attached to nothing: a backup target.
    pub(super) async fn target(&mut self, dir: &Path, name: &str, size: u64) -> String {
        let path = dir.join(format!("{name}.qcow2"));
        let filename = path.to_str().unwrap().to_owned();
        let file = format!("{name}-file");
        self.create(
            &format!("{name}-c1"),
            json!({"driver": "file", "filename": filename, "size": 0}),
        )
        .await;
        self.ok(
            "blockdev-add",
            json!({"driver": "file", "node-name": file, "filename": filename}),
        )
        .await;
        let options = json!({"driver": "qcow2", "file": file, "size": size});
        self.create(&format!("{name}-c2"), options).await;
        self.ok(
            "blockdev-add",
            json!({"driver": "qcow2", "node-name": name, "file": file}),
        )
        .await;
        filename
    }

    /// The statuses job `id` went through, from the events received so far.
    pub(super) fn statuses(&self, id: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "JOB_STATUS_CHANGE" && e["data"]["id"] == id)
            .map(|e| e["data"]["status"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The `dirty-bitmaps` of `node` in `query-named-block-nodes` (`Null` when absent).
    pub(super) async fn dirty(&mut self, node: &str) -> Value {
        let nodes = self
            .ok("query-named-block-nodes", json!({"flat": true}))
            .await;
        let n = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == node);
        n.unwrap()["dirty-bitmaps"].clone()
    }
}
