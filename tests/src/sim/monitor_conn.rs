//! The simulated monitor's connections: one client at a time, its commands parsed and
//! run strictly in order with the scripted faults, and the job engine.

use super::args::{QmpErr, QmpResult};
use super::qmp_commands::{MonState, dispatch, line, version};
use super::server::{self, ClientSlot, Lines, lock};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

/// Scripted faults, looked up by command name.
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) delay_reply: Vec<(String, Duration)>,
    pub(super) delay_all: Vec<(String, Duration)>,
    pub(super) fail: Vec<(String, QmpErr)>,
    pub(super) disconnect: Vec<(String, bool)>,
}

/// Removes and returns the first entry for `name`.
pub(super) fn once<T>(v: &mut Vec<(String, T)>, name: &str) -> Option<T> {
    let i = v.iter().position(|(c, _)| c == name)?;
    Some(v.remove(i).1)
}

/// The faults that apply to one execution of a command.
#[derive(Debug, Default)]
struct Fault {
    fail: Option<QmpErr>,
    disconnect_before: Option<bool>,
    delay_all: Duration,
    delay_reply: Duration,
}

impl Faults {
    fn take(&mut self, name: &str) -> Fault {
        let delay = |v: &[(String, Duration)]| {
            v.iter()
                .rev()
                .find(|(c, _)| c == name)
                .map_or(Duration::ZERO, |d| d.1)
        };
        Fault {
            fail: once(&mut self.fail, name),
            disconnect_before: once(&mut self.disconnect, name),
            delay_all: delay(&self.delay_all),
            delay_reply: delay(&self.delay_reply),
        }
    }
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: Mutex<MonState>,
    pub(super) faults: Mutex<Faults>,
    /// Notified when jobs may have to move.
    pub(super) engine: Notify,
    /// True while the monitor is hung (scripted with `pause`).
    pub(super) hung: watch::Sender<bool>,
    pub(super) stop: Arc<watch::Sender<bool>>,
    pub(super) connections: Mutex<u64>,
}

/// One message read from a client.
#[derive(Debug)]
enum Incoming {
    Bad(QmpErr, Option<Value>),
    Command {
        name: String,
        args: Option<Value>,
        id: Option<Value>,
    },
}

fn parse(bytes: &[u8]) -> Incoming {
    let bad = |desc: String, id| Incoming::Bad(super::args::generic(desc), id);
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return bad(format!("JSON parse error, {e}"), None),
    };
    let Value::Object(mut obj) = value else {
        return bad("QMP input must be a JSON object".into(), None);
    };
    let id = obj.remove("id");
    let args = obj.remove("arguments");
    if args.as_ref().is_some_and(|a| !a.is_object()) {
        return bad("QMP input member 'arguments' must be an object".into(), id);
    }
    match (obj.remove("execute"), obj.keys().next()) {
        (_, Some(k)) => bad(format!("QMP input member '{k}' is unexpected"), id),
        (Some(Value::String(name)), None) => Incoming::Command { name, args, id },
        (Some(_), None) => bad("QMP input member 'execute' must be a string".into(), id),
        (None, None) => bad("QMP input lacks member 'execute'".into(), id),
    }
}

fn reply(result: &QmpResult, id: Option<Value>) -> Vec<u8> {
    let mut v = match result {
        Ok(r) => json!({"return": r}),
        Err(e) => json!({"error": {"class": e.class, "desc": e.desc}}),
    };
    if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
        obj.insert("id".into(), id);
    }
    line(&v)
}

