//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, or Pebble in the
//! tests) with the http-01 challenge: an account (its P-256 key kept in
//! the TLS key store, encrypted like secrets), an order for the service's
//! hosts, each authorization's token answered by the service's plain-HTTP
//! redirect listener, then a request (CSR) for a new key, and the chain.
//!
//! Over HTTPS with rustls: the system's root certificates and, for a
//! private CA (Pebble's), the CA file the service's `tls.ca` names.
//! Blocking, on a thread of its own: the controller never waits for a CA.
//!
//! For: one issuance, start to end. Must never: write a key in clear
//! outside the run directory (that is [`store`]'s), or retry a failed
//! order on its own (the controller backs off).

pub mod csr;
pub mod jws;
pub mod store;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePrivateKey, LineEnding};

use crate::net::http;

/// Why an issuance failed; each names the URL or step at fault.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("{url}: {source}")]
    Transport { url: String, source: io::Error },
    #[error("{url}: {status} {kind}: {detail}")]
    Problem { url: String, status: u16, kind: String, detail: String },
    #[error("{url}: {detail}")]
    Protocol { url: String, detail: String },
    #[error("{what} did not finish within {secs} s (last status {status:?})")]
    Timeout { what: String, secs: u64, status: String },
    #[error("{}: {detail}", path.display())]
    Ca { path: PathBuf, detail: String },
}

/// Publishes and withdraws http-01 key authorizations (the service's load
/// balancer answers `/.well-known/acme-challenge/TOKEN` on its redirect
/// listener).
pub trait Challenges: Send + Sync {
    fn publish(&self, token: &str, key_auth: &str) -> Result<(), String>;
    fn withdraw(&self, token: &str);
}

/// What to ask for, and from where.
#[derive(Debug, Clone)]
pub struct Order {
    /// The directory URL (`https://…/directory`).
    pub directory: String,
    pub email: Option<String>,
    /// An extra CA file for the ACME server's own certificate.
    pub ca: Option<PathBuf>,
    pub names: Vec<String>,
}

/// A certificate chain and its new key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// How long one issuance may take, every poll included.
const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(500);
/// The largest ACME answer read (a chain is a few kB).
const MAX_BODY: u64 = 1 << 20;

/// The TLS settings for the ACME server: the system's roots plus `ca`.
fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, AcmeError> {
    crate::net::tls::client_config(ca).map_err(|e| AcmeError::Ca { path: e.path, detail: e.detail })
}

/// An answer from the ACME server.
#[derive(Debug)]
struct Reply {
    status: u16,
    location: Option<String>,
    nonce: Option<String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self, url: &str) -> Result<serde_json::Value, AcmeError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| AcmeError::Protocol { url: url.to_owned(), detail: format!("not JSON: {e}") })
    }
}

/// One ACME conversation: the server, the account key, the nonce.
struct Client {
    tls: Arc<rustls::ClientConfig>,
    key: SigningKey,
    kid: Option<String>,
    nonce: Option<String>,
    new_nonce: String,
}

/// `https://host[:port]/path` → (`host:port`, `host`, `/path`).
fn split_url(url: &str) -> Result<(String, String, String), AcmeError> {
    crate::net::tls::split_https_url(url)
        .ok_or_else(|| AcmeError::Protocol { url: url.to_owned(), detail: "not an https:// URL".into() })
}

impl Client {
    fn request(&self, method: &str, url: &str, body: Option<&str>) -> Result<Reply, AcmeError> {
        let transport = |source: io::Error| AcmeError::Transport { url: url.to_owned(), source };
        let (authority, _, path) = split_url(url)?;
        let stream =
            crate::net::tls::connect(&authority, Some(&self.tls), Duration::from_secs(30)).map_err(transport)?;
        let headers = [
            ("Content-Type", "application/jose+json"),
            ("Accept", "application/json, application/pem-certificate-chain"),
        ];
        let req = http::Outgoing {
            method,
            target: &path,
            host: &authority,
            headers: if body.is_some() { &headers } else { &headers[1..] },
            body: body.map_or(http::Body::None, |b| http::Body::Bytes(b.as_bytes())),
        };
        let r = http::send(stream, req).map_err(transport)?;
        let (status, location, nonce) =
            (r.status, r.header("location").map(str::to_owned), r.header("replay-nonce").map(str::to_owned));
        let body = if method == "HEAD" { Vec::new() } else { r.bytes(MAX_BODY).map_err(transport)? };
        Ok(Reply { status, location, nonce, body })
    }

