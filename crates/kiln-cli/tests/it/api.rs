//! `kiln serve`'s HTTP API, event stream and dashboard, as root with runc:
//! over TCP every request needs the token (401 changes nothing), bad input
//! names its field, schemathesis (PyPI) fuzzes every documented operation
//! against the running controller, the event stream carries what happens,
//! and a real browser (chromium driven by selenium) watches a canary
//! advance live and aborts it.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::json;
use common::serve_env::{serial, under_load, Env};

/// One request over TCP: (status, head, body).
fn tcp(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), head.to_owned(), body.to_owned())
}

fn instance_ids(env: &Env) -> Vec<String> {
    let mut v: Vec<String> =
        env.status()["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

const HEALTH: &str = "[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n";

#[test]
fn over_tcp_the_token_is_required_bad_input_is_named_and_schemathesis_finds_nothing() {
    let _room = common::room("api");
    let _one = serial();
    let mut env = Env::bare("api", &format!("replicas = 2\n{HEALTH}"));
    let port = common::free_port();
    env.tcp = Some(port);
    env.start_serve(None);
    assert_eq!(env.deploy().0, 0);
    env.wait_for("2 instances", |s| s["instances"].as_array().is_some_and(|i| i.len() == 2));
    let token = std::fs::read_to_string(env.home.join("serve.token")).unwrap().trim().to_owned();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let before = instance_ids(&env);

    // No token, or a wrong one: 401, and nothing changes, whatever the body.
    for h in [vec![], vec![("Authorization", "Bearer nope")]] {
        let (code, _, body) = tcp(port, "POST", "/v1/chaos/kill", &h, r#"{"service":"web","max_share":1}"#);
        assert_eq!(code, 401, "{body}");
        let (code, _, _) = tcp(port, "GET", "/v1/diff?service=", &h, "");
        assert_eq!(code, 401, "a request without the token learns nothing about its parameters");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(instance_ids(&env), before, "a refused kill killed nothing");

    // Bad input names its field; unknown things are 404; methods are 405 with Allow.
    let (code, _, body) = tcp(port, "POST", "/v1/deploy", &auth, r#"{"service":"web","imgae":"x"}"#);
    assert!(code == 400 && body.contains("imgae"), "{code} {body}");
    let (code, _, body) = tcp(port, "GET", "/v1/logs?limit=x", &auth, "");
    assert!(code == 400 && body.contains("limit"), "{code} {body}");
    let (code, _, body) = tcp(port, "POST", "/v1/abort", &auth, r#"{"service":"nope"}"#);
    assert!(code == 404 && body.contains("nope"), "{code} {body}");
    let (code, _, body) = tcp(port, "GET", "/v1/diff?service=web&from=web-1&to=web-9", &auth, "");
    assert!(code == 404 && body.contains("web-9"), "{code} {body}");
    let (code, head, _) = tcp(port, "PUT", "/v1/status", &auth, "");
    assert!(code == 405 && head.contains("Allow: GET"), "{head}");

    // The document is served, and is the one in the source.
    let (code, _, doc) = tcp(port, "GET", "/openapi.json", &[], "");
    assert_eq!(code, 200);
    assert_eq!(doc, kiln::serve::OPENAPI);

    // History, diff and logs answer what the CLI knows.
    env.version("2.0.0", ", EXTRA = \"s3cr3t-value\"");
    assert_eq!(env.deploy().0, 0);
    let (code, _, body) = tcp(port, "GET", "/v1/diff?service=web&from=web-1&to=web-2", &auth, "");
    assert_eq!(code, 200, "{body}");
    let d = json(&body);
    assert_eq!(d["env_added"], serde_json::json!(["EXTRA"]), "{d:#}");
    assert_eq!(d["env_changed"], serde_json::json!(["DEMO_VERSION"]), "{d:#}");
    assert!(!body.contains("s3cr3t-value"), "values stay hidden: {body}");
    let (_, _, body) = tcp(port, "GET", "/v1/history?service=web&verify=true", &auth, "");
    let h = json(&body);
    assert_eq!(h["verified"]["ok"], true, "{h:#}");
    assert!(h["entries"].as_array().unwrap().iter().any(|e| e["release"] == "web-2"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = tcp(port, "GET", "/v1/logs?service=web&release=web-2&limit=50", &auth, "");
        let lines = json(&body)["lines"].as_array().unwrap().clone();
        if !lines.is_empty() {
            assert!(lines.iter().all(|l| l["release"] == "web-2" && l["service"] == "web"), "{lines:?}");
            assert!(lines.iter().any(|l| l["line"].as_str().unwrap().contains("demo-app 2.0.0")), "{lines:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no log lines of web-2");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `kiln logs --release` filters the same way.
    let out = env.ok(&["logs", "--release", "web-1", "--json"]);
    assert!(out.lines().all(|l| json(l)["release"] == "web-1"), "{out}");
    assert!(out.contains("demo-app 1.0.0"), "{out}");

    // schemathesis: every documented operation (the event stream answers
    // it at once: it does not ask for text/event-stream), all checks (5xx,
    // schema conformance, status codes, auth, methods).
    let out = Command::new("st")
        .args(["run", &format!("http://127.0.0.1:{port}/openapi.json"), "--checks", "all"])
        .args(["-n", "30", "--request-timeout", "10", "--generation-deterministic"])
        .args(["-H", &format!("Authorization: {bearer}")])
        .env("NO_COLOR", "1")
        // Its cache of found cases goes there, not into the source tree.
        .current_dir(common::tempdir("schemathesis"))
        .output()
        .expect("schemathesis (pip install schemathesis; scripts/install-deps.sh does)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{report}\nserve log: {}", env.serve_log());
    assert!(report.contains("Tested: 19"), "every operation was tested:\n{report}");
    // And the controller still works afterwards.
    assert!(env.serve_running());
    // (It may have taken the service down for real, `POST /v1/down`: a
    // deploy brings it back, and is nothing to do when it is up.)
    env.ok(&["deploy", "web"]);
    // (It finds real ids in the answers: it deploys, rolls back and
    // quarantines for real, so count the instances that serve.)
    // (A rollback keeps the release it left warm, so count the stable ones.)
    env.wait_for("2 serving instances of the stable release", |s| {
        let stable = s["stable"]["id"].clone();
        s["instances"].as_array().is_some_and(|i| {
            i.iter()
                .filter(|x| x["release"] == stable && x["quarantined"] == false && x["health"]["healthy"] == true)
                .count()
                == 2
        })
    });
    assert!(env.versions(4).iter().all(|v| v.starts_with("demo-app ")), "the service still answers");
}

/// Reads SSE frames from `r` until `done` says so (or 30 s pass): each as
/// (id, event, data).
fn frames(
    r: &mut impl BufRead,
    mut done: impl FnMut(&[(u64, String, serde_json::Value)]) -> bool,
) -> Vec<(u64, String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let (mut id, mut kind) = (0, String::new());
    let mut line = String::new();
    while Instant::now() < deadline && !done(&out) {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id: ") {
            id = v.parse().unwrap();
        } else if let Some(v) = l.strip_prefix("event: ") {
            kind = v.to_owned();
        } else if let Some(v) = l.strip_prefix("data: ") {
            out.push((id, kind.clone(), json(v)));
        }
    }
    out
}

fn subscribe(env: &Env, last: Option<u64>) -> BufReader<UnixStream> {
    let mut s = UnixStream::connect(env.home.join("serve.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra = last.map(|l| format!("Last-Event-ID: {l}\r\n")).unwrap_or_default();
    write!(s, "GET /v1/events HTTP/1.1\r\nHost: kiln\r\nAccept: text/event-stream\r\n{extra}\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("content-type") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
    }
    r
}

#[test]
fn the_event_stream_carries_releases_replacements_and_health_and_resumes_after_an_id() {
    let _room = common::room("api");
    let _one = serial();
    let env = Env::new("events", &format!("replicas = 2\n{HEALTH}"));
    let mut r = subscribe(&env, None);
    assert_eq!(env.deploy().0, 0);
    let got = frames(&mut r, |f| f.iter().any(|(_, k, _)| k == "finished"));
    let kinds: Vec<&str> = got.iter().map(|(_, k, _)| k.as_str()).collect();
    assert!(kinds.contains(&"started") && kinds.contains(&"step"), "{kinds:?}");
    let finished = &got.iter().find(|(_, k, _)| k == "finished").unwrap().2;
    assert_eq!(finished["event"]["outcome"], "succeeded", "{finished:#}");
    assert!(finished["hash"].as_str().unwrap().starts_with("sha256:"), "entries come with their hash");
    let ids: Vec<u64> = got.iter().map(|(i, _, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[1] > w[0]), "ids increase: {ids:?}");

    // A chaos kill: the replacement and the health changes are published.
    env.wait_for("2 healthy", |s| {
        s["instances"].as_array().is_some_and(|i| i.len() == 2 && i.iter().all(|x| x["health"]["healthy"] == true))
    });
    let k = env.kiln(&["chaos", "web", "--kills", "1", "--kill-rate", "5", "--json"]);
    assert_eq!(k.status.code(), Some(0), "{}", String::from_utf8_lossy(&k.stderr));
    let more = frames(&mut r, |f| {
        let Some(new) = f.iter().find(|(_, k, _)| k == "replaced").map(|(_, _, d)| d["event"]["replacement"].clone())
        else {
            return false;
        };
        f.iter().any(|(_, k, d)| k == "health" && d["health"] == "gone")
            && f.iter().any(|(_, k, d)| k == "health" && d["instance"] == new && d["health"] == "healthy")
    });
    let replacing = more.iter().find(|(_, k, _)| k == "replacing").expect("a replacing event");
    assert_eq!(replacing.2["event"]["cause"]["kind"], "chaos", "{:#}", replacing.2);
    let new = &more.iter().find(|(_, k, _)| k == "replaced").expect("a replaced event").2["event"]["replacement"];
    let health: Vec<&str> = more
        .iter()
        .filter(|(_, k, d)| k == "health" && d["instance"] == *new)
        .map(|(_, _, d)| d["health"].as_str().unwrap())
        .collect();
    assert_eq!(health.last(), Some(&"healthy"), "the replacement's health, as it changed: {more:?}");

    // Reconnecting after an id gets what came after it, in order.
    let last_before = got.last().unwrap().0;
    let mut again = subscribe(&env, Some(last_before));
    let want = more.len();
    let replay = frames(&mut again, |f| f.len() >= want);
    assert_eq!(
        replay.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(),
        more.iter().map(|(i, _, _)| *i).collect::<Vec<_>>()
    );
}

#[test]
fn the_dashboard_in_chromium_shows_a_canary_advance_live_and_aborts_it() {
    let _room = common::room("api");
    let _one = serial();
    let canary = "replicas = 2\nstrategy = \"canary\"\ndrain_timeout = \"1s\"\n\
                  [service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
                  [service.web.canary]\nsteps = [10, 20, 30, 40, 50, 60, 70, 80]\nstep_interval = \"3s\"\n\
                  analysis = { min_requests = 5, max_p99_ratio = 10.0, min_p99_increase_ms = 1000.0 }\n";
    let mut env = Env::bare("dashboard", canary);
    let port = common::free_port();
    env.tcp = Some(port);
    env.start_serve(None);
    assert_eq!(env.deploy().0, 0);
    let link = env.ok(&["dashboard"]).trim().to_owned();
    assert!(link.starts_with(&format!("http://127.0.0.1:{port}/?token=")), "{link}");

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/dashboard");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    env.version("2.0.0", "");
    let mut figures = String::new();
    let (ok, bad) = under_load(env.port, || {
        env.ok(&["deploy", "--no-wait"]);
        let out = Command::new("python3")
            .args([script.to_str().unwrap(), &link, "web", "web-1", "web-2", shots.to_str().unwrap()])
            .output()
            .expect("python3 with selenium (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "the browser test failed (screenshots in {}):\n{}{}\nserve log: {}",
            shots.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            env.serve_log()
        );
        figures = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    });
    assert!(ok > 100 && bad == 0, "ok {ok}, failed {bad}");
    let f = json(figures.lines().last().unwrap());
    assert!(f["advanced_to"].as_u64() > f["first_step"].as_u64(), "{f:#}");
    println!("dashboard figures: {f}");

    // What the browser saw is what happened.
    let s = env.status();
    assert!(s["rollout"].is_null(), "{s:#}");
    assert_eq!(s["stable"]["id"], "web-1", "{s:#}");
    assert_eq!(s["last"]["outcome"], "aborted", "{s:#}");
    assert!(s["last"]["reason"].as_str().unwrap().contains("dashboard"), "{s:#}");
    assert!(env.versions(4).iter().all(|v| v == "demo-app 1.0.0"));
    for shot in ["1-canary-started.png", "2-canary-advanced.png", "3-aborted.png"] {
        assert!(std::fs::metadata(shots.join(shot)).unwrap().len() > 10_000, "{shot}");
    }
}

/// How many commands `kiln serve` says it carried out under `name`.
fn served(env: &Env, name: &str) -> usize {
    let prefix = format!("kiln serve: command {name}: ");
    env.serve_log().lines().filter(|l| l.starts_with(&prefix)).count()
}

#[test]
fn with_kiln_serve_running_every_cli_command_is_a_call_to_its_api() {
    let _room = common::room("api");
    let _one = serial();
    let mut env = Env::bare("client", HEALTH);
    let port = common::free_port();
    env.tcp = Some(port);
    env.start_serve(None);

    // A bake runs in kiln serve; its progress reaches the CLI as it goes.
    let out = env.kiln(&["bake"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", env.serve_log());
    assert!(stderr.contains("copy demo-app -> /demo-app"), "progress was relayed: {stderr}");
    assert_eq!(served(&env, "bake"), 1, "{}", env.serve_log());
    let images = env.ok(&["images", "--json"]);
    assert!(json(&images)[0]["tags"].as_array().unwrap().iter().any(|t| t == "web:1.0.0"), "{images}");

    // Instances: run, ps, logs, stop, rm.
    let id = json(&env.ok(&["run", "web", "--name", "probe", "--json"]))["id"].as_str().unwrap().to_owned();
    assert!(env.ok(&["ps", "--json"]).contains(&id));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !env.ok(&["logs", "--instance", &id, "--json"]).contains("demo-app 1.0.0") {
        assert!(Instant::now() < deadline, "no log line of {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `kiln logs --follow` asks kiln serve again and again.
    let before = served(&env, "logs");
    let mut follow = common::kiln_cmd()
        .args(["logs", "--follow", "--instance", &id, "--json"])
        .current_dir(&env.dir)
        .env("KILN_HOME", &env.home)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(follow.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("demo-app 1.0.0"), "{first}");
    std::thread::sleep(Duration::from_millis(800));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(served(&env, "logs") >= before + 2, "the follower polled through kiln serve:\n{}", env.serve_log());

    // Commands that start and wait for their own processes (runc) run on
    // kiln serve's threads while the controller reaps the shims and load
    // balancers it abandoned: none loses its child's exit to the reaper.
    let many: Vec<_> = (0..16)
        .map(|_| {
            let (dir, home) = (env.dir.clone(), env.home.clone());
            std::thread::spawn(move || common::kiln(&home, &dir, &["ps", "--json"]))
        })
        .collect();
    for h in many {
        let out = h.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    }
    env.ok(&["stop", &id]);
    env.ok(&["rm", &id]);
    assert!(!env.ok(&["ps", "--all", "--json"]).contains(&id));

    // Secrets, volumes, plan, history, gc.
    let mut set = common::kiln_cmd()
        .args(["secret", "set", "db_password"])
        .current_dir(&env.dir)
        .env("KILN_HOME", &env.home)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    assert!(set.wait().unwrap().success());
    assert_eq!(env.ok(&["secret", "ls"]).trim(), "db_password");
    env.ok(&["volumes"]);
    assert_eq!(json(&env.ok(&["plan", "--json"]))[0]["service"], "web");
    env.ok(&["history", "--json"]);
    env.ok(&["gc", "--dry-run", "--json"]);

    // Errors keep their exit status, which kiln serve computes by variant.
    let out = env.kiln(&["inspect", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\""), "{out:?}");
    env.ok(&["key", "generate", "default"]);
    let out = env.kiln(&["verify", "web"]);
    assert_eq!(out.status.code(), Some(7), "an unsigned image is refused: {out:?}");
    env.ok(&["sign", "web", "--key", "default"]);
    env.ok(&["verify", "web"]);
    // `kiln sbom --output` writes the document kiln serve stored.
    let sbom = env.dir.join("sbom.json");
    env.ok(&["sbom", "web", "--output", sbom.to_str().unwrap()]);
    assert_eq!(json(&std::fs::read_to_string(&sbom).unwrap())["spdxVersion"], "SPDX-2.3");

    for name in [
        "bake",
        "images",
        "inspect",
        "run",
        "ps",
        "logs",
        "stop",
        "rm",
        "secret_set",
        "secret_list",
        "volumes",
        "plan",
        "history",
        "gc",
        "key_generate",
        "sign",
        "verify_signature",
        "sbom",
    ] {
        assert!(served(&env, name) > 0, "kiln {name} did not go through kiln serve:\n{}", env.serve_log());
    }

    // The same command over TCP: the token first, relative paths refused
    // by field, progress streamed as NDJSON with the outcome last.
    let token = std::fs::read_to_string(env.home.join("serve.token")).unwrap().trim().to_owned();
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let body = r#"{"command": {"secret_set": {"name": "sneaky", "value": [1, 2]}}}"#;
    let (code, _, _) = tcp(port, "POST", "/v1/commands", &[], body);
    assert_eq!(code, 401);
    assert!(!env.ok(&["secret", "ls"]).contains("sneaky"), "a request without the token changed nothing");
    let (code, _, body) = tcp(port, "POST", "/v1/commands", &auth, r#"{"command": {"bake": {"file": "kiln.toml"}}}"#);
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["field"], "bake.file", "{body}");
    let (code, _, body) =
        tcp(port, "POST", "/v1/commands", &auth, r#"{"command": {"inspect": {"reference": "nope"}}}"#);
    assert_eq!(code, 404, "{body}");
    let file = env.dir.join("kiln.toml");
    let bake = format!(r#"{{"command": {{"bake": {{"file": {:?}, "no_cache": true}}}}}}"#, file.to_str().unwrap());
    let stream = [("Authorization", bearer.as_str()), ("Accept", "application/x-ndjson")];
    let (code, head, body) = tcp(port, "POST", "/v1/commands", &stream, &bake);
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("application/x-ndjson"), "{head}");
    let lines: Vec<serde_json::Value> = body.lines().map(json).collect();
    let (last, progress) = lines.split_last().unwrap();
    assert!(progress.iter().any(|l| l["progress"]["finished"]["report"]["outcome"] == "built"), "{body}");
    assert_eq!((last["status"].as_u64(), last["kind"].as_str()), (Some(200), Some("baked")), "{body}");

    // And what it answers is what the CLI answers by itself, without one.
    let images = env.ok(&["images", "--json"]);
    let inspect = env.ok(&["inspect", "web:1.0.0", "--json"]);
    assert!(images.contains("web:b2"), "{images}");
    env.kill_serve();
    assert_eq!(env.ok(&["images", "--json"]), images);
    assert_eq!(env.ok(&["inspect", "web:1.0.0", "--json"]), inspect);
}

#[test]
fn the_tcp_api_checks_the_token_before_the_body_says_nothing_on_401_and_cannot_be_held_open() {
    let _room = common::room("api");
    let _one = serial();
    let mut env = Env::bare("api-hardening", &format!("replicas = 1\n{HEALTH}"));
    let port = common::free_port();
    env.tcp = Some(port);
    env.start_serve(None);
    let token = std::fs::read_to_string(env.home.join("serve.token")).unwrap().trim().to_owned();

    // A 20 MB body without the token: 401 from the head alone.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n{{\"service\":").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    // The 401 says nothing, not where the token lives.
    let body = out.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body.trim(), r#"{"error":"unauthorized"}"#);
    assert!(!out.contains("serve.token") && !out.contains(env.home.to_str().unwrap()), "{out}");
    // The scheme is case-insensitive (RFC 9110, 11.1).
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let h = format!("{scheme} {token}");
        let (code, _, body) = tcp(port, "GET", "/v1/status", &[("Authorization", h.as_str())], "");
        assert_eq!(code, 200, "{scheme}: {body}");
    }

    // A client that sends its head a byte at a time gets 408 within the
    // head time (5 s), whatever it keeps sending.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    for b in b"GET /v1/status HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a')) {
        if slow.write_all(&[*b]).is_err() || t.elapsed() > Duration::from_secs(15) {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(n @ 1..) = slow.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "after {took:?}: {text}");
    assert!(took < Duration::from_secs(8), "408 within the head time: {took:?}");

    // Connections that never finish a head are capped: past the cap the
    // API answers 503 at once, and it serves again once they time out.
    let held: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let busy = held
        .iter()
        .filter(|c| {
            let mut c = *c;
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 12];
            matches!(c.read(&mut buf), Ok(12) if &buf == b"HTTP/1.1 503")
        })
        .count();
    assert!((30..=60).contains(&busy), "about 300 - 256 refused at once: {busy}");
    let threads = || std::fs::read_dir(format!("/proc/{}/task", env.serve.as_ref().unwrap().id())).unwrap().count();
    assert!(threads() < 300, "no thread per refused connection: {}", threads());
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = format!("Bearer {token}");
    loop {
        let (code, _, _) = tcp(port, "GET", "/v1/status", &[("Authorization", h.as_str())], "");
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the API never served again: {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
