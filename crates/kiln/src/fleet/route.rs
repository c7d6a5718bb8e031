//! What every host's load balancer for a fleet service routes to: the
//! pure table from the service's desired state and the live hosts'
//! records. Every host's load balancer gets the same table, listing every
//! host's instances of the service, so a canary's share is exact across
//! the fleet: each load balancer's weighted schedule is exact, and the
//! fleet's share is the sum of theirs.
//!
//! For: deciding a table. Must never: do I/O, or list an instance its
//! host does not report running (no traffic goes to a host before it
//! holds the digest and runs it).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::place::Desired;
use super::HostRecord;
use crate::proxy::TableEntry;

/// The release of a canary's instances, in every fleet table.
pub const CANARY: &str = "canary";
/// The release of every other instance of the service.
pub const STABLE: &str = "stable";
/// The release of a blue-green release's other set: weight 0, so every
/// load balancer health-checks its instances and sends them nothing.
pub const STANDBY: &str = "standby";

/// The table of service `name`: while it has a canary, the instances of
/// its canary slots (`NAME-canary-N`) go to the `canary` release with the
/// canary's weight (and a drill's fault); a blue-green release's other
/// set to `standby` at weight 0; every other one (the stable slots, and
/// an instance being replaced in place) to `stable`. A set leaving after
/// a blue-green release is left out. By slot, not by image: a drill's
/// canary runs stable's own digest. A release with no instance is left
/// out and its share goes to the other; backends are sorted, so every
/// host computes the same table.
pub fn table(name: &str, desired: &Desired, hosts: &[HostRecord]) -> Vec<TableEntry> {
    use super::bluegreen::{role, Role};
    let mut by: BTreeMap<&str, Vec<SocketAddr>> = BTreeMap::new();
    for h in hosts {
        let Some(ip) = h.address else { continue };
        for p in h.placed.iter().filter(|p| p.service == name) {
            let release = match role(name, desired, &p.slot) {
                Role::Stable => STABLE,
                Role::Canary => CANARY,
                Role::Standby => STANDBY,
                Role::Leaving => continue,
            };
            by.entry(release).or_default().push(SocketAddr::new(ip, p.port));
        }
    }
    let weight = desired.canary.as_ref().map_or(0, |c| c.weight.min(100));
    let standby = by.remove(STANDBY).map(|mut backends| {
        backends.sort();
        backends.dedup();
        TableEntry { release: STANDBY.to_owned(), weight: 0, backends, fault: None }
    });
    let mut out: Vec<TableEntry> = [(STABLE, 100 - weight), (CANARY, weight)]
        .into_iter()
        .filter_map(|(release, w)| {
            let mut backends = by.remove(release)?;
            backends.sort();
            backends.dedup();
            let fault = desired.canary.as_ref().and_then(|c| c.fault).filter(|_| release == CANARY);
            Some(TableEntry { release: release.to_owned(), weight: w, backends, fault })
        })
        .collect();
    // A release that would get no share while the other has no instance
    // (weight 0 or 100 with one side still starting) takes it all.
    if out.iter().all(|e| e.weight == 0) {
        out.iter_mut().for_each(|e| e.weight = 1);
    }
    out.retain(|e| e.weight > 0);
    out.extend(standby);
    out
}

/// Whether every host whose load balancer for service `name` reports
/// its routes routes to `backend` (vacuously, when none does: a service
/// without load balancers, or one whose load balancers have not started).
pub fn routed_by_all(name: &str, backend: SocketAddr, hosts: &[HostRecord]) -> bool {
    hosts.iter().filter_map(|h| h.routes.get(name)).all(|r| r.contains(&backend))
}

/// Whether every host whose load balancer for service `name` reports
/// finds `backend` healthy, routed to or on standby (at weight 0): a
/// switch to it costs no request anywhere.
pub fn healthy_at_all(name: &str, backend: SocketAddr, hosts: &[HostRecord]) -> bool {
    hosts
        .iter()
        .filter(|h| h.routes.contains_key(name) || h.standby.contains_key(name))
        .all(|h| [&h.routes, &h.standby].iter().any(|m| m.get(name).is_some_and(|r| r.contains(&backend))))
}

/// A service's load balancer on every host: its port, health check and
/// table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub listen: u16,
    pub health: Option<String>,
    /// Its host names and paths (services of one port share a listener).
    pub edge: super::place::FleetEdge,
    pub table: Vec<TableEntry>,
    /// While an analysed canary runs: the window (seconds, at most 60) its
    /// counts are judged on, which every host publishes.
    pub window_secs: Option<u64>,
    /// While the leader obtains its certificate: the ACME tokens its
    /// redirect listener answers (token → key authorization).
    pub challenges: BTreeMap<String, String>,
}

