//! The seed corpus: lines as QEMU 10 and qemu-ga 10 really send them (greeting,
//! returns, errors, events, `0xFF`-delimited sync replies), plus the awkward cases
//! a hostile or broken peer adds (non-UTF-8, CRLF, partial lines).

/// QMP monitor traffic, each entry with its terminator as on the wire.
const QMP: &[&[u8]] = &[
    br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#,
    br#"{"return": {}}"#,
    br#"{"return": {}, "id": 1}"#,
    br#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": 7}"#,
    br#"{"return": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2"}}"#,
    br#"{"return": [{"io-status": "ok", "device": "", "locked": false, "removable": false, "inserted": {"iops_rd": 0, "detect_zeroes": "off", "image": {"backing-image": {"virtual-size": 67108864, "filename": "/tmp/qsnap-vm/base0.qcow2", "cluster-size": 65536, "format": "qcow2", "actual-size": 200704, "dirty-flag": false}, "backing-filename-format": "qcow2", "virtual-size": 67108864, "filename": "/tmp/qsnap-vm/disk0.qcow2", "cluster-size": 65536, "format": "qcow2", "actual-size": 1052672, "full-backing-filename": "/tmp/qsnap-vm/base0.qcow2", "backing-filename": "/tmp/qsnap-vm/base0.qcow2", "dirty-flag": false}, "iops_wr": 0, "ro": false, "node-name": "disk0", "backing_file_depth": 1, "drv": "qcow2", "active": true, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {"no-flush": false, "direct": false, "writeback": true}, "file": "/tmp/qsnap-vm/disk0.qcow2", "backing_file": "/tmp/qsnap-vm/base0.qcow2"}, "qdev": "/machine/peripheral/vblk0/virtio-backend", "type": "unknown"}], "id": 3}"#,
    br#"{"return": [{"current-progress": 67108864, "status": "ready", "total-progress": 67108864, "type": "commit", "id": "qsnap-commit-0"}]}"#,
    br#"{"error": {"class": "GenericError", "desc": "Could not open '/tmp/x.qcow2': No such file or directory"}, "id": 4}"#,
    br#"{"error": {"class": "CommandNotFound", "desc": "The command query-bogus has not been found"}}"#,
    br#"{"error": {"class": "DeviceNotFound", "desc": "Device 'vblk9' not found"}, "id": 12}"#,
    br#"{"timestamp": {"seconds": 1735689600, "microseconds": 412345}, "event": "STOP"}"#,
    br#"{"timestamp": {"seconds": 1735689601, "microseconds": 5}, "event": "RESUME"}"#,
    br#"{"timestamp": {"seconds": 1735689602, "microseconds": 88}, "event": "JOB_STATUS_CHANGE", "data": {"status": "ready", "id": "qsnap-commit-0"}}"#,
    br#"{"timestamp": {"seconds": 1735689602, "microseconds": 90}, "event": "BLOCK_JOB_READY", "data": {"device": "qsnap-commit-0", "len": 67108864, "offset": 67108864, "speed": 0, "type": "commit"}}"#,
    br#"{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#,
];

/// qemu-ga traffic.
const QGA: &[&[u8]] = &[
    b"\xff{\"return\": 123}",
    b"\xff{\"return\": 9223372036854775807}",
    br#"{"return": 123}"#,
    br#"{"return": 2}"#,
    br#"{"return": "thawed"}"#,
    br#"{"return": "frozen"}"#,
    br#"{"return": {}}"#,
    br#"{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\ufffd'"}}"#,
    br#"{"error": {"class": "CommandNotFound", "desc": "Command guest-get-fsinfo has been disabled: the command is not allowed"}}"#,
    br#"{"error": {"class": "GenericError", "desc": "failed to freeze /data: Device or resource busy"}}"#,
    br#"{"return": {"version": "10.0.2", "supported_commands": [{"enabled": true, "name": "guest-fsfreeze-thaw", "success-response": true}, {"enabled": false, "name": "guest-get-fsinfo", "success-response": true}, {"enabled": true, "name": "guest-sync-delimited", "success-response": true}]}}"#,
    br##"{"return": {"kernel-release": "6.1.0-28-cloud-amd64", "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1", "machine": "x86_64", "id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version": "12 (bookworm)", "version-id": "12"}}"##,
    br#"{"return": [{"name": "vdb", "total-bytes": 62725623808, "mountpoint": "/data", "disk": [{"serial": "qsnap0", "bus-type": "virtio", "bus": 0, "unit": 0, "pci-controller": {"bus": 0, "slot": 4, "domain": 0, "function": 0}, "dev": "/dev/vdb", "target": 0}], "used-bytes": 24576, "type": "ext4"}]}"#,
    b"{\"return\": \"\xc3\x28\"}",
    b"{\"return\": \"\xe2\x80\xae\x1b]0;x\x07\"}",
    b"{\"execute\": \"guest-fsfreeze-fr",
];

/// Every corpus entry, terminated the way the peer would (`\n`, sometimes `\r\n`).
pub(crate) fn lines() -> Vec<Vec<u8>> {
    QMP.iter()
        .chain(QGA)
        .enumerate()
        .map(|(i, line)| {
            let mut v = line.to_vec();
            v.extend_from_slice(if i % 5 == 4 { b"\r\n" } else { b"\n" });
            v
        })
        .collect()
}

/// The JSON entries without terminator or sentinel, for structure-aware mutation.
pub(crate) fn json_values() -> Vec<serde_json::Value> {
    QMP.iter()
        .chain(QGA)
        .filter_map(|line| {
            let line = line.strip_prefix(b"\xff").unwrap_or(line);
            serde_json::from_slice(line).ok()
        })
        .collect()
}

/// Bytes mutations like to insert: framing bytes, JSON punctuation, broken UTF-8,
/// terminal escapes and bidi overrides.
pub(crate) const INTERESTING: &[&[u8]] = &[
    b"\xff",
    b"\n",
    b"\r\n",
    b"\r",
    b"\0",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\x80",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xe2\x80\xae",
    b"\x1b[2J",
    b"\\u0000",
    b"\\ud800",
    b"\\u001b",
    b"\"return\":",
    b"\"error\":",
    b"\"event\":",
    b"\"QMP\":",
    b"\"id\":",
    b"null",
    b"true",
    b"-0",
    b"1e309",
    b"18446744073709551616",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"0.000000000000000000000000000001",
];
