//! `kiln proxy` over real sockets, with demo-app backends: weights,
//! stickiness, switching and killing under load, draining, streaming,
//! hostile requests.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, json, kiln_cmd, load, wait_port, Conn};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backend(version: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    assert!(bin.exists(), "run scripts/build-demo.sh first (scripts/test.sh does)");
    let port = free_port();
    let mut c = Command::new(bin);
    c.env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DEMO_VERSION", version)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let p = Proc(c.spawn().unwrap());
    wait_port(port);
    (p, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Starts `kiln proxy`; returns it, its port and its admin port. A port
/// picked free can be taken by another test before the proxy binds it (the
/// proxy then refuses it and exits): it is tried again on other ports.
fn proxy(releases: &[String], extra: &[&str]) -> (Proc, u16, u16) {
    for _ in 0..5 {
        let (port, admin) = (free_port(), free_port());
        let mut args = vec![
            "proxy".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
        ];
        for r in releases {
            args.push("--release".into());
            args.push(r.clone());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Proc(kiln_cmd().args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let up = |q: u16| TcpStream::connect(("127.0.0.1", q)).is_ok();
        while !(up(port) && up(admin)) && p.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A proxy that found its port taken exits at once: give it the
        // moment to, so that another process's listener is not taken for it.
        std::thread::sleep(Duration::from_millis(50));
        if up(port) && up(admin) && p.0.try_wait().unwrap().is_none() {
            return (p, port, admin);
        }
    }
    panic!("kiln proxy never started on a free port in 5 tries");
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn admin(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let (code, _, b) = Conn::new(port).send(method, path, &[], body.as_bytes()).unwrap();
    (code, String::from_utf8_lossy(&b).into_owned())
}

#[test]
fn weights_hold_exactly_and_cookie_stickiness_keeps_clients() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("stable", &[]);
    let (_b, b) = backend("canary", &[]);
    let (_p, port, _) =
        proxy(&[format!("stable=95@{a}"), format!("canary=5@{b}")], &["--release-header", "--sticky", "cookie"]);
    let mut c = Conn::new(port);
    let mut canary = 0;
    for _ in 0..10_000 {
        let (code, hs, body) = c.get("/").unwrap();
        assert_eq!(code, 200);
        let rel = header(&hs, "x-kiln-release").unwrap();
        assert_eq!(String::from_utf8_lossy(&body).trim(), format!("demo-app {rel}"));
        if rel == "canary" {
            canary += 1;
        }
    }
    assert!((400..=600).contains(&canary), "5% ± 1% of 10,000, got {canary}");
    // A client that got the canary once keeps it through its cookie.
    let mut sticky = Conn::new(port);
    for _ in 0..20 {
        sticky.send("GET", "/", &[("Cookie", "kiln_release=canary")], b"").unwrap();
    }
    for _ in 0..200 {
        let (_, hs, _) = sticky.send("GET", "/", &[("Cookie", "kiln_release=canary")], b"").unwrap();
        assert_eq!(header(&hs, "x-kiln-release"), Some("canary"));
    }
    let (_, hs, _) = Conn::new(port).get("/").unwrap();
    let cookie = header(&hs, "set-cookie").unwrap();
    assert!(cookie.starts_with("kiln_release="), "{cookie}");
}

#[test]
fn switching_all_traffic_twenty_times_under_load_fails_nothing() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("blue", &[]);
    let (_b, b) = backend("green", &[]);
    let (_p, port, admin_port) = proxy(&[format!("blue=100@{a}"), format!("green=0@{b}")], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, ok, bad) = load(port, 8, stop.clone());
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let body = if i % 2 == 0 { r#"{"blue":0,"green":100}"# } else { r#"{"blue":100,"green":0}"# };
        assert_eq!(admin(admin_port, "PUT", "/weights", body).0, 200);
    }
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert!(ok.load(Ordering::Relaxed) > 1000, "load ran: {}", ok.load(Ordering::Relaxed));
    assert_eq!(bad.load(Ordering::Relaxed), 0, "failed requests during switches");
}

#[test]
fn killing_a_backend_under_load_fails_no_idempotent_request() {
    let _room = common::room("no-runc");
    let (mut victim, a) = backend("one", &[]);
    let (_b, b) = backend("two", &[]);
    let (_p, port, admin_port) = proxy(&[format!("web=100@{a},{b}")], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, ok, bad) = load(port, 8, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert!(ok.load(Ordering::Relaxed) > 1000);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "failed requests after a backend was killed");
    let metrics = admin(admin_port, "GET", "/metrics", "").1;
    let labels = format!("{{service=\"default\",backend=\"{a}\"}}");
    assert!(metric(&metrics, &format!("kiln_proxy_backend_ejections_total{labels}")).unwrap() >= 1, "{metrics}");
    let retried = metric(&metrics, &format!("kiln_proxy_backend_retried_total{labels}")).unwrap();
    let retries = metric(&metrics, "kiln_proxy_retries_total{service=\"default\",release=\"web\"}").unwrap();
    assert!(retried >= 1 && retried == retries, "retries away from the killed backend: {metrics}");
}

/// Issue 8's defect, repeated until it would show: two single-backend
/// releases at 50/50, no active checks, 16 keep-alive clients, one backend
/// SIGKILLed. Before the fix a retry could go back to the dead backend (its
/// release had no other), and most rounds lost a request or two as 502.
#[test]
fn killing_one_of_two_single_backend_releases_fails_nothing_round_after_round() {
    let _room = common::room("no-runc");
    let mut total = 0;
    for round in 0..8 {
        let (mut victim, a) = backend("one", &[]);
        let (_b, b) = backend("two", &[]);
        let (_p, port, admin_port) = proxy(&[format!("one=50@{a}"), format!("two=50@{b}")], &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let (handles, ok, bad) = load(port, 16, stop.clone());
        std::thread::sleep(Duration::from_millis(250));
        victim.0.kill().unwrap(); // SIGKILL
        victim.0.wait().unwrap();
        std::thread::sleep(Duration::from_millis(400));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().for_each(|h| h.join().unwrap());
        let metrics = admin(admin_port, "GET", "/metrics", "").1;
        let five = metric(
            &metrics,
            &format!("kiln_proxy_backend_requests_total{{service=\"default\",backend=\"{a}\",class=\"5xx\"}}"),
        );
        assert_eq!(
            bad.load(Ordering::Relaxed),
            0,
            "round {round}: failed requests; 5xx on the killed backend: {five:?}"
        );
        assert!(ok.load(Ordering::Relaxed) > 200, "round {round}: the load ran");
        let retries = metric(&metrics, "kiln_proxy_retries_total{service=\"default\",release=\"one\"}").unwrap_or(0);
        total += retries;
    }
    assert!(total >= 8, "each round retried requests away from the killed backend: {total}");
}

#[test]
fn drain_waits_for_in_flight_requests_up_to_the_deadline() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_b, b) = backend("b", &[]);
    let (_p, port, admin_port) = proxy(&[format!("web=100@{a}"), format!("new=0@{b}")], &[]);
    // A slow request in flight on `a` when the drain starts.
    let slow = std::thread::spawn(move || Conn::new(port).get("/slow?ms=1200").map(|r| r.0));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(admin(admin_port, "PUT", "/weights", r#"{"web":0,"new":100}"#).0, 200);
    let t = Instant::now();
    let (code, report) = admin(admin_port, "POST", &format!("/drain?backend={a}&deadline_ms=5000"), "");
    assert_eq!(code, 200, "{report}");
    let r = json(&report);
    assert_eq!((r["finished"].as_u64(), r["cut"].as_u64()), (Some(1), Some(0)), "{report}");
    assert!(t.elapsed() >= Duration::from_millis(800), "the drain waited for the slow request");
    assert_eq!(slow.join().unwrap().unwrap(), 200);
    // A request longer than the deadline is reported as cut.
    let slow = std::thread::spawn(move || Conn::new(port).get("/slow?ms=1500").map(|r| r.0));
    std::thread::sleep(Duration::from_millis(200));
    let r = json(&admin(admin_port, "POST", &format!("/drain?backend={b}&deadline_ms=300"), "").1);
    assert_eq!((r["finished"].as_u64(), r["cut"].as_u64()), (Some(0), Some(1)), "{r}");
    let _ = slow.join();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn hundred_megabytes_stream_through_in_bounded_memory() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (p, port, _) = proxy(&[format!("web=100@{a}")], &[]);
    let pid = p.0.id();
    let size: u64 = 100 << 20;
    let before = rss_kib(pid);
    // Download.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /download?bytes={size} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut peak = 0;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
        if total % (8 << 20) < (1 << 16) {
            peak = peak.max(rss_kib(pid));
        }
    }
    assert!(total > size, "{total}");
    // Upload, streamed in chunks.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n").unwrap();
    let chunk = vec![b'u'; 1 << 16];
    let mut sent = 0;
    while sent < size {
        s.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
        if sent % (8 << 20) == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") && resp.contains(&format!("\r\n\r\n{size} ")), "{resp}");
    assert!(peak < before + 30 * 1024, "RSS grew from {before} KiB to {peak} KiB while streaming 2 x 100 MiB");
}

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

/// Opens an upgraded (WebSocket-style) connection through the proxy.
fn open_ws(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during the handshake: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

#[test]
fn drain_keeps_a_websocket_until_it_closes_or_the_deadline_cuts_it() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_p, port, admin_port) = proxy(&[format!("web=100@{a}")], &[]);
    // Closed by the client during the drain: counted as finished.
    let mut ws = open_ws(port);
    assert_eq!(echo(&mut ws, b"ping").unwrap(), b"ping");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(echo(&mut ws, b"still here").unwrap(), b"still here", "a draining tunnel keeps working");
        drop(ws);
    });
    let r = json(&admin(admin_port, "POST", &format!("/drain?backend={a}&deadline_ms=3000"), "").1);
    closer.join().unwrap();
    assert_eq!((r["finished"].as_u64(), r["cut"].as_u64()), (Some(1), Some(0)), "{r}");

    // Still open at the deadline: cut, and reported as cut.
    let (_b, b) = backend("b", &[]);
    let spec = format!(r#"[{{"release":"web","weight":100,"backends":["{b}"]}}]"#);
    assert_eq!(admin(admin_port, "PUT", "/releases", &spec).0, 200);
    let mut ws = open_ws(port);
    assert_eq!(echo(&mut ws, b"hello").unwrap(), b"hello");
    let t = Instant::now();
    let r = json(&admin(admin_port, "POST", &format!("/drain?backend={b}&deadline_ms=400"), "").1);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!((r["finished"].as_u64(), r["cut"].as_u64()), (Some(0), Some(1)), "{r}");
    let mut buf = [0u8; 16];
    let closed = matches!(ws.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the cut tunnel is closed");
}

#[test]
fn active_checks_keep_unhealthy_backends_out_and_header_stickiness_holds() {
    let _room = common::room("no-runc");
    let (_sick, sick) = backend("sick", &[("FAIL_HEALTH", "1")]);
    let (_good, good) = backend("good", &[]);
    let (_c, canary) = backend("canary", &[]);
    let (_p, port, admin_port) = proxy(
        &[format!("stable=90@{sick},{good}"), format!("canary=10@{canary}")],
        &["--health-path", "/healthz", "--health-interval-ms", "100", "--sticky", "header:x-user", "--release-header"],
    );
    // After a few checks, the failing backend is marked unhealthy and the others healthy.
    std::thread::sleep(Duration::from_millis(600));
    let metrics = admin(admin_port, "GET", "/metrics", "").1;
    assert!(
        metrics.contains(&format!("kiln_proxy_backend_healthy{{service=\"default\",backend=\"{sick}\"}} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("kiln_proxy_backend_healthy{{service=\"default\",backend=\"{good}\"}} 1")),
        "{metrics}"
    );
    let mut c = Conn::new(port);
    for _ in 0..200 {
        let (code, _, body) = c.get("/").unwrap();
        assert_eq!(code, 200);
        assert_ne!(String::from_utf8_lossy(&body).trim(), "demo-app sick", "the failing backend never gets traffic");
    }
    // The same x-user always lands on the same release; different users spread.
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let u = format!("user-{user}");
        let first =
            header(&c.send("GET", "/", &[("x-user", &u)], b"").unwrap().1, "x-kiln-release").unwrap().to_owned();
        for _ in 0..10 {
            let (_, hs, _) = c.send("GET", "/", &[("x-user", &u)], b"").unwrap();
            assert_eq!(header(&hs, "x-kiln-release"), Some(first.as_str()), "{u}");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "forty users reach both releases: {seen:?}");
}

/// Established connections from this host to `port` (the proxy's side of
/// its backend connections), from /proc/net/tcp.
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && f[2].ends_with(&format!(":{port:04X}"))
        })
        .count()
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn drain_closes_that_backends_idle_connections_and_cuts_a_stalled_body_at_the_deadline() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (_b, b) = backend("b", &[]);
    let (_p, port, admin_port) = proxy(&[format!("x=50@{a}"), format!("y=50@{b}")], &["--sticky", "cookie"]);
    // Several keep-alive connections to each backend (concurrent slow
    // requests need one each), then idle in the pools.
    let warm: Vec<_> = ["x", "y"]
        .iter()
        .flat_map(|r| std::iter::repeat_n(*r, 4))
        .map(|release| {
            std::thread::spawn(move || {
                let cookie = format!("kiln_release={release}");
                Conn::new(port).send("GET", "/slow?ms=300", &[("Cookie", &cookie)], b"").unwrap().0
            })
        })
        .collect();
    assert!(warm.into_iter().all(|t| t.join().unwrap() == 200));
    let idle = |addr: SocketAddr| {
        let m = admin(admin_port, "GET", "/metrics", "").1;
        metric(&m, &format!("kiln_proxy_backend_idle_connections{{service=\"default\",backend=\"{addr}\"}}")).unwrap()
    };
    assert_eq!((idle(a), idle(b)), (4, 4));
    assert_eq!((established_to(a.port()), established_to(b.port())), (4, 4));
    let mut c = Conn::new(port);

    // A large download from `a` whose client stops reading: its body stays in flight.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let size: u64 = 1 << 30;
    write!(stalled, "GET /download?bytes={size} HTTP/1.1\r\nHost: t\r\nCookie: kiln_release=x\r\n\r\n").unwrap();
    let mut first = [0u8; 4096];
    stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = stalled.read(&mut first).unwrap() as u64;
    assert!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    let r = json(&admin(admin_port, "POST", &format!("/drain?backend={a}&deadline_ms=400"), "").1);
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert_eq!((r["finished"].as_u64(), r["cut"].as_u64()), (Some(0), Some(1)), "{r}");
    // The cut body ends early for the client.
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stalled.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < size, "the stalled download was cut, not finished ({got} bytes)");
    // Within a pool sweep, no connection to `a` is left; `b`'s stay.
    let deadline = Instant::now() + Duration::from_secs(3);
    while established_to(a.port()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(established_to(a.port()), 0, "idle connections to the drained backend are closed");
    assert_eq!(idle(a), 0);
    assert!(established_to(b.port()) >= 1 && idle(b) >= 1, "the other backend's idle connections stay");
    let m = admin(admin_port, "GET", "/metrics", "").1;
    let series = format!("kiln_proxy_backend_drained_total{{service=\"default\",backend=\"{a}\",outcome=\"cut\"}}");
    assert_eq!(metric(&m, &series), Some(1), "{m}");
    // Traffic goes on through `b`, and per-backend status counts are kept.
    assert_eq!(c.send("GET", "/", &[("Cookie", "kiln_release=x")], b"").unwrap().0, 200);
    let m = admin(admin_port, "GET", "/metrics", "").1;
    let ok_b = format!("kiln_proxy_backend_requests_total{{service=\"default\",backend=\"{b}\",class=\"2xx\"}}");
    assert_eq!(metric(&m, &ok_b), Some(5), "{m}");
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

#[test]
fn a_releases_file_is_read_at_start_and_again_on_sighup_and_a_bad_one_changes_nothing() {
    let _room = common::room("no-runc");
    let (_blue, blue) = backend("blue", &[]);
    let (_green, green) = backend("green", &[]);
    let dir = std::env::temp_dir().join(format!("kiln-releases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("releases.json");
    let spec = |addr: SocketAddr| format!(r#"[{{"release": "web", "weight": 100, "backends": ["{addr}"]}}]"#);
    std::fs::write(&file, spec(blue)).unwrap();
    let (p, port, _) = proxy(&[], &["--releases-file", file.to_str().unwrap()]);
    let body = || String::from_utf8(Conn::new(port).get("/").unwrap().2).unwrap();
    assert_eq!(body(), "demo-app blue\n");
    let hup = || assert!(Command::new("kill").args(["-HUP", &p.0.id().to_string()]).status().unwrap().success());
    let until = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while body() != want {
            assert!(Instant::now() < deadline, "never switched to {want:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    std::fs::write(&file, spec(green)).unwrap();
    hup();
    until("demo-app green\n");
    // A typo is refused on reload; the proxy keeps serving what it had.
    std::fs::write(&file, r#"[{"release": "web", "wieght": 100, "backends": []}]"#).unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(body(), "demo-app green\n");
    // At start, a bad file is an error naming the file, line and field.
    let out = kiln_cmd()
        .args(["proxy", "--listen", "127.0.0.1:0", "--releases-file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("releases.json: line 1, column") && err.contains("wieght"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_lets_requests_in_flight_finish_before_the_proxy_exits() {
    let _room = common::room("no-runc");
    let (_a, a) = backend("a", &[]);
    let (mut p, port, _) = proxy(&[format!("web=100@{a}")], &[]);
    let slow = std::thread::spawn(move || Conn::new(port).get("/slow?ms=800").map(|r| r.0));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &p.0.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "new connections are refused while stopping");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(slow.join().unwrap().unwrap(), 200, "the request in flight was answered");
    let status = p.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(t.elapsed() >= Duration::from_millis(400), "the proxy waited for it");
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

#[test]
fn bad_proxy_flags_are_refused_naming_the_flag() {
    let _room = common::room("no-runc");
    for (flag, value) in [
        ("--health-path", "healthz"),
        ("--workers", "0"),
        ("--healthy-threshold", "0"),
        ("--release", "web=1@localhost"),
    ] {
        let out = kiln_cmd().args(["proxy", "--listen", "127.0.0.1:0", flag, value]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(flag) && err.contains(value), "{flag} {value}: {err}");
    }
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
