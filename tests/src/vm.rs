//! [`QemuVm`]: a real `qemu-system-x86_64` running the test guest, killed on drop.

use crate::error::{Error, Result};
use crate::image::GuestImage;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How the guest runs its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// qemu-ga starts at boot.
    AtBoot,
    /// qemu-ga starts this many seconds after boot.
    Late(u32),
    /// No qemu-ga at all (the channel exists, nobody answers).
    Absent,
}

/// Options for a [`QemuVm`].
#[derive(Debug, Clone)]
pub struct VmBuilder {
    disks: usize,
    writer: bool,
    agent: Agent,
    memory_mib: u32,
    hook: Option<u32>,
    database: bool,
    hook_fail: bool,
    strict_dispatcher: bool,
    qemu72: bool,
    stall_probe: Option<u32>,
    block_device: Option<PathBuf>,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self {
            disks: 2,
            writer: false,
            agent: Agent::AtBoot,
            memory_mib: 512,
            hook: None,
            database: false,
            hook_fail: false,
            strict_dispatcher: false,
            qemu72: false,
            stall_probe: None,
            block_device: None,
        }
    }
}

impl VmBuilder {
    /// Number of data disks (1 to 4), mounted in the guest at `/data`, `/data2`, ...
    pub fn disks(mut self, n: usize) -> Self {
        self.disks = n;
        self
    }

    /// Runs a guest process appending to `writer.log` on every data disk every 100 ms.
    pub fn writer(mut self, on: bool) -> Self {
        self.writer = on;
        self
    }

    /// Runs qemu-ga with its fsfreeze hook dispatcher (`-F`) and a hook script that
    /// sleeps `secs` seconds on freeze: the agent answers nothing meanwhile, as with a
    /// slow application hook.
    pub fn freeze_hook(mut self, secs: u32) -> Self {
        self.hook = Some(secs);
        self
    }

    /// Runs a SQLite writer on `/data/db.sqlite` (WAL mode, a numbered row every 2 ms,
    /// one connection kept open) and its fsfreeze-hook.d script: on freeze it holds
    /// the writer back, checkpoints and truncates the WAL, and logs
    /// `qsnap-db: frozen at row N` on the console; on thaw it lets the writer go.
    pub fn database(mut self, on: bool) -> Self {
        self.database = on;
        self
    }

    /// Adds a hook script that fails on freeze (it runs after the database's).
    pub fn failing_hook(mut self, on: bool) -> Self {
        self.hook_fail = on;
        self
    }

    /// Runs qsnap's strict dispatcher (`contrib/guest/fsfreeze-hook`: a failing script
    /// fails the freeze) instead of Debian's (which logs the failure and freezes).
    pub fn strict_dispatcher(mut self, on: bool) -> Self {
        self.strict_dispatcher = on;
        self
    }

    /// Runs Debian 12's QEMU 7.2 and qemu-ga 7.2 (unpacked beside the image by
    /// `cargo xtask guest-image`) instead of the installed QEMU and its qemu-ga.
    pub fn qemu72(mut self, on: bool) -> Self {
        self.qemu72 = on;
        self
    }

    /// Runs the write-stall probe on every data disk (every 1 ms a buffered 4 KiB
    /// rewrite; each write taking > 5 ms is logged on the console as
    /// `qsnap-stall: DIR MS RUNQ_MS CPU_MS`) and, with `heavy_mbps > 0`, that many
    /// MB/s of buffered writes on `/data`.
    pub fn stall_probe(mut self, heavy_mbps: u32) -> Self {
        self.stall_probe = Some(heavy_mbps);
        self
    }

    /// Data disk 0 is this host block device (`driver=host_device`, raw, no format
    /// node), e.g. a loop device holding an ext4 filesystem.
    pub fn block_device_disk(mut self, device: impl Into<PathBuf>) -> Self {
        self.block_device = Some(device.into());
        self
    }

    /// When the guest agent starts.
    pub fn agent(mut self, agent: Agent) -> Self {
        self.agent = agent;
        self
    }

