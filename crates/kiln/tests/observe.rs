//! `kiln serve`'s `/metrics`, as root with runc: after a release and a
//! chaos kill, the controller's counters and gauges are there, and
//! Prometheus's own `promtool check metrics` accepts the exposition.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::serve_env::{serial, Env};

fn get(env: &Env, path: &str) -> (String, String) {
    let mut s = UnixStream::connect(env.home.join("serve.sock")).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
fn metrics_count_releases_and_replacements_and_promtool_accepts_them() {
    let _one = serial();
    let env = Env::new("metrics", "replicas = 2\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n");
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    env.wait_for("2 healthy", |s| s["instances"].as_array().is_some_and(|i| i.len() == 2));
    let k = env.kiln(&["chaos", "web", "--kills", "1", "--kill-rate", "5", "--json"]);
    assert_eq!(k.status.code(), Some(0), "{}", String::from_utf8_lossy(&k.stderr));

    let (head, body) = get(&env, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    for line in ["kiln_replacements_total{service=\"web\",cause=\"chaos\"} 1", "kiln_rollout_step{service=\"web\"} 0"] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    assert!(
        body.lines().any(|l| l.starts_with("kiln_releases_total{service=\"web\",strategy=\"")
            && l.ends_with("\",outcome=\"succeeded\"} 1")
            && !l.contains("unknown")),
        "the release, with its strategy: {body}"
    );
    assert!(body.lines().any(|l| l.starts_with("kiln_release_weight{service=\"web\",release=\"web-1\"}")), "{body}");
    assert!(body.lines().any(|l| l.starts_with("kiln_instances{service=\"web\",state=\"running\"}")), "{body}");
    let count = body
        .lines()
        .find_map(|l| l.strip_prefix("kiln_reconcile_duration_seconds_count "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(count > 0, "reconcile passes are counted");

    // Prometheus's own checker.
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Other methods are refused by variant, not by text.
    let mut s = UnixStream::connect(env.home.join("serve.sock")).unwrap();
    write!(s, "POST /metrics HTTP/1.1\r\nHost: kiln\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[test]
fn the_documented_scrape_config_and_alert_rules_pass_promtool() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/prometheus");
    let dir = common::tempdir("promtool");
    let token = dir.join("serve.token");
    std::fs::write(&token, "0123\n").unwrap();
    let config = std::fs::read_to_string(docs.join("prometheus.yml")).unwrap();
    assert!(config.contains("/var/lib/kiln/serve.token"));
    std::fs::write(dir.join("prometheus.yml"), config.replace("/var/lib/kiln/serve.token", token.to_str().unwrap()))
        .unwrap();
    std::fs::copy(docs.join("kiln-alerts.yml"), dir.join("kiln-alerts.yml")).unwrap();
    let out = common::run("promtool", &["check", "config", dir.join("prometheus.yml").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
    // Every metric the rules use is one kiln serve exposes.
    let rules = std::fs::read_to_string(docs.join("kiln-alerts.yml")).unwrap();
    let exposed = kiln::serve::metrics::render(&Default::default(), &Default::default());
    for name in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("kiln_")) {
        let family = name.trim_end_matches("_bucket");
        assert!(exposed.contains(&format!("# TYPE {family} ")), "{name} is not a metric kiln serve exposes");
    }
}
