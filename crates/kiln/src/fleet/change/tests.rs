//! The unit tests of `change`.

use super::*;

fn img(c: char) -> String {
    format!("registry.test/team/web@sha256:{}", c.to_string().repeat(64))
}

fn desired(image: String) -> Desired {
    Desired { replicas: 3, health: Some("/".into()), ..crate::fleet::fixtures::desired(&image) }
}

fn plan() -> CanaryPlan {
    CanaryPlan {
        steps: vec![10, 50],
        step_secs: 30,
        pauses: Default::default(),
        max_error_rate: 0.01,
        max_p99_ratio: 1.5,
    }
}

fn deploy(image: String, canary: Option<CanaryPlan>) -> Change {
    Change::Deploy { settings: Box::new(desired(image)), canary }
}

#[test]
fn a_first_deploy_places_and_a_new_image_rolls_keeping_the_old_one_for_rollback() {
    let (d, what) = apply("web", None, deploy(img('a'), None), 0).unwrap();
    let d = d.unwrap();
    assert_eq!(what, Applied::Created { image: img('a') });
    let (d2, what) = apply("web", Some(&d), deploy(img('b'), None), 0).unwrap();
    let d2 = d2.unwrap();
    assert_eq!(what, Applied::Rolling { from: img('a'), to: img('b') });
    assert_eq!((d2.image.as_str(), d2.previous.as_deref()), (img('b').as_str(), Some(img('a').as_str())));
    // Back, and back again (to b).
    let (d3, what) = apply("web", Some(&d2), Change::Rollback, 0).unwrap();
    let d3 = d3.unwrap();
    assert_eq!(what, Applied::RolledBack { to: img('a') });
    assert_eq!(d3.previous, Some(img('b')));
    let (d4, _) = apply("web", Some(&d3), Change::Rollback, 0).unwrap();
    assert_eq!(d4.unwrap().image, img('b'));
    // Nothing before the first image.
    assert_eq!(apply("web", Some(&d), Change::Rollback, 0), Err(ChangeError::NoPrevious { service: "web".into() }));
}

#[test]
fn the_same_image_changes_settings_in_place_and_keeps_the_canary_in_progress() {
    let (d, _) = apply("web", Some(&desired(img('a'))), deploy(img('b'), Some(plan())), 0).unwrap();
    let d = d.unwrap();
    let mut more = desired(img('a'));
    more.replicas = 5;
    let change = Change::Deploy { settings: Box::new(more), canary: Some(plan()) };
    let (next, what) = apply("web", Some(&d), change, 0).unwrap();
    let next = next.unwrap();
    assert_eq!(what, Applied::Updated { changed: true });
    assert_eq!(next.replicas, 5);
    assert_eq!(next.canary, d.canary, "the canary goes on");
    let (_, what) = apply("web", Some(&next), deploy(img('a'), None), 0).unwrap();
    assert_eq!(what, Applied::Updated { changed: true }, "replicas back to 3");
}

#[test]
fn a_canary_deploy_keeps_stable_and_steps_through_promote_to_promotion() {
    let cur = desired(img('a'));
    let (d, what) = apply("web", Some(&cur), deploy(img('b'), Some(plan())), 0).unwrap();
    let d = d.unwrap();
    assert_eq!(what, Applied::CanaryStarted { image: img('b'), weight: 10 });
    assert_eq!(d.image, img('a'), "stable stays");
    let c = d.canary.clone().unwrap();
    assert_eq!(
        (c.image.as_str(), c.weight, c.steps.as_slice(), c.progress),
        (img('b').as_str(), 10, &[10, 50][..], None)
    );
    // The leader started it at step 0; promote moves it to 50 %.
    let started = Desired {
        canary: Some(Canary { progress: Some(Progress { step: 0, since: 5, ..Progress::default() }), ..c }),
        ..d.clone()
    };
    let (d, what) = apply("web", Some(&started), Change::Promote, 100).unwrap();
    let d = d.unwrap();
    assert_eq!(what, Applied::Advanced { weight: 50 });
    let p = d.canary.as_ref().unwrap().progress.clone().unwrap();
    assert_eq!((p.step, p.since, d.canary.as_ref().unwrap().weight), (1, 100, 50));
    // A paused last step: promote promotes.
    let mut paused = d.clone();
    paused.canary.as_mut().unwrap().progress.as_mut().unwrap().paused = Some("inconclusive".into());
    let (d, what) = apply("web", Some(&paused), Change::Promote, 200).unwrap();
    let d = d.unwrap();
    assert_eq!(what, Applied::Promoted { image: img('b') });
    assert_eq!((d.image, d.previous, d.canary), (img('b'), Some(img('a')), None));
    // Not started yet: promote goes to the first step.
    let (_, what) = apply(
        "web",
        Some(&Desired { canary: started.canary.clone().map(|c| Canary { progress: None, ..c }), ..started.clone() }),
        Change::Promote,
        0,
    )
    .unwrap();
    assert_eq!(what, Applied::Advanced { weight: 10 });
}

