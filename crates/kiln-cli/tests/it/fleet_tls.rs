//! TLS between kiln and etcd: an etcd member serving its client API over
//! HTTPS with a certificate made by openssl and `--client-cert-auth`, so a
//! client needs the test CA and a client certificate it signed.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::edge::{Pki, VALID_FROM, VALID_TO};

#[test]
fn agents_and_commands_reach_etcd_over_tls_with_a_client_certificate_and_not_without() {
    let _room = room("fleet");
    let dir = tempdir("fleet-tls");
    let pki = Pki::new(&dir);
    pki.issue("etcd", &["localhost"], VALID_FROM, VALID_TO);
    pki.issue("agent", &["kiln-agent"], VALID_FROM, VALID_TO);
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://localhost:{client}");
    let mut etcd = Command::new("etcd")
        .args(["--name", "t"])
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &format!("https://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("t=http://127.0.0.1:{peer}")])
        .arg("--cert-file")
        .arg(pki.path("etcd.pem"))
        .arg("--key-file")
        .arg(pki.path("etcd.key"))
        .arg("--client-cert-auth")
        .arg("--trusted-ca-file")
        .arg(pki.path("ca.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    wait_port(client);
    let home = tempdir("fleet-tls-home");
    let p = |f: &str| pki.path(f).to_str().unwrap().to_owned();
    let tls = [
        "--etcd-ca".to_owned(),
        p("ca.pem"),
        "--etcd-cert".to_owned(),
        p("agent.pem"),
        "--etcd-key".to_owned(),
        p("agent.key"),
    ];
    let hosts = |extra: &[String]| {
        let mut args = vec!["hosts".to_owned(), "--cluster".to_owned(), url.clone(), "--json".to_owned()];
        args.extend_from_slice(extra);
        kiln(&home, &home, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Without the CA: the member's certificate is not trusted.
    let e = String::from_utf8_lossy(&hosts(&[]).stderr).into_owned();
    assert!(e.contains(&format!("localhost:{client}")) && e.to_lowercase().contains("certificate"), "{e}");
    // With the CA but no client certificate: etcd refuses the handshake.
    let out = hosts(&tls[..2]);
    assert!(!out.status.success(), "no client certificate, no answer");
    // A CA for a plain-HTTP member is a mistake, said so.
    let plain = kiln(&home, &home, &["hosts", "--cluster", "http://127.0.0.1:2379", "--etcd-ca", &p("ca.pem")]);
    assert!(String::from_utf8_lossy(&plain.stderr).contains("https://"));
    // An agent with all three registers, and is listed over TLS.
    let mut args = vec!["agent", "--cluster", url.as_str(), "--name", "h1", "--ttl", "2"];
    args.extend(tls.iter().map(String::as_str));
    let mut agent =
        kiln_cmd().args(&args).env("KILN_HOME", &home).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let out = hosts(&tls);
        if out.status.success() {
            let v = json(&String::from_utf8_lossy(&out.stdout));
            if v.as_array().is_some_and(|a| a.len() == 1) {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "the agent never registered over TLS");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed[0]["name"], "h1");
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = etcd.kill();
    let _ = etcd.wait();
    let _ = fs::remove_dir_all(&dir);
}
