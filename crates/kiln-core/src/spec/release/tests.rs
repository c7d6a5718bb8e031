//! Unit tests of [`super`].

use std::path::Path;

use super::*;
use crate::spec::parse;

fn service(body: &str) -> Result<ReleaseSpec, String> {
    let text = format!("[service.web]\nimage = \"hello:1\"\n{body}");
    parse(Path::new("kiln.toml"), &text).map(|f| f.services["web"].release.clone()).map_err(|e| e.to_string())
}

#[test]
fn defaults_are_one_surge_first_rolling_instance() {
    let r = service("").unwrap();
    assert_eq!(r.replicas, 1);
    assert_eq!(r.listen, None);
    assert_eq!(r.strategy, Strategy::Rolling(RollingSpec { max_surge: 1, max_unavailable: 0 }));
    assert_eq!(r.health.path, None);
    assert_eq!((r.drain_timeout_ms, r.keep_previous_ms, r.progress_deadline_ms), (30_000, 300_000, 600_000));
    assert_eq!(r.keep_releases, 10);
    assert!(service("keep_releases = 0\n").unwrap_err().contains("service.web.keep_releases: must be at least 1"));
}

#[test]
fn parses_every_strategy() {
    let r = service(
        r#"replicas = 3
listen = "127.0.0.1:8080"
strategy = "canary"
drain_timeout = "5s"
[service.web.health]
path = "/healthz"
interval = "250ms"
unhealthy_threshold = 2
[service.web.canary]
steps = [5, "pause", 25, { pause = "1m" }, 75]
step_interval = "10s"
analysis = { min_requests = 20, max_p99_ratio = 3.0 }
"#,
    )
    .unwrap();
    assert_eq!(r.replicas, 3);
    assert_eq!(r.listen, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(r.drain_timeout_ms, 5000);
    assert_eq!(r.health.interval_ms, 250);
    assert_eq!(r.health.unhealthy_threshold, 2);
    let Strategy::Canary(c) = r.strategy else { panic!("canary") };
    use CanaryStep::*;
    assert_eq!(c.steps, vec![Weight(5), Pause(None), Weight(25), Pause(Some(60_000)), Weight(75), Weight(100)]);
    assert_eq!(c.step_interval_ms, 10_000);
    assert_eq!((c.analysis.min_requests, c.analysis.max_p99_ratio), (20, 3.0));
    assert_eq!(c.analysis.confidence, 0.95);

    let r =
        service("strategy = \"blue-green\"\nblue_green = { smoke = [\"/\", { path = \"/v\", contains = \"2\" }] }\n")
            .unwrap();
    let Strategy::BlueGreen(b) = r.strategy else { panic!("blue-green") };
    assert_eq!(b.smoke.len(), 2);
    assert_eq!(
        (b.smoke[1].method.as_str(), b.smoke[1].status, b.smoke[1].contains.as_deref()),
        ("GET", 200, Some("2"))
    );
    assert_eq!(service("strategy = \"recreate\"\n").unwrap().strategy, Strategy::Recreate);
}

#[test]
fn bad_release_keys_name_file_line_and_key() {
    let e = service("strategy = \"yolo\"\n").unwrap_err();
    assert!(e.starts_with("kiln.toml:3: service.web.strategy: unknown strategy \"yolo\""), "{e}");
    let e = service("replicas = 0\n").unwrap_err();
    assert!(e.starts_with("kiln.toml:3: service.web.replicas: must be at least 1"), "{e}");
    let e = service("strategy = \"canary\"\n[service.web.canary]\nsteps = [5, 50, 25]\n").unwrap_err();
    assert!(e.starts_with("kiln.toml:5: service.web.canary.steps[2]: 25 does not increase"), "{e}");
    let e = service("strategy = \"canary\"\ncanary = { steps = [0] }\n").unwrap_err();
    assert!(e.contains("service.web.canary.steps[0]: 0: a weight is a percentage"), "{e}");
    let e = service("strategy = \"canary\"\ncanary = { steps = [\"wait\"] }\n").unwrap_err();
    assert!(e.contains("canary.steps[0]"), "{e}");
    let e = service("canary = { steps = [5] }\n").unwrap_err();
    assert!(e.contains("service.web.canary: is set, but the strategy is rolling"), "{e}");
    let e = service("listen = \"localhost\"\n").unwrap_err();
    assert!(e.starts_with("kiln.toml:3: service.web.listen:"), "{e}");
    let e = service("listen = \"127.0.0.1:0\"\n").unwrap_err();
    assert!(e.contains("fixed port"), "{e}");
    let e = service("rolling = { max_surge = 0 }\n").unwrap_err();
    assert!(e.contains("service.web.rolling.max_surge"), "{e}");
    let e = service("drain_timeout = \"soon\"\n").unwrap_err();
    assert!(e.starts_with("kiln.toml:3: service.web.drain_timeout:"), "{e}");
    let e = service("[service.web.health]\npath = \"healthz\"\n").unwrap_err();
    assert!(e.starts_with("kiln.toml:4: service.web.health.path:"), "{e}");
    let e = service("[service.web.health]\npath = \"/\"\nretries = 3\n").unwrap_err();
    assert!(e.contains(":5") && e.contains("retries"), "{e}");
    let e = service("strategy = \"canary\"\ncanary = { analysis = { confidence = 2.0 } }\n").unwrap_err();
    assert!(e.contains("canary.analysis.confidence: must be between"), "{e}");
    let e = service("strategy = \"canary\"\ncanary = { step_interval = \"100ms\" }\n").unwrap_err();
    assert!(e.contains("canary.step_interval: must be at least 1s"), "{e}");
}

#[test]
fn two_listeners_on_one_address_are_refused_naming_the_second() {
    let text = "[service.a]\nimage = \"x:1\"\nlisten = \"127.0.0.1:8080\"\n\n\
                [service.b]\nimage = \"x:1\"\nstrategy = \"blue-green\"\n\
                listen = \"127.0.0.1:8080\"\n";
    let e = parse(Path::new("kiln.toml"), text).unwrap_err().to_string();
    assert_eq!(
        e,
        "kiln.toml:8: service.b.listen: 127.0.0.1:8080 is already service.a.listen: \
         services share an address only when each names its hosts"
    );
}
