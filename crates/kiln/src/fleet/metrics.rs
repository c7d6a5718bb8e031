//! A fleet's Prometheus metrics (`GET /metrics` on any controller's fleet
//! API): the counters are counted from the fleet's history in etcd, not
//! from what one controller process saw, so every controller answers the
//! same figures and a failover neither resets nor doubles them (the
//! history only grows, so they are monotonic as Prometheus counters must
//! be). The gauges are read at scrape time: each live host's lease,
//! capacity, placed reservations and slots; slots by state (as `kiln ps
//! --cluster` names them); each canary's weights; which controller leads.
//!
//! For: turning what was read into the exposition text. Must never: do
//! I/O (the caller reads etcd), or count anything the history does not
//! record.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::history::release_of;
use super::ps::SlotRow;
use super::reconcile::Assignment;
use super::{HostRow, ServiceRow};
use crate::serve::history::{Entry, Event};
use crate::serve::metrics::{esc, family, Counters};

/// What a scrape reads of the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every history entry, oldest first.
    pub entries: Vec<Entry>,
    /// The hosts whose lease is alive.
    pub hosts: Vec<HostRow>,
    /// Every assignment: (host, slot) → what it runs.
    pub assigned: BTreeMap<(String, String), Assignment>,
    /// `kiln ps --cluster`'s rows.
    pub slots: Vec<SlotRow>,
    pub services: Vec<ServiceRow>,
    /// The leading controller's name, if one leads.
    pub leader: Option<String>,
}

/// The exposition text (version 0.0.4).
pub fn render(v: &FleetView) -> String {
    // The release counters one host keeps, fed by the fleet's entries.
    let mut counters = Counters::default();
    let mut lost: BTreeMap<&str, u64> = BTreeMap::new();
    let mut drains: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &v.entries {
        match &e.event {
            Event::HostLost { host, .. } => *lost.entry(host).or_default() += 1,
            Event::Drain { host, on: true, .. } => *drains.entry(host).or_default() += 1,
            event => counters.observe(&e.service, &e.release, event),
        }
    }
    let mut out = counters.render_counters();
    family(&mut out, "kiln_fleet_hosts_lost_total", "counter", "Hosts whose lease expired and whose slots were moved.");
    for (h, n) in &lost {
        let _ = writeln!(out, "kiln_fleet_hosts_lost_total{{host=\"{}\"}} {n}", esc(h));
    }
    family(&mut out, "kiln_fleet_host_drains_total", "counter", "Times a host was set draining.");
    for (h, n) in &drains {
        let _ = writeln!(out, "kiln_fleet_host_drains_total{{host=\"{}\"}} {n}", esc(h));
    }
    family(&mut out, "kiln_fleet_history_entries", "gauge", "Entries in the fleet's hash-chained history.");
    let _ = writeln!(out, "kiln_fleet_history_entries {}", v.entries.len());

    hosts(&mut out, v);

    // Slots by state, every state named (a zero is a fact too).
    family(&mut out, "kiln_instances", "gauge", "Slots by state, as kiln ps --cluster names them.");
    let mut by_state: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for s in &v.services {
        for state in ["serving", "starting", "failing", "leaving", "host-lost", "quarantined"] {
            by_state.insert((&s.name, state), 0);
        }
    }
    for r in &v.slots {
        *by_state.entry((&r.service, r.state.name())).or_default() += 1;
    }
    for ((s, state), n) in &by_state {
        let _ = writeln!(out, "kiln_instances{{service=\"{}\",state=\"{state}\"}} {n}", esc(s));
    }

    family(&mut out, "kiln_fleet_replicas", "gauge", "Replicas each service's desired state asks for.");
    for s in &v.services {
        let _ = writeln!(out, "kiln_fleet_replicas{{service=\"{}\"}} {}", esc(&s.name), s.desired.replicas);
    }
    family(&mut out, "kiln_release_weight", "gauge", "Each release's share of the service's traffic, fleet-wide.");
    family(&mut out, "kiln_rollout_step", "gauge", "The canary's step (1-based; 0 when none).");
    for s in &v.services {
        let name = esc(&s.name);
        let stable = release_of(&s.desired.image);
        match &s.desired.canary {
            Some(c) => {
                let w = c.weight.min(100);
                let step = c.progress.as_ref().map_or(0, |p| p.step + 1);
                let _ = writeln!(out, "kiln_release_weight{{service=\"{name}\",release=\"{stable}\"}} {}", 100 - w);
                let _ =
                    writeln!(out, "kiln_release_weight{{service=\"{name}\",release=\"{}\"}} {w}", release_of(&c.image));
                let _ = writeln!(out, "kiln_rollout_step{{service=\"{name}\"}} {step}");
            }
            None => {
                let _ = writeln!(out, "kiln_release_weight{{service=\"{name}\",release=\"{stable}\"}} 100");
                let _ = writeln!(out, "kiln_rollout_step{{service=\"{name}\"}} 0");
            }
        }
    }
    family(&mut out, "kiln_fleet_leader", "gauge", "1 for the controller that leads (none while an election runs).");
    if let Some(l) = &v.leader {
        let _ = writeln!(out, "kiln_fleet_leader{{controller=\"{}\"}} 1", esc(l));
    }
    out
}

