//! Following a backup's jobs to their end: progress, Ctrl-C (cancel every job and wait
//! for it to conclude), and which ones failed.

use crate::commit::Progress;
use crate::error::{Error, Result};
use qmp::commands::{JobCancel, QueryJobs};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

const POLL: Duration = Duration::from_millis(100);

/// How the jobs ended.
#[derive(Debug, Default)]
pub(crate) struct Ended {
    /// Jobs that failed, with QEMU's reason.
    pub(crate) failed: Vec<(String, String)>,
    /// The run was interrupted and the jobs cancelled.
    pub(crate) interrupted: bool,
}

/// Polls `query-jobs` until every job in `ids` concluded; cancels them all when
/// `cancel` fires. Reports summed progress.
pub(crate) async fn follow(
    qmp: &qmp::Client,
    ids: &[String],
    progress: &mut impl FnMut(Progress),
    cancel: &CancellationToken,
) -> Result<Ended> {
    let mut ended = Ended::default();
    let mut query_errors = 0;
    let mut stopping = false;
    loop {
        let jobs = match qmp.execute(&QueryJobs).await {
            Ok(j) => {
                query_errors = 0;
                j
            }
            Err(e) if e.is_disconnected() || query_errors >= 50 => {
                return Err(Error::qmp("query-jobs")(e));
            }
            Err(e) => {
                query_errors += 1;
                debug!(error = %e, "query-jobs failed; retrying");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let mine: Vec<_> = jobs.iter().filter(|j| ids.contains(&j.id)).collect();
        progress(Progress {
            current: mine
                .iter()
                .fold(0u64, |a, j| a.saturating_add(j.current_progress)),
            total: mine
                .iter()
                .fold(0u64, |a, j| a.saturating_add(j.total_progress)),
        });
        let vanished: Vec<_> = ids
            .iter()
            .filter(|id| !mine.iter().any(|j| j.id == **id))
            .collect();
        let all_done = mine.iter().all(|j| j.status == "concluded");
        if all_done {
            ended.failed = mine
                .iter()
                .filter_map(|j| Some((j.id.clone(), j.error.clone()?)))
                .chain(
                    vanished
                        .iter()
                        .map(|id| ((*id).clone(), "the job vanished".into())),
                )
                .collect();
            return Ok(ended);
        }
        // One failed job fails the backup: stop the others at once (while a copy
        // runs, QEMU's backup filter stands between the guest and its disk).
        let failed = mine
            .iter()
            .any(|j| j.status == "concluded" && j.error.is_some());
        if failed && !stopping {
            warn!("a backup job failed: cancelling the others");
            cancel_running(qmp, &mine).await;
            stopping = true;
        }
        if cancel.is_cancelled() && !ended.interrupted {
            warn!("interrupted: cancelling the backup jobs");
            cancel_running(qmp, &mine).await;
            ended.interrupted = true;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = cancel.cancelled(), if !ended.interrupted => {}
        }
    }
}

/// Cancels the jobs of `jobs` that have not concluded.
async fn cancel_running(qmp: &qmp::Client, jobs: &[&qmp::commands::JobInfo]) {
    for j in jobs.iter().filter(|j| j.status != "concluded") {
        if let Err(e) = qmp.execute(&JobCancel { id: j.id.clone() }).await {
            debug!(job = j.id, error = %e, "cancel refused");
        }
    }
}
