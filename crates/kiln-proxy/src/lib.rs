//! kiln's HTTP load balancer: one listener per address (a [`site`]), in
//! front of the instances of the services that share it, told apart by
//! host and path; each service's [`Proxy`] is driven by the release
//! controller through one control surface, the [`Control`] enum and
//! [`Proxy::control`] (replace releases, set weights, drain a backend, read
//! metrics and windowed stats); the admin API maps HTTP onto the same
//! enum, naming the service (`?service=`).
//!
//! Threading is nginx's: [`start`] runs one thread per worker, each with a
//! single-threaded tokio runtime, its own `SO_REUSEPORT` listener and its
//! own backend keep-alive pool, so a request never crosses threads.
//!
//! The request path is [`forward`]: an HTTP/1.1 engine of kiln's own (heads
//! parsed and rewritten by [`h1`], bodies passed through as bytes), one
//! task per client connection, with no per-request allocation, task or
//! channel; over TLS ([`tls`], rustls) the same, and HTTP/2 clients
//! (ALPN `h2`) through hyper (`forward::h2`). The routing table and the
//! site's routes are swapped whole through `ArcSwap`, so a switch never
//! blocks or fails a request. Nothing on the request path may block or
//! take a lock. The admin API and the [`redirect`] listener are hyper
//! servers: they are not hot.
//! Its parts: [`config`] (what it is told, a site file included),
//! [`control`] (the typed control surface), [`admin`] (HTTP onto it),
//! [`site`] (an address: routes, accept loop, what they share), this file
//! (a service's state, health checks, metrics).
//! [`run`] is `kiln proxy`'s main; [`handoff`] passes listening sockets to
//! a successor process (the proxy's `--take-over`, and `kiln serve
//! --upgrade`).
//!
//! Must never: know kiln's store, runtime or controller (it is a crate of
//! its own, depending on kiln-core alone among kiln's crates, so the
//! compiler holds it to that); block or lock on the request path.

mod forward;
pub mod h1;
pub mod handoff;
pub mod tls;
pub use kiln_core::metrics;
pub mod admin;
pub mod config;
pub mod control;
pub mod redirect;
pub mod run;
pub mod site;
pub mod table;

pub use admin::serve_admin;
pub use config::*;
pub use control::*;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

use metrics::{ReleaseMetrics, WindowStats};
use table::{Backend, ReleaseEntry, ReleaseId, Table};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Registry {
    specs: Vec<TableEntry>,
    releases: BTreeMap<ReleaseId, Arc<ReleaseMetrics>>,
    backends: HashMap<SocketAddr, Arc<Backend>>,
}

pub struct Proxy {
    config: ProxyConfig,
    table: ArcSwap<Table>,
    /// Numbers requests: the weighted schedule's position, and generated
    /// request ids (with `id_salt`, so ids differ between runs).
    ticket: AtomicU64,
    id_salt: u64,
    retry_budget: RetryBudget,
    /// Failed requests written to stderr, a few a second.
    error_log: ErrorLog,
    epoch: Instant,
    registry: Mutex<Registry>,
    /// Set when its service leaves the site: its health checks end.
    retired: AtomicBool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("service", &self.config.service).finish()
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A proxy-wide retry budget: every request deposits a fifth of a retry,
/// every retry withdraws one, so retries stay under about 20% of traffic
/// (plus a small reserve) and a failing fleet is not hit twice as hard.
/// Amounts are tenths, in one atomic.
#[derive(Debug)]
pub struct RetryBudget {
    tenths: AtomicU64,
}

impl RetryBudget {
    const DEPOSIT: u64 = 2;
    const COST: u64 = 10;
    const CAP: u64 = 1_000;
    const RESERVE: u64 = 100;

    pub fn new() -> Self {
        RetryBudget { tenths: AtomicU64::new(Self::RESERVE) }
    }

