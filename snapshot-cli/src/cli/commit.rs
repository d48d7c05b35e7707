//! `qsnap commit`: live merge with a progress bar on a terminal.

use super::args::CommitArgs;
use super::{Global, need, output};
use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use qsnap::{CancellationToken, CommitReport, CommitRequest};
use std::io::IsTerminal;

pub(crate) async fn run(g: &Global, args: CommitArgs, cancel: &CancellationToken) -> Result<()> {
    let req = CommitRequest {
        qmp: need(&g.qmp, "--qmp")?,
        disk: args.disk,
        top: args.top,
        base: args.base,
        any_overlay: args.any_overlay,
        keep_overlay: args.keep_overlay,
    };
    let bar = (std::io::stderr().is_terminal() && !g.json && !g.quiet).then(|| {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("committing {}", req.disk));
        bar
    });
    let report = qsnap::commit(
        &req,
        |p| {
            if let Some(bar) = &bar {
                bar.set_length(p.total);
                bar.set_position(p.current);
            }
        },
        cancel,
    )
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    output::emit(g.json, &report?, human);
    Ok(())
}

fn human(r: &CommitReport) -> String {
    let device = r.device.as_deref().unwrap_or("?");
    let mut s = format!(
        "committed {} into {} ({:.0} ms); {device} now runs on:",
        r.top, r.base, r.ms
    );
    for (depth, file) in r.chain.iter().enumerate() {
        s.push_str(&format!("\n  {:width$}└ {file}", "", width = depth * 2));
    }
    if let Some(file) = &r.removed_overlay {
        s.push_str(&format!("\nremoved the merged overlay {file}"));
    }
    s
}
