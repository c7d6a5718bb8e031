//! `kiln proxy` over real sockets, with demo-app backends: weights,
//! stickiness, switching and killing under load, draining, streaming,
//! hostile requests.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, json, kiln_cmd, load, wait_port, Conn};

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn backend(version: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
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
pub(crate) fn proxy(releases: &[String], extra: &[&str]) -> (Proc, u16, u16) {
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

pub(crate) fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(crate) fn admin(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
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

pub(crate) fn rss_kib(pid: u32) -> u64 {
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

/// Opens an upgraded (WebSocket-style) connection through the proxy.
pub(crate) fn open_ws(port: u16) -> TcpStream {
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

pub(crate) fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
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
pub(crate) fn established_to(port: u16) -> usize {
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

pub(crate) fn metric(text: &str, series: &str) -> Option<u64> {
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
