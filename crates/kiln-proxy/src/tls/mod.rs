//! HTTPS at the load balancer: a certificate and key from files, checked
//! (the key matches, the names are covered, the dates are valid), served by
//! SNI, and re-read when the files change without a dropped connection.
//!
//! Which certificate a handshake gets ([`Certs`] as rustls'
//! `ResolvesServerCert`): a server name the listener serves gets its
//! certificate; a client that sends no name (an IP address, an old health
//! checker) gets the listener's default, its first certificate; a name the
//! listener does not serve is refused with a handshake alert (rustls sends
//! `access_denied`),
//! so a scanner learns nothing about the hosts behind it and a misrouted
//! client fails at once instead of on a name mismatch.
//!
//! For: loading, checking and swapping certificates. Must never: block a
//! handshake (the table is swapped whole through `ArcSwap`), or serve a
//! pair that failed its checks (a bad rotation keeps the old pair).

pub mod der;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate chain and its key, as files (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate cannot be served; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a certificate rustls can read: {detail}", path.display())]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: the key cannot sign: {detail}", path.display())]
    BadKey { path: PathBuf, detail: String },
    #[error("{}: the key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the certificate expired at {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("{}: the certificate is not valid before {not_before}", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("{}: the certificate does not cover {host:?}", path.display())]
    NotCovering { path: PathBuf, host: String },
}

impl TlsError {
    /// Whether the key file (not the certificate) is at fault.
    pub fn is_key(&self) -> bool {
        match self {
            TlsError::NoKey { .. } | TlsError::BadKey { .. } | TlsError::KeyMismatch { .. } => true,
            TlsError::Read { path, .. } => path.extension().is_some_and(|e| e == "key"),
            _ => false,
        }
    }
}

/// A checked certificate, ready to serve.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Validity of the end-entity certificate, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Loads `files` and checks them: the key signs and matches the
/// certificate, the certificate covers every one of `hosts` (wildcards as
/// TLS clients match them) and is valid at `now` (Unix seconds).
pub fn load(files: &TlsFiles, hosts: &[String], now: i64) -> Result<Loaded, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let bad_cert = |detail: String| TlsError::BadCertificate { path: files.cert.clone(), detail };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| bad_cert(e.to_string()))?;
    let Some(leaf) = chain.first() else { return Err(TlsError::NoCertificate { path: files.cert.clone() }) };
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: files.key.clone() },
        other => TlsError::BadKey { path: files.key.clone(), detail: other.to_string() },
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::BadKey { path: files.key.clone(), detail: e.to_string() })?;
    let (not_before, not_after) = der::validity(leaf).map_err(|e| bad_cert(e.to_string()))?;
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| bad_cert(e.to_string()))?;
    let certified = CertifiedKey::new(chain.clone(), signer);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone() })
        }
        Err(e) => return Err(bad_cert(e.to_string())),
    }
    if now < not_before {
        return Err(TlsError::NotYetValid { path: files.cert.clone(), not_before: der::rfc3339(not_before) });
    }
    if now >= not_after {
        return Err(TlsError::Expired { path: files.cert.clone(), not_after: der::rfc3339(not_after) });
    }
    for host in hosts {
        // A wildcard host is covered by a wildcard name: checked with a
        // name it stands for.
        let probe = host.strip_prefix("*.").map_or_else(|| host.clone(), |rest| format!("kiln-wildcard.{rest}"));
        let covered = ServerName::try_from(probe.as_str())
            .ok()
            .is_some_and(|name| end_entity.verify_is_valid_for_subject_name(&name).is_ok());
        if !covered {
            return Err(TlsError::NotCovering { path: files.cert.clone(), host: host.clone() });
        }
    }
    Ok(Loaded { key: Arc::new(certified), not_before, not_after })
}

/// The end of validity (Unix seconds) of the first certificate in a PEM
/// file, without checking anything else.
pub fn not_after(cert: &Path) -> Result<i64, TlsError> {
    not_after_pem(&read(cert)?, cert)
}

/// [`not_after`] of a chain already read; `path` names it in an error.
pub fn not_after_pem(pem: &[u8], path: &Path) -> Result<i64, TlsError> {
    let der = CertificateDer::from_pem_slice(pem).map_err(|_| TlsError::NoCertificate { path: path.to_owned() })?;
    der::validity(&der)
        .map(|(_, after)| after)
        .map_err(|e| TlsError::BadCertificate { path: path.to_owned(), detail: e.to_string() })
}

/// Whether `name` (a server name, lower case) is `host` or, for a host
/// `*.example.com`, one label under it.
pub fn host_matches(host: &str, name: &str) -> bool {
    match host.strip_prefix("*.") {
        Some(rest) => {
            name.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail.eq_ignore_ascii_case(rest))
        }
        None => host.eq_ignore_ascii_case(name),
    }
}

/// A certificate to serve: whose it is, its files, and the hosts it
/// answers for (none: every name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    pub service: String,
    pub files: TlsFiles,
    pub hosts: Vec<String>,
    /// Its files come later (a certificate kiln is obtaining by ACME):
    /// until they exist, its hosts are refused in the handshake and it is
    /// loaded as soon as they appear.
    pub pending_ok: bool,
}

