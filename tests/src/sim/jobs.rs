//! Simulated QEMU jobs (`qapi/job.json`): `create` jobs from `blockdev-create` and
//! `commit` jobs from `block-commit`, with their status machine and events.

use super::args::{QmpErr, QmpResult, generic};
use super::graph::{FileLog, Graph, ImageMeta, Kind, Parent, not_found};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// One job as `query-jobs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimJob {
    /// The job id.
    pub id: String,
    /// `create` or `commit`.
    pub kind: String,
    /// QEMU's status: `created`, `running`, `ready`, `waiting`, `pending`, `aborting`,
    /// `concluded`.
    pub status: String,
    /// Progress so far.
    pub current_progress: u64,
    /// Total work.
    pub total_progress: u64,
    /// Why a concluded job failed.
    pub error: Option<String>,
}

/// What a job does when its work is done.
#[derive(Debug, Clone)]
pub(super) enum Work {
    CreateFile {
        filename: String,
        size: u64,
    },
    CreateQcow2 {
        file: String,
        meta: ImageMeta,
    },
    Commit {
        top: String,
        base: String,
        active: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Ready,
    Completing,
    Cancelling,
    Done,
}

#[derive(Debug)]
struct Job {
    info: SimJob,
    work: Work,
    phase: Phase,
    auto_dismiss: bool,
    fail_at: Option<u64>,
    /// Nodes the job blocks until it is dismissed.
    nodes: Vec<String>,
    last: Instant,
}

/// Events produced while changing jobs: `(name, data)`.
pub(super) type Events = Vec<(&'static str, Value)>;

/// Every job not yet dismissed, and the job knobs.
#[derive(Debug, Default)]
pub(super) struct Jobs {
    list: Vec<Job>,
    /// Commit speed in bytes per millisecond; `None` finishes at the first tick.
    pub(super) speed: Option<u64>,
    /// `(kind, at_progress)`: the next job of that kind fails there.
    pub(super) fail: Vec<(String, u64)>,
}

impl Jobs {
    /// What `query-jobs` shows.
    pub(super) fn infos(&self) -> Vec<SimJob> {
        self.list.iter().map(|j| j.info.clone()).collect()
    }

    /// QEMU's refusal to touch a node a job holds.
    pub(super) fn blocker(&self, node: &str) -> Option<QmpErr> {
        let job = self
            .list
            .iter()
            .find(|j| j.nodes.iter().any(|n| n == node))?;
        Some(generic(format!(
            "Node '{node}' is busy: block device is in use by block job: {}",
            job.info.kind
        )))
    }

    /// Starts a job: `created` then `running`.
    pub(super) fn start(
        &mut self,
        id: String,
        work: Work,
        total: u64,
        nodes: Vec<String>,
        auto_dismiss: bool,
        ev: &mut Events,
    ) -> QmpResult<()> {
        if self.list.iter().any(|j| j.info.id == id) {
            return Err(generic(format!("Job ID '{id}' already in use")));
        }
        let kind = if matches!(work, Work::Commit { .. }) {
            "commit"
        } else {
            "create"
        };
        let fail_at = self
            .fail
            .iter()
            .position(|(k, _)| k == kind)
            .map(|i| self.fail.remove(i).1);
        let info = SimJob {
            id,
            kind: kind.into(),
            status: String::new(),
            current_progress: 0,
            total_progress: total,
            error: None,
        };
        let mut job = Job {
            info,
            work,
            phase: Phase::Running,
            auto_dismiss,
            fail_at,
            nodes,
            last: Instant::now(),
        };
        status(&mut job, "created", ev);
        status(&mut job, "running", ev);
        self.list.push(job);
        Ok(())
    }

    fn find(&mut self, id: &str) -> QmpResult<&mut Job> {
        self.list
            .iter_mut()
            .find(|j| j.info.id == id)
            .ok_or_else(|| generic("Job not found"))
    }

    /// `job-complete`: only a `ready` job accepts it; it pivots at the next tick.
    pub(super) fn complete(&mut self, id: &str) -> QmpResult<()> {
        let job = self.find(id)?;
        verb(job, "complete", &["ready"])?;
        job.phase = Phase::Completing;
        Ok(())
    }

    /// `job-cancel`: before `ready` the job aborts; a `ready` mirror (active commit)
    /// completes without pivoting, as QEMU does for a soft cancel.
    pub(super) fn cancel(&mut self, id: &str) -> QmpResult<()> {
        let job = self.find(id)?;
        verb(job, "cancel", &["created", "running", "ready"])?;
        job.phase = Phase::Cancelling;
        Ok(())
    }

    /// `job-dismiss`: only a `concluded` job; it is then gone.
    pub(super) fn dismiss(&mut self, id: &str, ev: &mut Events) -> QmpResult<()> {
        let job = self.find(id)?;
        verb(job, "dismiss", &["concluded"])?;
        status(job, "null", ev);
        self.list.retain(|j| j.info.id != id);
        Ok(())
    }

    /// Advances every job; returns when to tick again (`None`: nothing moves by itself).
    pub(super) fn tick(
        &mut self,
        graph: &mut Graph,
        files: &mut FileLog,
        now: Instant,
        ev: &mut Events,
    ) -> Option<Duration> {
        let speed = self.speed;
        for job in &mut self.list {
            match job.phase {
                Phase::Running => advance(job, speed, now, graph, files, ev),
                Phase::Completing => {
                    if let Work::Commit { top, base, .. } = &job.work {
                        graph.commit(top, base);
                    }
                    succeed(job, ev);
                }
                Phase::Cancelling if job.info.status == "ready" => succeed(job, ev),
                Phase::Cancelling => fail(job, "Operation canceled", "BLOCK_JOB_CANCELLED", ev),
                Phase::Ready | Phase::Done => {}
            }
        }
        self.list
            .retain(|j| !(j.phase == Phase::Done && j.auto_dismiss));
        let moving = self.list.iter().any(|j| j.phase == Phase::Running);
        moving.then_some(Duration::from_millis(1))
    }
}

fn verb(job: &Job, verb: &str, allowed: &[&str]) -> QmpResult<()> {
    let st = job.info.status.as_str();
    if allowed.contains(&st) {
        return Ok(());
    }
    Err(generic(format!(
        "Job '{}' in state '{st}' cannot accept command verb '{verb}'",
        job.info.id
    )))
}

fn status(job: &mut Job, s: &str, ev: &mut Events) {
    job.info.status = s.to_owned();
    ev.push(("JOB_STATUS_CHANGE", json!({"id": job.info.id, "status": s})));
}

fn block_event(job: &Job) -> Value {
    json!({"type": job.info.kind, "device": job.info.id, "len": job.info.total_progress,
        "offset": job.info.current_progress, "speed": 0})
}

fn advance(
    job: &mut Job,
    speed: Option<u64>,
    now: Instant,
    graph: &mut Graph,
    files: &mut FileLog,
    ev: &mut Events,
) {
    let ms = now.saturating_duration_since(job.last).as_millis().max(1) as u64;
    job.last = now;
    let total = job.info.total_progress;
    let step = match (&job.work, speed) {
        (Work::Commit { .. }, Some(s)) => s.saturating_mul(ms),
        _ => total,
    };
    job.info.current_progress = total.min(job.info.current_progress.saturating_add(step));
    if let Some(at) = job.fail_at.filter(|at| job.info.current_progress >= *at) {
        job.info.current_progress = at.min(total);
        return fail(job, "Input/output error", "BLOCK_JOB_COMPLETED", ev);
    }
    if job.info.current_progress < total {
        return;
    }
    let done = match &job.work {
        Work::Commit { active: true, .. } => {
            job.phase = Phase::Ready;
            status(job, "ready", ev);
            ev.push(("BLOCK_JOB_READY", block_event(job)));
            return;
        }
        Work::Commit { top, base, .. } => {
            graph.commit(top, base);
            Ok(())
        }
        Work::CreateFile { filename, size } => create_file(graph, files, filename, *size),
        Work::CreateQcow2 { file, meta } => create_qcow2(graph, files, file, meta),
    };
    match done {
        Ok(()) => succeed(job, ev),
        Err(e) => fail(job, &e.desc, "BLOCK_JOB_COMPLETED", ev),
    }
}

fn create_file(graph: &Graph, files: &mut FileLog, filename: &str, size: u64) -> QmpResult<()> {
    if graph.file_open(filename) {
        return Err(generic("Failed to get \"write\" lock"));
    }
    files.write(Path::new(filename), size, None)
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
    files.write(Path::new(filename), 0, Some(meta))
}

fn succeed(job: &mut Job, ev: &mut Events) {
    status(job, "waiting", ev);
    status(job, "pending", ev);
    conclude(job, None, "BLOCK_JOB_COMPLETED", ev);
}

fn fail(job: &mut Job, error: &str, event: &'static str, ev: &mut Events) {
    status(job, "aborting", ev);
    conclude(job, Some(error.to_owned()), event, ev);
}

fn conclude(job: &mut Job, error: Option<String>, event: &'static str, ev: &mut Events) {
    job.info.error = error;
    if job.info.kind == "commit" {
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
