//! Registries over TLS with credentials, the way GHCR, Harbor or a
//! company's registry are reached: Debian's `docker-registry` behind TLS
//! (a test CA made by openssl) with htpasswd basic auth, and a bearer-token
//! front written for the test (a token endpoint, scoped challenges, and a
//! 429 that must be retried) before a plain one.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::*;
use crate::edge::{Pki, VALID_FROM, VALID_TO};

pub(crate) struct Registry(Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// docker-registry on 127.0.0.1:`port`, with `extra` YAML (TLS, auth).
pub(crate) fn registry(dir: &Path, port: u16, extra: &str) -> Registry {
    Registry(docker_registry(dir, port, extra))
}

fn baked() -> (PathBuf, PathBuf, String) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    let (dir, home) = (tempdir("regauth-src"), tempdir("regauth-src-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    fs::write(dir.join("kiln.toml"), demo_image("1.0.0", "")).unwrap();
    let digest = bake_digests(&home, &dir, &[])[0].clone();
    (dir, home, digest)
}

pub(crate) fn login(home: &Path, dir: &Path, registry: &str, user: &str, password: &str) -> std::process::Output {
    let mut c = kiln_cmd()
        .args(["login", registry, "--username", user, "--password-stdin"])
        .current_dir(dir)
        .env("KILN_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

/// No file under `home` holds `needle` in clear.
fn nowhere_in(home: &Path, needle: &str) {
    let mut todo = vec![home.to_owned()];
    while let Some(p) = todo.pop() {
        if p.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if let Ok(b) = fs::read(&p) {
            assert!(!String::from_utf8_lossy(&b).contains(needle), "{needle:?} in clear in {}", p.display());
        }
    }
}

#[test]
fn a_tls_registry_with_basic_auth_login_push_pull_and_a_wrong_password() {
    let _room = crate::common::room("registry");
    let (dir, home, digest) = baked();
    let pki = Pki::new(&dir);
    pki.issue("registry", &["localhost"], VALID_FROM, VALID_TO);
    let out = run("htpasswd", &["-Bbn", "ci", "s3cret-pw"]);
    let reg_dir = tempdir("regauth-registry");
    fs::write(reg_dir.join("htpasswd"), &out.stdout).unwrap();
    let port = free_port();
    let extra = format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
        pki.path("registry.pem").display(),
        pki.path("registry.key").display(),
        reg_dir.join("htpasswd").display()
    );
    let _reg = registry(&reg_dir, port, &extra);
    let host = format!("localhost:{port}");
    let toml = fs::read_to_string(dir.join("kiln.toml")).unwrap();
    fs::write(dir.join("kiln.toml"), format!("{toml}\n[registries.\"{host}\"]\nca = \"certs/ca.pem\"\n")).unwrap();
    let remote = format!("{host}/team/web:1.0.0");

    // Without credentials: refused, saying how to give them.
    let e = kiln_err(&home, &dir, &["push", "web:1.0.0", &remote]);
    assert!(e.contains(&format!("registry {host}: unauthorized")) && e.contains("kiln login"), "{e}");
    // A wrong password is refused, naming the registry, and not kept.
    let out = login(&home, &dir, &host, "ci", "wrong");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(&format!("registry {host}: unauthorized: the credentials were refused")),
        "{err}"
    );
    // The right one: kept encrypted, then push and pull over TLS.
    let out = login(&home, &dir, &host, "ci", "s3cret-pw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    nowhere_in(&home, "s3cret-pw");
    let t = json(&kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote, "--json"]));
    assert_eq!(t["digest"], digest.as_str());
    // Another host with docker's config.json instead of kiln login.
    let other = tempdir("regauth-dst-home");
    let docker = tempdir("regauth-docker");
    let auth = run("sh", &["-c", "printf ci:s3cret-pw | base64"]);
    let auth = String::from_utf8_lossy(&auth.stdout).trim().to_owned();
    fs::write(docker.join("config.json"), format!("{{\"auths\":{{\"{host}\":{{\"auth\":\"{auth}\"}}}}}}")).unwrap();
    let out = kiln_cmd()
        .args(["pull", &remote, "--json"])
        .current_dir(&dir)
        .env("KILN_HOME", &other)
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout))["digest"], digest.as_str());
    // Logged out: refused again.
    kiln_ok(&home, &dir, &["logout", &host]);
    let e = kiln_err(&home, &dir, &["push", "web:1.0.0", &remote]);
    assert!(e.contains("unauthorized"), "{e}");
}

