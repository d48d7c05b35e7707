//! Job commands (`qapi/job.json`) and `block-commit`.

use super::command;
use crate::wire::Empty;
use serde::{Deserialize, Serialize};

/// `query-jobs`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryJobs;
command!(QueryJobs, "query-jobs", Vec<JobInfo>);

/// One job, from `query-jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobInfo {
    /// The job id.
    pub id: String,
    /// The job type, e.g. `commit`, `create`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `created`, `running`, `ready`, `concluded`, ...
    pub status: String,
    /// Progress so far, in the job's own unit.
    pub current_progress: u64,
    /// Estimated total, in the same unit.
    pub total_progress: u64,
    /// Set when a concluded job failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `block-commit`: merges `top` (default: the active layer) down into `base`.
///
/// Committing the active layer is a mirror job: it emits `BLOCK_JOB_READY` and then
/// waits for [`JobComplete`].
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockCommit {
    /// Job id (default: the device name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The node (or device) whose chain is committed.
    pub device: String,
    /// The node to commit into (default: the bottom of the chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_node: Option<String>,
    /// The node to commit from (default: the active layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_node: Option<String>,
    /// Speed limit in bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
    /// Dismiss the job automatically when it concludes (QEMU's default: true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_dismiss: Option<bool>,
}
command!(BlockCommit, "block-commit", Empty);

/// `job-complete`: finishes a job waiting in `ready`.
#[derive(Debug, Clone, Serialize)]
pub struct JobComplete {
    /// The job id.
    pub id: String,
}
command!(JobComplete, "job-complete", Empty);

/// `job-cancel`.
#[derive(Debug, Clone, Serialize)]
pub struct JobCancel {
    /// The job id.
    pub id: String,
}
command!(JobCancel, "job-cancel", Empty);

/// `job-dismiss`: removes a concluded job.
#[derive(Debug, Clone, Serialize)]
pub struct JobDismiss {
    /// The job id.
    pub id: String,
}
command!(JobDismiss, "job-dismiss", Empty);
