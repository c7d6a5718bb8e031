//! One load balancer process per service: `kiln proxy`, started detached
//! (its own session, like an instance's shim) so that it keeps serving the
//! last routing table while `kiln serve` is down, restarted or upgraded.
//!
//! The table lives in `$KILN_HOME/proxies/<service>/releases.json`, written
//! atomically before it is sent (`PUT /releases` on the proxy's loopback
//! admin API), so a proxy that restarts reads the last table the controller
//! decided. `proxy.json` records its pid and admin address; a restarted
//! controller adopts a proxy that is alive and answers there. This module
//! must never decide what the table holds.
//!
//! The controller drives load balancers only through the [`DataPlane`] and
//! [`DataPlanes`] traits: [`ProxyProcesses`] is the real one (a `kiln
//! proxy` process per service), [`RecordingDataPlanes`] the fake beside it,
//! which records every call with its typed arguments, answers stats a test
//! sets, and fails a call on request. In a fleet, an agent's load
//! balancers are a third.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ServeError;
use crate::net::http;
use crate::proxy::metrics::WindowStats;
use crate::proxy::TableEntry;
use crate::spec::ServiceSpec;

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
    /// Stops new requests to `backend` and waits (up to `deadline_ms`) for
    /// what it has in flight.
    fn drain(&self, backend: SocketAddr, deadline_ms: u64) -> Result<(), ServeError>;
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
#[derive(Debug, Clone)]
pub struct ProxyProcesses {
    home: PathBuf,
}

impl ProxyProcesses {
    pub fn new(home: &Path) -> Self {
        ProxyProcesses { home: home.to_owned() }
    }
}

impl DataPlanes for ProxyProcesses {
    fn ensure(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError> {
        let rec = ProxyProcess::ensure(&self.home, service)?;
        Ok(Arc::new(Proxied { rec, home: self.home.clone() }))
    }

    fn hand_over(&self, service: &ServiceSpec) -> Result<Arc<dyn DataPlane>, ServeError> {
        let path = dir(&self.home, &service.name).join("proxy.json");
        let old: ProxyProcess = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        let rec = old.hand_over(&self.home, service)?;
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
        let record = dir(&self.home, service).join("proxy.json");
        if let Some(p) = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice::<ProxyProcess>(&b).ok()) {
            if alive(p.pid) {
                // SAFETY: a signal to a proxy process kiln started and recorded.
                unsafe { libc::kill(p.pid, libc::SIGTERM) };
            }
        }
        let _ = std::fs::remove_file(record);
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
    fn drain(&self, backend: SocketAddr, deadline_ms: u64) -> Result<(), ServeError> {
        self.rec.drain(backend, deadline_ms)
    }
}

/// A service's running `kiln proxy`, as `proxy.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyProcess {
    pub service: String,
    pub pid: i32,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Where a successor takes its listeners over ([`ProxyProcess::hand_over`]);
    /// none for previews, and for proxies of a kiln before handoffs.
    #[serde(default)]
    pub handoff: Option<PathBuf>,
    /// Its hosts, certificate files and redirect listener, as started.
    #[serde(default)]
    pub edge: Edge,
}

/// The edge settings a proxy process was started with: a change of any
/// of them starts a successor on the same listeners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<SocketAddr>,
}

impl Edge {
    fn of(service: &ServiceSpec) -> Edge {
        let e = &service.edge;
        Edge {
            hosts: e.hosts.clone(),
            cert: e.tls.as_ref().map(|t| t.cert.clone()),
            key: e.tls.as_ref().map(|t| t.key.clone()),
            redirect_http: e.redirect_http,
        }
    }
}

