//! Reading metrics files the way production does: through node_exporter's textfile
//! collector (Debian's `prometheus-node-exporter`), scraped over HTTP.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every sample node_exporter served, keyed by its name and labels as exposed
/// (`name{a="1",b="2"}`, labels sorted by name).
#[derive(Debug, Clone)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// The value of `name` with exactly these labels (in any order; values are
    /// written unescaped, so no quotes or backslashes in them).
    #[must_use]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels = labels.to_vec();
        labels.sort_unstable();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.0
            .get(&format!("{name}{{{}}}", labels.join(",")))
            .copied()
    }
}

/// What node_exporter serves for the `*.prom` files in `dir`.
///
/// # Errors
/// node_exporter cannot start, does not answer within 20 s, or reports that it could
/// not parse a file (`node_textfile_scrape_error` is not 0; its log is in the error).
pub fn scrape(dir: &Path) -> Result<Samples> {
    // A free port: bound, then released for node_exporter (a race only with another
    // process picking the same port in between).
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = tempfile::NamedTempFile::new()?;
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(["--collector.disable-defaults", "--collector.textfile"])
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.reopen()?)
        .spawn()
        .map_err(|e| Error::Spawn("prometheus-node-exporter", e))?;
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        // Ours must still be running: if it exited (the port was taken meanwhile),
        // whatever answers on the port is not it.
        if let Some(status) = child.0.try_wait()? {
            let log = std::fs::read_to_string(log.path()).unwrap_or_default();
            return Err(Error::Tool(
                "prometheus-node-exporter",
                format!("exited ({status}) before answering:\n{log}"),
            ));
        }
        match get_metrics(port) {
            Ok(body) => break body,
            Err(e) if Instant::now() > deadline => {
                let log = std::fs::read_to_string(log.path()).unwrap_or_default();
                return Err(Error::Tool(
                    "prometheus-node-exporter",
                    format!("{e}\n{log}"),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let samples: BTreeMap<String, f64> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect();
    let ours = "node_textfile_mtime_seconds{file=\"";
    let named: Vec<&String> = samples.keys().filter(|k| k.starts_with(ours)).collect();
    let dir_files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".prom"))
        .collect();
    let sees_ours = dir_files
        .iter()
        .all(|f| named.iter().any(|k| k.contains(f.as_str())));
    if !sees_ours {
        return Err(Error::Tool(
            "prometheus-node-exporter",
            format!("it does not list our files {dir_files:?}: {named:?}"),
        ));
    }
    if samples.get("node_textfile_scrape_error") != Some(&0.0) {
        let log = std::fs::read_to_string(log.path()).unwrap_or_default();
        return Err(Error::Tool(
            "prometheus-node-exporter",
            format!("the textfile collector failed:\n{log}\n{body}"),
        ));
    }
    Ok(Samples(samples))
}

fn get_metrics(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    match response.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") =>
        {
            Ok(body.to_owned())
        }
        _ => Err(std::io::Error::other(format!(
            "unexpected answer: {response}"
        ))),
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
