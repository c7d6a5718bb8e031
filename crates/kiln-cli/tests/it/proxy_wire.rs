//! `kiln proxy` on the wire: hostile and odd requests (bad heads, chunked
//! bodies, pipelining, HTTP/1.0, HEAD, Expect: 100-continue), backends that
//! fail between head and body or answer before reading it, clients that
//! leave, and what the proxy logs of the requests it fails.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, json, kiln_cmd, wait_port, Conn};

use crate::proxy::*;

#[test]
fn hostile_requests_get_the_right_status_and_others_are_still_served() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_p, port, _) = proxy(&[format!("web=100@{a}")], &["--header-timeout-ms", "500"]);
    let raw = |bytes: &[u8]| raw_exchange(port, bytes);
    assert!(raw(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Bin: \x01\x7f\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(raw(b"NOT HTTP AT ALL\r\n\r\n").starts_with("HTTP/1.1 400"));
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000));
    assert!(raw(huge.as_bytes()).starts_with("HTTP/1.1 431"));
    // Slowloris: a partial request is dropped after the header timeout,
    // while a normal client is served meanwhile.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n").unwrap();
    assert_eq!(Conn::new(port).get("/").unwrap().0, 200);
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    assert!(t.elapsed() < Duration::from_secs(4), "the partial request was cut by the header timeout");
    assert_eq!(Conn::new(port).get("/").unwrap().0, 200);
}

#[test]
fn no_backend_is_503_a_timeout_is_504_and_headers_are_forwarded() {
    let _room = common::room("no-runc");
    let (_p, port, admin_port) = proxy(&[], &["--backend-timeout-ms", "300"]);
    let (code, _, body) = Conn::new(port).get("/").unwrap();
    assert_eq!(code, 503);
    assert!(String::from_utf8_lossy(&body).contains("no healthy backend"));
    let (_a, a) = backend("a", &[("LATENCY_MS", "1000")]);
    let spec = format!(r#"[{{"release":"web","weight":100,"backends":["{a}"]}}]"#);
    assert_eq!(admin(admin_port, "PUT", "/releases", &spec).0, 200);
    assert_eq!(Conn::new(port).get("/").unwrap().0, 504);
    // The backend timeout runs from the end of the request: an upload that
    // takes longer than it is not cut.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nConnection: close\r\n\r\nab").unwrap();
    for piece in [b"cd", b"ef"] {
        std::thread::sleep(Duration::from_millis(250));
        s.write_all(piece).unwrap();
    }
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.contains("\r\n\r\n6 "), "{out}");
    let (code, hs, _) = Conn::new(port)
        .send(
            "GET",
            "/healthz",
            &[("X-Request-Id", "abc-123"), ("Connection", "keep-alive, X-Drop"), ("X-Drop", "1")],
            b"",
        )
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(header(&hs, "x-request-id"), Some("abc-123"));
    // Bad admin input is refused and changes nothing.
    assert_eq!(admin(admin_port, "PUT", "/releases", "{not json").0, 400);
    assert_eq!(admin(admin_port, "PUT", "/weights", r#"{"nope":1}"#).0, 400);
    let (code, msg) = admin(admin_port, "POST", &format!("/drain?backend={a}&deadline_ms=soon"), "");
    assert_eq!(code, 400);
    assert!(msg.contains("deadline_ms=\"soon\""), "{msg}");
    assert_eq!(admin(admin_port, "GET", "/stats?release=web&window=-1", "").0, 400);
    let (code, msg) = admin(admin_port, "PUT", "/releases", r#"[{"release":"web","weight":1,"backend":[]}]"#);
    assert!(code == 400 && msg.contains("backend"), "{msg}");
    assert_eq!(json(&admin(admin_port, "GET", "/releases", "").1)[0]["release"], "web");
}

/// Writes `req` on a new connection and reads until the proxy closes it
/// (after a refused request, or a last request saying `Connection: close`).
fn raw_exchange(port: u16, req: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn chunked_bodies_pipelining_http10_head_and_expect_continue_pass_through() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_p, port, _) = proxy(&[format!("web=100@{a}")], &[]);
    // A chunked upload arrives whole: same length and checksum as sent straight to the backend.
    let chunked = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
    let via_proxy = raw_exchange(port, chunked);
    let direct = raw_exchange(a.port(), chunked);
    let body = |r: &str| r.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    assert!(via_proxy.starts_with("HTTP/1.1 200"), "{via_proxy}");
    assert!(body(&via_proxy).starts_with("31 "), "{via_proxy}");
    assert_eq!(body(&via_proxy), body(&direct));

    // Two pipelined requests on one connection get two answers, in order.
    let two = raw_exchange(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let first = two.find("ok\n").expect(&two);
    let second = two.find("demo-app a").expect(&two);
    assert!(first < second, "{two}");

    // HEAD: headers only, and the connection serves the next request.
    let head = raw_exchange(
        port,
        b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let parts: Vec<&str> = head.split("HTTP/1.1 ").filter(|p| !p.is_empty()).collect();
    assert_eq!(parts.len(), 2, "{head}");
    assert!(parts[0].ends_with("\r\n\r\n"), "no body after the HEAD response: {head}");
    assert!(parts[1].ends_with("demo-app a\n"), "{head}");

    // HTTP/1.0 without keep-alive: one answer, then the proxy closes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with("demo-app a\n"), "{out}");

    // Expect: 100-continue is answered by the proxy before the body is sent.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Ambiguous framing (request smuggling) is refused.
    let smuggle = raw_exchange(
        port,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
}

/// A backend that dies between its head and the end of its body (a host
/// lost in the middle of an answer): its small answers are held until
/// whole, so every GET is retried on the other backend and none is cut.
#[test]
fn a_backend_lost_between_its_head_and_its_body_costs_a_get_a_retry_not_a_failure() {
    let _room = common::room("no-runc");
    let (_g, good) = backend("good", &[]);
    let half = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let half_addr = half.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in half.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            seen2.fetch_add(1, Ordering::Relaxed);
            // The head and half the body, then gone.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhalf a");
        }
    });
    let (_p, port, admin_port) = proxy(&[format!("half=50@{half_addr}"), format!("good=50@{good}")], &[]);
    let mut c = Conn::new(port);
    for i in 0..200 {
        let (code, _, body) = c.get("/").unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(code, 200, "request {i}");
        assert!(String::from_utf8_lossy(&body).contains("good"), "request {i}: {}", String::from_utf8_lossy(&body));
    }
    assert!(seen.load(Ordering::Relaxed) >= 1, "the half backend was tried");
    let m = admin(admin_port, "GET", "/metrics", "").1;
    let retries = metric(&m, "kiln_proxy_retries_total{service=\"default\",release=\"half\"}").unwrap();
    assert!(retries >= 1, "retried away from the half answer: {m}");
}

#[test]
fn a_backend_that_answers_before_reading_the_body_is_heard() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_p, port, _) = proxy(&[format!("web=100@{a}")], &[]);
    // A 64 MiB upload the backend refuses by its headers: after 1 MiB the
    // client already has the backend's 413 (not a 502, and not only once
    // the whole body is sent), marked as ending the connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST /reject HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", 64u64 << 20).unwrap();
    s.write_all(&vec![b'x'; 1 << 20]).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("too large\n") {
        let n = s.read(&mut buf).expect("the answer comes while the body is still owed");
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("Connection: close\r\n"), "{out}");
    // The proxy then closes (after lingering for the unread body).
    let mut rest = Vec::new();
    let t = Instant::now();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty() && t.elapsed() < Duration::from_secs(4));
    assert_eq!(Conn::new(port).get("/").unwrap().0, 200, "the proxy goes on serving");
}

