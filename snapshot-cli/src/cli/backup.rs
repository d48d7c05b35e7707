//! `qsnap backup`, `restore`, `verify`, `backups`.

use super::args::{BackupArgs, RestoreArgs};
use super::{Global, metrics, output, snapshot};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use qsnap::backup::{BackupList, RestoreReport, VerifyReport};
use qsnap::{BackupReport, BackupRequest, CancellationToken, Consistency};
use serde_json::json;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often `--json` prints a progress event.
const EVENT_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run(g: &Global, args: BackupArgs, cancel: &CancellationToken) -> Result<()> {
    let req = BackupRequest {
        vm: snapshot::request(g, args.window)?,
        target: args.target,
        incremental: args.incremental,
        speed: args.speed,
    };
    let bar = (std::io::stderr().is_terminal() && !g.json && !g.quiet).then(|| {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("backing up");
        bar
    });
    let mut last_event: Option<Instant> = None;
    let started = Instant::now();
    let result = qsnap::backup(&req, cancel, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total);
            bar.set_position(p.current);
        }
        if g.json && last_event.is_none_or(|t| t.elapsed() >= EVENT_EVERY) {
            last_event = Some(Instant::now());
            output::line(
                &json!({"event": "progress", "current": p.current, "total": p.total}).to_string(),
            );
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    metrics::record(
        args.metrics.metrics_file.as_deref(),
        "backup",
        &req.vm.qmp,
        started,
        &metrics::Ended::backup(&result),
    );
    let report = match result {
        Ok(r) => r,
        Err(qsnap::Error::BackupNotConsistent { reason, report }) => {
            if !g.json {
                output::emit(false, report.as_ref(), human);
            }
            return Err(qsnap::Error::BackupNotConsistent { reason, report }.into());
        }
        Err(e) => return Err(e.into()),
    };
    output::emit(g.json, &report, human);
    Ok(())
}

fn size(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

fn human(r: &BackupReport) -> String {
    let m = &r.manifest;
    let mut s = String::new();
    let how = match m.consistency {
        Consistency::Quiesced => format!(
            "quiesced: {} filesystem(s) frozen for {:.1} ms (backup started in {:.2} ms of it)",
            m.frozen_filesystems,
            r.timings_ms.common.frozen_window,
            r.timings_ms.common.in_freeze_overhead
        ),
        Consistency::CrashConsistent => "crash-consistent (not quiesced)".to_owned(),
    };
    let kind = match m.kind {
        qsnap::backup::manifest::Kind::Full => "full".to_owned(),
        qsnap::backup::manifest::Kind::Incremental => {
            format!("incremental on {}", m.parent.as_deref().unwrap_or("?"))
        }
    };
    let _ = writeln!(s, "backup {} ({kind}) at {}: {how}", m.id, m.instant);
    for d in &m.disks {
        let _ = writeln!(
            s,
            "  {}: {} ({} of data, {} on disk) sha256 {}",
            d.disk,
            d.image,
            size(d.data_bytes),
            size(d.file_bytes),
            d.sha256.as_deref().unwrap_or("-")
        );
    }
    if let Some(scope) = &r.freeze_scope {
        let quiesced = m.consistency == Consistency::Quiesced;
        let _ = writeln!(s, "  {}", snapshot::scope_line(scope, quiesced));
    }
    for w in &m.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    let _ = write!(
        s,
        "  manifest {}; copy {:.0} ms, total {:.0} ms",
        r.manifest_path.display(),
        r.timings_ms.copy,
        r.timings_ms.common.total
    );
    s
}

pub(crate) async fn restore(
    g: &Global,
    args: RestoreArgs,
    cancel: &CancellationToken,
) -> Result<()> {
    let r = qsnap::backup::content::stoppable(cancel, move |stop| {
        qsnap::backup::restore(
            &args.backup,
            args.disk.as_deref(),
            &args.to,
            &args.format,
            stop,
        )
    })
    .await?;
    output::emit(g.json, &r, |r: &RestoreReport| {
        format!(
            "restored disk {} of backup {} to {} ({}), from {} image(s); content sha256 {} matches the manifest",
            r.disk,
            r.backup,
            r.to.display(),
            r.format,
            r.chain.len(),
            r.sha256
        )
    });
    Ok(())
}

pub(crate) async fn verify(g: &Global, backup: &Path, cancel: &CancellationToken) -> Result<()> {
    let backup = backup.to_owned();
    let r =
        qsnap::backup::content::stoppable(cancel, move |stop| qsnap::backup::verify(&backup, stop))
            .await?;
    output::emit(g.json, &r, |r: &VerifyReport| {
        format!(
            "backup {} verified: {} image(s) in a chain of {} ({}): consistent, chained as recorded, checksums match",
            r.backup,
            r.images,
            r.chain.len(),
            r.chain.join(" <- ")
        )
    });
    Ok(())
}

pub(crate) fn list(g: &Global, dir: &Path) -> Result<()> {
    let l = qsnap::backup::list(dir)?;
    output::emit(g.json, &l, |l: &BackupList| {
        let mut s = String::new();
        for (i, c) in l.chains.iter().enumerate() {
            let _ = writeln!(s, "chain {}:", i + 1);
            for b in &c.backups {
                let _ = writeln!(
                    s,
                    "  {} {:<11} {} disks {} data {}",
                    b.id,
                    format!("{:?}", b.kind).to_lowercase(),
                    b.instant,
                    b.disks.join(","),
                    size(b.data_bytes)
                );
            }
        }
        for b in &l.incomplete {
            let _ = writeln!(s, "not restorable: {} ({:?})", b.id, b.state);
        }
        if l.chains.is_empty() && l.incomplete.is_empty() {
            s.push_str("no backups");
        }
        s.trim_end().to_owned()
    });
    Ok(())
}
