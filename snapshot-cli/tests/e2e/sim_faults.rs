//! The coordinator and commit against the simulated VM (`qsnap_tests::sim`): faults
//! the real rig cannot provoke on demand, in milliseconds to seconds. Each test checks
//! the simulated truth (the agent's frozen state, the monitor's block graph, files on
//! disk), not qsnap's report.

use qsnap::{CancellationToken, CommitRequest, Consistency, Error, Quiesce, SnapshotRequest};
use qsnap_tests::sim::{SimFsStatus, SimVm};
use qsnap_tests::within;
use std::path::Path;
use std::time::{Duration, Instant};

async fn sim(disks: usize) -> (tempfile::TempDir, SimVm) {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(dir.path(), disks).await.unwrap();
    (dir, vm)
}

fn request(vm: &SimVm, name: &str) -> SnapshotRequest {
    let mut req = SnapshotRequest::new(vm.qmp_path())
        .qga(vm.qga_path())
        .name(name);
    req.freeze_timeout = Duration::from_millis(800);
    req.agent_timeout = Duration::from_secs(2);
    req
}

/// Files of snapshot `name` in `dir`.
fn overlays(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.contains(&format!(".{name}.")))
        .collect()
}

fn qsnap_nodes(vm: &SimVm) -> Vec<String> {
    vm.monitor()
        .nodes()
        .into_iter()
        .filter(|n| n.starts_with("qsnap-"))
        .collect()
}

/// The VM is exactly as before: thawed, each disk on its own node, nothing of ours.
fn assert_unchanged(dir: &Path, vm: &SimVm, name: &str, disks: usize) {
    assert_eq!(vm.agent().status(), SimFsStatus::Thawed, "guest frozen");
    for i in 0..disks {
        assert_eq!(
            vm.monitor().root(&format!("vblk{i}")),
            Some(format!("disk{i}"))
        );
    }
    assert_eq!(qsnap_nodes(vm), Vec::<String>::new(), "stray nodes");
    assert_eq!(overlays(dir, name), Vec::<String>::new(), "stray files");
}

#[tokio::test]
async fn a_snapshot_of_the_simulated_vm_is_quiesced_and_switches_every_disk() {
    within(30, async {
        let (_dir, vm) = sim(2).await;
        let report = qsnap::snapshot(&request(&vm, "s"), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.consistency, Consistency::Quiesced);
        assert_eq!((vm.agent().freeze_count(), vm.agent().thaw_count()), (1, 1));
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
        for i in 0..2 {
            let chain = vm.monitor().chain(&format!("vblk{i}"));
            assert_eq!(chain.len(), 2, "{chain:?}");
            assert!(chain[0].starts_with("qsnap-") && chain[1] == format!("disk{i}"));
        }
    })
    .await;
}

/// A hook that outlasts the deadline but ends inside qsnap's confirmation window: the
/// thaw written behind the freeze runs right after it, qsnap confirms and reports
/// "nothing changed" (exit 3) truthfully.
#[tokio::test]
async fn slow_hook_the_thaw_queued_behind_the_freeze_runs_when_it_ends() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        vm.agent().set_freeze_hook(Duration::from_secs(2));
        let err = qsnap::snapshot(&request(&vm, "h"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert_unchanged(dir.path(), &vm, "h", 2);
        assert_eq!(vm.agent().freeze_count(), 1, "the freeze did happen");
    })
    .await;
}

/// A hook longer than qsnap waits: exit 5 — and with no client and no guardian left,
/// the thaw qsnap queued still runs once the hook ends (old main: frozen for good).
#[tokio::test]
async fn hook_longer_than_qsnap_waits_still_ends_thawed_without_any_client() {
    within(30, async {
        let (_dir, vm) = sim(1).await;
        vm.agent().set_freeze_hook(Duration::from_secs(7));
        let start = Instant::now();
        let err = qsnap::snapshot(&request(&vm, "hh"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ThawUnconfirmed { .. }), "{err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(7),
            "{:?}",
            start.elapsed()
        );
        while vm.agent().freeze_count() == 0 || vm.agent().status() == SimFsStatus::Frozen {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
    })
    .await;
}

/// The transaction's effect comes after the freeze deadline: under `required` the
/// switch is merged back and everything removed; the graph is as before (exit 3).
#[tokio::test]
async fn late_switch_under_required_is_merged_back() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        vm.monitor()
            .delay_effect_and_reply("transaction", Duration::from_millis(1500));
        let err = qsnap::snapshot(&request(&vm, "l"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("undone"), "{err}");
        assert_unchanged(dir.path(), &vm, "l", 2);
        assert!(vm.monitor().log().iter().any(|c| c == "block-commit"));
    })
    .await;
}