/// A registry front of the test's own: a token endpoint (`/token`, Basic
/// `ci:tok-pw` gets `tok-1`), a Bearer challenge for any request without
/// the token, one 429 for the first manifest read, and everything else
/// passed to `backend`. Counts tokens issued and 429s sent.
fn token_front(backend: u16) -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tokens, throttled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (t, th) = (tokens.clone(), throttled.clone());
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let (t, th) = (t.clone(), th.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let get = |n: &str| {
                    head.iter().find_map(|h| {
                        h.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.trim().to_owned())
                    })
                };
                let mut body = vec![0; get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)];
                r.read_exact(&mut body).unwrap();
                let target = head[0].split(' ').nth(1).unwrap_or("/").to_owned();
                let answer = |c: &mut TcpStream, status: &str, extra: &str, body: &str| {
                    let _ = write!(
                        c,
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                };
                if target.starts_with("/token") {
                    let basic = format!(
                        "Basic {}",
                        String::from_utf8_lossy(
                            &std::process::Command::new("sh")
                                .args(["-c", "printf ci:tok-pw | base64"])
                                .output()
                                .unwrap()
                                .stdout
                        )
                        .trim()
                    );
                    if get("authorization").as_deref() == Some(basic.as_str()) && target.contains("scope=repository") {
                        t.fetch_add(1, Ordering::Relaxed);
                        return answer(&mut c, "200 OK", "Content-Type: application/json\r\n", "{\"token\":\"tok-1\"}");
                    }
                    return answer(&mut c, "401 Unauthorized", "", "{}");
                }
                if get("authorization").as_deref() != Some("Bearer tok-1") {
                    let www = format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"front\",scope=\"repository:team/web:pull,push\"\r\n");
                    return answer(&mut c, "401 Unauthorized", &www, "{}");
                }
                if target.contains("/manifests/")
                    && head[0].starts_with("GET")
                    && th.fetch_add(1, Ordering::Relaxed) == 0
                {
                    return answer(&mut c, "429 Too Many Requests", "Retry-After: 0\r\n", "slow down");
                }
                // Passed on as it came, the token removed.
                let mut b = TcpStream::connect(("127.0.0.1", backend)).unwrap();
                for h in head.iter().filter(|h| !h.to_ascii_lowercase().starts_with("authorization:")) {
                    b.write_all(h.as_bytes()).unwrap();
                }
                b.write_all(b"\r\n").unwrap();
                b.write_all(&body).unwrap();
                let mut out = Vec::new();
                let _ = b.read_to_end(&mut out);
                let _ = c.write_all(&out);
            });
        }
    });
    (port, tokens, throttled)
}

#[test]
fn the_bearer_token_flow_and_a_429_that_is_retried() {
    let _room = crate::common::room("registry");
    let (dir, home, digest) = baked();
    let backend = free_port();
    let reg_dir = tempdir("regauth-plain");
    let _reg = registry(&reg_dir, backend, "");
    let (port, tokens, throttled) = token_front(backend);
    let host = format!("127.0.0.1:{port}");
    let remote = format!("{host}/team/web:1.0.0");
    let out = login(&home, &dir, &host, "ci", "bad");
    assert!(!out.status.success(), "a wrong password at the token endpoint is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("registry {host}: unauthorized")));
    let out = login(&home, &dir, &host, "ci", "tok-pw");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t = json(&kiln_ok(&home, &dir, &["push", "web:1.0.0", &remote, "--json"]));
    assert_eq!(t["digest"], digest.as_str());
    let other = tempdir("regauth-token-dst");
    assert!(login(&other, &dir, &host, "ci", "tok-pw").status.success());
    let p = json(&kiln_ok(&other, &dir, &["pull", &remote, "--json"]));
    assert_eq!(p["digest"], digest.as_str());
    assert!(tokens.load(Ordering::Relaxed) >= 3, "tokens were fetched for login, push and pull");
    assert!(throttled.load(Ordering::Relaxed) >= 2, "the 429 was answered, and the read retried");
}