/// Every service with a load balancer (`listen`), with its table.
pub fn tables(services: &BTreeMap<String, Desired>, hosts: &[HostRecord]) -> BTreeMap<String, Routed> {
    services
        .iter()
        .filter_map(|(n, d)| {
            let listen = d.listen?;
            let window_secs = d
                .canary
                .as_ref()
                .filter(|c| !c.steps.is_empty() && c.progress.as_ref().is_some_and(|p| p.paused.is_none()))
                .map(|c| c.step_secs.clamp(1, 60));
            let routed = Routed {
                listen,
                health: d.health.clone(),
                edge: d.edge.clone(),
                table: table(n, d, hosts),
                window_secs,
                challenges: BTreeMap::new(),
            };
            Some((n.clone(), routed))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::fixtures;
    use crate::fleet::place::Canary;

    use crate::fleet::fixtures::digest as d;

    fn host(name: &str, ip: &str, placed: &[(&str, &str, u16, char)]) -> HostRecord {
        let placed = placed.iter().map(|(slot, service, port, c)| fixtures::placed(slot, service, *port, *c, None));
        HostRecord { address: Some(ip.parse().unwrap()), ..fixtures::host(name, placed.collect()) }
    }

    fn desired(canary: Option<(char, u32)>) -> Desired {
        let canary = canary.map(|(c, weight)| Canary {
            image: format!("r/web@{}", d(c)),
            replicas: 1,
            weight,
            steps: vec![],
            step_secs: 0,
            pauses: Default::default(),
            progress: None,
            max_error_rate: None,
            max_p99_ratio: None,
            fault: None,
        });
        Desired { canary, ..fixtures::desired(&format!("r/web@{}", d('a'))) }
    }

    #[test]
    fn every_host_s_instances_by_release_with_the_canary_s_weight() {
        let hosts = [
            host("h2", "10.0.0.2", &[("web-1", "web", 4002, 'a'), ("web-canary-0", "web", 4003, 'b')]),
            host("h1", "10.0.0.1", &[("web-0", "web", 4001, 'a'), ("db-0", "db", 5000, 'a')]),
        ];
        let t = table("web", &desired(Some(('b', 10))), &hosts);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].release.as_str(), t[0].weight), (STABLE, 90));
        let addrs: Vec<String> = t[0].backends.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:4001", "10.0.0.2:4002"], "sorted, other services left out");
        assert_eq!((t[1].release.as_str(), t[1].weight), (CANARY, 10));
        assert_eq!(t[1].backends, ["10.0.0.2:4003".parse().unwrap()]);
        // The same on every host, whatever order the records came in.
        let mut rev = hosts.clone();
        rev.reverse();
        assert_eq!(table("web", &desired(Some(('b', 10))), &rev), t);
        // No canary: one release.
        let t = table("web", &desired(None), &hosts[1..]);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].weight, 100);
    }

    #[test]
    fn a_drill_s_canary_slots_are_the_canary_release_with_its_fault_though_they_run_stable_s_digest() {
        let hosts = [
            host("h1", "10.0.0.1", &[("web-0", "web", 4001, 'a'), ("web-canary-0", "web", 4003, 'a')]),
            host("h2", "10.0.0.2", &[("web-1", "web", 4002, 'a')]),
        ];
        let mut d = desired(Some(('a', 10)));
        d.canary.as_mut().unwrap().fault = Some(503);
        let t = table("web", &d, &hosts);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!((t[0].release.as_str(), t[0].weight, t[0].fault), (STABLE, 90, None));
        assert_eq!(t[0].backends.len(), 2);
        assert_eq!((t[1].release.as_str(), t[1].weight, t[1].fault), (CANARY, 10, Some(503)));
        assert_eq!(t[1].backends, ["10.0.0.1:4003".parse().unwrap()]);
        // The drill over: its slot, while it is still listed, is stable's.
        let t = table("web", &desired(None), &hosts);
        assert_eq!((t.len(), t[0].backends.len(), t[0].fault), (1, 3, None));
    }

    #[test]
    fn a_backend_is_routed_by_all_once_every_load_balancer_reporting_the_service_routes_to_it() {
        let b: SocketAddr = "10.0.0.1:4003".parse().unwrap();
        let other: SocketAddr = "10.0.0.2:4004".parse().unwrap();
        let mut hosts = [host("h1", "10.0.0.1", &[]), host("h2", "10.0.0.2", &[])];
        assert!(routed_by_all("web", b, &hosts), "no load balancer reports the service: nothing to wait for");
        hosts[0].routes.insert("web".into(), vec![b]);
        hosts[1].routes.insert("web".into(), vec![other]);
        assert!(!routed_by_all("web", b, &hosts), "h2's load balancer has not passed it");
        hosts[1].routes.insert("api".into(), vec![b]);
        assert!(!routed_by_all("web", b, &hosts), "another service's routes do not count");
        hosts[1].routes.insert("web".into(), vec![other, b]);
        assert!(routed_by_all("web", b, &hosts));
    }

    #[test]
    fn a_release_without_instances_leaves_its_share_to_the_other() {
        // The canary's instance is not running yet: stable takes it all.
        let hosts = [host("h1", "10.0.0.1", &[("web-0", "web", 4001, 'a')])];
        let t = table("web", &desired(Some(('b', 100))), &hosts);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].release, STABLE);
        assert!(t[0].weight > 0);
        // A host without an address is never routed to.
        let mut h = host("h3", "10.0.0.3", &[("web-0", "web", 4001, 'a')]);
        h.address = None;
        assert!(table("web", &desired(None), &[h]).is_empty());
    }
}
