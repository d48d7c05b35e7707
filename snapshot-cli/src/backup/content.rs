//! Reading backup images offline, with `qemu-img` (no QEMU process, no guest): the
//! backing chain (`info --backing-chain`), the allocation map (`map`), consistency
//! (`check`), and a standalone copy (`convert`).
//!
//! Why `qemu-img` and not the storage daemon: every question here is one short,
//! read-only command on closed images; the daemon would add a QMP session, an export
//! and a socket for nothing. The checksum reads the data itself: `qemu-img map` says
//! where each guest-visible extent lives (which file of the chain, at which offset, or
//! zeros), and qsnap hashes those bytes — so only allocated data is read, and no
//! temporary copy is made.

use crate::error::{Error, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One image of a chain, as `qemu-img info --backing-chain` reports it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct ChainImage {
    pub(crate) filename: String,
    pub(crate) format: String,
    pub(crate) virtual_size: u64,
}

/// One extent of `qemu-img map --output=json`.
#[derive(Debug, Clone, Deserialize)]
struct Extent {
    start: u64,
    length: u64,
    depth: usize,
    data: bool,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    compressed: bool,
}

/// What hashing an image found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Content {
    /// SHA-256 of the guest-visible bytes, hex.
    pub(crate) sha256: String,
    /// Bytes allocated in the top image itself.
    pub(crate) data_bytes: u64,
}

fn qemu_img(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "qemu-img {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Invalid(format!("{} is not UTF-8", p.display())))
}

/// The image's backing chain, top first (`-U`: safe on images QEMU has open).
pub(crate) fn chain(image: &Path, format: &str) -> Result<Vec<ChainImage>> {
    let out = qemu_img(&[
        "info",
        "-U",
        "--backing-chain",
        "--output=json",
        "-f",
        format,
        path_str(image)?,
    ])?;
    // One image is an object, a chain an array.
    serde_json::from_slice::<Vec<ChainImage>>(&out)
        .or_else(|_| serde_json::from_slice::<ChainImage>(&out).map(|i| vec![i]))
        .map_err(|e| Error::Invalid(format!("qemu-img info: unexpected output: {e}")))
}

/// Set to stop a hash (or a restore or verify) at the next MiB: Ctrl-C.
pub type Stop = std::sync::atomic::AtomicBool;

fn stopped(stop: &Stop) -> Result<()> {
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Runs `work` off the runtime's thread (reading whole disks must not keep signals
/// from being served); `cancel` stops it at its next [`Stop`] check.
///
/// # Errors
/// `work`'s, or [`Error::Interrupted`] when it stopped.
pub async fn stoppable<T: Send + 'static>(
    cancel: &tokio_util::sync::CancellationToken,
    work: impl FnOnce(&Stop) -> Result<T> + Send + 'static,
) -> Result<T> {
    let stop = std::sync::Arc::new(Stop::new(false));
    let flag = stop.clone();
    let mut task = tokio::task::spawn_blocking(move || work(&flag));
    let joined = tokio::select! {
        j = &mut task => j,
        () = cancel.cancelled() => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            task.await
        }
    };
    joined.unwrap_or_else(|e| Err(Error::Invalid(format!("the work thread failed: {e}"))))
}

/// Hashes the guest-visible content of `image` (with its backing chain).
pub(crate) fn hash(image: &Path, format: &str, stop: &Stop) -> Result<Content> {
    let chain = chain(image, format)?;
    let out = qemu_img(&["map", "-U", "--output=json", "-f", format, path_str(image)?])?;
    let extents: Vec<Extent> = serde_json::from_slice(&out)
        .map_err(|e| Error::Invalid(format!("qemu-img map: unexpected output: {e}")))?;
    let size = chain.first().map_or(0, |c| c.virtual_size);
    let mut files: Vec<Option<std::fs::File>> = chain.iter().map(|_| None).collect();
    let mut sha = Sha256::new();
    let mut data_bytes = 0;
    let mut expected_start = 0;
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    for e in &extents {
        stopped(stop)?;
        if e.start != expected_start {
            return Err(Error::Invalid(format!(
                "qemu-img map of {}: a gap at {expected_start}",
                image.display()
            )));
        }
        expected_start = e
            .start
            .checked_add(e.length)
            .filter(|end| *end <= size)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "qemu-img map of {}: an extent beyond the image",
                    image.display()
                ))
            })?;
        if !e.data {
            feed(&mut sha, &zeros, e.length, stop)?;
            continue;
        }
        let (Some(offset), false) = (e.offset, e.compressed) else {
            return Err(Error::Invalid(format!(
                "{}: compressed or encrypted data at {}: qsnap hashes plain qcow2 and raw images only",
                image.display(),
                e.start
            )));
        };
        if e.depth == 0 {
            data_bytes += e.length;
        }
        let layer = chain.get(e.depth).ok_or_else(|| {
            Error::Invalid(format!("qemu-img map: depth {} beyond the chain", e.depth))
        })?;
        if files[e.depth].is_none() {
            let f = std::fs::File::open(&layer.filename).map_err(|source| Error::Io {
                what: "cannot read",
                path: PathBuf::from(&layer.filename),
                source,
            })?;
            files[e.depth] = Some(f);
        }
        let Some(file) = files[e.depth].as_mut() else {
            continue;
        };
        copy_range(file, offset, e.length, &mut buf, &mut sha, stop)?.map_err(|source| {
            Error::Io {
                what: "cannot read",
                path: PathBuf::from(&layer.filename),
                source,
            }
        })?;
    }
    if expected_start != size {
        return Err(Error::Invalid(format!(
            "qemu-img map of {} covers {expected_start} of {size} bytes",
            image.display()
        )));
    }
    Ok(Content {
        sha256: hex(&sha.finalize()),
        data_bytes,
    })
}

