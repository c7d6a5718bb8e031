//! One listening address and the services behind it, told apart by the
//! request's host and path: a [`Site`] holds a [`Route`] per service, each
//! with its own [`Proxy`] (releases, weights, canary counters, drains), so
//! a canary of one service never moves another's traffic.
//!
//! Which service a request goes to ([`select`]): among the services whose
//! hosts match the request's `Host` (an exact name before a `*.` wildcard,
//! before a service that names no hosts), the one with the longest path
//! prefix that matches. A request no service matches is answered `421
//! Misdirected Request` (RFC 9110 §15.5.20: this address does not serve
//! that host), and its connection closed. A site of one service that names
//! no hosts and no paths takes every request without looking.
//!
//! For: the listener's accept loop, routing, and what the whole address
//! shares (stop, open connections, certificates, metrics). Must never:
//! block or lock on the request path (routes are swapped whole).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::{forward, metrics, tls, ControlError, Proxy, Succession};

/// A service on the site: the hosts and path prefixes it answers (none:
/// every host; every path) and its load balancer.
#[derive(Debug)]
pub struct Route {
    pub service: String,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub proxy: Arc<Proxy>,
}

/// How well a route's hosts match a request's host: higher is more specific.
fn host_rank(hosts: &[String], host: Option<&str>) -> Option<u8> {
    if hosts.is_empty() {
        return Some(0);
    }
    let host = host?;
    if hosts.iter().any(|h| !h.starts_with("*.") && h.eq_ignore_ascii_case(host)) {
        return Some(2);
    }
    hosts.iter().any(|h| h.starts_with("*.") && tls::host_matches(h, host)).then_some(1)
}

/// The length of the longest of `paths` that is a prefix of `path` on a
/// segment boundary (`/api` matches `/api` and `/api/x`, not `/apix`).
fn path_rank(paths: &[String], path: &str) -> Option<usize> {
    if paths.is_empty() {
        return Some(1);
    }
    paths
        .iter()
        .filter(|p| {
            path.starts_with(p.as_str())
                && (p.ends_with('/') || matches!(path.as_bytes().get(p.len()), None | Some(b'/' | b'?')))
        })
        .map(String::len)
        .max()
}

/// The name in a `Host` value: without its port, lower-cased. Pure.
pub fn host_of(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let name = match s.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => s.rsplit_once(':').map_or(s, |(n, port)| if port.bytes().all(|b| b.is_ascii_digit()) { n } else { s }),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// The route a request for `host` and `path` goes to (see the module
/// doc). Pure.
pub fn select(routes: &[Arc<Route>], host: Option<&str>, path: &str) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some(((host_rank(&r.hosts, host)?, path_rank(&r.paths, path)?), i)))
        .max_by_key(|(rank, i)| (*rank, std::cmp::Reverse(*i)))
        .map(|(_, i)| i)
}

/// What a request's head says about where it goes.
#[derive(Debug)]
pub(crate) enum Pick {
    /// The head is not complete yet.
    More,
    To(Arc<Proxy>),
    /// No service here answers that host and path.
    Nobody,
}