/// The same under `preferred`: kept, said to be crash-consistent (exit 6).
#[tokio::test]
async fn late_switch_under_preferred_is_kept_as_crash_consistent() {
    within(30, async {
        let (dir, vm) = sim(1).await;
        vm.monitor()
            .delay_effect_and_reply("transaction", Duration::from_millis(1500));
        let req = request(&vm, "lp").quiesce(Quiesce::Preferred);
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        let Error::NotConsistent { report, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(report.consistency, Consistency::CrashConsistent);
        assert_eq!(err.exit_code(), 6);
        assert_eq!(overlays(dir.path(), "lp").len(), 1);
        assert!(vm.monitor().root("vblk0").unwrap().starts_with("qsnap-"));
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
    })
    .await;
}

/// QEMU switched the disks and the connection died before the reply: qsnap
/// reconnects, reads `query-block`, sees the switch, and (it was not seen in time)
/// merges it back.
#[tokio::test]
async fn connection_lost_after_the_switch_reconnects_and_merges_back() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        vm.monitor().disconnect_on("transaction", false);
        let err = qsnap::snapshot(&request(&vm, "d"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert_unchanged(dir.path(), &vm, "d", 2);
        assert!(vm.monitor().connections() >= 2, "it reconnected");
    })
    .await;
}

/// The connection died before QEMU ran the transaction: nothing switched; the
/// overlays are rolled back over a new connection.
#[tokio::test]
async fn connection_lost_before_the_switch_rolls_back_over_a_new_connection() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        vm.monitor().disconnect_on("transaction", true);
        let err = qsnap::snapshot(&request(&vm, "db"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(!matches!(err, Error::CleanupIncomplete { .. }), "{err}");
        assert!(err.to_string().contains("reply was lost"), "{err}");
        assert_unchanged(dir.path(), &vm, "db", 2);
    })
    .await;
}

/// QEMU refuses the transaction: atomic, so nothing switched; rolled back (exit 4).
#[tokio::test]
async fn refused_transaction_rolls_back_and_exits_4() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        vm.monitor()
            .fail_next("transaction", "GenericError", "Node 'disk0' is busy");
        let err = qsnap::snapshot(&request(&vm, "r"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        assert_unchanged(dir.path(), &vm, "r", 2);
    })
    .await;
}

