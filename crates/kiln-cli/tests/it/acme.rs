//! Certificates from ACME, end to end, against Pebble (Let's Encrypt's
//! test CA, Debian's `pebble`) on loopback: its DNS answers come from
//! `pebble-challtestsrv` (every name is 127.0.0.1), so its http-01 checks
//! reach the service's redirect listener. A busybox httpd service asks for
//! a certificate for its host, serves it, keeps its key encrypted, and
//! renews it under load with no failed request.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::serve_env::{serial, Env};
use crate::common::{self, free_port};
use crate::edge::{client_config, curl, tls_get, under_tls_load, Pki, VALID_FROM, VALID_TO};

/// The CA processes, ended with the test.
pub(crate) struct Ca(Vec<Child>);

impl Drop for Ca {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts pebble-challtestsrv and pebble, whose DNS answers `ip` for every
/// name; returns them, the directory URL and the management port (its
/// roots).
pub(crate) fn pebble(pki: &Pki, http_port: u16, ip: &str) -> (Ca, String, u16) {
    let (dns, cmgmt, port, mgmt, tls_port) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let dir = pki.path("");
    let challtest = Command::new("pebble-challtestsrv")
        .args(["-dns01", &format!("127.0.0.1:{dns}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{cmgmt}"), "-defaultIPv4", ip, "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pebble-challtestsrv (apt-get install pebble)");
    let config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.join("pebble.pem"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = fs::File::create(dir.join("pebble.log")).unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(dir.join("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("pebble (apt-get install pebble)");
    common::wait_port(port);
    common::wait_port(mgmt);
    (Ca(vec![pebble, challtest]), format!("https://localhost:{port}/dir"), mgmt)
}

#[test]
fn a_certificate_from_pebble_is_obtained_served_kept_encrypted_and_renewed_under_load() {
    let _room = common::room("edge");
    let _g = serial();
    let redirect = free_port();
    let mut env = Env::bare_busybox("acme", "");
    let pki = Pki::new(&env.dir);
    pki.issue("pebble", &["localhost"], VALID_FROM, VALID_TO);
    let (_ca, directory, mgmt) = pebble(&pki, redirect, "127.0.0.1");
    // renew_before longer than Pebble's certificates live: every
    // certificate is due again at once (renewals are 10 s apart).
    env.service = env.service.replace(
        "[service.web]\n",
        &format!(
            "[service.web]\nhosts = [\"shop.test\"]\nredirect_http = \"127.0.0.1:{redirect}\"\n\
             tls = {{ acme = \"{directory}\", email = \"ops@shop.test\", ca = \"certs/ca.pem\", renew_before = \"3650d\" }}\n"
        ),
    );
    env.version("1.0.0", "");
    env.start_serve(None);
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    let port = env.port;

    // Pebble's root signs what it issues (a new one each run).
    let roots = pki.path("pebble-root.pem");
    let (ok, root, err) =
        curl(&["--cacert", pki.path("ca.pem").to_str().unwrap(), &format!("https://localhost:{mgmt}/roots/0")]);
    assert!(ok && root.contains("BEGIN CERTIFICATE"), "{err}");
    fs::write(&roots, root).unwrap();
    let config = client_config(&roots);

    // Issued and served within seconds: the handshake for shop.test
    // verifies against Pebble's root.
    let t = Instant::now();
    let first = loop {
        match tls_get(&config, port, "shop.test") {
            Ok((200, body, cert)) => {
                assert_eq!(body, "1.0.0");
                break cert;
            }
            other => {
                let log = env.serve_log();
                assert!(t.elapsed() < Duration::from_secs(60), "no certificate: {other:?}\n{log}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let (ok, body, err) = curl(&[
        "--resolve",
        &format!("shop.test:{port}:127.0.0.1"),
        "--cacert",
        roots.to_str().unwrap(),
        &format!("https://shop.test:{port}/"),
    ]);
    assert!(ok && body.trim() == "1.0.0", "curl with Pebble's root: {body} {err}");
    assert!(env.serve_log().contains("certificate for shop.test obtained"), "{}", env.serve_log());
    // kiln status reads the obtained certificate's end.
    let st = env.ok(&["status"]);
    assert!(st.contains("tls/web/cert.pem until ") && st.contains("days left)"), "{st}");

    // The keys are encrypted under KILN_HOME: no PEM key in clear there.
    let mut files = vec![env.home.clone()];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else if let Ok(text) = fs::read(&p) {
            assert!(!String::from_utf8_lossy(&text).contains("PRIVATE KEY"), "a clear key in {}", p.display());
        }
    }
    assert!(env.home.join("tls/dek").exists(), "the TLS key store");

    // Renewal under load: a new certificate comes in, new handshakes get
    // it, and no request fails meanwhile.
    let (ok, bad, first_err) = under_tls_load(&config, port, "shop.test", || {
        let deadline = Instant::now() + Duration::from_secs(45);
        while tls_get(&config, port, "shop.test").map(|r| r.2 == first).unwrap_or(true) {
            assert!(Instant::now() < deadline, "not renewed: {}", env.serve_log());
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(ok > 20 && bad == 0, "renewal: ok {ok} failed {bad}: {first_err}");
}
