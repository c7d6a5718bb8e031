//! `kiln chaos --cluster`: kills random serving instances of a fleet
//! service at a set rate, never more than a set share of its slots down at
//! once, and reports how fast each slot served again. A kill is asked of
//! the instance's host through etcd (`/kiln/ask/kill/HOST/INSTANCE`): its
//! agent SIGKILLs the instance on its next round and deletes the ask; to
//! the agent it then simply failed, and it starts a replacement as for any
//! exited instance.
//!
//! For: choosing the next kill and judging what the slots did ([`pick`],
//! [`Tally`]), on rows read by the caller and a clock passed in. Must
//! never: do I/O, or kill past the share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ps::{SlotRow, SlotState};

/// Where kills are asked for: `/kiln/ask/kill/HOST/INSTANCE`.
pub const KILLS: &str = "/kiln/ask/kill/";

/// The next kill, or why there is none now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Kill {
        host: String,
        slot: String,
        instance: String,
    },
    /// Already `down` of the service's slots are not serving (killed and
    /// not back, starting, failing, on a lost host); at most `allowed`.
    Refused {
        down: usize,
        allowed: usize,
    },
    /// The service has no serving instance to kill.
    Nothing,
}

/// The next kill among `service`'s serving slots in `rows`, the `n`-th
/// candidate (the caller's random number), unless `max_share` of its
/// slots are down already (at least one kill is always allowed). A slot
/// whose instance was killed and not yet replaced (`tally`) is down,
/// even while its host still lists it.
pub fn pick(rows: &[SlotRow], service: &str, max_share: f64, tally: &Tally, n: usize) -> Pick {
    let mine: Vec<&SlotRow> = rows.iter().filter(|r| r.service == service && r.state != SlotState::Leaving).collect();
    let allowed = ((mine.len() as f64 * max_share).floor() as usize).max(1);
    let killed = |r: &SlotRow| r.instance.as_deref().is_some_and(|i| tally.kills.contains_key(i));
    // Up: serving and routed to by every load balancer. A replacement
    // its host lists but a load balancer still checks is not up there:
    // killing the other slot then would leave that load balancer none.
    let up = |r: &SlotRow| r.state == SlotState::Serving && r.routed && !killed(r);
    let down = mine.iter().filter(|r| !up(r)).count();
    if down >= allowed {
        return Pick::Refused { down, allowed };
    }
    let serving: Vec<&&SlotRow> = mine.iter().filter(|r| up(r)).collect();
    match serving.get(n % serving.len().max(1)) {
        Some(r) => {
            Pick::Kill { host: r.host.clone(), slot: r.slot.clone(), instance: r.instance.clone().unwrap_or_default() }
        }
        None => Pick::Nothing,
    }
}

/// The kills made and when each slot served again, with another instance.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// By killed instance: (slot, when killed, when its slot served again).
    kills: BTreeMap<String, (String, u64, Option<u64>)>,
    refused: u32,
}

/// What a chaos run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosReport {
    pub service: String,
    pub kills: u32,
    /// Kills not made: too many slots were down already.
    pub refused: u32,
    pub replaced: u32,
    /// Killed instances whose slot did not serve again before the end.
    pub unreplaced: Vec<String>,
    /// From a kill to its slot serving with another instance.
    pub replace_median_ms: Option<u64>,
    pub replace_max_ms: Option<u64>,
}

impl Tally {
    pub fn killed(&mut self, slot: &str, instance: &str, at_ms: u64) {
        self.kills.insert(instance.to_owned(), (slot.to_owned(), at_ms, None));
    }

    pub fn refused(&mut self) {
        self.refused += 1;
    }

    /// What the slots show at `now_ms`: a killed instance's slot serving
    /// with another instance, routed to by every load balancer, is
    /// replaced.
    pub fn observe(&mut self, rows: &[SlotRow], now_ms: u64) {
        for (instance, (slot, _, back)) in self.kills.iter_mut().filter(|(_, k)| k.2.is_none()) {
            let served = rows.iter().any(|r| {
                r.slot == *slot
                    && r.state == SlotState::Serving
                    && r.routed
                    && r.instance.as_deref().is_some_and(|i| i != instance)
            });
            if served {
                *back = Some(now_ms);
            }
        }
    }