/// A listening address: its routes and what they share.
#[derive(Debug)]
pub struct Site {
    routes: ArcSwap<Vec<Arc<Route>>>,
    /// Set by [`Site::stop`]: listeners close, answers say `Connection: close`.
    pub(crate) stopping: AtomicBool,
    /// Client connections open (idle ones and handshakes included).
    pub(crate) connections: AtomicU64,
    pub(crate) stop: tokio::sync::Notify,
    /// Time a client gets to send a request head (and a TLS handshake).
    pub(crate) header_timeout: Duration,
    /// Requests answered 421: no service here for their host and path.
    pub misdirected: AtomicU64,
    certs: OnceLock<Arc<tls::Certs>>,
    /// ACME http-01 key authorizations by token, answered on the redirect
    /// listener (set and cleared through the admin API; not on the
    /// request path).
    challenges: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Site {
    pub fn new(routes: Vec<Route>, header_timeout: Duration) -> Arc<Site> {
        Arc::new(Site {
            routes: ArcSwap::from_pointee(routes.into_iter().map(Arc::new).collect()),
            stopping: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            stop: tokio::sync::Notify::new(),
            header_timeout,
            misdirected: AtomicU64::new(0),
            certs: OnceLock::new(),
            challenges: std::sync::Mutex::default(),
        })
    }

    /// A site of one service that takes every request.
    pub fn single(proxy: Arc<Proxy>) -> Arc<Site> {
        let timeout = proxy.config.header_timeout;
        let service = proxy.config.service.clone();
        Site::new(vec![Route { service, hosts: vec![], paths: vec![], proxy }], timeout)
    }

    /// Replaces the routes whole (a service added, removed or re-routed).
    pub fn set_routes(&self, routes: Vec<Arc<Route>>) {
        self.routes.store(Arc::new(routes));
    }

    pub fn routes(&self) -> Arc<Vec<Arc<Route>>> {
        self.routes.load_full()
    }

    /// Makes `certs` part of the metrics; the first call wins.
    pub fn set_certs(&self, certs: Arc<tls::Certs>) {
        let _ = self.certs.set(certs);
    }

    /// Answers `token`'s http-01 challenge with `key_auth` (`None`: no more).
    pub fn set_challenge(&self, token: &str, key_auth: Option<&str>) {
        let mut c = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        match key_auth {
            Some(k) => c.insert(token.to_owned(), k.to_owned()),
            None => c.remove(token),
        };
    }

    /// The key authorization for `token`, if one is published.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.challenges.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    /// The service a request at the start of `input` goes to.
    pub(crate) fn pick(&self, input: &[u8]) -> Result<Pick, crate::h1::HeadError> {
        let routes = self.routes.load();
        if let [only] = routes.as_slice() {
            if only.hosts.is_empty() && only.paths.is_empty() {
                return Ok(Pick::To(only.proxy.clone()));
            }
        }
        let Some((host, path)) = crate::h1::target(input)? else { return Ok(Pick::More) };
        let host = host.and_then(host_of);
        let path = std::str::from_utf8(path).unwrap_or("/");
        Ok(match select(&routes, host.as_deref(), path) {
            Some(i) => Pick::To(routes[i].proxy.clone()),
            None => {
                self.misdirected.fetch_add(1, Ordering::Relaxed);
                Pick::Nobody
            }
        })
    }

    /// The load balancer of `service`; with no name, the only one.
    pub fn proxy(&self, service: Option<&str>) -> Result<Arc<Proxy>, ControlError> {
        let routes = self.routes.load();
        match service {
            Some(s) => routes.iter().find(|r| r.service == s).map(|r| r.proxy.clone()),
            None if routes.len() == 1 => Some(routes[0].proxy.clone()),
            None => None,
        }
        .ok_or_else(|| ControlError::NoService(service.unwrap_or_default().to_owned()))
    }

    /// Starts a shutdown: every worker closes its listener (new connections
    /// are refused) and answers the rest with `Connection: close`; what is
    /// in flight goes on (see [`Site::in_flight`]).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
    }

    /// Client connections open, idle keep-alive ones and handshakes
    /// included: a stopping proxy exits once this is 0.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests, bodies and tunnels in flight, over every service.
    pub fn in_flight(&self) -> u64 {
        self.routes.load().iter().map(|r| r.proxy.in_flight()).sum()
    }

    /// Every service's backends' health and drain, for a successor.
    pub fn succession(&self) -> Succession {
        let mut backends: Vec<_> = self.routes.load().iter().flat_map(|r| r.proxy.succession().backends).collect();
        backends.sort_by_key(|b| b.addr);
        backends.dedup_by_key(|b| b.addr);
        Succession { backends }
    }

    pub fn inherit(&self, s: &Succession) {
        for r in self.routes.load().iter() {
            r.proxy.inherit(s);
        }
    }

    /// Prometheus text for every service of the site, and its certificates.
    pub fn metrics_text(&self) -> String {
        let mut out = metrics::Exposition::default();
        let routes = self.routes.load();
        for r in routes.iter() {
            r.proxy.metrics_into(&mut out);
        }
        let f = "kiln_proxy_misdirected_total";
        let help = "Requests answered 421: no service on this address for their host and path.";
        out.sample(f, "counter", help, format_args!("{f} {}", self.misdirected.load(Ordering::Relaxed)));
        if let Some(certs) = self.certs.get() {
            tls_metrics(&mut out, certs);
        }
        out.render()
    }
}

fn tls_metrics(out: &mut metrics::Exposition, certs: &tls::Certs) {
    let f = "kiln_proxy_tls_certificate_expiry_timestamp_seconds";
    let help = "When the served certificate stops being valid (Unix seconds).";
    for (cert, service, not_after) in certs.expiries() {
        let cert = cert.display().to_string().replace('\\', "\\\\").replace('"', "\\\"");
        out.sample(f, "gauge", help, format_args!("{f}{{service=\"{service}\",cert=\"{cert}\"}} {not_after}"));
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let f = "kiln_proxy_tls_reloads_total";
    let help = "Certificate files re-read after a change, by outcome (a failed one keeps the old pair).";
    out.sample(f, "counter", help, format_args!("{f}{{outcome=\"loaded\"}} {}", n(&certs.reloads)));
    out.sample(f, "counter", help, format_args!("{f}{{outcome=\"kept\"}} {}", n(&certs.reload_failures)));
    let f = "kiln_proxy_tls_unknown_names_total";
    let help = "Handshakes refused because the client named a host not served here.";
    out.sample(f, "counter", help, format_args!("{f} {}", n(&certs.unknown_names)));
}

/// How often each worker closes idle connections to draining backends.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// Serves the site on `listener`, on the current (worker's) runtime; over
/// TLS with `tls`.
pub async fn serve(site: Arc<Site>, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            forward::sweep(Instant::now());
        }
    });
    loop {
        // Registered before the flag is read, so a stop in between still wakes it.
        let stop = site.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if site.stopping.load(Ordering::Relaxed) {
            break;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop => continue,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of descriptors, most likely: let connections finish.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = forward::Open::new(&site);
        match &acceptor {
            None => {
                tokio::spawn(forward::connection(open, stream, peer));
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, under the
                // header timeout: a client that stalls it holds nothing else.
                let (limit, accept) = (site.header_timeout, acceptor.accept(stream));
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) = tokio::time::timeout(limit, accept).await {
                        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                            forward::h2::connection(open, tls, peer).await;
                        } else {
                            forward::connection(open, tls, peer).await;
                        }
                    }
                });
            }
        }
    }
    // Stopping: new connections are refused, while the connections already
    // accepted (tasks of this runtime) go on until the process exits.
    drop(listener);
    std::future::pending::<()>().await;
}

