//! The simulated qemu-ga process: one worker that takes requests off the shared byte
//! stream and serves them one at a time, hooks included. A restart bumps the epoch; a
//! worker of an older epoch touches nothing.

use super::agent::AgentShared;
use super::agent_commands::{self as commands, Step};
use super::agent_model::{Input, SimAgentEvent};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// qemu-ga itself: takes requests off the stream and serves them one at a time.
pub(super) async fn work(shared: Arc<AgentShared>, epoch: u64) {
    let mut paused = shared.paused.subscribe();
    loop {
        running(&mut paused).await;
        let input = {
            let mut st = shared.lock();
            if st.epoch != epoch {
                return;
            }
            st.stream.next()
        };
        match input {
            None => shared.data.notified().await,
            Some(Input::Reset) => {
                let stray = Err((
                    "GenericError",
                    "JSON parse error, stray '\u{FFFD}'".to_owned(),
                ));
                emit(&shared, epoch, "", commands::encode_plain(&stray));
            }
            Some(Input::Line(line, conn)) => serve(&shared, epoch, &mut paused, &line, conn).await,
        }
    }
}

async fn running(paused: &mut watch::Receiver<bool>) {
    let _ = paused.wait_for(|p| !*p).await;
}

/// Executes one request line, the hooks included, and writes its reply.
async fn serve(
    shared: &AgentShared,
    epoch: u64,
    paused: &mut watch::Receiver<bool>,
    line: &[u8],
    conn: u64,
) {
    let req = match commands::parse(line) {
        Ok(r) => r,
        Err(e) => return emit(shared, epoch, "", commands::encode_plain(&Err(e))),
    };
    let step = {
        let mut st = shared.lock();
        if st.epoch != epoch {
            return;
        }
        let event = SimAgentEvent::Command {
            name: req.name.clone(),
            connection: conn,
            at: Instant::now(),
        };
        st.log.push(event);
        commands::begin(&mut st, &req)
    };
    let result = match step {
        Step::Reply(r) => r,
        Step::Freeze(hook, targets) => {
            tokio::time::sleep(hook).await;
            running(paused).await;
            let mut st = shared.lock();
            if st.epoch != epoch {
                return;
            }
            st.finish_freeze(targets, Instant::now())
        }
        Step::Thaw => {
            let (result, hook) = {
                let mut st = shared.lock();
                if st.epoch != epoch {
                    return;
                }
                st.thaw(Instant::now())
            };
            if hook {
                let d = shared.lock().knobs.thaw_hook;
                tokio::time::sleep(d).await;
            }
            result
        }
    };
    running(paused).await;
    emit(
        shared,
        epoch,
        &req.name,
        commands::encode(&req.name, &result),
    );
}

/// Writes a reply unless this worker is stale or the reply is scripted to be lost.
fn emit(shared: &AgentShared, epoch: u64, name: &str, bytes: Vec<u8>) {
    let mut st = shared.lock();
    if st.epoch != epoch {
        return;
    }
    if let Some(i) = st.knobs.garbage.iter().position(|(c, _)| c == name) {
        let (_, garbage) = st.knobs.garbage.remove(i);
        st.output(garbage);
    }
    if let Some(i) = st.knobs.drop_reply.iter().position(|c| c == name) {
        st.knobs.drop_reply.remove(i);
        return;
    }
    st.output(bytes);
}
