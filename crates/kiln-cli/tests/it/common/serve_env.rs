//! A kiln home with a demo-app service and its `kiln serve`, for the
//! tests of releases and healing: real runc instances behind the
//! service's own `kiln proxy`, driven through the real `kiln` binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{free_port, json, kiln_cmd, load, tempdir, Conn};

/// Releases use real instances and timing windows: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Env {
    pub dir: PathBuf,
    pub home: PathBuf,
    pub port: u16,
    pub service: String,
    pub serve: Option<Child>,
    /// `kiln serve --tcp 127.0.0.1:PORT` when set.
    pub tcp: Option<u16>,
    /// busybox httpd instead of the demo app.
    pub busybox: bool,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_serve();
        for d in fs::read_dir(self.home.join("proxies")).into_iter().flatten().flatten() {
            if let Ok(v) = fs::read_to_string(d.path().join("proxy.json")) {
                if let Some(pid) = json(&v)["pid"].as_i64() {
                    // SAFETY: a signal to a proxy this test's kiln serve started.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
        let ps = self.kiln(&["ps", "--json"]);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&ps.stdout) {
            for r in v["instances"].as_array().into_iter().flatten() {
                self.kiln(&["rm", "--force", r["id"].as_str().unwrap_or_default()]);
            }
        }
    }
}

impl Env {
    /// A kiln.toml with the demo image and `[service.web]` (whose listen
    /// address is added), baked at 1.0.0; `kiln serve` started.
    pub fn new(what: &str, service: &str) -> Self {
        let mut env = Env::bare(what, service);
        env.start_serve(None);
        env
    }

    /// The files and home, no `kiln serve` yet.
    pub fn bare(what: &str, service: &str) -> Self {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
        assert!(demo.exists(), "run scripts/build-demo.sh first (scripts/test.sh does)");
        let (dir, home) = (tempdir(&format!("rel-{what}")), tempdir(&format!("rel-{what}-home")));
        fs::copy(&demo, dir.join("demo-app")).unwrap();
        let port = free_port();
        let service = format!("[service.web]\nimage = \"web\"\nenv = {{ HOST = \"127.0.0.1\" }}\nlisten = \"127.0.0.1:{port}\"\n{service}");
        let env = Env { dir, home, port, service, serve: None, tcp: None, busybox: false };
        env.version("1.0.0", "");
        env
    }

    /// Like [`Env::bare`] with busybox httpd (a server kiln did not
    /// write, started by `sh -c "exec …"`) as the service's image; its
    /// index page answers `version`.
    pub fn bare_busybox(what: &str, service: &str) -> Self {
        let (dir, home) = (tempdir(&format!("rel-{what}")), tempdir(&format!("rel-{what}-home")));
        super::busybox_httpd_rootfs(&dir.join("busybox-httpd.tar"));
        let port = free_port();
        let service = format!("[service.web]\nimage = \"web\"\nlisten = \"127.0.0.1:{port}\"\n{service}");
        let env = Env { dir, home, port, service, serve: None, tcp: None, busybox: true };
        env.version("1.0.0", "");
        env
    }

    /// A busybox httpd service with `kiln serve` started.
    pub fn busybox(what: &str, service: &str) -> Self {
        let mut env = Env::bare_busybox(what, service);
        env.start_serve(None);
        env
    }

    pub fn version(&self, v: &str, extra_env: &str) {
        let image = if self.busybox {
            let www = self.dir.join(format!("www-{v}"));
            fs::create_dir_all(&www).unwrap();
            fs::write(www.join("index.html"), format!("{v}\n")).unwrap();
            super::busybox_image(v)
        } else {
            super::demo_image(v, extra_env)
        };
        fs::write(self.dir.join("kiln.toml"), format!("{image}\n{}", self.service)).unwrap();
    }

