//! qga
