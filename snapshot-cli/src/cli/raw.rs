//! Escape hatches: raw QMP and guest-agent commands, and the QMP event stream.

use super::{Global, agent, interruptible, need, output};
use anyhow::{Context, Result, bail};
use qsnap::CancellationToken;
use serde_json::Value;

fn parse_args(args: Option<&str>) -> Result<Value> {
    let Some(text) = args else {
        return Ok(Value::Null);
    };
    let value: Value = serde_json::from_str(text)
        .with_context(|| format!("JSON-ARGS is not valid JSON: {text}"))?;
    if !value.is_object() {
        bail!("JSON-ARGS must be a JSON object, e.g. '{{\"flat\": true}}'");
    }
    Ok(value)
}

/// The VM's lock, keyed on every socket given.
fn lock(g: &Global) -> Result<qsnap::VmLock> {
    let sockets: Vec<&std::path::Path> = g
        .qmp
        .iter()
        .chain(g.qga.iter())
        .map(|p| p.as_path())
        .collect();
    Ok(qsnap::VmLock::acquire_all(&sockets)?)
}

/// Connects to QMP, with the error naming the socket.
pub(crate) async fn connect_qmp(g: &Global) -> Result<qmp::Client> {
    let path = need(&g.qmp, "--qmp")?;
    qmp::Client::connect(&path, qmp::Config::default())
        .await
        .with_context(|| format!("cannot talk to QEMU at {}", path.display()))
}

pub(crate) async fn qmp(
    g: &Global,
    command: &str,
    args: Option<&str>,
    cancel: &CancellationToken,
) -> Result<()> {
    let args = parse_args(args)?;
    // A raw command can change anything: it waits for no qsnap run, and none runs
    // meanwhile (a guardian's rescue included).
    let _lock = lock(g)?;
    interruptible(cancel, async {
        let client = connect_qmp(g).await?;
        let reply = client.execute_raw(command, args).await?;
        output::emit(true, &reply, |_| String::new());
        Ok(())
    })
    .await
}

pub(crate) async fn qga(
    g: &Global,
    command: &str,
    args: Option<&str>,
    cancel: &CancellationToken,
) -> Result<()> {
    let args = parse_args(args)?;
    let _lock = lock(g)?;
    let client = interruptible(cancel, agent::connect(g)).await?;
    let reply = tokio::select! {
        r = client.execute_raw(command, args) => Some(r),
        () = cancel.cancelled() => None,
    };
    let failure = match reply {
        Some(Ok(reply)) => {
            output::emit(true, &reply, |_| String::new());
            return Ok(());
        }
        // A raw freeze that failed or was interrupted must not leave the guest frozen
        // (a refusal while frozen is someone else's freeze: left alone).
        Some(Err(e)) if command.starts_with("guest-fsfreeze-freeze") && !e.is_disabled() => {
            qsnap::Error::QuiesceFailed {
                reason: format!("{command} did not succeed"),
                source: Some(e),
            }
        }
        Some(Err(e)) => return Err(e.into()),
        None if command.starts_with("guest-fsfreeze-freeze") => qsnap::Error::Interrupted,
        None => return Err(super::Interrupted.into()),
    };
    let qga = need(&g.qga, "--qga")?;
    agent::thaw_behind(client, &qga, failure).await
}

/// Prints events until Ctrl-C (exit 0) or until QEMU closes the connection.
pub(crate) async fn events(g: &Global, cancel: &CancellationToken) -> Result<()> {
    let client = connect_qmp(g).await?;
    let mut events = client.events();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            event = events.recv() => match event {
                Ok(e) => {
                    if !output::line(&serde_json::to_string(&e)?) {
                        return Ok(());
                    }
                }
                Err(qmp::EventsError::Lagged(n)) => {
                    tracing::warn!("missed {n} events (printing too slowly)");
                }
                Err(_) => return Ok(()),
            },
        }
    }
}