    pub fn kiln(&self, args: &[&str]) -> Output {
        kiln_cmd().args(args).current_dir(&self.dir).env("KILN_HOME", &self.home).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kiln(args);
        assert!(
            out.status.success(),
            "kiln {args:?}: {}\n{}\nserve log: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.serve_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kiln secret set NAME` with `value` on its stdin.
    pub fn secret_set(&self, name: &str, value: &[u8]) {
        use std::io::Write;
        let mut c = kiln_cmd()
            .args(["secret", "set", name])
            .current_dir(&self.dir)
            .env("KILN_HOME", &self.home)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(value).unwrap();
        assert!(c.wait().unwrap().success());
    }

    /// `GET path` on kiln serve's unix socket: (head, body).
    pub fn api_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.home.join("serve.sock")).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    pub fn serve_log(&self) -> String {
        fs::read_to_string(self.home.join("serve-test.log")).unwrap_or_default()
    }

    pub fn start_serve(&mut self, crash_at: Option<&str>) {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.home.join("serve-test.log")).unwrap();
        let mut c = kiln_cmd();
        c.args(["serve", "-f", "kiln.toml"])
            .current_dir(&self.dir)
            .env("KILN_HOME", &self.home)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(p) = crash_at {
            c.env("KILN_CRASH_AT", p);
        }
        if let Some(p) = self.tcp {
            c.args(["--tcp", &format!("127.0.0.1:{p}")]);
        }
        self.serve = Some(c.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.kiln(&["status", "--json"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "kiln serve never answered: {}", self.serve_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kiln serve --upgrade` (with `extra_env`): returns the successor
    /// once the running kiln serve has exited by itself, successfully.
    pub fn spawn_upgrade(&self, extra_env: &[(&str, &str)]) -> Child {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.home.join("serve-test.log")).unwrap();
        kiln_cmd()
            .args(["serve", "--upgrade", "-f", "kiln.toml"])
            .current_dir(&self.dir)
            .env("KILN_HOME", &self.home)
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Upgrades `kiln serve` in place: the successor takes over and the
    /// predecessor exits 0 on its own.
    pub fn upgrade_serve(&mut self) {
        let next = self.spawn_upgrade(&[]);
        let mut old = self.serve.take().expect("a kiln serve runs");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = old.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the old kiln serve never handed over: {}", self.serve_log());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "the old kiln serve exited {status}: {}", self.serve_log());
        self.serve = Some(next);
    }

    /// Whether the kiln serve this test started still runs.
    pub fn serve_running(&mut self) -> bool {
        self.serve.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The service's load balancer process, from its record.
    pub fn proxy_pid(&self) -> i32 {
        let v = fs::read_to_string(self.home.join("proxies/web/proxy.json")).unwrap();
        json(&v)["pid"].as_i64().unwrap() as i32
    }

    pub fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `kiln deploy`: exit status and output.
    pub fn deploy(&self) -> (i32, String) {
        let out = self.kiln(&["deploy"]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn status(&self) -> serde_json::Value {
        let all = json(&self.ok(&["status", "--json"]));
        all["services"].as_array().unwrap().iter().find(|s| s["service"] == "web").cloned().unwrap_or_default()
    }

    /// Live instances by release.
    pub fn releases_running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.status()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["release"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    pub fn wait_for(&self, what: &str, mut f: impl FnMut(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#}\n{}", self.serve_log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The version the load balancer serves, asked `n` times.
    pub fn versions(&self, n: usize) -> Vec<String> {
        let mut c = Conn::new(self.port);
        (0..n).map(|_| String::from_utf8(c.get("/").unwrap().2).unwrap().trim().to_owned()).collect()
    }
}

/// Runs `f` under `threads` clients of keep-alive GETs; returns (ok, failed).
pub fn under_load(port: u16, f: impl FnOnce()) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, ok, bad) = load(port, 6, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    f();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    handles.into_iter().for_each(|h| h.join().unwrap());
    (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed))
}

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
