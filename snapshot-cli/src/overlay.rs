//! Preparing overlays outside the freeze, and removing them again.
//!
//! QEMU does not protect files it has not opened: `blockdev-create` truncates an
//! existing file and reports success. So each overlay file is created here with
//! `O_CREAT|O_EXCL` (never an existing path, never through a symlink), with the owner
//! and mode of the active image; only then does QEMU open and format it.
//!
//! Everything this run creates is recorded in [`Prepared`]. Rolling back deletes the
//! nodes it added (qcow2 node, then file node: the other order is "in use") and then
//! unlinks only the files it created — and only a file whose nodes are gone, so a file
//! QEMU still uses as an active overlay is never unlinked.

use crate::error::{Error, Result};
use qmp::commands::{
    BackingRef, BlockdevAdd, BlockdevCreate, BlockdevCreateOptions, BlockdevDel, BlockdevOptions,
    JobCancel, JobDismiss, QueryBlock, QueryJobs, QueryNamedBlockNodes,
};
use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tracing::{debug, warn};

/// How long a `blockdev-create` job may take (it writes a qcow2 header).
const CREATE_JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// A file this run created: its path and the identity (device, inode) it had then.
#[derive(Debug, Clone)]
pub(crate) struct CreatedFile {
    pub(crate) path: PathBuf,
    dev: u64,
    ino: u64,
    /// Birth time: an inode number is reused at once after an unlink, a birth time
    /// is not.
    born: Option<std::time::SystemTime>,
}

impl CreatedFile {
    fn is(&self, m: &std::fs::Metadata) -> bool {
        m.dev() == self.dev && m.ino() == self.ino && m.created().ok() == self.born
    }

    /// Unlinks the file only if the path still names the inode this run created
    /// (in a shared directory someone may have replaced it since).
    pub(crate) fn remove(&self) -> std::result::Result<(), String> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if self.is(&m) => std::fs::remove_file(&self.path).map_err(|e| e.to_string()),
            Ok(_) => Err("the path now names another file; left alone".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Creates `path` exclusively, with the mode and owner of `like`.
pub(crate) fn create_exclusive(path: &Path, like: &Path) -> Result<CreatedFile> {
    let io = |what| {
        let path = path.to_owned();
        move |source| Error::Io { what, path, source }
    };
    let meta = std::fs::metadata(like).map_err(io("cannot read the active image"))?;
    let mode = meta.mode() & 0o666;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::OverlayExists(path.to_owned()),
            _ => io("cannot create overlay")(e),
        })?;
    // The umask may have narrowed the mode; the owner needs root to change, and is
    // already ours otherwise.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot set the mode of"))?;
    if let Err(e) = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid())) {
        debug!(error = %e, "overlay keeps this process's owner");
    }
    let created = file.metadata().map_err(io("cannot inspect"))?;
    Ok(CreatedFile {
        path: path.to_owned(),
        dev: created.dev(),
        ino: created.ino(),
        born: created.created().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_creation_never_touches_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let like = dir.path().join("active.qcow2");
        std::fs::write(&like, b"image").unwrap();
        std::fs::set_permissions(&like, std::fs::Permissions::from_mode(0o640)).unwrap();
        let taken = dir.path().join("taken.qcow2");
        std::fs::write(&taken, b"known content").unwrap();
        let err = create_exclusive(&taken, &like).unwrap_err();
        assert!(matches!(err, Error::OverlayExists(_)), "{err:?}");
        assert_eq!(std::fs::read(&taken).unwrap(), b"known content");
        let link = dir.path().join("link.qcow2");
        std::os::unix::fs::symlink(&like, &link).unwrap();
        assert!(matches!(
            create_exclusive(&link, &like),
            Err(Error::OverlayExists(_))
        ));
        assert_eq!(std::fs::read(&like).unwrap(), b"image");
        let fresh = dir.path().join("fresh.qcow2");
        create_exclusive(&fresh, &like).unwrap();
        let meta = std::fs::metadata(&fresh).unwrap();
        assert_eq!((meta.len(), meta.mode() & 0o777), (0, 0o640));
    }

    #[test]
    fn rollback_never_unlinks_a_file_that_replaced_the_one_it_created() {
        let dir = tempfile::tempdir().unwrap();
        let like = dir.path().join("active.qcow2");
        std::fs::write(&like, b"image").unwrap();
        let path = dir.path().join("o.qcow2");
        let created = create_exclusive(&path, &like).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        assert!(created.remove().is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");
        std::fs::remove_file(&path).unwrap();
        let created = create_exclusive(&path, &like).unwrap();
        created.remove().unwrap();
        assert!(!path.exists());
        created.remove().unwrap();
    }
}

/// A qcow2 image to create and open (with `"backing": null`): an overlay, or a
/// backup target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewImage {
    /// The file to create (exclusively).
    pub(crate) path: PathBuf,
    /// The file whose owner and mode it gets.
    pub(crate) like: PathBuf,
    /// Its qcow2 node.
    pub(crate) node: String,
    /// Its file node.
    pub(crate) file_node: String,
    /// Its exact virtual size.
    pub(crate) size: u64,
    /// The backing file and its format recorded in the header.
    pub(crate) backing: Option<(String, String)>,
    /// Its cluster size.
    pub(crate) cluster_size: Option<u64>,
}

