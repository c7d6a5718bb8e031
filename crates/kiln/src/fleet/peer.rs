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
//! `GET /v1/logs?service=…&since=…` answers the host's central logs (as
//! `kiln logs` reads them) to a caller with the fleet's token
//! (`/kiln/peer-token` in etcd, read at each request), so that
//! `kiln logs --cluster` shows every host's lines. Logs may hold what an
//! image's content does not: without the token, a 401.
//!
//! For: serving what the store holds, by digest, and the host's logs to
//! the fleet. Must never: serve a tag, write to the store or the logs,
//! answer logs without the token, or keep a connection past its one
//! answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::digest::Digest;
use crate::image::store::Store;
use crate::runtime::logs::{LogFilter, LogLine};

/// The fleet's token for agents' logs, in etcd.
pub const TOKEN: &str = "/kiln/peer-token";
/// The most lines one host answers (its newest).
pub const MAX_LINES: usize = 20_000;

/// What a peer needs to answer `/v1/logs`: where the host's central logs
/// are, and the fleet's token (read from etcd at each request; None when
/// it cannot be read, and then nothing is answered).
#[derive(Clone)]
pub struct LogAccess {
    pub home: std::path::PathBuf,
    pub token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl std::fmt::Debug for LogAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogAccess({})", self.home.display())
    }
}

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
    /// The host's central logs (`GET /v1/logs?…`).
    Logs(LogFilter),
}

/// Why a request is refused, with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Method,
    NotFound(String),
    /// A query parameter that is not one of the filter's, or not readable.
    BadQuery(String),
}

/// `%XX` and `+` decoded; None for a malformed escape or non-UTF-8.
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `value` for a query string: what is not unreserved, escaped.
fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A log filter as a query string (`service=web&since=…`).
pub fn log_query(f: &LogFilter) -> String {
    let mut q = Vec::new();
    for (k, v) in [("service", &f.service), ("release", &f.release), ("instance", &f.instance), ("image", &f.image)] {
        if let Some(v) = v {
            q.push(format!("{k}={}", escape(v)));
        }
    }
    if let Some(s) = f.since {
        q.push(format!("since={s}"));
    }
    q.join("&")
}

/// The filter a query string asks for (pure); an unknown or unreadable
/// parameter is named.
pub fn parse_log_query(query: &str) -> Result<LogFilter, Refused> {
    let mut f = LogFilter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = unescape(v).ok_or_else(|| Refused::BadQuery(k.to_owned()))?;
        match k {
            "service" => f.service = Some(v),
            "release" => f.release = Some(v),
            "instance" => f.instance = Some(v),
            "image" => f.image = Some(v),
            "since" => f.since = Some(v.parse().map_err(|_| Refused::BadQuery("since".into()))?),
            other => return Err(Refused::BadQuery(other.to_owned())),
        }
    }
    Ok(f)
}

/// Parses a request line's method and path (pure).
pub fn parse(method: &str, path: &str) -> Result<(Asked, bool), Refused> {
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Refused::Method),
    };
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if path == "/v1/logs" {
        return match head {
            false => Ok((Asked::Logs(parse_log_query(query)?), false)),
            true => Err(Refused::Method),
        };
    }
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
pub fn serve(store: Store, listener: TcpListener, stop: &'static AtomicBool, logs: Option<LogAccess>) {
    let busy = |conn| drop(answer(conn, 503, "text/plain", b"busy", false));
    let handle = Arc::new(move |conn| drop(one(&store, logs.as_ref(), conn)));
    crate::net::accept::serve(listener, stop, MAX_CONNECTIONS, busy, handle);
}

