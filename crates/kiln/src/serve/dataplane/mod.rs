//! The load balancers, as the controller drives them: `kiln proxy`
//! processes, one per listening address ([`process`]: services that share
//! an address are routes of one process, by host and path), started
//! detached (their own session, like an instance's shim) so that they keep
//! serving the last routing tables while `kiln serve` is down, restarted
//! or upgraded. A restarted controller adopts the processes that are alive
//! and answer. This module must never decide what a table holds.
//!
//! The controller drives load balancers only through the [`DataPlane`] and
//! [`DataPlanes`] traits: [`ProxyProcesses`] is the real one,
//! [`RecordingDataPlanes`] the fake beside it, which records every call
//! with its typed arguments, answers stats a test sets, and fails a call
//! on request. In a fleet, an agent's load balancers are a third.

mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::ServeError;
use crate::proxy::metrics::WindowStats;
use crate::proxy::TableEntry;
use crate::spec::ServiceSpec;
use process::{alive, dir};
pub use process::{check_certificate, ProxyProcess};

pub use crate::proxy::control::BackendState;
pub use crate::proxy::metrics::Totals;

/// A service's load balancer, as the controller drives it.
pub trait DataPlane: std::fmt::Debug + Send + Sync {
    /// The address clients connect to.
    fn listen(&self) -> SocketAddr;
    /// The process serving it, when it is one on this host.
    fn pid(&self) -> Option<i32>;
    fn is_alive(&self) -> bool;
    /// Makes `table` the routing table (kept where a restarted load
    /// balancer finds it).
    fn set_table(&self, table: &[TableEntry]) -> Result<(), ServeError>;
    /// A release's traffic over the last `window_secs` seconds.
    fn stats(&self, release: &str, window_secs: u64) -> Result<WindowStats, ServeError>;
    /// Totals since it started, over every release.
    fn totals(&self) -> Result<Totals, ServeError>;
    /// Each backend of its table, with whether it finds it healthy.
    fn backends(&self) -> Result<Vec<BackendState>, ServeError>;
    /// Stops new requests to `backend` and waits (up to `deadline_ms`) for
    /// what it has in flight.
    fn drain(&self, backend: SocketAddr, deadline_ms: u64) -> Result<(), ServeError>;
    /// Answers (or, with `None`, stops answering) an ACME http-01
    /// challenge for `token` on the service's redirect listener.
    fn challenge(&self, token: &str, key_auth: Option<&str>) -> Result<(), ServeError>;
}

