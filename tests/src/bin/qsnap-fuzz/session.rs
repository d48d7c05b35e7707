//! Target `qga-client`: `qga::Client::handshake` over `tokio::io::duplex` against the
//! hostile fake agent, with short deadlines, urgent writes behind everything, and the
//! oracle after each session.
//!
//! Checks: no panic anywhere (client task included); every call returns within its
//! deadline (sync deadline + command deadline) plus [`SLACK`]; no successful call
//! returns a value the agent sent before the sync that cleared the stream for it (see
//! `oracle`); the client's connection ends once every handle is dropped.

use crate::actor::Actor;
use crate::agent::{self, Inbound, Record, Shared};
use crate::driver::Driver;
use crate::harness::{Failure, Report, last_panic, panic_count};
use crate::mutate::Mutator;
use crate::oracle::verify;
use crate::rng::{Rng, iteration_seed};
use qga::Config;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::task::{JoinError, JoinHandle, JoinSet};

/// How late a call may return past its deadline: scheduling on a shared machine,
/// plus the agent not reading for up to [`agent::MAX_STALL`] (which can hold up an
/// urgent write the connection task is doing between requests).
pub(crate) const SLACK: Duration = Duration::from_millis(250);
/// Sessions run at once on the one-thread runtime (they mostly wait on timers).
const CONCURRENT: usize = 32;

/// What one session produced.
pub(crate) struct Outcome {
    pub(crate) bytes: u64,
    pub(crate) counts: Vec<(&'static str, u64)>,
    pub(crate) overshoot: Duration,
}

/// Runs sessions until `until` (or only session `only`).
pub(crate) fn fuzz(
    seed: u64,
    until: std::time::Instant,
    only: Option<u64>,
    report: &mut Report,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mutator = Arc::new(Mutator::new());
    runtime.block_on(async {
        let mut set = JoinSet::new();
        let mut ids = HashMap::new();
        let mut next = only.unwrap_or(0);
        let mut late = Duration::ZERO;
        loop {
            while set.len() < CONCURRENT
                && std::time::Instant::now() < until
                && only.is_none_or(|k| next == k)
            {
                let s = iteration_seed(seed, "qga-client", next);
                let handle = set.spawn(session(s, mutator.clone()));
                ids.insert(handle.id(), next);
                next += 1;
            }
            let Some(joined) = set.join_next_with_id().await else {
                break;
            };
            let id = joined.as_ref().map_or_else(JoinError::id, |(id, _)| *id);
            let iteration = ids.remove(&id).unwrap_or(u64::MAX);
            tally(report, iteration, joined.map(|(_, r)| r), &mut late);
        }
        report.note("max_late_ms", late.as_millis() as u64);
    });
    Ok(())
}

/// Adds one finished session to the report.
fn tally(
    report: &mut Report,
    iteration: u64,
    joined: Result<Result<Outcome, Failure>, JoinError>,
    late: &mut Duration,
) {
    report.iterations += 1;
    let failure = match joined {
        Ok(Ok(outcome)) => {
            report.bytes += outcome.bytes;
            *late = (*late).max(outcome.overshoot);
            for (name, n) in outcome.counts {
                report.note(name, n);
            }
            return;
        }
        Ok(Err(failure)) => failure,
        Err(e) => Failure {
            message: format!("session task failed: {e}"),
            input: String::new(),
        },
    };
    let message = failure.message.clone();
    report.fail(iteration, &message, Some(failure));
}

/// One client against one fake agent.
async fn session(seed: u64, mutator: Arc<Mutator>) -> Result<Outcome, Failure> {
    let panics = panic_count();
    let mut rng = Rng::new(seed);
    let config = config(&mut rng);
    let capacity = if rng.chance(50) {
        rng.range(64, 1024)
    } else {
        64 * 1024
    };
    let (client_io, agent_io) = tokio::io::duplex(capacity);
    let (agent, record) = spawn_agent(&mut rng, &config, agent_io, mutator);
    let mut driver = Driver::new(rng, config);
    let result = driver.drive(client_io).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        for task in agent {
            let _ = task.await;
        }
    })
    .await
    .is_ok();
    let record = record
        .lock()
        .map(|mut r| std::mem::replace(&mut *r, Record::new(0)))
        .unwrap_or_else(|_| Record::new(0));
    let checked = result
        .and_then(|()| match closed {
            true => Ok(()),
            false => Err(
                "connection left open: the client kept its end after every handle was dropped"
                    .into(),
            ),
        })
        .and_then(|()| verify(&driver.calls, &record))
        .and_then(|checked| match panic_count() - panics {
            0 => Ok(checked),
            n => Err(format!(
                "panic: {n} while this session ran (with {CONCURRENT} at once it may be \
                 another's; replay to be sure), the last: {}",
                last_panic()
            )),
        })
        .map_err(|message| Failure {
            message,
            input: driver.describe(&record),
        })?;
    let mut counts = vec![
        ("calls", driver.calls.len() as u64),
        ("ok_verified", checked),
    ];
    for call in &driver.calls {
        counts.push((
            call.outcome
                .as_ref()
                .map_or_else(|e| error_kind(e), |_| "ok"),
            1,
        ));
    }
    Ok(Outcome {
        bytes: record.bytes,
        counts,
        overshoot: driver.overshoot,
    })
}

/// Starts the fake agent's reader and actor on `io`.
fn spawn_agent(
    rng: &mut Rng,
    config: &Config,
    io: DuplexStream,
    mutator: Arc<Mutator>,
) -> ([JoinHandle<()>; 2], Shared) {
    let record: Shared = Arc::new(Mutex::new(Record::new(config.max_frame)));
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Inbound>();
    // Half a request an earlier client left in the agent's parser.
    let leftover = match rng.chance(20) {
        true => b"{\"execute\": \"guest-fsfreeze-fr".to_vec(),
        false => Vec::new(),
    };
    let reader = tokio::spawn(agent::read_loop(
        rd,
        tx,
        record.clone(),
        rng.fork(),
        leftover,
    ));
    let actor = Actor {
        rng: rng.fork(),
        mutator,
        record: record.clone(),
        max_frame: config.max_frame,
        next_token: rng.next_u64() >> 2,
    };
    ([reader, tokio::spawn(actor.run(wr, rx))], record)
}

fn config(rng: &mut Rng) -> Config {
    let sync = Duration::from_millis(rng.range(20, 51) as u64);
    let mut config = Config::default()
        .sync_timeout(sync)
        .command_timeout(Duration::from_millis(rng.range(20, 51) as u64))
        .max_frame(rng.range(256, 8193));
    config.sync_retry = Duration::from_millis(rng.range(5, sync.as_millis() as usize + 1) as u64);
    config
}

fn error_kind(text: &str) -> &'static str {
    [
        "Timeout",
        "SyncTimeout",
        "Malformed",
        "Decode",
        "FrameTooLong",
        "Disconnected",
        "Command",
        "Disabled",
        "NotFound",
    ]
    .into_iter()
    .rev()
    .find(|k| text.starts_with(k))
    .unwrap_or("other_error")
}
