//! 200 snapshot + commit cycles on one VM: nothing leaks, nothing is lost.

use crate::*;
use qsnap::{CancellationToken, CommitRequest};
use serde_json::json;

fn fd_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Files in the VM directory, sorted.
fn vm_files(vm: &QemuVm) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(vm.dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    files
}

async fn node_count(vm: &QemuVm) -> usize {
    let qmp = vm.qmp().await.unwrap();
    qmp.execute(&qmp::commands::QueryNamedBlockNodes { flat: Some(true) })
        .await
        .unwrap()
        .len()
}

/// The guest writer's log, read through the agent.
async fn guest_log(vm: &QemuVm, path: &str) -> String {
    let agent = agent(vm).await;
    let handle = agent
        .execute_raw("guest-file-open", json!({"path": path, "mode": "r"}))
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = agent
            .execute_raw("guest-file-read", json!({"handle": handle, "count": 48000}))
            .await
            .unwrap();
        let b64 = chunk["buf-b64"].as_str().unwrap();
        out.extend(decode_base64(b64));
        if chunk["eof"] == true {
            break;
        }
    }
    agent
        .execute_raw("guest-file-close", json!({"handle": handle}))
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(val(c))).collect();
        let n = v.iter().fold(0u32, |acc, x| (acc << 6) | x) << (6 * (4 - v.len()));
        let take = v.len() * 6 / 8;
        out.extend(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

#[test]
fn base64_decoder_matches_known_vectors() {
    assert_eq!(decode_base64("aGVsbG8="), b"hello");
    assert_eq!(decode_base64("aGk="), b"hi");
    assert_eq!(decode_base64("YWJj"), b"abc");
}

/// 200 quiesced snapshots, each merged back: QEMU's descriptors and nodes, the files
/// on disk and this process's descriptors end where they started, and the guest
/// writer's log has no hole: every write made during the cycles is still there.
#[tokio::test]
async fn two_hundred_snapshot_and_commit_cycles_leak_nothing_and_lose_nothing() {
    within(900, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        let qemu = vm.pid().unwrap().to_string();
        let (qemu_fds, nodes, files, own_fds) = (
            fd_count(&qemu),
            node_count(&vm).await,
            vm_files(&vm),
            fd_count("self"),
        );
        for i in 0..200 {
            let name = format!("c{i}");
            let report = qsnap::snapshot(&request(&vm, &name), &CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(
                report.consistency,
                qsnap::Consistency::Quiesced,
                "cycle {i}"
            );
            for disk in ["vblk0", "vblk1"] {
                let req = CommitRequest::new(vm.qmp_path(), disk);
                qsnap::commit(&req, |_| {}, &CancellationToken::new())
                    .await
                    .unwrap();
            }
        }
        assert_eq!(fd_count(&qemu), qemu_fds, "QEMU's descriptors");
        assert_eq!(node_count(&vm).await, nodes, "QEMU's block nodes");
        assert_eq!(vm_files(&vm), files, "files in the VM directory");
        let own = fd_count("self");
        assert!(
            own <= own_fds + 20,
            "this process: {own_fds} -> {own} descriptors"
        );
        for path in ["/data/writer.log", "/data2/writer.log"] {
            let log = guest_log(&vm, path).await;
            let stamps: Vec<f64> = log.lines().map(|l| l.parse().unwrap()).collect();
            assert!(stamps.len() > 100, "{path}: {} lines", stamps.len());
            let worst = stamps.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
            assert!(
                stamps.windows(2).all(|w| w[1] >= w[0]),
                "{path} out of order"
            );
            assert!(
                worst < 3.0,
                "{path}: a {worst:.2} s hole in the writer's log"
            );
        }
    })
    .await;
}