    /// Boots the VM and waits for QEMU's QMP greeting (not for the guest).
    ///
    /// # Errors
    /// No guest image, `qemu-img` or `qemu-system-x86_64` failing, or no greeting
    /// within 10 s.
    pub async fn start(self) -> Result<QemuVm> {
        let image = GuestImage::locate()?;
        if !(1..=image.disks()).contains(&self.disks) {
            return Err(Error::Config(format!(
                "{} disks asked for; the image has 1 to {}",
                self.disks,
                image.disks()
            )));
        }
        // Unix socket paths must stay under 108 bytes: use a short directory in /tmp.
        let dir = tempfile::Builder::new()
            .prefix("qsnap-vm-")
            .tempdir_in("/tmp")?;
        let disks = (0..self.disks)
            .map(|i| make_disk(&image.disk(i), dir.path(), i))
            .collect::<Result<Vec<_>>>()?;
        let child = self.spawn(&image, dir.path(), &disks)?;
        let vm = QemuVm {
            child: Some(child),
            dir,
            disks,
            builder: self,
        };
        vm.wait_for_greeting(Duration::from_secs(10)).await?;
        Ok(vm)
    }

    fn kernel_args(&self) -> String {
        let mut args = String::from("console=ttyS0 quiet panic=-1");
        if self.writer {
            args.push_str(" qsnap.writer=1");
        }
        match self.agent {
            Agent::AtBoot => {}
            Agent::Late(s) => {
                let _ = write!(args, " qsnap.agent_delay={s}");
            }
            Agent::Absent => args.push_str(" qsnap.agent=0"),
        }
        if let Some(secs) = self.hook {
            let _ = write!(args, " qsnap.hook={secs}");
        }
        if self.database {
            args.push_str(" qsnap.db=1");
        }
        if self.hook_fail {
            args.push_str(" qsnap.hook_fail=1");
        }
        if self.strict_dispatcher {
            args.push_str(" qsnap.dispatcher=strict");
        }
        if let Some(heavy) = self.stall_probe {
            let _ = write!(args, " qsnap.probe=1 qsnap.heavy={heavy}");
        }
        args
    }

