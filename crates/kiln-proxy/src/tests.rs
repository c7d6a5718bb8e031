//! The unit tests of the proxy (`Proxy`: its table, control surface and retry budget).

use super::*;

#[test]
fn release_flags() {
    let r = parse_release_flag("canary=5@127.0.0.1:8001,127.0.0.1:8002").unwrap();
    assert_eq!((r.release.as_str(), r.weight, r.backends.len()), ("canary", 5, 2));
    assert!(parse_release_flag("x=5").is_err());
    assert!(parse_release_flag("x=a@127.0.0.1:1").is_err());
    assert!(parse_release_flag("x=5@localhost").unwrap_err().contains("localhost"));
}

#[test]
fn a_port_another_process_listens_on_is_refused_not_shared() {
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    let e = bind(addr, 2).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    drop(other);
    let ours = bind(addr, 2).unwrap();
    assert_eq!(ours.len(), 2, "its own workers still share the port");
    assert!(bind(addr, 1).is_err(), "nor may a second proxy join them");
}

#[test]
fn the_error_log_writes_a_few_lines_a_second_and_counts_the_rest() {
    let log = ErrorLog::default();
    let admitted = (0..50).filter(|_| log.admit(7).is_some()).count() as u64;
    assert_eq!(admitted, ErrorLog::PER_SECOND);
    assert_eq!(log.admit(8), Some(50 - ErrorLog::PER_SECOND), "the next second says how many were left out");
    assert_eq!(log.admit(8), Some(0), "once");
}

#[test]
fn the_retry_budget_allows_a_fifth_of_traffic_plus_a_reserve() {
    let b = RetryBudget::new();
    let reserve = (0..100).take_while(|_| b.withdraw()).count();
    assert_eq!(reserve, 10);
    for _ in 0..1000 {
        b.deposit();
    }
    let earned = (0..1000).take_while(|_| b.withdraw()).count();
    assert_eq!(earned, 100, "the cap keeps the saved-up budget bounded");
    for _ in 0..50 {
        b.deposit();
    }
    assert_eq!((0..100).take_while(|_| b.withdraw()).count(), 10);
}

#[test]
fn backends_left_out_are_retired_and_come_back_fresh() {
    let p = Proxy::new(ProxyConfig::default());
    let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
    let spec =
        |addrs: Vec<SocketAddr>| vec![TableEntry { release: "web".into(), weight: 1, backends: addrs, fault: None }];
    p.set_releases(spec(vec![a, b])).unwrap();
    let old = p.registry().backends[&a].clone();
    old.failures.store(2, Ordering::Relaxed);
    p.set_releases(spec(vec![b])).unwrap();
    assert!(old.draining.load(Ordering::Relaxed), "retired: its pooled connections get closed");
    assert!(!p.registry().backends.contains_key(&a));
    p.set_releases(spec(vec![a, b])).unwrap();
    let new = p.registry().backends[&a].clone();
    assert!(!new.draining.load(Ordering::Relaxed) && new.failures.load(Ordering::Relaxed) == 0);
    assert!(!p.registry().backends[&b].draining.load(Ordering::Relaxed));
}

#[tokio::test]
async fn backends_report_their_health_new_ones_unhealthy_until_checked() {
    let health = config::HealthCheck {
        path: "/".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
    };
    let checked = Proxy::new(ProxyConfig { health: Some(health), ..ProxyConfig::default() });
    let unchecked = Proxy::new(ProxyConfig::default());
    let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:2".parse().unwrap(), "127.0.0.1:1".parse().unwrap());
    let spec = vec![TableEntry { release: "web".into(), weight: 1, backends: vec![a, b], fault: None }];
    let state = |addr, healthy| BackendState { addr, healthy, draining: false };
    for (p, healthy) in [(&checked, false), (&unchecked, true)] {
        p.set_releases(spec.clone()).unwrap();
        assert_eq!(
            p.control(Control::Backends).await,
            Ok(ControlOutput::Backends(vec![state(b, healthy), state(a, healthy)])),
            "sorted by address; healthy at once only without active checks"
        );
    }
    checked.registry().backends[&a].healthy.store(true, Ordering::Relaxed);
    let Ok(ControlOutput::Backends(now)) = checked.control(Control::Backends).await else { panic!() };
    assert_eq!(now, vec![state(b, false), state(a, true)]);
}

#[tokio::test]
async fn the_control_surface_answers_or_refuses_without_changing_anything() {
    let p = Proxy::new(ProxyConfig::default());
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let spec = vec![TableEntry { release: "web".into(), weight: 3, backends: vec![a], fault: None }];
    assert_eq!(p.control(Control::SetReleases(spec.clone())).await, Ok(ControlOutput::Done));
    assert_eq!(p.control(Control::Releases).await, Ok(ControlOutput::Releases(spec.clone())));
    let unknown = Control::Stats { release: "nope".into(), window_secs: 10 };
    assert_eq!(p.control(unknown).await, Err(ControlError::NoRelease("nope".into())));
    let stats = p.control(Control::Stats { release: "web".into(), window_secs: 10 }).await.unwrap();
    assert!(matches!(stats, ControlOutput::Stats(w) if w.requests == 0));
    // Totals: every answer counted once, 5xx as failed, a drill's
    // injected faults left out (they were no client's request).
    let m = p.registry().releases.values().next().unwrap().clone();
    for status in [200, 200, 503, 404] {
        m.record(status, 1_000, 1);
    }
    m.retries.fetch_add(2, Ordering::Relaxed);
    assert_eq!(
        p.control(Control::Totals).await,
        Ok(ControlOutput::Totals(metrics::Totals { requests: 4, failed: 1, retries: 2 }))
    );
    m.record(503, 10, 1);
    m.injected.fetch_add(1, Ordering::Relaxed);
    assert_eq!(p.totals(), metrics::Totals { requests: 4, failed: 1, retries: 2 });
    let elsewhere: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let drain = |backend| Control::Drain { backend, deadline: Duration::from_millis(50) };
    assert_eq!(p.control(drain(elsewhere)).await, Err(ControlError::NoBackend(elsewhere)));
    let ControlOutput::Drained(r) = p.control(drain(a)).await.unwrap() else { panic!("not a drain report") };
    assert_eq!((r.finished, r.cut), (0, 0), "nothing was in flight");
    let twice = vec![spec[0].clone(), spec[0].clone()];
    assert_eq!(p.control(Control::SetReleases(twice)).await, Err(ControlError::BadRelease("web".into())));
    assert_eq!(p.releases(), spec, "a refused control changes nothing");
    let ControlOutput::Metrics(m) = p.control(Control::Metrics).await.unwrap() else { panic!("not metrics") };
    assert!(m.contains("kiln_proxy_backend_healthy{service=\"default\",backend=\"127.0.0.1:1\"} 1"), "{m}");
}

#[test]
fn weights_change_only_known_releases() {
    let p = Proxy::new(ProxyConfig::default());
    let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
    p.set_releases(vec![TableEntry { release: "blue".into(), weight: 100, backends: vec![a], fault: None }]).unwrap();
    assert!(p.set_weights(&BTreeMap::from([("green".to_owned(), 1)])).is_err());
    assert_eq!(p.releases()[0].weight, 100);
    p.set_weights(&BTreeMap::from([("blue".to_owned(), 0)])).unwrap();
    assert_eq!(p.releases()[0].weight, 0);
    assert!(p
        .set_releases(vec![
            TableEntry { release: "x".into(), weight: 1, backends: vec![a], fault: None },
            TableEntry { release: "x".into(), weight: 1, backends: vec![a], fault: None }
        ])
        .is_err());
}
