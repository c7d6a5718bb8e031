//! A process's etcd lease, kept alive on a thread of its own: the agent's
//! (its host's liveness) and the controller's (its leadership) alike.
//! Renewals never wait on the main loop, so a slow round (an image pull, a
//! stop's grace) never lets the lease lapse.
//!
//! For: holding one lease id, renewing it every round, and knowing when it
//! was last renewed. Must never: decide what a lapsed lease means (the
//! caller's `lapsed` does), or block longer than a round between renewals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::etcd::{Etcd, EtcdError};

/// One lease, shared between its renewing thread and the main loop.
#[derive(Debug)]
pub struct Lease {
    id: Mutex<Option<i64>>,
    /// When it was last granted or renewed: None before the first.
    renewed: Mutex<Option<Instant>>,
    /// A round: a third of the TTL.
    pub period: Duration,
}

impl Lease {
    /// No lease yet, renewed every third of `ttl` seconds once there is.
    pub fn new(ttl: i64) -> Lease {
        Lease {
            id: Mutex::new(None),
            renewed: Mutex::new(None),
            period: Duration::from_millis((ttl.max(1) as u64 * 1000) / 3),
        }
    }

    /// The lease held, if any.
    pub fn current(&self) -> Option<i64> {
        self.id.lock().map(|l| *l).unwrap_or(None)
    }

    /// Holds `id` (None: none), granted just now.
    pub fn set(&self, id: Option<i64>) {
        if let Ok(mut l) = self.id.lock() {
            *l = id;
        }
        if id.is_some() {
            self.mark();
        }
    }

    fn mark(&self) {
        if let Ok(mut r) = self.renewed.lock() {
            *r = Some(Instant::now());
        }
    }

    /// How long since it was last granted or renewed (None: never).
    pub fn age(&self) -> Option<Duration> {
        self.renewed.lock().ok().and_then(|r| *r).map(|t| t.elapsed())
    }

    /// Waits out the rest of the round begun at `started`, or until `stop`.
    pub fn pause(&self, started: Instant, stop: &AtomicBool) {
        while started.elapsed() < self.period && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Renews the lease every round until `stop`. When etcd says it expired
    /// (or there is none yet), `lapsed` is called: the agent grants a new
    /// one at once, the controller lets its main loop campaign again. An
    /// error is logged and tried again next round: the lease outlives a
    /// short outage.
    pub fn keep_alive(
        &self,
        cluster: &Etcd,
        stop: &AtomicBool,
        log: &(dyn Fn(&str) + Sync),
        lapsed: &(dyn Fn(Option<i64>) -> Result<(), EtcdError> + Sync),
    ) {
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let step = || -> Result<(), EtcdError> {
                let expired = match self.current() {
                    Some(id) => match cluster.keepalive(id)? {
                        Some(_) => {
                            self.mark();
                            return Ok(());
                        }
                        None => Some(id),
                    },
                    None => None,
                };
                lapsed(expired)
            };
            if let Err(e) = step() {
                log(&e.to_string());
            }
            self.pause(started, stop);
        }
    }

    /// Revokes the lease held, if any: what it bound goes at once.
    pub fn revoke(&self, cluster: &Etcd) {
        if let Some(id) = self.current() {
            let _ = cluster.revoke(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_aged_from_its_grant_and_a_round_is_a_third_of_the_ttl() {
        let l = Lease::new(3);
        assert_eq!((l.current(), l.age()), (None, None));
        assert_eq!(l.period, Duration::from_secs(1));
        l.set(Some(7));
        assert_eq!(l.current(), Some(7));
        assert!(l.age().is_some_and(|a| a < Duration::from_secs(1)));
        l.set(None);
        assert_eq!(l.current(), None);
        // A stop ends a round's pause at once.
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        l.pause(t, &stop);
        assert!(t.elapsed() < Duration::from_millis(500));
    }
}
