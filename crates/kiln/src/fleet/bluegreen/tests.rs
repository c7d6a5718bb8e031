use super::*;
use crate::fleet::change::{apply, rollout, Applied, Change, Rollout};
use crate::fleet::fixtures::{self, digest};
use crate::fleet::route::{table, STABLE, STANDBY};

fn img(c: char) -> String {
    format!("127.0.0.1:5000/web@{}", digest(c))
}

fn check(path: &str) -> SmokeCheck {
    SmokeCheck { method: "GET".into(), path: path.into(), status: 200, contains: None, not_contains: None }
}

/// `web` at `a` (blue), a blue-green release of `b` begun at 100, with a
/// 60 s deadline and 300 s kept warm.
fn releasing() -> Desired {
    let phase = Phase::Next { smoke: vec![check("/")], since: 100, deadline_secs: 60, keep_secs: 300 };
    Desired { blue_green: Some(BlueGreen { image: img('b'), phase }), ..fixtures::desired(&img('a')) }
}

/// Host `name` at `ip` running `slots` (slot, port, image), each routed to
/// by its own load balancer when `routed`.
fn host(name: &str, ip: &str, slots: &[(&str, u16, char)], routed: bool) -> HostRecord {
    let placed: Vec<_> = slots.iter().map(|(s, port, c)| fixtures::placed(s, "web", *port, *c, None)).collect();
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let routes = placed.iter().map(|p| std::net::SocketAddr::new(ip, p.port)).collect::<Vec<_>>();
    let mut h = HostRecord { address: Some(ip), ..fixtures::host(name, placed) };
    h.routes.insert("web".into(), if routed { routes } else { Vec::new() });
    h
}

#[test]
fn slots_are_told_apart_by_set_and_role() {
    assert_eq!(Color::of("web", "web-0"), Some(Color::Blue));
    assert_eq!(Color::of("web", "web-green-12"), Some(Color::Green));
    for other in ["web-canary-0", "webx-0", "web-", "web-green-", "api-0", "web-0a"] {
        assert_eq!(Color::of("web", other), None, "{other}");
    }
    let d = releasing();
    assert_eq!(role("web", &d, "web-1"), Role::Stable);
    assert_eq!(role("web", &d, "web-green-1"), Role::Standby);
    // After it failed, or with none: the other set leaves.
    let failed = super::failed(&d, "no".into());
    assert_eq!(role("web", &failed, "web-green-1"), Role::Leaving);
    assert_eq!(role("web", &without(&d), "web-green-1"), Role::Leaving);
    // Its slots: the stable set, then the other one with the new image;
    // a failed release holds none.
    let slots: Vec<(String, String)> = d.slots("web").into_iter().map(|(s, i)| (s, i.to_owned())).collect();
    assert_eq!(
        slots,
        [
            ("web-0".into(), img('a')),
            ("web-1".into(), img('a')),
            ("web-green-0".into(), img('b')),
            ("web-green-1".into(), img('b'))
        ]
    );
    assert_eq!(failed.slots("web").len(), 2);
}

