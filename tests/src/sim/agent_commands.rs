//! The simulated agent's command table: which commands exist, which stay enabled while
//! frozen, and the answers of the ones that need no hook.

use super::agent_model::{AgentError, AgentState};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Every command the simulated agent has, in `guest-info` order.
const COMMANDS: &[&str] = &[
    "guest-sync-delimited",
    "guest-sync",
    "guest-ping",
    "guest-info",
    "guest-get-osinfo",
    "guest-get-fsinfo",
    "guest-fsfreeze-status",
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw",
    "guest-exec",
    "guest-exec-status",
];

/// The commands qemu-ga leaves enabled while the filesystems are frozen.
const ALLOWED_FROZEN: &[&str] = &[
    "guest-ping",
    "guest-info",
    "guest-sync",
    "guest-sync-delimited",
    "guest-fsfreeze-status",
    "guest-fsfreeze-thaw",
];

/// A parsed request line.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) name: String,
    pub(super) args: Map<String, Value>,
}

/// Parses one request line as qemu-ga does, or returns the error reply it draws.
pub(super) fn parse(line: &[u8]) -> Result<Request, AgentError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| ("GenericError", format!("JSON parse error, {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(("GenericError", "QMP input must be a JSON object".into()));
    };
    let Some(Value::String(name)) = obj.remove("execute") else {
        return Err(("GenericError", "QMP input lacks member 'execute'".into()));
    };
    let args = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err((
                "GenericError",
                "QMP input member 'arguments' must be an object".into(),
            ));
        }
    };
    Ok(Request { name, args })
}

/// What executing a request takes.
#[derive(Debug)]
pub(super) enum Step {
    /// Answer at once.
    Reply(Result<Value, AgentError>),
    /// Run the freeze hook for this long, then freeze these mountpoints (all: `None`).
    Freeze(Duration, Option<Vec<String>>),
    /// Thaw now, then run the thaw hook, then answer.
    Thaw,
}

/// Decides how to execute `req` in the current state.
pub(super) fn begin(st: &mut AgentState, req: &Request) -> Step {
    let name = req.name.as_str();
    if !COMMANDS.contains(&name) {
        return Step::Reply(Err((
            "CommandNotFound",
            format!("The command {name} has not been found"),
        )));
    }
    if st.agent_frozen && !ALLOWED_FROZEN.contains(&name) {
        let desc = format!("Command {name} has been disabled: the command is not allowed");
        return Step::Reply(Err(("CommandNotFound", desc)));
    }
    match name {
        "guest-fsfreeze-freeze" => Step::Freeze(st.knobs.freeze_hook, None),
        "guest-fsfreeze-freeze-list" => match string_list(&req.args, "mountpoints") {
            Ok(list) => Step::Freeze(st.knobs.freeze_hook, list),
            Err(e) => Step::Reply(Err(e)),
        },
        "guest-fsfreeze-thaw" => Step::Thaw,
        _ => Step::Reply(answer(st, name, &req.args)),
    }
}

fn answer(st: &mut AgentState, name: &str, args: &Map<String, Value>) -> Result<Value, AgentError> {
    match name {
        "guest-sync" | "guest-sync-delimited" => args
            .get("id")
            .filter(|v| v.is_i64() || v.is_u64())
            .cloned()
            .ok_or_else(|| ("GenericError", "Parameter 'id' is missing".into())),
        "guest-ping" => Ok(json!({})),
        "guest-info" => Ok(info(st)),
        "guest-get-osinfo" => Ok(osinfo(st.knobs.windows)),
        "guest-fsfreeze-status" => Ok(json!(if st.agent_frozen { "frozen" } else { "thawed" })),
        "guest-get-fsinfo" => Ok(fsinfo(&st.mountpoints)),
        "guest-exec" => {
            st.next_pid += 1;
            st.exec_started.push(std::time::Instant::now());
            Ok(json!({"pid": st.next_pid}))
        }
        "guest-exec-status" => match args.get("pid").and_then(Value::as_u64) {
            Some(pid) if pid > 1000 && pid <= st.next_pid => {
                let started = usize::try_from(pid - 1001)
                    .ok()
                    .and_then(|i| st.exec_started.get(i).copied());
                if started.is_some_and(|t| t.elapsed() < st.knobs.exec_runs) {
                    Ok(json!({"exited": false}))
                } else {
                    Ok(json!({"exited": true, "exitcode": 0}))
                }
            }
            _ => Err(("GenericError", "Invalid parameter 'pid'".into())),
        },
        _ => Err((
            "CommandNotFound",
            format!("The command {name} has not been found"),
        )),
    }
}

fn string_list(args: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>, AgentError> {
    let Some(v) = args.get(key) else {
        return Ok(None);
    };
    let bad = || {
        (
            "GenericError",
            format!("Invalid parameter type for '{key}', expected: array"),
        )
    };
    let items = v.as_array().ok_or_else(bad)?;
    items
        .iter()
        .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn info(st: &AgentState) -> Value {
    let commands: Vec<Value> = COMMANDS
        .iter()
        .map(|c| {
            let enabled = !st.agent_frozen || ALLOWED_FROZEN.contains(c);
            json!({"name": c, "enabled": enabled, "success-response": true})
        })
        .collect();
    json!({"version": "sim", "supported_commands": commands})
}

fn osinfo(windows: bool) -> Value {
    if windows {
        json!({"id": "mswindows", "name": "Microsoft Windows", "pretty-name": "Windows Server 2022 Standard",
            "version": "Microsoft Windows Server 2022", "version-id": "2022", "kernel-version": "10.0",
            "kernel-release": "20348", "machine": "x86_64", "variant": "server", "variant-id": "server"})
    } else {
        json!({"id": "linux", "name": "Linux", "pretty-name": "Linux (qsnap simulator)",
            "kernel-release": "6.1.0-sim", "kernel-version": "#1 SMP sim", "machine": "x86_64"})
    }
}

fn fsinfo(mountpoints: &[String]) -> Value {
    let entries: Vec<Value> = mountpoints
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let dev = format!("vd{}", char::from(b'a' + (i % 26) as u8));
            json!({"name": dev, "mountpoint": m, "type": "ext4",
                "used-bytes": 1_048_576, "total-bytes": 60_000_000,
                "disk": [{"serial": "", "bus-type": "virtio", "bus": 0, "target": 0, "unit": 0,
                    "pci-controller": {"domain": 0, "bus": 0, "slot": 3 + i, "function": 0},
                    "dev": format!("/dev/{dev}")}]})
        })
        .collect();
    Value::Array(entries)
}

/// One reply line as qemu-ga writes it (no id; `guest-sync-delimited` gets the 0xFF).
pub(super) fn encode(name: &str, result: &Result<Value, AgentError>) -> Vec<u8> {
    let mut out = Vec::new();
    if name == "guest-sync-delimited" && result.is_ok() {
        out.push(0xFF);
    }
    out.extend(encode_plain(result));
    out
}

/// A reply line without any sentinel.
pub(super) fn encode_plain(result: &Result<Value, AgentError>) -> Vec<u8> {
    let value = match result {
        Ok(v) => json!({"return": v}),
        Err((class, desc)) => json!({"error": {"class": class, "desc": desc}}),
    };
    let mut out = super::server::qemu_json(&value);
    out.push(b'\n');
    out
}