    pub fn deposit(&self) {
        // Racy against the cap by a few tenths at most; never below zero.
        if self.tenths.load(Ordering::Relaxed) < Self::CAP {
            self.tenths.fetch_add(Self::DEPOSIT, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.tenths.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(Self::COST)).is_ok()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// The load balancer's error log: each request it answered with a 502 or
/// 504 of its own, naming the backends tried and how each failed (as
/// nginx's "upstream prematurely closed connection" lines), at most
/// [`ErrorLog::PER_SECOND`] lines a second; the rest are counted and the
/// count is written with the next second's first line.
#[derive(Debug, Default)]
pub struct ErrorLog {
    /// (second, lines written in it) in one atomic: second << 16 | count.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl ErrorLog {
    pub const PER_SECOND: u64 = 20;

    /// Whether a line may be written in second `now_s`, and how many were
    /// left out before it (written once, with the first line of a second).
    pub fn admit(&self, now_s: u64) -> Option<u64> {
        let mut first = false;
        let admitted = self
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let (second, count) = (w >> 16, w & 0xffff);
                if second != now_s {
                    first = true;
                    Some(now_s << 16 | 1)
                } else if count < Self::PER_SECOND {
                    first = false;
                    Some(w + 1)
                } else {
                    None
                }
            })
            .is_ok();
        if !admitted {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(if first { self.suppressed.swap(0, Ordering::Relaxed) } else { 0 })
    }
}

/// Keeps a backend's and a release's in-flight counts up while a request,
/// its response body or its upgraded connection is alive.
struct InFlight<'a> {
    backend: &'a Backend,
    release: &'a ReleaseMetrics,
}

impl<'a> InFlight<'a> {
    fn new(backend: &'a Backend, release: &'a ReleaseMetrics) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        release.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { backend, release }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.release.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        Arc::new(Proxy {
            config,
            table: ArcSwap::from_pointee(Table::default()),
            ticket: AtomicU64::new(0),
            id_salt: h1::fnv(&format!("{:?}{}", Instant::now(), std::process::id()).into_bytes()),
            retry_budget: RetryBudget::new(),
            error_log: ErrorLog::default(),
            epoch: Instant::now(),
            registry: Mutex::new(Registry::default()),
            retired: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `t` on the proxy's millisecond clock (the request path reads the
    /// clock once and reuses it).
    fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A poisoned registry only means a panic elsewhere; its data is still whole.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the whole backend set and weights, atomically. Backends
    /// already known keep their health; new ones join once healthy (at once
    /// when there are no active checks); those left out are retired.
    pub fn set_releases(&self, specs: Vec<TableEntry>) -> Result<(), ControlError> {
        let mut seen = std::collections::HashSet::new();
        for s in &specs {
            if s.release.is_empty() || !seen.insert(&s.release) {
                return Err(ControlError::BadRelease(s.release.clone()));
            }
        }
        let mut reg = self.registry();
        let mut entries = Vec::with_capacity(specs.len());
        for s in &specs {
            let id = ReleaseId(s.release.clone());
            let metrics = reg.releases.entry(id.clone()).or_default().clone();
            let healthy = self.config.health.is_none();
            let backends = s
                .backends
                .iter()
                .map(|a| reg.backends.entry(*a).or_insert_with(|| Backend::new(*a, healthy)).clone())
                .collect();
            entries.push(ReleaseEntry { id, weight: s.weight, backends, metrics, fault: s.fault });
        }
        self.table.store(Arc::new(Table::new(entries)));
        // Backends no release lists any more are retired: pools close their
        // idle connections, and an instance that later gets the same address
        // starts afresh (not drained, no old failures).
        let listed: std::collections::HashSet<SocketAddr> = specs.iter().flat_map(|s| s.backends.clone()).collect();
        reg.backends.retain(|addr, b| {
            let keep = listed.contains(addr);
            if !keep {
                b.draining.store(true, Ordering::Relaxed);
            }
            keep
        });
        reg.specs = specs;
        Ok(())
    }

    /// Changes weights only; unknown releases are an error and change nothing.
    pub fn set_weights(&self, weights: &BTreeMap<String, u32>) -> Result<(), ControlError> {
        let mut specs = self.registry().specs.clone();
        for (release, w) in weights {
            let s = specs
                .iter_mut()
                .find(|s| &s.release == release)
                .ok_or_else(|| ControlError::NoRelease(release.clone()))?;
            s.weight = *w;
        }
        self.set_releases(specs)
    }

    pub fn releases(&self) -> Vec<TableEntry> {
        self.registry().specs.clone()
    }

    /// Stops new requests to `addr` at once, waits for its in-flight
    /// requests, response bodies and upgraded connections up to `deadline`,
    /// then cuts what is left. Its idle keep-alive connections are closed
    /// by each worker's next pool sweep (within [`SWEEP_EVERY`]).
    pub async fn drain(&self, addr: SocketAddr, deadline: Duration) -> Result<DrainReport, ControlError> {
        let b = self.registry().backends.get(&addr).cloned().ok_or(ControlError::NoBackend(addr))?;
        b.draining.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let at_start = b.in_flight.load(Ordering::Relaxed);
        while b.in_flight.load(Ordering::Relaxed) > 0 && start.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = b.in_flight.load(Ordering::Relaxed);
        if left > 0 {
            b.cut.notify_waiters();
        }
        b.drain_finished.fetch_add(at_start.saturating_sub(left), Ordering::Relaxed);
        b.drain_cut.fetch_add(left, Ordering::Relaxed);
        Ok(DrainReport {
            backend: addr,
            finished: at_start.saturating_sub(left),
            cut: left,
            waited_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Its service left the site: health checks end.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// What a successor needs besides the listeners: each backend's health
    /// and drain, so that it serves the same backends from its first
    /// request instead of waiting for its own checks.
    pub fn succession(&self) -> Succession {
        let reg = self.registry();
        let mut backends: Vec<BackendState> = reg
            .backends
            .values()
            .map(|b| BackendState {
                addr: b.addr,
                healthy: b.healthy.load(Ordering::Relaxed),
                draining: b.draining.load(Ordering::Relaxed),
            })
            .collect();
        backends.sort_by_key(|b| b.addr);
        Succession { backends }
    }

    /// Takes a predecessor's backend states, for the backends this
    /// proxy's table lists (the table itself comes from its own file).
    pub fn inherit(&self, s: &Succession) {
        let reg = self.registry();
        for st in &s.backends {
            if let Some(b) = reg.backends.get(&st.addr) {
                b.healthy.store(st.healthy, Ordering::Relaxed);
                b.draining.store(st.draining, Ordering::Relaxed);
            }
        }
    }

    /// Requests, response bodies and tunnels in flight, over all backends.
    pub fn in_flight(&self) -> u64 {
        self.registry().releases.values().map(|m| m.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Windowed error rate and latency of a release, for canary analysis.
    pub fn window(&self, release: &str, secs: u64) -> Result<WindowStats, ControlError> {
        let m = self
            .registry()
            .releases
            .get(&ReleaseId(release.to_owned()))
            .cloned()
            .ok_or_else(|| ControlError::NoRelease(release.to_owned()))?;
        Ok(m.window(secs, self.now_ms() / 1000))
    }

    /// Carries out one control operation.
    pub async fn control(&self, c: Control) -> Result<ControlOutput, ControlError> {
        Ok(match c {
            Control::SetReleases(specs) => self.set_releases(specs).map(|()| ControlOutput::Done)?,
            Control::SetWeights(w) => self.set_weights(&w).map(|()| ControlOutput::Done)?,
            Control::Drain { backend, deadline } => ControlOutput::Drained(self.drain(backend, deadline).await?),
            Control::Releases => ControlOutput::Releases(self.releases()),
            Control::Stats { release, window_secs } => ControlOutput::Stats(self.window(&release, window_secs)?),
            Control::Metrics => ControlOutput::Metrics(self.metrics_text()),
            Control::Totals => ControlOutput::Totals(self.totals()),
            Control::Backends => ControlOutput::Backends(self.succession().backends),
        })
    }

    /// Requests, 5xx answers and retries since start, over every release,
    /// without a drill's injected faults.
    pub fn totals(&self) -> metrics::Totals {
        let reg = self.registry();
        let mut t = metrics::Totals::default();
        let mut injected = 0;
        for m in reg.releases.values() {
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            t.requests += m.traffic.by_class.iter().map(n).sum::<u64>();
            t.failed += n(&m.traffic.by_class[4]);
            t.retries += n(&m.retries);
            injected += n(&m.injected);
        }
        t.requests = t.requests.saturating_sub(injected);
        t.failed = t.failed.saturating_sub(injected);
        t
    }

    pub fn metrics_text(&self) -> String {
        let mut out = metrics::Exposition::default();
        self.metrics_into(&mut out);
        out.render()
    }

    /// Adds this service's families to `out` (a site renders its services
    /// into one exposition).
    pub fn metrics_into(&self, out: &mut metrics::Exposition) {
        let reg = self.registry();
        for (id, m) in &reg.releases {
            m.prometheus(out, &self.config.service, &id.0);
        }
        let mut backends: Vec<_> = reg.backends.values().collect();
        backends.sort_by_key(|b| b.addr);
        for b in backends {
            let l = format!("service=\"{}\",backend=\"{}\"", self.config.service, b.addr);
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let families: [(&str, &str, &str, u64); 6] = [
                ("kiln_proxy_backend_attempts_total", "counter", "Requests sent to the backend.", n(&b.requests)),
                ("kiln_proxy_backend_in_flight", "gauge", "Requests the backend is answering now.", n(&b.in_flight)),
                (
                    "kiln_proxy_backend_healthy",
                    "gauge",
                    "1 while the backend passes its health checks.",
                    u64::from(b.healthy.load(Ordering::Relaxed)),
                ),
                (
                    "kiln_proxy_backend_ejections_total",
                    "counter",
                    "Times failures took the backend out.",
                    n(&b.ejections),
                ),
                (
                    "kiln_proxy_backend_retried_total",
                    "counter",
                    "Requests of the backend retried elsewhere.",
                    n(&b.retried),
                ),
                ("kiln_proxy_backend_idle_connections", "gauge", "Idle kept connections to the backend.", n(&b.idle)),
            ];
            for (f, kind, help, v) in families {
                out.sample(f, kind, help, format_args!("{f}{{{l}}} {v}"));
            }
            let f = "kiln_proxy_backend_drained_total";
            let help = "Drains of the backend, by outcome (finished in time, or cut at the deadline).";
            out.sample(f, "counter", help, format_args!("{f}{{{l},outcome=\"finished\"}} {}", n(&b.drain_finished)));
            out.sample(f, "counter", help, format_args!("{f}{{{l},outcome=\"cut\"}} {}", n(&b.drain_cut)));
            b.traffic.prometheus(out, "kiln_proxy_backend_", &l);
        }
    }

    /// Passive health: consecutive failures eject a backend for a while,
    /// doubling with each further failure; a connection refused ejects at once.
    fn passive(&self, b: &Backend, failed: bool, refused: bool) {
        if !failed {
            b.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = b.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if refused || n >= self.config.eject_after {
            let doublings = n.saturating_sub(self.config.eject_after).min(5);
            let d = (self.config.eject_for * (1 << doublings)).min(Duration::from_secs(30));
            b.ejected_until_ms.store(self.now_ms() + d.as_millis() as u64, Ordering::Relaxed);
            b.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Active health checks, forever. A healthy backend is asked `GET
    /// path` every interval; one that is new, failing or unhealthy every
    /// [`QUICK_CHECK`] (at most the interval), so a replacement joins, and
    /// a hung backend leaves, within a fraction of a second rather than
    /// whole intervals. Thresholds flip its state.
    pub async fn health_loop(self: Arc<Self>) {
        let Some(h) = self.config.health.clone() else { return };
        let quick = h.interval.min(QUICK_CHECK);
        while !self.retired.load(Ordering::Relaxed) {
            let table = self.table.load_full();
            let now = self.now_ms();
            for (_, b) in table.backends() {
                if now < b.next_check_ms.load(Ordering::Relaxed) || b.checking.swap(true, Ordering::Relaxed) {
                    continue;
                }
                let (b, h, p) = (b.clone(), h.clone(), self.clone());
                tokio::spawn(async move {
                    let ok = forward::probe(b.addr, &h.path, h.timeout).await;
                    if ok {
                        b.health_fail.store(0, Ordering::Relaxed);
                        if b.health_ok.fetch_add(1, Ordering::Relaxed) + 1 >= h.healthy_threshold {
                            b.healthy.store(true, Ordering::Relaxed);
                        }
                    } else {
                        b.health_ok.store(0, Ordering::Relaxed);
                        if b.health_fail.fetch_add(1, Ordering::Relaxed) + 1 >= h.unhealthy_threshold {
                            b.healthy.store(false, Ordering::Relaxed);
                        }
                    }
                    let steady = ok && b.healthy.load(Ordering::Relaxed);
                    let next = p.now_ms() + if steady { h.interval } else { quick }.as_millis() as u64;
                    b.next_check_ms.store(next, Ordering::Relaxed);
                    b.checking.store(false, Ordering::Relaxed);
                });
            }
            tokio::time::sleep(HEALTH_TICK).await;
        }
    }
}

/// How often the health loop looks for checks that are due.
const HEALTH_TICK: Duration = Duration::from_millis(25);
/// The check interval of a backend that is not (or no longer) healthy.
pub const QUICK_CHECK: Duration = Duration::from_millis(100);

pub use site::{serve, start, Site, SWEEP_EVERY};

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// Binds `workers` `SO_REUSEPORT` listeners on `addr` (the first resolves
/// port 0; the others join its port), for [`start`]. They are plain std
/// sockets, so that they can also be handed to a successor process.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // SO_REUSEPORT would let this proxy share the port with any other
    // listener of the same user (another kiln home's proxy, say), splitting
    // its traffic silently. A plain bind first finds such a listener; a
    // successor shares the port only through --take-over.
    if addr.port() != 0 {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process listens there (a successor takes a port over with --take-over)".to_owned()
            } else {
                e.to_string()
            };
            return Err(std::io::Error::new(e.kind(), format!("{addr}: {why}")));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let mut bound = addr;
        let mut out = Vec::with_capacity(workers.max(1));
        for _ in 0..workers.max(1) {
            let l = reuseport_listener(bound)?;
            bound = l.local_addr()?;
            out.push(l.into_std()?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests;
