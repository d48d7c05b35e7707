//! Application consistency on the real guest: a SQLite database written every 2 ms,
//! quiesced by its fsfreeze-hook.d script run by Debian's own dispatcher, opens on the
//! host from the image frozen in time with nothing left in its WAL and exactly the row
//! the hook logged; a hook that fails fails the freeze.

use crate::backup::{backup, restore_raw};
use crate::cli::run;
use crate::*;
use qsnap::Consistency;
use qsnap_tests::inspect::{self, SqliteState};
use std::path::Path;

/// The rows the database hook logged as frozen at, in order (`qsnap-db: frozen at row N`).
fn frozen_rows(vm: &QemuVm) -> Vec<i64> {
    vm.serial_log()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("qsnap-db: frozen at row "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Waits until the guest's database writer has committed for a while.
async fn writer_started(vm: &QemuVm) {
    within(30, async {
        while !vm.serial_log().contains("qsnap-dbwriter: started") {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The one new row the hook logged during the last run.
fn new_frozen_row(vm: &QemuVm, before: usize) -> i64 {
    let rows = frozen_rows(vm);
    assert_eq!(rows.len(), before + 1, "one freeze logged: {rows:?}");
    rows[before]
}

/// The database in the qcow2 (or raw) image `image`, as the host's sqlite3 sees it.
fn database_in(image: &Path) -> SqliteState {
    let raw = inspect::raw_copy(image).unwrap();
    inspect::sqlite_in_ext4(raw.path(), "/db.sqlite").unwrap()
}

/// Sound, the WAL empty, and exactly the row the hook logged.
fn assert_quiesced_at(state: &SqliteState, row: i64, what: &str) {
    assert_eq!(
        state,
        &SqliteState {
            integrity: "ok".into(),
            wal_bytes: Some(0),
            last_row: row,
        },
        "{what}: the database as frozen by its hook"
    );
}

/// The metrics of `vm`'s last `command` run, as node_exporter's textfile collector
/// serves the files in `dir`.
pub(crate) struct Samples {
    all: qsnap_tests::textfile::Samples,
    qmp: String,
    command: &'static str,
}

impl Samples {
    pub(crate) fn scrape(dir: &Path, vm: &QemuVm, command: &'static str) -> Self {
        Self {
            all: qsnap_tests::textfile::scrape(dir).unwrap(),
            qmp: vm.qmp_path().display().to_string(),
            command,
        }
    }

    fn find(&self, name: &str, consistency: Option<&str>) -> Option<f64> {
        let mut labels = vec![("command", self.command), ("qmp", self.qmp.as_str())];
        labels.extend(consistency.map(|c| ("consistency", c)));
        self.all.get(name, &labels)
    }

    /// The value of gauge `name`.
    pub(crate) fn get(&self, name: &str) -> f64 {
        self.find(name, None)
            .unwrap_or_else(|| panic!("{name} of {} in {:#?}", self.command, self.all))
    }

    /// `qsnap_last_run_consistency` for `consistency`.
    pub(crate) fn consistency(&self, consistency: &str) -> f64 {
        self.find("qsnap_last_run_consistency", Some(consistency))
            .unwrap_or_else(|| panic!("{consistency} in {:#?}", self.all))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.find(name, None).is_some()
    }
}

#[tokio::test]
async fn a_live_database_in_a_snapshot_and_in_backups_opens_with_an_empty_wal_at_the_row_its_hook_logged()
 {
    a_live_database_in_a_snapshot_and_in_backups_opens_with_an_empty_wal_at_the_row_its_hook_logged_on(QemuVm::builder()).await;
}

pub(crate) async fn a_live_database_in_a_snapshot_and_in_backups_opens_with_an_empty_wal_at_the_row_its_hook_logged_on(
    base: VmBuilder,
) {
    within(240, async move {
        let vm = booted(base.database(true)).await;
        writer_started(&vm).await;

        // A snapshot through the binary: the frozen image is the one the overlay now backs.
        let logged = frozen_rows(&vm).len();
        let metrics = tempfile::tempdir().unwrap();
        let prom = metrics.path().join("qsnap-app.prom");
        let (code, out, err) = run(
            &vm,
            &[
                "--json",
                "snapshot",
                "--name",
                "app",
                "--metrics-file",
                prom.to_str().unwrap(),
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}\n{err}");
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(report["consistency"], "quiesced");
        // The metrics, as node_exporter's textfile collector serves them.
        let samples = Samples::scrape(metrics.path(), &vm, "snapshot");
        assert_eq!(samples.get("qsnap_last_run_exit_code"), 0.0);
        assert_eq!(samples.consistency("quiesced"), 1.0);
        let window = samples.get("qsnap_last_run_frozen_window_seconds");
        let reported = report["timings_ms"]["frozen_window"].as_f64().unwrap() / 1000.0;
        assert!((window - reported).abs() < 1e-6, "{window} vs {reported}");
        assert!(samples.get("qsnap_last_success_timestamp_seconds") > 1.7e9);
        let row = new_frozen_row(&vm, logged);
        assert!(row > 0, "the writer committed before the snapshot");
        let frozen = report["disks"][0]["backing_file"].as_str().unwrap();
        assert_quiesced_at(&database_in(Path::new(frozen)), row, "snapshot");

        // A full backup, then an incremental one, each restored on its own.
        let dir = tempfile::tempdir().unwrap();
        let mut last = row;
        for incremental in [false, true] {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let logged = frozen_rows(&vm).len();
            let report = backup(&vm, dir.path(), incremental).await;
            assert_eq!(report.manifest.consistency, Consistency::Quiesced);
            let row = new_frozen_row(&vm, logged);
            assert!(
                row > last,
                "the writer went on after the thaw: {row} after {last}"
            );
            last = row;
            let restored = restore_raw(&report, dir.path());
            assert_quiesced_at(
                &database_in(&restored),
                row,
                if incremental {
                    "incremental backup"
                } else {
                    "full backup"
                },
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_failing_hook_fails_the_freeze_required_changes_nothing_preferred_says_why() {
    within(180, async {
        // qsnap's strict dispatcher: the database's script freezes, the next one fails,
        // so the database's is given thaw and the freeze fails. (Debian's dispatcher
        // would log the failure and freeze anyway: docs/operations.md.)
        let vm = booted(
            QemuVm::builder()
                .database(true)
                .failing_hook(true)
                .strict_dispatcher(true),
        )
        .await;
        writer_started(&vm).await;
        let chains = |vm: &QemuVm| {
            vm.disks()
                .iter()
                .map(|d| inspect::backing_chain(d).unwrap())
                .collect::<Vec<_>>()
        };
        let before = chains(&vm);

        let metrics = tempfile::tempdir().unwrap();
        let prom = metrics.path().join("qsnap.prom");
        let prom = prom.to_str().unwrap();
        let (code, out, err) = run(
            &vm,
            &[
                "--json",
                "snapshot",
                "--name",
                "req",
                "--metrics-file",
                prom,
            ],
        )
        .await;
        assert_eq!(
            code, 3,
            "required: a failed quiesce fails the snapshot\n{out}\n{err}"
        );
        let samples = Samples::scrape(metrics.path(), &vm, "snapshot");
        assert_eq!(samples.get("qsnap_last_run_exit_code"), 3.0);
        for c in ["quiesced", "crash-consistent"] {
            assert_eq!(samples.consistency(c), 0.0, "nothing taken");
        }
        assert!(
            !samples.has("qsnap_last_success_timestamp_seconds"),
            "never succeeded"
        );
        assert!(out.contains("fsfreeze hook"), "the agent's reason: {out}");
        assert_nothing_left(&vm, "req").await;
        assert_eq!(chains(&vm), before, "nothing changed");
        // The strict dispatcher itself undid the database's freeze (qemu-ga also runs
        // the hook on qsnap's own thaw, so the database's "thawed" alone proves nothing):
        // its log shows the undo, before any thaw qemu-ga asked for.
        let hook_log = String::from_utf8_lossy(
            &crate::backup::guest_file(&vm, "/var/log/qga-fsfreeze-hook.log").await,
        )
        .into_owned();
        let failed = hook_log
            .find("90-fail freeze finished with status=1")
            .unwrap_or_else(|| panic!("the failing script's freeze is logged:\n{hook_log}"));
        let undo = hook_log
            .find("10-sqlite thaw (undoing the freeze)")
            .unwrap_or_else(|| panic!("the database's script was given thaw:\n{hook_log}"));
        assert!(failed < undo, "{hook_log}");

        let (code, out, err) = run(
            &vm,
            &[
                "--json",
                "snapshot",
                "--name",
                "pref",
                "--quiesce",
                "preferred",
                "--metrics-file",
                prom,
            ],
        )
        .await;
        assert_eq!(
            code, 0,
            "preferred: a crash-consistent snapshot\n{out}\n{err}"
        );
        let samples = Samples::scrape(metrics.path(), &vm, "snapshot");
        assert_eq!(samples.get("qsnap_last_run_exit_code"), 0.0);
        assert_eq!(samples.consistency("crash-consistent"), 1.0);
        assert!(samples.has("qsnap_last_success_timestamp_seconds"));
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(report["consistency"], "crash-consistent");
        assert_eq!(report["frozen_filesystems"], 0);
        let warnings = report["warnings"].to_string();
        assert!(
            warnings.contains("fsfreeze hook"),
            "the hook's failure is in the report: {warnings}"
        );
        assert_eq!(fsstatus(&vm).await, qga::commands::FsfreezeStatus::Thawed);
        assert_eq!(overlay_files(&vm, "pref").len(), 2);
    })
    .await;
}
