//! `kiln ps --cluster`: every slot of the fleet, where it is and what
//! state it is in, from the assignments (what the leader wants where)
//! and the live hosts' records (what each agent runs and lists).
//!
//! For: the table, decided from what was read. Must never: do I/O, or
//! call an instance serving that its host does not list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::reconcile::Assignment;
use super::HostRecord;

/// Where a slot's instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Listed by its host, running the assignment's release: it serves.
    Serving,
    /// Assigned; its host runs no listed instance of that release yet
    /// (pulling, starting, not yet healthy).
    Starting,
    /// Its host failed to start it twice running: the leader places it
    /// elsewhere.
    Failing,
    /// Assigned to a host whose lease is gone.
    HostLost,
    /// Listed, but not (or no longer) assigned there: draining away.
    Leaving,
    /// Out of traffic, frozen and kept for a post-mortem
    /// (`kiln quarantine --cluster`); its slot has another instance.
    Quarantined,
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Serving => "serving",
            SlotState::Starting => "starting",
            SlotState::Failing => "failing",
            SlotState::HostLost => "host-lost",
            SlotState::Leaving => "leaving",
            SlotState::Quarantined => "quarantined",
        }
    }
}

/// One row of `kiln ps --cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRow {
    pub host: String,
    pub slot: String,
    pub service: String,
    /// `REGISTRY/REPO@sha256:…` assigned (or, leaving, the digest it runs).
    pub image: String,
    pub state: SlotState,
    /// The instance listed for it, and its port on the host.
    pub instance: Option<String>,
    pub port: Option<u16>,
    /// Serving, and every host's load balancer for the service that
    /// reports its routes routes to it (a service without load balancers:
    /// as soon as it serves).
    #[serde(default)]
    pub routed: bool,
    /// Serving, found healthy by load balancers that send it nothing yet:
    /// a blue-green release's other set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// The rows, by host then slot.
pub fn rows(assigned: &BTreeMap<(String, String), Assignment>, records: &[HostRecord]) -> Vec<SlotRow> {
    let by_host: BTreeMap<&str, &HostRecord> = records.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut out = Vec::new();
    for ((host, slot), a) in assigned {
        let record = by_host.get(host.as_str());
        let release = a.release();
        let listed =
            record.and_then(|r| r.placed.iter().find(|p| p.slot == *slot && p.release.as_ref() == Some(&release)));
        let state = match (record, listed) {
            (None, _) => SlotState::HostLost,
            (Some(_), Some(_)) => SlotState::Serving,
            (Some(r), None) if r.failing.contains(slot) => SlotState::Failing,
            (Some(_), None) => SlotState::Starting,
        };
        let backend = record.and_then(|r| Some(std::net::SocketAddr::new(r.address?, listed?.port)));
        let routed = listed.is_some() && backend.is_none_or(|b| super::route::routed_by_all(&a.service, b, records));
        let standby = !routed
            && backend
                .is_some_and(|b| records.iter().any(|h| h.standby.get(&a.service).is_some_and(|s| s.contains(&b))));
        out.push(SlotRow {
            host: host.clone(),
            slot: slot.clone(),
            service: a.service.clone(),
            image: a.image.clone(),
            state,
            instance: listed.map(|p| p.instance.clone()),
            port: listed.map(|p| p.port),
            routed,
            standby,
        });
    }
    // Listed instances no assignment (of their release) accounts for.
    for r in records {
        for p in &r.placed {
            let current = assigned
                .get(&(r.name.clone(), p.slot.clone()))
                .is_some_and(|a| p.release.as_ref() == Some(&a.release()));
            if !current {
                out.push(SlotRow {
                    host: r.name.clone(),
                    slot: p.slot.clone(),
                    service: p.service.clone(),
                    image: p.image.to_string(),
                    state: SlotState::Leaving,
                    instance: Some(p.instance.clone()),
                    port: Some(p.port),
                    routed: false,
                    standby: false,
                });
            }
        }
    }
    for r in records {
        out.extend(r.quarantined.iter().map(|p| SlotRow {
            host: r.name.clone(),
            slot: p.slot.clone(),
            service: p.service.clone(),
            image: p.image.to_string(),
            state: SlotState::Quarantined,
            instance: Some(p.instance.clone()),
            port: Some(p.port),
            routed: false,
            standby: false,
        }));
    }
    out.sort_by(|a, b| (&a.host, &a.slot, a.state.name()).cmp(&(&b.host, &b.slot, b.state.name())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::fixtures;

    fn a(c: char) -> Assignment {
        fixtures::assignment(format!("r:5000/web@{}", fixtures::digest(c)))
    }

    fn record(name: &str, placed: &[(&str, char)], failing: &[&str]) -> HostRecord {
        let placed = placed.iter().map(|(slot, c)| fixtures::placed(slot, "web", 1000, *c, Some(a(*c).release())));
        HostRecord {
            failing: failing.iter().map(|s| (*s).to_owned()).collect(),
            ..fixtures::host(name, placed.collect())
        }
    }

    #[test]
    fn each_slot_is_serving_starting_failing_leaving_or_on_a_lost_host() {
        let key = |h: &str, s: &str| (h.to_owned(), s.to_owned());
        let assigned = BTreeMap::from([
            (key("h1", "web-0"), a('b')),
            (key("h1", "web-1"), a('b')),
            (key("h2", "web-2"), a('b')),
            (key("h3", "web-3"), a('b')),
        ]);
        let records = [
            // web-0 runs b; web-1 still runs a (rolling): a leaves, b starts.
            record("h1", &[("web-0", 'b'), ("web-1", 'a')], &[]),
            record("h2", &[], &["web-2"]),
        ];
        let got: Vec<(String, String, &str)> =
            rows(&assigned, &records).into_iter().map(|r| (r.host, r.slot, r.state.name())).collect();
        let want = [
            ("h1", "web-0", "serving"),
            ("h1", "web-1", "leaving"),
            ("h1", "web-1", "starting"),
            ("h2", "web-2", "failing"),
            ("h3", "web-3", "host-lost"),
        ];
        assert_eq!(got, want.map(|(h, s, st)| (h.to_owned(), s.to_owned(), st)));
        let serving = &rows(&assigned, &records)[0];
        assert_eq!((serving.instance.as_deref(), serving.port), (Some("i-web-0"), Some(1000)));
    }
}
