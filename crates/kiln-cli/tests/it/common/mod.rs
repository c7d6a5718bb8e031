//! Helpers shared by the integration tests: temp dirs, running the real
//! `kiln` binary, and a busybox rootfs made from Debian's busybox-static.
#![allow(dead_code)]

pub mod pki;
pub mod serve_env;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tests of one room run side by side, never beside another room's: each
/// file that needs runc is a room of its own (as when it was a test binary
/// of its own, its instances, ports and timing windows alone on the
/// machine), and the files that need no runc share one.
pub fn room(name: &'static str) -> Room {
    let mut s = ROOM.lock().unwrap_or_else(|e| e.into_inner());
    while s.0.is_some_and(|r| r != name) {
        s = ROOM_FREED.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    s.0 = Some(name);
    s.1 += 1;
    Room(())
}

/// The room in use and how many tests are in it.
static ROOM: std::sync::Mutex<(Option<&'static str>, usize)> = std::sync::Mutex::new((None, 0));
static ROOM_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// A test's place in its room, left when the test ends (or panics).
pub struct Room(());

impl Drop for Room {
    fn drop(&mut self) {
        let mut s = ROOM.lock().unwrap_or_else(|e| e.into_inner());
        s.1 -= 1;
        if s.1 == 0 {
            s.0 = None;
            ROOM_FREED.notify_all();
        }
    }
}

pub fn tempdir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "kiln-it-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    p
}

pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// The key-encryption key file every kiln these tests start is given
/// (outside every KILN_HOME, mode 0600), made once per test process.
pub fn test_kek() -> &'static Path {
    static KEK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEK.get_or_init(|| {
        use std::os::unix::fs::OpenOptionsExt;
        let p = std::env::temp_dir().join(format!("kiln-it-kek-{}", std::process::id()));
        let _ = fs::remove_file(&p);
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).unwrap();
        let mut seed = [0u8; 32];
        fs::File::open("/dev/urandom").unwrap().read_exact(&mut seed).unwrap();
        writeln!(f, "{}", seed.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap();
        p
    })
}

/// The kiln binary as a command, with the tests' key-encryption key and
/// never a passphrase prompt.
pub fn kiln_cmd() -> Command {
    let mut c = Command::new(kiln_bin());
    c.env("KILN_KEY_FILE", test_kek()).env("KILN_NO_PROMPT", "1").env_remove("KILN_PASSPHRASE");
    c
}

/// Runs kiln with `home` as KILN_HOME in `cwd`, with SOURCE_DATE_EPOCH unset.
pub fn kiln(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    kiln_cmd()
        .args(args)
        .current_dir(cwd)
        .env("KILN_HOME", home)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run kiln")
}

/// Starts kiln with `home` as KILN_HOME in `cwd`, its output piped: a
/// command followed while the test acts (kills a leader, say).
pub fn kiln_spawn(home: &Path, cwd: &Path, args: &[&str]) -> std::process::Child {
    kiln_cmd()
        .args(args)
        .current_dir(cwd)
        .env("KILN_HOME", home)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln")
}

