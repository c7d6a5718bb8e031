//! demo-app: a tiny HTTP/1.1 server that kiln's tests and examples release.
//!
//! std only, so it links statically and runs in a `scratch` image. It says
//! which version it is and can be told, through environment variables, to
//! misbehave the ways a bad release does:
//!
//! | variable      | effect                                                        |
//! |---------------|---------------------------------------------------------------|
//! | `PORT`        | port to listen on (default 8080)                              |
//! | `HOST`        | address to bind (default 0.0.0.0)                             |
//! | `DEMO_VERSION`| version reported by `/` (default: the crate version)          |
//! | `FAIL_RATE`   | share of `/` requests answered 500, 0.0–1.0, spread exactly   |
//! | `LATENCY_MS`  | added to every `/` response                                   |
//! | `FAIL_HEALTH` | `1`: `/healthz` answers 503                                   |
//! | `CRASH_AFTER` | exit(3) after this many requests                              |
//!
//! On SIGTERM or SIGINT it finishes the requests in flight (up to 5 s) and
//! exits 0; as PID 1 in a container it would otherwise ignore SIGTERM.
//!
//! Endpoints: `/` (version), `/healthz`, `/slow?ms=N`, `/download?bytes=N`
//! (streams N bytes), `/upload` (reads the body, answers its length and a
//! checksum), `/reject` (answers 413 without reading the body and drops the
//! connection), `/ws` (with `Upgrade`: 101, then echoes bytes), `POST
//! /order` (prints `order <body>` to its log before answering, so a test
//! can count what reached the application), `POST /hang` (from then on it
//! accepts connections and reads requests but never answers: a hung
//! server that has not exited).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Config {
    version: String,
    fail_rate: f64,
    latency: Duration,
    fail_health: bool,
    crash_after: Option<u64>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| {
            eprintln!("demo-app: ignoring {name}={v:?}: not a valid value");
            default
        }),
        _ => default,
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);
static HUNG: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Waits for a stop signal, then for in-flight requests (at most 5 s), then exits.
fn watch_for_stop() {
    // SAFETY: `on_stop` is an `extern "C" fn(c_int)` that only stores to an
    // atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
    std::thread::spawn(|| {
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("demo-app stopping");
        std::process::exit(0);
    });
}

