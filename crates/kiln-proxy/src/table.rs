//! The routing table: releases with weights, each with its backends.
//!
//! A table is immutable once built and swapped whole (see `Proxy`), so the
//! request path takes no lock. Weighted choice is exact: the table holds a
//! smooth weighted round-robin *schedule* (weights divided by their gcd), and
//! a request's ticket indexes it, so a 5/95 split gives exactly one request
//! in twenty to the canary, whatever the concurrency. Backend health lives in
//! [`Backend`], shared by every table that lists it, so swapping tables
//! keeps health and in-flight counts. No I/O here.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::metrics::{ReleaseMetrics, Traffic};

/// A release's id (several backends of one image digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseId(pub String);

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// One backend and its live state.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, parsed once rather than per request.
    pub authority: hyper::http::uri::Authority,
    /// Set by active health checks; a backend joins only once healthy.
    pub healthy: AtomicBool,
    /// Passive ejection: consecutive failures, and until when (ms on the
    /// proxy's clock) it is out.
    pub failures: AtomicU32,
    pub ejected_until_ms: AtomicU64,
    pub draining: AtomicBool,
    pub in_flight: AtomicU64,
    /// Consecutive active-check results, for the thresholds.
    pub health_ok: AtomicU32,
    pub health_fail: AtomicU32,
    /// When the next active check is due (ms on the proxy's clock), and
    /// whether one is running.
    pub next_check_ms: AtomicU64,
    pub checking: AtomicBool,
    pub requests: AtomicU64,
    /// Requests that failed here and were retried on another backend.
    pub retried: AtomicU64,
    pub ejections: AtomicU64,
    /// Responses by status class and latency (including the proxy's own
    /// 502/504 for this backend).
    pub traffic: Traffic,
    /// Idle keep-alive connections in the workers' pools.
    pub idle: AtomicU64,
    /// Drain outcomes: requests and tunnels that finished, and that were cut.
    pub drain_finished: AtomicU64,
    pub drain_cut: AtomicU64,
    /// Fired when a drain's deadline passes: whatever still runs on this
    /// backend (upgraded tunnels, requests awaiting their response) is cut.
    pub cut: tokio::sync::Notify,
}

impl Backend {
    pub fn new(addr: SocketAddr, healthy: bool) -> Arc<Self> {
        let authority = hyper::http::uri::Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| hyper::http::uri::Authority::from_static("127.0.0.1"));
        Arc::new(Backend {
            addr,
            authority,
            healthy: AtomicBool::new(healthy),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            health_ok: AtomicU32::new(0),
            health_fail: AtomicU32::new(0),
            next_check_ms: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            traffic: Traffic::default(),
            idle: AtomicU64::new(0),
            drain_finished: AtomicU64::new(0),
            drain_cut: AtomicU64::new(0),
            cut: tokio::sync::Notify::new(),
        })
    }

    pub fn available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }
}

/// A chosen release (with its index in the table) and backend.
pub type Pick<'a> = (usize, &'a Release, &'a Arc<Backend>);

/// A release in a table.
#[derive(Debug)]
pub struct Release {
    pub id: ReleaseId,
    pub weight: u32,
    pub backends: Vec<Arc<Backend>>,
    /// Shared with the proxy's registry: survives table swaps.
    pub metrics: Arc<ReleaseMetrics>,
    pub fault: Option<u16>,
    rr: AtomicUsize,
}

/// What a table is built from.
#[derive(Debug, Clone)]
pub struct ReleaseEntry {
    pub id: ReleaseId,
    pub weight: u32,
    pub backends: Vec<Arc<Backend>>,
    pub metrics: Arc<ReleaseMetrics>,
    /// See [`crate::TableEntry::fault`].
    pub fault: Option<u16>,
}

#[derive(Debug, Default)]
pub struct Table {
    pub releases: Vec<Release>,
    schedule: Vec<usize>,
}

