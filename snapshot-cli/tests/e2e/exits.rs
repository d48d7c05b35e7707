//! Every exit code `qsnap --help` documents, provoked, with the message it prints.

use crate::cli::{qsnap, run};
use crate::fake::{Fake, fake_agent};
use crate::*;
use qsnap_tests::Agent;

#[tokio::test]
async fn usage_errors_exit_2() {
    within(60, async {
        let vm = QemuVm::builder()
            .disks(1)
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let (code, _, err) = run(&vm, &["snapshot", "--quiesce", "maybe"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("possible values: required, preferred, off"),
            "{err}"
        );
        let (code, _, err) = run(&vm, &["snapshot", "--freeze-timeout", "soon"]).await;
        assert_eq!(code, 2);
        assert!(err.contains("500ms, 10s, 2m"), "{err}");
        let (code, _, _) = run(&vm, &[]).await;
        assert_eq!(code, 2);
        let (code, out, _) = run(&vm, &["--help"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("Exit codes:") && out.contains("130  interrupted"),
            "{out}"
        );
    })
    .await;
}

#[tokio::test]
async fn other_errors_exit_1_and_say_what_to_do() {
    within(120, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (code, out, err) =
            run(&vm, &["--json", "--qmp", "/nonexistent/qmp.sock", "info"]).await;
        assert_eq!(code, 1);
        assert!(
            err.contains("cannot connect to /nonexistent/qmp.sock") && err.contains("No such file"),
            "{err}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["exit_code"],
            1
        );

        let (code, _, err) = run(&vm, &["snapshot", "--disk", "vda"]).await;
        assert_eq!(code, 1);
        assert!(
            err.contains("no disk `vda`") && err.contains("disk0 (device vblk0)"),
            "{err}"
        );

        std::fs::write(vm.dir().join("disk0.taken.qcow2"), b"x").unwrap();
        let (code, _, err) = run(&vm, &["snapshot", "--name", "taken"]).await;
        assert_eq!(code, 1);
        assert!(
            err.contains("already exists") && err.contains("--name"),
            "{err}"
        );

        let (code, _, err) = run(&vm, &["snapshot", "--name", "../escape"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("invalid snapshot name"), "{err}");

        let (code, _, err) = run(&vm, &["qmp", "no-such-command"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("CommandNotFound"), "{err}");

        // QEMU serves one QMP client at a time: a busy socket is named as such.
        let holder = vm.qmp().await.unwrap();
        let (code, _, err) = run(&vm, &["info"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("another client"), "{err}");
        drop(holder);
        assert_eq!(
            overlay_files(&vm, "taken"),
            ["disk0.taken.qcow2"],
            "only the test's own file"
        );
        assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
    })
    .await;
}

#[tokio::test]
async fn quiesce_required_without_an_agent_exits_3_and_ping_says_why() {
    within(120, async {
        let vm = QemuVm::builder()
            .disks(2)
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let (code, _, err) = run(&vm, &["snapshot", "--name", "na", "--agent-timeout", "1s"]).await;
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("quiesce required but unavailable"), "{err}");
        assert_eq!(overlay_files(&vm, "na"), Vec::<String>::new());
        let (code, _, err) = run(&vm, &["ping"]).await;
        assert_eq!(code, 1);
        assert!(err.contains("is qemu-ga running"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn vss_thawed_early_required_undoes_exit_3_preferred_keeps_exit_6() {
    within(120, async {
        let vm = QemuVm::builder()
            .disks(1)
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let sock = vm.dir().join("fake.sock");
        let _sim = fake_agent(&sock, Fake::WindowsAutoThaw).await;
        let sock = sock.display().to_string();
        let (code, _, err) = run(&vm, &["--qga", &sock, "snapshot", "--name", "w"]).await;
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("undone") && err.contains("nothing was changed"),
            "{err}"
        );
        assert_eq!(overlay_files(&vm, "w"), Vec::<String>::new());
        assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
        let sock2 = vm.dir().join("fake2.sock");
        let _sim = fake_agent(&sock2, Fake::WindowsAutoThaw).await;
        let sock2 = sock2.display().to_string();
        let args = [
            "--qga",
            &sock2,
            "snapshot",
            "--name",
            "w2",
            "--quiesce",
            "preferred",
        ];
        let (code, _, err) = run(&vm, &args).await;
        assert_eq!(code, 6, "{err}");
        assert!(err.contains("only crash-consistent"), "{err}");
        assert_eq!(overlay_files(&vm, "w2").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn unconfirmed_thaw_exits_5_and_says_how_to_recover() {
    within(120, async {
        let vm = QemuVm::builder()
            .disks(1)
            .agent(Agent::Absent)
            .start()
            .await
            .unwrap();
        let sock = vm.dir().join("fake.sock");
        let _sim = fake_agent(&sock, Fake::StuckFrozen).await;
        let sock = sock.display().to_string();
        let out = qsnap(&vm)
            .args(["--qga", &sock, "thaw"])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{err}");
        assert!(
            err.contains("may still be frozen") && err.contains("qsnap thaw --force --qga"),
            "{err}"
        );
    })
    .await;
}
