//! Faults: each ends with the guest thawed and no stray files or nodes.

use crate::fake::{Fake, fake_agent};
use crate::*;
use qmp::commands::BlockdevSnapshotSync;
use qsnap::{BeforeFreeze, CancellationToken, Consistency, Error, Quiesce};
use qsnap_tests::Agent;
use qsnap_tests::sim::{SimAgentEvent, SimFsStatus};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

#[tokio::test]
async fn existing_file_at_an_overlay_path_is_never_modified() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let taken = vm.dir().join("disk1.keep.qcow2");
        std::fs::write(&taken, b"precious bytes").unwrap();
        let err = qsnap::snapshot(&request(&vm, "keep"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::OverlayExists(ref p) if *p == taken),
            "{err:?}"
        );
        assert!(err.to_string().contains("never overwrites"));
        assert_eq!(std::fs::read(&taken).unwrap(), b"precious bytes");
        std::fs::remove_file(&taken).unwrap();
        assert_nothing_left(&vm, "keep").await;
    })
    .await;
}

/// Someone else snapshots disk0 between the plan and the freeze: disk0 is no longer
/// the active node, so the transaction fails — and must leave nothing behind.
#[tokio::test]
async fn transaction_failure_rolls_back_and_thaws() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let intruder = vm.dir().join("intruder.qcow2").display().to_string();
        let mut req = request(&vm, "tx");
        req.before_freeze = Some(BeforeFreeze(Arc::new(move |qmp: qmp::Client| {
            let file = intruder.clone();
            Box::pin(async move {
                qmp.execute(&BlockdevSnapshotSync {
                    node_name: Some("disk0".into()),
                    snapshot_file: file,
                    snapshot_node_name: Some("intruder".into()),
                    format: Some("qcow2".into()),
                    ..Default::default()
                })
                .await
                .unwrap();
            })
        })));
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::SnapshotFailed { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 4);
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("busy") || chain.contains("disk0"), "{chain}");
        assert_nothing_left(&vm, "tx").await;
    })
    .await;
}

#[tokio::test]
async fn absent_agent_required_fails_before_any_change() {
    within(120, async {
        let vm = QemuVm::builder()
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let mut req = request(&vm, "na");
        req.agent_timeout = Duration::from_secs(2);
        let start = Instant::now();
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::QuiesceUnavailable { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 3);
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(overlay_files(&vm, "na"), Vec::<String>::new());
        assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test]
async fn absent_agent_preferred_takes_a_crash_consistent_snapshot_and_says_so() {
    within(120, async {
        let vm = QemuVm::builder()
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let mut req = request(&vm, "pf").quiesce(Quiesce::Preferred);
        req.agent_timeout = Duration::from_secs(2);
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.consistency, Consistency::CrashConsistent);
        assert!(
            report.warnings.iter().any(|w| w.contains("not quiesced")),
            "{:?}",
            report.warnings
        );
        assert_eq!(overlay_files(&vm, "pf").len(), 2);
    })
    .await;
}

#[tokio::test]
async fn agent_hanging_on_freeze_hits_the_deadline_and_is_thawed() {
    within(120, async {
        let vm = QemuVm::builder()
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let fake = vm.dir().join("fake-qga.sock");
        let sim = fake_agent(&fake, Fake::SlowHook).await;
        let mut req = request(&vm, "hang").qga(&fake);
        req.freeze_timeout = Duration::from_secs(1);
        let start = Instant::now();
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::QuiesceFailed { .. }), "{err:?}");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(sim.freeze_count(), 1, "the freeze ran once the hook ended");
        assert_eq!(
            sim.status(),
            SimFsStatus::Thawed,
            "and the queued thaw after it"
        );
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(overlay_files(&vm, "hang"), Vec::<String>::new());
        assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
    })
    .await;
}

/// The freeze fails part-way and the guest stays frozen: the thaw cannot be confirmed,
/// and that must win over the freeze error — never "thawed, nothing changed" (exit 3),
/// and never a crash-consistent fallback on a guest that may be frozen.
#[tokio::test]
async fn failed_freeze_with_an_unconfirmed_thaw_reports_the_thaw() {
    within(120, async {
        let vm = QemuVm::builder()
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        for quiesce in [Quiesce::Required, Quiesce::Preferred] {
            let fake = vm.dir().join(format!("fake-{quiesce:?}.sock"));
            let sim = fake_agent(&fake, Fake::FreezeFailsAndSticks).await;
            let mut req = request(&vm, "stuck").qga(&fake).quiesce(quiesce);
            req.guardian = None; // it would (rightly) keep trying after the test ends
            let err = qsnap::snapshot(&req, &CancellationToken::new())
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::ThawUnconfirmed { .. }),
                "{quiesce:?}: {err:?}"
            );
            assert_eq!(err.exit_code(), 5);
            let thaws = thaws_received(&sim);
            assert!(thaws > 0, "a thaw must have been sent");
            assert_eq!(sim.status(), SimFsStatus::Frozen);
            assert_eq!(overlay_files(&vm, "stuck"), Vec::<String>::new());
            assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
        }
    })
    .await;
}

