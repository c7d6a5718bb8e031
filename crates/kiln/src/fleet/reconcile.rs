//! What an agent does about its host's assignments: the pure decision
//! ([`decide`]) from what etcd assigns to this host and what runs here.
//! Start before stop, so a replaced instance's slot is never empty longer
//! than it must be.
//!
//! For: deciding. Must never: do I/O (the agent acts on the decision).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// One slot assigned to a host (`/kiln/assign/HOST/SLOT`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// `REGISTRY/REPO@sha256:…`: a digest, never a tag, so every host runs
    /// the same bytes.
    pub image: String,
    pub service: String,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The instance's memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Its CPU limit, in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u64>,
    /// Never two at once: a host cut off from etcd stops it, and the
    /// controller moves it only after that host must have.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub singleton: bool,
    /// The service's health check (`GET path`; None: a connect): the
    /// agent lists an instance for the load balancers only once it passes,
    /// and drains the instance it replaces only then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Only a digest promoted to this channel runs: a signature for it by
    /// the agent's key (the `[promotion]` key) must verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Its secrets, each at a version sealed in etcd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<super::place::FleetSecret>,
    /// Named volumes (name, path inside): the host's own
    /// `$KILN_HOME/volumes/SERVICE/NAME`, shared by the service's
    /// instances on that host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<(String, String)>,
    /// The epoch of the leader that wrote it (its election revision; 0:
    /// written by hand with no leader). An agent refuses a change from an
    /// epoch older than one it has acted on ([`admit`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl Assignment {
    /// What an instance of this assignment is: a hash of everything that
    /// shapes it (image, env, limits, secrets' versions, ...), whoever
    /// wrote it. An instance started for another release of its slot (the
    /// same image with another env, say) is replaced, as a new image's is.
    pub fn release(&self) -> String {
        let bytes = serde_json::to_vec(&self.unstamped()).unwrap_or_default();
        crate::digest::Digest::of(&bytes).hex()[..16].to_owned()
    }

    /// The same assignment, whoever wrote it.
    pub fn unstamped(&self) -> Assignment {
        Assignment { epoch: 0, ..self.clone() }
    }

    /// The digest the image names.
    pub fn digest(&self) -> Option<Digest> {
        self.image.rsplit_once('@').and_then(|(_, d)| Digest::parse(d).ok())
    }
}

/// An instance of a slot on this host, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub slot: String,
    pub instance: String,
    pub image: Digest,
    /// The [`Assignment::release`] it was started for (None: an instance
    /// started before releases were recorded; replaced once).
    pub release: Option<String>,
    /// Still running (an exited one is replaced, then removed).
    pub alive: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    Start { slot: String, assignment: Assignment },
    Remove { slot: String, instance: String },
}

/// What an agent has acted on: the newest leader epoch, and each slot's
/// assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitted {
    pub seen: i64,
    pub accepted: BTreeMap<String, Assignment>,
}

/// The assignments this agent acts on: a slot's assignment that differs
/// from the one it accepted is refused (its accepted one kept, if any)
/// when it comes from an epoch older than `seen`, the newest it has acted
/// on. etcd's fencing stops an old leader's writes at etcd; this stops
/// them at the host too, whatever path they came by. Returns the admitted
/// assignments and the refused slots; `state` moves on (the agent keeps
/// it across restarts).
pub fn admit(
    assigned: BTreeMap<String, Assignment>,
    state: &mut Admitted,
) -> (BTreeMap<String, Assignment>, Vec<String>) {
    let Admitted { seen, accepted } = state;
    let mut out = BTreeMap::new();
    let mut refused = Vec::new();
    let before = *seen;
    for (slot, a) in assigned {
        let same = accepted.get(&slot).is_some_and(|old| old.unstamped() == a.unstamped());
        if !same && a.epoch < before {
            refused.push(format!("{slot}: a change from epoch {} (epoch {before} seen)", a.epoch));
            if let Some(old) = accepted.get(&slot) {
                out.insert(slot, old.clone());
            }
            continue;
        }
        if !same {
            *seen = (*seen).max(a.epoch);
        }
        out.insert(slot, a);
    }
    accepted.clone_from(&out);
    (out, refused)
}