fn main() {
    watch_for_stop();
    let cfg = Arc::new(Config {
        version: env_or("DEMO_VERSION", env!("CARGO_PKG_VERSION").to_owned()),
        fail_rate: env_or("FAIL_RATE", 0.0f64).clamp(0.0, 1.0),
        latency: Duration::from_millis(env_or("LATENCY_MS", 0u64)),
        fail_health: env_or("FAIL_HEALTH", 0u8) == 1,
        crash_after: std::env::var("CRASH_AFTER").ok().and_then(|v| v.parse().ok()),
    });
    let addr = format!("{}:{}", env_or("HOST", "0.0.0.0".to_owned()), env_or("PORT", 8080u16));
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-app: cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    // The address bound (PORT=0 picks a free port; this line says which).
    let bound = listener.local_addr().map(|a| a.to_string()).unwrap_or(addr);
    println!("demo-app {} listening on {bound}", cfg.version);
    let counter = Arc::new(AtomicU64::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (cfg, counter) = (cfg.clone(), counter.clone());
        std::thread::spawn(move || {
            let _ = serve(conn, &cfg, &counter);
        });
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    keep_alive: bool,
    content_length: u64,
    chunked: bool,
    upgrade: bool,
}

fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m.to_owned(), t.to_owned(), v.to_owned()),
        _ => return Err(io::Error::other("bad request line")),
    };
    let mut keep_alive = version == "HTTP/1.1";
    let (mut content_length, mut chunked, mut upgrade) = (0, false, false);
    let mut total = 0;
    loop {
        let mut h = String::new();
        let n = r.read_line(&mut h)?;
        total += n;
        if n == 0 || total > 64 * 1024 {
            return Err(io::Error::other("headers too long or truncated"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((name, value)) = h.split_once(':') else { continue };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse().map_err(|_| io::Error::other("bad content-length"))?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "upgrade" => upgrade = true,
            "connection" if value.eq_ignore_ascii_case("close") => keep_alive = false,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => keep_alive = true,
            _ => {}
        }
    }
    let (path, query) =
        target.split_once('?').map_or((target.clone(), String::new()), |(p, q)| (p.to_owned(), q.to_owned()));
    Ok(Some(Request { method, path, query, keep_alive, content_length, chunked, upgrade }))
}

fn param(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Reads the request body, returning its length and a simple checksum.
fn read_body(r: &mut BufReader<TcpStream>, req: &Request) -> io::Result<(u64, u64)> {
    let mut sum = 0u64;
    let mut len = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut take = |r: &mut BufReader<TcpStream>, mut n: u64| -> io::Result<()> {
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = r.read(&mut buf[..want])?;
            if got == 0 {
                return Err(io::Error::other("body truncated"));
            }
            for b in &buf[..got] {
                sum = sum.wrapping_mul(31).wrapping_add(u64::from(*b));
            }
            len += got as u64;
            n -= got as u64;
        }
        Ok(())
    };
    if req.chunked {
        loop {
            let mut size_line = String::new();
            r.read_line(&mut size_line)?;
            let size = u64::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            take(r, size)?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else {
        take(r, req.content_length)?;
    }
    Ok((len, sum))
}

/// One response, in one write; a HEAD request gets the head only.
/// `req` is None when the request could not be read (the connection then closes).
fn respond(w: &mut TcpStream, status: &str, body: &str, version: &str, req: Option<&Request>) -> io::Result<()> {
    let conn = if req.is_some_and(|r| r.keep_alive) { "keep-alive" } else { "close" };
    let len = body.len();
    let body = if req.is_some_and(|r| r.method == "HEAD") { "" } else { body };
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nX-Demo-Version: {version}\r\nConnection: {conn}\r\n\r\n{body}"
    );
    w.write_all(msg.as_bytes())
}

fn serve(conn: TcpStream, cfg: &Config, counter: &AtomicU64) -> io::Result<()> {
    let _ = conn.set_nodelay(true);
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    loop {
        let req = match read_request(&mut r) {
            Ok(Some(req)) => req,
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = respond(&mut w, "400 Bad Request", &format!("{e}\n"), &cfg.version, None);
                return Ok(());
            }
        };
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        let result = handle(&req, n, &mut r, &mut w, cfg);
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        result?;
        if cfg.crash_after.is_some_and(|c| n >= c) {
            eprintln!("demo-app: crashing after {n} requests, as told");
            std::process::exit(3);
        }
        if !req.keep_alive || STOP.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

fn handle(req: &Request, n: u64, r: &mut BufReader<TcpStream>, w: &mut TcpStream, cfg: &Config) -> io::Result<()> {
    let v = &cfg.version;
    if HUNG.load(Ordering::SeqCst) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/hang") => {
            HUNG.store(true, Ordering::SeqCst);
            respond(w, "200 OK", "hanging from now on\n", v, Some(req))?;
        }
        ("POST", "/order") => {
            let mut body = Vec::new();
            if req.content_length > 0 {
                r.take(req.content_length.min(1024)).read_to_end(&mut body)?;
            }
            let id = String::from_utf8_lossy(&body).trim().to_owned();
            println!("order {id}");
            respond(w, "201 Created", &format!("ok {id}\n"), v, Some(req))?;
        }
        ("GET" | "HEAD", "/healthz") if cfg.fail_health => {
            respond(w, "503 Service Unavailable", "unhealthy\n", v, Some(req))?
        }
        ("GET" | "HEAD", "/healthz") => respond(w, "200 OK", "ok\n", v, Some(req))?,
        // A test fixture: what the instance got as DEMO_SECRET (kiln test
        // gives placeholders, never the stored value).
        ("GET", "/secret") => {
            let s = std::env::var("DEMO_SECRET").unwrap_or_default();
            respond(w, "200 OK", &format!("secret: {s}\n"), v, Some(req))?
        }
        ("GET", "/") => {
            if !cfg.latency.is_zero() {
                std::thread::sleep(cfg.latency);
            }
            // Request n fails when floor(n * rate) steps up: exactly
            // `rate` of requests, evenly spread.
            let fail = (n as f64 * cfg.fail_rate).floor() > ((n - 1) as f64 * cfg.fail_rate).floor();
            if fail {
                respond(w, "500 Internal Server Error", &format!("demo-app {v} failing on purpose\n"), v, Some(req))?;
            } else {
                respond(w, "200 OK", &format!("demo-app {v}\n"), v, Some(req))?;
            }
        }
        ("GET", "/ws") if req.upgrade => {
            // An upgrade that echoes raw bytes: enough to exercise a
            // proxy's tunnels (no WebSocket framing is parsed).
            write!(w, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")?;
            w.flush()?;
            let mut buf = [0u8; 4096];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                w.write_all(&buf[..n])?;
            }
        }
        ("GET", "/slow") => {
            std::thread::sleep(Duration::from_millis(param(&req.query, "ms").unwrap_or(1000)));
            respond(w, "200 OK", "slow done\n", v, Some(req))?;
        }
        ("GET", "/download") => {
            let total = param(&req.query, "bytes").unwrap_or(0);
            let conn = if req.keep_alive { "keep-alive" } else { "close" };
            write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\nX-Demo-Version: {v}\r\nConnection: {conn}\r\n\r\n")?;
            let chunk = vec![b'k'; 64 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                w.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            w.flush()?;
        }
        ("POST" | "PUT", "/reject") => {
            // Answers before reading the body, then drops the connection
            // (with the body unread, the kernel resets it): what a server
            // refusing an upload by its headers does.
            w.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 10\r\nConnection: close\r\n\r\ntoo large\n",
            )?;
            return Err(io::Error::other("upload refused unread"));
        }
        ("POST" | "PUT", "/upload") => {
            let (len, sum) = read_body(r, req)?;
            respond(w, "200 OK", &format!("{len} {sum}\n"), v, Some(req))?;
        }
        _ => {
            if req.content_length > 0 || req.chunked {
                read_body(r, req)?;
            }
            respond(w, "404 Not Found", "not found\n", v, Some(req))?;
        }
    }
    Ok(())
}
