//! Promotion end to end, as root with runc: a digest moves dev → staging →
//! prod only with a passed gate and a valid signature, in order; a service
//! with `channel = "prod"` runs nothing else, whether started by
//! `kiln run --service` or deployed through `kiln serve`; a layer swapped
//! after signing does not start.

use crate::common;

use std::fs;
use std::path::Path;

use common::serve_env::{serial, Env};
use common::*;

const SERVICE: &str = "channel = \"prod\"\n\
[service.web.health]\npath = \"/healthz\"\ninterval = \"200ms\"\n\
[image.web.test]\nchecks = [\"/healthz\"]\ntimeout = \"30s\"\n\
[image.web.scan]\nmax_db_age = \"36500d\"\n";

fn osv() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv").display().to_string()
}

fn refused(env: &Env, args: &[&str], needle: &str) {
    let out = env.kiln(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "kiln {args:?} should be refused: {text}");
    assert!(text.contains(needle), "kiln {args:?}: want {needle:?} in: {text}");
}

fn gate(env: &Env) {
    env.ok(&["test", "web"]);
    env.ok(&["scan", "web", "--db", &osv()]);
    env.ok(&["scan-secrets", "web"]);
}

#[test]
fn only_promoted_signed_digests_run_in_a_channel() {
    let _room = common::room("promote");
    let _one = serial();
    let mut env = Env::bare("promote", SERVICE);
    env.ok(&["bake"]);
    env.ok(&["key", "generate"]);

    // The gate first, then a signature, then the channels in order.
    let out = env.kiln(&["promote-image", "web", "--to", "dev"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the test gate has not run; run `kiln test web`"));
    gate(&env);
    refused(&env, &["promote-image", "web", "--to", "dev"], "not signed");
    env.ok(&["sign", "web"]);
    refused(
        &env,
        &["promote-image", "web", "--to", "staging"],
        "is not promoted to \"dev\", which comes before \"staging\"",
    );
    refused(
        &env,
        &["promote-image", "web", "--to", "qa"],
        "no channel \"qa\" in [promotion] channels (dev, staging, prod)",
    );
    let p = json(&env.ok(&["promote-image", "web", "--to", "dev", "--json"]));
    assert_eq!(p["channels"], serde_json::json!(["dev"]));
    assert!(p["by"].as_str().unwrap().contains('@'), "who: {p}");
    env.ok(&["promote-image", "web", "--to", "staging"]);

    // Not prod yet: a start for the service is refused, naming why.
    refused(
        &env,
        &["run", "--service", "web"],
        "is not promoted to channel \"prod\" (it is promoted to: dev, staging)",
    );
    let p = json(&env.ok(&["promote-image", "web", "--to", "prod", "--json"]));
    assert_eq!(p["channels"], serde_json::json!(["dev", "staging", "prod"]));
    // The channel signatures are independent cosign signatures: `kiln
    // verify` shows them all, and the plain one still verifies.
    let v = json(&env.ok(&["verify", "web", "--json"]));
    assert_eq!(v["channels"]["prod"]["channel"], "prod");
    assert!(v["channels"]["staging"]["promoted_at"].is_string());

    // Deployed through kiln serve: promoted, so it runs.
    env.start_serve(None);
    let (code, text) = env.deploy();
    assert_eq!(code, 0, "{text}\n{}", env.serve_log());
    let stable = env.status()["stable"]["digest"].clone();
    assert!(stable.as_str().is_some_and(|d| d.starts_with("sha256:")), "{stable}");

    // A new build is not promoted: the deploy is refused and stable stays.
    env.version("2.0.0", "");
    env.ok(&["bake"]);
    let (code, text) = env.deploy();
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("not signed") || text.contains("not promoted"), "{text}");
    assert_eq!(env.status()["stable"]["digest"], stable);
    assert_eq!(env.releases_running().len(), 1);
}

#[test]
fn a_layer_swapped_after_signing_does_not_start() {
    let _room = common::room("promote");
    let _one = serial();
    let env = Env::bare("promote-swap", SERVICE);
    env.ok(&["bake"]);
    env.ok(&["key", "generate"]);
    gate(&env);
    env.ok(&["sign", "web"]);
    for c in ["dev", "staging", "prod"] {
        env.ok(&["promote-image", "web", "--to", c]);
    }
    // Replace the demo app's layer blob with other bytes of the same size.
    let m = json(&env.ok(&["inspect", "web", "--json"]));
    let layer = m["manifest"]["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let blob = env.home.join("store/blobs/sha256").join(&layer);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    // The signature still verifies (it covers the manifest, which names
    // the layer's digest), and the start fails on the layer itself.
    let out = env.kiln(&["run", "--service", "web"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&layer[..12]), "names the swapped layer: {err}");
    assert!(env.kiln(&["ps", "--json"]).stdout.windows(4).all(|w| w != b"\"id\""), "nothing started");
}

#[test]
fn kiln_release_runs_the_whole_pipeline_and_stops_at_a_failing_gate() {
    let _room = common::room("promote");
    let _one = serial();
    let mut env = Env::bare("pipeline", SERVICE);
    env.ok(&["key", "generate"]);
    env.start_serve(None);
    let out = env.kiln(&["release", "--db", &osv(), "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), env.serve_log());
    let report = json(stdout.lines().next().unwrap());
    let steps: Vec<&str> = report["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["bake", "test", "scan", "secrets", "sbom", "sign", "promote"]);
    assert_eq!(report["channels"], serde_json::json!(["dev", "staging", "prod"]));
    assert_eq!(report["exit_code"], 0);
    assert_eq!(env.status()["stable"]["digest"], report["digest"], "deployed");

    // A credential baked into the next version: the pipeline stops at the
    // secret scan with its exit code, and nothing is promoted or deployed.
    env.version("2.0.0", ", AWS_ACCESS_KEY_ID = \"AKIAIOSFODNN7EXAMPLE\"");
    let out = env.kiln(&["release", "--db", &osv(), "--json"]);
    assert_eq!(out.status.code(), Some(8), "{}", String::from_utf8_lossy(&out.stderr));
    let failed = json(String::from_utf8_lossy(&out.stdout).lines().next().unwrap());
    let last = failed["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["name"].as_str(), last["passed"].as_bool()), (Some("secrets"), Some(false)));
    assert_eq!(failed["channels"], serde_json::json!([]));
    assert_eq!(env.status()["stable"]["digest"], report["digest"], "stable untouched");
    let text = env.kiln(&["release", "--db", &osv()]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("FAIL secrets"));
}
