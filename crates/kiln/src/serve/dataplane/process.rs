//! `kiln proxy` processes, one per listening address (a site): every
//! service whose `listen` is that address is a route of the same process,
//! told apart by host and path, so services share one listener (`:443`
//! for several host names) while each keeps its own table, weights,
//! canary counters and drains.
//!
//! On disk, under `$KILN_HOME/proxies`:
//! - `@IP_PORT/site.json`: the site file the process reads (its services,
//!   their hosts, paths, certificates and releases files), written
//!   atomically before the process is told to re-read it (`POST /reload`);
//! - `@IP_PORT/proxy.json`: the process (pid, admin address, handoff
//!   socket, redirect listener), and its log;
//! - `SERVICE/releases.json`: the service's table, written before it is
//!   sent (`PUT /releases?service=SERVICE`), so a restarted process serves
//!   the last table the controller decided;
//! - `SERVICE/proxy.json`: a copy of its site's process record naming the
//!   service, for tools that look a service's load balancer up.
//!
//! For: starting, adopting, reloading, handing over and stopping those
//! processes. Must never: decide what a table holds.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ServeError;
use crate::net::http;
use crate::proxy::metrics::Totals;
use crate::proxy::metrics::WindowStats;
use crate::proxy::{SiteFile, SiteHealth, SiteService, TableEntry};
use crate::spec::ServiceSpec;

/// A running `kiln proxy`, as `proxy.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyProcess {
    /// The service whose record this is (a site's own record names its
    /// first service; a preview's is `NAME-preview`).
    pub service: String,
    pub pid: i32,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Where a successor takes its listeners over ([`ProxyProcess::hand_over`]);
    /// none for previews, and for proxies of a kiln before handoffs.
    #[serde(default)]
    pub handoff: Option<PathBuf>,
    /// The plain-HTTP redirect listener it was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<SocketAddr>,
    /// Whether it serves HTTPS (a change needs a new process).
    #[serde(default)]
    pub tls: bool,
    /// Its site file; none for a preview (and a kiln before sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<PathBuf>,
}

pub(super) fn dir(home: &Path, service: &str) -> PathBuf {
    home.join("proxies").join(service)
}

/// The directory of the site on `listen` (`@127.0.0.1_8443`, `@[::1]_443`).
fn site_dir(home: &Path, listen: SocketAddr) -> PathBuf {
    home.join("proxies").join(format!("@{}_{}", listen.ip(), listen.port()).replace(':', "-"))
}