/// A guest that stays frozen whatever the thaw says: exit 5, never "thawed", and the
/// unused overlays are removed.
#[tokio::test]
async fn guest_stuck_frozen_is_reported_and_the_unused_overlays_removed() {
    within(30, async {
        let (dir, vm) = sim(1).await;
        vm.agent().stick_frozen(true);
        vm.monitor()
            .fail_next("transaction", "GenericError", "refused for the test");
        let err = qsnap::snapshot(&request(&vm, "f"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(err.to_string().contains("may still be frozen"), "{err}");
        assert_eq!(overlays(dir.path(), "f"), Vec::<String>::new());
        assert_eq!(qsnap_nodes(&vm), Vec::<String>::new());
    })
    .await;
}

/// Ctrl-C arrives after `job-complete` was sent: the pivot is under way and finishes;
/// the commit is reported done and qsnap's nodes are released (old main: "interrupted"
/// and nodes left, so the next snapshot failed).
#[tokio::test]
async fn ctrl_c_after_job_complete_lets_the_commit_finish_and_releases_nodes() {
    within(30, async {
        let (dir, vm) = sim(1).await;
        qsnap::snapshot(&request(&vm, "c"), &CancellationToken::new())
            .await
            .unwrap();
        vm.monitor()
            .delay("job-complete", Duration::from_millis(500));
        let cancel = CancellationToken::new();
        let watch = {
            let (vm_mon, cancel) = (vm.monitor().clone(), cancel.clone());
            tokio::spawn(async move {
                while !vm_mon.log().iter().any(|c| c == "job-complete") {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                cancel.cancel();
            })
        };
        let req = CommitRequest::new(vm.qmp_path(), "vblk0");
        let report = qsnap::commit(&req, |_| {}, &cancel).await.unwrap();
        watch.await.unwrap();
        assert_eq!(report.base, "disk0");
        assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
        assert_eq!(qsnap_nodes(&vm), Vec::<String>::new());
        assert_eq!(overlays(dir.path(), "c"), Vec::<String>::new());
        // And the next snapshot works.
        qsnap::snapshot(&request(&vm, "c2"), &CancellationToken::new())
            .await
            .unwrap();
    })
    .await;
}

/// A `query-jobs` error while following a commit is retried: the job is not left
/// `ready` for ever.
#[tokio::test]
async fn a_failed_query_jobs_does_not_abandon_a_ready_commit() {
    within(30, async {
        let (_dir, vm) = sim(1).await;
        qsnap::snapshot(&request(&vm, "q"), &CancellationToken::new())
            .await
            .unwrap();
        vm.monitor()
            .fail_next("query-jobs", "GenericError", "transient");
        let req = CommitRequest::new(vm.qmp_path(), "vblk0");
        qsnap::commit(&req, |_| {}, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
        assert!(vm.monitor().jobs().is_empty(), "{:?}", vm.monitor().jobs());
    })
    .await;
}

/// A panic while the guest is frozen (here: in a test hook, as a bug would): the
/// coordinator's task dies, and its drop guards still write the thaw and roll the
/// overlays back — the runtime lives on, as in any server embedding the library.
#[tokio::test]
async fn a_panic_while_frozen_still_thaws_and_rolls_back() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        let mut req = request(&vm, "p");
        req.while_frozen = Some(qsnap::BeforeFreeze(std::sync::Arc::new(|_qmp| {
            Box::pin(async { panic!("a bug while frozen") })
        })));
        let run =
            tokio::spawn(async move { qsnap::snapshot(&req, &CancellationToken::new()).await });
        let err = run.await.unwrap_err();
        assert!(err.is_panic());
        assert_eq!(vm.agent().freeze_count(), 1, "it was frozen");
        for _ in 0..100 {
            if vm.agent().status() == SimFsStatus::Thawed
                && qsnap_nodes(&vm).is_empty()
                && overlays(dir.path(), "p").is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_unchanged(dir.path(), &vm, "p", 2);
    })
    .await;
}

/// `--mountpoint /data --mountpoint /dta`: qemu-ga freezes the one that exists and
/// answers 1. Half a freeze is not a quiesced snapshot: exit 3, nothing changed.
#[tokio::test]
async fn freezing_fewer_filesystems_than_asked_is_a_failed_quiesce() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        let mut req = request(&vm, "m");
        req.mountpoints = vec!["/data".into(), "/dta".into()];
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("froze 1 of the 2"), "{err}");
        assert_unchanged(dir.path(), &vm, "m", 2);
    })
    .await;
}

