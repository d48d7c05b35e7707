//! Undoing a switch that must not stand (it came after the freeze ended, or the run
//! was interrupted): each just-made overlay is live-committed back into the node it
//! was made over, which becomes the disk's active node again, exactly as before.
//!
//! The overlays are seconds old, so the merge copies only what the guest wrote since.
//! The caller then rolls the prepared overlays back (nodes, files) as for any failure,
//! and the chain is checked with `query-block`.

use crate::commit::{LiveCommit, live_commit};
use crate::plan::DiskPlan;
use qmp::commands::QueryBlock;
use tracing::{info, warn};

/// Merges every disk that runs on its new overlay back into its old active node.
/// Returns what could not be undone (empty: every disk's active node is the one it had
/// before, checked just now).
pub(crate) async fn undo_switch(qmp: &qmp::Client, disks: &[DiskPlan]) -> Vec<String> {
    let mut left = Vec::new();
    let active = match active_nodes(qmp).await {
        Ok(a) => a,
        Err(e) => return vec![format!("cannot read query-block to undo the switch: {e}")],
    };
    for (i, d) in disks.iter().enumerate() {
        if !active.contains(&d.overlay_node) {
            continue;
        }
        info!(disk = %d.node, overlay = %d.overlay_node, "undoing the switch: merging the overlay back");
        let job = format!("{}-undo-{i}", d.overlay_node);
        let merged = live_commit(
            qmp,
            &LiveCommit {
                job: &job,
                device: &d.overlay_node,
                top: &d.overlay_node,
                base: &d.node,
            },
            &mut |_| {},
            None,
        )
        .await;
        if let Err(e) = merged {
            warn!(disk = %d.node, error = %e, "could not merge the overlay back");
            left.push(format!(
                "disk {} still runs on overlay {} ({}): merge it with `qsnap commit --disk {}`",
                d.node,
                d.overlay.display(),
                e.failure(),
                d.overlay_node
            ));
        }
    }
    match active_nodes(qmp).await {
        Ok(now) => left.extend(
            disks
                .iter()
                .filter(|d| !now.contains(&d.node))
                .map(|d| format!("disk {}'s active node is not {} again", d.node, d.node)),
        ),
        Err(e) => left.push(format!("cannot check the chains after the undo: {e}")),
    }
    left.dedup();
    left
}

async fn active_nodes(qmp: &qmp::Client) -> qmp::Result<Vec<String>> {
    let blocks = qmp.execute(&QueryBlock).await?;
    Ok(blocks
        .iter()
        .filter_map(|b| b.inserted.as_ref()?.node_name.clone())
        .collect())
}