    /// Whether every kill's slot serves again.
    pub fn settled(&self) -> bool {
        self.kills.values().all(|k| k.2.is_some())
    }

    pub fn report(&self, service: &str) -> ChaosReport {
        let mut took: Vec<u64> =
            self.kills.values().filter_map(|(_, at, back)| Some(back.as_ref()?.saturating_sub(*at))).collect();
        took.sort_unstable();
        ChaosReport {
            service: service.to_owned(),
            kills: self.kills.len() as u32,
            refused: self.refused,
            replaced: took.len() as u32,
            unreplaced: self.kills.iter().filter(|(_, k)| k.2.is_none()).map(|(i, _)| i.clone()).collect(),
            replace_median_ms: took.get(took.len() / 2).copied(),
            replace_max_ms: took.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fleet::fixtures::slot_row as row;

    #[test]
    fn kills_only_serving_instances_and_never_past_the_share() {
        let rows = vec![
            row("h1", "web-0", SlotState::Serving, "i0"),
            row("h2", "web-1", SlotState::Serving, "i1"),
            row("h1", "web-2", SlotState::Serving, "i2"),
            row("h2", "old", SlotState::Leaving, "i9"),
        ];
        let none = Tally::default();
        assert_eq!(
            pick(&rows, "web", 0.34, &none, 1),
            Pick::Kill { host: "h2".into(), slot: "web-1".into(), instance: "i1".into() }
        );
        assert_eq!(pick(&rows, "api", 0.34, &none, 0), Pick::Nothing, "no slots");
        let mut one_down = rows.clone();
        one_down[0].state = SlotState::Starting;
        // 3 slots at 34 %: one may be down, and one is.
        assert_eq!(pick(&one_down, "web", 0.34, &none, 0), Pick::Refused { down: 1, allowed: 1 });
        // At 67 %, two may.
        assert!(matches!(pick(&one_down, "web", 0.67, &none, 0), Pick::Kill { instance, .. } if instance == "i1"));
        // Listed by its host but not yet routed to by every load balancer:
        // down, so the other slot is not killed meanwhile.
        let mut unrouted = rows.clone();
        unrouted[0].routed = false;
        assert_eq!(pick(&unrouted, "web", 0.34, &none, 0), Pick::Refused { down: 1, allowed: 1 });
        // A kill asked, its host still listing the instance: down all the same.
        let mut t = Tally::default();
        t.killed("web-1", "i1", 0);
        assert_eq!(pick(&rows, "web", 0.34, &t, 0), Pick::Refused { down: 1, allowed: 1 });
    }

    #[test]
    fn a_slot_is_replaced_when_it_serves_with_another_instance() {
        let mut t = Tally::default();
        t.killed("web-0", "i0", 1_000);
        t.killed("web-1", "i1", 1_500);
        t.observe(&[row("h1", "web-0", SlotState::Serving, "i0")], 1_200);
        assert!(!t.settled(), "the killed instance itself is not a replacement");
        t.observe(
            &[row("h1", "web-0", SlotState::Serving, "i5"), row("h2", "web-1", SlotState::Starting, "i6")],
            3_000,
        );
        t.refused();
        let r = t.report("web");
        assert_eq!((r.kills, r.replaced, r.refused, r.unreplaced.clone()), (2, 1, 1, vec!["i1".to_owned()]));
        assert_eq!((r.replace_median_ms, r.replace_max_ms), (Some(2_000), Some(2_000)));
        let mut listed = row("h2", "web-1", SlotState::Serving, "i6");
        listed.routed = false;
        t.observe(&[listed], 4_000);
        assert!(!t.settled(), "listed, but not yet routed to by every load balancer");
        t.observe(&[row("h2", "web-1", SlotState::Serving, "i6")], 4_500);
        assert!(t.settled());
        assert_eq!(t.report("web").replace_max_ms, Some(3_000));
    }
}
