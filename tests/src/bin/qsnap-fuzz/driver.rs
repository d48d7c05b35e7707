//! The client side of a `qga-client` session: the calls, their deadlines, and what
//! each returned (for the oracle).

use crate::agent::Record;
use crate::oracle::{Call, Matcher};
use crate::rng::Rng;
use crate::session::SLACK;
use qga::commands::{
    FsfreezeStatus, GuestAgentInfo, GuestFsfreezeFreezeList, GuestFsfreezeStatus,
    GuestFsfreezeThaw, GuestSync,
};
use qga::{Client, Config};
use qmp::wire::Empty;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

type Fut<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Matcher, String>> + Send + 'a>>;

/// Makes the calls of one session and remembers how each ended.
pub(crate) struct Driver {
    rng: Rng,
    config: Config,
    pub(crate) calls: Vec<Call>,
    /// The most any call returned past its deadline.
    pub(crate) overshoot: Duration,
    marker: u64,
}

impl Driver {
    pub(crate) fn new(rng: Rng, config: Config) -> Self {
        Self {
            rng,
            config,
            calls: Vec::new(),
            overshoot: Duration::ZERO,
            marker: 1000,
        }
    }

    /// Handshake, then 2..10 calls with urgent thaws written behind them.
    ///
    /// # Errors
    /// A call that broke its deadline or never returned.
    pub(crate) async fn drive(&mut self, io: tokio::io::DuplexStream) -> Result<(), String> {
        let bound = self.config.sync_timeout + SLACK;
        let started = Instant::now();
        let client = tokio::time::timeout(
            bound + Duration::from_secs(2),
            Client::handshake(io, self.config.clone()),
        )
        .await
        .map_err(|_| "hung call: the handshake did not return".to_owned())?;
        self.timed("handshake", started.elapsed(), self.config.sync_timeout)?;
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                self.calls.push(Call {
                    what: "handshake".into(),
                    marker: None,
                    outcome: Err(format!("{e:?}")),
                    log: format!("handshake -> {e}"),
                });
                return Ok(());
            }
        };
        let urgent = tokio::spawn(urgent_writes(client.clone(), self.rng.fork()));
        for _ in 0..self.rng.range(2, 10) {
            self.call(&client).await?;
        }
        drop(client);
        urgent.await.map_err(|e| format!("urgent task: {e}"))
    }

    fn timed(&mut self, what: &str, took: Duration, deadline: Duration) -> Result<(), String> {
        let late = took.saturating_sub(deadline);
        self.overshoot = self.overshoot.max(late);
        if late > SLACK {
            return Err(format!(
                "late return: {what} returned after {took:?}; its deadline was {deadline:?} (+{SLACK:?} slack)"
            ));
        }
        Ok(())
    }

    async fn call(&mut self, client: &Client) -> Result<(), String> {
        self.marker += 1;
        let m = self.marker;
        let (name, marker, deadline, fut) = self.pick(client, m);
        let what = format!("{name} #{m}");
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            self.config.sync_timeout + deadline + SLACK + Duration::from_secs(2),
            fut,
        )
        .await
        .map_err(|_| format!("hung call: {what} never returned"))?;
        let took = started.elapsed();
        let log = format!(
            "{what} (deadline {deadline:?}) -> {} after {took:?}",
            outcome
                .as_ref()
                .map_or_else(|e| e.clone(), |m| format!("Ok({})", m.shown))
        );
        self.calls.push(Call {
            what: what.clone(),
            marker,
            outcome,
            log,
        });
        self.timed(&what, took, self.config.sync_timeout + deadline)
    }

    /// One of the calls, with its marker (if its request carries one) and deadline.
    fn pick<'a>(
        &mut self,
        client: &'a Client,
        m: u64,
    ) -> (&'static str, Option<u64>, Duration, Fut<'a>) {
        let d = Duration::from_millis(self.rng.range(10, 60) as u64);
        match self.rng.below(7) {
            0 => (
                "guest-fuzz-echo",
                Some(m),
                d,
                Box::pin(raw::<Value>(client, "guest-fuzz-echo", m, d)),
            ),
            1 => {
                let call = raw::<FsfreezeStatus>(client, "guest-fsfreeze-status", m, d);
                ("guest-fsfreeze-status", Some(m), d, Box::pin(call))
            }
            2 => (
                "guest-info",
                Some(m),
                d,
                Box::pin(raw::<GuestAgentInfo>(client, "guest-info", m, d)),
            ),
            3 => (
                "guest-ping",
                Some(m),
                d,
                Box::pin(raw::<Empty>(client, "guest-ping", m, d)),
            ),
            4 => (
                "guest-sync",
                Some(m),
                d,
                Box::pin(typed(client, GuestSync { id: m as i64 }, d)),
            ),
            5 => {
                let cmd = GuestFsfreezeFreezeList {
                    mountpoints: Some(vec![format!("/fuzz/{m}")]),
                };
                (
                    "guest-fsfreeze-freeze-list",
                    Some(m),
                    d,
                    Box::pin(typed(client, cmd, d)),
                )
            }
            _ => {
                // The default deadline, and no marker: checked for time and panics only.
                let call = async { matched(client.execute(&GuestFsfreezeStatus).await) };
                (
                    "guest-fsfreeze-status (typed, unmarked)",
                    None,
                    self.config.command_timeout,
                    Box::pin(call),
                )
            }
        }
    }

    /// The session's configuration, calls and the agent's transcript.
    pub(crate) fn describe(&self, record: &Record) -> String {
        let c = &self.config;
        let mut out = format!(
            "config: sync_timeout {:?}, sync_retry {:?}, command_timeout {:?}, max_frame {}\ncalls:\n",
            c.sync_timeout, c.sync_retry, c.command_timeout, c.max_frame
        );
        for call in &self.calls {
            out.push_str(&format!("  {}\n", call.log));
        }
        out.push_str("agent transcript (first entries):\n");
        for line in &record.transcript {
            out.push_str(&format!("  {line}\n"));
        }
        out
    }
}

