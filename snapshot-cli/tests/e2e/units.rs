//! The systemd units in `contrib/systemd`: `systemd-analyze verify` accepts them without
//! a single line of output, and they keep what makes a stop safe.
//!
//! `systemd-analyze verify` checks that `ExecStart=`'s binary exists, so each template
//! pair is copied into a temporary directory as an instance
//! (`qsnap-snapshot@demo.service` and `.timer`), with `/usr/local/bin/qsnap` replaced
//! by the binary under test, and both files are verified together. The
//! `EnvironmentFile=` (`/etc/qsnap/demo.env`) need not exist: verify does not read it
//! (checked with systemd 252). A warning exits 0 but prints a line, so the output must
//! be empty, not just the status zero. Needs `systemd-analyze` on PATH: without it the
//! test fails, it never skips. No QEMU and no systemd PID 1 are involved.
//!
//! The text checks guard the guardian: with systemd's default `KillMode=control-group`
//! a stop or a start timeout would kill `qsnap guardian` along with qsnap and could
//! leave the guest frozen.

use std::path::Path;
use std::process::Command;

/// The unit files, in the repository.
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/systemd");
/// Where the units expect the binary.
const INSTALLED: &str = "/usr/local/bin/qsnap";
/// The commands that have a `qsnap-<kind>@.service` and `.timer`.
const KINDS: [&str; 2] = ["snapshot", "backup"];

/// The text of `qsnap-<kind>@.<suffix>`.
fn template(kind: &str, suffix: &str) -> String {
    let path = Path::new(UNITS).join(format!("qsnap-{kind}@.{suffix}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines systemd reads: trimmed, without comments and blank lines.
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .collect()
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let bin = env!("CARGO_BIN_EXE_qsnap");
    assert!(
        !bin.contains(char::is_whitespace),
        "the binary's path {bin:?} would need quoting in ExecStart="
    );
    let dir = tempfile::tempdir().unwrap();
    for kind in KINDS {
        let mut units = Vec::new();
        for suffix in ["service", "timer"] {
            let text = template(kind, suffix).replace(INSTALLED, bin);
            let path = dir.path().join(format!("qsnap-{kind}@demo.{suffix}"));
            std::fs::write(&path, text).unwrap();
            units.push(path);
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .current_dir(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run systemd-analyze (install systemd): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.is_empty() && stderr.is_empty(),
            "systemd-analyze verify of the {kind} units: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
}

#[test]
fn the_services_spare_the_guardian_read_their_environment_file_and_print_json() {
    for kind in KINDS {
        let unit = format!("qsnap-{kind}@.service");
        let text = template(kind, "service");
        let lines = settings(&text);
        assert!(
            lines.contains(&"Type=oneshot"),
            "{unit} lacks `Type=oneshot`"
        );
        let starting = |prefix: &str| -> Vec<&str> {
            lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(prefix))
                .collect()
        };
        // The last assignment wins: no second KillMode= may undo the first, and the
        // environment file stays required (a `-` prefix would make it optional).
        assert_eq!(starting("KillMode="), ["KillMode=process"], "{unit}");
        assert_eq!(
            starting("EnvironmentFile="),
            ["EnvironmentFile=/etc/qsnap/%i.env"],
            "{unit}"
        );

        let exec = starting("ExecStart=");
        assert_eq!(exec.len(), 1, "{unit}: one ExecStart=, got {exec:?}");
        let words: Vec<&str> = exec[0]["ExecStart=".len()..].split_whitespace().collect();
        assert_eq!(words.first(), Some(&INSTALLED), "{unit}: {}", exec[0]);
        assert_eq!(words.get(1), Some(&kind), "{unit}: {}", exec[0]);
        assert!(
            words.contains(&"--json"),
            "{unit}: no --json in {}",
            exec[0]
        );
    }
}
