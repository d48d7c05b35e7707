//! `blockdev-backup` (`blockdev.c` `do_backup_common`, `block/backup.c`): its checks
//! and texts, what the job copies, and what it does to its sync bitmap at the end.

use super::args::{Args, QmpResult, generic};
use super::chunks::Chunks;
use super::graph::Graph;
use super::jobs::{Events, JobOpts, Jobs, Work};

/// QEMU's `BitmapSyncMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BitmapMode {
    OnSuccess,
    Never,
    Always,
}

impl BitmapMode {
    fn parse(s: &str) -> Option<BitmapMode> {
        match s {
            "on-success" => Some(BitmapMode::OnSuccess),
            "never" => Some(BitmapMode::Never),
            "always" => Some(BitmapMode::Always),
            _ => None,
        }
    }
}

/// A running backup's state.
#[derive(Debug, Clone)]
pub(super) struct BackupWork {
    node: String,
    bitmap: Option<String>,
    mode: BitmapMode,
    /// What it copies, in order (`current-progress` bytes of it are done); `None`:
    /// the whole disk, in `unit` chunks.
    copy: Option<Chunks>,
    unit: u64,
    size: u64,
    /// `sync: none`: it runs until cancelled.
    pub(super) endless: bool,
}

impl BackupWork {
    /// QEMU's `backup_cleanup_sync_bitmap`: the successor replaces the bitmap on
    /// success (or always with `always`), else it is merged back; a failed `always`
    /// job then adds what it did not copy.
    pub(super) fn cleanup(&self, graph: &mut Graph, ok: bool, progress: u64) {
        let Some(name) = &self.bitmap else {
            return;
        };
        let mode = self.mode;
        let sync = (ok || mode == BitmapMode::Always) && mode != BitmapMode::Never;
        let uncopied = (!ok && mode == BitmapMode::Always).then(|| match &self.copy {
            Some(c) => c.after(progress / c.unit()),
            None => {
                let mut c = Chunks::new(self.unit, self.size);
                c.mark(progress / self.unit * self.unit, self.size);
                c
            }
        });
        graph.thaw(&self.node, name, sync, uncopied.as_ref());
    }
}

/// A parsed `blockdev-backup`.
#[derive(Debug, Clone)]
pub(super) struct BackupArgs {
    job_id: Option<String>,
    device: String,
    target: String,
    sync: String,
    bitmap: Option<String>,
    mode: Option<BitmapMode>,
    auto_finalize: bool,
    auto_dismiss: bool,
}

fn bad_value(a: &Args, key: &str, value: &str) -> super::args::QmpErr {
    let full = a.full(key);
    generic(format!(
        "Parameter '{full}' does not accept value '{value}'"
    ))
}

impl BackupArgs {
    pub(super) fn parse(mut a: Args) -> QmpResult<BackupArgs> {
        let job_id = a.opt_str("job-id")?;
        let device = a.str("device")?;
        let target = a.str("target")?;
        let sync = a.str("sync")?;
        if !["top", "full", "none", "incremental", "bitmap"].contains(&sync.as_str()) {
            return Err(bad_value(&a, "sync", &sync));
        }
        let bitmap = a.opt_str("bitmap")?;
        let mode = match a.opt_str("bitmap-mode")? {
            None => None,
            Some(m) => Some(BitmapMode::parse(&m).ok_or_else(|| bad_value(&a, "bitmap-mode", &m))?),
        };
        let auto_finalize = a.opt_bool("auto-finalize")?.unwrap_or(true);
        let auto_dismiss = a.opt_bool("auto-dismiss")?.unwrap_or(true);
        a.opt_u64("speed")?;
        a.opt_bool("compress")?;
        a.opt_bool("discard-source")?;
        a.ignore(&[
            "on-source-error",
            "on-target-error",
            "filter-node-name",
            "x-perf",
        ]);
        a.finish()?;
        Ok(BackupArgs {
            job_id,
            device,
            target,
            sync,
            bitmap,
            mode,
            auto_finalize,
            auto_dismiss,
        })
    }

    /// Checks in QEMU's order, freezes the sync bitmap and starts the job, which holds
    /// its target.
    pub(super) fn start(
        &self,
        graph: &mut Graph,
        jobs: &mut Jobs,
        group: Option<u64>,
        ev: &mut Events,
    ) -> QmpResult<()> {
        graph.get(&self.device)?;
        graph.get(&self.target)?;
        let (sync, mode) = self.modes()?;
        let mut copy = None;
        let mut unit = 65536;
        if let Some(name) = &self.bitmap {
            let b = graph
                .lookup(&self.device, name)
                .map_err(|_| generic(format!("Bitmap '{name}' could not be found")))?;
            let Some(mode) = mode else {
                return Err(generic(
                    "Bitmap sync mode must be given when providing a bitmap",
                ));
            };
            b.check(true)?;
            if sync == "none" {
                return Err(generic(
                    "sync mode 'none' does not produce meaningful bitmap outputs",
                ));
            }
            if mode == BitmapMode::Never && sync != "bitmap" {
                return Err(generic(format!(
                    "Bitmap sync mode 'never' has no meaningful effect when combined with sync \
                     mode '{sync}'"
                )));
            }
            unit = b.dirty.unit();
            if sync == "bitmap" {
                copy = Some(b.dirty.clone());
            }
        } else if mode.is_some() {
            return Err(generic("Cannot specify bitmap sync mode without a bitmap"));
        }
        if self.device == self.target {
            return Err(generic("Source and target cannot be the same"));
        }
        if let Some(e) = jobs
            .blocker(&self.device)
            .or_else(|| jobs.blocker(&self.target))
        {
            return Err(e);
        }
        let size = graph.length(&self.device);
        if sync == "top" {
            copy = graph.node(&self.device).map(|n| n.written.clone());
        }
        let total = copy.as_ref().map_or(size, Chunks::bytes);
        if let Some(name) = &self.bitmap {
            graph.freeze(&self.device, name)?;
        }
        let work = BackupWork {
            node: self.device.clone(),
            bitmap: self.bitmap.clone(),
            mode: mode.unwrap_or(BitmapMode::Never),
            copy,
            unit,
            size,
            endless: sync == "none",
        };
        let id = self.job_id.clone().unwrap_or_default();
        if id.is_empty() {
            return Err(generic(format!("Invalid job ID '{id}'")));
        }
        let opts = JobOpts {
            auto_dismiss: self.auto_dismiss,
            auto_finalize: self.auto_finalize,
            group,
        };
        let nodes = vec![self.target.clone()];
        jobs.start(id, Work::Backup(work), total, nodes, opts, ev)
    }

    /// The sync mode and bitmap mode after QEMU's rewrite of `incremental`.
    fn modes(&self) -> QmpResult<(&str, Option<BitmapMode>)> {
        let sync = self.sync.as_str();
        if matches!(sync, "bitmap" | "incremental") && self.bitmap.is_none() {
            return Err(generic(format!(
                "must provide a valid bitmap name for '{sync}' sync mode"
            )));
        }
        if sync != "incremental" {
            return Ok((sync, self.mode));
        }
        if self.mode.is_some_and(|m| m != BitmapMode::OnSuccess) {
            return Err(generic(
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'",
            ));
        }
        Ok(("bitmap", Some(BitmapMode::OnSuccess)))
    }
}