#[derive(Debug, Default)]
struct Created {
    /// Create jobs started (a job, even concluded, holds its node until dismissed).
    jobs: Vec<String>,
    /// Nodes added, in order.
    nodes: Vec<String>,
    /// Files created.
    files: Vec<CreatedFile>,
}

/// What this run created; behind a mutex so concurrent per-disk preparation can
/// record into it.
#[derive(Debug)]
pub(crate) struct Prepared {
    qmp: qmp::Client,
    created: Mutex<Created>,
    /// Set once the transaction succeeded: the overlays are the VM's disks now.
    kept: bool,
}

impl Prepared {
    pub(crate) fn new(qmp: qmp::Client) -> Self {
        Self {
            qmp,
            created: Mutex::default(),
            kept: false,
        }
    }

    fn record(&self, f: impl FnOnce(&mut Created)) {
        f(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Created> {
        // Poisoned only if a recording closure panicked; the record is still valid.
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates every image, concurrently.
    pub(crate) async fn prepare_all(&self, images: &[NewImage]) -> Result<()> {
        futures_util::future::try_join_all(images.iter().map(|p| self.prepare(p))).await?;
        Ok(())
    }

    /// Records a job this run started on the prepared nodes (a backup): rollback
    /// cancels and dismisses it before it deletes the nodes.
    pub(crate) fn record_job(&self, id: &str) {
        self.record(|c| c.jobs.push(id.to_owned()));
    }

    async fn prepare(&self, plan: &NewImage) -> Result<()> {
        let created = create_exclusive(&plan.path, &plan.like)?;
        self.record(|c| c.files.push(created));
        let add_file = BlockdevAdd {
            node_name: plan.file_node.clone(),
            options: BlockdevOptions::File {
                filename: plan.path.display().to_string(),
            },
        };
        // Recorded before sending: a cancelled caller may never see the reply of a
        // command QEMU carries out. Rollback runs later on the same connection, so
        // QEMU executes it after this command either way.
        self.record(|c| c.nodes.push(plan.file_node.clone()));
        self.qmp
            .execute(&add_file)
            .await
            .map_err(Error::failed("adding the overlay file node"))?;
        self.format(plan).await?;
        let add_qcow2 = BlockdevAdd {
            node_name: plan.node.clone(),
            options: BlockdevOptions::Qcow2 {
                file: plan.file_node.clone(),
                backing: Some(BackingRef::Null),
            },
        };
        self.record(|c| c.nodes.push(plan.node.clone()));
        self.qmp
            .execute(&add_qcow2)
            .await
            .map_err(Error::failed("adding the overlay node"))?;
        Ok(())
    }

    /// `blockdev-create` qcow2 on the file node, followed to its conclusion.
    async fn format(&self, plan: &NewImage) -> Result<()> {
        let job_id = format!("{}-create", plan.node);
        let (backing_file, backing_fmt) = plan.backing.clone().unzip();
        let create = BlockdevCreate {
            job_id: job_id.clone(),
            options: BlockdevCreateOptions::Qcow2 {
                file: plan.file_node.clone(),
                size: plan.size,
                backing_file,
                backing_fmt,
                cluster_size: plan.cluster_size,
            },
        };
        let mut events = self.qmp.events();
        self.record(|c| c.jobs.push(job_id.clone()));
        self.qmp
            .execute(&create)
            .await
            .map_err(Error::failed("formatting the overlay"))?;
        let concluded = async {
            loop {
                match events.recv().await {
                    Ok(e) if e.event == "JOB_STATUS_CHANGE" && e.data["id"] == job_id.as_str() => {
                        if e.data["status"] == "concluded" {
                            return true;
                        }
                    }
                    Ok(_) | Err(qmp::EventsError::Lagged(_)) => {}
                    Err(_) => return false,
                }
            }
        };
        // A missed event (lag) is covered by reading the job's state afterwards anyway.
        let _ = tokio::time::timeout(CREATE_JOB_TIMEOUT, concluded).await;
        let jobs = self
            .qmp
            .execute(&QueryJobs)
            .await
            .map_err(Error::failed("checking the overlay's create job"))?;
        let job = jobs.into_iter().find(|j| j.id == job_id);
        if self
            .qmp
            .execute(&JobDismiss { id: job_id.clone() })
            .await
            .is_ok()
        {
            self.record(|c| c.jobs.retain(|j| *j != job_id));
        }
        match job {
            Some(j) if j.status == "concluded" && j.error.is_none() => Ok(()),
            Some(j) => Err(Error::failed("formatting the overlay")(JobError(
                j.error
                    .unwrap_or_else(|| format!("job ended in state {}", j.status)),
            ))),
            None => Err(Error::failed("formatting the overlay")(JobError(
                "the create job vanished".into(),
            ))),
        }
    }

    /// Marks the overlays as the VM's disks: nothing is rolled back any more.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }

    /// Removes what this run created and checks that it is gone.
    pub(crate) async fn rollback(mut self) -> Cleanup {
        self.kept = true;
        let created = std::mem::take(&mut *self.lock());
        rollback(&self.qmp, created).await
    }

    /// Keeps the files but deletes the nodes (a finished backup's targets, whose jobs
    /// concluded): the jobs are dismissed first. Checks the nodes are gone; returns the
    /// files, for a caller that must still remove them.
    pub(crate) async fn release(mut self) -> (Cleanup, Vec<CreatedFile>) {
        self.kept = true;
        let mut created = std::mem::take(&mut *self.lock());
        let files = std::mem::take(&mut created.files);
        settle_jobs(&self.qmp, &created.jobs).await;
        let mut left = Vec::new();
        for node in created.nodes.iter().rev() {
            let del = BlockdevDel {
                node_name: node.clone(),
            };
            match self.qmp.execute(&del).await {
                Ok(_) => {}
                Err(e) if is_no_such_node(&e) => {}
                Err(e) => left.push(format!("node {node}: {e}")),
            }
        }
        left.extend(verify_gone(&self.qmp, &created).await);
        (Cleanup { left }, files)
    }

    /// The QMP connection the overlays were prepared on.
    pub(crate) fn qmp(&self) -> &qmp::Client {
        &self.qmp
    }

    /// Switches to a new connection (the old one failed).
    pub(crate) fn reconnected(&mut self, qmp: qmp::Client) {
        self.qmp = qmp;
    }
}

/// What a rollback could not remove (empty: everything this run created is gone,
/// checked with `query-named-block-nodes` and on disk).
#[derive(Debug, Default)]
pub(crate) struct Cleanup {
    pub(crate) left: Vec<String>,
}

impl Cleanup {
    /// Nothing was left.
    pub(crate) fn is_complete(&self) -> bool {
        self.left.is_empty()
    }
}

impl Drop for Prepared {
    /// Dropped without `keep` or `rollback` (the future was cancelled): roll back on a
    /// task.
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let created = std::mem::take(&mut *self.lock());
        if created.jobs.is_empty() && created.nodes.is_empty() && created.files.is_empty() {
            return;
        }
        let qmp = self.qmp.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move { drop(rollback(&qmp, created).await) })),
            Err(_) => warn!(?created, "no runtime to roll back the prepared overlays"),
        }
    }
}

