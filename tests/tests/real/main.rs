//! End-to-end tests against a real `qemu-system-x86_64` running the test guest.
//!
//! They need the image from `cargo xtask guest-image`; without it they fail (never skip).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod qga_guest;
mod qmp_monitor;

use std::future::Future;
use std::time::Duration;

/// No test may hang: every test body runs under this deadline.
pub(crate) async fn within<F: Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test exceeded its deadline")
}

/// Long enough for the agent of a TCG guest that boots in ≈3 s on an idle machine,
/// with room for a loaded CI machine.
pub(crate) const AGENT_BOOT: Duration = Duration::from_secs(60);