    fn spawn(&self, image: &GuestImage, dir: &Path, disks: &[PathBuf]) -> Result<Child> {
        let (mut cmd, initramfs) = if self.qemu72 {
            let q = image.qemu72()?;
            let mut cmd = Command::new(&q.emulator);
            cmd.env("QEMU_MODULE_DIR", &q.module_dir);
            for dir in crate::image::Qemu72::FIRMWARE {
                cmd.args(["-L", dir]);
            }
            (cmd, q.initramfs)
        } else {
            (Command::new("qemu-system-x86_64"), image.initramfs())
        };
        cmd.args(["-machine", "q35", "-accel", "tcg", "-smp", "1"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-kernel")
            .arg(image.kernel())
            .arg("-initrd")
            .arg(initramfs)
            .args(["-append", &self.kernel_args()]);
        for (i, disk) in disks.iter().enumerate() {
            match &self.block_device {
                Some(dev) if i == 0 => cmd.arg("-blockdev").arg(format!(
                    "driver=host_device,filename={},node-name=disk0",
                    dev.display()
                )),
                _ => cmd
                    .arg("-blockdev")
                    .arg(format!(
                        "driver=file,filename={},node-name=file{i}",
                        disk.display()
                    ))
                    .arg("-blockdev")
                    .arg(format!("driver=qcow2,file=file{i},node-name=disk{i}")),
            };
            cmd.arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk{i},id=vblk{i}"));
        }
        let sock = |name: &str| dir.join(name).display().to_string();
        cmd.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock("qmp.sock")))
            .arg("-chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                sock("qga.sock")
            ))
            .args(["-device", "virtio-serial-pci,id=vser0"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .arg("-serial")
            .arg(format!("file:{}", sock("serial.log")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.stderr"))?);
        cmd.spawn()
            .map_err(|e| Error::Spawn("qemu-system-x86_64", e))
    }
}

/// `base{i}.qcow2`, a private copy of the cached base (≈1 MiB, so a commit that runs
/// down to the bottom of the chain can never write into the shared cache), and
/// `disk{i}.qcow2`, the throw-away overlay the VM runs on.
fn make_disk(cached: &Path, dir: &Path, i: usize) -> Result<PathBuf> {
    let base = dir.join(format!("base{i}.qcow2"));
    std::fs::copy(cached, &base)?;
    make_overlay(&base, &dir.join(format!("disk{i}.qcow2")))
}

fn make_overlay(base: &Path, overlay: &Path) -> Result<PathBuf> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .map_err(|e| Error::Spawn("qemu-img", e))?;
    if !out.status.success() {
        return Err(Error::Tool(
            "qemu-img create",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(overlay.to_owned())
}

/// A running VM. Dropping it kills QEMU; if the thread is panicking (a failed test),
/// the guest's serial log and QEMU's stderr are printed first.
#[derive(Debug)]
pub struct QemuVm {
    child: Option<Child>,
    dir: TempDir,
    disks: Vec<PathBuf>,
    builder: VmBuilder,
}

impl QemuVm {
    /// A VM with two data disks and the agent started at boot.
    ///
    /// # Errors
    /// As [`VmBuilder::start`].
    pub async fn start() -> Result<Self> {
        VmBuilder::default().start().await
    }

    /// Options for a VM.
    pub fn builder() -> VmBuilder {
        VmBuilder::default()
    }

    /// The VM's own directory (sockets, disks, serial log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The QMP socket.
    pub fn qmp_path(&self) -> PathBuf {
        self.dir().join("qmp.sock")
    }

    /// The guest-agent socket.
    pub fn qga_path(&self) -> PathBuf {
        self.dir().join("qga.sock")
    }

    /// The active image file of each data disk, in order (`disk0.qcow2`, ...).
    pub fn disks(&self) -> &[PathBuf] {
        &self.disks
    }

    /// The node name of data disk `i` (`disk{i}`); its qdev id is `vblk{i}`.
    pub fn node(i: usize) -> String {
        format!("disk{i}")
    }

    /// The private base image under data disk `i`'s overlay.
    pub fn base(&self, i: usize) -> PathBuf {
        self.dir().join(format!("base{i}.qcow2"))
    }

    /// Everything the guest printed on its serial console so far.
    pub fn serial_log(&self) -> String {
        std::fs::read_to_string(self.dir().join("serial.log")).unwrap_or_default()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Connects a fresh QMP client (QEMU serves one at a time: drop it when done).
    ///
    /// # Errors
    /// As [`qmp::Client::connect`].
    pub async fn qmp(&self) -> Result<qmp::Client> {
        Ok(qmp::Client::connect(self.qmp_path(), qmp::Config::default()).await?)
    }

    /// Waits until the guest agent answers a sync, then disconnects.
    ///
    /// # Errors
    /// The agent did not answer within `within`.
    pub async fn wait_for_agent(&self, within: Duration) -> Result<()> {
        let config = qga::Config::default().sync_timeout(within);
        qga::Client::connect(self.qga_path(), config).await?;
        Ok(())
    }

    async fn wait_for_greeting(&self, within: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match qmp::Client::connect(self.qmp_path(), qmp::Config::default()).await {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() > within => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Stops QEMU — cleanly (`quit`: images closed, persistent bitmaps stored) or not
    /// (SIGKILL) — and starts it again on the same disks; the guest boots afresh.
    ///
    /// # Errors
    /// QEMU did not stop within 30 s, or did not start again.
    pub async fn restart(&mut self, clean: bool) -> Result<()> {
        if clean {
            let qmp = self.qmp().await?;
            let _ = qmp.execute(&qmp::commands::Quit).await;
            let start = Instant::now();
            while let Some(child) = self.child.as_mut() {
                if child.try_wait()?.is_some() {
                    self.child = None;
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(Error::Config("QEMU did not quit within 30 s".into()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.kill();
        let image = GuestImage::locate()?;
        self.child = Some(self.builder.spawn(&image, self.dir.path(), &self.disks)?);
        self.wait_for_greeting(Duration::from_secs(10)).await
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn report(&self) {
        let stderr = std::fs::read_to_string(self.dir().join("qemu.stderr")).unwrap_or_default();
        eprintln!(
            "---- qemu stderr ({}) ----\n{stderr}---- guest serial log ----\n{}----",
            self.dir().display(),
            self.serial_log()
        );
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report();
        }
        self.kill();
    }
}