/// Where the controller's load balancers come from.
pub trait DataPlanes: std::fmt::Debug {
    /// Adopts the service's load balancer if it runs with the same listen
    /// address; otherwise starts one (bound first: a taken address fails
    /// here, naming the key).
    fn ensure(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError>;
    /// Replaces `service`'s load balancer with a new one on the same
    /// listeners, without a refused connection.
    fn hand_over(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError>;
    /// A private load balancer for `table` alone (blue-green's preview).
    fn preview(&self, service: &ServiceSpec, table: &[TableEntry]) -> Result<Arc<dyn DataPlane>, ServeError>;
    /// Ends `service`'s preview, if any.
    fn stop_preview(&self, service: &str);
    /// Stops `service`'s load balancer (what it has in flight is answered)
    /// and forgets it: the service was taken down.
    fn stop(&self, service: &str);
}

/// `kiln proxy` processes, one per service, recorded under
/// `$KILN_HOME/proxies`.
#[derive(Debug)]
pub struct ProxyProcesses {
    home: PathBuf,
    /// Sites handed over by this controller (an upgrade), by address.
    handed: Mutex<std::collections::BTreeMap<SocketAddr, ProxyProcess>>,
}

impl ProxyProcesses {
    pub fn new(home: &Path) -> Self {
        ProxyProcesses { home: home.to_owned(), handed: Mutex::default() }
    }
}

impl DataPlanes for ProxyProcesses {
    fn ensure(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError> {
        let rec = ProxyProcess::ensure(&self.home, service)?;
        Ok(Arc::new(Proxied { rec, home: self.home.clone() }))
    }

    fn hand_over(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError> {
        // Services of one site share a process: it is handed over once,
        // and the others adopt its successor.
        let mut done = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        let listen = service.release.listen.ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        let rec = match done.get(&listen) {
            Some(rec) => ProxyProcess { service: service.name.clone(), ..rec.clone() },
            None => ProxyProcess::hand_over(&self.home, service)?,
        };
        done.insert(listen, rec.clone());
        Ok(Arc::new(Proxied { rec, home: self.home.clone() }))
    }

    fn preview(&self, service: &ServiceSpec, table: &[TableEntry]) -> Result<Arc<dyn DataPlane>, ServeError> {
        let rec = ProxyProcess::preview(&self.home, service, table)?;
        Ok(Arc::new(Proxied { rec, home: self.home.clone() }))
    }

    fn stop_preview(&self, service: &str) {
        let record = dir(&self.home, service).join("preview.json");
        if let Some(old) = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice::<ProxyProcess>(&b).ok()) {
            old.stop_preview(&self.home, service);
        }
    }

    fn stop(&self, service: &str) {
        process::stop_service(&self.home, service);
    }
}

/// A running proxy process and where its table lives.
#[derive(Debug)]
struct Proxied {
    rec: ProxyProcess,
    home: PathBuf,
}

impl DataPlane for Proxied {
    fn listen(&self) -> SocketAddr {
        self.rec.listen
    }
    fn pid(&self) -> Option<i32> {
        Some(self.rec.pid)
    }
    fn is_alive(&self) -> bool {
        alive(self.rec.pid)
    }
    fn set_table(&self, table: &[TableEntry]) -> Result<(), ServeError> {
        self.rec.set_table(&self.home, table)
    }
    fn stats(&self, release: &str, window_secs: u64) -> Result<WindowStats, ServeError> {
        self.rec.stats(release, window_secs)
    }
    fn totals(&self) -> Result<Totals, ServeError> {
        self.rec.totals()
    }
    fn backends(&self) -> Result<Vec<BackendState>, ServeError> {
        self.rec.backends()
    }
    fn drain(&self, backend: SocketAddr, deadline_ms: u64) -> Result<(), ServeError> {
        self.rec.drain(backend, deadline_ms)
    }
    fn challenge(&self, token: &str, key_auth: Option<&str>) -> Result<(), ServeError> {
        self.rec.challenge(token, key_auth)
    }
}

/// One call a [`RecordingDataPlanes`] received, with its typed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlaneCall {
    Ensure { service: String, listen: SocketAddr },
    HandOver { service: String },
    Preview { service: String, table: Vec<TableEntry> },
    StopPreview { service: String },
    Stop { service: String },
    SetTable { service: String, table: Vec<TableEntry> },
    Drain { service: String, backend: SocketAddr },
    Challenge { service: String, token: String, key_auth: Option<String> },
}

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<DataPlaneCall>,
    stats: std::collections::HashMap<(String, String), WindowStats>,
    failing: std::collections::HashMap<String, String>,
    dead: std::collections::HashSet<String>,
}

/// The fake data plane, for the controller's unit tests: no process, no
/// socket. It records every call, answers the stats a test sets (empty
/// windows otherwise), and fails every call for a service a test marks.
#[derive(Debug, Clone, Default)]
pub struct RecordingDataPlanes {
    inner: Arc<Mutex<Recorded>>,
}

impl RecordingDataPlanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<DataPlaneCall> {
        self.lock().calls.clone()
    }

    /// The table last set for `service`.
    pub fn table(&self, service: &str) -> Option<Vec<TableEntry>> {
        self.lock().calls.iter().rev().find_map(|c| match c {
            DataPlaneCall::SetTable { service: s, table } if s == service => Some(table.clone()),
            _ => None,
        })
    }

    /// What `stats` answers for `release` of `service`.
    pub fn set_stats(&self, service: &str, release: &str, stats: WindowStats) {
        self.lock().stats.insert((service.to_owned(), release.to_owned()), stats);
    }

    /// Makes every call for `service` fail with `detail` (none: succeed again).
    pub fn fail(&self, service: &str, detail: Option<&str>) {
        let mut r = self.lock();
        match detail {
            Some(d) => r.failing.insert(service.to_owned(), d.to_owned()),
            None => r.failing.remove(service),
        };
    }

    /// `service`'s load balancer dies (until the next `ensure`).
    pub fn kill(&self, service: &str) {
        self.lock().dead.insert(service.to_owned());
    }