#[test]
fn the_switch_waits_for_every_instance_routed_everywhere_then_smoke_and_fails_past_its_deadline() {
    let d = releasing();
    let blue = [("web-0", 4000, 'a')];
    let one = vec![
        host("h1", "10.0.0.1", &[blue[0], ("web-green-0", 4001, 'b')], true),
        host("h2", "10.0.0.2", &[("web-1", 4000, 'a')], true),
    ];
    assert_eq!(decide("web", &d, &one, 120), Decision::Wait, "one of two runs");
    let Decision::Abort { why } = decide("web", &d, &one, 160) else { panic!("past its deadline") };
    assert!(why.contains("1 of 2") && why.contains("60 s") && why.contains("0 of them"), "{why}");
    // Both run, but h2's load balancer does not route to them yet.
    let mut both = vec![
        host("h1", "10.0.0.1", &[blue[0], ("web-green-0", 4001, 'b')], true),
        host("h2", "10.0.0.2", &[("web-1", 4000, 'a'), ("web-green-1", 4001, 'b')], false),
    ];
    assert_eq!(decide("web", &d, &both, 120), Decision::Wait);
    // An instance of another image in a green slot does not count.
    both[1] = host("h2", "10.0.0.2", &[("web-1", 4000, 'a'), ("web-green-1", 4001, 'c')], true);
    assert_eq!(decide("web", &d, &both, 120), Decision::Wait);
    both[1] = host("h2", "10.0.0.2", &[("web-1", 4000, 'a'), ("web-green-1", 4001, 'b')], true);
    // h1's record must list h2's routes too: every load balancer routes
    // to every backend.
    for h in &mut both {
        h.routes.insert(
            "web".into(),
            ["10.0.0.1:4000", "10.0.0.1:4001", "10.0.0.2:4000", "10.0.0.2:4001"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
        );
    }
    let Decision::Smoke { targets } = decide("web", &d, &both, 120) else { panic!("all routed") };
    let slots: Vec<&str> = targets.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(slots, ["web-green-0", "web-green-1"]);

    // The switch: green stable with the new image, blue kept warm until
    // now + keep, then released.
    let s = switch(&d, 130).unwrap();
    assert_eq!((s.image.as_str(), s.color, s.previous.as_deref()), (img('b').as_str(), Color::Green, Some(&*img('a'))));
    assert_eq!(s.blue_green, Some(BlueGreen { image: img('a'), phase: Phase::Kept { until: 430 } }));
    assert_eq!(role("web", &s, "web-green-0"), Role::Stable);
    assert_eq!(role("web", &s, "web-0"), Role::Standby);
    assert_eq!(decide("web", &s, &both, 429), Decision::Wait);
    assert_eq!(decide("web", &s, &both, 430), Decision::Release);
    assert_eq!(switch(&s, 500), None, "a kept set is not switched to by the leader");
}

#[test]
fn tables_hold_the_other_set_at_weight_zero_and_leave_out_a_set_that_leaves() {
    let d = releasing();
    let hosts = [host("h1", "10.0.0.1", &[("web-0", 4000, 'a'), ("web-green-0", 4001, 'b')], true)];
    let t = table("web", &d, &hosts);
    let got: Vec<(&str, u32, usize)> = t.iter().map(|e| (e.release.as_str(), e.weight, e.backends.len())).collect();
    assert_eq!(got, [(STABLE, 100, 1), (STANDBY, 0, 1)]);
    let t = table("web", &super::failed(&d, "smoke".into()), &hosts);
    assert_eq!(t.iter().map(|e| e.release.as_str()).collect::<Vec<_>>(), [STABLE], "leaving: no request, no check");
    // Only the new set runs (every blue instance died): still no request
    // goes to a set not switched to.
    let alone = [host("h1", "10.0.0.1", &[("web-green-0", 4001, 'b')], true)];
    let t = table("web", &d, &alone);
    assert!(t.iter().all(|e| e.weight == 0), "{t:?}");
}

#[test]
fn deploys_start_it_rollbacks_abort_it_or_switch_back_at_once() {
    let cur = fixtures::desired(&img('a'));
    let plan = Desired { image: img('b'), ..releasing() };
    let deploy = |cur: &Desired, next: &Desired| {
        let change = Change::Deploy { settings: Box::new(next.clone()), canary: None };
        apply("web", Some(cur), change, 500).unwrap()
    };
    // The plan from kiln.toml: stable stays, the new set starts now.
    let (d, applied) = deploy(
        &cur,
        &Desired {
            blue_green: Some(BlueGreen { image: String::new(), ..plan.blue_green.clone().unwrap() }),
            ..plan.clone()
        },
    );
    let d = d.unwrap();
    assert_eq!(applied, Applied::BlueGreenStarted { image: img('b') });
    assert_eq!(d.image, img('a'));
    let bg = d.blue_green.clone().unwrap();
    assert_eq!(bg.image, img('b'));
    assert!(matches!(bg.phase, Phase::Next { since: 500, deadline_secs: 60, keep_secs: 300, .. }), "{bg:?}");
    // A first deploy has nothing to switch from.
    let first = apply("web", None, Change::Deploy { settings: Box::new(plan.clone()), canary: None }, 0).unwrap();
    assert_eq!(first.0.unwrap().blue_green, None);

    // Rolled back before the switch: it fails, its set leaves.
    let (back, applied) = apply("web", Some(&d), Change::Rollback, 600).unwrap();
    assert_eq!(applied, Applied::BlueGreenAborted { image: img('b') });
    let back = back.unwrap();
    assert!(matches!(&back.blue_green, Some(BlueGreen { phase: Phase::Failed { .. }, .. })));
    assert_eq!(back.slots("web").len(), 2);
    // Followed: a failure, with its reason.
    assert_eq!(
        rollout("web", Some(&back), None, &[], &img('b')),
        Rollout::Failed { why: "its blue-green release did not switch: aborted by a rollback".into() }
    );
    assert_eq!(rollout("web", Some(&d), None, &[], &img('b')), Rollout::BlueGreen { ready: 0, want: 2 });

    // After the switch: a rollback goes back to the kept set at once.
    let switched = switch(&d, 700).unwrap();
    let (back, applied) = apply("web", Some(&switched), Change::Rollback, 710).unwrap();
    assert_eq!(applied, Applied::SwitchedBack { to: img('a') });
    let back = back.unwrap();
    assert_eq!((back.image.as_str(), back.color, back.blue_green.as_ref()), (img('a').as_str(), Color::Blue, None));
    assert_eq!(back.previous, Some(img('b')));
    // A later deploy keeps the set the leader made stable.
    let (later, _) = deploy(&switched, &Desired { image: img('c'), ..fixtures::desired(&img('c')) });
    assert_eq!(later.unwrap().color, Color::Green);
}
