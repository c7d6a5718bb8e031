//! The controller's own health checks of every instance it manages, in
//! background threads: a hung instance (it accepts a connection but never
//! answers) holds a probe for its whole timeout, and the reconcile loop
//! must never wait for that. Each tick starts the checks that are due and
//! reads the results of those that finished. This module only observes;
//! what a result means is [`crate::heal`]'s and the rollout's to decide.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::heal::{Health, ProbeFailure};
use crate::spec::HealthSpec;

/// How often an instance that is not (or no longer) healthy is checked, at
/// most: a replacement is seen healthy, and a failing one leaves, within
/// a fraction of a second instead of whole intervals.
const QUICK: u64 = 100;

#[derive(Debug, Default)]
struct Slot {
    /// The service the instance belongs to: a tick forgets only its own.
    service: String,
    health: Health,
    next_ms: u64,
    running: bool,
}

/// The controller's health checks, as it uses them: the seam beside the
/// data plane's. [`Prober`] is the real one; [`FixedProber`] the fake.
pub trait Probe: std::fmt::Debug {
    /// Starts the checks due among `service`'s `instances` (id, address).
    fn tick(&self, service: &str, instances: &[(String, SocketAddr)], spec: &HealthSpec, now_ms: u64);
    /// What the checks of `id` found so far.
    fn health(&self, id: &str) -> Health;
}

/// Background health checks, by instance id.
#[derive(Debug, Default, Clone)]
pub struct Prober {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

/// One smoke check (kiln.toml's `[blue_green] smoke`) against `addr`:
/// the request, then its answer judged; `Err` says what was wrong.
pub fn smoke(addr: SocketAddr, c: &crate::spec::SmokeCheck) -> Result<(), String> {
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let r = crate::net::http::exchange(s, &c.method, &c.path, b"").map_err(|e| e.to_string())?;
    match c.judge(r.status, &r.body) {
        Some(why) => Err(format!("{} {}: {why}", c.method, c.path)),
        None => Ok(()),
    }
}

/// `GET path` on a new connection (or a bare connect without a path);
/// healthy on 2xx or 3xx within `timeout`.
pub fn check(addr: SocketAddr, path: Option<&str>, timeout: Duration) -> Result<(), ProbeFailure> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => ProbeFailure::Timeout,
        _ => ProbeFailure::Refused,
    })?;
    let Some(path) = path else { return Ok(()) };
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let _ = s.set_write_timeout(Some(left()));
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kiln-controller\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|_| ProbeFailure::Timeout)?;
    // Only the status line matters: 12 bytes, "HTTP/1.1 200".
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        let _ = s.set_read_timeout(Some(left()));
        match s.read(&mut head[got..]) {
            Ok(0) => return Err(ProbeFailure::Refused),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(ProbeFailure::Timeout)
            }
            Err(_) => return Err(ProbeFailure::Refused),
        }
        if Instant::now() >= deadline && got < head.len() {
            return Err(ProbeFailure::Timeout);
        }
    }
    let status = std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse::<u16>().ok()).unwrap_or(0);
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status))
    }
}

impl Probe for Prober {
    fn tick(&self, service: &str, instances: &[(String, SocketAddr)], spec: &HealthSpec, now_ms: u64) {
        Prober::tick(self, service, instances, spec, now_ms)
    }
    fn health(&self, id: &str) -> Health {
        Prober::health(self, id)
    }
}

/// The fake prober: each instance's health is what a test sets (else the
/// default it sets: healthy since 0 unless told otherwise); every tick is
/// recorded with the ids it was given.
#[derive(Debug, Clone)]
pub struct FixedProber {
    inner: Arc<Mutex<Fixed>>,
}

#[derive(Debug)]
struct Fixed {
    default: Health,
    by_id: HashMap<String, Health>,
    ticks: Vec<(String, Vec<String>)>,
}

impl Default for FixedProber {
    fn default() -> Self {
        let healthy = Health { passes: 10, fails: 0, healthy_since_ms: Some(0), last_failure: None };
        FixedProber {
            inner: Arc::new(Mutex::new(Fixed { default: healthy, by_id: HashMap::new(), ticks: Vec::new() })),
        }
    }
}

