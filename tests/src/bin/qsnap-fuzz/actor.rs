//! How the fake agent answers: from a seeded script that is mostly wrong. Sync
//! replies with the right id, a wrong id, no sentinel, twice, late or in pieces;
//! replies that are garbage, oversized (up to 8 MiB), not UTF-8, doubled, late or
//! missing; unsolicited noise in between; sometimes it hangs up.

use crate::agent::{Inbound, Shared, with};
use crate::harness::show_bytes;
use crate::mutate::{Mutator, random_bytes};
use crate::rng::Rng;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::mpsc;

const PARSE_ERROR: &[u8] =
    b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\ufffd'\"}}\n";

/// One thing the agent does.
enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    /// A line of `len` bytes of `fill`, ended by `end` (if any), written in pieces.
    Huge {
        len: usize,
        fill: u8,
        end: Option<u8>,
    },
    Close,
}

/// The agent's side: answers what the reader saw, and makes noise in between.
pub(crate) struct Actor {
    pub(crate) rng: Rng,
    pub(crate) mutator: Arc<Mutator>,
    pub(crate) record: Shared,
    pub(crate) max_frame: usize,
    pub(crate) next_token: u64,
}

impl Actor {
    pub(crate) async fn run(
        mut self,
        mut wr: WriteHalf<DuplexStream>,
        mut rx: mpsc::UnboundedReceiver<Inbound>,
    ) {
        if self.rng.chance(30) {
            // Replies an earlier client never read.
            let stale = self.mutator.transcript(&mut self.rng, 2048);
            if self
                .perform(&mut wr, vec![Step::Write(stale)])
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            let quiet = Duration::from_millis(self.rng.range(2, 40) as u64);
            let steps = tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => self.respond(item),
                    None => return,
                },
                () = tokio::time::sleep(quiet) => self.noise(),
            };
            if self.perform(&mut wr, steps).await.is_err() {
                return;
            }
        }
    }

    async fn perform(
        &mut self,
        wr: &mut WriteHalf<DuplexStream>,
        steps: Vec<Step>,
    ) -> std::io::Result<()> {
        for step in steps {
            match step {
                Step::Write(data) => self.write(wr, &data).await?,
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Huge { len, fill, end } => {
                    self.log(format!(
                        "agent writes a {len}-byte line of {fill:#04x}, then {end:?}"
                    ));
                    let block = vec![fill; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = wr.write(&block[..left.min(block.len())]).await?;
                        if n == 0 {
                            return Err(std::io::ErrorKind::WriteZero.into());
                        }
                        with(&self.record, |r| r.wrote(&block[..n]));
                        left -= n;
                    }
                    if let Some(end) = end {
                        self.write(wr, &[end]).await?;
                    }
                }
                Step::Close => {
                    self.log("agent hangs up".into());
                    wr.shutdown().await?;
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
        }
        Ok(())
    }

    /// Writes `data`, recording each piece as the client can read it: a write cut
    /// short by the client hanging up still delivered its first pieces.
    async fn write(
        &mut self,
        wr: &mut WriteHalf<DuplexStream>,
        data: &[u8],
    ) -> std::io::Result<()> {
        let shown = show_bytes(&data[..data.len().min(160)]);
        self.log(format!("agent writes {} bytes: {shown}", data.len()));
        let mut rest = data;
        while !rest.is_empty() {
            let n = wr.write(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            with(&self.record, |r| r.wrote(&rest[..n]));
            rest = &rest[n..];
        }
        Ok(())
    }

    fn log(&self, line: String) {
        with(&self.record, |r| r.log(line));
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn respond(&mut self, item: Inbound) -> Vec<Step> {
        match item {
            Inbound::Sentinel | Inbound::Garbage if self.rng.chance(70) => {
                vec![Step::Write(PARSE_ERROR.to_vec())]
            }
            Inbound::Sentinel | Inbound::Garbage => Vec::new(),
            Inbound::Request { name, args } if name == "guest-sync-delimited" => {
                self.sync_reply(args["id"].as_u64().unwrap_or(0))
            }
            Inbound::Request { name, .. } => self.command_reply(&name),
        }
    }

    fn sync_reply(&mut self, id: u64) -> Vec<Step> {
        let good = |id: u64| {
            let mut line = vec![0xFF];
            line.extend(format!("{{\"return\": {id}}}\n").into_bytes());
            line
        };
        match self.rng.below(20) {
            0..=10 => vec![Step::Write(good(id))],
            11 => vec![
                Step::Write(good(self.rng.next_u64() >> 1)),
                Step::Write(good(id)),
            ],
            12 => vec![Step::Write(good(id).split_off(1))],
            13 => vec![Step::Write(self.garbage()), Step::Write(good(id))],
            14 => vec![Step::Write(good(id)), Step::Write(good(id))],
            15 => vec![self.pause(60), Step::Write(good(id))],
            16 => self.in_pieces(good(id)),
            17 => {
                let mut line = good(id);
                self.mutator.havoc(&mut self.rng, &mut line);
                vec![Step::Write(line)]
            }
            18 => vec![Step::Write(good(id)), Step::Write(self.reply("guest-fuzz"))],
            _ => Vec::new(),
        }
    }

    fn command_reply(&mut self, name: &str) -> Vec<Step> {
        match self.rng.below(20) {
            0..=8 => vec![Step::Write(self.reply(name))],
            9 => vec![Step::Write(event()), Step::Write(self.reply(name))],
            10 => vec![Step::Write(self.mutator.line(&mut self.rng))],
            11 => vec![Step::Write(self.garbage())],
            12 => vec![self.huge()],
            13 => vec![Step::Write(b"{\"return\": \"\xc3\x28\xff\"}\n".to_vec())],
            14 => vec![self.pause(80), Step::Write(self.reply(name))],
            15 => vec![Step::Write(self.reply(name)), Step::Write(self.reply(name))],
            16 => vec![Step::Write(b"{\"return\": {\"versi".to_vec())],
            17 => {
                let reply = self.reply(name);
                self.in_pieces(reply)
            }
            _ => Vec::new(),
        }
    }

    /// Unsolicited output between requests.
    fn noise(&mut self) -> Vec<Step> {
        match self.rng.below(24) {
            0..=3 => vec![Step::Write(self.reply("guest-fuzz"))],
            4..=6 => vec![Step::Write(self.garbage())],
            7 => vec![self.huge()],
            8 => {
                let id = self.rng.next_u64() >> 1;
                vec![Step::Write(format!("{{\"return\": {id}}}\n").into_bytes())]
            }
            9 => vec![Step::Write(event())],
            10 if self.rng.chance(30) => vec![Step::Close],
            _ => Vec::new(),
        }
    }

    /// A well-formed reply for `name`, carrying a fresh token where the type allows.
    fn reply(&mut self, name: &str) -> Vec<u8> {
        let token = self.token();
        let value = match name {
            _ if self.rng.chance(8) => crate::mutate::random_value(&mut self.rng, 2),
            "guest-fsfreeze-status" if self.rng.chance(50) => json!("frozen"),
            "guest-fsfreeze-status" => json!("thawed"),
            "guest-ping" => json!({}),
            "guest-info" => json!({
                "version": format!("10.0.{token}"),
                "supported_commands": [
                    {"name": "guest-fsfreeze-thaw", "enabled": true, "success-response": true}
                ]
            }),
            _ => json!(token),
        };
        let mut line = serde_json::to_vec(&json!({ "return": value })).unwrap_or_default();
        line.push(b'\n');
        line
    }

    fn garbage(&mut self) -> Vec<u8> {
        match self.rng.below(3) {
            0 => self.mutator.mutated_line(&mut self.rng),
            1 => self.mutator.transcript(&mut self.rng, 4096),
            _ => {
                let mut v = random_bytes(&mut self.rng, 512);
                for _ in 0..self.rng.below(8) {
                    let at = self.rng.below(v.len() + 1);
                    v.insert(at, 0xFF);
                }
                v
            }
        }
    }

    fn huge(&mut self) -> Step {
        let len = match self.rng.below(10) {
            0..=4 => self.rng.range(self.max_frame + 1, 4 * self.max_frame + 2),
            5..=8 => self.rng.range(64 * 1024, 1024 * 1024),
            _ => self.rng.range(1024 * 1024, 8 * 1024 * 1024),
        };
        let fill = *self.rng.pick(b"x {\x80\"").unwrap_or(&b'x');
        let end = *self
            .rng
            .pick(&[Some(b'\n'), Some(0xFF), None])
            .unwrap_or(&None);
        Step::Huge { len, fill, end }
    }

    fn pause(&mut self, max_ms: usize) -> Step {
        Step::Sleep(Duration::from_millis(self.rng.range(5, max_ms) as u64))
    }

    /// `data` written in 2..=4 pieces with short pauses between.
    fn in_pieces(&mut self, data: Vec<u8>) -> Vec<Step> {
        let mut cuts: Vec<usize> = (0..self.rng.range(1, 4))
            .map(|_| self.rng.below(data.len()))
            .collect();
        cuts.sort_unstable();
        let mut steps = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([data.len()]) {
            if cut > start {
                steps.push(Step::Write(data[start..cut].to_vec()));
                steps.push(Step::Sleep(Duration::from_millis(self.rng.below(4) as u64)));
                start = cut;
            }
        }
        steps
    }
}

fn event() -> Vec<u8> {
    b"{\"event\": \"GUEST_PANICKED\", \"data\": {}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n".to_vec()
}
