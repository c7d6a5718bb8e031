//! The request path: one task per client connection, on its worker's
//! thread, reading requests and forwarding each to a backend over this
//! thread's keep-alive pool. [`exchange`] is one request, top to bottom.
//!
//! The bytes of a message body pass through unchanged (only heads are
//! parsed and rewritten, by [`super::h1`]), through two buffers per client
//! connection that are reused for every request: nothing is allocated per
//! request, no task is spawned and no channel crossed, so a request costs
//! about four socket calls. Nothing here may block the thread or take a
//! lock: a worker serves all of its connections.
//!
//! Its parts: [`body`] moves bodies, [`pool`] keeps backend connections.

mod body;
pub(crate) mod h2;
mod pool;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1::{self, Framing, HeadError, RequestId};
use super::metrics::ReleaseMetrics;
use super::site::{Pick, Site};
use super::table::Backend;
use super::{InFlight, Proxy, Sticky, MAX_HEAD_BYTES};
use body::{relay, Buf, Relay};
pub(super) use pool::sweep;
use pool::{put, take};

/// How long an idle client connection is kept open.
const CLIENT_IDLE: Duration = Duration::from_secs(75);
/// How long a keep-alive connection must have been idle for a stopping
/// proxy to close it (a request may already be on its way), and so how
/// often an idle connection wakes to check: long enough to cost nothing
/// with many idle clients.
pub const STOP_IDLE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A backend slower than this to answer has the client watched for a close.
const WATCH_AFTER: Duration = Duration::from_millis(100);
/// The longest a body may stall, either side, before its exchange is ended.
pub(super) const BODY_IDLE: Duration = Duration::from_secs(60);
/// How long a closing connection keeps reading a request body nobody wants.
const LINGER: Duration = Duration::from_secs(2);
pub(super) const BUF: usize = 8 * 1024;

/// Bodies of at most this many bytes (by their Content-Length) are read
/// whole before the answer is sent, so that a backend lost after its head
/// costs an idempotent request a retry, not a failure. Larger ones stream.
const HOLD_BODY: usize = 16 * 1024;
async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    conn.set_nodelay(true)?;
    Ok(conn)
}

/// A client connection: plain TCP, or TLS over it.
pub(super) trait Client: AsyncRead + AsyncWrite + Unpin {
    /// Whether it came over TLS (`X-Forwarded-Proto`).
    const HTTPS: bool;
    /// The TCP socket underneath, watched for a close while a slow
    /// backend answers.
    fn tcp(&self) -> &TcpStream;
}

