//! Where a fleet's replicas go: the pure placement decision of the leading
//! controller, from the services' desired replicas, the hosts whose lease
//! is alive, and the current assignments. Replicas spread across hosts (the
//! host with the fewest slots first, then by name); a slot on a host that
//! left is moved to a live one; a changed image is assigned in place (the
//! host's agent replaces the instance start-first); slots beyond the
//! replicas, or of services no longer desired, are removed.
//!
//! For: deciding. Must never: do I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::reconcile::Assignment;

/// A service's desired state (`/kiln/services/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Desired {
    /// `REGISTRY/REPO@sha256:…`.
    pub image: String,
    pub replicas: u32,
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// A change to the assignments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Assign { host: String, slot: String, assignment: Assignment },
    Unassign { host: String, slot: String },
}

/// The changes that bring `current` ((host, slot) → assignment) to
/// `services` on `hosts` (alive). With no live host, nothing is placed.
pub fn decide(
    services: &BTreeMap<String, Desired>,
    hosts: &BTreeSet<String>,
    current: &BTreeMap<(String, String), Assignment>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    // Slots per live host, as they will be: for spreading.
    let mut load: BTreeMap<&str, usize> = hosts.iter().map(|h| (h.as_str(), 0)).collect();
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for ((host, _), _) in current.iter().filter(|((h, _), _)| hosts.contains(h)) {
        *load.entry(host.as_str()).or_default() += 1;
    }
    for (name, d) in services {
        for i in 0..d.replicas {
            let slot = format!("{name}-{i}");
            let assignment = Assignment { image: d.image.clone(), service: name.clone(), env: d.env.clone() };
            let placed: Vec<&String> =
                current.keys().filter(|(h, s)| *s == slot && hosts.contains(h)).map(|(h, _)| h).collect();
            match placed.first() {
                Some(host) => {
                    wanted.insert(((*host).clone(), slot.clone()));
                    if current.get(&((*host).clone(), slot.clone())) != Some(&assignment) {
                        changes.push(Change::Assign { host: (*host).clone(), slot, assignment });
                    }
                }
                None => {
                    let Some((&host, _)) = load.iter().min_by_key(|(h, n)| (**n, **h)) else { continue };
                    *load.entry(host).or_default() += 1;
                    wanted.insert((host.to_owned(), slot.clone()));
                    changes.push(Change::Assign { host: host.to_owned(), slot, assignment });
                }
            }
        }
    }
    for (host, slot) in current.keys() {
        if !wanted.contains(&(host.clone(), slot.clone())) {
            changes.push(Change::Unassign { host: host.clone(), slot: slot.clone() });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(c: char) -> String {
        format!("r:5000/web@sha256:{}", c.to_string().repeat(64))
    }

    fn apply(current: &mut BTreeMap<(String, String), Assignment>, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Assign { host, slot, assignment } => {
                    current.insert((host.clone(), slot.clone()), assignment.clone());
                }
                Change::Unassign { host, slot } => {
                    current.remove(&(host.clone(), slot.clone()));
                }
            }
        }
    }

    #[test]
    fn replicas_spread_move_off_a_lost_host_and_follow_the_image() {
        let services = BTreeMap::from([("web".to_owned(), Desired { image: img('a'), replicas: 3, env: vec![] })]);
        let mut hosts: BTreeSet<String> = ["h1", "h2", "h3"].iter().map(|s| s.to_string()).collect();
        let mut current = BTreeMap::new();
        let c = decide(&services, &hosts, &current);
        apply(&mut current, &c);
        let used: BTreeSet<&String> = current.keys().map(|(h, _)| h).collect();
        assert_eq!(used.len(), 3, "one replica per host: {current:?}");
        assert!(decide(&services, &hosts, &current).is_empty(), "stable once placed");
        // h2 is lost: its slot moves to a live host, and leaves h2.
        hosts.remove("h2");
        let c = decide(&services, &hosts, &current);
        assert!(c.iter().any(|x| matches!(x, Change::Unassign { host, .. } if host == "h2")), "{c:?}");
        apply(&mut current, &c);
        assert_eq!(current.len(), 3);
        assert!(current.keys().all(|(h, _)| h != "h2"));
        // A new image: assigned in place, no slot moves.
        let before: BTreeSet<(String, String)> = current.keys().cloned().collect();
        let services = BTreeMap::from([("web".to_owned(), Desired { image: img('b'), replicas: 3, env: vec![] })]);
        let c = decide(&services, &hosts, &current);
        assert_eq!(c.len(), 3);
        apply(&mut current, &c);
        assert_eq!(current.keys().cloned().collect::<BTreeSet<_>>(), before);
        // Scaled to one: two slots go.
        let one = BTreeMap::from([("web".to_owned(), Desired { image: img('b'), replicas: 1, env: vec![] })]);
        let c = decide(&one, &hosts, &current);
        assert_eq!(c.iter().filter(|x| matches!(x, Change::Unassign { .. })).count(), 2);
        // No live host: nothing placed.
        assert!(decide(&one, &BTreeSet::new(), &BTreeMap::new()).is_empty());
    }
}
