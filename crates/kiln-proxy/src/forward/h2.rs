//! HTTP/2 towards clients (a TLS connection that chose `h2` by ALPN),
//! HTTP/1.1 towards backends: each stream is routed like an HTTP/1
//! request (the site's host and path rules, the service's weighted table,
//! stickiness), sent over this worker's HTTP/1 connections to the backend,
//! and answered on its stream. Bodies stream both ways; trailers pass
//! through (request trailers go up chunked, a chunked response's trailers
//! come back as an HTTP/2 trailers frame).
//!
//! Unlike the HTTP/1 path, hyper frames both sides here (HTTP/2 needs its
//! connection state machine), so a stream costs a task and a few
//! allocations. Retries: a stream whose backend connection could not be
//! made goes to another backend; nothing is retried once a request byte
//! was sent.
//!
//! For: the HTTP/2 request path. Must never: block or lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{connect, Open};
use crate::h1::{fnv, RequestId};
use crate::metrics::ReleaseMetrics;
use crate::site::{host_of, select, Site};
use crate::table::Backend;
use crate::{Body, Proxy, Sticky};

/// A response body towards an HTTP/2 client: an error resets its stream.
type Out = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Streams one client may have open at once.
const MAX_STREAMS: u32 = 256;
/// Idle HTTP/1 senders kept per backend on a worker.
const MAX_IDLE: usize = 256;

thread_local! {
    /// This worker's idle HTTP/1 connections to backends, by address.
    static SENDERS: RefCell<HashMap<SocketAddr, Vec<SendRequest<Body>>>> = RefCell::new(HashMap::new());
}

/// Serves one HTTP/2 client connection until it closes; a stopping site
/// ends it gracefully (GOAWAY: streams in flight finish).
pub(crate) async fn connection(open: Open, tls: tokio_rustls::server::TlsStream<TcpStream>, peer: SocketAddr) {
    let site = open.0.clone();
    let s = site.clone();
    let svc = hyper::service::service_fn(move |req| {
        let s = s.clone();
        async move { Ok::<_, Infallible>(stream(&s, req, peer).await) }
    });
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS);
    let conn = b.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    loop {
        let stop = site.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if site.stopping.load(Ordering::Relaxed) {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            break;
        }
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = stop => {}
        }
    }
    drop(open);
}

fn reply(status: StatusCode, msg: &str, request_id: Option<&HeaderValue>) -> Response<Out> {
    let mut r = crate::text(status, msg).map(|b| b.map_err(Into::into).boxed());
    if let Some(id) = request_id {
        r.headers_mut().insert(HeaderName::from_static("x-request-id"), id.clone());
    }
    r
}

/// Why a response body was ended before its backend finished it.
#[derive(Debug)]
struct Drained;

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the backend was drained")
    }
}

impl std::error::Error for Drained {}

/// Keeps a backend's and a release's in-flight counts up while a stream's
/// response body is alive; returns the backend connection to the pool
/// when the body was read whole.
struct Guard {
    backend: Arc<Backend>,
    release: Arc<ReleaseMetrics>,
    sender: Option<SendRequest<Body>>,
}

impl Guard {
    fn new(backend: Arc<Backend>, release: Arc<ReleaseMetrics>) -> Guard {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        release.in_flight.fetch_add(1, Ordering::Relaxed);
        Guard { backend, release, sender: None }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.release.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            put(&self.backend, s);
        }
    }
}

/// An idle connection to `backend` from this worker's pool, or a new one.
async fn sender(backend: &Backend) -> std::io::Result<SendRequest<Body>> {
    let idle = SENDERS.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.get_mut(&backend.addr)?;
        while let Some(s) = list.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    });
    if let Some(s) = idle.filter(|_| !backend.draining.load(Ordering::Relaxed)) {
        return Ok(s);
    }
    let tcp = connect(backend.addr).await?;
    let (s, conn) =
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(s)
}