impl Client for TcpStream {
    const HTTPS: bool = false;
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Client for tokio_rustls::server::TlsStream<TcpStream> {
    const HTTPS: bool = true;
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Counts a client connection as open from its accept (before a TLS
/// handshake) until it ends, so a stopping proxy waits for it.
pub(crate) struct Open(Arc<Site>);

impl Open {
    pub(crate) fn new(site: &Arc<Site>) -> Open {
        site.connections.fetch_add(1, Ordering::Relaxed);
        Open(site.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one client connection until it closes, errs or idles out.
pub(crate) async fn connection<C: Client>(open: Open, mut client: C, peer: SocketAddr) {
    let site = open.0.clone();
    let mut cbuf = Buf::new();
    let mut bbuf = Buf::new();
    let mut head = Vec::with_capacity(1024);
    let mut reply = Vec::with_capacity(1024);
    loop {
        let (p, info, ticket) = match read_request(&site, &mut client, &mut cbuf, &mut head, peer).await {
            Ok(Some(r)) => r,
            Ok(None) => return close(&mut client).await,
            Err(e) => {
                let (status, msg) = match e {
                    Unread::Head(HeadError::TooLarge) => (431, "request header fields too large"),
                    Unread::Head(HeadError::Method) => (405, "CONNECT is not supported"),
                    Unread::Head(HeadError::Malformed(what)) => (400, what),
                    Unread::Misdirected => (421, "no service on this address answers that host and path"),
                };
                h1::local(&mut reply, status, msg, None, true);
                let _ = client.write_all(&reply).await;
                return close(&mut client).await;
            }
        };
        let mut io = Io { client: &mut client, cbuf: &mut cbuf, bbuf: &mut bbuf, head: &mut head, reply: &mut reply };
        match exchange(&p, &site, &mut io, &info, ticket).await {
            Next::Keep => {}
            Next::Close => return close(&mut client).await,
            Next::Linger => return linger(&mut client, &mut cbuf).await,
        }
    }
}

/// Ends a connection the proxy closes: over TLS with a `close_notify`, so
/// the client knows its last response was whole (a plain TCP close says
/// that itself).
async fn close<C: Client>(client: &mut C) {
    if C::HTTPS {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    }
}

/// Why no request could be read.
enum Unread {
    Head(HeadError),
    /// No service of the site answers the request's host and path.
    Misdirected,
}

impl From<HeadError> for Unread {
    fn from(e: HeadError) -> Unread {
        Unread::Head(e)
    }
}

/// Reads and parses the next request head, picks the site's service for
/// it, and writes the backend's version of the head into `head`; returns
/// the service's load balancer, the request and its ticket. `Ok(None)`:
/// the client closed, idled out, or did not finish its head in time
/// (slowloris).
async fn read_request<C: Client>(
    site: &Site,
    client: &mut C,
    cbuf: &mut Buf,
    head: &mut Vec<u8>,
    peer: SocketAddr,
) -> Result<Option<(Arc<Proxy>, h1::RequestInfo, u64)>, Unread> {
    let mut deadline = None;
    loop {
        let picked = match cbuf.filled().is_empty() {
            true => None,
            false => match site.pick(cbuf.filled())? {
                Pick::More => None,
                Pick::To(p) => Some(p),
                Pick::Nobody => return Err(Unread::Misdirected),
            },
        };
        if let Some(p) = picked {
            // A ticket is taken only for a whole head (a partial one is
            // parsed again), so the weighted schedule advances once a request.
            let ticket = std::cell::Cell::new(None);
            let next = || p.ticket.fetch_add(1, Ordering::Relaxed);
            let fwd = h1::Forward {
                client_ip: peer.ip(),
                https: C::HTTPS,
                sticky_header: match &p.config.sticky {
                    Sticky::Header(name) => Some(name.as_str()),
                    _ => None,
                },
                generated_id: &|| {
                    let n = next();
                    ticket.set(Some(n));
                    RequestId::generate(n, p.id_salt)
                },
            };
            if let Some(info) = h1::request(cbuf.filled(), &fwd, head)? {
                if info.head_len > MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge.into());
                }
                let ticket = ticket.get().unwrap_or_else(next);
                return Ok(Some((p, info, ticket)));
            }
        }
        if cbuf.filled().len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge.into());
        }
        // Waiting for a new request is the idle timeout; once it has
        // started, the whole head must arrive within the header timeout.
        // A stopping proxy closes a connection that has been idle for
        // STOP_IDLE (a request already on its way is still answered, with
        // `Connection: close`). The idle wait is cut into STOP_IDLE steps
        // that read the flag: registering with the stop `Notify` instead
        // would take its lock on every request.
        let idle = cbuf.filled().is_empty() && deadline.is_none();
        let limit = match deadline {
            None if idle => tokio::time::Instant::now() + CLIENT_IDLE,
            _ => *deadline.get_or_insert_with(|| tokio::time::Instant::now() + site.header_timeout),
        };
        let fill = cbuf.fill(client, MAX_HEAD_BYTES + 1);
        tokio::pin!(fill);
        let filled = loop {
            let step = if idle { limit.min(tokio::time::Instant::now() + STOP_IDLE) } else { limit };
            match tokio::time::timeout_at(step, &mut fill).await {
                Ok(r) => break Some(r),
                Err(_) if step >= limit || site.stopping.load(Ordering::Relaxed) => break None,
                Err(_) => {}
            }
        };
        let filled = filled.ok_or(());
        match filled {
            Ok(Ok(0)) | Err(_) => return Ok(None),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Other => return Err(HeadError::TooLarge.into()),
            Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + site.header_timeout);
            }
        }
    }
}