/// The guest stays frozen and the transaction's reply is lost: "may still be frozen"
/// (exit 5) is what the operator must hear, whatever else went wrong.
#[tokio::test]
async fn a_guest_that_may_be_frozen_outranks_a_lost_transaction_reply() {
    within(30, async {
        let (_dir, vm) = sim(1).await;
        vm.agent().stick_frozen(true);
        vm.monitor().disconnect_on("transaction", false);
        let err = qsnap::snapshot(&request(&vm, "mf"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        assert!(err.to_string().contains("qsnap thaw"), "{err}");
        // And the switch QEMU made is not kept silently: under `required` it was merged
        // back over a new connection, and nothing of the run is left.
        assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
        assert_eq!(qsnap_nodes(&vm), Vec::<String>::new());
        assert_eq!(overlays(_dir.path(), "mf"), Vec::<String>::new());
        assert!(!err.to_string().contains("left behind"), "{err}");
    })
    .await;
}

/// The same under `preferred`: the switch is kept, and exit 5 names the overlay and
/// how to merge it back (it is not verified consistent).
#[tokio::test]
async fn exit_5_names_a_switch_it_keeps() {
    within(30, async {
        let (_dir, vm) = sim(1).await;
        vm.agent().stick_frozen(true);
        vm.monitor().disconnect_on("transaction", false);
        let req = request(&vm, "mk").quiesce(Quiesce::Preferred);
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("may run on overlay") && text.contains("qsnap commit"),
            "{text}"
        );
        assert!(vm.monitor().root("vblk0").unwrap().starts_with("qsnap-"));
    })
    .await;
}

/// `--base` deeper than the image the overlay was made over is refused without
/// `--any-overlay`: it would write into an image qsnap never touched.
#[tokio::test]
async fn commit_into_a_base_below_the_overlays_own_is_refused() {
    within(30, async {
        let (_dir, vm) = sim(1).await;
        for name in ["a", "b"] {
            qsnap::snapshot(&request(&vm, name), &CancellationToken::new())
                .await
                .unwrap();
        }
        let chain = vm.monitor().chain("vblk0");
        assert_eq!(chain.len(), 3, "{chain:?}");
        let mut req = CommitRequest::new(vm.qmp_path(), "vblk0");
        req.base = Some("disk0".into());
        let err = qsnap::commit(&req, |_| {}, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--any-overlay"), "{err}");
        assert_eq!(vm.monitor().chain("vblk0"), chain, "nothing merged");
        assert!(!vm.monitor().log().iter().any(|c| c == "block-commit"));
    })
    .await;
}

/// Frozen until the deadline (the testing hold ends exactly there): the transaction
/// must not be sent after it (old main polled the call first and sent it late).
#[tokio::test]
async fn the_transaction_is_never_sent_after_the_deadline() {
    within(30, async {
        let (dir, vm) = sim(1).await;
        let mut req = request(&vm, "t");
        req.hold_frozen = Duration::from_secs(5);
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(
            !vm.monitor().log().iter().any(|c| c == "transaction"),
            "{:?}",
            vm.monitor().log()
        );
        assert_unchanged(dir.path(), &vm, "t", 1);
    })
    .await;
}

/// After an exit 5 the guardian keeps confirming — and holds the VM's lock while it
/// does, so an operator's `qsnap freeze` cannot start (and be thawed by it). Once the
/// guest thaws, the guardian confirms, exits, and the lock is free.
#[tokio::test]
async fn the_guardian_holds_the_vm_until_it_has_seen_the_guest_thawed() {
    within(60, async {
        let (_dir, vm) = sim(1).await;
        vm.agent().stick_frozen(true);
        vm.monitor()
            .fail_next("transaction", "GenericError", "refused for the test");
        let req = request(&vm, "g").guardian(env!("CARGO_BIN_EXE_qsnap"));
        let err = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 5, "{err}");
        let sockets = [vm.qmp_path(), vm.qga_path()];
        let sockets: Vec<&Path> = sockets.iter().map(|p| p.as_path()).collect();
        assert!(
            matches!(
                qsnap::VmLock::acquire_all(&sockets),
                Err(Error::Busy { .. })
            ),
            "the guardian must hold the lock"
        );
        let freeze = tokio::process::Command::new(env!("CARGO_BIN_EXE_qsnap"))
            .arg("--qmp")
            .arg(vm.qmp_path())
            .arg("--qga")
            .arg(vm.qga_path())
            .arg("freeze")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&freeze.stderr);
        assert_eq!(freeze.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("another qsnap"), "{stderr}");
        vm.agent().stick_frozen(false);
        let start = Instant::now();
        while qsnap::VmLock::acquire_all(&sockets).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the guardian never let go"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
    })
    .await;
}

