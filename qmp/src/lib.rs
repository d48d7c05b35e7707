//! qmp
pub mod wire;