async fn rollback(qmp: &qmp::Client, created: Created) -> Cleanup {
    let mut left = Vec::new();
    // If the switch happened after all (a cancelled caller lost its reply), the
    // overlays are the disks now: keep everything, and say so.
    match qmp.execute(&QueryBlock).await {
        Ok(blocks) => {
            let active: Vec<_> = blocks
                .iter()
                .filter_map(|b| b.inserted.as_ref()?.node_name.clone())
                .collect();
            if let Some(n) = created.nodes.iter().find(|n| active.contains(n)) {
                warn!("the overlays are active: the snapshot happened, nothing is rolled back");
                return Cleanup {
                    left: vec![format!("overlay node {n} is a disk's active node")],
                };
            }
        }
        Err(e) => {
            return Cleanup {
                left: vec![format!(
                    "cannot read query-block ({e}); nothing was removed"
                )],
            };
        }
    }
    settle_jobs(qmp, &created.jobs).await;
    let mut removed = 0;
    for node in created.nodes.iter().rev() {
        match qmp
            .execute(&BlockdevDel {
                node_name: node.clone(),
            })
            .await
        {
            // Recorded but never added (the add failed or never ran): nothing to undo.
            Ok(_) => removed += 1,
            Err(e) if is_no_such_node(&e) => removed += 1,
            Err(e) => left.push(format!("node {node}: {e}")),
        }
    }
    if removed == created.nodes.len() {
        for file in &created.files {
            if let Err(e) = file.remove() {
                left.push(format!("file {}: {e}", file.path.display()));
            }
        }
    } else {
        left.extend(
            created
                .files
                .iter()
                .map(|f| format!("file {} (its node is still in use)", f.path.display())),
        );
    }
    left.extend(verify_gone(qmp, &created).await);
    if !left.is_empty() {
        warn!(?left, "rollback incomplete");
    }
    Cleanup { left }
}

