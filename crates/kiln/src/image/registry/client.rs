//! The registry client's transport: one connection per request (so
//! threads can share a client, each blob on its own connection), TLS
//! (rustls, the system's roots plus the registry's `ca`) or, where kiln.toml
//! says `insecure = true` or the registry is on loopback with no `ca`, plain
//! HTTP; credentials answered to a 401 (Basic, or the bearer-token flow of
//! Docker Hub, GHCR and Harbor: `WWW-Authenticate: Bearer realm=…` → the
//! token endpoint → the scoped token, kept for the next requests); and
//! retries with backoff when the registry answers 429 or 5xx.
//!
//! For: getting a request answered. Must never: resend a body it cannot
//! replay (a streamed blob is sent once; the request before it obtains the
//! token), or log a credential.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::auth::Credentials;
use super::RegistryError;
use crate::net::http::{self, Body};
use crate::spec::registries::RegistrySpec;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of a request the registry answers 429 or 5xx.
const ATTEMPTS: u32 = 4;

/// A connection: plain TCP or TLS over it.
pub(super) type Conn = crate::net::tls::Stream;

/// One response, its body not yet read.
pub(super) type Resp = http::Streaming<Conn>;

fn is_loopback(host: &str) -> bool {
    let name =
        host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    matches!(name, "localhost" | "[::1]") || name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

/// TLS settings: the system's roots plus `ca`.
pub(super) fn tls_config(host: &str, ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, RegistryError> {
    crate::net::tls::client_config(ca).map_err(|e| RegistryError::Invalid {
        host: host.to_owned(),
        what: e.path.display().to_string(),
        why: e.detail,
    })
}

/// A registry client for `host`.
pub(super) struct Client<'a> {
    pub(super) host: &'a str,
    /// None: plain HTTP.
    tls: Option<Arc<rustls::ClientConfig>>,
    creds: Option<Credentials>,
    /// The `Authorization` value that worked last (Basic, or a token).
    auth: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("host", &self.host).field("tls", &self.tls.is_some()).finish()
    }
}