/// The client side of one exchange and this connection's reused buffers.
struct Io<'a, C> {
    client: &'a mut C,
    /// Bytes from the client not yet used (a request body, the next request).
    cbuf: &'a mut Buf,
    /// Bytes from the backend not yet used.
    bbuf: &'a mut Buf,
    /// The request head for the backend.
    head: &'a mut Vec<u8>,
    /// The response head for the client.
    reply: &'a mut Vec<u8>,
}

/// How an attempt on one backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Failure {
    #[error("refused or unreachable")]
    /// Nothing reached the backend: another may take the request.
    Connect,
    /// The connection failed before a whole response head arrived.
    #[error("closed the connection before a whole response head")]
    BeforeResponse,
    /// No response head in time.
    #[error("sent no response head in time")]
    Timeout,
    /// The drain deadline cut the request.
    #[error("was drained before it answered")]
    Cut,
    /// The backend sent something that is not an HTTP response.
    #[error("answered something that is not an HTTP response")]
    BadResponse,
    /// The client failed or closed while its body was being sent.
    #[error("the client failed while its body was sent")]
    Client,
    /// The client closed while the backend had not answered yet.
    #[error("the client left before the answer")]
    ClientGone,
}

/// Writes a request the load balancer failed to the error log: each
/// backend tried and how it failed, and why it was not tried again.
fn log_failed(p: &Proxy, status: u16, info: &h1::RequestInfo, tried: &[(std::net::SocketAddr, Failure)], safe: bool) {
    let Some(left_out) = p.error_log.admit(p.now_ms() / 1000) else { return };
    let tries: Vec<String> = tried.iter().map(|(addr, f)| format!("{addr} {f}")).collect();
    let why = if !safe {
        "not safe to retry (a body was sent, or the method is not idempotent)"
    } else if tried.len() as u64 > u64::from(p.config.retries) {
        "no retry left"
    } else {
        "the retry budget is spent"
    };
    let before =
        if left_out > 0 { format!(" ({left_out} failed requests not logged before this one)") } else { String::new() };
    eprintln!(
        "kiln proxy: {}: answered {status} to request {}: {}; {why}{before}",
        p.config.service,
        String::from_utf8_lossy(info.request_id.as_bytes()),
        tries.join(", then ")
    );
}

