//! Target `envelope`: mutated JSON lines through `qmp::wire::parse` and the typed
//! reply decoders behind it (QGA `guest-fsfreeze-status`, `guest-info`,
//! `guest-get-osinfo`, `guest-get-fsinfo`, `guest-sync`, `guest-fsfreeze-thaw`; QMP
//! `query-block`, `query-status`, `query-version`, `query-jobs`).
//!
//! Checks: no panic; a line `parse` accepts is a JSON object; a message re-encoded
//! parses back to itself (for values without floats, whose text serde_json does not
//! promise to round-trip); `{"return": V}` parses to `V`; every error a guest can
//! cause renders without control characters or bidi overrides (what reaches a
//! terminal).

use crate::harness::{Failure, guarded, show_bytes, shrink_bytes};
use crate::mutate::{Mutator, random_bytes, random_value};
use crate::rng::Rng;
use qmp::wire::{Command, Message, parse};
use serde_json::{Value, json};

/// What a line turned out to be, for the report's coverage counters.
pub(crate) type Kind = &'static str;

pub(crate) fn generate(rng: &mut Rng, mutator: &Mutator) -> Vec<u8> {
    let mut line = match rng.below(20) {
        0..=6 => mutator.mutated_line(rng),
        7..=13 => serde_json::to_vec(&mutator.mutated_value(rng)).unwrap_or_default(),
        14..=16 => serde_json::to_vec(&envelope(rng)).unwrap_or_default(),
        17 | 18 => nested(rng),
        _ => random_bytes(rng, 256),
    };
    if rng.chance(10) {
        mutator.havoc(rng, &mut line);
    }
    line
}

/// A well-formed envelope around a random value.
fn envelope(rng: &mut Rng) -> Value {
    let v = random_value(rng, 4);
    match rng.below(4) {
        0 => json!({ "return": v, "id": random_value(rng, 1) }),
        1 => json!({ "error": { "class": random_value(rng, 0), "desc": random_value(rng, 0) } }),
        2 => json!({ "event": random_value(rng, 0), "data": v }),
        _ => json!({ "QMP": { "version": v, "capabilities": [] } }),
    }
}

/// Deep nesting, past serde_json's recursion limit or just below it.
fn nested(rng: &mut Rng) -> Vec<u8> {
    let depth = rng.range(100, 3000);
    let (open, close): (&[u8], &[u8]) = match rng.below(3) {
        0 => (b"[", b"]"),
        1 => (b"{\"return\":", b"}"),
        _ => (b"{\"a\":[", b"]}"),
    };
    let mut out = b"{\"return\": ".to_vec();
    out.extend(open.repeat(depth));
    out.extend(b"0");
    out.extend(close.repeat(depth));
    out.extend(b"}");
    out
}

pub(crate) fn run(line: &[u8]) -> Result<Kind, String> {
    guarded(|| check(line))
}

fn check(line: &[u8]) -> Result<Kind, String> {
    let Ok(message) = parse(line) else {
        typed(&serde_json::from_slice(line).unwrap_or(Value::Null))?;
        return Ok("rejected");
    };
    // Not `from_slice::<Value>(line).is_ok()`: serde_json skips ignored members
    // without validating their UTF-8, so `parse` accepts a few lines `Value` rejects.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("parse accepted a line that is not an object".into());
    }
    round_trip(&message)?;
    match message {
        Message::Return { value, .. } => typed(&value).map(|()| "return"),
        Message::Error { error, .. } => {
            terminal_safe(&chain(&qga::Error::Command {
                command: "guest-x".into(),
                error,
            }))?;
            Ok("error")
        }
        Message::Event(_) => Ok("event"),
        Message::Greeting(_) => Ok("greeting"),
    }
}

/// The typed decoders: never panic, and their errors render safely.
fn typed(value: &Value) -> Result<(), String> {
    decode::<qga::commands::GuestFsfreezeStatus>(value)?;
    decode::<qga::commands::GuestInfo>(value)?;
    decode::<qga::commands::GuestGetOsinfo>(value)?;
    decode::<qga::commands::GuestGetFsinfo>(value)?;
    decode::<qga::commands::GuestSync>(value)?;
    decode::<qga::commands::GuestFsfreezeThaw>(value)?;
    decode::<qga::commands::GuestPing>(value)?;
    decode::<qmp::commands::QueryBlock>(value)?;
    decode::<qmp::commands::QueryStatus>(value)?;
    decode::<qmp::commands::QueryVersion>(value)?;
    decode::<qmp::commands::QueryJobs>(value)
}

fn decode<C: Command>(value: &Value) -> Result<(), String> {
    match serde_json::from_value::<C::Output>(value.clone()) {
        Ok(_) => Ok(()),
        Err(source) => terminal_safe(&chain(&qga::Error::Decode {
            command: C::NAME.into(),
            source: qga::GuestJsonError(source),
        })),
    }
}

/// Display of an error and its sources, as `anyhow` prints `{:#}`.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn terminal_safe(text: &str) -> Result<(), String> {
    let bad =
        |c: &char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    match text.chars().find(bad) {
        None => Ok(()),
        Some(c) => Err(format!(
            "guest text reaches the terminal unescaped ({c:?}): {text:?}"
        )),
    }
}

fn round_trip(message: &Message) -> Result<(), String> {
    let value = match message {
        Message::Return { id, value } => json!({ "return": value, "id": id }),
        Message::Error { id, error } => json!({ "error": error, "id": id }),
        Message::Event(event) => json!(event),
        Message::Greeting(greeting) => json!({ "QMP": greeting }),
    };
    if has_float(&value) {
        return Ok(());
    }
    let text = serde_json::to_vec(&value).map_err(|e| format!("re-encode: {e}"))?;
    match parse(&text) {
        Ok(again) if again == *message => Ok(()),
        other => Err(format!(
            "a message re-encoded does not parse back: {message:?} became {other:?}"
        )),
    }
}

fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

pub(crate) fn minimize(line: Vec<u8>, message: String) -> Failure {
    let mut budget = 20_000;
    let line = shrink_bytes(line, &mut budget, |l| run(l).is_err());
    let message = run(&line).err().unwrap_or(message);
    Failure {
        message,
        input: format!("line of {} bytes:\n{}", line.len(), show_bytes(&line)),
    }
}
