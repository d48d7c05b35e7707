//! Mutations: byte-level (AFL-style havoc) for framing and parsing, and
//! structure-aware (JSON tree) for the typed decoders behind the parser.

use crate::corpus::INTERESTING;
use crate::rng::Rng;
use serde_json::{Map, Value, json};

/// The corpus and the mutators over it.
pub(crate) struct Mutator {
    lines: Vec<Vec<u8>>,
    values: Vec<Value>,
}

impl Mutator {
    pub(crate) fn new() -> Self {
        Self {
            lines: crate::corpus::lines(),
            values: crate::corpus::json_values(),
        }
    }

    /// One corpus line, untouched.
    pub(crate) fn line(&self, rng: &mut Rng) -> Vec<u8> {
        rng.pick(&self.lines).cloned().unwrap_or_default()
    }

    /// One corpus line after 1..=8 stacked byte mutations.
    pub(crate) fn mutated_line(&self, rng: &mut Rng) -> Vec<u8> {
        let mut data = self.line(rng);
        let rounds = rng.range(1, 9);
        for _ in 0..rounds {
            self.havoc(rng, &mut data);
        }
        data
    }

    /// A stream: several corpus lines, some mutated, glued with framing bytes.
    pub(crate) fn transcript(&self, rng: &mut Rng, budget: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let pieces = rng.range(1, 12);
        for _ in 0..pieces {
            match rng.below(10) {
                0..=4 => out.extend(self.line(rng)),
                5..=7 => out.extend(self.mutated_line(rng)),
                8 => out.extend(rng.pick(INTERESTING).copied().unwrap_or_default()),
                _ => out.extend(random_bytes(rng, 64)),
            }
            if out.len() > budget {
                break;
            }
        }
        if rng.chance(20) {
            self.havoc(rng, &mut out);
        }
        out.truncate(budget);
        out
    }

    /// One havoc step on `data`.
    pub(crate) fn havoc(&self, rng: &mut Rng, data: &mut Vec<u8>) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(10) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => data[at.min(len - 1)] = rng.next_u64() as u8,
            2 => splice_in(data, at, rng.pick(INTERESTING).copied().unwrap_or(b"")),
            3 if len > 0 => {
                let start = at.min(len - 1);
                let n = rng.small_len(len - start);
                data.drain(start..(start + n).min(len));
            }
            4 if at < len => {
                let n = rng.small_len(len - at);
                let copy = data[at..(at + n).min(len)].to_vec();
                splice_in(data, rng.below(len + 1), &copy);
            }
            5 => {
                let other = self.line(rng);
                let start = rng.below(other.len());
                let end = rng.range(start, other.len() + 1);
                splice_in(data, at, &other[start..end]);
            }
            6 if at < len => {
                // Inflate: repeat a range, up to a few KiB.
                let n = rng.small_len(len - at).min(64);
                let copy = data[at..(at + n).min(len)].to_vec();
                let times = rng.small_len(4096 / copy.len().max(1));
                let fill: Vec<u8> = copy
                    .iter()
                    .copied()
                    .cycle()
                    .take(copy.len() * times)
                    .collect();
                splice_in(data, at, &fill);
            }
            7 => data.truncate(at),
            8 => splice_in(data, at, b"\xff"),
            _ => splice_in(data, at, &random_bytes(rng, 8)),
        }
    }

    /// A JSON value from the corpus with 1..=4 structural mutations.
    pub(crate) fn mutated_value(&self, rng: &mut Rng) -> Value {
        let mut value = rng.pick(&self.values).cloned().unwrap_or(Value::Null);
        for _ in 0..rng.range(1, 5) {
            mutate_tree(rng, &mut value, 0);
        }
        value
    }
}

fn splice_in(data: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let at = at.min(data.len());
    data.splice(at..at, bytes.iter().copied());
}

pub(crate) fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let n = rng.small_len(max);
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Walks to a random node and replaces, removes or adds something there.
fn mutate_tree(rng: &mut Rng, value: &mut Value, depth: usize) {
    let descend = depth < 12 && rng.chance(70);
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let key = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            match (rng.below(6), map.get_mut(&key)) {
                (0, _) => {
                    map.remove(&key);
                }
                (1, _) => {
                    map.insert(random_key(rng), random_value(rng, 3));
                }
                (_, Some(child)) => mutate_tree(rng, child, depth + 1),
                (_, None) => {}
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let i = rng.below(items.len());
            match rng.below(5) {
                0 => {
                    items.remove(i);
                }
                1 => items.push(items[i].clone()),
                _ => mutate_tree(rng, &mut items[i], depth + 1),
            }
        }
        _ => *value = random_value(rng, 3),
    }
}

const KEYS: &[&str] = &[
    "return",
    "error",
    "event",
    "QMP",
    "id",
    "data",
    "timestamp",
    "seconds",
    "microseconds",
    "class",
    "desc",
    "version",
    "qemu",
    "major",
    "minor",
    "micro",
    "package",
    "capabilities",
    "supported_commands",
    "name",
    "enabled",
    "success-response",
    "device",
    "qdev",
    "removable",
    "inserted",
    "node-name",
    "ro",
    "drv",
    "file",
    "image",
    "filename",
    "format",
    "virtual-size",
    "backing-image",
    "status",
    "running",
    "type",
    "mountpoint",
    "disk",
    "used-bytes",
    "total-bytes",
];

fn random_key(rng: &mut Rng) -> String {
    match rng.pick(KEYS) {
        Some(k) if rng.chance(90) => (*k).to_owned(),
        _ => random_string(rng),
    }
}

fn random_string(rng: &mut Rng) -> String {
    const PARTS: &[&str] = &[
        "",
        "thawed",
        "frozen",
        "GenericError",
        "CommandNotFound",
        "\u{1b}]0;pwned\u{7}",
        "\u{1b}[31m",
        "\r\n",
        "\u{202e}",
        "\u{2066}",
        "\0",
        "\u{fffd}",
        "é",
        "/tmp/x",
        "running",
        "qcow2",
        "guest-sync-delimited",
        "\u{85}",
        "\t",
    ];
    let mut s = String::new();
    for _ in 0..rng.range(1, 4) {
        s.push_str(rng.pick(PARTS).copied().unwrap_or(""));
    }
    if rng.chance(3) {
        s.push_str(&"A".repeat(rng.range(1000, 3000)));
    }
    s
}

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1.5),
        5 => json!(-0.0),
        6 => json!(rng.next_u64() >> rng.below(64)),
        _ => json!(rng.below(100)),
    }
}

/// A random JSON value of at most `depth` levels.
pub(crate) fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 4 } else { 6 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => (0..rng.below(4))
            .map(|_| random_value(rng, depth - 1))
            .collect(),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(4) {
                map.insert(random_key(rng), random_value(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}