/// `execute_raw` with a marker, decoded as `T` the way the typed API does.
async fn raw<T>(client: &Client, name: &str, m: u64, deadline: Duration) -> Result<Matcher, String>
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug + Send + 'static,
{
    let value = client
        .execute_raw_with_timeout(name, json!({ "fuzz": m }), deadline)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let out: T = serde_json::from_value(value).map_err(|e| format!("Decode: {e}"))?;
    Ok(matcher(out))
}

async fn typed<C>(client: &Client, cmd: C, deadline: Duration) -> Result<Matcher, String>
where
    C: qmp::wire::Command,
    C::Output: PartialEq + std::fmt::Debug + Send + 'static,
{
    matched(client.execute_with_timeout(&cmd, deadline).await)
}

fn matched<T>(result: qga::Result<T>) -> Result<Matcher, String>
where
    T: DeserializeOwned + PartialEq + std::fmt::Debug + Send + 'static,
{
    result.map(matcher).map_err(|e| format!("{e:?}"))
}

fn matcher<T: DeserializeOwned + PartialEq + std::fmt::Debug + Send + 'static>(out: T) -> Matcher {
    let shown = format!("{out:?}");
    let check = Box::new(move |v: &Value| {
        serde_json::from_value::<T>(v.clone()).ok().as_ref() == Some(&out)
    });
    Matcher { check, shown }
}

/// Urgent thaws at random moments, behind whatever is in flight.
async fn urgent_writes(client: Client, mut rng: Rng) {
    for _ in 0..rng.below(4) {
        tokio::time::sleep(Duration::from_millis(rng.below(60) as u64)).await;
        if client.execute_urgent(&GuestFsfreezeThaw).is_err() {
            return;
        }
    }
}
