//! What target `qga-client` asserts about each call, given what the fake agent read
//! and wrote.
//!
//! The rule: a command only ever returns a value that the agent sent *after* the sync
//! that cleared the stream for it. For the command's request (found by a marker in its
//! arguments) the last `guest-sync-delimited` the agent read before it names the id
//! the client synchronized with; the client cannot have accepted that sync before the
//! first `0xFF` + `{"return": id}` pair in the agent's output; the returned value must
//! come from a reply frame after that pair.

use crate::agent::{Inbound, Record, Seen};
use serde_json::Value;

/// What a call returned: whether a reply value decodes to it, and how it looks.
pub(crate) struct Matcher {
    pub(crate) check: Box<dyn Fn(&Value) -> bool + Send>,
    pub(crate) shown: String,
}

/// One call the client made and how it ended.
pub(crate) struct Call {
    pub(crate) what: String,
    pub(crate) marker: Option<u64>,
    pub(crate) outcome: Result<Matcher, String>,
    pub(crate) log: String,
}

/// The marker a request carries: `{"fuzz": m}`, `guest-sync`'s `{"id": m}`, or
/// `guest-fsfreeze-freeze-list`'s `{"mountpoints": ["/fuzz/m"]}`.
fn marker(name: &str, args: &Value) -> Option<u64> {
    if name == "guest-sync-delimited" {
        return None;
    }
    args["fuzz"]
        .as_u64()
        .or_else(|| args["id"].as_u64())
        .or_else(|| {
            args["mountpoints"][0]
                .as_str()?
                .strip_prefix("/fuzz/")?
                .parse()
                .ok()
        })
}

fn sync_id(item: &Inbound) -> Option<u64> {
    match item {
        Inbound::Request { name, args } if name == "guest-sync-delimited" => args["id"].as_u64(),
        _ => None,
    }
}

/// Checks every successful call with a marker; returns how many were checked.
pub(crate) fn verify(calls: &[Call], record: &Record) -> Result<u64, String> {
    let mut checked = 0;
    for call in calls {
        let (Ok(matches), Some(m)) = (&call.outcome, call.marker) else {
            continue;
        };
        let request = record.inbound.iter().position(
            |item| matches!(item, Inbound::Request { name, args } if marker(name, args) == Some(m)),
        );
        let Some(request) = request else {
            return Err(format!(
                "request never read: {} returned a value, but the agent never read its request",
                call.what
            ));
        };
        let Some(id) = record.inbound[..request].iter().rev().find_map(sync_id) else {
            return Err(format!(
                "no sync: {} was written without a guest-sync-delimited before it",
                call.what
            ));
        };
        let synced = record.frames.iter().enumerate().position(|(i, frame)| {
            i > 0
                && matches!(record.frames[i - 1], Seen::Sentinel)
                && matches!(frame, Seen::Return(v) if v.as_u64() == Some(id))
        });
        let Some(synced) = synced else {
            return Err(format!(
                "unanswered sync: {} went ahead after sync id {id}, but the agent never sent 0xFF + that id",
                call.what
            ));
        };
        let fresh = record.frames[synced + 1..]
            .iter()
            .any(|frame| matches!(frame, Seen::Return(v) if (matches.check)(v)));
        if !fresh {
            return Err(format!(
                "stale reply: {} returned {}, which the agent did not send after the sync (id {id}) that cleared the stream for it",
                call.what, matches.shown
            ));
        }
        checked += 1;
    }
    Ok(checked)
}
