//! Simulated QEMU jobs (`qapi/job.json`): `create` jobs from `blockdev-create`,
//! `commit` jobs from `block-commit` and `backup` jobs from `blockdev-backup`, with
//! their status machine, events and transaction groups (`completion-mode: grouped`).

use super::args::{QmpErr, QmpResult, generic};
use super::backup::BackupWork;
use super::graph::Graph;
use super::image::{FileLog, ImageMeta};
use super::job_steps::{abort, advance, finalize, status, to_pending, to_waiting};
use serde_json::Value;
use std::time::{Duration, Instant};

/// One job as `query-jobs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimJob {
    /// The job id.
    pub id: String,
    /// `create`, `commit` or `backup`.
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
    Backup(BackupWork),
}

impl Work {
    fn kind(&self) -> &'static str {
        match self {
            Work::CreateFile { .. } | Work::CreateQcow2 { .. } => "create",
            Work::Commit { .. } => "commit",
            Work::Backup(_) => "backup",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    Ready,
    Completing,
    Cancelling,
    /// Work done, waiting for the rest of its group.
    Waiting,
    /// Waiting for `job-finalize`.
    Pending,
    Done,
}

/// How a job ends, as `auto-dismiss`, `auto-finalize` and its transaction set it.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobOpts {
    pub(super) auto_dismiss: bool,
    pub(super) auto_finalize: bool,
    /// The grouped transaction that started it: one failure cancels the others, and
    /// none leaves `waiting` before all are there.
    pub(super) group: Option<u64>,
}

#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) info: SimJob,
    pub(super) work: Work,
    pub(super) phase: Phase,
    pub(super) auto_dismiss: bool,
    pub(super) auto_finalize: bool,
    group: Option<u64>,
    pub(super) fail_at: Option<u64>,
    /// Nodes the job blocks until it is dismissed.
    nodes: Vec<String>,
    pub(super) last: Instant,
}

impl Job {
    fn with(&self, other: &Job) -> bool {
        self.info.id == other.info.id || (self.group.is_some() && self.group == other.group)
    }

    /// Moves by itself (a `sync: none` backup waits for its cancel).
    fn moves(&self) -> bool {
        self.phase == Phase::Running && !matches!(&self.work, Work::Backup(b) if b.endless)
    }
}

/// Events produced while changing jobs: `(name, data)`.
pub(super) type Events = Vec<(&'static str, Value)>;

/// Every job not yet dismissed, and the job knobs. Cloned to try a `transaction`.
#[derive(Debug, Default, Clone)]
pub(super) struct Jobs {
    list: Vec<Job>,
    /// Commit and backup speed in bytes per millisecond; `None` finishes at once.
    pub(super) speed: Option<u64>,
    /// `(kind, at_progress)`: the next job of that kind fails there.
    pub(super) fail: Vec<(String, u64)>,
    groups: u64,
}

impl Jobs {
    /// What `query-jobs` shows.
    pub(super) fn infos(&self) -> Vec<SimJob> {
        self.list.iter().map(|j| j.info.clone()).collect()
    }

    /// A new transaction group.
    pub(super) fn new_group(&mut self) -> u64 {
        self.groups += 1;
        self.groups
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

    /// Whether job `id` exists (dismissed jobs do not).
    pub(super) fn exists(&self, id: &str) -> bool {
        self.list.iter().any(|j| j.info.id == id)
    }

    /// Starts a job: `created` then `running`.
    pub(super) fn start(
        &mut self,
        id: String,
        work: Work,
        total: u64,
        nodes: Vec<String>,
        opts: JobOpts,
        ev: &mut Events,
    ) -> QmpResult<()> {
        if self.exists(&id) {
            return Err(generic(format!("Job ID '{id}' already in use")));
        }
        let kind = work.kind();
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
            auto_dismiss: opts.auto_dismiss,
            auto_finalize: opts.auto_finalize,
            group: opts.group,
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

    /// `job-cancel`: the job aborts at the next tick; a `ready` mirror (active commit)
    /// completes without pivoting, as QEMU does for a soft cancel.
    pub(super) fn cancel(&mut self, id: &str) -> QmpResult<()> {
        let job = self.find(id)?;
        verb(
            job,
            "cancel",
            &["created", "running", "ready", "waiting", "pending"],
        )?;
        job.phase = Phase::Cancelling;
        Ok(())
    }

    /// `job-finalize`: a `pending` job and the rest of its group conclude.
    pub(super) fn finalize(
        &mut self,
        id: &str,
        graph: &mut Graph,
        ev: &mut Events,
    ) -> QmpResult<()> {
        let job = self.find(id)?;
        verb(job, "finalize", &["pending"])?;
        let job = job.clone();
        for j in self.list.iter_mut().filter(|j| j.with(&job)) {
            if j.phase == Phase::Pending {
                finalize(j, graph, ev);
            }
        }
        self.list
            .retain(|j| !(j.phase == Phase::Done && j.auto_dismiss));
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
        let mut failed_groups = Vec::new();
        for job in &mut self.list {
            let was_done = job.phase == Phase::Done;
            match job.phase {
                Phase::Running => advance(job, speed, now, graph, files, ev),
                Phase::Completing => {
                    if let Work::Commit { top, base, .. } = &job.work {
                        graph.commit(top, base);
                    }
                    to_waiting(job, ev);
                }
                Phase::Cancelling if job.info.status == "ready" => to_waiting(job, ev),
                Phase::Cancelling => {
                    abort(job, graph, "Operation canceled", "BLOCK_JOB_CANCELLED", ev)
                }
                Phase::Ready | Phase::Waiting | Phase::Pending | Phase::Done => {}
            }
            if !was_done && job.phase == Phase::Done {
                failed_groups.extend(job.group);
            }
        }
        for job in &mut self.list {
            if job.phase != Phase::Done && job.group.is_some_and(|g| failed_groups.contains(&g)) {
                abort(job, graph, "Operation canceled", "BLOCK_JOB_CANCELLED", ev);
            }
        }
        self.settle(graph, ev);
        self.list
            .retain(|j| !(j.phase == Phase::Done && j.auto_dismiss));
        let moving = self.list.iter().any(Job::moves);
        moving.then_some(Duration::from_millis(1))
    }

    /// Moves every group whose jobs all wait on to `pending`, and concludes it unless a
    /// job awaits `job-finalize`.
    fn settle(&mut self, graph: &mut Graph, ev: &mut Events) {
        while let Some(first) = self.list.iter().find(|j| {
            j.phase == Phase::Waiting
                && self
                    .list
                    .iter()
                    .filter(|o| o.with(j))
                    .all(|o| o.phase == Phase::Waiting)
        }) {
            let first = first.clone();
            let auto = self
                .list
                .iter()
                .filter(|o| o.with(&first))
                .all(|o| o.auto_finalize);
            for j in self.list.iter_mut().filter(|j| j.with(&first)) {
                to_pending(j, ev);
            }
            if auto {
                for j in self.list.iter_mut().filter(|j| j.with(&first)) {
                    finalize(j, graph, ev);
                }
            }
        }
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
