//! What every target shares: panic capture, the per-target report, failures and
//! their minimal inputs, and a generic input minimizer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static PANICS: AtomicU64 = AtomicU64::new(0);
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the default hook (which would print every panic caught while
/// minimizing) with one that records the message and where it happened.
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        let text = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_owned(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "(non-string payload)".into()),
        };
        let at = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("panic: {text}{at}"));
        }
    }));
}

/// How many panics happened so far in any thread or task (tokio catches a panic in
/// a spawned task; this still sees it).
pub(crate) fn panic_count() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

/// The last panic's message.
pub(crate) fn last_panic() -> String {
    LAST_PANIC
        .lock()
        .ok()
        .and_then(|mut p| p.take())
        .unwrap_or_else(|| "panic (no message recorded)".into())
}

/// Runs `f`, turning a panic into `Err` with its message.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err(last_panic()))
}

/// A failed check: what went wrong and the (minimized) input that shows it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) input: String,
}

/// One target's results.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) iterations: u64,
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) failures: u64,
    /// Distinct kinds of failure, each with its first example.
    pub(crate) kinds: Vec<FailureKind>,
    /// Target-specific counters, printed as `name=value`.
    pub(crate) notes: Vec<(&'static str, u64)>,
}

/// Failures whose messages start alike.
#[derive(Debug)]
pub(crate) struct FailureKind {
    pub(crate) name: String,
    pub(crate) count: u64,
    /// The first one (minimized), with its iteration number.
    pub(crate) example: Option<(u64, Failure)>,
}

/// At most this many kinds of failure are told apart (and minimized) per target.
const KINDS: usize = 8;

/// A failure's kind: its message up to the first `(` or `:`.
fn kind(message: &str) -> String {
    message
        .chars()
        .take_while(|&c| c != '(' && c != ':')
        .collect()
}

impl Report {
    /// Whether a failure with this message would be the first of its kind (and so
    /// worth minimizing).
    pub(crate) fn is_new(&self, message: &str) -> bool {
        let kind = kind(message);
        self.kinds.len() < KINDS && !self.kinds.iter().any(|k| k.name == kind)
    }

    /// Counts a failure; keeps it as the example of its kind if it is the first.
    /// `message` is the failure as first seen (before minimizing).
    pub(crate) fn fail(&mut self, iteration: u64, message: &str, failure: Option<Failure>) {
        self.failures += 1;
        let name = kind(message);
        if let Some(k) = self.kinds.iter_mut().find(|k| k.name == name) {
            k.count += 1;
        } else if self.kinds.len() < KINDS {
            let example = failure.map(|f| (iteration, f));
            self.kinds.push(FailureKind {
                name,
                count: 1,
                example,
            });
        }
    }

    pub(crate) fn note(&mut self, name: &'static str, add: u64) {
        match self.notes.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v += add,
            None => self.notes.push((name, add)),
        }
    }
}

/// Delta-debugging-lite: removes ever smaller chunks of `data` while `fails` holds,
/// within `budget` attempts. Returns the smallest failing input found.
pub(crate) fn shrink_bytes(
    mut data: Vec<u8>,
    budget: &mut usize,
    mut fails: impl FnMut(&[u8]) -> bool,
) -> Vec<u8> {
    let mut chunk = data.len().div_ceil(2).max(1);
    loop {
        let mut at = 0;
        while at < data.len() && *budget > 0 {
            *budget -= 1;
            let mut candidate = data.clone();
            candidate.drain(at..(at + chunk).min(data.len()));
            if fails(&candidate) {
                data = candidate;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 || *budget == 0 {
            return data;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// `data` as a Rust byte-string literal; long inputs show head and tail.
pub(crate) fn show_bytes(data: &[u8]) -> String {
    const KEEP: usize = 1500;
    if data.len() > 2 * KEEP {
        return format!(
            "{} ... ({} bytes omitted) ... {}",
            escape(&data[..KEEP]),
            data.len() - 2 * KEEP,
            escape(&data[data.len() - KEEP..])
        );
    }
    escape(data)
}

fn escape(data: &[u8]) -> String {
    let mut s = String::from("b\"");
    for &b in data {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}
