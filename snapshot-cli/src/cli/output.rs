//! Printing results: one JSON object on stdout with `--json`, text otherwise.

#![allow(clippy::print_stdout, reason = "the CLI's output goes to stdout")]

use serde::Serialize;
use serde_json::json;

/// Prints `value` as JSON, or the text `human` builds.
pub(crate) fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("qsnap: error: cannot encode the result: {e}"),
        }
    } else {
        let text = human(value);
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

/// Reports an error: the whole cause chain on stderr; with `--json` also an object on
/// stdout so scripts always get one.
pub(crate) fn error(json: bool, e: &anyhow::Error, code: u8) {
    eprintln!("qsnap: error: {e:#}");
    if json {
        let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
        println!(
            "{}",
            json!({"error": format!("{e:#}"), "causes": chain, "exit_code": code})
        );
    }
}