/// The acts that bring this host to its assignments: a slot with no
/// live instance of its digest gets one; an instance of a slot no longer
/// assigned, of another digest, or exited, is removed (after the start
/// that replaces it).
pub fn decide(assigned: &BTreeMap<String, Assignment>, running: &[Running]) -> Vec<Act> {
    let mut starts = Vec::new();
    let mut removes = Vec::new();
    for (slot, a) in assigned {
        let want = a.digest();
        let release = a.release();
        let ok = running.iter().any(|r| {
            r.slot == *slot && r.alive && Some(&r.image) == want.as_ref() && r.release.as_ref() == Some(&release)
        });
        if !ok {
            starts.push(Act::Start { slot: slot.clone(), assignment: a.clone() });
        }
    }
    for r in running {
        let current = assigned
            .get(&r.slot)
            .is_some_and(|a| a.digest().is_some_and(|d| d == r.image) && r.release.as_ref() == Some(&a.release()));
        if !current || !r.alive {
            removes.push(Act::Remove { slot: r.slot.clone(), instance: r.instance.clone() });
        }
    }
    starts.extend(removes);
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn a(c: char) -> Assignment {
        crate::fleet::fixtures::assignment(format!("127.0.0.1:5000/web@{}", d(c)))
    }

    #[test]
    fn a_change_from_an_older_epoch_is_refused_and_the_accepted_one_kept() {
        let mut state = Admitted::default();
        let at = |c: char, epoch: i64| Assignment { epoch, ..a(c) };
        // Leader of epoch 7 assigns web-1.
        let (ok, refused) = admit(BTreeMap::from([("web-1".to_owned(), at('a', 7))]), &mut state);
        assert!(refused.is_empty());
        assert_eq!((ok["web-1"].image.clone(), state.seen), (a('a').image, 7));
        // A change stamped by epoch 5 (an old leader): refused, 'a' kept.
        let (ok, refused) = admit(BTreeMap::from([("web-1".to_owned(), at('b', 5))]), &mut state);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(ok["web-1"].image, a('a').image);
        // A new slot from epoch 5: refused, nothing to keep.
        let (ok, _) =
            admit(BTreeMap::from([("web-1".to_owned(), at('a', 7)), ("web-2".to_owned(), at('a', 5))]), &mut state);
        assert!(!ok.contains_key("web-2"));
        // The same assignment restamped by a later leader, or left as the
        // old leader wrote it: unchanged, admitted.
        let (ok, refused) = admit(BTreeMap::from([("web-1".to_owned(), at('a', 3))]), &mut state);
        assert!(refused.is_empty() && ok.contains_key("web-1"));
        // Epoch 9 changes it: admitted, and 9 is now the newest seen.
        let (ok, _) = admit(BTreeMap::from([("web-1".to_owned(), at('b', 9))]), &mut state);
        assert_eq!((ok["web-1"].image.clone(), state.seen), (a('b').image, 9));
    }

    fn r(slot: &str, id: &str, c: char, alive: bool) -> Running {
        Running { slot: slot.into(), instance: id.into(), image: d(c), alive, release: Some(a(c).release()) }
    }

    #[test]
    fn starts_what_is_missing_replaces_what_differs_and_removes_the_rest() {
        let assigned = BTreeMap::from([("web-1".to_owned(), a('a')), ("web-2".to_owned(), a('b'))]);
        // Nothing runs: both start.
        let acts = decide(&assigned, &[]);
        assert_eq!(acts.len(), 2);
        assert!(acts.iter().all(|x| matches!(x, Act::Start { .. })));
        // All as assigned: nothing to do (idempotent).
        assert!(decide(&assigned, &[r("web-1", "i1", 'a', true), r("web-2", "i2", 'b', true)]).is_empty());
        // web-2 on an old digest, web-1 exited, web-9 no longer assigned.
        let acts = decide(
            &assigned,
            &[r("web-1", "i1", 'a', false), r("web-2", "i2", 'c', true), r("web-9", "i9", 'a', true)],
        );
        let starts: Vec<&str> = acts
            .iter()
            .filter_map(|x| if let Act::Start { slot, .. } = x { Some(slot.as_str()) } else { None })
            .collect();
        let removes: Vec<&str> = acts
            .iter()
            .filter_map(|x| if let Act::Remove { instance, .. } = x { Some(instance.as_str()) } else { None })
            .collect();
        assert_eq!(starts, ["web-1", "web-2"]);
        assert_eq!(removes, ["i1", "i2", "i9"]);
        let first_remove = acts.iter().position(|x| matches!(x, Act::Remove { .. })).unwrap();
        assert!(acts[..first_remove].iter().all(|x| matches!(x, Act::Start { .. })), "start before stop");
        // Nothing assigned: everything goes.
        assert_eq!(decide(&BTreeMap::new(), &[r("web-1", "i1", 'a', true)]).len(), 1);
    }

    #[test]
    fn the_same_image_with_another_env_or_limit_is_another_release_and_replaces_the_instance() {
        let mut changed = a('a');
        changed.env = vec![("MODE".into(), "b".into())];
        assert_ne!(changed.release(), a('a').release());
        // Who wrote it does not change what it is.
        assert_eq!(Assignment { epoch: 9, ..a('a') }.release(), a('a').release());
        let assigned = BTreeMap::from([("web-1".to_owned(), changed.clone())]);
        let acts = decide(&assigned, &[r("web-1", "i1", 'a', true)]);
        assert_eq!(
            acts,
            [
                Act::Start { slot: "web-1".into(), assignment: changed.clone() },
                Act::Remove { slot: "web-1".into(), instance: "i1".into() }
            ]
        );
        // An instance from before releases were recorded is replaced once.
        let old = Running { release: None, ..r("web-1", "i1", 'a', true) };
        assert_eq!(decide(&BTreeMap::from([("web-1".to_owned(), a('a'))]), &[old]).len(), 2);
    }
}