/// The per-host gauges.
fn hosts(out: &mut String, v: &FleetView) {
    // What the assignments reserve on each host.
    let mut reserved: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for ((host, _), a) in &v.assigned {
        let r = reserved.entry(host).or_default();
        r.0 += a.memory_bytes.unwrap_or(0);
        r.1 += a.millicpus.unwrap_or(0);
        r.2 += 1;
    }
    family(out, "kiln_fleet_hosts", "gauge", "Hosts whose lease is alive.");
    let _ = writeln!(out, "kiln_fleet_hosts {}", v.hosts.len());
    type Figure = fn(&HostRow, (u64, u64, u64), bool) -> Option<String>;
    let rows: [(&str, &str, Figure); 7] = [
        ("kiln_fleet_host_lease_left_seconds", "Seconds left on the host's lease.", |h, _, _| {
            h.lease_left_secs.map(|s| s.to_string())
        }),
        ("kiln_fleet_host_memory_bytes", "Memory the host's agent reports.", |h, _, _| {
            Some(h.host.memory_bytes.to_string())
        }),
        ("kiln_fleet_host_memory_reserved_bytes", "Memory its assigned slots reserve.", |_, r, _| {
            Some(r.0.to_string())
        }),
        ("kiln_fleet_host_cpus", "CPUs the host's agent reports.", |h, _, _| Some(h.host.cpus.to_string())),
        ("kiln_fleet_host_cpus_reserved", "CPUs its assigned slots reserve.", |_, r, _| {
            Some(format!("{}", r.1 as f64 / 1000.0))
        }),
        ("kiln_fleet_host_slots", "Slots assigned to the host.", |_, r, _| Some(r.2.to_string())),
        ("kiln_fleet_host_draining", "1 while the host is drained.", |_, _, d| Some(u8::from(d).to_string())),
    ];
    for (name, help, figure) in rows {
        family(out, name, "gauge", help);
        for h in &v.hosts {
            let r = reserved.get(h.host.name.as_str()).copied().unwrap_or_default();
            if let Some(value) = figure(h, r, h.draining) {
                let _ = writeln!(out, "{name}{{host=\"{}\"}} {value}", esc(&h.host.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::fixtures;
    use crate::fleet::ps::SlotState;
    use crate::serve::history::Outcome;

    fn entry(seq: i64, service: &str, release: &str, event: Event) -> Entry {
        Entry {
            seq,
            service: service.into(),
            release: release.into(),
            at_ms: seq * 1000,
            event,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn started(strategy: &str) -> Event {
        Event::Started {
            digest: "sha256:x".into(),
            tags: vec![],
            revision: None,
            strategy: strategy.into(),
            actor: "ops".into(),
            previous: None,
            changed: vec![],
        }
    }

    #[test]
    fn counters_come_from_the_history_and_gauges_from_what_was_read() {
        let a = fixtures::assignment("reg/web@sha256:aaaaaaaaaaaa0000".into());
        let canary_desired = serde_json::from_value(serde_json::json!({
            "image": "reg/web@sha256:aaaaaaaaaaaa0000",
            "replicas": 3,
            "canary": { "image": "reg/web@sha256:bbbbbbbbbbbb0000", "replicas": 1, "weight": 10 },
        }))
        .unwrap();
        let v = FleetView {
            entries: vec![
                entry(1, "web", "aaaaaaaaaaaa", started("rolling")),
                entry(2, "web", "bbbbbbbbbbbb", started("canary")),
                entry(
                    3,
                    "web",
                    "bbbbbbbbbbbb",
                    Event::Finished { outcome: Outcome::Failed, reason: "p99".into(), deadline: false },
                ),
                entry(4, "", "h2", Event::HostLost { host: "h2".into(), slots: vec!["web-1".into()] }),
                entry(5, "", "h1", Event::Drain { host: "h1".into(), on: true, actor: "ops".into() }),
                entry(6, "", "h1", Event::Drain { host: "h1".into(), on: false, actor: "ops".into() }),
            ],
            hosts: vec![
                HostRow {
                    host: fixtures::host("h1", vec![]),
                    lease_left_secs: Some(4),
                    lease_ttl_secs: 5,
                    draining: false,
                },
                HostRow {
                    host: fixtures::host("h3", vec![]),
                    lease_left_secs: Some(5),
                    lease_ttl_secs: 5,
                    draining: true,
                },
            ],
            assigned: BTreeMap::from([
                (("h1".into(), "web-0".into()), Assignment { memory_bytes: Some(64 << 20), ..a.clone() }),
                (("h1".into(), "web-1".into()), Assignment { millicpus: Some(500), ..a }),
            ]),
            slots: vec![SlotRow {
                host: "h1".into(),
                slot: "web-0".into(),
                service: "web".into(),
                image: String::new(),
                state: SlotState::Serving,
                instance: None,
                port: None,
                routed: false,
                standby: false,
            }],
            services: vec![ServiceRow { name: "web".into(), desired: canary_desired, verdict: None }],
            leader: Some("c2".into()),
        };
        let text = render(&v);
        for line in [
            "kiln_releases_started_total{service=\"web\",strategy=\"canary\"} 1",
            "kiln_releases_started_total{service=\"web\",strategy=\"rolling\"} 1",
            "kiln_releases_total{service=\"web\",strategy=\"canary\",outcome=\"failed\"} 1",
            "kiln_fleet_hosts_lost_total{host=\"h2\"} 1",
            "kiln_fleet_host_drains_total{host=\"h1\"} 1",
            "kiln_fleet_history_entries 6",
            "kiln_fleet_hosts 2",
            "kiln_fleet_host_lease_left_seconds{host=\"h1\"} 4",
            "kiln_fleet_host_memory_reserved_bytes{host=\"h1\"} 67108864",
            "kiln_fleet_host_memory_reserved_bytes{host=\"h3\"} 0",
            "kiln_fleet_host_cpus_reserved{host=\"h1\"} 0.5",
            "kiln_fleet_host_slots{host=\"h1\"} 2",
            "kiln_fleet_host_draining{host=\"h3\"} 1",
            "kiln_fleet_host_draining{host=\"h1\"} 0",
            "kiln_instances{service=\"web\",state=\"serving\"} 1",
            "kiln_instances{service=\"web\",state=\"host-lost\"} 0",
            "kiln_fleet_replicas{service=\"web\"} 3",
            "kiln_release_weight{service=\"web\",release=\"aaaaaaaaaaaa\"} 90",
            "kiln_release_weight{service=\"web\",release=\"bbbbbbbbbbbb\"} 10",
            "kiln_rollout_step{service=\"web\"} 0",
            "kiln_fleet_leader{controller=\"c2\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Each family is declared once, even those one host also has.
        for family in ["kiln_instances", "kiln_release_weight", "kiln_releases_total"] {
            assert_eq!(text.matches(&format!("# TYPE {family} ")).count(), 1, "{family}");
        }
        // No leader during an election: the family, with no sample.
        let none = render(&FleetView { leader: None, ..v });
        assert!(!none.contains("kiln_fleet_leader{"));
    }
}
