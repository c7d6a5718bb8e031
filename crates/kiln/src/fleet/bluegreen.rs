//! Blue-green releases in a fleet. A service's stable slots are one set,
//! blue (`NAME-I`) or green (`NAME-green-I`); a blue-green release starts
//! the whole other set beside it, with the new image. Every host's load
//! balancer lists that set at weight 0 (it health-checks them; no request
//! goes there). Once every instance of it runs, every load balancer routes
//! to each of them, and the smoke checks pass on each one, the leader
//! switches in one write: the other set becomes stable, at once on every
//! host's next round. The old set is kept warm, at weight 0, for
//! `keep_previous`: `kiln rollback --cluster` switches back at once. Then
//! it drains and goes.
//!
//! For: the types, which set a slot belongs to ([`role`]), and the pure
//! decision of each leader round ([`decide`]). Must never: do I/O or read
//! the clock (the leader runs the smoke checks and passes their outcome
//! and the time in).

use serde::{Deserialize, Serialize};

use super::place::Desired;
use super::HostRecord;
use crate::spec::SmokeCheck;

/// Which set a service's stable slots are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// `NAME-0`, `NAME-1`, ... (every service starts blue).
    #[default]
    Blue,
    /// `NAME-green-0`, ...
    Green,
}

impl Color {
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn is_blue(&self) -> bool {
        *self == Color::Blue
    }

    /// The `i`th slot of this set of service `name`.
    pub fn slot(self, name: &str, i: u32) -> String {
        match self {
            Color::Blue => format!("{name}-{i}"),
            Color::Green => format!("{name}-green-{i}"),
        }
    }

    /// The set `slot` of service `name` belongs to, if it is one of them.
    pub fn of(name: &str, slot: &str) -> Option<Color> {
        let rest = slot.strip_prefix(name)?.strip_prefix('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match rest.strip_prefix("green-") {
            Some(i) if digits(i) => Some(Color::Green),
            _ if digits(rest) => Some(Color::Blue),
            _ => None,
        }
    }
}

/// A blue-green release in progress: the other set, `replicas` instances
/// of `image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// `REGISTRY/REPO@sha256:…` (empty in a deploy's plan: the deploy's
    /// own image).
    pub image: String,
    pub phase: Phase,
}

/// Where a blue-green release is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Phase {
    /// The next release: started in full, then checked and switched to.
    Next {
        /// kiln.toml's `[blue_green] smoke`: each run once against every
        /// instance of the set before it gets a request.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        smoke: Vec<SmokeCheck>,
        /// When it began (Unix seconds).
        since: i64,
        /// It fails when not switched to by `since` + this
        /// (`progress_deadline`).
        deadline_secs: u64,
        /// How long the old set stays warm after the switch
        /// (`keep_previous`).
        keep_secs: u64,
    },
    /// The previous release after a switch, kept warm until `until` (Unix
    /// seconds).
    Kept { until: i64 },
    /// The next release failed (`why`): its set leaves. Kept until the
    /// next change, for whoever follows the release.
    Failed { why: String },
}

impl BlueGreen {
    /// Whether its set has slots (it runs, or is kept warm).
    pub fn holds_slots(&self) -> bool {
        !self.image.is_empty() && !matches!(self.phase, Phase::Failed { .. })
    }
}

/// What a slot of a service is to its load balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves the stable release (a canary's share aside).
    Stable,
    /// One of the canary's slots.
    Canary,
    /// The other set of a blue-green release: health-checked, no request.
    Standby,
    /// The other set with no blue-green release: leaving.
    Leaving,
}

