//! The live event stream (`GET /v1/events`, server-sent events): what the
//! controller records (release steps, weights, verdicts, replacements,
//! quarantines, drift) and what it sees change (health, analysis samples),
//! fanned out to every subscriber.
//!
//! The controller publishes and never waits: a subscriber that falls more
//! than [`QUEUE`] events behind is dropped (its browser reconnects with
//! `Last-Event-ID` and gets the backlog that is still kept). This module
//! holds no controller state and must never decide anything.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Events kept for subscribers that reconnect (`Last-Event-ID`).
const BACKLOG: usize = 512;
/// Events a subscriber may have unread before it is dropped.
const QUEUE: usize = 1024;

/// One published event: its id (increasing from 1 in each process), its
/// kind (the SSE `event:` name) and its JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub id: u64,
    pub kind: String,
    pub data: Arc<str>,
}

impl Published {
    /// The event as an SSE frame.
    pub fn frame(&self) -> String {
        // JSON on one line has no newline, so one `data:` line carries it.
        format!("id: {}\nevent: {}\ndata: {}\n\n", self.id, self.kind, self.data)
    }
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    backlog: VecDeque<Published>,
    subscribers: Vec<mpsc::SyncSender<Published>>,
}

/// The fan-out: shared by the controller (publishes) and the API threads
/// (subscribe).
#[derive(Debug, Default)]
pub struct Bus {
    inner: Mutex<Inner>,
}

impl Bus {
    /// Sends `data` as a `kind` event to every subscriber; returns its id.
    pub fn publish(&self, kind: &str, data: &serde_json::Value) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.next += 1;
        let e = Published { id: g.next, kind: kind.to_owned(), data: data.to_string().into() };
        // A full or closed queue drops that subscriber, never blocks us.
        g.subscribers.retain(|s| s.try_send(e.clone()).is_ok());
        if g.backlog.len() == BACKLOG {
            g.backlog.pop_front();
        }
        g.backlog.push_back(e.clone());
        e.id
    }

    /// A new subscriber: the kept events after `last_id` (when the client
    /// says which it saw last), then everything published from now on.
    pub fn subscribe(&self, last_id: Option<u64>) -> (Vec<Published>, mpsc::Receiver<Published>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        g.subscribers.push(tx);
        let backlog = match last_id {
            Some(last) => g.backlog.iter().filter(|e| e.id > last).cloned().collect(),
            None => Vec::new(),
        };
        (backlog, rx)
    }

    /// The kept events after `last_id` (all kept ones without it), for a
    /// client that polls instead of subscribing.
    pub fn since(&self, last_id: Option<u64>) -> Vec<Published> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.backlog.iter().filter(|e| e.id > last_id.unwrap_or(0)).cloned().collect()
    }

    /// How many subscribers are connected.
    pub fn subscribers(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_get_events_in_order_and_a_reconnect_gets_the_backlog() {
        let bus = Bus::default();
        let (none, rx) = bus.subscribe(None);
        assert!(none.is_empty());
        for i in 0..3 {
            bus.publish("step", &serde_json::json!({ "index": i }));
        }
        let got: Vec<u64> = rx.try_iter().map(|e| e.id).collect();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(bus.since(None).len(), 3, "a poll gets what is kept");
        assert_eq!(bus.since(Some(2)).iter().map(|e| e.id).collect::<Vec<_>>(), [3]);
        let (back, _rx2) = bus.subscribe(Some(1));
        assert_eq!(back.iter().map(|e| e.id).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(back[0].frame(), "id: 2\nevent: step\ndata: {\"index\":1}\n\n");
    }

    #[test]
    fn a_subscriber_that_stops_reading_is_dropped_not_waited_for() {
        let bus = Bus::default();
        let (_, slow) = bus.subscribe(None);
        let (_, gone) = bus.subscribe(None);
        drop(gone);
        bus.publish("x", &serde_json::json!(1));
        assert_eq!(bus.subscribers(), 1, "a closed subscriber is removed");
        for _ in 0..QUEUE + 10 {
            bus.publish("x", &serde_json::json!(1));
        }
        assert_eq!(bus.subscribers(), 0, "a full queue drops its subscriber");
        assert_eq!(slow.try_iter().count(), QUEUE);
        let (back, _) = bus.subscribe(Some(0));
        assert_eq!(back.len(), BACKLOG, "the backlog is bounded");
    }
}