/// Starts one worker thread per listener serving the site (over TLS with
/// `tls`), each with its own runtime. The threads run until the process
/// exits.
pub fn start(
    site: Arc<Site>,
    listeners: Vec<std::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    for (worker, l) in listeners.into_iter().enumerate() {
        l.set_nonblocking(true)?;
        let (s, tls) = (site.clone(), tls.clone());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name(format!("kiln-proxy-{worker}")).spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(l) {
                    Ok(listener) => serve(s, listener, tls).await,
                    Err(e) => eprintln!("kiln proxy: worker {worker}: {e}"),
                }
            })
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyConfig;

    fn route(service: &str, hosts: &[&str], paths: &[&str]) -> Arc<Route> {
        Arc::new(Route {
            service: service.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            proxy: Proxy::new(ProxyConfig::default()),
        })
    }

    #[test]
    fn the_most_specific_host_then_the_longest_path_wins() {
        let routes = vec![
            route("shop", &["shop.test", "www.shop.test"], &[]),
            route("api", &["shop.test"], &["/api"]),
            route("apps", &["*.apps.test"], &[]),
            route("one-app", &["x.apps.test"], &[]),
            route("catchall", &[], &["/static/"]),
        ];
        let pick = |h: Option<&str>, p: &str| select(&routes, h, p).map(|i| routes[i].service.as_str());
        assert_eq!(pick(Some("shop.test"), "/"), Some("shop"));
        assert_eq!(pick(Some("shop.test"), "/api"), Some("api"));
        assert_eq!(pick(Some("shop.test"), "/api/orders?x=1"), Some("api"));
        assert_eq!(pick(Some("shop.test"), "/api?x=1"), Some("api"));
        assert_eq!(pick(Some("shop.test"), "/apix"), Some("shop"), "a prefix ends on a segment");
        assert_eq!(pick(Some("www.shop.test"), "/api"), Some("shop"));
        assert_eq!(pick(Some("y.apps.test"), "/"), Some("apps"));
        assert_eq!(pick(Some("x.apps.test"), "/"), Some("one-app"), "an exact name before a wildcard");
        assert_eq!(pick(Some("other.test"), "/static/a.css"), Some("catchall"));
        assert_eq!(pick(Some("other.test"), "/"), None, "421");
        assert_eq!(pick(None, "/"), None, "no Host: no named host matches");
    }

    #[test]
    fn host_values_lose_their_port_and_case() {
        assert_eq!(host_of(b"Shop.Test:8443").as_deref(), Some("shop.test"));
        assert_eq!(host_of(b"shop.test.").as_deref(), Some("shop.test"));
        assert_eq!(host_of(b"[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host_of(b""), None);
    }

    #[test]
    fn a_head_is_routed_once_complete_and_an_unknown_host_is_counted() {
        let site = Site::new(
            vec![
                Route {
                    service: "a".into(),
                    hosts: vec!["a.test".into()],
                    paths: vec![],
                    proxy: Proxy::new(ProxyConfig::default()),
                },
                Route {
                    service: "b".into(),
                    hosts: vec!["b.test".into()],
                    paths: vec![],
                    proxy: Proxy::new(ProxyConfig::default()),
                },
            ],
            Duration::from_secs(1),
        );
        assert!(matches!(site.pick(b"GET / HTTP/1.1\r\nHost: b.te"), Ok(Pick::More)));
        let Ok(Pick::To(p)) = site.pick(b"GET / HTTP/1.1\r\nHost: B.test:8443\r\n\r\n") else { panic!("not routed") };
        assert!(Arc::ptr_eq(&p, &site.proxy(Some("b")).unwrap()));
        let Ok(Pick::To(p)) = site.pick(b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n") else { panic!() };
        assert!(Arc::ptr_eq(&p, &site.proxy(Some("a")).unwrap()), "an absolute target's authority wins");
        assert!(matches!(site.pick(b"GET / HTTP/1.1\r\nHost: c.test\r\n\r\n"), Ok(Pick::Nobody)));
        assert!(site.pick(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n").is_err());
        assert_eq!(site.misdirected.load(Ordering::Relaxed), 1);
        assert!(site.proxy(None).is_err(), "two services: the admin API must name one");
    }
}
