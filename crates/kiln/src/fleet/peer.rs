//! An agent's store, read-only, to the other agents of its fleet
//! (`kiln agent --peer-port`): the pull side of the OCI distribution API
//! for manifests and blobs named by digest, so that a host can start an
//! instance while the registry is down. The puller verifies every byte
//! against the digest etcd gave it, as from a registry; this end streams
//! each blob through the store's verified reader, so a blob corrupted on
//! this disk is cut short rather than served whole.
//!
//! The referrers API (`/v2/NAME/referrers/DIGEST`) lists what the store
//! holds about a digest (its signatures, records and SBOMs), so that an
//! agent that requires signatures can pull a signed image from a peer and
//! check its signature as it would from the registry.
//!
//! For: serving what the store holds, by digest. Must never: serve a tag,
//! write to the store, or keep a connection past its one answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::image::store::Store;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// `GET /v2/`: the API version check.
    Base,
    Manifest(Digest),
    Blob(Digest),
    /// The manifests whose subject is this digest.
    Referrers(Digest),
}

/// Why a request is refused, with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Method,
    NotFound(String),
}

/// Parses a request line's method and path (pure).
pub fn parse(method: &str, path: &str) -> Result<(Asked, bool), Refused> {
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Refused::Method),
    };
    let path = path.split('?').next().unwrap_or_default();
    if path == "/v2/" || path == "/v2" {
        return Ok((Asked::Base, head));
    }
    let rest = path.strip_prefix("/v2/").ok_or_else(|| Refused::NotFound(path.to_owned()))?;
    let (name, kind, reference) = match rest.rsplitn(3, '/').collect::<Vec<_>>()[..] {
        [reference, kind, name] => (name, kind, reference),
        _ => return Err(Refused::NotFound(path.to_owned())),
    };
    if name.is_empty() {
        return Err(Refused::NotFound(path.to_owned()));
    }
    // By digest only: a tag means nothing here.
    let digest = Digest::parse(reference).map_err(|_| Refused::NotFound(path.to_owned()))?;
    match kind {
        "manifests" => Ok((Asked::Manifest(digest), head)),
        "blobs" => Ok((Asked::Blob(digest), head)),
        "referrers" => Ok((Asked::Referrers(digest), head)),
        _ => Err(Refused::NotFound(path.to_owned())),
    }
}

/// Serves `store` on `listener` until `stop`, one thread per connection
/// (at most [`MAX_CONNECTIONS`]).
pub fn serve(store: Store, listener: TcpListener, stop: &'static AtomicBool) {
    let busy = |conn| drop(answer(conn, 503, "text/plain", b"busy", false));
    let handle = Arc::new(move |conn| drop(one(&store, conn)));
    crate::net::accept::serve(listener, stop, MAX_CONNECTIONS, busy, handle);
}

/// Answers one request on `conn`, then closes it.
fn one(store: &Store, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut r = BufReader::new(conn.try_clone()?).take(MAX_HEAD as u64);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (asked, head) = match parse(method, path) {
        Ok(x) => x,
        Err(Refused::Method) => return answer(conn, 405, "text/plain", b"read-only: GET or HEAD", false),
        Err(Refused::NotFound(p)) => return answer(conn, 404, "text/plain", format!("no {p}").as_bytes(), false),
    };
    let (digest, manifest) = match asked {
        Asked::Base => return answer(conn, 200, "application/json", b"{}", head),
        Asked::Manifest(d) => (d, true),
        Asked::Blob(d) => (d, false),
        Asked::Referrers(d) => {
            let body = serde_json::to_vec(&referrers(store, &d)).unwrap_or_default();
            return answer(conn, 200, crate::oci::MEDIA_INDEX, &body, head);
        }
    };
    if !store.has_blob(&digest) {
        return answer(conn, 404, "text/plain", format!("no {digest} here").as_bytes(), false);
    }
    if manifest {
        let Ok(bytes) = store.read_blob(&digest) else {
            return answer(conn, 404, "text/plain", b"unreadable", false);
        };
        let media = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::oci::MEDIA_MANIFEST.to_owned());
        return answer_with(conn, 200, &media, &bytes, head, &digest);
    }
    let len = std::fs::metadata(store.blob_path(&digest))?.len();
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nDocker-Content-Digest: {digest}\r\nConnection: close\r\n\r\n"
    )?;
    if !head {
        let mut blob = store.open_blob(&digest).map_err(std::io::Error::other)?;
        std::io::copy(&mut blob, &mut w)?;
    }
    w.flush()
}