/// Runs kiln and insists on success; returns stdout.
pub fn kiln_ok(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = kiln(home, cwd, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kiln, insists on failure; returns stderr.
pub fn kiln_err(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let out = kiln(home, cwd, args);
    assert!(!out.status.success(), "kiln {args:?} should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr).unwrap()
}

/// `kiln bake --json` → the digests of the baked images, in order.
pub fn bake_digests(home: &Path, cwd: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["bake", "--json"];
    args.extend_from_slice(extra);
    let out = kiln_ok(home, cwd, &args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad json {e}: {out}"));
    v.as_array().unwrap().iter().map(|r| r["digest"].as_str().unwrap().to_owned()).collect()
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out =
        Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const APPLETS: &[&str] = &[
    "sh", "echo", "mkdir", "rm", "ln", "cat", "touch", "chmod", "ls", "true", "sleep", "id", "stat", "hostname", "wc",
    "grep", "printenv",
];

/// A GNU tar header owned by root, with a fixed mtime.
pub fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(size);
    h
}

/// Writes a rootfs tarball with Debian's static busybox and a few applet
/// links, plus /etc/motd, at `path`.
pub fn busybox_rootfs(path: &Path) {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp"] {
        b.append_data(&mut tar_header(tar::EntryType::Directory, 0o755, 0), format!("{d}/"), std::io::empty()).unwrap();
    }
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o755, busybox.len() as u64), "bin/busybox", &busybox[..])
        .unwrap();
    for a in APPLETS {
        b.append_link(&mut tar_header(tar::EntryType::Symlink, 0o777, 0), format!("bin/{a}"), "busybox").unwrap();
    }
    let motd = b"welcome\n";
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o644, motd.len() as u64), "etc/motd", &motd[..]).unwrap();
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// Writes a rootfs tarball for a web server kiln did not write: Debian's
/// static busybox (its `httpd` applet) with `sh`, an empty `/www` for the
/// pages (copied in by the image's `copy`) and a CGI script
/// `/www/cgi-bin/slow` whose answer is close-delimited (no length).
pub fn busybox_httpd_rootfs(path: &Path) {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut b = tar::Builder::new(Vec::new());
    for d in ["bin", "etc", "tmp", "www", "www/cgi-bin"] {
        b.append_data(&mut tar_header(tar::EntryType::Directory, 0o755, 0), format!("{d}/"), std::io::empty()).unwrap();
    }
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o755, busybox.len() as u64), "bin/busybox", &busybox[..])
        .unwrap();
    for a in ["sh", "httpd", "cat", "echo", "sleep", "printenv"] {
        b.append_link(&mut tar_header(tar::EntryType::Symlink, 0o777, 0), format!("bin/{a}"), "busybox").unwrap();
    }
    let cgi = b"#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"cgi $QUERY_STRING\"\n";
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o755, cgi.len() as u64), "www/cgi-bin/echo", &cgi[..])
        .unwrap();
    // What the instance was given: an env variable, and a secret as env
    // and as its file.
    let env = b"#!/bin/sh\necho \"cgi env asked by $REMOTE_ADDR\" >&2\necho 'Content-Type: text/plain'\necho\necho \"mode=$MODE db=$DB_PASSWORD file=$(cat /run/secrets/db 2>/dev/null)\"\n";
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o755, env.len() as u64), "www/cgi-bin/env", &env[..])
        .unwrap();
    // A line added to /data/hits (a volume, when given) per request; the
    // lines counted so far. Shell builtins only.
    let hits = b"#!/bin/sh\necho hit >> /data/hits || exit 1\nn=0\nwhile read l; do n=$((n+1)); done < /data/hits\necho 'Content-Type: text/plain'\necho\necho \"hits=$n\"\n";
    b.append_data(&mut tar_header(tar::EntryType::Regular, 0o755, hits.len() as u64), "www/cgi-bin/hits", &hits[..])
        .unwrap();
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// `[image.web]`: busybox httpd serving `www/` (its `index.html` says
/// `version`), started through a shell that execs it, as many real images
/// start. Starts with a blank line.
pub fn busybox_image(version: &str) -> String {
    format!(
        "\n[image.web]\nfrom = \"rootfs:busybox-httpd.tar\"\nversion = \"{version}\"\n\
         copy = [{{ src = \"www-{version}/index.html\", dest = \"/www/index.html\" }}]\n\
         entrypoint = [\"/bin/sh\", \"-c\", \"exec /bin/busybox httpd -f -p 127.0.0.1:$PORT -h /www\"]\n"
    )
}

/// The uncompressed entries (path, is-whiteout) of a gzip layer blob.
pub fn layer_paths(blob: &Path) -> Vec<String> {
    let f = fs::File::open(blob).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {e}: {s}"))
}