#[test]
fn rollback_or_abort_of_a_canary_leaves_stable_and_a_new_deploy_supersedes_it() {
    let cur = desired(img('a'));
    let (d, _) = apply("web", Some(&cur), deploy(img('b'), Some(plan())), 0).unwrap();
    let d = d.unwrap();
    for change in [Change::Rollback, Change::Abort] {
        let (next, what) = apply("web", Some(&d), change, 0).unwrap();
        assert_eq!(what, Applied::CanaryAborted { image: img('b') });
        assert_eq!(next.unwrap(), cur);
    }
    let (next, what) = apply("web", Some(&d), deploy(img('c'), Some(plan())), 0).unwrap();
    assert_eq!(what, Applied::CanaryStarted { image: img('c'), weight: 10 });
    let next = next.unwrap();
    assert_eq!((next.image, next.canary.unwrap().image), (img('a'), img('c')));
    // Rolling instead: the canary is dropped and the new image rolls.
    let (next, _) = apply("web", Some(&d), deploy(img('c'), None), 0).unwrap();
    let next = next.unwrap();
    assert_eq!((next.image, next.previous, next.canary), (img('c'), Some(img('a')), None));
}

#[test]
fn changes_to_what_is_not_there_are_refused_by_kind() {
    let none = |c: Change| apply("web", None, c, 0).unwrap_err();
    for c in [Change::Rollback, Change::Promote, Change::Abort, Change::Down] {
        assert_eq!(none(c), ChangeError::NoService { service: "web".into() });
    }
    let cur = desired(img('a'));
    assert_eq!(
        apply("web", Some(&cur), Change::Abort, 0).unwrap_err(),
        ChangeError::NoCanary { service: "web".into() }
    );
    assert_eq!(
        apply("web", Some(&cur), Change::Promote, 0).unwrap_err(),
        ChangeError::NoCanary { service: "web".into() }
    );
    assert_eq!(apply("web", Some(&cur), Change::Down, 0).unwrap(), (None, Applied::Removed));
}

fn record(placed: &[(&str, char)]) -> crate::fleet::HostRecord {
    use crate::fleet::fixtures;
    let release = |c: char| Some(desired(img(c)).assignment("web", &img(c)).release());
    let placed = placed.iter().map(|(slot, c)| fixtures::placed(slot, "web", 1, *c, release(*c)));
    fixtures::host("h1", placed.collect())
}

#[test]
fn a_rollout_is_done_when_every_replica_runs_the_image_and_nothing_else_does() {
    let d = Desired { replicas: 2, ..desired(img('b')) };
    let at = |placed: &[(&str, char)]| rollout("web", Some(&d), None, &[record(placed)], &img('b'));
    assert_eq!(at(&[("web-0", 'a'), ("web-1", 'a')]), Rollout::Rolling { ready: 0, want: 2 });
    assert_eq!(at(&[("web-0", 'b'), ("web-1", 'a')]), Rollout::Rolling { ready: 1, want: 2 });
    assert_eq!(at(&[("web-0", 'b'), ("web-1", 'b')]), Rollout::Done);
    // Another service's slots, or a canary's, are not this release's.
    let mut r = record(&[("web-0", 'b'), ("web-1", 'b'), ("web-canary-0", 'c')]);
    r.placed.push(crate::fleet::Placed { service: "api".into(), ..r.placed[0].clone() });
    assert_eq!(rollout("web", Some(&d), None, &[r], &img('b')), Rollout::Done);
    assert!(matches!(rollout("web", None, None, &[], &img('b')), Rollout::Failed { .. }));
    // The same image with another env: rolling until every replica
    // runs the new env, not done at once because the digest matches.
    let changed = Desired { env: vec![("MODE".into(), "b".into())], ..d.clone() };
    let at = |placed: &[(&str, char)]| rollout("web", Some(&changed), None, &[record(placed)], &img('b'));
    assert_eq!(at(&[("web-0", 'b'), ("web-1", 'b')]), Rollout::Rolling { ready: 0, want: 2 });
    let mut r = record(&[("web-0", 'b'), ("web-1", 'b')]);
    for p in &mut r.placed {
        p.release = Some(changed.assignment("web", &img('b')).release());
    }
    assert_eq!(rollout("web", Some(&changed), None, &[r], &img('b')), Rollout::Done);
}