/// Windows' VSS thaws by itself after 10 s; a later thaw fails with that message. The
/// disks switched, but not verifiably while frozen: under `required` the switch is
/// undone (merged back), and nothing is left; the chain is as before.
#[tokio::test]
async fn windows_guest_that_thawed_by_itself_is_undone_under_required() {
    within(120, async {
        let vm = QemuVm::builder()
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let fake = vm.dir().join("fake-qga.sock");
        let sim = fake_agent(&fake, Fake::WindowsAutoThaw).await;
        let req = request(&vm, "win").qga(&fake);
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        let Error::QuiesceFailed { reason, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(
            reason.contains("10-second") && reason.contains("undone"),
            "{reason}"
        );
        assert_eq!(err.exit_code(), 3);
        let thaws = thaws_received(&sim);
        assert!(thaws > 0, "the thaw was sent");
        assert_eq!(overlay_files(&vm, "win"), Vec::<String>::new());
        assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
        let qmp = vm.qmp().await.unwrap();
        let blocks = qmp.execute(&qmp::commands::QueryBlock).await.unwrap();
        let active: Vec<_> = blocks
            .iter()
            .filter_map(|b| b.inserted.as_ref()?.node_name.clone())
            .collect();
        assert_eq!(active, ["disk0", "disk1"]);
    })
    .await;
}

/// Polls the inner future at most `left` times, then drops it (a cancelled caller).
struct PollLimit<F: Future> {
    inner: Pin<Box<F>>,
    left: usize,
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        self.inner.as_mut().poll(cx).map(Some)
    }
}

/// Waits until the guest is thawed and this run left either nothing (rolled back) or a
/// whole snapshot: both overlays active, their files present (it completed before the
/// drop). `before` are the qsnap nodes earlier runs left as active disks.
async fn settled(vm: &QemuVm, name: &str, before: &[String]) -> bool {
    let sockets = [vm.qmp_path(), vm.qga_path()];
    let sockets: Vec<&std::path::Path> = sockets.iter().map(|p| p.as_path()).collect();
    for attempt in 0.. {
        match qsnap::VmLock::acquire_all(&sockets) {
            Ok(_) => break,
            Err(e) if attempt > 600 => panic!("the VM stays locked: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut state = String::new();
    for _ in 0..100 {
        let status = fsstatus(vm).await;
        let new: Vec<String> = qsnap_nodes(vm)
            .await
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        let files = overlay_files(vm, name);
        if status == FsfreezeStatus::Thawed {
            if new.is_empty() && files.is_empty() {
                return false;
            }
            let qmp = vm.qmp().await.unwrap();
            let blocks = qmp.execute(&qmp::commands::QueryBlock).await.unwrap();
            let active = blocks
                .iter()
                .filter_map(|b| b.inserted.as_ref()?.node_name.clone())
                .filter(|n| new.contains(n))
                .count();
            if active == 2 && new.len() == 4 && files.len() == 2 {
                return true;
            }
        }
        state = format!("{status:?}, new nodes {new:?}, files {files:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("snapshot {name}: the VM did not settle: {state}");
}

#[tokio::test]
async fn cancelled_after_any_number_of_polls_the_guest_ends_thawed() {
    within(1200, async {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("QSNAP_LOG"))
            .with_test_writer()
            .try_init();
        let vm = booted(QemuVm::builder().disks(2)).await;
        let mut completed_early = 0;
        for i in 1.. {
            let name = format!("p{i}");
            let before = qsnap_nodes(&vm).await;
            // With the guardian: a drop at any poll must not let it and the in-process
            // paths fight (it holds the VM lock until it is done; `settled` waits).
            let req = request(&vm, &name);
            let token = CancellationToken::new();
            let limited = PollLimit {
                inner: Box::pin(qsnap::snapshot(&req, &token)),
                left: i,
            };
            tracing::info!(i, "polling");
            if let Some(result) = limited.await {
                result.unwrap();
                eprintln!("completed after {i} polls; {completed_early} cancellations left a complete snapshot");
                assert!(i > 5, "the snapshot should need more than a few polls");
                break;
            }
            if settled(&vm, &name, &before).await {
                completed_early += 1;
            }
        }
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
    })
    .await;
}

/// How many `guest-fsfreeze-thaw` requests the simulated agent received.
fn thaws_received(sim: &qsnap_tests::sim::SimAgent) -> usize {
    sim.log()
        .iter()
        .filter(
            |e| matches!(e, SimAgentEvent::Command { name, .. } if name == "guest-fsfreeze-thaw"),
        )
        .count()
}