pub(super) fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ServeError + '_ {
    move |source| ServeError::Io { path: path.to_owned(), source }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServeError> {
    crate::sys::atomic::write(path, bytes).map_err(io_err(path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Reads and checks a service's certificate and key (the key matches, the
/// hosts are covered, the dates are valid at `now`), so that a bad pair is
/// refused naming its kiln.toml key before any load balancer changes.
pub fn check_certificate(service: &ServiceSpec, now: i64) -> Result<(), ServeError> {
    // A certificate kiln obtains is checked when it arrives (the load
    // balancer loads it only if it passes).
    let Some(t) = service.edge.tls.as_ref().filter(|t| t.acme.is_none()) else { return Ok(()) };
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

/// A service as its site file lists it.
fn site_service(home: &Path, service: &ServiceSpec) -> SiteService {
    let h = &service.release.health;
    SiteService {
        service: service.name.clone(),
        hosts: service.edge.hosts.clone(),
        paths: service.edge.paths.clone(),
        tls: service.edge.tls.as_ref().map(|t| match t.acme {
            Some(_) => crate::acme::store::live_files(home, &service.name),
            None => crate::proxy::tls::TlsFiles { cert: t.cert.clone(), key: t.key.clone() },
        }),
        releases_file: dir(home, &service.name).join("releases.json"),
        health: h.path.as_ref().map(|path| SiteHealth {
            path: path.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }),
        release_header: true,
        redirect_http: service.edge.redirect_http,
        acme: service.edge.tls.as_ref().is_some_and(|t| t.acme.is_some()),
    }
}

/// Whether a process serves a site file's listeners as they must be: the
/// same HTTPS-ness and redirect listener (the rest a reload changes).
fn fits(p: &ProxyProcess, site: &SiteFile, redirect: Option<SocketAddr>) -> bool {
    let tls = site.services.iter().any(|s| s.tls.is_some());
    p.tls == tls && p.redirect_http == redirect.filter(|_| tls) && p.site.is_some()
}

/// Whether a process started with a handoff socket runs and answers.
fn answering(p: &ProxyProcess) -> bool {
    alive(p.pid) && p.call("GET", "/metrics", b"").is_ok()
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

/// What a process serves: a site file, or (a preview) one table.
#[derive(Debug, Clone, Copy)]
enum Serves<'a> {
    Site(&'a Path),
    Table(&'a Path),
}

impl ProxyProcess {
    /// Puts `service` on the site of its listen address: adopts the site's
    /// process (telling it to re-read the site file) if it runs and fits,
    /// hands its listeners to a successor if it runs but its HTTPS or
    /// redirect listener must change, and starts one otherwise. A service
    /// that moved leaves its old site.
    pub(super) fn ensure(home: &Path, service: &ServiceSpec) -> Result<ProxyProcess, ServeError> {
        let listen = service.release.listen.ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        check_certificate(service, crate::time::now_secs())?;
        let d = dir(home, &service.name);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        let table = d.join("releases.json");
        if !table.exists() {
            write_atomic(&table, b"[]")?;
        }
        let sd = site_dir(home, listen);
        std::fs::create_dir_all(&sd).map_err(io_err(&sd))?;
        let site_file = sd.join("site.json");
        let before: SiteFile = read_json(&site_file).unwrap_or_default();
        let mut site = before.clone();
        site.services.retain(|s| s.service != service.name);
        site.services.push(site_service(home, service));
        site.services.sort_by(|a, b| a.service.cmp(&b.service));
        // kiln.toml lets the services of one address name one redirect listener.
        let redirect = site.services.iter().find_map(|s| s.redirect_http);
        let running: Option<ProxyProcess> = read_json(&sd.join("proxy.json")).filter(answering);
        write_atomic(&site_file, &serde_json::to_vec_pretty(&site).expect("serializes"))?;
        let result = match &running {
            Some(p) if fits(p, &site, redirect) => p.reload().map(|()| p.clone()),
            Some(p) if p.handoff.is_some() && p.site.is_some() => p.succeed(home, service, &site_file, redirect),
            _ => Self::start_site(home, service, listen, &site_file, redirect),
        };
        let rec = match result {
            Ok(rec) => rec,
            Err(e) => {
                // Nothing changed: the site file says what still runs.
                write_atomic(&site_file, &serde_json::to_vec_pretty(&before).expect("serializes"))?;
                return Err(e);
            }
        };
        // A service that moved leaves its old site.
        let previous: Option<ProxyProcess> = read_json(&d.join("proxy.json"));
        if let Some(prev) = previous.filter(|p| p.listen != listen) {
            leave_site(home, &service.name, prev.listen);
        }
        rec.write_copies(home, &site)?;
        Ok(ProxyProcess { service: service.name.clone(), ..rec })
    }

    /// Starts a new process for the site on `listen`, bound first: an
    /// address that cannot be bound fails here, naming the key.
    fn start_site(
        home: &Path,
        service: &ServiceSpec,
        listen: SocketAddr,
        site_file: &Path,
        redirect: Option<SocketAddr>,
    ) -> Result<ProxyProcess, ServeError> {
        let taken = |addr: SocketAddr, key: &str, line: usize, e: io::Error| {
            let why = match e.kind() {
                io::ErrorKind::AddrInUse => "another process listens there".to_owned(),
                _ => e.to_string(),
            };
            ServeError::ListenTaken {
                at: Box::new(crate::spec::SpecError {
                    file: service.file.clone(),
                    line: Some(line).filter(|l| *l > 0),
                    key: format!("service.{}.{key}", service.name),
                    message: format!("cannot bind {addr}: {why}"),
                }),
            }
        };
        if let Some(r) = redirect {
            TcpListener::bind(r).map_err(|e| taken(r, "redirect_http", 0, e))?;
        }
        TcpListener::bind(listen).map_err(|e| taken(listen, "listen", service.release.listen_line, e))?;
        let site = site_dir(home, listen);
        let rec = Self::spawn(home, &service.name, listen, Serves::Site(site_file), &site, redirect, Handoff::Offer)?;
        write_atomic(&site.join("proxy.json"), &serde_json::to_vec(&rec).expect("serializes"))?;
        Ok(rec)
    }

    /// Tells the process to re-read its site file; a refusal changes nothing.
    fn reload(&self) -> Result<(), ServeError> {
        self.call("POST", "/reload", b"").map(drop)
    }

    /// Starts a successor of this site's process on the same listeners
    /// (the new one takes them over, then this one stops accepting and
    /// exits once its connections had their last answers), reading the
    /// site file as it is now.
    fn succeed(
        &self,
        home: &Path,
        service: &ServiceSpec,
        site_file: &Path,
        redirect: Option<SocketAddr>,
    ) -> Result<ProxyProcess, ServeError> {
        let Some(from) = self.handoff.clone() else {
            return Err(ServeError::Proxy {
                service: self.service.clone(),
                admin: self.admin,
                detail: "started without a handoff socket; restart it to upgrade".into(),
            });
        };
        let site = site_dir(home, self.listen);
        let rec = Self::spawn(
            home,
            &service.name,
            self.listen,
            Serves::Site(site_file),
            &site,
            redirect,
            Handoff::From(&from),
        )?;
        write_atomic(&site.join("proxy.json"), &serde_json::to_vec(&rec).expect("serializes"))?;
        Ok(rec)
    }

    /// Replaces the site's process with one of the running kiln binary,
    /// without a refused connection (see [`ProxyProcess::succeed`]). A
    /// process without a handoff socket is left as it is.
    pub(super) fn hand_over(home: &Path, service: &ServiceSpec) -> Result<ProxyProcess, ServeError> {
        let listen = service.release.listen.ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        let sd = site_dir(home, listen);
        let site_file = sd.join("site.json");
        let old: ProxyProcess = read_json(&sd.join("proxy.json"))
            .or_else(|| read_json(&dir(home, &service.name).join("proxy.json")))
            .ok_or_else(|| ServeError::NoListen(service.name.clone()))?;
        if old.site.is_none() {
            // A process of a kiln before sites: its successor serves a site
            // file with this service alone.
            let site = SiteFile { services: vec![site_service(home, service)] };
            std::fs::create_dir_all(&sd).map_err(io_err(&sd))?;
            write_atomic(&site_file, &serde_json::to_vec_pretty(&site).expect("serializes"))?;
        }
        let site: SiteFile = read_json(&site_file).unwrap_or_default();
        let rec = old.succeed(home, service, &site_file, old.redirect_http.or(service.edge.redirect_http))?;
        rec.write_copies(home, &site)?;
        Ok(ProxyProcess { service: service.name.clone(), ..rec })
    }

    /// Writes this process's record into the directory of each service of
    /// its site.
    fn write_copies(&self, home: &Path, site: &SiteFile) -> Result<(), ServeError> {
        for s in &site.services {
            let d = dir(home, &s.service);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
            let copy = ProxyProcess { service: s.service.clone(), ..self.clone() };
            write_atomic(&d.join("proxy.json"), &serde_json::to_vec(&copy).expect("serializes"))?;
        }
        Ok(())
    }

    /// Starts a private load balancer for `table` alone on a free loopback
    /// port (blue-green's preview listener: smoke checks go through it
    /// before the new set gets any traffic). A preview left by a crashed
    /// controller is ended first. [`ProxyProcess::stop_preview`] ends it.
    pub(super) fn preview(
        home: &Path,
        service: &ServiceSpec,
        table: &[TableEntry],
    ) -> Result<ProxyProcess, ServeError> {
        let d = dir(home, &service.name);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        let record = d.join("preview.json");
        if let Some(old) = read_json::<ProxyProcess>(&record) {
            old.stop_preview(home, &service.name);
        }
        let file = d.join("preview-releases.json");
        write_atomic(&file, &serde_json::to_vec(table).expect("serializes"))?;
        let listen = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(io_err(&d))?;
            l.local_addr().map_err(io_err(&d))?
        };
        let label = format!("{}-preview", service.name);
        let dp = Self::spawn_preview(home, service, &label, listen, &file)?;
        write_atomic(&record, &serde_json::to_vec(&dp).expect("serializes"))?;
        Ok(dp)
    }

    fn spawn_preview(
        home: &Path,
        service: &ServiceSpec,
        label: &str,
        listen: SocketAddr,
        file: &Path,
    ) -> Result<ProxyProcess, ServeError> {
        let d = dir(home, &service.name);
        let mut rec = Self::spawn(home, label, listen, Serves::Table(file), &d, None, Handoff::None)?;
        rec.service = label.to_owned();
        Ok(rec)
    }

    /// Ends `service`'s preview load balancer (SIGTERM: requests in flight
    /// finish) and its record.
    pub(super) fn stop_preview(&self, home: &Path, service: &str) {
        if alive(self.pid) {
            // SAFETY: a signal to a proxy process kiln started and recorded.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_file(dir(home, service).join("preview.json"));
    }

    /// Starts `kiln proxy` detached and waits until its admin API answers.
    fn spawn(
        home: &Path,
        label: &str,
        listen: SocketAddr,
        serves: Serves<'_>,
        d: &Path,
        redirect: Option<SocketAddr>,
        handoff: Handoff<'_>,
    ) -> Result<ProxyProcess, ServeError> {
        let admin = {
            let l = TcpListener::bind("127.0.0.1:0").map_err(io_err(d))?;
            l.local_addr().map_err(io_err(d))?
        };
        let exe = std::env::current_exe().map_err(io_err(d))?;
        let log_path = d.join(if matches!(serves, Serves::Table(_)) { "preview.log" } else { "proxy.log" });
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err(&log_path))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--home").arg(home).arg("proxy");
        cmd.args(["--service", label, "--listen", &listen.to_string(), "--admin", &admin.to_string()]);
        let (site, tls) = match serves {
            Serves::Site(file) => {
                cmd.arg("--site").arg(file);
                let s: SiteFile = read_json(file).unwrap_or_default();
                (Some(file.to_owned()), s.services.iter().any(|s| s.tls.is_some()))
            }
            Serves::Table(file) => {
                cmd.arg("--releases-file").arg(file).arg("--release-header");
                (None, false)
            }
        };
        if let Some(r) = redirect.filter(|_| tls) {
            cmd.args(["--redirect-http", &r.to_string()]);
        }
        let offer = match handoff {
            Handoff::None => None,
            Handoff::Offer => Some(handoff_path(d)),
            Handoff::From(p) => {
                cmd.arg("--take-over").arg(p);
                Some(handoff_path(d))
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
        let mut child = cmd.spawn().map_err(io_err(d))?;
        let dp = ProxyProcess {
            service: label.to_owned(),
            pid: child.id() as i32,
            listen,
            admin,
            handoff: offer,
            redirect_http: redirect.filter(|_| tls),
            tls,
            site,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while dp.call("GET", "/metrics", b"").is_err() {
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
                    service: label.to_owned(),
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

    pub(super) fn call(&self, method: &str, target: &str, body: &[u8]) -> Result<Vec<u8>, ServeError> {
        let fail = |detail: String| ServeError::Proxy { service: self.service.clone(), admin: self.admin, detail };
        let s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2)).map_err(|e| fail(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| fail(e.to_string()))?;
        let r = http::exchange(s, method, target, body).map_err(|e| fail(e.to_string()))?;
        if r.status != 200 {
            return Err(fail(format!("{method} {target}: {} {}", r.status, String::from_utf8_lossy(&r.body))));
        }
        Ok(r.body)
    }

    /// `path` with this service named, for the site's admin API.
    fn at(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}service={}", self.service)
    }

    /// Makes `table` the routing table: on disk first, then in the proxy.
    pub(super) fn set_table(&self, home: &Path, table: &[TableEntry]) -> Result<(), ServeError> {
        let body = serde_json::to_vec(table).expect("serializes");
        let file = match self.site {
            Some(_) => dir(home, &self.service).join("releases.json"),
            None => dir(home, self.service.trim_end_matches("-preview")).join("preview-releases.json"),
        };
        write_atomic(&file, &body)?;
        self.call("PUT", &self.at("/releases"), &body).map(drop)
    }

    /// A release's traffic over the last `window_secs` seconds.
    pub(super) fn stats(&self, release: &str, window_secs: u64) -> Result<WindowStats, ServeError> {
        let body = self.call("GET", &self.at(&format!("/stats?release={release}&window={window_secs}")), b"")?;
        serde_json::from_slice(&body).map_err(|e| ServeError::Proxy {
            service: self.service.clone(),
            admin: self.admin,
            detail: format!("bad /stats answer: {e}"),
        })
    }

    /// Totals since the proxy started, over every release of the service
    /// (its typed `/totals`; drill faults are not requests there).
    pub(super) fn totals(&self) -> Result<Totals, ServeError> {
        let body = self.call("GET", &self.at("/totals"), b"")?;
        serde_json::from_slice(&body).map_err(|e| ServeError::Proxy {
            service: self.service.clone(),
            admin: self.admin,
            detail: format!("bad /totals answer: {e}"),
        })
    }

    /// Each backend of its table and whether it finds it healthy (its
    /// typed `/backends`).
    pub(super) fn backends(&self) -> Result<Vec<super::BackendState>, ServeError> {
        let body = self.call("GET", &self.at("/backends"), b"")?;
        serde_json::from_slice(&body).map_err(|e| ServeError::Proxy {
            service: self.service.clone(),
            admin: self.admin,
            detail: format!("bad /backends answer: {e}"),
        })
    }

    /// Publishes (or, with `None`, withdraws) an ACME http-01 answer on the
    /// site's redirect listener.
    pub(super) fn challenge(&self, token: &str, key_auth: Option<&str>) -> Result<(), ServeError> {
        let path = format!("/acme-challenge/{token}");
        match key_auth {
            Some(k) => self.call("PUT", &path, k.as_bytes()).map(drop),
            None => self.call("DELETE", &path, b"").map(drop),
        }
    }

    /// Stops new requests to `backend` and waits (up to `deadline_ms`) for
    /// what it has in flight.
    pub(super) fn drain(&self, backend: SocketAddr, deadline_ms: u64) -> Result<(), ServeError> {
        self.call("POST", &self.at(&format!("/drain?backend={backend}&deadline_ms={deadline_ms}")), b"").map(drop)
    }
}

/// Takes `service` off the site on `listen`: the process re-reads the
/// site file, or, with no service left, stops (what it has in flight is
/// answered) and its records go.
pub(super) fn leave_site(home: &Path, service: &str, listen: SocketAddr) {
    let sd = site_dir(home, listen);
    let site_file = sd.join("site.json");
    let rec: Option<ProxyProcess> = read_json(&sd.join("proxy.json"));
    let mut site: SiteFile = read_json(&site_file).unwrap_or_default();
    site.services.retain(|s| s.service != service);
    if site.services.is_empty() {
        if let Some(p) = rec.filter(|p| alive(p.pid)) {
            // SAFETY: a signal to a proxy process kiln started and recorded.
            unsafe { libc::kill(p.pid, libc::SIGTERM) };
        }
        let _ = std::fs::remove_file(sd.join("proxy.json"));
        let _ = std::fs::remove_file(&site_file);
    } else if write_atomic(&site_file, &serde_json::to_vec_pretty(&site).expect("serializes")).is_ok() {
        if let Some(p) = rec.filter(answering) {
            let _ = p.reload();
        }
    }
}

/// Takes `service` off its site (see [`leave_site`]) and forgets its record.
pub(super) fn stop_service(home: &Path, service: &str) {
    let record = dir(home, service).join("proxy.json");
    match read_json::<ProxyProcess>(&record) {
        Some(p) if p.site.is_some() => leave_site(home, service, p.listen),
        Some(p) if alive(p.pid) => {
            // SAFETY: a signal to a proxy process kiln started and recorded.
            unsafe { libc::kill(p.pid, libc::SIGTERM) };
        }
        _ => {}
    }
    let _ = std::fs::remove_file(record);
}