    fn nonce(&mut self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let url = self.new_nonce.clone();
        self.request("HEAD", &url, None)?.nonce.ok_or(AcmeError::Protocol { url, detail: "no Replay-Nonce".into() })
    }

    /// A signed POST (`None`: POST-as-GET); a stale nonce is retried once.
    fn post(&mut self, url: &str, payload: Option<&str>) -> Result<Reply, AcmeError> {
        for attempt in 0..2 {
            let nonce = self.nonce()?;
            let by = match &self.kid {
                Some(kid) => jws::By::Kid(kid),
                None => jws::By::Jwk,
            };
            let body = jws::sign(&self.key, by, &nonce, url, payload);
            let r = self.request("POST", url, Some(&body))?;
            self.nonce.clone_from(&r.nonce);
            if r.status < 400 {
                return Ok(r);
            }
            let p: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let kind = p["type"].as_str().unwrap_or("").to_owned();
            if attempt == 0 && kind.ends_with(":badNonce") {
                continue;
            }
            let detail = p["detail"].as_str().unwrap_or("").to_owned();
            return Err(AcmeError::Problem { url: url.to_owned(), status: r.status, kind, detail });
        }
        Err(AcmeError::Protocol { url: url.to_owned(), detail: "bad nonce twice".into() })
    }

    /// Polls `url` (POST-as-GET) until its status is one of `done`;
    /// `invalid` is an error with the server's reason.
    fn poll(&mut self, url: &str, what: &str, done: &[&str], until: Instant) -> Result<serde_json::Value, AcmeError> {
        loop {
            let v = self.post(url, None)?.json(url)?;
            let status = v["status"].as_str().unwrap_or("").to_owned();
            if done.contains(&status.as_str()) {
                return Ok(v);
            }
            if status == "invalid" {
                let why = v["challenges"]
                    .as_array()
                    .and_then(|c| c.iter().find_map(|c| c["error"]["detail"].as_str()))
                    .or(v["error"]["detail"].as_str())
                    .unwrap_or("no reason given");
                return Err(AcmeError::Protocol { url: url.to_owned(), detail: format!("{what} is invalid: {why}") });
            }
            if Instant::now() > until {
                return Err(AcmeError::Timeout { what: what.to_owned(), secs: DEADLINE.as_secs(), status });
            }
            std::thread::sleep(POLL);
        }
    }
}

fn field(v: &serde_json::Value, key: &str, url: &str) -> Result<String, AcmeError> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| AcmeError::Protocol { url: url.to_owned(), detail: format!("no {key:?}") })
}

