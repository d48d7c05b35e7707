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

pub(crate) use qsnap_tests::within;

pub(crate) use qsnap_tests::AGENT_BOOT;