fn feed(sha: &mut Sha256, zeros: &[u8], mut len: u64, stop: &Stop) -> Result<()> {
    while len > 0 {
        stopped(stop)?;
        let n = len.min(zeros.len() as u64);
        sha.update(&zeros[..n as usize]);
        len -= n;
    }
    Ok(())
}

/// Hashes `len` bytes at `offset`; the outer error is an interrupt, the inner one I/O.
fn copy_range(
    file: &mut std::fs::File,
    offset: u64,
    mut len: u64,
    buf: &mut [u8],
    sha: &mut Sha256,
    stop: &Stop,
) -> Result<std::io::Result<()>> {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        return Ok(Err(e));
    }
    while len > 0 {
        stopped(stop)?;
        let n = len.min(buf.len() as u64) as usize;
        if let Err(e) = file.read_exact(&mut buf[..n]) {
            return Ok(Err(e));
        }
        sha.update(&buf[..n]);
        len -= n as u64;
    }
    Ok(Ok(()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `qemu-img check`: the image's metadata is consistent (no leaks count as errors).
pub(crate) fn check(image: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["check", "-U", "-f", "qcow2", "--output=json"])
        .arg(image)
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
    // Exit 0: clean; 3: leaked clusters only (harmless); others: corrupt or failed.
    match out.status.code() {
        Some(0 | 3) => Ok(()),
        _ => Err(Error::Invalid(format!(
            "qemu-img check {}: {}{}",
            image.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// `qemu-img convert` of `image` (and its chain) into the existing, empty file `to`.
pub(crate) fn convert(image: &Path, to: &Path, out_format: &str) -> Result<()> {
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        out_format,
        path_str(image)?,
        path_str(to)?,
    ])
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(dir: &Path, name: &str, backing: Option<&str>) -> PathBuf {
        let p = dir.join(name);
        let mut c = Command::new("qemu-img");
        c.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = backing {
            c.args(["-b", b, "-F", "qcow2"]);
        }
        assert!(c.arg(&p).arg("4M").status().unwrap().success());
        p
    }

    fn write(p: &Path, pattern: u8, at: &str) {
        let cmd = format!("write -P {pattern} {at} 64k");
        let ok = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &cmd])
            .arg(p)
            .output()
            .unwrap();
        assert!(ok.status.success(), "{ok:?}");
    }

    #[test]
    fn the_hash_is_of_guest_content_through_the_chain_and_matches_a_flat_copy() {
        let dir = tempfile::tempdir().unwrap();
        let base = img(dir.path(), "base.qcow2", None);
        write(&base, 1, "0");
        write(&base, 2, "1M");
        let top = img(dir.path(), "top.qcow2", Some("base.qcow2"));
        write(&top, 3, "1M");
        let got = hash(&top, "qcow2", &Stop::new(false)).unwrap();
        assert_eq!(got.data_bytes, 65536);
        let flat = dir.path().join("flat.raw");
        std::fs::File::create(&flat).unwrap();
        convert(&top, &flat, "raw").unwrap();
        assert_eq!(
            hash(&flat, "raw", &Stop::new(false)).unwrap().sha256,
            got.sha256
        );
        let mut expected = vec![0u8; 4 << 20];
        expected[..65536].fill(1);
        expected[1 << 20..(1 << 20) + 65536].fill(3);
        assert_eq!(got.sha256, hex(&Sha256::digest(&expected)));
        assert_ne!(
            hash(&base, "qcow2", &Stop::new(false)).unwrap().sha256,
            got.sha256
        );
        assert!(matches!(
            hash(&top, "qcow2", &Stop::new(true)),
            Err(Error::Interrupted)
        ));
        check(&top).unwrap();
        let names: Vec<_> = chain(&top, "qcow2")
            .unwrap()
            .into_iter()
            .map(|c| c.filename)
            .collect();
        assert_eq!(names.len(), 2);
    }
}