#[test]
fn a_rollout_is_done_only_once_every_host_s_load_balancer_routes_to_it() {
    let d = Desired { replicas: 2, ..desired(img('b')) };
    let at = |ip: &str, name: &str| {
        let mut r = record(&[("web-0", 'b')]);
        r.name = name.into();
        r.address = Some(ip.parse().unwrap());
        r
    };
    let (mut h1, mut h2) = (at("10.0.0.1", "h1"), at("10.0.0.2", "h2"));
    let own = |r: &crate::fleet::HostRecord| std::net::SocketAddr::new(r.address.unwrap(), 1);
    let (a1, a2) = (own(&h1), own(&h2));
    let now = |h1: &crate::fleet::HostRecord, h2: &crate::fleet::HostRecord| {
        rollout("web", Some(&d), None, &[h1.clone(), h2.clone()], &img('b'))
    };
    // Both replicas run it; neither load balancer has passed one yet.
    assert_eq!(now(&h1, &h2), Rollout::Routing { hosts: vec!["h1".into(), "h2".into()] });
    // h1's routes to h2's replica; h2's to an old instance only.
    h1.routes.insert("web".into(), vec![a2]);
    h2.routes.insert("web".into(), vec!["10.0.0.9:1".parse().unwrap()]);
    assert_eq!(now(&h1, &h2), Rollout::Routing { hosts: vec!["h2".into()] });
    // Another service's routes do not count.
    h2.routes = [("api".to_owned(), vec![a1])].into();
    assert_eq!(now(&h1, &h2), Rollout::Routing { hosts: vec!["h2".into()] });
    h2.routes.insert("web".into(), vec![a1]);
    assert_eq!(now(&h1, &h2), Rollout::Done);
    // A service without a load balancer is done once its replicas run.
    let quiet = Desired { listen: None, ..d.clone() };
    h2.routes.clear();
    assert_eq!(rollout("web", Some(&quiet), None, &[h1, h2], &img('b')), Rollout::Done);
}

#[test]
fn a_canary_rollout_follows_its_steps_pauses_fails_by_the_verdict_and_is_done_once_promoted() {
    let (d, _) = apply("web", Some(&desired(img('a'))), deploy(img('b'), Some(plan())), 0).unwrap();
    let d = d.unwrap();
    assert_eq!(rollout("web", Some(&d), None, &[], &img('b')), Rollout::Canary { weight: 10 });
    let mut paused = d.clone();
    paused.canary.as_mut().unwrap().progress =
        Some(Progress { inconclusive: 3, paused: Some("inconclusive 3 times".into()), ..Progress::default() });
    assert_eq!(
        rollout("web", Some(&paused), None, &[], &img('b')),
        Rollout::Paused { why: "inconclusive 3 times".into() }
    );
    // Aborted by the leader: failed, with the verdict.
    let verdict = crate::fleet::canary::FleetVerdict {
        at: 0,
        action: "abort".into(),
        image: img('b'),
        weight: 10,
        verdict: crate::release::analysis::Verdict {
            outcome: crate::release::analysis::Outcome::Fail,
            canary_requests: 100,
            stable_requests: 900,
            min_requests: 50,
            confidence: 0.95,
            metrics: vec![],
        },
        hosts: Default::default(),
    };
    let aborted = desired(img('a'));
    let Rollout::Failed { why } = rollout("web", Some(&aborted), Some(&verdict), &[], &img('b')) else {
        panic!("failed")
    };
    assert!(why.contains("failed its analysis at 10 %"), "{why}");
    // Promoted, and running everywhere: done.
    let promoted = Desired { image: img('b'), previous: Some(img('a')), ..desired(img('a')) };
    let placed = [("web-0", 'b'), ("web-1", 'b'), ("web-2", 'b')];
    assert_eq!(rollout("web", Some(&promoted), None, &[record(&placed)], &img('b')), Rollout::Done);
}

fn spec(extra: &str) -> ServiceSpec {
    let text = format!(
            "[service.web]\nimage = \"registry.test/team/web:1\"\nlisten = \"127.0.0.1:8080\"\nreplicas = 2\nmemory = \"64M\"\ncpus = 0.5\nenv = {{ A = \"1\" }}\n{extra}"
        );
    crate::spec::parse(std::path::Path::new("/x/kiln.toml"), &text).unwrap().services.remove("web").unwrap()
}

