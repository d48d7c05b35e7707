//! Printing results: one JSON object on stdout with `--json`, text otherwise.
//!
//! A reader that goes away (`qsnap info | head -1`) is not an error: output stops
//! quietly, as with any Unix tool.

use serde::Serialize;
use serde_json::json;
use std::io::Write;

/// Writes one line to stdout; `false` once the reader is gone.
pub(crate) fn line(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
        Err(e) => {
            stderr(&format!("qsnap: error: cannot write to stdout: {e}"));
            false
        }
    }
}

/// Writes a line to stderr, ignoring failure: after a closed terminal (SIGHUP) or a
/// reader gone, stderr fails with EIO or EPIPE, and `eprintln!` would panic on it.
pub(crate) fn stderr(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Prints `value` as JSON, or the text `human` builds.
pub(crate) fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(s) => drop(line(&s)),
            Err(e) => stderr(&format!("qsnap: error: cannot encode the result: {e}")),
        }
    } else {
        let text = human(value);
        if !text.is_empty() {
            line(&text);
        }
    }
}

/// Reports an error: with `--json` an object on stdout so scripts always get one, then
/// the whole cause chain on stderr (in that order: a stalled stderr must not keep the
/// object from a script).
pub(crate) fn error(json: bool, e: &anyhow::Error, code: u8) {
    if json {
        let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
        // Exit 6 kept a snapshot: its report goes along, so scripts find the overlays.
        let report = match e.downcast_ref::<qsnap::Error>() {
            Some(qsnap::Error::NotConsistent { report, .. }) => json!(report),
            Some(qsnap::Error::BackupNotConsistent { report, .. }) => json!(report),
            _ => serde_json::Value::Null,
        };
        line(
            &json!({"error": format!("{e:#}"), "causes": chain, "exit_code": code, "report": report})
                .to_string(),
        );
    }
    stderr(&format!("qsnap: error: {e:#}"));
}