/// Smooth weighted round robin over `weights` (after dividing by their
/// gcd): each index appears exactly `weight / gcd` times per cycle, spread
/// evenly.
pub fn schedule(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let w: Vec<i64> = weights.iter().map(|x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let best = (0..w.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Table {
    pub fn new(releases: Vec<ReleaseEntry>) -> Self {
        let schedule = schedule(&releases.iter().map(|r| r.weight).collect::<Vec<_>>());
        let releases = releases
            .into_iter()
            .map(|e| Release {
                id: e.id,
                weight: e.weight,
                backends: e.backends,
                metrics: e.metrics,
                fault: e.fault,
                rr: AtomicUsize::new(0),
            })
            .collect();
        Table { releases, schedule }
    }

    /// The index of the release named `name` (a cookie's value).
    pub fn release_index(&self, name: &[u8]) -> Option<usize> {
        self.releases.iter().position(|r| r.id.0.as_bytes() == name)
    }

    /// Chooses a release and a backend for a request. `ticket` is a
    /// per-request counter (or a hash, for header stickiness); `sticky` the
    /// index of a release the client is pinned to; `skip` the backends this
    /// request already failed on (all of them, not only the last: with two
    /// dead backends not yet ejected, a retry that avoided only the last
    /// went back to the first). Returns the release's index too.
    ///
    /// Passive ejection never takes the last backends out: when every
    /// backend a request could use is ejected, ejection is ignored (panic
    /// routing), since an ejected backend may answer where none surely will.
    /// Unhealthy (active checks) and draining backends stay out.
    pub fn pick(&self, ticket: u64, sticky: Option<usize>, skip: &[SocketAddr], now_ms: u64) -> Option<Pick<'_>> {
        // At `u64::MAX` every ejection has ended.
        self.pick_at(ticket, sticky, skip, now_ms).or_else(|| self.pick_at(ticket, sticky, skip, u64::MAX))
    }

    fn pick_at(&self, ticket: u64, sticky: Option<usize>, skip: &[SocketAddr], now_ms: u64) -> Option<Pick<'_>> {
        // `skip` is avoided across the whole table, not only within its
        // release: a retry of a request whose release has one backend (a
        // one-instance canary, a 50/50 split of two single backends) must
        // go to another release rather than back to the backend that just
        // failed. The failed backend is used again only when nothing else
        // can take the request.
        self.pick_avoiding(ticket, sticky, skip, now_ms)
            .or_else(|| (!skip.is_empty()).then(|| self.pick_avoiding(ticket, sticky, &[], now_ms)).flatten())
    }

    fn pick_avoiding(&self, ticket: u64, sticky: Option<usize>, skip: &[SocketAddr], now_ms: u64) -> Option<Pick<'_>> {
        if let Some((i, r)) = sticky.and_then(|i| Some((i, self.releases.get(i)?))).filter(|(_, r)| r.weight > 0) {
            if let Some(b) = r.next_backend(skip, now_ms) {
                return Some((i, r, b));
            }
        }
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = (ticket % n as u64) as usize;
        // The scheduled release first; if it has nothing available, the
        // next releases in schedule order (weight 0 releases never).
        for k in 0..n {
            let i = self.schedule[(start + k) % n];
            let r = &self.releases[i];
            if let Some(b) = r.next_backend(skip, now_ms) {
                return Some((i, r, b));
            }
        }
        None
    }

    /// Like [`Table::pick`], never from release `exclude` (whose drill
    /// fault a request just took): the schedule from `ticket` on, skipping it.
    pub fn pick_excluding(&self, ticket: u64, exclude: usize, skip: &[SocketAddr], now_ms: u64) -> Option<Pick<'_>> {
        let n = self.schedule.len();
        let start = (ticket % n.max(1) as u64) as usize;
        let at = |now_ms| {
            (0..n).map(|k| self.schedule[(start + k) % n]).filter(|&i| i != exclude).find_map(|i| {
                let r = &self.releases[i];
                r.next_backend(skip, now_ms).map(|b| (i, r, b))
            })
        };
        at(now_ms).or_else(|| at(u64::MAX))
    }

    /// Every backend in the table.
    pub fn backends(&self) -> impl Iterator<Item = (&ReleaseId, &Arc<Backend>)> {
        self.releases.iter().flat_map(|r| r.backends.iter().map(move |b| (&r.id, b)))
    }
}

