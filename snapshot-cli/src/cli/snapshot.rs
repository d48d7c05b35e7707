//! `qsnap snapshot`.

use super::args::{SnapshotArgs, WindowArgs};
use super::{Global, metrics, need, output};
use anyhow::Result;
use qsnap::{CancellationToken, Consistency, Report, SnapshotRequest};
use std::fmt::Write as _;

pub(crate) async fn run(g: &Global, args: SnapshotArgs, cancel: &CancellationToken) -> Result<()> {
    let mut request = request(g, args.window)?;
    request.name = args.name;
    request.overlay_dir = args.overlay_dir;
    let started = std::time::Instant::now();
    let result = qsnap::snapshot(&request, cancel).await;
    metrics::record(
        args.metrics.metrics_file.as_deref(),
        "snapshot",
        &request.qmp,
        started,
        &metrics::Ended::snapshot(&result),
    );
    let report = match result {
        Ok(report) => report,
        // Taken and kept, but only crash-consistent (exit 6): the report still says
        // where the overlays are, for whoever must back them up or merge them.
        Err(qsnap::Error::NotConsistent { reason, report }) => {
            if !g.json {
                output::emit(false, report.as_ref(), human);
            }
            return Err(qsnap::Error::NotConsistent { reason, report }.into());
        }
        Err(e) => return Err(e.into()),
    };
    output::emit(g.json, &report, human);
    Ok(())
}

/// The VM, the disks and the quiesce options, as a request.
pub(crate) fn request(g: &Global, w: WindowArgs) -> Result<SnapshotRequest> {
    let mut request = SnapshotRequest::new(need(&g.qmp, "--qmp")?);
    request.qga = g.qga.clone();
    request.disks = w.disks;
    request.quiesce = w.quiesce;
    request.freeze_timeout = w.freeze_timeout;
    request.mountpoints = w.mountpoints;
    request.agent_timeout = w.agent_timeout;
    request.pre_flush = !w.no_pre_flush;
    request.pre_flush_timeout = w.pre_flush_timeout;
    request.hold_frozen = w.debug_hold_frozen;
    if !w.no_guardian {
        request.guardian = std::env::current_exe().ok();
    }
    Ok(request)
}

fn human(r: &Report) -> String {
    let mut s = String::new();
    let how = match r.consistency {
        Consistency::Quiesced => format!(
            "quiesced: {} filesystem(s) frozen for {:.1} ms (disks switched in {:.2} ms of it)",
            r.frozen_filesystems, r.timings_ms.frozen_window, r.timings_ms.in_freeze_overhead
        ),
        Consistency::CrashConsistent => "crash-consistent (not quiesced)".to_owned(),
    };
    let _ = writeln!(s, "snapshot {}: {how}", r.name);
    for d in &r.disks {
        let dev = d
            .device
            .as_deref()
            .map(|id| format!(" ({id})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {}{dev}: {} -> new overlay {}",
            d.node, d.backing_file, d.overlay_file
        );
    }
    if let Some(scope) = &r.freeze_scope {
        let quiesced = r.consistency == Consistency::Quiesced;
        let _ = writeln!(s, "  {}", scope_line(scope, quiesced));
    }
    for w in &r.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    let _ = write!(s, "  total {:.0} ms", r.timings_ms.total);
    s
}

/// One line on what `--disk` left thawed, and why anything more was frozen; for a run
/// that was not quiesced, what had been planned (nothing was frozen at the switch).
pub(crate) fn scope_line(scope: &qsnap::scope::FreezeScope, quiesced: bool) -> String {
    // Mountpoints and notes carry guest text: escaped for the terminal.
    let list = |v: &[String]| {
        v.iter()
            .map(|m| qmp::wire::escape(m))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut line = if quiesced {
        String::new()
    } else {
        "not quiesced; the planned ".to_owned()
    };
    line += &if scope.frozen.is_empty() {
        "freeze of every filesystem".to_owned()
    } else {
        format!(
            "freeze of {}; left thawed (only on disks not in this run): {}",
            list(&scope.frozen),
            list(&scope.not_frozen)
        )
    };
    for n in &scope.notes {
        line.push_str("; ");
        line.push_str(&qmp::wire::escape(n));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_line_claims_a_freeze_only_for_a_quiesced_run() {
        let scope = qsnap::scope::FreezeScope {
            frozen: vec!["/data2".into()],
            not_frozen: vec!["/data".into()],
            notes: Vec::new(),
        };
        assert_eq!(
            scope_line(&scope, true),
            "freeze of /data2; left thawed (only on disks not in this run): /data"
        );
        assert!(
            scope_line(&scope, false).starts_with("not quiesced; the planned freeze of /data2"),
            "{}",
            scope_line(&scope, false)
        );
    }
}
