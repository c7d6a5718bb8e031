//! The admin API: HTTP on loopback mapped onto [`Control`], answered as
//! JSON or text. A hyper server: it is not on the request path.
//!
//! For: letting `kiln serve` (another process) drive the proxy. Must
//! never: decide anything a [`Control`] does not say.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::*;

/// Re-reads the process's releases or site file: what changed, or why
/// nothing did.
pub type Reload = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The admin API: `GET /metrics` (Prometheus, every service),
/// `GET /releases`, `PUT /releases` (JSON list), `PUT /weights` (JSON map),
/// `POST /drain?backend=ADDR&deadline_ms=N`, `GET /stats?release=R&window=S`,
/// `GET /totals`, each with `?service=NAME` when the site has several; and
/// `POST /reload` (the site file, as SIGHUP).
pub async fn serve_admin(site: Arc<Site>, listener: TcpListener, reload: Reload) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (s, reload) = (site.clone(), reload.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (s, reload) = (s.clone(), reload.clone());
                async move { Ok::<_, Infallible>(admin(&s, &reload, req).await) }
            });
            let mut server = hyper::server::conn::http1::Builder::new();
            server.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = server.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// A whole-number query parameter, `default` when absent; anything else is
/// an error naming the parameter (never silently the default).
fn number(req: &Request<Incoming>, key: &str, default: u64) -> Result<u64, String> {
    match query(req, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("{key}={v:?}: expected a whole number")),
    }
}

fn json_response<T: Serialize>(v: &T) -> Response<Body> {
    let mut r = text(StatusCode::OK, &serde_json::to_string(v).unwrap_or_default());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Maps an admin request onto a [`Control`]; a bad one is answered with
/// the status and the message naming what is wrong.
async fn parse_admin(req: Request<Incoming>) -> Result<Control, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    Ok(match (method, path.as_str()) {
        (Method::GET, "/metrics") => Control::Metrics,
        (Method::GET, "/totals") => Control::Totals,
        (Method::GET, "/backends") => Control::Backends,
        (Method::GET, "/releases") => Control::Releases,
        (Method::GET, "/stats") => Control::Stats {
            release: query(&req, "release").unwrap_or_default(),
            window_secs: number(&req, "window", 10).map_err(bad)?,
        },
        (Method::POST, "/drain") => Control::Drain {
            backend: query(&req, "backend")
                .and_then(|b| b.parse().ok())
                .ok_or_else(|| bad("backend=ADDR:PORT is required".into()))?,
            deadline: Duration::from_millis(number(&req, "deadline_ms", 30_000).map_err(bad)?),
        },
        (Method::PUT, "/releases" | "/weights") => {
            let body = match http_body_util::Limited::new(req.into_body(), 1 << 20).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return Err((StatusCode::PAYLOAD_TOO_LARGE, format!("body: {e}"))),
            };
            let json = |e: serde_json::Error| bad(format!("body: {e}"));
            if path == "/releases" {
                Control::SetReleases(serde_json::from_slice(&body).map_err(json)?)
            } else {
                Control::SetWeights(serde_json::from_slice(&body).map_err(json)?)
            }
        }
        _ => return Err((StatusCode::NOT_FOUND, "not found".into())),
    })
}

async fn admin(site: &Site, reload: &Reload, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/reload") => {
            return match reload() {
                Ok(what) => text(StatusCode::OK, &what),
                Err(e) => text(StatusCode::BAD_REQUEST, &e),
            }
        }
        (&Method::GET, "/metrics") => return text(StatusCode::OK, &site.metrics_text()),
        (m @ (&Method::PUT | &Method::DELETE), p) if p.starts_with("/acme-challenge/") => {
            let token = p.trim_start_matches("/acme-challenge/").to_owned();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return text(StatusCode::BAD_REQUEST, "a token is base64url");
            }
            if m == Method::DELETE {
                site.set_challenge(&token, None);
                return text(StatusCode::OK, "ok");
            }
            let body = match http_body_util::Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, &format!("body: {e}")),
            };
            let Ok(key_auth) = std::str::from_utf8(&body) else { return text(StatusCode::BAD_REQUEST, "not text") };
            site.set_challenge(&token, Some(key_auth.trim()));
            return text(StatusCode::OK, "ok");
        }
        _ => {}
    }
    let service = query(&req, "service");
    let p = match site.proxy(service.as_deref()) {
        Ok(p) => p,
        Err(e) => return text(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let c = match parse_admin(req).await {
        Ok(c) => c,
        Err((status, msg)) => return text(status, &msg),
    };
    // A name in a body that does not exist is a bad body; in a query, a
    // missing resource.
    let changes = matches!(c, Control::SetReleases(_) | Control::SetWeights(_));
    match p.control(c).await {
        Ok(ControlOutput::Done) => text(StatusCode::OK, "ok"),
        Ok(ControlOutput::Metrics(m)) => text(StatusCode::OK, &m),
        Ok(ControlOutput::Releases(r)) => json_response(&r),
        Ok(ControlOutput::Drained(r)) => json_response(&r),
        Ok(ControlOutput::Stats(w)) => json_response(&w),
        Ok(ControlOutput::Totals(t)) => json_response(&t),
        Ok(ControlOutput::Backends(b)) => json_response(&b),
        Err(e) if changes || matches!(e, ControlError::BadRelease(_)) => text(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e) => text(StatusCode::NOT_FOUND, &e.to_string()),
    }
}