/// A `WWW-Authenticate` challenge: its scheme and parameters.
fn challenge(value: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else { break };
        let (v, next) = match after.strip_prefix('"') {
            Some(q) => q.split_once('"').map_or((q, ""), |(v, n)| (v, n)),
            None => after.split_once(',').map_or((after, ""), |(v, n)| (v, n)),
        };
        params.push((k.trim().to_ascii_lowercase(), v.to_owned()));
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

impl<'a> Client<'a> {
    /// A client for `host` with its kiln.toml settings and credentials.
    pub(super) fn new(host: &'a str, access: &RegistrySpec, creds: Option<Credentials>) -> Result<Self, RegistryError> {
        let plain = access.insecure || (is_loopback(host) && access.ca.is_none());
        if access.insecure && !is_loopback(host) {
            eprintln!("kiln: WARNING: registry {host}: plain HTTP (insecure = true): anyone on the path can read and change what is sent");
        }
        let tls = if plain { None } else { Some(tls_config(host, access.ca.as_deref())?) };
        Ok(Client { host, tls, creds, auth: Mutex::new(None) })
    }

    pub(super) fn io(&self, source: io::Error) -> RegistryError {
        RegistryError::Io { host: self.host.to_owned(), source }
    }

    fn connect(&self, host: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Conn, RegistryError> {
        crate::net::tls::connect(host, tls, TIMEOUT)
            .map_err(|source| RegistryError::Io { host: host.to_owned(), source })
    }

    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Body<'_>) -> Result<Resp, RegistryError> {
        let api = crate::spec::registries::api_host(self.host);
        let stream = self.connect(api, self.tls.as_ref())?;
        let auth = self.auth.lock().map(|a| a.clone()).unwrap_or_default();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = auth.as_deref() {
            all.push(("Authorization", a));
        }
        http::send(stream, http::Outgoing { method, target: path, host: api, headers: &all, body }).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                RegistryError::Invalid {
                    host: self.host.to_owned(),
                    what: format!("{method} {path}"),
                    why: e.to_string(),
                }
            } else {
                self.io(e)
            }
        })
    }

    /// Sends a request: answers a 401 with credentials (once), and retries
    /// a 429 or 5xx with backoff, when the body can be sent again.
    pub(super) fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<Resp, RegistryError> {
        let bytes = match &body {
            Body::None => Some(&[][..]),
            Body::Bytes(b) => Some(*b),
            Body::Reader(..) => None,
        };
        let Some(bytes) = bytes else { return self.send(method, path, headers, body) };
        fn again(b: &[u8]) -> Body<'_> {
            if b.is_empty() {
                Body::None
            } else {
                Body::Bytes(b)
            }
        }
        let mut authed = false;
        let mut attempt = 0;
        loop {
            let r = self.send(method, path, headers, again(bytes))?;
            if r.status == 401 && !authed {
                authed = true;
                let www = r.header("www-authenticate").unwrap_or("").to_owned();
                self.authorize(&www)?;
                continue;
            }
            if (r.status == 429 || r.status >= 500) && attempt + 1 < ATTEMPTS {
                let wait = r
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(Duration::from_millis(250 << attempt), |s| Duration::from_secs(s.min(10)));
                attempt += 1;
                std::thread::sleep(wait);
                continue;
            }
            if r.status == 401 {
                return Err(RegistryError::Unauthorized {
                    host: self.host.to_owned(),
                    why: if self.creds.is_some() {
                        "the credentials were refused".into()
                    } else {
                        format!("it needs credentials: `kiln login {}`", self.host)
                    },
                });
            }
            return Ok(r);
        }
    }

    fn set_auth(&self, value: String) {
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(value);
        }
    }

    /// Sets the `Authorization` to use from a 401's challenge.
    fn authorize(&self, www: &str) -> Result<(), RegistryError> {
        let (scheme, params) = challenge(www);
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let unauthorized = |why: String| RegistryError::Unauthorized { host: self.host.to_owned(), why };
        match scheme.as_str() {
            "basic" => {
                let c = self
                    .creds
                    .as_ref()
                    .ok_or_else(|| unauthorized(format!("it needs credentials: `kiln login {}`", self.host)))?;
                self.set_auth(c.basic());
                Ok(())
            }
            "bearer" => {
                let realm = param("realm").ok_or_else(|| unauthorized("a Bearer challenge without a realm".into()))?;
                let mut query = Vec::new();
                if let Some(s) = param("service") {
                    query.push(format!("service={}", encode(&s)));
                }
                if let Some(s) = param("scope") {
                    query.push(format!("scope={}", encode(&s)));
                }
                let token = self.token(&realm, &query.join("&"))?;
                self.set_auth(format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(unauthorized(format!("an authentication kiln does not speak: {www:?}"))),
        }
    }

    /// A token from the realm (with the credentials, when there are any).
    fn token(&self, realm: &str, query: &str) -> Result<String, RegistryError> {
        let bad = |why: String| RegistryError::Invalid {
            host: self.host.to_owned(),
            what: format!("token realm {realm}"),
            why,
        };
        let (tls, rest) = match (realm.strip_prefix("https://"), realm.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(bad("not an http(s) URL".into())),
        };
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        if !tls && !is_loopback(&authority) {
            return Err(bad("a token over plain HTTP to another host: refused".into()));
        }
        let config = if tls { Some(self.tls.clone().map_or_else(|| tls_config(&authority, None), Ok)?) } else { None };
        let stream = self.connect(&authority, config.as_ref())?;
        let target = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}{}{query}", if path.contains('?') { '&' } else { '?' })
        };
        let basic = self.creds.as_ref().map(Credentials::basic);
        let headers: Vec<(&str, &str)> = basic.as_deref().map(|b| vec![("Authorization", b)]).unwrap_or_default();
        let r = http::send(
            stream,
            http::Outgoing { method: "GET", target: &target, host: &authority, headers: &headers, body: Body::None },
        )
        .map_err(|e| self.io(e))?;
        let status = r.status;
        let body = r.bytes(1 << 20).map_err(|e| self.io(e))?;
        if status == 401 || status == 403 {
            return Err(RegistryError::Unauthorized {
                host: self.host.to_owned(),
                why: "the credentials were refused".into(),
            });
        }
        if status != 200 {
            return Err(bad(format!("answered {status}")));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad("no token in the answer".into()))
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_quoted_and_bare_parameters() {
        let (s, p) = challenge(
            r#"Bearer realm="https://auth.test/token",service="registry.test",scope="repository:team/web:pull,push""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.test/token".into()));
        assert_eq!(p[2], ("scope".into(), "repository:team/web:pull,push".into()));
        let (s, p) = challenge("Basic realm=kiln");
        assert_eq!((s.as_str(), p[0].1.as_str()), ("basic", "kiln"));
        assert_eq!(encode("repository:a/b:pull,push"), "repository:a/b:pull%2Cpush");
    }

    #[test]
    fn loopback_means_plain_unless_a_ca_is_named() {
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:5000") && is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000") && !is_loopback("10.0.0.1:5000"));
        let c = Client::new("127.0.0.1:5000", &RegistrySpec::default(), None).unwrap();
        assert!(c.tls.is_none());
        let c = Client::new("ghcr.io", &RegistrySpec::default(), None).unwrap();
        assert!(c.tls.is_some(), "another host: TLS");
    }
}