/// One request, top to bottom: choose a release and backend, send the
/// head and body, read the response head (retrying on another backend
/// when nothing can be lost), answer, stream the body back, and return the
/// backend connection to the pool. Returns what the client connection
/// does next.
async fn exchange<C: Client>(p: &Proxy, site: &Site, io: &mut Io<'_, C>, info: &h1::RequestInfo, ticket: u64) -> Next {
    let started = Instant::now();
    let table = p.table.load_full();
    let sticky = info.sticky_cookie.and_then(|(s, e)| table.release_index(&io.cbuf.filled()[s..e]));
    let ticket = info.sticky_hash.unwrap_or(ticket);
    io.cbuf.consume(info.head_len);
    p.retry_budget.deposit();
    if info.expect_continue && io.client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
        return Next::Close;
    }
    // A body is sent at most once: after that, a failure is final.
    let mut body_sent = false;
    // Every backend this request failed on, and how (for the error log).
    let mut skip: Vec<std::net::SocketAddr> = Vec::new();
    let mut failures: Vec<(std::net::SocketAddr, Failure)> = Vec::new();
    let mut attempt = 0;
    // The release whose drill fault this request took, if any.
    let mut faulted = None;
    loop {
        let now_ms = p.ms_at(started);
        let picked = match faulted {
            Some(i) => table.pick_excluding(ticket, i, &skip, now_ms),
            None => table.pick(ticket, sticky, &skip, now_ms),
        };
        let picked = match picked {
            Some((i, r, _)) if faulted.is_none() && r.fault.is_some() => {
                // Counted as the release's answer; no backend saw the request.
                r.metrics.record(r.fault.unwrap_or(503), 0, now_ms / 1000);
                r.metrics.injected.fetch_add(1, Ordering::Relaxed);
                faulted = Some(i);
                table.pick_excluding(ticket, i, &skip, now_ms)
            }
            other => other,
        };
        let Some((index, release, backend)) = picked else {
            return local(p, site, io, 503, "no healthy backend for this service", None, info).await;
        };
        let reply = h1::Reply {
            request_id: info.request_id.as_bytes(),
            release: p.config.release_header.then_some(release.id.0.as_str()),
            set_cookie: (p.config.sticky == Sticky::Cookie && sticky != Some(index)).then_some(release.id.0.as_str()),
            head_method: info.head_method,
            close: !info.keep_alive || site.stopping.load(Ordering::Relaxed),
            http10_keep_alive: info.http10 && info.keep_alive,
            chunked_ok: !info.http10,
        };
        let guard = InFlight::new(backend, &release.metrics);
        let (mut conn, resp, unread) = match attempt_on(p, io, info, &reply, backend, &mut body_sent, started).await {
            Ok(ok) => ok,
            Err(failure) => {
                drop(guard);
                if matches!(failure, Failure::Client | Failure::ClientGone) {
                    // Not the backend's fault. A client that left while
                    // waiting is counted as 499, as nginx logs it.
                    if failure == Failure::ClientGone {
                        let latency = started.elapsed().as_micros() as u64;
                        release.metrics.record(499, latency, p.now_ms() / 1000);
                        backend.traffic.record(499, latency);
                    }
                    return Next::Close;
                }
                p.passive(backend, true, failure == Failure::Connect);
                failures.push((backend.addr, failure));
                let safe = match failure {
                    Failure::Connect => !body_sent,
                    // A drain cut a request still awaiting its response head
                    // (a hung backend): nothing reached the client yet.
                    Failure::BeforeResponse | Failure::Cut => !body_sent && info.idempotent,
                    _ => false,
                };
                if safe && attempt < p.config.retries && p.retry_budget.withdraw() {
                    attempt += 1;
                    release.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    backend.retried.fetch_add(1, Ordering::Relaxed);
                    skip.push(backend.addr);
                    continue;
                }
                let (status, msg) = match failure {
                    Failure::Timeout => (504, "the backend did not answer in time"),
                    Failure::Cut => (502, "the backend was drained"),
                    _ => (502, "the backend failed"),
                };
                log_failed(p, status, info, &failures, safe);
                let m = Some((&*release.metrics, &**backend, started));
                return local(p, site, io, status, msg, m, info).await;
            }
        };
        p.passive(backend, resp.status >= 500, false);
        let now = Instant::now();
        let latency = now.duration_since(started).as_micros() as u64;
        release.metrics.record(resp.status, latency, p.ms_at(now) / 1000);
        backend.traffic.record(resp.status, latency);

        if resp.status == 101 {
            // An upgraded connection: the head (and anything after it) goes
            // to the client, then bytes flow both ways until either side
            // closes or a drain cuts it. The tunnel holds the in-flight guard.
            io.reply.extend_from_slice(io.bbuf.filled());
            io.bbuf.consume(io.bbuf.filled().len());
            let sent_ahead = io.cbuf.filled().len();
            let ok = info.upgrade
                && io.client.write_all(io.reply).await.is_ok()
                && conn.write_all(io.cbuf.filled()).await.is_ok();
            io.cbuf.consume(sent_ahead);
            if ok {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(io.client, &mut conn) => {}
                    _ = backend.cut.notified() => {}
                }
            }
            drop(guard);
            return Next::Close;
        }

        // The body streams back; a drain deadline cuts it too.
        let relayed = tokio::select! {
            biased;
            r = relay(&mut conn, io.bbuf, io.client, resp.framing, io.reply, resp.rechunk) => r.is_ok(),
            _ = backend.cut.notified() => false,
        };
        drop(guard);
        if !relayed {
            return Next::Close;
        }
        if resp.reusable && io.bbuf.filled().is_empty() {
            put(backend, conn, now);
        }
        return match (resp.close, unread) {
            (false, _) => Next::Keep,
            (true, false) => Next::Close,
            (true, true) => Next::Linger,
        };
    }
}

