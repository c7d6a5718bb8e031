//! The demo app over real sockets: version, health, failure knobs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct App {
    child: Child,
    port: u16,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &[(&str, &str)]) -> App {
    // The app picks its own free port and says which: a port picked here and
    // freed could be taken by another test's app before this one binds it.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo-app"));
    cmd.env("HOST", "127.0.0.1").env("PORT", "0").stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("demo-app did not say where it listens: {line:?}"));
    App { child, port }
}

/// One request on a keep-alive connection; returns (status, body).
fn get(r: &mut BufReader<TcpStream>, path: &str) -> (u16, String) {
    // One write: pieces of a request would wait on each other's ACKs.
    r.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (code, String::from_utf8(body).unwrap())
}

fn conn(app: &App) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(("127.0.0.1", app.port)).unwrap())
}

#[test]
fn reports_version_and_health_on_one_connection() {
    let app = start(&[("DEMO_VERSION", "7.1")]);
    let mut c = conn(&app);
    assert_eq!(get(&mut c, "/"), (200, "demo-app 7.1\n".into()));
    assert_eq!(get(&mut c, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&mut c, "/nope").0, 404);
}

#[test]
fn fail_rate_is_exact_and_health_can_fail() {
    let app = start(&[("FAIL_RATE", "0.25"), ("FAIL_HEALTH", "1")]);
    let mut c = conn(&app);
    let failures = (0..100).filter(|_| get(&mut c, "/").0 == 500).count();
    assert_eq!(failures, 25);
    assert_eq!(get(&mut c, "/healthz").0, 503);
}

#[test]
fn latency_is_added_and_crash_after_exits() {
    let mut app = start(&[("LATENCY_MS", "150"), ("CRASH_AFTER", "2")]);
    let mut c = conn(&app);
    let t = Instant::now();
    assert_eq!(get(&mut c, "/").0, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(get(&mut c, "/healthz").0, 200);
    let status = app.child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
}

#[test]
fn uploads_and_downloads_stream() {
    let app = start(&[]);
    let mut c = conn(&app);
    let (code, body) = get(&mut c, "/download?bytes=300000");
    assert_eq!((code, body.len()), (200, 300_000));
    let data = vec![b'z'; 200_000];
    write!(c.get_mut(), "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", data.len()).unwrap();
    c.get_mut().write_all(&data).unwrap();
    let mut status = String::new();
    c.read_line(&mut status).unwrap();
    assert!(status.contains("200"), "{status}");
}
