//! `qsnap`: filesystem-consistent live disk snapshots of bare-QEMU VMs.
//!
//! A thin `main`: parse arguments, set up logging and signals, run, map the error to
//! an exit code (see `qsnap --help`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
