//! Command-line arguments (clap derive).

use clap::{Args, Parser, Subcommand};
use qsnap::Quiesce;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0    ok
  1    other error
  2    usage error
  3    quiesce required but unavailable or failed (guest thawed, nothing changed)
  4    snapshot failed (guest thawed, nothing changed); backup failed (guest thawed,
       its files and bitmaps removed, the earlier bitmaps kept); commit failed (the
       disk stays on its overlay; the base may already hold part of its data)
  5    thaw could not be confirmed (the guest may still be frozen: `qsnap thaw --force`)
  6    snapshot or backup made and kept, but only crash-consistent (--quiesce
       preferred/off)
  7    failed, and the cleanup left something behind (listed, with what to do)
  8    verify found a problem (listed)
  130  interrupted (snapshot, backup, freeze: guest thawed, nothing changed; commit:
       job cancelled, the disk stays on its overlay)
Every claim in parentheses is checked just before qsnap exits.";

/// Filesystem-consistent live disk snapshots of VMs run by bare QEMU (QMP + guest agent).
#[derive(Debug, Parser)]
#[command(name = "qsnap", version, after_help = EXIT_CODES, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The VM's QMP socket (QEMU: -qmp unix:PATH,server=on,wait=off).
    #[arg(long, global = true, env = "QSNAP_QMP", value_name = "PATH")]
    pub(crate) qmp: Option<PathBuf>,
    /// The guest agent's socket (QEMU: -chardev socket,path=PATH,server=on,wait=off,id=qga0).
    #[arg(long, global = true, env = "QSNAP_QGA", value_name = "PATH")]
    pub(crate) qga: Option<PathBuf>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// More logging on stderr (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Less logging on stderr (errors only).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Take a filesystem-consistent snapshot of the VM's disks (freeze, switch, thaw).
    Snapshot(SnapshotArgs),
    /// Show QEMU's version and run state, each disk's backing chain, and the agent.
    Info,
    /// Check that the guest agent answers.
    Ping,
    /// Freeze the guest's filesystems (remember to thaw!).
    Freeze {
        /// Freeze only this guest mountpoint (repeatable).
        #[arg(long = "mountpoint", value_name = "PATH")]
        mountpoints: Vec<String>,
    },
    /// Thaw the guest's filesystems: rescues a guest left frozen by anything.
    Thaw(ThawArgs),
    /// Show whether the guest's filesystems are frozen.
    Fsstatus,
    /// Merge a disk's active overlay back into its backing image, live.
    Commit(CommitArgs),
    /// Back up the VM's disks at one frozen instant into standalone images (full, or
    /// incremental with persistent dirty bitmaps); the guest runs while they copy.
    Backup(BackupArgs),
    /// Build a standalone image of one disk at a backup's instant (offline).
    Restore(RestoreArgs),
    /// Check a backup and its chain: images, backing chain, checksums (offline).
    Verify {
        /// The backup: its manifest, DIR/<id>.json.
        backup: PathBuf,
    },
    /// List the backups in a directory, by chain (offline).
    Backups {
        /// The backup directory.
        dir: PathBuf,
    },
    /// Run a raw QMP command and print its reply (escape hatch).
    Qmp {
        /// The command, e.g. query-status.
        command: String,
        /// Its arguments as a JSON object.
        args: Option<String>,
    },
    /// Run a raw guest-agent command and print its reply (escape hatch).
    Qga {
        /// The command, e.g. guest-info.
        command: String,
        /// Its arguments as a JSON object.
        args: Option<String>,
    },
    /// Print QMP events as JSON lines until interrupted or QEMU exits.
    Events,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from these same definitions.
    Man,
    /// Internal: the out-of-process guardian that thaws if the coordinator dies.
    #[command(hide = true)]
    Guardian(GuardianArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SnapshotArgs {
    /// Snapshot name, part of each overlay file name (default: snap-<UTC time>).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Directory for the overlays (default: beside each active image).
    #[arg(long, value_name = "DIR")]
    pub(crate) overlay_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) window: WindowArgs,
    #[command(flatten)]
    pub(crate) metrics: MetricsArg,
}

/// Where a run's Prometheus metrics go (snapshot, backup).
#[derive(Debug, Args)]
pub(crate) struct MetricsArg {
    /// Write this run's metrics (Prometheus text format) to FILE, replacing it
    /// atomically: for node_exporter's textfile collector (a FILE ending in .prom in
    /// its directory). Written on success and on failure.
    #[arg(long, value_name = "FILE")]
    pub(crate) metrics_file: Option<PathBuf>,
}

