//! `kiln run` and friends end to end, as root, with Debian's runc: images
//! baked by kiln itself from the demo app and a busybox rootfs.

use crate::common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const IMAGES: &str = r#"
[image.web]
from = "scratch"
copy = [{ src = "demo-app", dest = "/demo-app" }]
entrypoint = ["/demo-app"]
user = "65534:65534"
env = { HOST = "127.0.0.1" }

[image.probe]
from = "rootfs:rootfs.tar"
user = "1000:1000"
entrypoint = ["/bin/sh", "-c", "touch /x 2>/tmp/err; echo write-rc=$?; cat /tmp/err; echo ok > /tmp/t && echo tmp-ok; echo uid=$(id -u); echo host=$(hostname); echo port=$PORT; sleep 600"]

[image.writer]
from = "rootfs:rootfs.tar"
entrypoint = ["/bin/sh", "-c", "echo previous=$(cat /data/who 2>/dev/null || echo none); hostname > /data/who; echo wrote; sleep 600"]

[image.secretive]
from = "rootfs:rootfs.tar"
user = "1000:1000"
entrypoint = ["/bin/sh", "-c", "v=$(cat /run/secrets/api_key); [ \"$v\" = \"$API_KEY\" ] && echo env-matches-file; echo mode=$(stat -c %a /run/secrets/api_key); echo len=${#v}; sleep 600"]

[image.counter]
from = "rootfs:rootfs.tar"
entrypoint = ["/bin/sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo line $i; sleep 0.01; done"]

[image.stubborn]
from = "rootfs:rootfs.tar"
entrypoint = ["/bin/sleep", "600"]

[service.db]
image = "writer"
volumes = { data = "/data" }

[service.vault]
image = "secretive"
secrets = [{ name = "api_key", env = "API_KEY" }]
memory = "32M"
"#;

struct Env {
    home: PathBuf,
    dir: PathBuf,
}

