//! Unit tests of [`super`].

use super::*;

fn fwd_with(sticky: Option<&'static str>) -> Forward<'static> {
    Forward {
        client_ip: std::net::IpAddr::from([10, 0, 0, 7]),
        https: false,
        sticky_header: sticky,
        generated_id: &|| RequestId::generate(7, 1),
    }
}

fn req(input: &[u8]) -> (Result<Option<RequestInfo>, HeadError>, String) {
    let mut out = Vec::new();
    let r = request(input, &fwd_with(Some("x-user")), &mut out);
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn a_request_head_is_rewritten_for_the_backend() {
    let input = b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Drop\r\n\
X-Drop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\
Cookie: a=1; kiln_release=green ; b=2\r\nX-User: u1\r\nX-App: kept\r\n\r\nBODY";
    let (r, out) = req(input);
    let info = r.unwrap().unwrap();
    assert_eq!(info.head_len, input.len() - 4);
    assert_eq!(info.framing, Framing::None);
    assert!(info.keep_alive && info.idempotent && !info.upgrade && !info.http10);
    let (s, e) = info.sticky_cookie.unwrap();
    assert_eq!(&input[s..e], b"green");
    assert_eq!(info.sticky_hash, Some(fnv(b"u1")));
    assert!(out.starts_with("GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\n"), "{out}");
    for gone in ["X-Drop", "Keep-Alive", "TE:", "Connection", "https"] {
        assert!(!out.contains(gone), "{gone} in {out}");
    }
    assert!(out.contains("X-App: kept\r\n"));
    assert!(out.contains("X-Forwarded-For: 1.2.3.4, 10.0.0.7\r\n"), "{out}");
    assert!(out.contains("X-Forwarded-Proto: http\r\n"));
    assert!(out.contains("X-Forwarded-Host: example.com\r\n"));
    assert!(out.contains(&format!("X-Request-Id: {}\r\n", String::from_utf8_lossy(info.request_id.as_bytes()))));
    assert_eq!(info.request_id.as_bytes().len(), 24);
    assert!(out.ends_with("\r\n\r\n"));
}

#[test]
fn framing_is_unambiguous_or_refused() {
    let ok = |s: &str| req(s.as_bytes()).0.unwrap().unwrap().framing;
    assert_eq!(ok("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"), Framing::Length(12));
    assert_eq!(ok("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"), Framing::Length(5));
    assert_eq!(ok("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), Framing::Chunked);
    assert_eq!(ok("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), Framing::None);
    let bad = |s: &str| req(s.as_bytes()).0.unwrap_err();
    assert!(matches!(
        bad("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        HeadError::Malformed(_)
    ));
    assert!(matches!(
        bad("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HeadError::Malformed(_)
    ));
    assert!(matches!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), HeadError::Malformed(_)));
    assert!(matches!(bad("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), HeadError::Malformed(_)));
    assert!(matches!(bad("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"), HeadError::Malformed(_)));
    assert_eq!(bad("CONNECT a:443 HTTP/1.1\r\n\r\n"), HeadError::Method);
    assert!(matches!(bad("NOT HTTP AT ALL\r\n\r\n"), HeadError::Malformed(_)));
    assert!(matches!(bad("GET / HTTP/1.1\r\nX-Bin: \x01\x7f\r\n\r\n"), HeadError::Malformed(_)));
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(MAX_HEADERS + 1));
    assert_eq!(bad(&many), HeadError::TooLarge);
    assert_eq!(req(b"GET / HTTP/1.1\r\nHost: x\r\n").0, Ok(None), "incomplete");
    let utf8 = "GET HTTX/5\u{150} HTTP/1.0\r\n\r\n";
    assert!(matches!(req(utf8.as_bytes()).0, Ok(Some(_))), "found by fuzzing: no panic on a non-ASCII target");
}

#[test]
fn http10_upgrade_and_expect() {
    let (r, out) = req(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let info = r.unwrap().unwrap();
    assert!(info.http10 && !info.keep_alive);
    assert!(out.starts_with("GET / HTTP/1.0\r\n"));
    let info = req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0.unwrap().unwrap();
    assert!(info.keep_alive);
    let (r, out) = req(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Request-Id: abc\r\n\r\n");
    let info = r.unwrap().unwrap();
    assert!(info.upgrade);
    assert_eq!(info.request_id.as_bytes(), b"abc");
    assert!(out.contains("Connection: upgrade\r\nUpgrade: websocket\r\n"), "{out}");
    let (r, out) = req(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(r.unwrap().unwrap().expect_continue);
    assert!(!out.contains("Expect"), "the proxy answers 100-continue itself: {out}");
    let info = req(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.unwrap().unwrap();
    assert!(!info.keep_alive);
}

fn resp(input: &[u8], reply: Reply<'_>) -> (ResponseInfo, String) {
    let mut out = Vec::new();
    let info = response(input, &reply, &mut out).unwrap().unwrap();
    (info, String::from_utf8(out).unwrap())
}

const REPLY: Reply<'static> = Reply {
    request_id: b"rid",
    release: Some("blue"),
    set_cookie: None,
    head_method: false,
    close: false,
    http10_keep_alive: false,
    chunked_ok: true,
};

#[test]
fn a_close_delimited_body_is_rechunked_for_an_http11_client_and_its_connection_kept() {
    let (info, out) = resp(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", REPLY);
    assert_eq!((info.framing, info.reusable, info.close, info.rechunk), (Framing::UntilClose, false, false, true));
    assert!(out.contains("Transfer-Encoding: chunked\r\n") && !out.contains("Connection: close"), "{out}");
    // An HTTP/1.0 client cannot read chunks: the connection ends the body.
    let (info, out) = resp(b"HTTP/1.0 200 OK\r\n\r\n", Reply { chunked_ok: false, ..REPLY });
    assert_eq!((info.close, info.rechunk), (true, false));
    assert!(out.contains("Connection: close\r\n") && !out.contains("chunked"), "{out}");
    // A coding other than chunked stays close-delimited.
    let (info, _) = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", REPLY);
    assert_eq!((info.close, info.rechunk), (true, false));
    // Bodiless answers are not re-framed.
    let (info, out) = resp(b"HTTP/1.0 204 No Content\r\n\r\n", REPLY);
    assert!(!info.rechunk && !out.contains("chunked"), "{out}");
}

#[test]
fn a_response_head_is_rewritten_for_the_client() {
    let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
X-Request-Id: other\r\nX-App: 1\r\n\r\nhello";
    let (info, out) = resp(input, REPLY);
    assert_eq!((info.status, info.framing, info.reusable), (200, Framing::Length(5), true));
    assert_eq!(info.head_len, input.len() - 5);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\nX-Request-Id: rid\r\nX-Kiln-Release: blue\r\n\r\n"
    );
    let (info, out) = resp(
        b"HTTP/1.0 200 OK\r\n\r\n",
        Reply { set_cookie: Some("green"), close: true, release: None, chunked_ok: false, ..REPLY },
    );
    assert_eq!((info.framing, info.reusable), (Framing::UntilClose, false));
    assert!(out.contains("Set-Cookie: kiln_release=green; Path=/; HttpOnly; SameSite=Lax\r\nConnection: close\r\n"));
    let (info, _) = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", REPLY);
    assert_eq!((info.framing, info.reusable), (Framing::Chunked, false));
    let (info, _) = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Reply { head_method: true, ..REPLY });
    assert_eq!(info.framing, Framing::None);
    let (info, _) = resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", REPLY);
    assert_eq!(info.framing, Framing::None);
    let (info, out) =
        resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", REPLY);
    assert_eq!(info.status, 101);
    assert!(out.contains("Upgrade: websocket\r\n") && out.contains("Connection: upgrade\r\n"), "{out}");
    let mut out = Vec::new();
    assert!(response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", &REPLY, &mut out).is_err());
    assert!(response(b"SSH-2.0-OpenSSH\r\n\r\n", &REPLY, &mut out).is_err());
    assert!(response(b"HTTP/1.1 011 Odd\r\n\r\n", &REPLY, &mut out).is_err(), "found by fuzzing");
    assert!(response(b"HTTP/1.1 600 Odd\r\n\r\n", &REPLY, &mut out).is_err());
}

#[test]
fn a_head_can_be_made_to_close_its_connection() {
    let (_, out) =
        resp(b"HTTP/1.0 413 Too Large\r\nContent-Length: 0\r\n\r\n", Reply { http10_keep_alive: true, ..REPLY });
    let mut head = out.into_bytes();
    close_after(&mut head);
    let head = String::from_utf8(head).unwrap();
    assert!(head.ends_with("X-Kiln-Release: blue\r\nConnection: close\r\n\r\n"), "{head}");
    assert!(!head.contains("keep-alive"));
}

#[test]
fn chunked_bodies_end_where_they_end() {
    let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let mut c = Chunked::default();
    assert_eq!(c.feed(body), Ok(body.len() - 4));
    assert_eq!(c, Chunked::Done);
    // Byte by byte gives the same end.
    let mut c = Chunked::default();
    let mut used = 0;
    for b in body.iter() {
        used += c.feed(std::slice::from_ref(b)).unwrap();
        if c == Chunked::Done {
            break;
        }
    }
    assert_eq!(used, body.len() - 4);
    for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"5\nhello\r\n", b"ffffffffffffffffff\r\n"] {
        assert!(Chunked::default().feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn local_replies_and_generated_ids() {
    let mut out = Vec::new();
    local(&mut out, 503, "no healthy backend", Some(b"id1"), false);
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(s.contains("Content-Length: 19\r\n") && s.ends_with("\r\n\r\nno healthy backend\n"), "{s}");
    let (a, b) = (RequestId::generate(1, 9), RequestId::generate(2, 9));
    assert_ne!(a, b);
    assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
}