/// A port no one listens on, for a test to give to what it starts. From
/// below the kernel's ephemeral range (32768 and up), where kiln's own
/// picks for instances land: otherwise a port handed to one test can be
/// an instance's of another by the time it is bound (a CI run saw a load
/// balancer fail with "Address already in use"). Handed out once per run.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() * 97) % SPAN;
    for _ in 0..SPAN {
        let port = (LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        // Free on every address, not only loopback.
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Status, headers (lowercased names) and body of a response.
pub type Reply = (u16, Vec<(String, String)>, Vec<u8>);

/// A keep-alive HTTP/1.1 client connection. Like any well-behaved
/// client, it opens a new connection after a `Connection: close` answer
/// (a stopping load balancer says so) instead of sending on the old one.
pub struct Conn {
    r: BufReader<TcpStream>,
    addr: std::net::SocketAddr,
    closed: bool,
}

impl Conn {
    pub fn new(port: u16) -> Self {
        Conn::at(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }
    /// A connection to `addr` (another loopback address than 127.0.0.1).
    pub fn at(addr: std::net::SocketAddr) -> Self {
        Conn::try_at(addr).unwrap()
    }
    pub fn try_at(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn { r: BufReader::new(s), addr, closed: false })
    }
    /// Sends a request; returns status, headers (lowercased names) and body.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Reply> {
        if self.closed {
            *self = Conn::at(self.addr);
        }
        let reply = self.exchange(method, path, headers, body)?;
        self.closed = reply.1.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        Ok(reply)
    }
    fn exchange(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Reply> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        // One write: head and body in two would wait out Nagle and the
        // peer's delayed ACK (40 ms) on every request with a body.
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.r.get_mut().write_all(&bytes)?;
        let mut status = String::new();
        if self.r.read_line(&mut status)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        let code = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(status.clone()))?;
        let mut hs = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let k = k.to_ascii_lowercase();
                if k == "content-length" {
                    len = v.trim().parse().unwrap_or(0);
                }
                hs.push((k, v.trim().to_owned()));
            }
        }
        let chunked = hs.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        if !chunked {
            let mut body = vec![0; len];
            self.r.read_exact(&mut body)?;
            return Ok((code, hs, body));
        }
        // A close-delimited answer of a backend, re-framed in chunks by
        // the load balancer.
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            self.r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    self.r.read_line(&mut t)?;
                    if t.trim_end().is_empty() {
                        break;
                    }
                }
                return Ok((code, hs, body));
            }
            let start = body.len();
            body.resize(start + n, 0);
            self.r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            self.r.read_exact(&mut crlf)?;
        }
    }
    pub fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        self.send("GET", path, &[], b"")
    }
}

/// Runs `threads` keep-alive clients doing GETs until `stop`; counts
/// successes and failures (anything but 200, or an I/O error).
pub fn load(
    port: u16,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let handles = (0..threads)
        .map(|_| {
            let (ok, bad, stop) = (ok.clone(), bad.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(port);
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match c.get("/") {
                        Ok((200, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        Ok((code, _, body)) => {
                            eprintln!("load: {code} {}", String::from_utf8_lossy(&body));
                            bad.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("load: {e}");
                            bad.fetch_add(1, Ordering::Relaxed);
                            c = Conn::new(port);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    (handles, ok, bad)
}

/// `[image.web]`: the demo app alone in a scratch image at `version`
/// (also its `DEMO_VERSION`), with `extra_env` (`, KEY = "value"` pairs)
/// added to its env. Starts with a blank line; eight lines in all.
pub fn demo_image(version: &str, extra_env: &str) -> String {
    format!(
        "\n[image.web]\nfrom = \"scratch\"\nversion = \"{version}\"\n\
         copy = [{{ src = \"demo-app\", dest = \"/demo-app\", mode = \"0755\" }}]\n\
         entrypoint = [\"/demo-app\"]\nenv = {{ DEMO_VERSION = \"{version}\"{extra_env} }}\n\
         user = \"65534:65534\"\n"
    )
}

/// Debian's `docker-registry` on 127.0.0.1:`port`, its data under `dir`,
/// with `extra` YAML appended to its `http:` section and after (TLS, auth).
pub fn docker_registry(dir: &Path, port: u16, extra: &str) -> std::process::Child {
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
        dir.join("data").display()
    );
    fs::write(dir.join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .args(["serve", dir.join("config.yml").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    wait_port(port);
    child
}

/// `promtool check metrics` finds nothing to say about `body`.
pub fn promtool_accepts(body: &str) {
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    std::io::Write::write_all(&mut p.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{body}");
}

/// A webhook receiver on `port`: answers 500 to the first `fail` requests,
/// then 200; sends each (headers, body) it got.
pub fn receiver(listener: std::net::TcpListener, fail: usize) -> std::sync::mpsc::Receiver<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut c) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let k = std::io::Read::read(&mut c, &mut chunk).unwrap_or(0);
                if k == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..k]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let len = h
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if b.len() >= len {
                        break (h.to_owned(), b[..len].to_owned());
                    }
                }
            };
            let status = if n < fail { "500 Internal Server Error" } else { "200 OK" };
            let _ = std::io::Write::write_fmt(
                &mut c,
                format_args!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            );
            let _ = tx.send((head, body));
        }
    });
    rx
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}
