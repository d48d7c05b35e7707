//! `--metrics-file`: the run's metrics, written whatever its outcome.

use super::output;
use qsnap::metrics::{BackupFigures, RunMetrics};
use qsnap::{BackupReport, Consistency, Report, Timings};
use std::path::Path;
use std::time::{Instant, SystemTime};

/// What a snapshot or backup ended with, as far as metrics care.
pub(crate) struct Ended<'a> {
    pub(crate) exit_code: i32,
    pub(crate) consistency: Option<Consistency>,
    pub(crate) timings: Option<&'a Timings>,
    pub(crate) backup: Option<BackupFigures>,
}

impl<'a> Ended<'a> {
    pub(crate) fn snapshot(result: &'a Result<Report, qsnap::Error>) -> Self {
        let kept = match result {
            Ok(r) => Some(r),
            Err(qsnap::Error::NotConsistent { report, .. }) => Some(report.as_ref()),
            Err(_) => None,
        };
        Self {
            exit_code: result.as_ref().err().map_or(0, qsnap::Error::exit_code),
            consistency: kept.map(|r| r.consistency),
            timings: kept.map(|r| &r.timings_ms),
            backup: None,
        }
    }

    pub(crate) fn backup(result: &'a Result<BackupReport, qsnap::Error>) -> Self {
        let kept = match result {
            Ok(r) => Some(r),
            Err(qsnap::Error::BackupNotConsistent { report, .. }) => Some(report.as_ref()),
            Err(_) => None,
        };
        Self {
            exit_code: result.as_ref().err().map_or(0, qsnap::Error::exit_code),
            consistency: kept.map(|r| r.manifest.consistency),
            timings: kept.map(|r| &r.timings_ms.common),
            backup: kept.map(|r| BackupFigures {
                bytes: r.manifest.disks.iter().map(|d| d.file_bytes).sum(),
                incremental: r.manifest.kind == qsnap::backup::manifest::Kind::Incremental,
            }),
        }
    }
}

/// Writes the metrics to `file` if asked; a failure to write them is reported on
/// stderr and does not change the run's exit code (the run itself is what it is).
pub(crate) fn record(
    file: Option<&Path>,
    command: &str,
    qmp: &Path,
    started: Instant,
    ended: &Ended<'_>,
) {
    let Some(file) = file else { return };
    let metrics = RunMetrics {
        command,
        qmp,
        finished: SystemTime::now(),
        duration: started.elapsed(),
        exit_code: ended.exit_code,
        consistency: ended.consistency,
        timings: ended.timings,
        backup: ended.backup,
    };
    if let Err(e) = qsnap::metrics::write(file, &metrics) {
        output::stderr(&format!(
            "qsnap: warning: cannot write the metrics file {}: {e}",
            file.display()
        ));
    }
}