impl FixedProber {
    fn lock(&self) -> std::sync::MutexGuard<'_, Fixed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// `id`'s health from now on.
    pub fn set(&self, id: &str, h: Health) {
        self.lock().by_id.insert(id.to_owned(), h);
    }
    /// The health of every instance not set one by one.
    pub fn set_default(&self, h: Health) {
        self.lock().default = h;
    }
    /// Every tick so far: the service and the instance ids it was given.
    pub fn ticks(&self) -> Vec<(String, Vec<String>)> {
        self.lock().ticks.clone()
    }
}

impl Probe for FixedProber {
    fn tick(&self, service: &str, instances: &[(String, SocketAddr)], _spec: &HealthSpec, _now_ms: u64) {
        let ids = instances.iter().map(|(i, _)| i.clone()).collect();
        self.lock().ticks.push((service.to_owned(), ids));
    }
    fn health(&self, id: &str) -> Health {
        let f = self.lock();
        f.by_id.get(id).copied().unwrap_or(f.default)
    }
}

impl Prober {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the checks due among `service`'s `instances` (id, address);
    /// forgets that service's instances no longer listed (another
    /// service's are left alone: each has its own tick).
    pub fn tick(&self, service: &str, instances: &[(String, SocketAddr)], spec: &HealthSpec, now_ms: u64) {
        let mut slots = self.slots();
        slots.retain(|id, s| s.service != service || instances.iter().any(|(i, _)| i == id));
        for (id, addr) in instances {
            let slot =
                slots.entry(id.clone()).or_insert_with(|| Slot { service: service.to_owned(), ..Slot::default() });
            if slot.running || now_ms < slot.next_ms {
                continue;
            }
            slot.running = true;
            let (this, id, addr, spec) = (self.clone(), id.clone(), *addr, spec.clone());
            std::thread::spawn(move || {
                let result = check(addr, spec.path.as_deref(), Duration::from_millis(spec.timeout_ms));
                let done = super::now_ms();
                let mut slots = this.slots();
                let Some(slot) = slots.get_mut(&id) else { return };
                let h = &mut slot.health;
                match result {
                    Ok(()) => {
                        h.fails = 0;
                        h.passes += 1;
                        if h.passes >= spec.healthy_threshold && h.healthy_since_ms.is_none() {
                            h.healthy_since_ms = Some(done);
                        }
                    }
                    Err(f) => {
                        h.passes = 0;
                        h.fails += 1;
                        h.last_failure = Some(f);
                    }
                }
                let steady = h.fails == 0 && h.healthy_since_ms.is_some();
                slot.next_ms = done + if steady { spec.interval_ms } else { spec.interval_ms.min(QUICK) };
                slot.running = false;
            });
        }
    }

    /// What the checks of `id` found so far.
    pub fn health(&self, id: &str) -> Health {
        self.slots().get(id).map(|s| s.health).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_check_tells_a_hung_server_from_a_refusing_and_a_failing_one() {
        let hung = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = hung.local_addr().unwrap();
        // Accepted (by the backlog) but never answered.
        let t = Instant::now();
        assert_eq!(check(addr, Some("/healthz"), Duration::from_millis(300)), Err(ProbeFailure::Timeout));
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(hung);
        assert_eq!(check(addr, Some("/healthz"), Duration::from_millis(300)), Err(ProbeFailure::Refused));
        let sick = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = sick.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 503 Service Unavailable\r\n\r\n", "HTTP/1.1 204 No Content\r\n\r\n"] {
                let (mut c, _) = sick.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf);
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(check(addr, Some("/healthz"), Duration::from_secs(2)), Err(ProbeFailure::Status(503)));
        assert_eq!(check(addr, Some("/healthz"), Duration::from_secs(2)), Ok(()));
        server.join().unwrap();
    }

    #[test]
    fn one_services_tick_never_forgets_another_services_instances() {
        let up = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = up.local_addr().unwrap();
        let p = Prober::default();
        let spec = HealthSpec::default();
        p.tick("web", &[("web-1".into(), addr)], &spec, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.health("web-1").passes == 0 {
            assert!(Instant::now() < deadline, "never checked");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Another service's tick, with none of web's instances.
        p.tick("api", &[], &spec, 1);
        assert_eq!(p.health("web-1").passes, 1, "web-1's health is kept");
        // web's own tick without web-1 forgets it.
        p.tick("web", &[], &spec, 2);
        assert_eq!(p.health("web-1").passes, 0);
    }
}