/// A guest fsfreeze hook that fails (an application that could not be quiesced):
/// qemu-ga freezes nothing and says why. `required`: exit 3, nothing changed, the
/// agent's words in the error; `preferred`: a crash-consistent snapshot that says why.
#[tokio::test]
async fn a_failing_freeze_hook_fails_required_and_is_named_by_preferred() {
    within(30, async {
        let (dir, vm) = sim(2).await;
        vm.agent()
            .fail_freeze_hook(Some("fsfreeze hook has failed with status 1".into()));
        let err = qsnap::snapshot(&request(&vm, "req"), &CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        let chain = format!("{:?}", anyhow::Error::from(err));
        assert!(chain.contains("fsfreeze hook has failed"), "{chain}");
        assert_unchanged(dir.path(), &vm, "req", 2);

        let mut req = request(&vm, "pref");
        req.quiesce = Quiesce::Preferred;
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.consistency, Consistency::CrashConsistent);
        assert_eq!(report.frozen_filesystems, 0);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("fsfreeze hook has failed")),
            "{:?}",
            report.warnings
        );
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
        assert_eq!(overlays(dir.path(), "pref").len(), 2);
    })
    .await;
}

/// `--disk` of one disk of three: the simulated guest's filesystem on it alone is
/// frozen (freeze-list), the report names the two left thawed.
#[tokio::test]
async fn a_snapshot_of_one_disk_freezes_only_the_filesystem_on_it() {
    within(30, async {
        let (_dir, vm) = sim(3).await;
        let mut req = request(&vm, "one");
        req.disks = vec!["vblk1".into()];
        req.hold_frozen = Duration::from_millis(200);
        let hold = tokio::spawn({
            let vm_agent = vm.agent().clone();
            async move {
                // While held frozen: exactly /data2 is frozen.
                for _ in 0..2000 {
                    if vm_agent.status() == SimFsStatus::Frozen {
                        return vm_agent.frozen_mountpoints();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Vec::new()
            }
        });
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(hold.await.unwrap(), ["/data2"]);
        assert_eq!(report.frozen_filesystems, 1);
        let scope = report.freeze_scope.unwrap();
        assert_eq!(scope.frozen, ["/data2"]);
        assert_eq!(scope.not_frozen, ["/data", "/data3"]);
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
    })
    .await;
}

/// The names of the commands the simulated agent ran, in order.
fn commands(vm: &SimVm) -> Vec<String> {
    vm.agent()
        .log()
        .into_iter()
        .filter_map(|e| match e {
            qsnap_tests::sim::SimAgentEvent::Command { name, .. } => Some(name),
            _ => None,
        })
        .collect()
}

/// The pre-flush runs `sync` in the guest right before the freeze and reports how
/// long it took; a `sync` that outlasts its timeout only costs a warning.
#[tokio::test]
async fn the_pre_flush_syncs_before_the_freeze_and_a_slow_one_never_fails_the_run() {
    within(30, async {
        let (_dir, vm) = sim(1).await;
        vm.agent().set_exec_runs(Duration::from_millis(50));
        let report = qsnap::snapshot(&request(&vm, "a"), &CancellationToken::new())
            .await
            .unwrap();
        let ran = commands(&vm);
        let exec = ran.iter().position(|c| c == "guest-exec").unwrap();
        let freeze = ran
            .iter()
            .position(|c| c == "guest-fsfreeze-freeze")
            .unwrap();
        assert!(exec < freeze, "{ran:?}");
        assert!(ran[exec..freeze].iter().any(|c| c == "guest-exec-status"));
        assert!(
            report.timings_ms.pre_flush >= 50.0,
            "{:?}",
            report.timings_ms
        );
        assert_eq!(report.consistency, Consistency::Quiesced);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);

        // Slower than its timeout: a warning, and the snapshot is still quiesced.
        vm.agent().set_exec_runs(Duration::from_secs(5));
        let mut req = request(&vm, "b");
        req.pre_flush_timeout = Duration::from_millis(200);
        let start = Instant::now();
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "bounded by its timeout"
        );
        assert_eq!(report.consistency, Consistency::Quiesced);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("did not finish within")),
            "{:?}",
            report.warnings
        );

        // Off: no guest-exec at all.
        let before = commands(&vm).iter().filter(|c| *c == "guest-exec").count();
        let mut req = request(&vm, "c");
        req.pre_flush = false;
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        let after = commands(&vm).iter().filter(|c| *c == "guest-exec").count();
        assert_eq!((before, after), (2, 2));
        assert!(report.timings_ms.pre_flush.abs() < f64::EPSILON);
    })
    .await;
}
