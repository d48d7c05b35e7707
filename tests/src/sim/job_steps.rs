//! One job's steps through QEMU's status machine (`job.c`): progress, the work done at
//! the end, and the transitions with their events.

use super::args::{QmpResult, generic};
use super::graph::{Graph, Kind, Parent, not_found};
use super::image::{Content, FileLog, ImageMeta};
use super::jobs::{Events, Job, Phase, Work};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

/// Sets the status and emits `JOB_STATUS_CHANGE`.
pub(super) fn status(job: &mut Job, s: &str, ev: &mut Events) {
    job.info.status = s.to_owned();
    ev.push(("JOB_STATUS_CHANGE", json!({"id": job.info.id, "status": s})));
}

/// Only a block job (commit, backup) emits `BLOCK_JOB_*` events.
fn block_job(job: &Job) -> bool {
    matches!(job.work, Work::Commit { .. } | Work::Backup(_))
}

fn block_event(job: &Job) -> Value {
    json!({"type": job.info.kind, "device": job.info.id, "len": job.info.total_progress,
        "offset": job.info.current_progress, "speed": 0})
}

/// Moves a running job on by the time passed (all at once without a speed), and ends
/// its work when done: a failure scripted with `fail_job` comes first.
pub(super) fn advance(
    job: &mut Job,
    speed: Option<u64>,
    now: Instant,
    graph: &mut Graph,
    files: &mut FileLog,
    ev: &mut Events,
) {
    let ms = now.saturating_duration_since(job.last).as_millis().max(1) as u64;
    job.last = now;
    if matches!(&job.work, Work::Backup(b) if b.endless) {
        return;
    }
    let total = job.info.total_progress;
    let step = match (&job.work, speed) {
        (Work::Commit { .. } | Work::Backup(_), Some(s)) => s.saturating_mul(ms),
        _ => total,
    };
    job.info.current_progress = total.min(job.info.current_progress.saturating_add(step));
    if let Some(at) = job.fail_at.filter(|at| job.info.current_progress >= *at) {
        job.info.current_progress = at.min(total);
        return abort(job, graph, "Input/output error", "BLOCK_JOB_COMPLETED", ev);
    }
    if job.info.current_progress < total {
        return;
    }
    let done = match &job.work {
        Work::Commit {
            active: true,
            top,
            base,
        } => {
            // The mirror has copied everything into base: its bitmaps see the writes.
            graph.copy_down(top, base);
            job.phase = Phase::Ready;
            status(job, "ready", ev);
            ev.push(("BLOCK_JOB_READY", block_event(job)));
            return;
        }
        Work::Commit { top, base, .. } => {
            graph.commit(top, base);
            Ok(())
        }
        Work::Backup(_) => Ok(()),
        Work::CreateFile { filename, size } => create_file(graph, files, filename, *size),
        Work::CreateQcow2 { file, meta } => create_qcow2(graph, files, file, meta),
    };
    match done {
        Ok(()) => to_waiting(job, ev),
        Err(e) => abort(job, graph, &e.desc, "BLOCK_JOB_COMPLETED", ev),
    }
}

fn create_file(graph: &Graph, files: &mut FileLog, filename: &str, size: u64) -> QmpResult<()> {
    if graph.file_open(filename) {
        return Err(generic("Failed to get \"write\" lock"));
    }
    files.write(Path::new(filename), Content::Zeroes(size))
}

fn create_qcow2(graph: &Graph, files: &mut FileLog, file: &str, meta: &ImageMeta) -> QmpResult<()> {
    let Kind::File { filename } = &graph.node(file).ok_or_else(|| not_found(file))?.kind else {
        return Err(generic(format!("sim: '{file}' is not a file node")));
    };
    if let Some(user) = graph.parents(file).into_iter().next() {
        let user = match user {
            Parent::File(p) => format!("node '{p}' (uses node '{file}' as 'file' child)"),
            Parent::Backing(p) => format!("node '{p}' (uses node '{file}' as 'backing' child)"),
            Parent::Device(d) => format!("block device '{d}'"),
        };
        let desc = format!(
            "Permission conflict on node '{file}': permissions 'write, resize' are both required \
             by an unnamed block device (uses node '{file}' as 'root' child) and unshared by {user}."
        );
        return Err(generic(desc));
    }
    files.write(Path::new(filename), Content::Qcow2(meta))
}

/// The work is done: `waiting` until the rest of its group is too.
pub(super) fn to_waiting(job: &mut Job, ev: &mut Events) {
    job.phase = Phase::Waiting;
    status(job, "waiting", ev);
}

/// `pending`; `BLOCK_JOB_PENDING` only when a `job-finalize` is awaited.
pub(super) fn to_pending(job: &mut Job, ev: &mut Events) {
    job.phase = Phase::Pending;
    status(job, "pending", ev);
    if !job.auto_finalize {
        ev.push((
            "BLOCK_JOB_PENDING",
            json!({"type": job.info.kind, "id": job.info.id}),
        ));
    }
}

/// Commits a pending job: a backup releases its bitmap as on success.
pub(super) fn finalize(job: &mut Job, graph: &mut Graph, ev: &mut Events) {
    if let Work::Backup(b) = &job.work {
        b.cleanup(graph, true, job.info.current_progress);
    }
    conclude(job, None, "BLOCK_JOB_COMPLETED", ev);
}

/// Fails (or cancels) a job that has not concluded: a backup releases its bitmap as on
/// failure.
pub(super) fn abort(
    job: &mut Job,
    graph: &mut Graph,
    error: &str,
    event: &'static str,
    ev: &mut Events,
) {
    if let Work::Backup(b) = &job.work {
        b.cleanup(graph, false, job.info.current_progress);
    }
    status(job, "aborting", ev);
    conclude(job, Some(error.to_owned()), event, ev);
}

fn conclude(job: &mut Job, error: Option<String>, event: &'static str, ev: &mut Events) {
    job.info.error = error;
    if block_job(job) {
        let mut data = block_event(job);
        if let (Some(e), Some(obj)) = (&job.info.error, data.as_object_mut())
            && event == "BLOCK_JOB_COMPLETED"
        {
            obj.insert("error".into(), json!(e));
        }
        ev.push((event, data));
    }
    status(job, "concluded", ev);
    job.phase = Phase::Done;
    if job.auto_dismiss {
        status(job, "null", ev);
    }
}
