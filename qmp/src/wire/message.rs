//! QAPI wire envelopes: what QEMU and the guest agent send, and how a command is written.
//!
//! Parsing is a pure function from one line to a [`Message`]. It deserializes one
//! explicit envelope struct holding every member any message can have and then
//! classifies it, rather than using `#[serde(untagged)]`, which would lose serde's error
//! position and message.

use super::error::QmpError;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A QEMU version triple, as in the greeting and `query-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u64,
    /// Minor version.
    pub minor: u64,
    /// Micro version.
    pub micro: u64,
}

impl std::fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// QEMU's `VersionInfo`: the greeting's `version` and the reply to `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct VersionInfo {
    /// The upstream version.
    pub qemu: VersionTriple,
    /// The distribution's package string, e.g. `Debian 1:10.0.2+ds-2`.
    pub package: String,
}

/// The `{"QMP": {...}}` greeting QEMU sends when a client connects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Greeting {
    /// QEMU's version.
    pub version: VersionInfo,
    /// Capabilities QEMU offers (e.g. `oob`); qsnap enables none.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// When an event happened, as QEMU reports it (host wall clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// An asynchronous QMP event such as `STOP` or `JOB_STATUS_CHANGE`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Event {
    /// The event name, e.g. `BLOCK_JOB_READY`.
    pub event: String,
    /// Event-specific data (`null` when QEMU sends none).
    #[serde(default)]
    pub data: Value,
    /// When QEMU emitted it.
    #[serde(default)]
    pub timestamp: Timestamp,
}

/// One parsed message from a QAPI peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The QMP greeting.
    Greeting(Greeting),
    /// A successful reply; `id` echoes the command's id, if it had one.
    Return {
        /// The echoed id.
        id: Option<Value>,
        /// The `return` member.
        value: Value,
    },
    /// A failed command.
    Error {
        /// The echoed id.
        id: Option<Value>,
        /// QEMU's error class and description.
        error: QmpError,
    },
    /// An asynchronous event.
    Event(Event),
}

/// Every member a message may carry. `return` may legitimately be `null`, so its
/// presence is tracked separately from its value.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "return", default, deserialize_with = "present")]
    ret: Option<Value>,
    error: Option<QmpError>,
    event: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    timestamp: Timestamp,
    id: Option<Value>,
    #[serde(rename = "QMP")]
    greeting: Option<Greeting>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Parses one line (without its newline) into a [`Message`].
///
/// # Errors
/// The line is not JSON, not an object, a member has the wrong type, or the object has
/// none of `return`, `error`, `event`, `QMP`.
pub fn parse(line: &[u8]) -> Result<Message, serde_json::Error> {
    let env: Envelope = serde_json::from_slice(line)?;
    if let Some(value) = env.ret {
        return Ok(Message::Return { id: env.id, value });
    }
    if let Some(error) = env.error {
        return Ok(Message::Error { id: env.id, error });
    }
    if let Some(event) = env.event {
        return Ok(Message::Event(Event {
            event,
            data: env.data,
            timestamp: env.timestamp,
        }));
    }
    if let Some(greeting) = env.greeting {
        return Ok(Message::Greeting(greeting));
    }
    Err(serde::de::Error::custom(
        "message has none of `return`, `error`, `event`, `QMP`",
    ))
}

#[derive(Serialize)]
struct Execute<'a> {
    execute: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
}

/// Serializes `{"execute": name, "arguments": args, "id": id}` as one compact line
/// (without the newline, which the codec adds).
///
/// Arguments that serialize to `null` (a unit struct) or `{}` are left out: QEMU rejects
/// `"arguments": null`.
///
/// # Errors
/// `args` cannot be serialized as JSON, or is not an object.
pub fn encode_execute(
    name: &str,
    args: &impl Serialize,
    id: Option<u64>,
) -> Result<Bytes, serde_json::Error> {
    let arguments = match serde_json::to_value(args)? {
        Value::Null => None,
        Value::Object(map) if map.is_empty() => None,
        obj @ Value::Object(_) => Some(obj),
        _ => {
            return Err(serde::ser::Error::custom(
                "command arguments must serialize to a JSON object",
            ));
        }
    };
    let exec = Execute {
        execute: name,
        arguments,
        id,
    };
    serde_json::to_vec(&exec).map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorClass;
    use serde_json::json;

    #[test]
    fn parses_greeting_from_qemu_10() {
        let line = br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2"}, "capabilities": ["oob"]}}"#;
        let Message::Greeting(g) = parse(line).unwrap() else {
            panic!("not a greeting")
        };
        assert_eq!(g.version.qemu.to_string(), "10.0.2");
        assert_eq!(g.capabilities, vec!["oob"]);
    }

    #[test]
    fn null_return_is_a_return() {
        let msg = parse(br#"{"return": null, "id": 3}"#).unwrap();
        assert_eq!(
            msg,
            Message::Return {
                id: Some(json!(3)),
                value: Value::Null
            }
        );
    }

    #[test]
    fn error_keeps_class_and_desc() {
        let msg = parse(br#"{"error": {"class": "CommandNotFound", "desc": "nope"}}"#).unwrap();
        let Message::Error { error, .. } = msg else {
            panic!("not an error")
        };
        assert_eq!(error.class, ErrorClass::CommandNotFound);
        assert_eq!(error.desc, "nope");
    }

    #[test]
    fn unknown_envelope_and_non_object_are_errors() {
        assert!(parse(br#"{"hello": 1}"#).is_err());
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(b"\xff\xfe").is_err());
        assert!(parse(br#"{"error": "not an object"}"#).is_err());
    }

    #[test]
    fn execute_omits_empty_arguments() {
        #[derive(Serialize)]
        struct Unit;
        let bytes = encode_execute("query-status", &Unit, Some(1)).unwrap();
        assert_eq!(&bytes[..], br#"{"execute":"query-status","id":1}"#);
        let bytes = encode_execute("x", &json!({"a": 1}), None).unwrap();
        assert_eq!(&bytes[..], br#"{"execute":"x","arguments":{"a":1}}"#);
        assert!(encode_execute("x", &json!([1]), None).is_err());
    }
}