    fn call(&self, service: &str, listen: SocketAddr, call: DataPlaneCall) -> Result<(), ServeError> {
        let mut r = self.lock();
        if let Some(detail) = r.failing.get(service) {
            return Err(ServeError::Proxy { service: service.to_owned(), admin: listen, detail: detail.clone() });
        }
        r.calls.push(call);
        Ok(())
    }
}

/// A load balancer of [`RecordingDataPlanes`].
#[derive(Debug)]
struct FakePlane {
    service: String,
    listen: SocketAddr,
    owner: RecordingDataPlanes,
}

impl DataPlane for FakePlane {
    fn listen(&self) -> SocketAddr {
        self.listen
    }
    fn pid(&self) -> Option<i32> {
        None
    }
    fn is_alive(&self) -> bool {
        !self.owner.lock().dead.contains(&self.service)
    }
    fn set_table(&self, table: &[TableEntry]) -> Result<(), ServeError> {
        let call = DataPlaneCall::SetTable { service: self.service.clone(), table: table.to_vec() };
        self.owner.call(&self.service, self.listen, call)
    }
    fn stats(&self, release: &str, _window_secs: u64) -> Result<WindowStats, ServeError> {
        let r = self.owner.lock();
        if let Some(detail) = r.failing.get(&self.service) {
            return Err(ServeError::Proxy {
                service: self.service.clone(),
                admin: self.listen,
                detail: detail.clone(),
            });
        }
        Ok(r.stats.get(&(self.service.clone(), release.to_owned())).cloned().unwrap_or_default())
    }
    fn totals(&self) -> Result<Totals, ServeError> {
        Ok(Totals::default())
    }
    /// The last table's backends, each healthy (or the failure a test set).
    fn backends(&self) -> Result<Vec<BackendState>, ServeError> {
        if let Some(detail) = self.owner.lock().failing.get(&self.service) {
            return Err(ServeError::Proxy {
                service: self.service.clone(),
                admin: self.listen,
                detail: detail.clone(),
            });
        }
        let table = self.owner.table(&self.service).unwrap_or_default();
        let addrs: std::collections::BTreeSet<SocketAddr> = table.into_iter().flat_map(|e| e.backends).collect();
        Ok(addrs.into_iter().map(|addr| BackendState { addr, healthy: true, draining: false }).collect())
    }
    fn drain(&self, backend: SocketAddr, _deadline_ms: u64) -> Result<(), ServeError> {
        self.owner.call(&self.service, self.listen, DataPlaneCall::Drain { service: self.service.clone(), backend })
    }
    fn challenge(&self, token: &str, key_auth: Option<&str>) -> Result<(), ServeError> {
        let call = DataPlaneCall::Challenge {
            service: self.service.clone(),
            token: token.to_owned(),
            key_auth: key_auth.map(str::to_owned),
        };
        self.owner.call(&self.service, self.listen, call)
    }
}

impl DataPlanes for RecordingDataPlanes {
    fn ensure(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError> {
        let listen = service.release.listen.ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        self.call(&service.name, listen, DataPlaneCall::Ensure { service: service.name.clone(), listen })?;
        self.lock().dead.remove(&service.name);
        Ok(Arc::new(FakePlane { service: service.name.clone(), listen, owner: self.clone() }))
    }
    fn hand_over(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError> {
        let listen = service.release.listen.ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        self.call(&service.name, listen, DataPlaneCall::HandOver { service: service.name.clone() })?;
        Ok(Arc::new(FakePlane { service: service.name.clone(), listen, owner: self.clone() }))
    }
    fn preview(&self, service: &ServiceSpec, table: &[TableEntry]) -> Result<Arc<dyn DataPlane>, ServeError> {
        let listen = SocketAddr::from(([127, 0, 0, 1], 1));
        let call = DataPlaneCall::Preview { service: service.name.clone(), table: table.to_vec() };
        self.call(&service.name, listen, call)?;
        Ok(Arc::new(FakePlane { service: format!("{}-preview", service.name), listen, owner: self.clone() }))
    }
    fn stop_preview(&self, service: &str) {
        let listen = SocketAddr::from(([127, 0, 0, 1], 1));
        let _ = self.call(service, listen, DataPlaneCall::StopPreview { service: service.to_owned() });
    }
    fn stop(&self, service: &str) {
        let listen = SocketAddr::from(([127, 0, 0, 1], 1));
        let _ = self.call(service, listen, DataPlaneCall::Stop { service: service.to_owned() });
        self.lock().dead.insert(service.to_owned());
    }
}
