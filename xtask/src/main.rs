//! Project automation: `cargo xtask demo|test|bench|fuzz|guest-image`.
//!
//! Every command installs what it needs (Debian packages, the guest image) first, so a
//! newcomer on a fresh Debian or Ubuntu machine needs nothing but Rust.

mod guest;
mod packages;
mod pipeline;
mod qemu72;
mod run;
mod sources;

use anyhow::{Result, bail};
use std::path::PathBuf;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  guest-image   install the Debian packages the rig needs and build the test guest
  test          fmt check, clippy -D warnings, rustdoc -D warnings, every test (real QEMU too)
  demo          boot the demo guest and run qsnap against it
  bench         run the benchmarks: [qmp|qmpcpu|snapshot|backup|codec|rss|scale|disks16|vms8|stall]... (default all; scale = disks16 + vms8)
  fuzz          run the fuzzer (release build): [--for 60s] [--target codec|envelope|qga-client]
                [--seed N [--iteration K]]; see docs/fuzzing.md";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("guest-image") => guest::build(&root).map(drop),
        Some("test") => pipeline::test(&root),
        Some("demo") => pipeline::demo(&root),
        Some("bench") => pipeline::bench(&root, &args[1..]),
        Some("fuzz") => pipeline::fuzz(&root, &args[1..]),
        Some("-h" | "--help" | "help") => {
            eprintln!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
        None => bail!("{USAGE}"),
    }
}

/// The workspace root: this crate's parent directory.
fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}
