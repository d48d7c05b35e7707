//! Shell completions and the man page, from the clap definitions.

use super::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "qsnap", &mut buf);
    write_all(&buf)
}

pub(crate) fn man() -> Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .context("cannot render the man page")?;
    write_all(&buf)
}

/// Writes to stdout; a reader that went away is not an error.
fn write_all(bytes: &[u8]) -> Result<()> {
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}
