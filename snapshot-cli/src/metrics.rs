//! Prometheus metrics of a run, for node_exporter's textfile collector.
//!
//! [`RunMetrics::render`] writes the [text exposition format]; [`write()`] replaces the
//! file atomically (a temporary file in the same directory, synced, then renamed), so
//! the collector never reads half a file. The temporary name does not end in `.prom`,
//! which the collector ignores. A failed run keeps the previous run's
//! `qsnap_last_success_timestamp_seconds`, read back from the file it replaces: an
//! alert on "no success for a day" keeps working across failures.
//!
//! Every series carries `command` (`snapshot`, `backup`) and `qmp` (the VM's QMP
//! socket, which tells VMs apart on one host).
//!
//! [text exposition format]: https://prometheus.io/docs/instrumenting/exposition_formats/

use crate::report::{Consistency, Timings};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The success timestamp of the file being replaced is looked for in this many bytes.
const PREVIOUS_LIMIT: u64 = 1 << 20;
const LAST_SUCCESS: &str = "qsnap_last_success_timestamp_seconds";

/// What one run of `qsnap snapshot` or `qsnap backup` did.
#[derive(Debug, Clone)]
pub struct RunMetrics<'a> {
    /// `snapshot` or `backup`.
    pub command: &'a str,
    /// The VM's QMP socket.
    pub qmp: &'a Path,
    /// When the run ended.
    pub finished: SystemTime,
    /// How long it ran.
    pub duration: Duration,
    /// Its exit code (0: success).
    pub exit_code: i32,
    /// How consistent what it took is; `None` when it took nothing.
    pub consistency: Option<Consistency>,
    /// The phases of its freeze, when it got that far and kept something.
    pub timings: Option<&'a Timings>,
    /// A backup's figures.
    pub backup: Option<BackupFigures>,
}

/// What a backup wrote.
#[derive(Debug, Clone, Copy)]
pub struct BackupFigures {
    /// Bytes of the new images on disk, all disks.
    pub bytes: u64,
    /// Whether it was incremental (false: full, including a fallback to full).
    pub incremental: bool,
}

impl RunMetrics<'_> {
    /// The metrics in text exposition format. `previous_success` is the last success
    /// timestamp of an earlier run (kept when this run failed).
    #[must_use]
    pub fn render(&self, previous_success: Option<f64>) -> String {
        let labels = self.labels();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, series: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (extra, value) in series {
                let _ = writeln!(out, "{name}{{{labels}{extra}}} {value}");
            }
        };
        let finished = unix_seconds(self.finished);
        gauge(
            "qsnap_last_run_timestamp_seconds",
            "When the last run ended (Unix time).",
            &[("", finished)],
        );
        gauge(
            "qsnap_last_run_exit_code",
            "The last run's exit code (0 success, see qsnap --help).",
            &[("", f64::from(self.exit_code))],
        );
        let success = if self.exit_code == 0 {
            Some(finished)
        } else {
            previous_success
        };
        if let Some(at) = success {
            gauge(
                LAST_SUCCESS,
                "When the last run that exited 0 ended (Unix time).",
                &[("", at)],
            );
        }
        let is = |c: Consistency| f64::from(u8::from(self.consistency == Some(c)));
        gauge(
            "qsnap_last_run_consistency",
            "1 for what the last run took (quiesced or crash-consistent), 0 otherwise; both 0: it took nothing.",
            &[
                (",consistency=\"quiesced\"", is(Consistency::Quiesced)),
                (
                    ",consistency=\"crash-consistent\"",
                    is(Consistency::CrashConsistent),
                ),
            ],
        );
        gauge(
            "qsnap_last_run_duration_seconds",
            "How long the last run took.",
            &[("", self.duration.as_secs_f64())],
        );
        if let Some(t) = self.timings {
            gauge(
                "qsnap_last_run_frozen_window_seconds",
                "From sending the freeze to the thaw's reply: how long guest writes could block.",
                &[("", t.frozen_window / 1000.0)],
            );
            gauge(
                "qsnap_last_run_in_freeze_overhead_seconds",
                "From the freeze's reply to sending the thaw: qsnap's own share of the frozen window.",
                &[("", t.in_freeze_overhead / 1000.0)],
            );
        }
        if let Some(b) = self.backup {
            #[allow(
                clippy::cast_precision_loss,
                reason = "byte counts below 2^53 are exact; beyond, a gauge loses the last bits"
            )]
            let bytes = b.bytes as f64;
            gauge(
                "qsnap_last_backup_bytes",
                "Bytes of the images the last backup wrote.",
                &[("", bytes)],
            );
            gauge(
                "qsnap_last_backup_incremental",
                "1 if the last backup was incremental, 0 if full.",
                &[("", f64::from(u8::from(b.incremental)))],
            );
        }
        out
    }
}

