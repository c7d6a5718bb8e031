//! `kiln plan` end to end: a real store, a real instance through runc, and
//! the plan a deploy would follow from what runs (changing nothing).

use crate::common;

use std::fs;
use std::path::Path;

use common::{json, kiln_err, kiln_ok, tempdir};

/// Follows the demo image (eight lines): `[service.web]` is line 10.
const SERVICES: &str = r#"
[service.web]
image = "web"
env = { HOST = "127.0.0.1" }
replicas = 3
listen = "127.0.0.1:18480"
strategy = "blue-green"
keep_previous = "1m"
blue_green = { smoke = ["/", { path = "/healthz", status = 200 }] }

[service.legacy]
image = "web"
strategy = "recreate"
"#;

fn write(dir: &Path, version: &str) {
    fs::write(dir.join("kiln.toml"), format!("{}{SERVICES}", common::demo_image(version, ""))).unwrap();
}

#[test]
fn plan_shows_the_steps_from_what_runs_and_changes_nothing() {
    let _room = common::room("plan");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    assert!(demo.exists(), "run scripts/build-demo.sh first (scripts/test.sh does)");
    let (dir, home) = (tempdir("plan"), tempdir("plan-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    write(&dir, "1.0.0");

    let e = kiln_err(&home, &dir, &["plan"]);
    assert!(e.contains("kiln.toml:20: service.legacy.image: [image.web] has not been baked yet"), "{e}");
    let e = kiln_err(&home, &dir, &["plan", "nosuch"]);
    assert!(e.contains("service.nosuch: no such service (the file defines: legacy, web)"), "{e}");

    kiln_ok(&home, &dir, &["bake"]);
    let first = json(&kiln_ok(&home, &dir, &["plan", "web", "--json"]));
    let steps = first[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{first}");
    assert_eq!((steps[0]["step"].as_str(), steps[0]["count"].as_u64()), (Some("start"), Some(3)));
    assert!(first[0]["from"].is_null());

    // One instance of v1 runs; v2 is baked.
    let run = json(&kiln_ok(&home, &dir, &["run", "--service", "web", "--json"]));
    let id = run["id"].as_str().unwrap().to_owned();
    write(&dir, "2.0.0");
    kiln_ok(&home, &dir, &["bake"]);
    let before = kiln_ok(&home, &dir, &["ps", "--json"]);

    let out = kiln_ok(&home, &dir, &["plan", "web"]);
    assert!(out.contains("service web: 1 instance(s) of"), "{out}");
    assert!(out.contains("start 3 new instance(s)"), "{out}");
    assert!(out.contains("run 2 smoke check(s) through a private preview listener"), "{out}");
    assert!(out.contains("keep the old instances warm for 60s"), "{out}");
    assert!(out.contains("destroy 1 old instance(s)"), "{out}");
    assert!(out.contains("downtime: none"), "{out}");

    let legacy = kiln_ok(&home, &dir, &["plan", "legacy"]);
    assert!(legacy.contains("nothing running"), "another service's instances are not legacy's: {legacy}");
    let all = json(&kiln_ok(&home, &dir, &["plan", "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 2);

    // Nothing was started or stopped by planning.
    assert_eq!(kiln_ok(&home, &dir, &["ps", "--json"]), before);
    kiln_ok(&home, &dir, &["rm", "--force", &id]);
}

#[test]
fn recreate_plans_say_they_have_downtime() {
    let _room = common::room("plan");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello/bin/demo-app");
    let (dir, home) = (tempdir("plan-recreate"), tempdir("plan-recreate-home"));
    fs::copy(&demo, dir.join("demo-app")).unwrap();
    write(&dir, "1.0.0");
    kiln_ok(&home, &dir, &["bake"]);
    let run = json(&kiln_ok(&home, &dir, &["run", "--service", "legacy", "--json"]));
    write(&dir, "2.0.0");
    kiln_ok(&home, &dir, &["bake"]);
    let out = kiln_ok(&home, &dir, &["plan", "legacy"]);
    assert!(out.contains("1. drain (up to 30s) and destroy 1 old instance(s)"), "{out}");
    assert!(out.contains("downtime: YES"), "{out}");
    kiln_ok(&home, &dir, &["rm", "--force", run["id"].as_str().unwrap()]);
}
