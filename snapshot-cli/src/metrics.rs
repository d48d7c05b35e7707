//! Prometheus metrics of a run, for node_exporter's textfile collector.
//!
//! [`RunMetrics::render`] writes the [text exposition format]; [`write`] replaces the
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
        let labels = format!(
            "command=\"{}\",qmp=\"{}\"",
            escape(self.command),
            escape(&self.qmp.to_string_lossy())
        );
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
/// # Errors
/// The directory cannot be written, or the rename fails (the old file stays whole).
pub fn write(path: &Path, metrics: &RunMetrics<'_>) -> std::io::Result<()> {
    let text = metrics.render(previous_success(path));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The success timestamp in the metrics file at `path`, if it is a regular file of
/// ours that has one.
fn previous_success(path: &Path) -> Option<f64> {
    let bytes = crate::regular::read_regular(path, PREVIOUS_LIMIT).ok()??;
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.starts_with(LAST_SUCCESS) && l[LAST_SUCCESS.len()..].starts_with('{'))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .filter(|t: &f64| t.is_finite())
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
    fn a_file_that_is_not_ours_gives_no_previous_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.prom");
        std::fs::write(
            &path,
            "qsnap_last_success_timestamp_seconds_total 5\nnoise\n",
        )
        .unwrap();
        assert_eq!(previous_success(&path), None);
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("z.prom")).unwrap();
        assert_eq!(previous_success(&dir.path().join("z.prom")), None);
    }
}