/// The role of `slot` of service `name` with desired state `d`.
pub fn role(name: &str, d: &Desired, slot: &str) -> Role {
    if d.canary.is_some() && slot.strip_prefix(name).is_some_and(|r| r.starts_with("-canary-")) {
        return Role::Canary;
    }
    match Color::of(name, slot) {
        Some(c) if c == d.color => Role::Stable,
        Some(_) if d.blue_green.as_ref().is_some_and(BlueGreen::holds_slots) => Role::Standby,
        Some(_) => Role::Leaving,
        // Another name (a canary's slot once it ended): stable until it
        // leaves, as before.
        None => Role::Stable,
    }
}

/// What the leader does for a service's blue-green release this round.
/// Every load balancer must find each instance of the new set healthy
/// first (on standby): a switch then costs no request on any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait,
    /// Every instance of the next set runs and every load balancer routes
    /// to it: run the smoke checks on these (slot, address) pairs, then
    /// [`switch`] on a pass or [`abort`] on a failure.
    Smoke {
        targets: Vec<(String, std::net::SocketAddr)>,
    },
    /// It did not get there by its deadline.
    Abort {
        why: String,
    },
    /// The kept set's time is over: it leaves.
    Release,
}

/// The decision for `d`'s blue-green release at `now` (Unix seconds),
/// from the live hosts' records. Pure.
pub fn decide(name: &str, d: &Desired, records: &[HostRecord], now: i64) -> Decision {
    let Some(bg) = &d.blue_green else { return Decision::Wait };
    match &bg.phase {
        Phase::Kept { until } if now >= *until => Decision::Release,
        Phase::Kept { .. } | Phase::Failed { .. } => Decision::Wait,
        Phase::Next { since, deadline_secs, .. } => {
            let digest = bg.image.rsplit_once('@').map(|(_, d)| d);
            let other = d.color.other();
            let (mut running, mut targets) = (std::collections::BTreeSet::new(), Vec::new());
            for r in records {
                for p in r.placed.iter().filter(|p| p.service == name && Color::of(name, &p.slot) == Some(other)) {
                    let (Some(ip), true) = (r.address, Some(p.image.to_string().as_str()) == digest) else { continue };
                    running.insert(p.slot.clone());
                    let addr = std::net::SocketAddr::new(ip, p.port);
                    if super::route::healthy_at_all(name, addr, records) {
                        targets.push((p.slot.clone(), addr));
                    }
                }
            }
            targets.sort();
            targets.dedup_by(|a, b| a.0 == b.0);
            if targets.len() as u32 >= d.replicas {
                return Decision::Smoke { targets };
            }
            if now >= since + *deadline_secs as i64 {
                return Decision::Abort {
                    why: format!(
                        "after {deadline_secs} s (its progress deadline), {} of {} instances of the new set ran, {} \
                         of them routed to by every load balancer",
                        running.len(),
                        d.replicas,
                        targets.len(),
                    ),
                };
            }
            Decision::Wait
        }
    }
}

/// The desired state after a passed smoke check at `now`: the other set
/// stable, the old one kept warm.
pub fn switch(d: &Desired, now: i64) -> Option<Desired> {
    let bg = d.blue_green.as_ref()?;
    let Phase::Next { keep_secs, .. } = bg.phase else { return None };
    Some(Desired {
        image: bg.image.clone(),
        color: d.color.other(),
        previous: Some(d.image.clone()),
        blue_green: Some(BlueGreen { image: d.image.clone(), phase: Phase::Kept { until: now + keep_secs as i64 } }),
        ..d.clone()
    })
}

/// The desired state without its blue-green release (the kept set
/// released): the other set leaves.
pub fn without(d: &Desired) -> Desired {
    Desired { blue_green: None, ..d.clone() }
}

/// The desired state after the next release failed (`why`): its set
/// leaves, the reason stays for whoever follows it.
pub fn failed(d: &Desired, why: String) -> Desired {
    let image = d.blue_green.as_ref().map(|bg| bg.image.clone()).unwrap_or_default();
    Desired { blue_green: Some(BlueGreen { image, phase: Phase::Failed { why } }), ..d.clone() }
}

#[cfg(test)]
mod tests;