#[test]
fn a_client_that_leaves_a_slow_request_frees_the_backend_connection() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_p, port, admin_port) = proxy(&[format!("web=100@{a}")], &[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while established_to(a.port()) == 0 {
        assert!(Instant::now() < deadline, "the request never reached the backend");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(s);
    // Well before the backend would answer, the proxy lets go of it.
    let t = Instant::now();
    while established_to(a.port()) > 0 {
        assert!(t.elapsed() < Duration::from_millis(1500), "the backend connection was kept for a client that left");
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = admin(admin_port, "GET", "/metrics", "").1;
    let series = |class: &str| {
        format!("kiln_proxy_backend_requests_total{{service=\"default\",backend=\"{a}\",class=\"{class}\"}}")
    };
    assert_eq!(metric(&m, &series("4xx")), Some(1), "counted as a 499: {m}");
    assert_eq!(metric(&m, &series("5xx")), Some(0));
    assert!(m.contains(&format!("kiln_proxy_backend_in_flight{{service=\"default\",backend=\"{a}\"}} 0")), "{m}");
}

/// A request the proxy could not get answered is in its error log, naming
/// each backend tried and how it failed (as nginx's "upstream prematurely
/// closed connection" lines), with the request's id, and why it was not
/// tried again. The backend is not the demo app: a listener that closes
/// every connection it accepts without a word.
#[test]
fn a_failed_request_is_logged_naming_the_backends_tried_and_how_they_failed() {
    let _room = common::room("no-runc");
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closer.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in closer.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
        }
    });
    let dir = common::tempdir("proxy-errlog");
    let log = dir.join("stderr");
    let port = free_port();
    let _p = Proc(
        kiln_cmd()
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}"), "--release", &format!("web=1@{dead}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    let (code, _, _) = Conn::new(port).send("GET", "/x", &[("X-Request-Id", "req-77")], b"").unwrap();
    assert_eq!(code, 502);
    let (code, _, _) = Conn::new(port).send("POST", "/y", &[("X-Request-Id", "req-78")], b"body").unwrap();
    assert_eq!(code, 502);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("req-78") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let get = text.lines().find(|l| l.contains("request req-77")).unwrap_or_else(|| panic!("{text}"));
    // A GET is retried (twice, on the only backend there is), then given up.
    assert_eq!(get.matches(&format!("{dead} closed the connection before a whole response head")).count(), 3, "{get}");
    assert!(get.contains("answered 502") && get.contains("no retry left"), "{get}");
    let post = text.lines().find(|l| l.contains("request req-78")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(post.matches(&dead.to_string()).count(), 1, "a POST is not retried: {post}");
    assert!(post.contains("not safe to retry"), "{post}");
    std::fs::remove_dir_all(&dir).unwrap();
}
