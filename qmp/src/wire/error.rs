//! QEMU's `{"class": ..., "desc": ...}` error body.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `class` of a QAPI error reply.
///
/// QEMU today sends only a handful of classes; anything else is kept verbatim in
/// [`ErrorClass::Other`] so a newer QEMU never makes a reply unparseable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
#[non_exhaustive]
pub enum ErrorClass {
    /// Most errors: the description says what went wrong.
    GenericError,
    /// The command does not exist, or (guest agent) is disabled.
    CommandNotFound,
    /// A device exists but has no medium or is inactive.
    DeviceNotActive,
    /// No such device.
    DeviceNotFound,
    /// KVM lacks a required capability.
    KVMMissingCap,
    /// A class this version of qsnap does not know.
    Other(String),
}

impl From<String> for ErrorClass {
    fn from(s: String) -> Self {
        match s.as_str() {
            "GenericError" => Self::GenericError,
            "CommandNotFound" => Self::CommandNotFound,
            "DeviceNotActive" => Self::DeviceNotActive,
            "DeviceNotFound" => Self::DeviceNotFound,
            "KVMMissingCap" => Self::KVMMissingCap,
            _ => Self::Other(s),
        }
    }
}

impl From<ErrorClass> for String {
    fn from(c: ErrorClass) -> Self {
        c.as_str().to_owned()
    }
}

impl ErrorClass {
    /// The class name as QEMU spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::GenericError => "GenericError",
            Self::CommandNotFound => "CommandNotFound",
            Self::DeviceNotActive => "DeviceNotActive",
            Self::DeviceNotFound => "DeviceNotFound",
            Self::KVMMissingCap => "KVMMissingCap",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply from QEMU or the guest agent.
///
/// `desc` comes from the peer; for the guest agent that is untrusted guest text, so
/// `Display` escapes control characters (see [`escape`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, thiserror::Error)]
pub struct QmpError {
    /// The error class.
    pub class: ErrorClass,
    /// The human-readable description.
    pub desc: String,
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both come from the peer (a hostile guest agent chooses its error class too).
        write!(f, "{}: {}", escape(self.class.as_str()), escape(&self.desc))
    }
}

/// Escapes peer-supplied text for a terminal: control characters (including ESC,
/// so no terminal escape sequences), and the bidi overrides become `\u{..}` escapes;
/// the result is capped at 1000 characters.
pub fn escape(text: &str) -> String {
    const MAX_CHARS: usize = 1000;
    let mut out = String::with_capacity(text.len().min(MAX_CHARS));
    for (n, c) in text.chars().enumerate() {
        if n == MAX_CHARS {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_class_is_kept() {
        let e: QmpError = serde_json::from_str(r#"{"class":"Weird","desc":"d"}"#).unwrap();
        assert_eq!(e.class, ErrorClass::Other("Weird".into()));
        assert_eq!(e.to_string(), "Weird: d");
    }

    #[test]
    fn a_hostile_error_class_is_escaped_too() {
        let e: QmpError =
            serde_json::from_str(r#"{"class":"\u001b]0;x\u0007","desc":"d"}"#).unwrap();
        let shown = e.to_string();
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown}"
        );
    }

    #[test]
    fn escape_neutralises_terminal_sequences() {
        let s = escape("bad\x1b[31mred\r\n\u{202e}x");
        assert!(!s.contains('\x1b') && !s.contains('\r') && !s.contains('\u{202e}'));
        assert!(s.starts_with("bad\\u{1b}[31mred"));
        assert_eq!(escape(&"a".repeat(5000)).chars().count(), 1001);
    }
}