/// One served certificate and what was last loaded from its files (none
/// yet for a pending one).
#[derive(Debug)]
struct Entry {
    spec: CertSpec,
    loaded: Option<Loaded>,
    stamp: Stamp,
}

impl Entry {
    fn load(spec: &CertSpec, now: i64) -> Result<Entry, TlsError> {
        let stamp = stamp_of(&spec.files);
        let loaded = match load(&spec.files, &spec.hosts, now) {
            Ok(l) => Some(l),
            Err(TlsError::Read { source, .. }) if spec.pending_ok && source.kind() == std::io::ErrorKind::NotFound => {
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Entry { spec: spec.clone(), loaded, stamp })
    }
}

/// What a file looked like when it was read: a rotation changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stamp {
    cert: (u64, i64, i64, u64),
    key: (u64, i64, i64, u64),
}

fn stamp_of(files: &TlsFiles) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let one =
        |p: &Path| std::fs::metadata(p).map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len())).unwrap_or((0, 0, 0, 0));
    Stamp { cert: one(&files.cert), key: one(&files.key) }
}

/// A listener's certificates, swapped whole when a file changes.
#[derive(Debug)]
pub struct Certs {
    entries: ArcSwap<Vec<Arc<Entry>>>,
    /// Handshakes refused because the client named a host not served here.
    pub unknown_names: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// What [`Certs::reload`] did for one certificate whose files changed.
#[derive(Debug)]
pub enum Reload {
    Loaded {
        cert: PathBuf,
        not_after: i64,
    },
    /// The new files failed their checks: the old pair is still served.
    Kept(TlsError),
}

impl Certs {
    /// Loads every certificate; the first is the default.
    pub fn load(specs: &[CertSpec], now: i64) -> Result<Certs, TlsError> {
        let entries = specs.iter().map(|s| Entry::load(s, now).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(Certs {
            entries: ArcSwap::from_pointee(entries),
            unknown_names: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Serves `specs` from now on (services added, removed or re-hosted):
    /// certificates already loaded from unchanged files are kept; a new
    /// one that fails its checks changes nothing.
    pub fn set(&self, specs: &[CertSpec], now: i64) -> Result<(), TlsError> {
        let current = self.entries.load_full();
        let mut next = Vec::with_capacity(specs.len());
        for spec in specs {
            match current.iter().find(|e| &e.spec == spec && e.stamp == stamp_of(&spec.files)) {
                Some(e) => next.push(e.clone()),
                None => next.push(Arc::new(Entry::load(spec, now)?)),
            }
        }
        self.entries.store(Arc::new(next));
        Ok(())
    }

    /// Re-reads the pairs whose files changed since they were read. A pair
    /// that fails its checks (say the certificate was written and its key
    /// not yet) keeps serving the old one and is tried again next time.
    pub fn reload(&self, now: i64) -> Vec<Reload> {
        let current = self.entries.load_full();
        let mut next = Vec::with_capacity(current.len());
        let mut out = Vec::new();
        for e in current.iter() {
            let stamp = stamp_of(&e.spec.files);
            if stamp == e.stamp {
                next.push(e.clone());
                continue;
            }
            match load(&e.spec.files, &e.spec.hosts, now) {
                Ok(loaded) => {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    out.push(Reload::Loaded { cert: e.spec.files.cert.clone(), not_after: loaded.not_after });
                    next.push(Arc::new(Entry { spec: e.spec.clone(), loaded: Some(loaded), stamp }));
                }
                // Half of a pending pair written: not yet a change.
                Err(TlsError::Read { .. }) if e.loaded.is_none() && e.spec.pending_ok => next.push(e.clone()),
                Err(err) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    out.push(Reload::Kept(err));
                    next.push(e.clone());
                }
            }
        }
        if !out.is_empty() {
            self.entries.store(Arc::new(next));
        }
        out
    }

    /// Each certificate file, its service and the end of its validity
    /// (Unix seconds).
    pub fn expiries(&self) -> Vec<(PathBuf, String, i64)> {
        self.entries
            .load()
            .iter()
            .filter_map(|e| Some((e.spec.files.cert.clone(), e.spec.service.clone(), e.loaded.as_ref()?.not_after)))
            .collect()
    }

    /// The certificate for a client hello's server name (see the module doc).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let entries = self.entries.load();
        let Some(name) = server_name else {
            return entries.iter().find_map(|e| e.loaded.as_ref()).map(|l| l.key.clone());
        };
        let hit =
            entries.iter().find(|e| e.spec.hosts.is_empty() || e.spec.hosts.iter().any(|h| host_matches(h, name)));
        if hit.is_none() {
            self.unknown_names.fetch_add(1, Ordering::Relaxed);
        }
        hit.and_then(|e| e.loaded.as_ref()).map(|l| l.key.clone())
    }
}

/// rustls asks [`Certs`] for each handshake's certificate.
#[derive(Debug)]
pub struct Resolver(pub Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.pick(hello.server_name())
    }
}

/// The server side of TLS 1.3 and 1.2 with `certs`, offering `alpn`, with
/// session resumption by tickets (stateless) and by a session cache.
pub fn server_config(certs: Arc<Certs>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    // ring, not aws-lc-rs: it builds with cc alone on a 2-core CI machine.
    // rustls deprecates it for lacking post-quantum key exchange, which no
    // client this serves needs today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(certs)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
