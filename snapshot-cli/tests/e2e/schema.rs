//! The `--json` contract: every command's output on the real guest validates against
//! the published schema, docs/qsnap-json.schema.json (JSON Schema 2020-12), the one
//! orchestrators are told to rely on.

use crate::backup::guest_sh;
use crate::cli::run;
use crate::*;
use serde_json::Value;
use std::sync::OnceLock;

const SCHEMA: &str = include_str!("../../../docs/qsnap-json.schema.json");

fn schema() -> &'static Value {
    static SCHEMA_VALUE: OnceLock<Value> = OnceLock::new();
    SCHEMA_VALUE.get_or_init(|| serde_json::from_str(SCHEMA).unwrap())
}

/// Panics, listing every violation, unless `value` is valid as the schema's `$defs/def`.
pub(crate) fn valid(def: &str, value: &Value) {
    let mut one = schema().clone();
    assert!(
        one["$defs"].get(def).is_some(),
        "no $defs/{def} in the schema"
    );
    let root = one.as_object_mut().unwrap();
    root.remove("anyOf");
    root.insert("$ref".into(), Value::String(format!("#/$defs/{def}")));
    let validator = jsonschema::validator_for(&one).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "output does not match $defs/{def}:\n{}\n{value:#}",
        errors.join("\n")
    );
}

/// The subcommand in a `qsnap` argument list (the first word that is not an option
/// or an option's value).
fn command<'a>(args: &[&'a str]) -> Option<&'a str> {
    let mut words = args.iter();
    while let Some(w) = words.next() {
        match *w {
            "--qmp" | "--qga" => drop(words.next()),
            w if w.starts_with('-') => {}
            w => return Some(w),
        }
    }
    None
}

/// Checks what `qsnap ARGS --json` printed: each line against the definition of its
/// command, and a failure's last line as an error object.
pub(crate) fn check_output(args: &[&str], code: i32, stdout: &str) {
    if !args.contains(&"--json") {
        return;
    }
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let Some((last, before)) = lines.split_last() else {
        panic!("--json printed nothing: {args:?}");
    };
    let cmd = command(args).unwrap_or_default();
    if code != 0 {
        valid("error", last);
        assert_eq!(last["exit_code"], code);
    } else if let Some(def) = match cmd {
        "qmp" | "qga" => None, // whatever QEMU or the agent answered
        "events" => Some("event"),
        "backup" => Some("backup"),
        other => Some(other),
    } {
        valid(def, last);
    }
    for line in before {
        let def = match cmd {
            "backup" => "backup_progress",
            "events" => "event",
            _ => panic!("{cmd} printed more than one line: {stdout}"),
        };
        valid(def, line);
    }
}

#[tokio::test]
async fn every_command_prints_json_that_matches_the_published_schema() {
    within(300, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().display().to_string();
        // Each run checks its own output (cli::run calls check_output); these are the
        // commands orchestrators drive, and one failure of each kind of report.
        for args in [
            vec!["--json", "info"],
            vec!["--json", "ping"],
            vec!["--json", "fsstatus"],
            vec!["--json", "freeze"],
            vec!["--json", "thaw"],
            vec!["--json", "thaw"],
            vec!["--json", "snapshot", "--name", "s1"],
            vec!["--json", "commit", "--disk", "vblk0"],
            vec!["--json", "backup", "--target", &target],
            vec!["--json", "backups", &target],
            vec!["--json", "snapshot", "--disk", "nope"],
        ] {
            let (code, out, err) = run(&vm, &args).await;
            let failing = args.contains(&"nope");
            assert_eq!(code != 0, failing, "{args:?}: {out}\n{err}");
        }
        // A metrics file that cannot be written is a warning, not the run's failure.
        let (code, out, err) = run(
            &vm,
            &[
                "--json",
                "snapshot",
                "--name",
                "s2",
                "--metrics-file",
                "/nonexistent/q.prom",
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(
            err.contains("warning: cannot write the metrics file /nonexistent/q.prom"),
            "{err}"
        );
        guest_sh(&vm, "echo more >> /data/more.txt && sync").await;
        let (code, out, _) = run(
            &vm,
            &["--json", "backup", "--target", &target, "--incremental"],
        )
        .await;
        assert_eq!(code, 0);
        let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let manifest = report["manifest_path"].as_str().unwrap().to_owned();
        // The manifest file itself is part of the contract.
        valid(
            "manifest",
            &serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap(),
        );
        let to = dir.path().join("restored.raw").display().to_string();
        for args in [
            vec!["--json", "verify", &manifest],
            vec![
                "--json", "restore", &manifest, "--disk", "vblk1", "--to", &to, "--format", "raw",
            ],
        ] {
            let (code, out, err) = run(&vm, &args).await;
            assert_eq!(code, 0, "{args:?}: {out}\n{err}");
        }
        // A failure with a report: a restore onto an existing file (exit 1, report null).
        let (code, _, _) = run(
            &vm,
            &[
                "--json", "restore", &manifest, "--disk", "vblk1", "--to", &to,
            ],
        )
        .await;
        assert_eq!(code, 1);
    })
    .await;
}

#[test]
fn the_schema_rejects_what_the_contract_excludes() {
    // The checks can fail: a missing field, a wrong type, an unknown field, a bad enum.
    let good = serde_json::json!({"status": "thawed"});
    valid("fsstatus", &good);
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"status": "melted"}),
        serde_json::json!({"status": "thawed", "extra": 1}),
        serde_json::json!({"status": 1}),
    ] {
        let result = std::panic::catch_unwind(|| valid("fsstatus", &bad));
        assert!(result.is_err(), "{bad} was accepted");
    }
}
