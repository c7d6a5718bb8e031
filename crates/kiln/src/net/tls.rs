//! The one TLS client setup kiln's HTTP client runs over (registries, ACME
//! CAs): rustls with ring, the system's root certificates plus an extra
//! CA file when one is named, and a connection that is plain TCP or TLS
//! over it, so [`super::http`] speaks the same over both.
//!
//! For: connecting. Must never: skip verification (there is no switch for
//! it; plain HTTP is the caller's explicit choice).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The system's bundle of root certificates (Debian's ca-certificates).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A CA file that cannot be used, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", path.display())]
pub struct CaError {
    pub path: PathBuf,
    pub detail: String,
}

/// Client settings trusting the system's roots and `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, CaError> {
    client_config_with(extra_ca, None)
}

/// Client settings trusting the system's roots and `extra_ca`, presenting
/// `identity` (a certificate chain and its private key, PEM) when given.
pub fn client_config_with(
    extra_ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, CaError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system = Path::new(SYSTEM_ROOTS);
    for f in [Some(system).filter(|p| p.exists()), extra_ca].into_iter().flatten() {
        let bad = |detail: String| CaError { path: f.to_owned(), detail };
        for c in rustls_pki_types::CertificateDer::pem_file_iter(f).map_err(|e| bad(e.to_string()))? {
            // A bundle may hold a certificate rustls cannot use: skipped.
            let _ = roots.add(c.map_err(|e| bad(e.to_string()))?);
        }
    }
    // ring, as the load balancer uses (see kiln_proxy::tls::server_config).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError { path: system.to_owned(), detail: e.to_string() })?
        .with_root_certificates(roots);
    let config = match identity {
        None => config.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CaError { path: cert.to_owned(), detail: e.to_string() })?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| CaError { path: key.to_owned(), detail: e.to_string() })?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| CaError { path: cert.to_owned(), detail: e.to_string() })?
        }
    };
    Ok(Arc::new(config))
}

/// A connection: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// `https://host[:port]/path` → (`host:port`, `host`, `/path`); None for
/// anything else.
pub fn split_https_url(url: &str) -> Option<(String, String, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    if host.is_empty() {
        return None;
    }
    let with_port = if host.len() == authority.len() { format!("{authority}:443") } else { authority.to_owned() };
    Some((with_port, host.trim_matches(['[', ']']).to_owned(), path.to_owned()))
}

/// Connects to `authority` (`HOST:PORT`, every address it resolves to in
/// turn), over TLS with `tls` (the server name is its host).
pub fn connect(authority: &str, tls: Option<&Arc<rustls::ClientConfig>>, timeout: Duration) -> io::Result<Stream> {
    connect_within(authority, tls, timeout, timeout)
}

/// As [`connect`], with its own bound on the TCP handshake: a peer that
/// drops packets is given up on after `handshake`, while one that answers
/// slowly still gets `timeout` for each read and write.
pub fn connect_within(
    authority: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    handshake: Duration,
    timeout: Duration,
) -> io::Result<Stream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{authority}: no address"));
    for a in authority.to_socket_addrs()? {
        let s = match TcpStream::connect_timeout(&a, handshake.min(timeout)) {
            Ok(s) => s,
            Err(e) => {
                last = e;
                continue;
            }
        };
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        // A request is written in pieces (the TLS Finished, then the head,
        // then the body): with Nagle, each small piece after the first
        // waits for the peer's delayed ACK, 40 ms a request
        // (bench/registry.sh found it).
        s.set_nodelay(true)?;
        let Some(config) = tls else { return Ok(Stream::Plain(s)) };
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).trim_matches(['[', ']']).to_owned();
        let name = rustls_pki_types::ServerName::try_from(host).map_err(io::Error::other)?;
        let conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        return Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, s))));
    }
    Err(last)
}