fn put(backend: &Backend, s: SendRequest<Body>) {
    if backend.draining.load(Ordering::Relaxed) || !s.is_ready() || s.is_closed() {
        return;
    }
    SENDERS.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.entry(backend.addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(s);
        }
    });
}

/// Headers that belong to one hop (RFC 9110 §7.6.1) or that kiln writes.
fn dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "host"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
    )
}

/// One stream, top to bottom.
async fn stream(site: &Site, req: Request<Incoming>, peer: SocketAddr) -> Response<Out> {
    let started = Instant::now();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned));
    let host = authority.as_deref().and_then(|a| host_of(a.as_bytes()));
    let routes = site.routes();
    let Some(i) = select(&routes, host.as_deref(), req.uri().path()) else {
        site.misdirected.fetch_add(1, Ordering::Relaxed);
        return reply(StatusCode::MISDIRECTED_REQUEST, "no service on this address answers that host and path", None);
    };
    let p: Arc<Proxy> = routes[i].proxy.clone();
    drop(routes);
    let ticket = p.ticket.fetch_add(1, Ordering::Relaxed);
    let request_id =
        req.headers().get("x-request-id").filter(|v| !v.is_empty() && v.len() <= 128).cloned().unwrap_or_else(|| {
            HeaderValue::from_bytes(RequestId::generate(ticket, p.id_salt).as_bytes()).expect("hex digits")
        });
    let table = p.table.load_full();
    let sticky_cookie = cookie(req.headers(), "kiln_release").and_then(|v| table.release_index(v.as_bytes()));
    let ticket = match &p.config.sticky {
        Sticky::Header(name) => req.headers().get(name).map_or(ticket, |v| fnv(v.as_bytes())),
        _ => ticket,
    };
    p.retry_budget.deposit();

    let (parts, body) = req.into_parts();
    let empty = body.is_end_stream();
    let mut body = Some(body);
    // Every backend this request failed on.
    let mut skip: Vec<std::net::SocketAddr> = Vec::new();
    let mut attempt = 0;
    loop {
        let now_ms = p.ms_at(started);
        let Some((index, release, backend)) = table.pick(ticket, sticky_cookie, &skip, now_ms) else {
            return reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy backend for this service", Some(&request_id));
        };
        let mut guard = Guard::new(backend.clone(), release.metrics.clone());
        let mut send = match sender(backend).await {
            Ok(s) => s,
            Err(_) => {
                drop(guard);
                p.passive(backend, true, true);
                // Nothing was sent: another backend may take it.
                if attempt < p.config.retries && p.retry_budget.withdraw() {
                    attempt += 1;
                    release.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    backend.retried.fetch_add(1, Ordering::Relaxed);
                    skip.push(backend.addr);
                    continue;
                }
                return failed(&p, release, backend, started, StatusCode::BAD_GATEWAY, &request_id);
            }
        };
        backend.requests.fetch_add(1, Ordering::Relaxed);
        let up = upstream(&parts, body.take(), empty, authority.as_deref(), peer, &request_id);
        let answer = tokio::time::timeout(p.config.backend_timeout, send.send_request(up)).await;
        let resp = match answer {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => {
                drop(guard);
                p.passive(backend, true, false);
                let status = if answer.is_err() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
                return failed(&p, release, backend, started, status, &request_id);
            }
        };
        let status = resp.status();
        p.passive(backend, status.as_u16() >= 500, false);
        let now = Instant::now();
        let latency = now.duration_since(started).as_micros() as u64;
        release.metrics.record(status.as_u16(), latency, p.ms_at(now) / 1000);
        backend.traffic.record(status.as_u16(), latency);
        let (mut head, incoming) = resp.into_parts();
        head.version = Version::HTTP_2;
        let names: Vec<HeaderName> = head.headers.keys().filter(|n| dropped(n)).cloned().collect();
        for n in names {
            head.headers.remove(n);
        }
        head.headers.insert(HeaderName::from_static("x-request-id"), request_id.clone());
        if p.config.release_header {
            if let Ok(v) = HeaderValue::from_str(&release.id.0) {
                head.headers.insert(HeaderName::from_static("x-kiln-release"), v);
            }
        }
        if p.config.sticky == Sticky::Cookie && sticky_cookie != Some(index) {
            if let Ok(v) = HeaderValue::from_str(&format!("kiln_release={}; Path=/; HttpOnly", release.id.0)) {
                head.headers.append(header::SET_COOKIE, v);
            }
        }
        // The backend connection goes back to the pool when the body was
        // read whole (the guard goes with the body); a drain deadline cuts it.
        guard.sender = Some(send);
        let cut = Box::pin(Cut::wait(backend.clone()));
        return Response::from_parts(head, Relayed { inner: incoming, guard, cut }.boxed());
    }
}