/// Answers the client with a response of the proxy's own; records it
/// against the release and backend that failed, if any. A request whose
/// body was not read ends its connection (lingering).
async fn local<C: Client>(
    p: &Proxy,
    site: &Site,
    io: &mut Io<'_, C>,
    status: u16,
    msg: &str,
    failed: Option<(&ReleaseMetrics, &Backend, Instant)>,
    info: &h1::RequestInfo,
) -> Next {
    if let Some((m, b, started)) = failed {
        let latency = started.elapsed().as_micros() as u64;
        m.record(status, latency, p.now_ms() / 1000);
        b.traffic.record(status, latency);
    }
    let unread = info.framing != Framing::None;
    let close = !info.keep_alive || unread || site.stopping.load(Ordering::Relaxed);
    h1::local(io.reply, status, msg, Some(info.request_id.as_bytes()), close);
    match (io.client.write_all(io.reply).await.is_ok(), close, unread) {
        (false, _, _) => Next::Close,
        (true, false, _) => Next::Keep,
        (true, true, false) => Next::Close,
        (true, true, true) => Next::Linger,
    }
}

/// What the client connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Keep,
    Close,
    /// Close once the client stops sending: its request body was not read
    /// whole, and closing on unread data would reset the connection and
    /// could destroy the response before the client reads it.
    Linger,
}

