//! qsnap binary
fn main() {}