/// Runs one issuance for `order` with the account `account`; `new_key`
/// is the certificate's key. Tokens published are withdrawn at the end,
/// whatever the outcome.
pub fn issue(
    order: &Order,
    account: &SigningKey,
    new_key: &SigningKey,
    challenges: &dyn Challenges,
) -> Result<Issued, AcmeError> {
    let until = Instant::now() + DEADLINE;
    let tls = client_config(order.ca.as_deref())?;
    let mut c = Client { tls, key: account.clone(), kid: None, nonce: None, new_nonce: String::new() };
    let dir = c.request("GET", &order.directory, None)?;
    if dir.status != 200 {
        let detail = format!("the directory answered {}", dir.status);
        return Err(AcmeError::Protocol { url: order.directory.clone(), detail });
    }
    let dir = dir.json(&order.directory)?;
    c.new_nonce = field(&dir, "newNonce", &order.directory)?;
    let new_account = field(&dir, "newAccount", &order.directory)?;
    let new_order = field(&dir, "newOrder", &order.directory)?;

    let contact = order.email.as_ref().map(|e| vec![format!("mailto:{e}")]).unwrap_or_default();
    let acct = serde_json::json!({ "termsOfServiceAgreed": true, "contact": contact }).to_string();
    let r = c.post(&new_account, Some(&acct))?;
    c.kid = Some(r.location.ok_or(AcmeError::Protocol { url: new_account.clone(), detail: "no account URL".into() })?);

    let ids: Vec<_> = order.names.iter().map(|n| serde_json::json!({ "type": "dns", "value": n })).collect();
    let r = c.post(&new_order, Some(&serde_json::json!({ "identifiers": ids }).to_string()))?;
    let order_url =
        r.location.clone().ok_or(AcmeError::Protocol { url: new_order.clone(), detail: "no order URL".into() })?;
    let o = r.json(&new_order)?;
    let finalize = field(&o, "finalize", &order_url)?;
    let authzs: Vec<String> =
        o["authorizations"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(str::to_owned)).collect();

    let thumb = jws::thumbprint(account);
    let mut published = Vec::new();
    let result = (|| {
        for a in &authzs {
            let v = c.post(a, None)?.json(a)?;
            if v["status"] == "valid" {
                continue;
            }
            let ch = v["challenges"]
                .as_array()
                .and_then(|cs| cs.iter().find(|ch| ch["type"] == "http-01"))
                .ok_or_else(|| AcmeError::Protocol { url: a.clone(), detail: "no http-01 challenge offered".into() })?;
            let token = field(ch, "token", a)?;
            let url = field(ch, "url", a)?;
            challenges.publish(&token, &format!("{token}.{thumb}")).map_err(|detail| AcmeError::Protocol {
                url: url.clone(),
                detail: format!("publishing the token: {detail}"),
            })?;
            published.push(token);
            c.post(&url, Some("{}"))?;
            c.poll(a, &format!("the authorization of {}", v["identifier"]["value"]), &["valid"], until)?;
        }
        let csr = csr::request(new_key, &order.names)
            .map_err(|detail| AcmeError::Protocol { url: finalize.clone(), detail })?;
        let body = serde_json::json!({ "csr": jws::b64url(&csr) }).to_string();
        c.post(&finalize, Some(&body))?;
        let done = c.poll(&order_url, "the order", &["valid"], until)?;
        let cert_url = field(&done, "certificate", &order_url)?;
        let chain = c.post(&cert_url, None)?;
        let chain_pem = String::from_utf8(chain.body)
            .map_err(|_| AcmeError::Protocol { url: cert_url.clone(), detail: "the chain is not PEM".into() })?;
        if !chain_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Protocol { url: cert_url, detail: "the chain is not PEM".into() });
        }
        let key_pem = new_key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AcmeError::Protocol { url: cert_url.clone(), detail: e.to_string() })?
            .to_string();
        Ok(Issued { chain_pem, key_pem })
    })();
    for t in &published {
        challenges.withdraw(t);
    }
    result
}

/// A new P-256 key from the system's randomness.
pub fn new_key() -> io::Result<SigningKey> {
    use std::io::Read;
    for _ in 0..16 {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        // A value out of the curve's range (vanishingly rare) is drawn again.
        if let Ok(k) = SigningKey::from_slice(&b) {
            return Ok(k);
        }
    }
    Err(io::Error::other("no valid P-256 key from /dev/urandom"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_host_and_path() {
        let (a, h, p) = split_url("https://localhost:14000/dir").unwrap();
        assert_eq!((a.as_str(), h.as_str(), p.as_str()), ("localhost:14000", "localhost", "/dir"));
        let (a, _, p) = split_url("https://acme-v02.api.letsencrypt.org/directory").unwrap();
        assert_eq!((a.as_str(), p.as_str()), ("acme-v02.api.letsencrypt.org:443", "/directory"));
        assert!(split_url("http://x/dir").is_err());
        assert!(split_url("https:///dir").is_err());
    }
}