/// Half-closes, then reads and discards what the client still sends, for
/// at most [`LINGER`], before the connection is dropped.
async fn linger<C: Client>(client: &mut C, scratch: &mut Buf) {
    let _ = client.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    loop {
        scratch.consume(scratch.filled().len());
        match tokio::time::timeout_at(deadline, scratch.fill(client, BUF)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// One attempt on one backend: a connection (pooled or new), the request
/// head and body, and the response head, written for the client into
/// `io.reply`.
async fn attempt_on<C: Client>(
    p: &Proxy,
    io: &mut Io<'_, C>,
    info: &h1::RequestInfo,
    reply: &h1::Reply<'_>,
    backend: &Backend,
    body_sent: &mut bool,
    started: Instant,
) -> Result<(TcpStream, h1::ResponseInfo, bool), Failure> {
    let careful = !info.idempotent || info.framing != Framing::None;
    let mut conn = match take(backend, started, careful) {
        Some(c) => c,
        None => connect(backend.addr).await.map_err(|_| Failure::Connect)?,
    };
    backend.requests.fetch_add(1, Ordering::Relaxed);
    io.bbuf.consume(io.bbuf.filled().len());
    let Io { client, cbuf, bbuf, head, reply: reply_head } = io;
    let limit = p.config.backend_timeout;
    let exchange = async {
        conn.write_all(head).await.map_err(|_| Failure::BeforeResponse)?;
        let (mut rd, mut wr) = conn.split();
        let head = response_head(&mut rd, bbuf, reply, reply_head);
        tokio::pin!(head);
        if info.framing == Framing::None {
            return Ok((await_head(head, client.tcp(), limit).await?, false));
        }
        // The body goes up while the response head is awaited: a backend
        // may answer (413, 401, ...) before it has read the whole body.
        *body_sent = true;
        let unread = {
            let mut no_prefix = Vec::new();
            let send = relay(client, cbuf, &mut wr, info.framing, &mut no_prefix, false);
            tokio::pin!(send);
            tokio::select! {
                biased;
                sent = &mut send => match sent {
                    Ok(()) => false,
                    Err(Relay::From) => return Err(Failure::Client),
                    // The backend stopped reading: it may still have answered.
                    Err(Relay::To) => true,
                },
                r = &mut head => return Ok((r?, true)),
            }
        };
        // The backend timeout runs from the end of the request, so a large
        // upload from a slow client takes the time it needs.
        Ok((await_head(head, client.tcp(), limit).await?, unread))
    };
    let (mut resp, unread) = tokio::select! {
        biased;
        r = exchange => r?,
        _ = backend.cut.notified() => return Err(Failure::Cut),
    };
    if unread && resp.status != 101 {
        // The rest of the request body was never read: neither connection
        // can carry another request.
        if !resp.close {
            h1::close_after(reply_head);
            resp.close = true;
        }
        resp.reusable = false;
    }
    // A small body is read whole before anything reaches the client: a
    // backend that dies between its head and its body (its host lost in
    // the middle of an answer) then leaves an idempotent request free to
    // go to another backend, rather than cut before the client.
    if let Framing::Length(n) = resp.framing {
        if n <= HOLD_BODY as u64 && info.idempotent && !*body_sent {
            let whole = async {
                while (bbuf.filled().len() as u64) < n {
                    match bbuf.fill(&mut conn, MAX_HEAD_BYTES + HOLD_BODY).await {
                        Ok(0) | Err(_) => return Err(Failure::BeforeResponse),
                        Ok(_) => {}
                    }
                }
                Ok(())
            };
            tokio::select! {
                biased;
                r = tokio::time::timeout(limit, whole) => r.map_err(|_| Failure::Timeout)??,
                _ = backend.cut.notified() => return Err(Failure::Cut),
            }
        }
    }
    Ok((conn, resp, unread))
}

/// Waits up to `limit` for the response head. Past [`WATCH_AFTER`] (a slow
/// backend) it also watches the client: one that closes meanwhile ends the
/// exchange, freeing the backend connection (nginx's 499).
async fn await_head(
    mut head: std::pin::Pin<&mut impl std::future::Future<Output = Result<h1::ResponseInfo, Failure>>>,
    client: &TcpStream,
    limit: Duration,
) -> Result<h1::ResponseInfo, Failure> {
    let start = tokio::time::Instant::now();
    match tokio::time::timeout(WATCH_AFTER.min(limit), head.as_mut()).await {
        Ok(r) => return r,
        Err(_) if limit <= WATCH_AFTER => return Err(Failure::Timeout),
        Err(_) => {}
    }
    let gone = async {
        let mut byte = [0u8; 1];
        match client.peek(&mut byte).await {
            Ok(0) | Err(_) => {}
            // A pipelined request is waiting: the client is still there.
            Ok(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::time::timeout_at(start + limit, head) => r.map_err(|_| Failure::Timeout)?,
        () = gone => Err(Failure::ClientGone),
    }
}

/// Reads the backend's response head, skipping interim (1xx) ones, and
/// writes the client's version of it into `out`.
async fn response_head(
    rd: &mut (impl AsyncRead + Unpin),
    bbuf: &mut Buf,
    reply: &h1::Reply<'_>,
    out: &mut Vec<u8>,
) -> Result<h1::ResponseInfo, Failure> {
    loop {
        if !bbuf.filled().is_empty() {
            if let Some(r) = h1::response(bbuf.filled(), reply, out).map_err(|_| Failure::BadResponse)? {
                bbuf.consume(r.head_len);
                if (100..200).contains(&r.status) && r.status != 101 {
                    continue;
                }
                return Ok(r);
            }
        }
        // Nothing has reached the client yet, even if part of a head had
        // arrived: an idempotent request can still go elsewhere.
        match bbuf.fill(rd, MAX_HEAD_BYTES + 1).await {
            Ok(0) | Err(_) => return Err(Failure::BeforeResponse),
            Ok(_) => {}
        }
    }
}

/// An active health check: `GET path` on a new connection; healthy on a
/// 2xx or 3xx answer within `timeout`.
pub(super) async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let check = async {
        let mut conn = connect(addr).await.ok()?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kiln-health\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Buf::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(_) = resp.parse(buf.filled()).ok()? {
                return resp.code;
            }
            if buf.fill(&mut conn, MAX_HEAD_BYTES).await.ok()? == 0 {
                return None;
            }
        }
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(200..=399)))
}