#[test]
fn a_kiln_toml_service_becomes_desired_state_and_what_a_fleet_cannot_carry_is_refused_naming_the_key() {
    let (d, plan) = from_service(&spec(""), img('a')).unwrap();
    assert_eq!(
        (d.replicas, d.listen, d.memory_bytes, d.millicpus, d.env.clone()),
        (2, Some(8080), Some(64 << 20), Some(500), vec![("A".to_owned(), "1".to_owned())])
    );
    assert!(plan.is_none(), "rolling by default");
    let (_, plan) = from_service(
        &spec("strategy = \"canary\"\n[service.web.canary]\nsteps = [10, 40]\nstep_interval = \"20s\"\n"),
        img('a'),
    )
    .unwrap();
    let plan = plan.unwrap();
    assert_eq!((plan.steps, plan.step_secs), (vec![10, 40], 20));
    // Secrets carry over by name; their versions are resolved when
    // the deploy is written.
    let (d, _) =
        from_service(&spec("secrets = [\"api\", { name = \"db\", env = \"DB_PASSWORD\" }]\n"), img('a')).unwrap();
    let named: Vec<(&str, Option<&str>, &str)> =
        d.secrets.iter().map(|s| (s.name.as_str(), s.env.as_deref(), s.version.as_str())).collect();
    assert_eq!(named, [("api", None, ""), ("db", Some("DB_PASSWORD"), "")]);
    let (d, _) = from_service(&spec("volumes = { data = \"/data\" }\n"), img('a')).unwrap();
    assert_eq!(d.volumes, [("data".to_owned(), "/data".to_owned())]);
    assert_eq!(d.assignment("web", &d.image).volumes, d.volumes, "carried to every slot");
    // Pauses: after the weight before them, in seconds (0: a person's).
    let (_, plan) = from_service(
            &spec(
                "strategy = \"canary\"\n[service.web.canary]\nsteps = [10, \"pause\", 40, { pause = \"90s\" }, 70]\nstep_interval = \"20s\"\n",
            ),
            img('a'),
        )
        .unwrap();
    let plan = plan.unwrap();
    assert_eq!((plan.steps, plan.pauses), (vec![10, 40, 70], std::collections::BTreeMap::from([(0, 0), (1, 90)])));
    let e = from_service(
        &spec("strategy = \"canary\"\n[service.web.canary]\nsteps = [\"pause\", 10]\nstep_interval = \"20s\"\n"),
        img('a'),
    )
    .unwrap_err();
    assert_eq!(e.key, "service.web.canary.steps", "{e}");
    let e = from_service(
        &spec("strategy = \"canary\"\n[service.web.canary]\nsteps = [10]\nstep_interval = \"5m\"\n"),
        img('a'),
    )
    .unwrap_err();
    assert_eq!(e.key, "service.web.canary.step_interval", "{e}");
}

#[test]
fn a_drill_is_a_faulted_canary_of_stable_s_own_image_never_promoted() {
    let cur = desired(img('a'));
    let drill = |weight, window_secs| Change::Drill { weight, window_secs };
    let (next, applied) = apply("web", Some(&cur), drill(10, 2), 0).unwrap();
    let next = next.unwrap();
    assert_eq!(applied, Applied::DrillStarted { image: img('a'), weight: 10 });
    let c = next.canary.clone().unwrap();
    assert_eq!((c.image, c.steps, c.step_secs, c.fault, c.replicas), (img('a'), vec![10], 2, Some(503), 1));
    assert_eq!(next.image, img('a'), "stable untouched");
    // Never promoted by a person; aborted as any canary.
    assert_eq!(
        apply("web", Some(&next), Change::Promote, 0).unwrap_err(),
        ChangeError::DrillNotPromoted { service: "web".into() }
    );
    assert_eq!(apply("web", Some(&next), Change::Abort, 0).unwrap().0.unwrap().canary, None);
    // Not beside another canary, not out of range, not on what is not there.
    assert_eq!(
        apply("web", Some(&next), drill(10, 2), 0).unwrap_err(),
        ChangeError::CanaryInProgress { service: "web".into() }
    );
    assert!(matches!(apply("web", Some(&cur), drill(0, 2), 0), Err(ChangeError::BadDrill { field: "weight", .. })));
    assert!(matches!(apply("web", Some(&cur), drill(51, 2), 0), Err(ChangeError::BadDrill { field: "weight", .. })));
    assert!(matches!(
        apply("web", Some(&cur), drill(10, 61), 0),
        Err(ChangeError::BadDrill { field: "window_ms", .. })
    ));
    assert_eq!(apply("web", None, drill(10, 2), 0).unwrap_err(), ChangeError::NoService { service: "web".into() });
}