/// Checks, just now, that none of `created`'s nodes exists and none of its files.
async fn verify_gone(qmp: &qmp::Client, created: &Created) -> Vec<String> {
    let mut left = Vec::new();
    match qmp
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .await
    {
        Ok(nodes) => left.extend(
            nodes
                .iter()
                .filter_map(|n| n.node_name.as_ref())
                .filter(|n| created.nodes.contains(n))
                .map(|n| format!("node {n} still exists")),
        ),
        Err(e) => left.push(format!("cannot check the nodes are gone: {e}")),
    }
    left.extend(
        created
            .files
            .iter()
            .filter(|f| std::fs::symlink_metadata(&f.path).is_ok_and(|m| f.is(&m)))
            .map(|f| format!("file {} still exists", f.path.display())),
    );
    left.sort();
    left.dedup();
    left
}

fn is_no_such_node(e: &qmp::Error) -> bool {
    e.qmp_error().is_some_and(|q| {
        q.desc.contains("Failed to find node") || q.desc.contains("Cannot find node")
    })
}

/// Cancels this run's jobs that still run and dismisses them once concluded, so they
/// release their nodes. Bounded: create jobs take milliseconds.
async fn settle_jobs(qmp: &qmp::Client, ours: &[String]) {
    let mut cancelled = Vec::new();
    for _ in 0..250 {
        let Ok(jobs) = qmp.execute(&QueryJobs).await else {
            return;
        };
        let mine: Vec<_> = jobs.into_iter().filter(|j| ours.contains(&j.id)).collect();
        if mine.is_empty() {
            return;
        }
        for job in mine {
            if job.status == "concluded" {
                let _ = qmp.execute(&JobDismiss { id: job.id }).await;
            } else if !cancelled.contains(&job.id) {
                let _ = qmp.execute(&JobCancel { id: job.id.clone() }).await;
                cancelled.push(job.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!(?ours, "jobs did not conclude");
}

/// A QMP job that ended with an error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct JobError(String);
