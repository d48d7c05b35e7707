//! Strict reading of QMP arguments, with QEMU's own error texts: a client that sends a
//! misspelt member, a wrong type or too little fails here as it would on a real QEMU.

use serde_json::{Map, Value};

/// A QMP error reply: `class` and `desc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct QmpErr {
    pub(super) class: String,
    pub(super) desc: String,
}

/// A `GenericError` with this text.
pub(super) fn generic(desc: impl Into<String>) -> QmpErr {
    QmpErr {
        class: "GenericError".into(),
        desc: desc.into(),
    }
}

/// Result of a command handler.
pub(super) type QmpResult<T = Value> = Result<T, QmpErr>;

/// The members of one arguments object, consumed as they are read; [`Args::finish`]
/// refuses what is left.
#[derive(Debug)]
pub(super) struct Args {
    map: Map<String, Value>,
    prefix: String,
}

impl Args {
    /// Reads `value` (an object, or absent/`null` for none) whose members are named
    /// `prefix.member` in errors.
    pub(super) fn new(value: Option<Value>, prefix: &str) -> QmpResult<Args> {
        let map = match value {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(type_error(prefix, "object")),
        };
        Ok(Args {
            map,
            prefix: prefix.to_owned(),
        })
    }

    /// A member's full name, as errors spell it.
    pub(super) fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// Removes a member, `Some(Value::Null)` included.
    pub(super) fn raw(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    /// A required string.
    pub(super) fn str(&mut self, key: &str) -> QmpResult<String> {
        self.opt_str(key)?.ok_or_else(|| missing(&self.full(key)))
    }

    /// An optional string.
    pub(super) fn opt_str(&mut self, key: &str) -> QmpResult<Option<String>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_error(&self.full(key), "string")),
        }
    }

    /// A required unsigned integer.
    pub(super) fn u64(&mut self, key: &str) -> QmpResult<u64> {
        self.opt_u64(key)?.ok_or_else(|| missing(&self.full(key)))
    }

    /// An optional unsigned integer.
    pub(super) fn opt_u64(&mut self, key: &str) -> QmpResult<Option<u64>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| type_error(&self.full(key), "integer")),
        }
    }

    /// An optional boolean.
    pub(super) fn opt_bool(&mut self, key: &str) -> QmpResult<Option<bool>> {
        match self.map.remove(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(type_error(&self.full(key), "boolean")),
        }
    }

    /// A required array.
    pub(super) fn list(&mut self, key: &str) -> QmpResult<Vec<Value>> {
        match self.map.remove(key) {
            None => Err(missing(&self.full(key))),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(type_error(&self.full(key), "array")),
        }
    }

    /// A required nested object.
    pub(super) fn obj(&mut self, key: &str) -> QmpResult<Args> {
        let full = self.full(key);
        match self.map.remove(key) {
            None => Err(missing(&full)),
            Some(v @ Value::Object(_)) => Args::new(Some(v), &full),
            Some(_) => Err(type_error(&full, "object")),
        }
    }

    /// Accepts these members without modelling them.
    pub(super) fn ignore(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
    }

    /// Refuses any member not read.
    pub(super) fn finish(self) -> QmpResult<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(generic(format!(
                "Parameter '{}' is unexpected",
                self.full(k)
            ))),
        }
    }
}

fn missing(name: &str) -> QmpErr {
    generic(format!("Parameter '{name}' is missing"))
}

fn type_error(name: &str, expected: &str) -> QmpErr {
    generic(format!(
        "Invalid parameter type for '{name}', expected: {expected}"
    ))
}
