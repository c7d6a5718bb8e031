//! `kiln serve`'s `/metrics`, as root with runc: after a release and a
//! chaos kill, the controller's counters and gauges are there, and
//! Prometheus's own `promtool check metrics` accepts the exposition.

use crate::common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use common::serve_env::{serial, Env};
use common::{header, json, promtool_accepts, receiver};

fn get(env: &Env, path: &str) -> (String, String) {
    env.api_get(path)
}

#[test]
fn metrics_count_releases_and_replacements_and_promtool_accepts_them() {
    let _room = common::room("observe");
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
    promtool_accepts(&body);
    // And the load balancer's own /metrics (its admin address), with
    // releases, backends and their histograms.
    let proxy = json(&std::fs::read_to_string(env.home.join("proxies/web/proxy.json")).unwrap());
    let mut s = std::net::TcpStream::connect(proxy["admin"].as_str().unwrap()).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").unwrap();
    let mut lb = String::new();
    s.read_to_string(&mut lb).unwrap();
    let (_, lb) = lb.split_once("\r\n\r\n").unwrap();
    assert!(
        lb.contains("# TYPE kiln_proxy_requests_total counter") && lb.contains("kiln_proxy_backend_healthy{"),
        "{lb}"
    );
    promtool_accepts(lb);

    // Other methods are refused by variant, not by text.
    let mut s = UnixStream::connect(env.home.join("serve.sock")).unwrap();
    write!(s, "POST /metrics HTTP/1.1\r\nHost: kiln\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

#[test]
fn the_documented_scrape_config_and_alert_rules_pass_promtool() {
    let _room = common::room("observe");
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

#[test]
fn a_quarantine_alert_is_signed_retried_and_survives_a_controller_crash() {
    let _room = common::room("observe");
    let _one = serial();
    let port = common::free_port();
    let settings = format!(
        "replicas = 2\n[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
         [[notify]]\nurl = \"http://127.0.0.1:{port}/hooks/kiln\"\nevents = [\"quarantine\", \"crash-loop\"]\nsecret = \"hook\"\n"
    );
    let mut env = Env::bare("notify", &settings);
    env.secret_set("hook", b"s3cret-key");
    env.start_serve(None);
    let (code, out) = env.deploy();
    assert_eq!(code, 0, "{out}");
    let s = env.wait_for("2 instances", |s| s["instances"].as_array().is_some_and(|i| i.len() == 2));
    let id = s["instances"][0]["id"].as_str().unwrap().to_owned();

    // The receiver is down: the first attempt fails and is queued on disk.
    env.ok(&["quarantine", &id, "--reason", "post-mortem drill"]);
    let log = env.home.join("notify/deliveries.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("retrying") {
        assert!(std::time::Instant::now() < deadline, "no failed attempt recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The controller dies; the receiver comes up, fails once more, then takes it.
    env.kill_serve();
    let rx = receiver(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(), 1);
    env.start_serve(None);
    let (head1, _) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("a retry after the restart");
    let (head, body) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the retry after a 500");
    assert!(head.starts_with("POST /hooks/kiln HTTP/1.1"), "{head}");
    assert_eq!(header(&head, "X-Kiln-Event"), Some("quarantine"));
    assert_eq!(header(&head1, "X-Kiln-Delivery"), header(&head, "X-Kiln-Delivery"), "the same delivery, retried");
    let v = json(&body);
    assert_eq!((v["alert"].as_str(), v["service"].as_str()), (Some("quarantine"), Some("web")));
    assert_eq!(v["event"]["instance"], id.as_str());
    assert_eq!(v["event"]["reason"], "post-mortem drill");

    // The signature, checked independently of kiln.
    let dir = common::tempdir("hook");
    std::fs::write(dir.join("body"), &body).unwrap();
    let mac =
        common::run("openssl", &["dgst", "-sha256", "-hmac", "s3cret-key", "-r", dir.join("body").to_str().unwrap()]);
    let hex = String::from_utf8_lossy(&mac.stdout).split_whitespace().next().unwrap().to_owned();
    assert_eq!(header(&head, "X-Kiln-Signature"), Some(format!("sha256={hex}").as_str()));

    // Every attempt is recorded, once delivered nothing is pending, and
    // nothing was sent twice after it was delivered.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log).unwrap().lines().map(json).collect();
    let states: Vec<&str> = lines.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert!(states.len() >= 3 && states.last() == Some(&"delivered"), "{states:?}");
    assert_eq!(states.iter().filter(|s| **s == "delivered").count(), 1);
    let attempts: Vec<u64> = lines.iter().map(|l| l["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, (1..=attempts.len() as u64).collect::<Vec<_>>(), "one delivery, counted across the restart");
    assert_eq!(std::fs::read_dir(env.home.join("notify/pending")).unwrap().count(), 0);
    assert!(rx.try_recv().is_err(), "no duplicate");
    env.ok(&["release-quarantine", &id]);
}

#[test]
fn a_rolled_back_canary_and_an_inconclusive_one_raise_their_alerts_end_to_end() {
    let _room = common::room("observe");
    let _one = serial();
    let port = common::free_port();
    let rx = receiver(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(), 0);
    let settings = format!(
        "replicas = 1\nstrategy = \"canary\"\ndrain_timeout = \"1s\"\n\
         [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
         [service.web.canary]\nsteps = [50]\nstep_interval = \"3s\"\nanalysis = {{ min_requests = 30, inconclusive_limit = 1 }}\n\
         [[notify]]\nurl = \"http://127.0.0.1:{port}/hooks\"\nevents = [\"rolled-back\", \"inconclusive\", \"release-failed\"]\n"
    );
    let env = Env::new("notify-canary", &settings);
    assert_eq!(env.deploy().0, 0);
    assert!(rx.try_recv().is_err(), "a release that succeeds raises nothing");

    // An erring canary under load: analysis rolls it back.
    env.version("2.0.0", ", FAIL_RATE = \"0.2\"");
    let mut result = (0, String::new());
    common::serve_env::under_load(env.port, || result = env.deploy());
    assert_eq!(result.0, 2, "{}", result.1);
    let (head, body) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the rolled-back alert");
    assert_eq!(header(&head, "X-Kiln-Event"), Some("rolled-back"), "{head}");
    assert!(header(&head, "X-Kiln-Signature").is_none(), "no secret, no signature");
    let v = json(&body);
    assert_eq!((v["release"].as_str(), v["event"]["outcome"].as_str()), (Some("web-2"), Some("rolled-back")), "{v:#}");

    // A canary with no traffic: inconclusive, then it waits for a person.
    env.version("3.0.0", "");
    let (code, out) = env.deploy();
    assert_eq!(code, 4, "{out}");
    let (head, body) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the inconclusive alert");
    assert_eq!(header(&head, "X-Kiln-Event"), Some("inconclusive"), "{head}");
    assert_eq!(json(&body)["release"], "web-3");
    // While it waits, nothing is judged again (no new verdict, no new alert).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let verdicts = |env: &Env| {
        let h = json(&env.ok(&["history", "web", "--json"]));
        let entries = h["entries"].as_array().unwrap().clone();
        entries.into_iter().filter(|e| e["release"] == "web-3" && e["event"]["kind"] == "verdict").count()
    };
    assert_eq!(verdicts(&env), 2, "one inconclusive waited out, one that paused");
    // A person promotes: it goes on past the step, to the 100% step's
    // analysis, which has no traffic either: one more pause, one more alert.
    let first = env.status()["rollout"]["step"].as_u64().unwrap();
    env.ok(&["promote"]);
    env.wait_for("the next pause", |s| {
        s["rollout"]["step"].as_u64().is_some_and(|n| n > first) && s["rollout"]["paused"].is_string()
    });
    let (head, _) = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("the second pause's alert");
    assert_eq!(header(&head, "X-Kiln-Event"), Some("inconclusive"));
    env.ok(&["promote"]);
    env.wait_for("web-3 stable", |s| s["stable"]["id"] == "web-3" && s["rollout"].is_null());
    assert_eq!(verdicts(&env), 4, "two per analysis step, none while paused");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let extra: Vec<(String, String)> = rx.try_iter().collect();
    assert!(extra.is_empty(), "a promoted release raises nothing more, and nothing came twice: {extra:?}");
}
