//! The [`Command`] trait: a typed QAPI command.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A QAPI command: its arguments are the struct's fields, serialized as `arguments`.
///
/// Commands without arguments are unit structs. `NAME` is QEMU's name verbatim.
///
/// ```
/// use qmp::wire::Command;
/// #[derive(serde::Serialize)]
/// struct QueryStatus;
/// impl Command for QueryStatus {
///     const NAME: &'static str = "query-status";
///     type Output = serde_json::Value;
/// }
/// ```
pub trait Command: Serialize {
    /// The command's name on the wire, e.g. `blockdev-snapshot-sync`.
    const NAME: &'static str;
    /// The type of the `return` member.
    type Output: DeserializeOwned;
}

/// Marker output for commands that return `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Empty {}

/// Implements [`Command`] for a struct: `command!(Type, "qemu-name", Output)`. The one
/// definition both `qmp::commands` and `qga::commands` use.
#[macro_export]
macro_rules! command {
    ($ty:ty, $name:literal, $out:ty) => {
        impl $crate::wire::Command for $ty {
            const NAME: &'static str = $name;
            type Output = $out;
        }
    };
}