/// Waits for a drain's deadline to cut `backend`'s streams.
struct Cut;

impl Cut {
    async fn wait(backend: Arc<Backend>) {
        backend.cut.notified().await
    }
}

/// A response body on its way to the client: its stream ends (reset) when
/// a drain cuts its backend; its guard keeps the in-flight counts.
struct Relayed<F> {
    inner: Incoming,
    guard: Guard,
    cut: std::pin::Pin<Box<F>>,
}

impl<F: std::future::Future<Output = ()>> hyper::body::Body for Relayed<F> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.cut.as_mut().poll(cx).is_ready() {
            // An error, not an end: the client's stream is reset, so a cut
            // body is never taken for a whole one. The backend connection
            // is not reusable mid-body.
            this.guard.sender = None;
            return std::task::Poll::Ready(Some(Err(Box::new(Drained))));
        }
        std::pin::Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a stream the backend failed, counted against it.
fn failed(
    p: &Proxy,
    release: &crate::table::Release,
    backend: &Backend,
    started: Instant,
    status: StatusCode,
    request_id: &HeaderValue,
) -> Response<Out> {
    let latency = started.elapsed().as_micros() as u64;
    release.metrics.record(status.as_u16(), latency, p.now_ms() / 1000);
    backend.traffic.record(status.as_u16(), latency);
    let msg =
        if status == StatusCode::GATEWAY_TIMEOUT { "the backend did not answer in time" } else { "the backend failed" };
    reply(status, msg, Some(request_id))
}

/// The HTTP/1.1 request for the backend: origin-form target, the client's
/// headers without hop-by-hop ones, `Host` from the stream's authority, and
/// kiln's `X-Forwarded-*` and `X-Request-Id`.
fn upstream(
    parts: &hyper::http::request::Parts,
    body: Option<Incoming>,
    empty: bool,
    authority: Option<&str>,
    peer: SocketAddr,
    request_id: &HeaderValue,
) -> Request<Body> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 5);
    let mut xff: Option<String> = None;
    for (name, value) in &parts.headers {
        if name == "x-forwarded-for" {
            let v = value.to_str().unwrap_or_default();
            xff = Some(match xff {
                Some(prev) => format!("{prev}, {v}"),
                None => v.to_owned(),
            });
        } else if !dropped(name) && name != "x-request-id" {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Some(a) = authority.and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert(header::HOST, a.clone());
        headers.insert(HeaderName::from_static("x-forwarded-host"), a);
    }
    let forwarded = match xff {
        Some(prev) => format!("{prev}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static("https"));
    headers.insert(HeaderName::from_static("x-request-id"), request_id.clone());
    let body: Body = match body {
        Some(b) if !empty => b.boxed(),
        _ => Empty::<Bytes>::new().map_err(|never| match never {}).boxed(),
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = target.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2
/// may split them, RFC 9113 §8.2.3).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_split_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("kiln_release=canary"));
        assert_eq!(cookie(&h, "kiln_release"), Some("canary"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn hop_by_hop_and_forwarding_headers_are_kiln_s() {
        for n in ["connection", "te", "transfer-encoding", "host", "x-forwarded-for"] {
            assert!(dropped(&HeaderName::from_static(n)), "{n}");
        }
        assert!(!dropped(&header::CONTENT_TYPE));
    }
}