/// Reads and checks a service's certificate and key (the key matches, the
/// hosts are covered, the dates are valid at `now`), so that a bad pair is
/// refused naming its kiln.toml key before any load balancer changes.
pub fn check_certificate(service: &ServiceSpec, now: i64) -> Result<(), ServeError> {
    let Some(t) = &service.edge.tls else { return Ok(()) };
    let files = crate::proxy::tls::TlsFiles { cert: t.cert.clone(), key: t.key.clone() };
    crate::proxy::tls::load(&files, &service.edge.hosts, now).map(drop).map_err(|e| {
        let key = match &e {
            crate::proxy::tls::TlsError::NotCovering { .. } => "tls.cert (see hosts)",
            _ if e.is_key() => "tls.key",
            _ => "tls.cert",
        };
        ServeError::Spec(crate::spec::SpecError {
            file: service.file.clone(),
            line: Some(service.edge.tls_line).filter(|l| *l > 0),
            key: format!("service.{}.{key}", service.name),
            message: e.to_string(),
        })
    })
}

fn dir(home: &Path, service: &str) -> PathBuf {
    home.join("proxies").join(service)
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ServeError + '_ {
    move |source| ServeError::Io { path: path.to_owned(), source }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServeError> {
    crate::sys::atomic::write(path, bytes).map_err(io_err(path))
}

/// Whether a proxy offers its listeners to a successor, and whether it
/// takes over a predecessor's.
#[derive(Debug, Clone, Copy)]
enum Handoff<'a> {
    None,
    Offer,
    From(&'a Path),
}

/// A fresh handoff socket path: each proxy has its own, so a successor's
/// never replaces its predecessor's while both run.
fn handoff_path(dir: &Path) -> PathBuf {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    dir.join(format!("handoff-{n:x}.sock"))
}

impl ProxyProcess {
    /// Adopts the service's proxy if it runs and answers on the recorded
    /// admin address with the same listen address; otherwise starts one.
    fn ensure(home: &Path, service: &ServiceSpec) -> Result<ProxyProcess, ServeError> {
        let listen = service.release.listen.ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        let d = dir(home, &service.name);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        let record = d.join("proxy.json");
        let old = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice::<ProxyProcess>(&b).ok());
        if let Some(dp) = &old {
            if alive(dp.pid) && dp.listen == listen && dp.call("GET", "/releases", b"").is_ok() {
                if dp.edge == Edge::of(service) {
                    // Adopted as it runs: it checks its own certificate
                    // files when they change.
                    return Ok(dp.clone());
                }
                // New hosts, certificate files or redirect: a successor
                // takes the same listeners over, so no connection is refused.
                if dp.handoff.is_some() {
                    return dp.hand_over(home, service);
                }
            }
        }
        check_certificate(service, crate::time::now_secs())?;
        let table = d.join("releases.json");
        if !table.exists() {
            write_atomic(&table, b"[]")?;
        }
        // The new listener first: an address that cannot be bound fails
        // here, and the running load balancer keeps serving.
        let dp = Self::spawn(home, service, &service.name, listen, &table, "proxy.log", Handoff::Offer)?;
        write_atomic(&record, &serde_json::to_vec(&dp).expect("serializes"))?;
        if let Some(old) = old.filter(|o| alive(o.pid) && o.listen != listen) {
            // The service moved: the old listener goes (gracefully: what
            // it has in flight is answered).
            // SAFETY: a signal to a process kiln started and recorded.
            unsafe { libc::kill(old.pid, libc::SIGTERM) };
        }
        Ok(dp)
    }

    /// Replaces this proxy process with one of the running kiln binary,
    /// without a refused connection: the new one takes the listeners over
    /// (the same sockets) with each backend's health, serves, and only then
    /// does the old one stop accepting; it exits once its open connections
    /// have had their last answers. The new record is written before this
    /// returns. A proxy without a handoff socket is left as it is.
    fn hand_over(&self, home: &Path, service: &ServiceSpec) -> Result<ProxyProcess, ServeError> {
        let Some(from) = self.handoff.clone() else {
            return Err(ServeError::Proxy {
                service: self.service.clone(),
                admin: self.admin,
                detail: "started without a handoff socket; restart it to upgrade".into(),
            });
        };
        let d = dir(home, &service.name);
        check_certificate(service, crate::time::now_secs())?;
        let table = d.join("releases.json");
        let dp = Self::spawn(home, service, &service.name, self.listen, &table, "proxy.log", Handoff::From(&from))?;
        write_atomic(&d.join("proxy.json"), &serde_json::to_vec(&dp).expect("serializes"))?;
        Ok(dp)
    }

    /// Starts a private load balancer for `table` alone on a free loopback
    /// port (blue-green's preview listener: smoke checks go through it
    /// before the new set gets any traffic). A preview left by a crashed
    /// controller is ended first. [`ProxyProcess::stop_preview`] ends it.
    fn preview(home: &Path, service: &ServiceSpec, table: &[TableEntry]) -> Result<ProxyProcess, ServeError> {
        let d = dir(home, &service.name);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        let record = d.join("preview.json");
        if let Some(old) = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice::<ProxyProcess>(&b).ok()) {
            old.stop_preview(home, &service.name);
        }
        let file = d.join("preview-releases.json");
        write_atomic(&file, &serde_json::to_vec(table).expect("serializes"))?;
        let listen = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(io_err(&d))?;
            l.local_addr().map_err(io_err(&d))?
        };
        let label = format!("{}-preview", service.name);
        let dp = Self::spawn(home, service, &label, listen, &file, "preview.log", Handoff::None)?;
        write_atomic(&record, &serde_json::to_vec(&dp).expect("serializes"))?;
        Ok(dp)
    }

    /// Ends `service`'s preview load balancer (SIGTERM: requests in flight
    /// finish) and its record.
    fn stop_preview(&self, home: &Path, service: &str) {
        if alive(self.pid) {
            // SAFETY: a signal to a proxy process kiln started and recorded.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_file(dir(home, service).join("preview.json"));
    }

    /// Starts `kiln proxy` detached and waits until its admin API answers.
    fn spawn(
        home: &Path,
        service: &ServiceSpec,
        label: &str,
        listen: SocketAddr,
        table: &Path,
        log_name: &str,
        handoff: Handoff<'_>,
    ) -> Result<ProxyProcess, ServeError> {
        let d = dir(home, &service.name);
        if !matches!(handoff, Handoff::From(_)) {
            // A taken address is refused at once, naming the key, rather
            // than after the proxy's start deadline.
            if let Some(r) = service.edge.redirect_http.filter(|_| label == service.name) {
                if let Err(e) = TcpListener::bind(r) {
                    return Err(ServeError::ListenTaken {
                        at: Box::new(crate::spec::SpecError {
                            file: service.file.clone(),
                            line: None,
                            key: format!("service.{}.redirect_http", service.name),
                            message: format!("cannot bind {r}: {e}"),
                        }),
                    });
                }
            }
            if let Err(e) = TcpListener::bind(listen) {
                let why = match e.kind() {
                    io::ErrorKind::AddrInUse => "another process listens there".to_owned(),
                    _ => e.to_string(),
                };
                return Err(ServeError::ListenTaken {
                    at: Box::new(crate::spec::SpecError {
                        file: service.file.clone(),
                        line: Some(service.release.listen_line).filter(|l| *l > 0),
                        key: format!("service.{}.listen", service.name),
                        message: format!("cannot bind {listen}: {why}"),
                    }),
                });
            }
        }
        let admin = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(io_err(&d))?;
            l.local_addr().map_err(io_err(&d))?
        };
        let exe = std::env::current_exe().map_err(io_err(&d))?;
        let log_path = d.join(log_name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err(&log_path))?;
        let h = &service.release.health;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--home").arg(home).arg("proxy");
        cmd.args(["--service", label, "--listen", &listen.to_string(), "--admin", &admin.to_string()]);
        cmd.arg("--releases-file").arg(table);
        cmd.args([
            "--health-interval-ms",
            &h.interval_ms.to_string(),
            "--health-timeout-ms",
            &h.timeout_ms.to_string(),
        ]);
        cmd.args(["--healthy-threshold", &h.healthy_threshold.to_string()]);
        cmd.args(["--unhealthy-threshold", &h.unhealthy_threshold.to_string()]);
        if let Some(p) = &h.path {
            cmd.args(["--health-path", p]);
        }
        cmd.arg("--release-header");
        // A preview is for smoke checks on loopback: plain HTTP.
        let edge = if label == service.name { Edge::of(service) } else { Edge::default() };
        if let (Some(cert), Some(key)) = (&edge.cert, &edge.key) {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            for h in &edge.hosts {
                cmd.args(["--host", h]);
            }
            if let Some(r) = edge.redirect_http {
                cmd.args(["--redirect-http", &r.to_string()]);
            }
        }
        let offer = match handoff {
            Handoff::None => None,
            Handoff::Offer => Some(handoff_path(&d)),
            Handoff::From(p) => {
                cmd.arg("--take-over").arg(p);
                Some(handoff_path(&d))
            }
        };
        if let Some(p) = &offer {
            cmd.arg("--handoff").arg(p);
        }
        let err_log = log.try_clone().map_err(io_err(&log_path))?;
        cmd.stdin(std::process::Stdio::null()).stdout(log).stderr(err_log);
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory; it
        // detaches the proxy from kiln serve's session and signals.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io_err(&d))?;
        let dp =
            ProxyProcess { service: label.to_owned(), pid: child.id() as i32, listen, admin, handoff: offer, edge };
        let deadline = Instant::now() + Duration::from_secs(10);
        while dp.call("GET", "/releases", b"").is_err() {
            // An exited proxy is found by waiting on it: as a zombie it
            // would still answer `kill(pid, 0)` until the deadline.
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if Instant::now() > deadline || exited {
                if !exited {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(ServeError::ProxyStart {
                    service: service.name.clone(),
                    listen,
                    log: log.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not waited for: the proxy outlives kiln serve (reaped by it, see
        // crate::sys::children, when it exits first).
        crate::sys::children::abandon(child);
        Ok(dp)
    }

    fn call(&self, method: &str, target: &str, body: &[u8]) -> Result<Vec<u8>, ServeError> {
        let fail = |detail: String| ServeError::Proxy { service: self.service.clone(), admin: self.admin, detail };
        let s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2)).map_err(|e| fail(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| fail(e.to_string()))?;
        let r = http::exchange(s, method, target, body).map_err(|e| fail(e.to_string()))?;
        if r.status != 200 {
            return Err(fail(format!("{method} {target}: {} {}", r.status, String::from_utf8_lossy(&r.body))));
        }
        Ok(r.body)
    }

    /// Makes `table` the routing table: on disk first, then in the proxy.
    fn set_table(&self, home: &Path, table: &[TableEntry]) -> Result<(), ServeError> {
        let body = serde_json::to_vec(table).expect("serializes");
        write_atomic(&dir(home, &self.service).join("releases.json"), &body)?;
        self.call("PUT", "/releases", &body).map(drop)
    }

    /// A release's traffic over the last `window_secs` seconds.
    fn stats(&self, release: &str, window_secs: u64) -> Result<WindowStats, ServeError> {
        let body = self.call("GET", &format!("/stats?release={release}&window={window_secs}"), b"")?;
        serde_json::from_slice(&body).map_err(|e| ServeError::Proxy {
            service: self.service.clone(),
            admin: self.admin,
            detail: format!("bad /stats answer: {e}"),
        })
    }

    /// Totals since the proxy started, over every release (its typed
    /// `/totals`; drill faults are not requests there).
    fn totals(&self) -> Result<Totals, ServeError> {
        let body = self.call("GET", "/totals", b"")?;
        serde_json::from_slice(&body).map_err(|e| ServeError::Proxy {
            service: self.service.clone(),
            admin: self.admin,
            detail: format!("bad /totals answer: {e}"),
        })
    }

    /// Stops new requests to `backend` and waits (up to `deadline_ms`) for
    /// what it has in flight.
    fn drain(&self, backend: SocketAddr, deadline_ms: u64) -> Result<(), ServeError> {
        self.call("POST", &format!("/drain?backend={backend}&deadline_ms={deadline_ms}"), b"").map(drop)
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
    fn drain(&self, backend: SocketAddr, _deadline_ms: u64) -> Result<(), ServeError> {
        self.owner.call(&self.service, self.listen, DataPlaneCall::Drain { service: self.service.clone(), backend })
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