/// Accepts one client at a time; its commands run on an executor task, one at a time.
pub(super) async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut executors = JoinSet::new();
    while !*stop.borrow() {
        while executors.try_join_next().is_some() {}
        let stream = tokio::select! {
            // `accept` is cancel-safe.
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            () = server::stopped(&mut stop) => break,
        };
        let number = {
            let mut n = lock(&shared.connections);
            *n += 1;
            *n
        };
        let (slot, rx) = ClientSlot::new(number);
        let _ = slot.out.send(line(
            &json!({"QMP": {"version": version(), "capabilities": ["oob"]}}),
        ));
        let (tx, commands) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        executors.spawn(execute(
            shared.clone(),
            commands,
            slot.clone(),
            closed.clone(),
        ));
        let mut lines = Lines::default();
        server::pump(stream, rx, slot.kick.clone(), |bytes| {
            for l in lines.push(bytes) {
                let msg = parse(&l);
                if let Incoming::Command { name, .. } = &msg {
                    lock(&shared.state).log.push(name.clone());
                }
                let _ = tx.send(msg);
            }
        })
        .await;
        // QEMU drops the requests a departed client left queued; one in progress finishes.
        closed.store(true, Ordering::SeqCst);
        let mut st = lock(&shared.state);
        if st.client.as_ref().is_some_and(|c| c.number == number) {
            st.client = None;
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Runs one client's commands strictly in order, as QEMU's monitor does.
async fn execute(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Incoming>,
    slot: ClientSlot,
    closed: Arc<AtomicBool>,
) {
    let mut negotiated = false;
    let mut hung = shared.hung.subscribe();
    while let Some(msg) = commands.recv().await {
        if closed.load(Ordering::SeqCst) {
            return;
        }
        let _ = hung.wait_for(|h| !*h).await;
        let quit = run_one(&shared, &slot, &mut negotiated, msg).await;
        shared.engine.notify_one();
        if quit {
            let st = lock(&shared.state);
            st.emit(vec![(
                "SHUTDOWN",
                json!({"guest": false, "reason": "host-qmp-quit"}),
            )]);
            if let Some(agent) = &st.agent {
                agent.quit();
            }
            shared.stop.send_replace(true);
            slot.kick.notify_one();
            return;
        }
    }
}

/// Executes one message with its scripted faults; true when it was a successful `quit`.
async fn run_one(shared: &Shared, slot: &ClientSlot, negotiated: &mut bool, msg: Incoming) -> bool {
    let send = |bytes: Vec<u8>| {
        let _ = slot.out.send(bytes);
    };
    let (name, args, id) = match msg {
        Incoming::Bad(e, id) => {
            send(reply(&Err(e), id));
            return false;
        }
        Incoming::Command { name, args, id } => (name, args, id),
    };
    let not_found = |desc: &str| {
        Err(QmpErr {
            class: "CommandNotFound".into(),
            desc: desc.into(),
        })
    };
    if name == "qmp_capabilities" || !*negotiated {
        let result = match (name.as_str(), *negotiated) {
            ("qmp_capabilities", false) => {
                *negotiated = true;
                lock(&shared.state).client = Some(slot.clone());
                Ok(json!({}))
            }
            ("qmp_capabilities", true) => {
                not_found("Capabilities negotiation is already complete, command ignored")
            }
            _ => not_found("Expecting capabilities negotiation with 'qmp_capabilities'"),
        };
        send(reply(&result, id));
        return false;
    }
    let fault = lock(&shared.faults).take(&name);
    if let Some(e) = fault.fail {
        send(reply(&Err(e), id));
        return false;
    }
    if fault.disconnect_before == Some(true) {
        slot.kick.notify_one();
        return false;
    }
    tokio::time::sleep(fault.delay_all).await;
    let result = {
        let mut st = lock(&shared.state);
        let mut events = Vec::new();
        let result = dispatch(&mut st, &name, args, &mut events);
        st.emit(events);
        result
    };
    if fault.disconnect_before == Some(false) {
        slot.kick.notify_one();
        return false;
    }
    tokio::time::sleep(fault.delay_reply).await;
    send(reply(&result, id));
    name == "quit" && result.is_ok()
}

/// Moves the jobs along and emits their events.
pub(super) async fn engine(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut guard = lock(&shared.state);
            let st = &mut *guard;
            let mut events = Vec::new();
            let next = st
                .jobs
                .tick(&mut st.graph, &mut st.files, Instant::now(), &mut events);
            st.emit(events);
            next
        };
        match next {
            Some(d) => {
                tokio::select! {
                    // Both arms are cancel-safe: a lost sleep is re-armed on the next pass.
                    () = tokio::time::sleep(d) => {}
                    () = shared.engine.notified() => {}
                }
            }
            None => shared.engine.notified().await,
        }
    }
}