impl Release {
    /// Round robin over available backends not in `skip`.
    fn next_backend(&self, skip: &[SocketAddr], now_ms: u64) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| &self.backends[(start + k) % n]).find(|b| b.available(now_ms) && !skip.contains(&b.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn entry(id: &str, weight: u32, backends: Vec<Arc<Backend>>) -> ReleaseEntry {
        ReleaseEntry { id: ReleaseId(id.into()), weight, backends, metrics: Arc::default(), fault: None }
    }

    #[test]
    fn a_pick_excluding_a_release_never_lands_on_it_and_is_none_when_it_is_all_there_is() {
        let t = Table::new(vec![
            entry("drill", 50, vec![Backend::new(addr(1), true), Backend::new(addr(2), true)]),
            entry("stable", 50, vec![Backend::new(addr(3), true)]),
        ]);
        for ticket in 0..100 {
            let (i, r, b) = t.pick_excluding(ticket, 0, &[], 0).unwrap();
            assert_eq!((i, r.id.0.as_str(), b.addr), (1, "stable", addr(3)));
        }
        let only = Table::new(vec![entry("drill", 100, vec![Backend::new(addr(1), true)])]);
        assert!(only.pick_excluding(7, 0, &[], 0).is_none());
    }

    #[test]
    fn schedules_are_exact_and_spread() {
        let s = schedule(&[5, 95]);
        assert_eq!(s.len(), 20);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 1);
        let s = schedule(&[25, 75]);
        assert_eq!(s, vec![1, 0, 1, 1]);
        let s = schedule(&[1, 1, 1]);
        assert_eq!(s, vec![0, 1, 2]);
        assert!(schedule(&[0, 0]).is_empty());
        assert_eq!(schedule(&[0, 7]), vec![1]);
    }

    #[test]
    fn weighted_picks_hold_over_many_tickets() {
        let t = Table::new(vec![
            entry("canary", 5, vec![Backend::new(addr(1), true)]),
            entry("stable", 95, vec![Backend::new(addr(2), true), Backend::new(addr(3), true)]),
        ]);
        let canary = (0..10_000u64).filter(|&i| t.pick(i, None, &[], 0).unwrap().1.id.0 == "canary").count();
        assert_eq!(canary, 500);
    }

    #[test]
    fn unavailable_backends_and_releases_are_skipped() {
        let dead = Backend::new(addr(1), true);
        let live = Backend::new(addr(2), true);
        let t = Table::new(vec![
            entry("a", 50, vec![dead.clone()]),
            entry("b", 50, vec![live.clone()]),
            entry("off", 0, vec![Backend::new(addr(9), true)]),
        ]);
        dead.healthy.store(false, Ordering::Relaxed);
        for i in 0..10 {
            assert_eq!(t.pick(i, None, &[], 0).unwrap().2.addr, addr(2));
        }
        let other = Backend::new(addr(3), true);
        let t2 = Table::new(vec![entry("b", 1, vec![live.clone(), other.clone()])]);
        live.ejected_until_ms.store(100, Ordering::Relaxed);
        for i in 0..4 {
            assert_eq!(t2.pick(i, None, &[], 50).unwrap().2.addr, addr(3), "an ejected backend is avoided");
        }
        other.ejected_until_ms.store(100, Ordering::Relaxed);
        assert!(t2.pick(0, None, &[], 50).is_some(), "all ejected: panic routing ignores ejection");
        other.healthy.store(false, Ordering::Relaxed);
        assert_eq!(t.pick(0, None, &[], 50).unwrap().2.addr, addr(2), "weight-0 releases get nothing, even then");
        assert!(t.pick(0, None, &[], 100).is_some(), "ejection ends");
        live.draining.store(true, Ordering::Relaxed);
        assert!(t.pick(0, None, &[], 100).is_none(), "draining backends stay out, panic or not");
        assert!(t.pick(0, None, &[], 50).is_none());
    }

    #[test]
    fn sticky_releases_and_skip() {
        let t = Table::new(vec![
            entry("a", 99, vec![Backend::new(addr(1), true), Backend::new(addr(2), true)]),
            entry("b", 1, vec![Backend::new(addr(3), true)]),
        ]);
        let b = t.release_index(b"b");
        assert_eq!(b, Some(1));
        assert_eq!(t.release_index(b"nope"), None);
        for i in 0..50 {
            assert_eq!(t.pick(i, b, &[], 0).unwrap().1.id.0, "b");
        }
        for i in 0..10 {
            let (_, _, be) = t.pick(0, t.release_index(b"a"), &[addr(1)], 0).unwrap();
            assert_eq!(be.addr, addr(2), "retry {i} avoids the backend that failed");
        }
    }

    #[test]
    fn a_second_retry_avoids_both_backends_that_failed() {
        // Two backends died at once and neither is ejected yet (a chaos
        // kill while a replacement is still starting): a request failed on
        // 1, then on 2; its last try must not go back to 1.
        let t = Table::new(vec![
            entry("a", 50, vec![Backend::new(addr(1), true), Backend::new(addr(2), true)]),
            entry("b", 50, vec![Backend::new(addr(3), true)]),
        ]);
        for ticket in 0..20 {
            assert_eq!(t.pick(ticket, None, &[addr(1), addr(2)], 0).unwrap().2.addr, addr(3), "ticket {ticket}");
            assert_eq!(t.pick(ticket, None, &[addr(2), addr(1)], 0).unwrap().2.addr, addr(3), "in either order");
        }
        assert!(t.pick(0, None, &[addr(1), addr(2), addr(3)], 0).is_some(), "all failed: one is tried again");
    }

    #[test]
    fn a_retry_leaves_a_one_backend_release_for_another_release() {
        // The defect of issue 8: two single-backend releases at 50/50; the
        // retry of a request that failed on one went back to the same
        // (dead, not yet ejected) backend, because `skip` only counted
        // inside the scheduled release.
        let t = Table::new(vec![
            entry("one", 50, vec![Backend::new(addr(1), true)]),
            entry("two", 50, vec![Backend::new(addr(2), true)]),
        ]);
        for ticket in 0..20 {
            let (_, r, b) = t.pick(ticket, None, &[addr(2)], 0).unwrap();
            assert_eq!((r.id.0.as_str(), b.addr), ("one", addr(1)), "ticket {ticket}");
        }
        let sticky_two = t.release_index(b"two");
        assert_eq!(t.pick(0, sticky_two, &[addr(2)], 0).unwrap().2.addr, addr(1), "stickiness yields to a retry");
        let alone = Table::new(vec![entry("only", 1, vec![Backend::new(addr(7), true)])]);
        assert_eq!(
            alone.pick(0, None, &[addr(7)], 0).unwrap().2.addr,
            addr(7),
            "the failed backend, if it is all there is"
        );
    }
}