/// Replaces `path` with `metrics`, atomically; a failed run keeps the success
/// timestamp of the file it replaces.
///
/// Only a metrics file is ever replaced: `path` must end in `.prom` and be absent or a
/// regular file that qsnap wrote (its first line starts `# HELP qsnap_`); a symlink
/// there is refused too. A typo naming a disk image or a manifest fails instead of
/// destroying it. The file is made readable by all (0644): node_exporter usually runs
/// as another user.
///
/// # Errors
/// The path is refused, the directory cannot be written, or the rename fails (the old
/// file stays whole).
pub fn write(path: &Path, metrics: &RunMetrics<'_>) -> std::io::Result<()> {
    let refuse = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: {why}", path.display()),
        ))
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return refuse("names no file");
    };
    if !name.ends_with(".prom") || name.len() <= ".prom".len() {
        return refuse("a metrics file's name must end in .prom (node_exporter reads only those)");
    }
    let previous = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
        Ok(m) if !m.is_file() => {
            return refuse(
                "exists and is not a regular file; qsnap replaces only its own metrics files",
            );
        }
        Ok(_) => match crate::regular::read_regular(path, PREVIOUS_LIMIT)? {
            Some(bytes) if bytes.starts_with(b"# HELP qsnap_") => Some(bytes),
            _ => {
                return refuse(
                    "exists and is not a qsnap metrics file; qsnap replaces only its own",
                );
            }
        },
    };
    let text = metrics.render(previous.and_then(|b| metrics.previous_success(&b)));
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        // Set after creating: a mode given at creation is cut by the caller's umask.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

impl RunMetrics<'_> {
    /// The labels every series of this run carries, as rendered.
    fn labels(&self) -> String {
        format!(
            "command=\"{}\",qmp=\"{}\"",
            escape(self.command),
            escape(&self.qmp.to_string_lossy())
        )
    }

    /// The success timestamp of this VM and command in an earlier file's text
    /// (another command's or VM's series in the same file never count).
    fn previous_success(&self, text: &[u8]) -> Option<f64> {
        let prefix = format!("{LAST_SUCCESS}{{{}}} ", self.labels());
        String::from_utf8_lossy(text)
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .filter(|t: &f64| t.is_finite())
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A label value, escaped as the exposition format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> Timings {
        Timings {
            frozen_window: 95.0,
            in_freeze_overhead: 2.5,
            ..Timings::default()
        }
    }

    fn run<'a>(exit_code: i32, timings: &'a Timings) -> RunMetrics<'a> {
        RunMetrics {
            command: "snapshot",
            qmp: Path::new("/run/vm \"a\".qmp"),
            finished: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_millis(1500),
            exit_code,
            consistency: (exit_code == 0).then_some(Consistency::Quiesced),
            timings: (exit_code == 0).then_some(timings),
            backup: None,
        }
    }

    #[test]
    fn a_success_renders_every_gauge_with_escaped_labels() {
        let t = timings();
        let text = run(0, &t).render(Some(1.0));
        let l = r#"{command="snapshot",qmp="/run/vm \"a\".qmp"}"#;
        for line in [
            format!("qsnap_last_run_timestamp_seconds{l} 1700000000"),
            format!("qsnap_last_run_exit_code{l} 0"),
            format!("qsnap_last_success_timestamp_seconds{l} 1700000000"),
            format!("qsnap_last_run_duration_seconds{l} 1.5"),
            format!("qsnap_last_run_frozen_window_seconds{l} 0.095"),
            format!("qsnap_last_run_in_freeze_overhead_seconds{l} 0.0025"),
        ] {
            assert!(text.lines().any(|x| x == line), "{line} in\n{text}");
        }
        assert!(text.contains(r#"consistency="quiesced"} 1"#));
        assert!(text.contains(r#"consistency="crash-consistent"} 0"#));
    }

    #[test]
    fn a_failure_keeps_the_previous_success_and_the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qsnap.prom");
        let t = timings();
        write(&path, &run(0, &t)).unwrap();
        let mut failed = run(3, &t);
        failed.finished += Duration::from_secs(3600);
        write(&path, &failed).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(
            "qsnap_last_run_exit_code{command=\"snapshot\",qmp=\"/run/vm \\\"a\\\".qmp\"} 3"
        ));
        assert!(text.contains("} 1700003600\n"), "the failed run's end");
        assert!(
            text.lines()
                .any(|l| l.starts_with(LAST_SUCCESS) && l.ends_with(" 1700000000")),
            "the earlier success is kept:\n{text}"
        );
        assert!(!text.contains("frozen_window"), "a failure has no window");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["qsnap.prom"], "no temporary file left");
    }

    #[test]
    fn only_a_metrics_file_of_ours_is_ever_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let t = timings();
        let m = run(0, &t);
        // A disk image by mistake, someone else's .prom, a symlink, a directory: each
        // refused and left as it was.
        let image = dir.path().join("disk0.qcow2");
        std::fs::write(&image, b"QFI").unwrap();
        assert!(write(&image, &m).is_err(), "not a .prom name");
        let theirs = dir.path().join("other.prom");
        std::fs::write(&theirs, "node_load1 0.5\n").unwrap();
        assert!(write(&theirs, &m).is_err());
        assert_eq!(
            std::fs::read_to_string(&theirs).unwrap(),
            "node_load1 0.5\n"
        );
        let link = dir.path().join("z.prom");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(write(&link, &m).is_err());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let sub = dir.path().join("d.prom");
        std::fs::create_dir(&sub).unwrap();
        assert!(write(&sub, &m).is_err(), "a directory");
        // Ours: replaced, readable by all whatever the umask.
        let ours = dir.path().join("qsnap.prom");
        write(&ours, &m).unwrap();
        write(&ours, &m).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }

    #[test]
    fn the_previous_success_is_this_vms_and_this_commands_only() {
        let t = timings();
        let m = run(3, &t);
        let mut backup = run(0, &t);
        backup.command = "backup";
        let text = backup.render(None);
        assert_eq!(
            m.previous_success(text.as_bytes()),
            None,
            "a backup's success"
        );
        let text = run(0, &t).render(None);
        assert_eq!(m.previous_success(text.as_bytes()), Some(1_700_000_000.0));
    }
}
