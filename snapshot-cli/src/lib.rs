//! qsnap
