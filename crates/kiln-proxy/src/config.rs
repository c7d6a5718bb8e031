//! What a load balancer is told: its configuration ([`ProxyConfig`],
//! [`HealthCheck`], [`Sticky`]) and its routing table's rows
//! ([`TableEntry`]), from flags, a releases file or the admin API.
//!
//! For: parsing and checking that input once. Must never: act on it.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::header::HeaderName;
use serde::{Deserialize, Serialize};

/// How a client is kept on the release it first got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    None,
    /// The `kiln_release` cookie, set on the first response.
    Cookie,
    /// A request header's value (a user or session id) hashed onto the
    /// weighted schedule: the same value always lands on the same release.
    Header(HeaderName),
}

impl std::str::FromStr for Sticky {
    type Err = String;

    /// `none`, `cookie` or `header:NAME` (a valid header name).
    fn from_str(s: &str) -> Result<Sticky, String> {
        match s {
            "none" => Ok(Sticky::None),
            "cookie" => Ok(Sticky::Cookie),
            _ => match s.strip_prefix("header:").map(|h| HeaderName::from_bytes(h.as_bytes())) {
                Some(Ok(h)) => Ok(Sticky::Header(h)),
                _ => Err(format!("{s:?}: expected none, cookie or header:NAME")),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub service: String,
    pub sticky: Sticky,
    /// Add `X-Kiln-Release` to responses.
    pub release_header: bool,
    /// Extra attempts on another backend, when safe.
    pub retries: u32,
    /// Time allowed for a backend's response head.
    pub backend_timeout: Duration,
    /// Consecutive failures (5xx or errors) before passive ejection.
    pub eject_after: u32,
    /// First ejection length; doubles with each further failure, up to 30 s.
    pub eject_for: Duration,
    /// Active checks; without them, backends are healthy from the start.
    pub health: Option<HealthCheck>,
    /// Time a client gets to send its request headers (slowloris guard).
    pub header_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            service: "default".into(),
            sticky: Sticky::None,
            release_header: false,
            retries: 2,
            backend_timeout: Duration::from_secs(30),
            eject_after: 3,
            eject_for: Duration::from_secs(1),
            health: None,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// One row of the routing table: a release, its weight and its backends
/// (the control API's unit; not to be confused with kiln.toml's release
/// settings, `kiln_core::spec::ReleaseSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    pub release: String,
    pub weight: u32,
    pub backends: Vec<SocketAddr>,
    /// A drill's injected fault: each request this release is chosen for
    /// is counted against it as answered with this status, and goes to
    /// another release (always safe: no backend saw it). No client sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<u16>,
}

/// Reads a releases file: the JSON list `PUT /releases` takes. Errors
/// name the file, and the line and column of what is wrong.
pub fn read_releases_file(path: &std::path::Path) -> Result<Vec<TableEntry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: line {}, column {}: {e}; expected [{{\"release\": NAME, \"weight\": N, \"backends\": [\"IP:PORT\", ...]}}, ...]",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

/// Parses `NAME=WEIGHT@ADDR[,ADDR…]` (the `--release` flag).
pub fn parse_release_flag(s: &str) -> Result<TableEntry, String> {
    let bad = || format!("{s:?}: expected NAME=WEIGHT@ADDR[,ADDR...], e.g. stable=95@127.0.0.1:8001");
    let (name, rest) = s.split_once('=').ok_or_else(bad)?;
    let (weight, addrs) = rest.split_once('@').ok_or_else(bad)?;
    let weight = weight.parse().map_err(|_| bad())?;
    let backends = addrs
        .split(',')
        .map(|a| a.trim().parse::<SocketAddr>().map_err(|_| format!("{a:?} is not an IP:PORT")))
        .collect::<Result<_, _>>()?;
    if name.is_empty() {
        return Err(bad());
    }
    Ok(TableEntry { release: name.to_owned(), weight, backends, fault: None })
}

/// A site file (`kiln proxy --site FILE`): every service on one listening
/// address, as `kiln serve` writes it. SIGHUP or `POST /reload` re-reads
/// it: services are added, removed and re-routed without a dropped
/// connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    pub services: Vec<SiteService>,
}

/// One service of a site file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteService {
    pub service: String,
    /// Host names it answers (`*.example.com` for one label); none: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefixes it answers; none: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsFiles>,
    /// Its routing table (the list `PUT /releases` takes).
    pub releases_file: std::path::PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<SiteHealth>,
    #[serde(default)]
    pub release_header: bool,
    /// The plain-HTTP redirect listener the service asks for; the services
    /// of a site name one at most, and `kiln proxy --redirect-http` serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<std::net::SocketAddr>,
    /// Its certificate is obtained by kiln (ACME): until `tls`'s files
    /// exist, its hosts are refused in the handshake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acme: bool,
}

/// A site service's active health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteHealth {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl SiteService {
    /// The load balancer settings of this service; the rest are `base`'s.
    pub fn config(&self, base: &ProxyConfig) -> ProxyConfig {
        ProxyConfig {
            service: self.service.clone(),
            release_header: self.release_header,
            health: self.health.as_ref().map(|h| HealthCheck {
                path: h.path.clone(),
                interval: Duration::from_millis(h.interval_ms.max(1)),
                timeout: Duration::from_millis(h.timeout_ms.max(1)),
                healthy_threshold: h.healthy_threshold.max(1),
                unhealthy_threshold: h.unhealthy_threshold.max(1),
            }),
            ..base.clone()
        }
    }
}

/// Reads a site file. Errors name the file, and the line, column or
/// service of what is wrong.
pub fn read_site_file(path: &std::path::Path) -> Result<SiteFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let site: SiteFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: line {}, column {}: {e}", path.display(), e.line(), e.column()))?;
    let mut seen = std::collections::HashSet::new();
    for s in &site.services {
        if s.service.is_empty() || !seen.insert(&s.service) {
            return Err(format!("{}: service {:?} is empty or given twice", path.display(), s.service));
        }
        if let Some(p) = s.paths.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("{}: service {}: path {p:?} must start with '/'", path.display(), s.service));
        }
    }
    let mut redirects: Vec<_> = site.services.iter().filter_map(|s| s.redirect_http).collect();
    redirects.sort();
    redirects.dedup();
    if redirects.len() > 1 {
        return Err(format!("{}: services name different redirect listeners {redirects:?}", path.display()));
    }
    if site.services.iter().any(|s| s.tls.is_some()) && site.services.iter().any(|s| s.tls.is_none()) {
        return Err(format!("{}: some services have tls and some not: one listener is HTTPS or not", path.display()));
    }
    Ok(site)
}
