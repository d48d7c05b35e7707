//! The event stream.

use crate::wire::Event;
use tokio::sync::broadcast;

/// Why [`Events::recv`] returned no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// This subscriber fell behind and missed this many events; the next call returns
    /// the oldest event still buffered.
    #[error("missed {0} events (slow consumer)")]
    Lagged(u64),
    /// The connection is closed and every buffered event was read.
    #[error("the QMP connection is closed")]
    Closed,
}

/// A subscription to QMP events, from [`Client::events`](crate::Client::events).
///
/// Each subscriber has its own bounded buffer; the connection's reader never waits for
/// a subscriber. One that falls behind is told how many events it missed.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self { rx }
    }

    /// The next event.
    ///
    /// # Errors
    /// [`EventsError::Lagged`] after events were missed; [`EventsError::Closed`] at the end.
    ///
    /// # Cancel safety
    /// Cancel-safe: no event is lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<Event, EventsError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventsError::Lagged(n),
            broadcast::error::RecvError::Closed => EventsError::Closed,
        })
    }

    /// The next event named `name`, skipping others (missed events are skipped too).
    ///
    /// # Errors
    /// [`EventsError::Closed`] when the connection ends first.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn next_named(&mut self, name: &str) -> Result<Event, EventsError> {
        loop {
            match self.recv().await {
                Ok(event) if event.event == name => return Ok(event),
                Ok(_) | Err(EventsError::Lagged(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
}