impl Env {
    fn new(what: &str) -> Self {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
        assert!(
            demo.exists(),
            "examples/hello/bin/demo-app is missing: run scripts/build-demo.sh (scripts/test.sh does)"
        );
        let dir = tempdir(&format!("run-{what}"));
        let home = tempdir(&format!("run-{what}-home"));
        fs::copy(&demo, dir.join("demo-app")).unwrap();
        busybox_rootfs(&dir.join("rootfs.tar"));
        fs::write(dir.join("kiln.toml"), IMAGES).unwrap();
        kiln_ok(&home, &dir, &["bake"]);
        Env { home, dir }
    }
    fn ok(&self, args: &[&str]) -> String {
        kiln_ok(&self.home, &self.dir, args)
    }
    fn err(&self, args: &[&str]) -> String {
        kiln_err(&self.home, &self.dir, args)
    }
    /// Starts an instance; returns (id, port).
    fn run(&self, args: &[&str]) -> (String, u16) {
        let mut full = vec!["run", "--json"];
        full.extend_from_slice(args);
        let v = json(&self.ok(&full));
        (v["id"].as_str().unwrap().to_owned(), v["port"].as_u64().unwrap() as u16)
    }
    fn logs(&self, id: &str) -> Vec<String> {
        self.ok(&["logs", "--instance", id, "--json"])
            .lines()
            .map(|l| json(l)["line"].as_str().unwrap().to_owned())
            .collect()
    }
    fn wait_log(&self, id: &str, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let lines = self.logs(id);
            if lines.iter().any(|l| l.contains(needle)) {
                return lines;
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?} from {id}: {lines:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    fn state(&self, id: &str) -> String {
        let ps = json(&self.ok(&["ps", "--all", "--json"]));
        let r = ps["instances"].as_array().unwrap().iter().find(|r| r["id"] == id).cloned().unwrap_or_default();
        r["state"].as_str().unwrap_or("gone").to_owned()
    }
    fn shim_pid(&self, id: &str) -> (i32, i32) {
        let v = json(&fs::read_to_string(self.home.join("instances").join(id).join("shim.json")).unwrap());
        (v["shim_pid"].as_i64().unwrap() as i32, v["container_pid"].as_i64().unwrap() as i32)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Leave nothing running: remove every instance this test started.
        if let Ok(out) = kiln_cmd().args(["ps", "--all", "--json"]).env("KILN_HOME", &self.home).output() {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                for r in v["instances"].as_array().cloned().unwrap_or_default() {
                    let id = r["id"].as_str().unwrap_or_default();
                    let _ = kiln_cmd().args(["rm", "--force", id]).env("KILN_HOME", &self.home).output();
                }
            }
        }
        let _ = fs::remove_dir_all(kiln::runtime::run_dir(&self.home));
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir_all(&self.home);
    }
}

fn http_get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[test]
fn instances_have_a_read_only_root_tmpfs_tmp_and_their_own_identity() {
    let _room = common::room("run");
    let env = Env::new("ro");
    let (id, port) = env.run(&["probe", "--memory", "64M", "--pids", "50", "--cpus", "0.5"]);
    let lines = env.wait_log(&id, "port=");
    let all = lines.join("\n");
    assert!(all.contains("write-rc=1") && all.contains("Read-only file system"), "{all}");
    assert!(all.contains("tmp-ok"), "{all}");
    assert!(all.contains("uid=1000"), "{all}");
    assert!(all.contains(&format!("host={id}")), "{all}");
    assert!(all.contains(&format!("port={port}")), "{all}");
    assert_eq!(env.state(&id), "running");
    // Limits reach the kernel (cgroup v1 here; v2 has one unified file tree).
    let cg = |ctl: &str, file: &str| {
        let v1 = format!("/sys/fs/cgroup/{ctl}/kiln/{id}/{file}");
        fs::read_to_string(&v1).unwrap_or_else(|e| panic!("{v1}: {e}")).trim().to_owned()
    };
    assert_eq!(cg("memory", "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(cg("pids", "pids.max"), "50");
    assert_eq!(cg("cpu", "cpu.cfs_quota_us"), "50000");
    // No way in: kiln has no exec or shell command.
    for cmd in ["exec", "shell", "attach"] {
        assert!(env.err(&[cmd, &id]).contains("unrecognized subcommand"));
    }
}

#[test]
fn the_demo_app_serves_and_stops_gracefully_within_the_grace_period() {
    let _room = common::room("run");
    let env = Env::new("web");
    let (id, port) = env.run(&["web:b1"]);
    // Running is not listening yet: the app binds its port a moment after
    // it starts (seen once in a full run with another test's runc beside it).
    wait_port(port);
    assert_eq!(http_get(port, "/", Duration::from_secs(2)), Some((200, "demo-app 0.1.0\n".into())));
    let t = Instant::now();
    env.ok(&["stop", &id]);
    assert!(t.elapsed() < Duration::from_secs(3), "a graceful app stops at once: {:?}", t.elapsed());
    let ps = json(&env.ok(&["ps", "--all", "--json"]));
    let r = &ps["instances"][0];
    assert_eq!((r["state"].as_str(), r["code"].as_i64()), (Some("exited"), Some(0)), "{r}");
    assert!(http_get(port, "/", Duration::from_millis(300)).is_none());

    // PID 1 that ignores SIGTERM: the grace period, then SIGKILL.
    let (id, _) = env.run(&["stubborn", "--stop-timeout", "1"]);
    let t = Instant::now();
    env.ok(&["stop", &id]);
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(8), "{took:?}");
    let ps = json(&env.ok(&["ps", "--all", "--json"]));
    let r = ps["instances"].as_array().unwrap().iter().find(|r| r["id"] == id.as_str()).unwrap().clone();
    assert_eq!(r["signal"].as_i64(), Some(9), "{r}");
}

#[test]
fn a_volume_outlives_its_instance_and_is_listed() {
    let _room = common::room("run");
    let env = Env::new("vol");
    // Once from the [service.db] table, once from flags alone: the same volume.
    let (first, _) = env.run(&["--service", "db"]);
    env.wait_log(&first, "wrote");
    env.ok(&["rm", "--force", &first]);
    let (second, _) = env.run(&["writer", "--name", "db", "--volume", "data:/data"]);
    let lines = env.wait_log(&second, "wrote");
    assert!(lines.iter().any(|l| l == &format!("previous={first}")), "{lines:?}");
    let vols = json(&env.ok(&["volumes", "--json"]));
    let v = &vols[0];
    assert_eq!((v["service"].as_str(), v["name"].as_str()), (Some("db"), Some("data")));
    assert!(v["bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["users"], serde_json::json!([second]));
    // The removed instance's logs are still there.
    assert!(env.logs(&first).iter().any(|l| l == "wrote"));
}

#[test]
fn secrets_reach_the_instance_only_at_run_secrets_and_nowhere_in_clear() {
    let _room = common::room("run");
    let env = Env::new("secret");
    let value = "s3cr3t-Value-7f3a9c";
    let mut child = kiln_cmd()
        .args(["secret", "set", "api_key"])
        .env("KILN_HOME", &env.home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{value}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(env.ok(&["secret", "ls"]).trim(), "api_key");

    let (id, _) = env.run(&["--service", "vault"]);
    let lines = env.wait_log(&id, "len=");
    let all = lines.join("\n");
    assert!(all.contains("env-matches-file"), "{all}");
    assert!(all.contains("mode=400"), "{all}");
    assert!(all.contains(&format!("len={}", value.len())), "the trailing newline is dropped: {all}");

    // Not in the store, bundles, logs, records or any output, in clear.
    fn grep(dir: &Path, needle: &[u8], hits: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                grep(&p, needle, hits);
            } else if ft.is_file() && fs::read(&p).unwrap_or_default().windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    let mut hits = Vec::new();
    grep(&env.home, value.as_bytes(), &mut hits);
    assert!(hits.is_empty(), "secret in clear under KILN_HOME: {hits:?}");
    for args in [
        &["ps", "--all", "--json"][..],
        &["logs", "--json"],
        &["secret", "ls", "--json"],
        &["inspect", "secretive:b1", "--json"],
    ] {
        assert!(!env.ok(args).contains(value), "{args:?} printed the secret");
    }
    // A missing secret: a clear error and no instance.
    let e = env.err(&["run", "secretive", "--secret", "nope"]);
    assert!(e.contains("no secret named \"nope\""), "{e}");
    let e = env.err(&["run", "--service", "nosuch"]);
    assert!(e.contains("kiln.toml: service.nosuch: no such service"), "{e}");
}

/// kiln with exactly the key-encryption key settings in `vars` (none of
/// the tests' own), `stdin` on its standard input.
fn kiln_with(env: &Env, vars: &[(&str, &str)], args: &[&str], stdin: &str) -> (bool, String) {
    let mut c = std::process::Command::new(kiln_bin());
    c.args(args)
        .current_dir(&env.dir)
        .env("KILN_HOME", &env.home)
        .env("KILN_NO_PROMPT", "1")
        .env_remove("KILN_KEY_FILE")
        .env_remove("KILN_PASSPHRASE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .envs(vars.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A key file of 32 random bytes (hex) with `mode`.
fn key_file(path: &Path, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let r = std::process::Command::new("openssl")
        .args(["rand", "-hex", "-out", path.to_str().unwrap(), "32"])
        .output()
        .unwrap();
    assert!(r.status.success());
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn keys_at_rest_are_sealed_by_a_key_from_outside_kiln_home_and_rotate_to_another() {
    let _room = common::room("run");
    let env = Env::new("kek");
    let keys = tempdir("kek-keys");
    let value = "s3cr3t-Value-7f3a9c";
    // No key-encryption key: refused, nothing written.
    let (ok, text) = kiln_with(&env, &[], &["secret", "set", "api_key"], value);
    assert!(!ok && text.contains("no key-encryption key") && text.contains("KILN_KEY_FILE"), "{text}");
    assert!(!env.home.join("secrets/api_key.enc").exists());
    // A key file others can read, or one inside KILN_HOME: refused, naming it.
    let loose = key_file(&keys.join("loose"), 0o644);
    let (ok, text) = kiln_with(&env, &[("KILN_KEY_FILE", &loose)], &["secret", "set", "api_key"], value);
    assert!(!ok && text.contains(&format!("{loose}: mode 0644 lets other users read it")), "{text}");
    let inside = key_file(&env.home.join("my.key"), 0o600);
    let (ok, text) = kiln_with(&env, &[("KILN_KEY_FILE", &inside)], &["secret", "set", "api_key"], value);
    assert!(!ok && text.contains("inside KILN_HOME"), "{text}");
    fs::remove_file(&inside).unwrap();

    // Sealed by K1; nothing in KILN_HOME opens it.
    let k1 = key_file(&keys.join("k1"), 0o600);
    let with_k1 = [("KILN_KEY_FILE", k1.as_str())];
    let (ok, text) = kiln_with(&env, &with_k1, &["secret", "set", "api_key"], value);
    assert!(ok, "{text}");
    let (ok, text) = kiln_with(&env, &with_k1, &["key", "generate"], "");
    assert!(ok, "{text}");
    for store in ["secrets", "keys/private"] {
        let names: Vec<String> = fs::read_dir(env.home.join(store))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"dek".to_owned()) && !names.contains(&"key".to_owned()), "{store}: {names:?}");
    }
    // A backup of KILN_HOME with another key: opens nothing.
    let k2 = key_file(&keys.join("k2"), 0o600);
    let with_k2 = [("KILN_KEY_FILE", k2.as_str())];
    let (ok, text) = kiln_with(&env, &with_k2, &["secret", "set", "other"], "x");
    assert!(!ok && text.contains("sealed with another key-encryption key (a key file)"), "{text}");
    let (ok, text) = kiln_with(&env, &with_k2, &["secret", "rotate-key"], "");
    assert!(!ok && text.contains("--old-key-file"), "the new key alone cannot re-seal: {text}");

    // Rotation to K2: the secret and the signing key, each with the old key.
    let (ok, text) = kiln_with(&env, &with_k2, &["secret", "rotate-key", "--old-key-file", &k1], "");
    assert!(ok && text.contains("1 secret(s) re-encrypted") && text.contains(&k2), "{text}");
    let (ok, text) = kiln_with(&env, &with_k2, &["key", "rotate", "--old-key-file", &k1], "");
    assert!(ok && text.contains("1 signing key(s) re-encrypted"), "{text}");
    let (ok, text) = kiln_with(&env, &with_k1, &["secret", "set", "other"], "x");
    assert!(!ok && text.contains("sealed with another"), "K1 opens nothing now: {text}");
    let (ok, text) = kiln_with(&env, &with_k2, &["run", "--json", "--service", "vault"], "");
    assert!(ok, "{text}");
    let id = json(&text)["id"].as_str().unwrap().to_owned();
    let all = env.wait_log(&id, "len=").join("\n");
    assert!(all.contains("env-matches-file") && all.contains(&format!("len={}", value.len())), "{all}");

    // To a passphrase, then to a systemd credential.
    let pass = [("KILN_PASSPHRASE", "correct horse battery staple")];
    let (ok, text) = kiln_with(&env, &pass, &["secret", "rotate-key", "--old-key-file", &k2], "");
    assert!(ok && text.contains("the passphrase in KILN_PASSPHRASE"), "{text}");
    let creds = tempdir("kek-creds");
    key_file(&creds.join("kiln-key"), 0o400);
    let cred =
        [("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()), ("KILN_OLD_PASSPHRASE", "correct horse battery staple")];
    let (ok, text) = kiln_with(&env, &cred, &["secret", "rotate-key"], "");
    assert!(ok && text.contains("the systemd credential"), "{text}");
    let (ok, text) = kiln_with(&env, &cred[..1], &["run", "--json", "--service", "vault"], "");
    assert!(ok, "{text}");
    let id = json(&text)["id"].as_str().unwrap().to_owned();
    assert!(env.wait_log(&id, "len=").join("\n").contains(&format!("len={}", value.len())));
    fs::remove_dir_all(keys).unwrap();
    fs::remove_dir_all(creds).unwrap();
}

#[test]
fn killing_kiln_processes_leaves_instances_serving_and_loses_no_log_line() {
    let _room = common::room("run");
    let env = Env::new("kill");
    let (web, port) = env.run(&["web:b1"]);
    let (counter, _) = env.run(&["counter"]);
    env.wait_log(&counter, "line 5");
    // A long-running kiln (logs --follow) and both shims, killed with SIGKILL.
    let mut follower = kiln_cmd()
        .args(["logs", "--follow", "--instance", &counter])
        .env("KILN_HOME", &env.home)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for id in [&web, &counter] {
        let (shim, container) = env.shim_pid(id);
        // SAFETY: kill(2) with a pid this test read from its own instance's shim.json.
        assert_eq!(unsafe { libc::kill(shim, libc::SIGKILL) }, 0);
        assert!(alive(container));
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Still serving, still running, adopted by the next kiln command.
    assert_eq!(http_get(port, "/", Duration::from_secs(2)).map(|r| r.0), Some(200));
    assert_eq!(env.state(&web), "running");
    assert_eq!(env.state(&counter), "running");
    env.wait_log(&counter, "line 120");
    env.ok(&["stop", "--time", "1", &counter]);
    // Every line from 1 to the last, once, in order.
    let lines: Vec<String> = env.logs(&counter).into_iter().filter(|l| l.starts_with("line ")).collect();
    let n = lines.len();
    assert!(n >= 120, "{n}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("line {}", i + 1), "line {i} of {n}");
    }
}

#[test]
fn a_tampered_blob_or_cache_is_refused_and_nothing_runs() {
    let _room = common::room("run");
    let env = Env::new("tamper");
    let (id, _) = env.run(&["web:b1"]);
    env.ok(&["rm", "--force", &id]);
    // Tamper with the unpacked cache: the next start names the cache.
    let images = env.home.join("images");
    let cache = fs::read_dir(&images).unwrap().next().unwrap().unwrap().path();
    fs::write(cache.join("rootfs/demo-app"), b"#!/bin/sh\necho pwned\n").unwrap();
    let e = env.err(&["run", "web:b1"]);
    assert!(e.contains("image cache") && e.contains("/demo-app differs"), "{e}");
    fs::remove_dir_all(&cache).unwrap();
    // Tamper with a layer blob: refused, naming the blob.
    let inspect = json(&env.ok(&["inspect", "web:b1", "--json"]));
    let layer = inspect["manifest"]["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = env.home.join("store/blobs/sha256").join(&layer[7..]);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&blob, bytes).unwrap();
    let e = env.err(&["run", "web:b1"]);
    assert!(e.contains(&layer) && e.contains("corrupted"), "{e}");
    let ps = json(&env.ok(&["ps", "--json"]));
    assert!(ps["instances"].as_array().unwrap().is_empty(), "nothing runs: {ps}");
}

#[test]
fn containers_no_record_knows_are_reported_and_removed() {
    let _room = common::room("run");
    let env = Env::new("orphan");
    let (id, port) = env.run(&["web:b1"]);
    let (_, container) = env.shim_pid(&id);
    fs::remove_dir_all(env.home.join("instances").join(&id)).unwrap();
    let out = kiln(&env.home, &env.dir, &["ps"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("removed container {id}")), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(container) {
        assert!(Instant::now() < deadline, "orphan still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(http_get(port, "/", Duration::from_millis(300)).is_none());
}

#[test]
fn pause_freezes_an_instance_and_resume_thaws_it() {
    let _room = common::room("run");
    let env = Env::new("pause");
    let (id, port) = env.run(&["web:b1"]);
    env.ok(&["pause", &id]);
    assert_eq!(env.state(&id), "paused");
    assert!(http_get(port, "/", Duration::from_millis(300)).is_none(), "a frozen instance does not answer");
    env.ok(&["resume", &id]);
    assert_eq!(env.state(&id), "running");
    assert_eq!(http_get(port, "/", Duration::from_secs(2)).map(|r| r.0), Some(200));
}
