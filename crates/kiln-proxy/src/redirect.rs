//! The plain-HTTP listener of an HTTPS service (`redirect_http`): every
//! request is answered `308 Permanent Redirect` to the same host, path and
//! query on `https://`, so a method and body are kept; except ACME's
//! http-01 checks (`/.well-known/acme-challenge/TOKEN`), answered with the
//! key authorization `kiln serve` published for the token. A hyper server
//! on the admin thread: redirects are not the hot path.
//!
//! For: sending plain-HTTP clients to HTTPS. Must never: forward a
//! request to a backend.

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use http_body_util::BodyExt;

use crate::{text, Body};

/// Where a request to `host` (its `Host` header, port and all) for
/// `path_and_query` is sent, for an HTTPS listener on `https_port`. `None`:
/// the host is not a host name or address a Location can carry.
pub fn location(host: &str, path_and_query: &str, https_port: u16) -> Option<String> {
    // The Host header's own port is the plain one; the HTTPS port replaces it.
    let name = match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next()?),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n).to_owned(),
    };
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if !ok {
        return None;
    }
    let port = if https_port == 443 { String::new() } else { format!(":{https_port}") };
    let path = if path_and_query.starts_with('/') { path_and_query } else { "/" };
    Some(format!("https://{name}{port}{path}"))
}

/// Where ACME's http-01 checks look (RFC 8555 §8.3).
const CHALLENGES: &str = "/.well-known/acme-challenge/";

fn answer(req: &Request<Incoming>, https_port: u16, site: &crate::Site) -> Response<Body> {
    if let Some(token) = req.uri().path().strip_prefix(CHALLENGES) {
        return match site.challenge(token) {
            Some(key_auth) => {
                // Exactly the key authorization (text() would add a newline).
                let body = http_body_util::Full::new(bytes::Bytes::from(key_auth)).map_err(|never| match never {});
                let mut r = Response::new(body.boxed());
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            }
            None => text(StatusCode::NOT_FOUND, "no such challenge"),
        };
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().host());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match host.and_then(|h| location(h, path, https_port)) {
        Some(to) => {
            let mut r = text(StatusCode::PERMANENT_REDIRECT, &to);
            if let Ok(v) = HeaderValue::from_str(&to) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        None => text(StatusCode::BAD_REQUEST, "a request needs a Host header naming a host"),
    }
}

/// Serves redirects on `listener` until the process exits.
pub async fn serve_redirects(listener: TcpListener, https_port: u16, site: std::sync::Arc<crate::Site>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let site = site.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(answer(&req, https_port, &site)) }
            });
            let mut server = hyper::server::conn::http1::Builder::new();
            server.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            let _ = server.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_keep_host_path_and_query_and_take_the_https_port() {
        assert_eq!(location("shop.test", "/a?b=1", 443).as_deref(), Some("https://shop.test/a?b=1"));
        assert_eq!(location("shop.test:8080", "/", 8443).as_deref(), Some("https://shop.test:8443/"));
        assert_eq!(location("[::1]:80", "/x", 443).as_deref(), Some("https://[::1]/x"));
        assert_eq!(location("127.0.0.1:80", "*", 443).as_deref(), Some("https://127.0.0.1/"));
        assert_eq!(location("evil.test/@x", "/", 443), None);
        assert_eq!(location("", "/", 443), None);
    }
}
