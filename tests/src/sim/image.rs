//! Image files as the simulated QEMU writes and reads them: the simulator's own fake
//! qcow2 header (the VM's disks, `blockdev-snapshot-sync` overlays), real qcow2 images
//! made by `qemu-img` (`blockdev-create`), and the log of files created or clobbered.

use super::args::{QmpResult, generic};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"QFI\xfb";
/// The qcow2 header extension naming the backing file's format.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;

/// What a qcow2 header records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ImageMeta {
    pub(super) virtual_size: u64,
    pub(super) cluster_size: u64,
    pub(super) backing_file: Option<String>,
    pub(super) backing_fmt: Option<String>,
}

impl ImageMeta {
    /// Replaces `path`'s contents with a fake qcow2 header.
    pub(super) fn write_fake(&self, path: &Path) -> std::io::Result<()> {
        let header = json!({"virtual-size": self.virtual_size, "cluster-size": self.cluster_size,
            "backing-file": self.backing_file, "backing-fmt": self.backing_fmt});
        let mut f = std::fs::File::create(path)?;
        f.write_all(MAGIC)?;
        f.write_all(header.to_string().as_bytes())?;
        f.write_all(b"\n")
    }

    /// Replaces `path` with a real qcow2 image: `qemu-img create` (`-u`: the backing
    /// file is not opened, it may be one of the simulator's fake images).
    fn write_real(&self, path: &Path) -> QmpResult<()> {
        let mut cmd = std::process::Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("cluster_size={}", self.cluster_size));
        match (&self.backing_file, &self.backing_fmt) {
            (Some(file), Some(fmt)) => {
                cmd.args(["-u", "-b", file, "-F", fmt]);
            }
            (Some(_), None) => {
                return Err(generic(
                    "sim: a backing file without backing-fmt is not modelled (qemu-img needs -F)",
                ));
            }
            (None, _) => {}
        }
        cmd.arg(path).arg(self.virtual_size.to_string());
        let out = cmd
            .output()
            .map_err(|e| generic(format!("sim: cannot run qemu-img: {e}")))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(generic(format!(
            "sim: qemu-img create failed: {}",
            stderr.trim()
        )))
    }

    /// Reads the header of `path` (the fake one or a real qcow2 v2/v3 header), `None`
    /// when it is not a qcow2 image.
    pub(super) fn read(path: &Path) -> Option<ImageMeta> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .ok()?;
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.first() == Some(&b'{') {
            return Self::read_fake(rest);
        }
        Self::read_real(&bytes)
    }

    fn read_fake(json: &[u8]) -> Option<ImageMeta> {
        let v: Value = serde_json::from_slice(json).ok()?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(ImageMeta {
            virtual_size: v.get("virtual-size")?.as_u64()?,
            cluster_size: v.get("cluster-size")?.as_u64()?,
            backing_file: text("backing-file"),
            backing_fmt: text("backing-fmt"),
        })
    }

    /// The fields of a real header (`docs/interop/qcow2.txt`), big-endian.
    fn read_real(b: &[u8]) -> Option<ImageMeta> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let version = u32_at(4)?;
        let cluster_bits = u32_at(20)?;
        if !(2..=3).contains(&version) || !(9..=21).contains(&cluster_bits) {
            return None;
        }
        let text = |at: usize, len: usize| {
            b.get(at..at.checked_add(len)?)
                .map(|s| String::from_utf8_lossy(s).into_owned())
        };
        let (name_at, name_len) = (usize::try_from(u64_at(8)?).ok()?, u32_at(16)? as usize);
        let backing_file = (name_at != 0).then(|| text(name_at, name_len)).flatten();
        let mut at = if version >= 3 {
            u32_at(100)? as usize
        } else {
            72
        };
        let mut backing_fmt = None;
        while let (Some(kind), Some(len)) = (u32_at(at), u32_at(at + 4)) {
            let len = len as usize;
            match kind {
                0 => break,
                EXT_BACKING_FORMAT => backing_fmt = text(at + 8, len),
                _ => {}
            }
            at += 8 + len.div_ceil(8) * 8;
        }
        Some(ImageMeta {
            virtual_size: u64_at(24)?,
            cluster_size: 1 << cluster_bits,
            backing_file,
            backing_fmt,
        })
    }
}

/// What [`FileLog::write`] puts in a file.
#[derive(Debug, Clone, Copy)]
pub(super) enum Content<'a> {
    /// Created or truncated to this many bytes.
    Zeroes(u64),
    /// The simulator's fake qcow2 header.
    FakeQcow2(&'a ImageMeta),
    /// A real qcow2 image, by `qemu-img`.
    Qcow2(&'a ImageMeta),
}

/// Files QEMU created, and existing non-empty files it truncated or overwrote.
#[derive(Debug, Default, Clone)]
pub(super) struct FileLog {
    pub(super) created: Vec<PathBuf>,
    pub(super) clobbered: Vec<PathBuf>,
}

impl FileLog {
    /// Creates or replaces `path` with `content`, and logs it.
    pub(super) fn write(&mut self, path: &Path, content: Content<'_>) -> QmpResult<()> {
        let before = std::fs::metadata(path).ok().map(|m| m.len());
        let io = |e: std::io::Error| generic(format!("Could not create '{}': {e}", path.display()));
        match content {
            Content::Zeroes(size) => std::fs::File::create(path)
                .and_then(|f| f.set_len(size))
                .map_err(io)?,
            Content::FakeQcow2(m) => m.write_fake(path).map_err(io)?,
            Content::Qcow2(m) => m.write_real(path)?,
        }
        match before {
            None => self.created.push(path.to_owned()),
            Some(len) if len > 0 => self.clobbered.push(path.to_owned()),
            Some(_) => {}
        }
        Ok(())
    }
}