fn answer(conn: TcpStream, status: u16, media: &str, body: &[u8], head: bool) -> std::io::Result<()> {
    write_answer(conn, status, media, body, head, None)
}

fn answer_with(
    conn: TcpStream,
    status: u16,
    media: &str,
    body: &[u8],
    head: bool,
    digest: &Digest,
) -> std::io::Result<()> {
    write_answer(conn, status, media, body, head, Some(digest))
}

fn write_answer(
    mut conn: TcpStream,
    status: u16,
    media: &str,
    body: &[u8],
    head: bool,
    digest: Option<&Digest>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let digest = digest.map(|d| format!("Docker-Content-Digest: {d}\r\n")).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {media}\r\nContent-Length: {}\r\n{digest}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    conn.write_all(&out)
}

/// The manifests in `store`'s index whose subject is `subject`, as an
/// image index (the referrers API's answer); one that does not read is
/// left out.
fn referrers(store: &Store, subject: &Digest) -> crate::oci::Index {
    let entries = store.index().map(|ix| ix.manifests).unwrap_or_default();
    let mut manifests: Vec<crate::oci::Descriptor> = Vec::new();
    for e in entries {
        let about = store
            .read_json::<crate::oci::Manifest>(&e.digest)
            .is_ok_and(|m| m.subject.is_some_and(|s| s.digest == *subject));
        if about && !manifests.iter().any(|m| m.digest == e.digest) {
            manifests.push(crate::oci::Descriptor::new(&e.media_type, e.digest, e.size));
        }
    }
    crate::oci::Index {
        schema_version: 2,
        media_type: Some(crate::oci::MEDIA_INDEX.to_owned()),
        manifests,
        annotations: None,
    }
}

/// Where a peer's store is: its advertised address and peer port.
pub fn address(record: &super::HostRecord) -> Option<SocketAddr> {
    Some(SocketAddr::new(record.address?, record.peer_port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_and_blobs_by_digest_are_asked_for() {
        let d = format!("sha256:{}", "a".repeat(64));
        let digest = Digest::parse(&d).unwrap();
        assert_eq!(parse("GET", "/v2/"), Ok((Asked::Base, false)));
        assert_eq!(parse("GET", &format!("/v2/team/web/manifests/{d}")), Ok((Asked::Manifest(digest.clone()), false)));
        assert_eq!(parse("HEAD", &format!("/v2/team/web/blobs/{d}")), Ok((Asked::Blob(digest.clone()), true)));
        assert_eq!(parse("GET", &format!("/v2/team/web/referrers/{d}")), Ok((Asked::Referrers(digest), false)));
        // A tag, a write, a path outside the API, a traversal: refused.
        assert!(matches!(parse("GET", "/v2/team/web/manifests/latest"), Err(Refused::NotFound(_))));
        assert_eq!(parse("PUT", &format!("/v2/team/web/blobs/{d}")), Err(Refused::Method));
        assert!(matches!(parse("GET", "/etc/passwd"), Err(Refused::NotFound(_))));
        assert!(matches!(parse("GET", "/v2/../../blobs/sha256:00"), Err(Refused::NotFound(_))));
        assert!(matches!(parse("GET", &format!("/v2//blobs/{d}")), Err(Refused::NotFound(_))));
    }
}