/// Which disks, and how to quiesce the guest: the same for snapshot and backup.
#[derive(Debug, Args)]
pub(crate) struct WindowArgs {
    /// Disk, by node-name or qdev id (repeatable; default: every writable disk).
    #[arg(long = "disk", value_name = "NODE|ID")]
    pub(crate) disks: Vec<String>,
    /// What to do if the guest cannot be frozen.
    #[arg(long, value_enum, default_value_t = Quiesce::Required)]
    pub(crate) quiesce: Quiesce,
    /// Longest time the guest may stay frozen (e.g. 500ms, 10s, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DUR")]
    pub(crate) freeze_timeout: Duration,
    /// Do not run `sync` in the guest (guest-exec) just before the freeze. The
    /// pre-flush writes dirty data out while the guest still runs, so the freeze —
    /// during which guest writes block — has little left to write; it is skipped by
    /// itself when the agent does not allow guest-exec, and never fails a run.
    #[arg(long)]
    pub(crate) no_pre_flush: bool,
    /// The longest the pre-flush may take before the freeze goes ahead anyway.
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DUR")]
    pub(crate) pre_flush_timeout: Duration,
    /// Freeze only this guest mountpoint (repeatable; default: all).
    #[arg(long = "mountpoint", value_name = "PATH")]
    pub(crate) mountpoints: Vec<String>,
    /// How long to wait for the guest agent to answer.
    #[arg(long, value_parser = parse_duration, default_value = "3s", value_name = "DUR")]
    pub(crate) agent_timeout: Duration,
    /// Run without the out-of-process guardian (a SIGKILL while frozen then leaves the
    /// guest frozen).
    #[arg(long)]
    pub(crate) no_guardian: bool,
    /// Testing aid: stay frozen this long before the transaction.
    #[arg(long, value_parser = parse_duration, hide = true, default_value = "0s")]
    pub(crate) debug_hold_frozen: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// The backup directory (one per VM; it must exist).
    #[arg(long, value_name = "DIR")]
    pub(crate) target: PathBuf,
    /// Copy only what changed since the last complete backup in DIR (a full backup,
    /// and why, when the disks' bitmaps do not allow it).
    #[arg(long)]
    pub(crate) incremental: bool,
    /// Limit each disk's copy to this rate, bytes per second (suffixes K, M, G: 1024s).
    #[arg(long, value_parser = parse_bytes, value_name = "BYTES")]
    pub(crate) speed: Option<u64>,
    #[command(flatten)]
    pub(crate) window: WindowArgs,
    #[command(flatten)]
    pub(crate) metrics: MetricsArg,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup: its manifest, DIR/<id>.json.
    pub(crate) backup: PathBuf,
    /// The new image (must not exist).
    #[arg(long, value_name = "FILE")]
    pub(crate) to: PathBuf,
    /// The disk (qdev id), when the backup has several.
    #[arg(long, value_name = "ID")]
    pub(crate) disk: Option<String>,
    /// The new image's format.
    #[arg(long, default_value = "qcow2", value_parser = ["qcow2", "raw"])]
    pub(crate) format: String,
}

#[derive(Debug, Args)]
pub(crate) struct ThawArgs {
    /// How long to keep confirming (a slow fsfreeze hook can hold the agent).
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DUR")]
    pub(crate) wait: Duration,
    /// Thaw even while another qsnap holds the VM (it may be mid-snapshot: its
    /// snapshot then stops being consistent).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CommitArgs {
    /// The disk, by its active node-name or qdev id.
    #[arg(long, value_name = "NODE|ID")]
    pub(crate) disk: String,
    /// The node to commit from (default: the active overlay).
    #[arg(long, value_name = "NODE")]
    pub(crate) top: Option<String>,
    /// The node to commit into (default: the backing node of --top, one level down).
    #[arg(long, value_name = "NODE")]
    pub(crate) base: Option<String>,
    /// Also commit an overlay qsnap did not make into its backing image (by default
    /// only qsnap's overlays are merged, so an image qsnap never touched — a golden
    /// image other VMs share — is never written).
    #[arg(long)]
    pub(crate) any_overlay: bool,
    /// Keep the merged overlay's file (by default qsnap removes it once merged).
    #[arg(long)]
    pub(crate) keep_overlay: bool,
}

#[derive(Debug, Args)]
pub(crate) struct GuardianArgs {
    /// The coordinator's pid.
    #[arg(long)]
    pub(crate) coordinator: u32,
    /// The freeze deadline, in milliseconds.
    #[arg(long)]
    pub(crate) deadline_ms: u64,
    /// Where to log.
    #[arg(long)]
    pub(crate) log: Option<PathBuf>,
    /// The process serving the agent socket (QEMU), watched so that a rescue stops
    /// once it has exited.
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
}

/// Parses `1048576`, `512K`, `50M`, `1G` (powers of 1024).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => {
            return Err(format!(
                "{s:?}: use a number of bytes, e.g. 1048576, 512K, 50M"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: use a positive number of bytes, e.g. 1048576, 512K, 50M"))
}

/// Parses `500ms`, `10s`, `2m`, `1h 30m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_accept_ms_s_and_m() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").unwrap_err().contains("10s"));
    }

    #[test]
    fn byte_rates_take_binary_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("50M"), Ok(50 << 20));
        assert!(
            parse_bytes("0").is_err() && parse_bytes("5T").is_err() && parse_bytes("M").is_err()
        );
    }
}