/// Answers one request on `conn`, then closes it.
fn one(store: &Store, logs: Option<&LogAccess>, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut r = BufReader::new(conn.try_clone()?).take(MAX_HEAD as u64);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut bearer = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.trim().eq_ignore_ascii_case("authorization") {
                bearer = value.trim().strip_prefix("Bearer ").map(str::to_owned);
            }
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (asked, head) = match parse(method, path) {
        Ok(x) => x,
        Err(Refused::Method) => return answer(conn, 405, "text/plain", b"read-only: GET or HEAD", false),
        Err(Refused::NotFound(p)) => return answer(conn, 404, "text/plain", format!("no {p}").as_bytes(), false),
        Err(Refused::BadQuery(k)) => {
            return answer(
                conn,
                400,
                "text/plain",
                format!("query parameter {k:?}: not a log filter's").as_bytes(),
                false,
            )
        }
    };
    if let Asked::Logs(filter) = &asked {
        let Some(access) = logs else { return answer(conn, 404, "text/plain", b"no logs here", false) };
        let Some(token) = (access.token)() else {
            return answer(conn, 503, "text/plain", b"the fleet's token cannot be read from etcd", false);
        };
        if !bearer.is_some_and(|b| crate::serve::auth::Keys::new(&token).is_token(&b)) {
            return answer(conn, 401, "text/plain", b"the fleet's token (/kiln/peer-token) is needed", false);
        }
        let mut lines = crate::runtime::logs::LogStore::new(&access.home).query(filter)?;
        if lines.len() > MAX_LINES {
            lines.drain(..lines.len() - MAX_LINES);
        }
        return answer(conn, 200, "application/json", &serde_json::to_vec(&lines).unwrap_or_default(), false);
    }
    let (digest, manifest) = match asked {
        Asked::Base => return answer(conn, 200, "application/json", b"{}", head),
        Asked::Manifest(d) => (d, true),
        Asked::Blob(d) => (d, false),
        Asked::Referrers(d) => {
            let body = serde_json::to_vec(&referrers(store, &d)).unwrap_or_default();
            return answer(conn, 200, crate::oci::MEDIA_INDEX, &body, head);
        }
        Asked::Logs(_) => return Ok(()),
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
        400 => "Bad Request",
        401 => "Unauthorized",
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

/// Host `addr`'s logs through its peer, with the fleet's `token`.
pub fn ask_logs(addr: SocketAddr, token: &str, filter: &LogFilter) -> std::io::Result<Vec<LogLine>> {
    let stream =
        crate::net::tls::connect_within(&addr.to_string(), None, Duration::from_secs(2), Duration::from_secs(10))?;
    let target = format!("/v1/logs?{}", log_query(filter));
    let auth = format!("Bearer {token}");
    let host = addr.to_string();
    let req = crate::net::http::Outgoing {
        method: "GET",
        target: &target,
        host: &host,
        headers: &[("Authorization", &auth)],
        body: crate::net::http::Body::Bytes(&[]),
    };
    let r = crate::net::http::send(stream, req)?;
    let status = r.status;
    let bytes = r.bytes(64 << 20)?;
    if status != 200 {
        return Err(std::io::Error::other(format!("answered {status}: {}", String::from_utf8_lossy(&bytes).trim())));
    }
    serde_json::from_slice(&bytes).map_err(|e| std::io::Error::other(format!("not a list of log lines: {e}")))
}

/// The fleet's token for agents' logs ([`TOKEN`]), made on first use by
/// whoever asks first (an agent, or `kiln logs --cluster`).
pub fn token(cluster: &super::etcd::Etcd) -> Result<String, super::etcd::EtcdError> {
    let read = |cluster: &super::etcd::Etcd| -> Result<Option<String>, super::etcd::EtcdError> {
        Ok(cluster.get(TOKEN)?.map(|(_, v)| String::from_utf8_lossy(&v).trim().to_owned()).filter(|t| !t.is_empty()))
    };
    if let Some(t) = read(cluster)? {
        return Ok(t);
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).map_err(|e| {
        super::etcd::EtcdError::Malformed { key: TOKEN.into(), message: format!("no randomness for a new token: {e}") }
    })?;
    let made = crate::digest::hex(&bytes);
    // Only if still absent: two makers agree on the first one written.
    cluster.txn_if_created_at(TOKEN, 0, &[(TOKEN.to_owned(), made.clone().into_bytes(), 0)], &[])?;
    Ok(read(cluster)?.unwrap_or(made))
}

/// One host's log line, for `kiln logs --cluster`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostLine {
    pub host: String,
    #[serde(flatten)]
    pub line: LogLine,
}

/// Every live host's logs, merged by time, and the hosts that could not
/// answer, each with why (one never hides the others').
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetLogs {
    pub lines: Vec<HostLine>,
    /// (host, why): no peer port, unreachable, or refused.
    pub missing: Vec<(String, String)>,
}

/// The logs matching `filter` on every live host, through each agent's
/// peer port with the fleet's token.
pub fn fleet_logs(cluster: &super::etcd::Etcd, filter: &LogFilter) -> Result<FleetLogs, super::etcd::EtcdError> {
    let token = token(cluster)?;
    let mut out = FleetLogs::default();
    for r in super::host_records(cluster)? {
        let Some(addr) = address(&r) else {
            out.missing.push((r.name.clone(), "its agent has no --peer-port: its logs stay on the host".into()));
            continue;
        };
        match ask_logs(addr, &token, filter) {
            Ok(lines) => out.lines.extend(lines.into_iter().map(|line| HostLine { host: r.name.clone(), line })),
            Err(e) => out.missing.push((r.name.clone(), format!("{addr}: {e}"))),
        }
    }
    out.lines.sort_by(|a, b| (a.line.ts, &a.host).cmp(&(b.line.ts, &b.host)));
    Ok(out)
}

/// `kiln logs --follow --cluster`: each poll asks every host for the lines
/// since a window before the newest line shown (one host's lines can
/// reach its central logs after another host's newer ones), and only the
/// lines not shown yet are shown. Pure: the caller polls.
#[derive(Debug, Clone, Default)]
pub struct Follow {
    /// What the person asked for (`--since`).
    from: Option<i64>,
    newest: Option<i64>,
    /// Lines shown with a time inside the window, each with how many
    /// times it was: (host, time, instance, stream, text). Counted, not
    /// a set: an instance may write the same line twice in one
    /// millisecond (two requests logged alike), and both are shown.
    shown: std::collections::BTreeMap<LineKey, usize>,
}

type LineKey = (String, i64, String, String, String);

/// How far back each poll asks, behind the newest line shown: a line
/// reaching its host's central logs later than this is not shown.
pub const FOLLOW_WINDOW_MS: i64 = 10_000;

impl Follow {
    pub fn new(from: Option<i64>) -> Follow {
        Follow { from, ..Follow::default() }
    }

    /// The `since` of the next poll.
    pub fn since(&self) -> Option<i64> {
        match (self.newest, self.from) {
            (Some(n), Some(f)) => Some((n - FOLLOW_WINDOW_MS).max(f)),
            (Some(n), None) => Some(n - FOLLOW_WINDOW_MS),
            (None, f) => f,
        }
    }

    /// The lines of a poll not shown before, in time order; remembered.
    pub fn fresh(&mut self, lines: Vec<HostLine>) -> Vec<HostLine> {
        let mut out = Vec::new();
        // Each poll holds every line since the window's start, so the
        // n-th copy of a line is new when fewer than n were shown.
        let mut seen: std::collections::BTreeMap<LineKey, usize> = std::collections::BTreeMap::new();
        for l in lines {
            if self.since().is_some_and(|s| l.line.ts < s) {
                continue;
            }
            let key =
                (l.host.clone(), l.line.ts, l.line.meta.instance.clone(), l.line.stream.clone(), l.line.line.clone());
            let n = seen.entry(key.clone()).or_default();
            *n += 1;
            let shown = self.shown.entry(key).or_default();
            if *n > *shown {
                *shown = *n;
                out.push(l);
            }
        }
        if let Some(ts) = out.iter().map(|l| l.line.ts).max() {
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
        }
        // What falls out of the window is never asked for again.
        if let Some(s) = self.since() {
            self.shown.retain(|k, _| k.1 >= s);
        }
        out.sort_by(|a, b| (a.line.ts, &a.host).cmp(&(b.line.ts, &b.host)));
        out
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
    fn following_shows_each_line_once_even_when_a_host_s_lines_come_late() {
        let line = |host: &str, ts: i64, text: &str| HostLine {
            host: host.into(),
            line: LogLine {
                ts,
                meta: crate::runtime::logs::LogMeta {
                    instance: "web-1".into(),
                    service: "web".into(),
                    image: String::new(),
                    revision: None,
                    release: None,
                },
                stream: "stdout".into(),
                line: text.into(),
            },
        };
        let mut f = Follow::new(Some(1_000));
        assert_eq!(f.since(), Some(1_000));
        let first = f.fresh(vec![line("h1", 20_000, "a"), line("h2", 21_000, "b")]);
        assert_eq!(first.len(), 2);
        assert_eq!(f.since(), Some(11_000), "a window behind the newest line");
        // The next poll sees the same lines again, and h1's line at 19 s
        // that reached its logs late: only that one is new.
        let again = f.fresh(vec![line("h1", 19_000, "late"), line("h1", 20_000, "a"), line("h2", 21_000, "b")]);
        assert_eq!(again.iter().map(|l| l.line.line.as_str()).collect::<Vec<_>>(), ["late"]);
        // The same text at the same time on another host is another line.
        assert_eq!(f.fresh(vec![line("h2", 20_000, "a")]).len(), 1);
        // Newer lines move the window; what falls out is forgotten.
        f.fresh(vec![line("h1", 40_000, "c")]);
        assert_eq!(f.since(), Some(30_000));
        assert!(f.shown.keys().all(|k| k.1 >= 30_000));
        assert!(f.fresh(vec![line("h1", 29_000, "too late")]).is_empty());
        // The same line twice in one millisecond is two lines; polled
        // again, neither shows twice, and a third copy is new.
        assert_eq!(f.fresh(vec![line("h1", 41_000, "twice"), line("h1", 41_000, "twice")]).len(), 2);
        assert!(f.fresh(vec![line("h1", 41_000, "twice"), line("h1", 41_000, "twice")]).is_empty());
        assert_eq!(f.fresh(vec![line("h1", 41_000, "twice"); 3]).len(), 1);
    }

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

    #[test]
    fn a_log_filter_goes_through_a_query_string_and_back_and_a_stray_parameter_is_named() {
        let f = LogFilter {
            service: Some("web".into()),
            release: Some("fleet:web-0".into()),
            instance: Some("web-1a2b".into()),
            image: Some("sha256:ab".into()),
            since: Some(1_700_000_000_000),
        };
        let q = log_query(&f);
        assert_eq!(q, "service=web&release=fleet:web-0&instance=web-1a2b&image=sha256:ab&since=1700000000000");
        assert_eq!(parse("GET", &format!("/v1/logs?{q}")), Ok((Asked::Logs(f), false)));
        assert_eq!(parse("GET", "/v1/logs"), Ok((Asked::Logs(LogFilter::default()), false)));
        assert_eq!(parse_log_query("service=a%20b").unwrap().service.as_deref(), Some("a b"));
        assert_eq!(escape("a b&c=d"), "a%20b%26c%3Dd");
        assert_eq!(parse("GET", "/v1/logs?user=root"), Err(Refused::BadQuery("user".into())));
        assert_eq!(parse("GET", "/v1/logs?since=yesterday"), Err(Refused::BadQuery("since".into())));
        assert_eq!(parse("GET", "/v1/logs?service=%zz"), Err(Refused::BadQuery("service".into())));
        assert_eq!(parse("HEAD", "/v1/logs"), Err(Refused::Method));
    }
}
