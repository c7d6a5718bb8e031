//! Builders for the fleet's unit tests: a digest of one repeated
//! character, an assignment, a host's record and an instance it lists.
//!
//! For: tests only (compiled with them). Must never: be reached from
//! kiln's code.

use super::reconcile::Assignment;
use super::{HostRecord, Placed};
use crate::digest::Digest;

/// `sha256:cccc…`.
pub fn digest(c: char) -> Digest {
    Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

/// A service's desired state: 2 replicas of `image` behind a load
/// balancer on port 8080, nothing else set.
pub fn desired(image: &str) -> super::place::Desired {
    super::place::Desired {
        image: image.to_owned(),
        replicas: 2,
        env: vec![],
        memory_bytes: None,
        millicpus: None,
        singleton: false,
        listen: Some(8080),
        health: None,
        canary: None,
        color: Default::default(),
        blue_green: None,
        channel: None,
        previous: None,
        secrets: Vec::new(),
        volumes: Vec::new(),
        edge: Default::default(),
    }
}

/// Service `web` running `image`, nothing else set.
pub fn assignment(image: String) -> Assignment {
    Assignment {
        image,
        service: "web".into(),
        env: Vec::new(),
        memory_bytes: None,
        millicpus: None,
        singleton: false,
        health: None,
        channel: None,
        secrets: Vec::new(),
        volumes: Vec::new(),
        epoch: 0,
    }
}

/// Instance `i-SLOT` of `service` on `port`, running `sha256:cccc…` as
/// `release`.
pub fn placed(slot: &str, service: &str, port: u16, c: char, release: Option<String>) -> Placed {
    Placed {
        slot: slot.into(),
        service: service.into(),
        instance: format!("i-{slot}"),
        port,
        image: digest(c),
        release,
    }
}

/// A `kiln ps --cluster` row: `web`'s `slot` on `host`, its `instance`
/// on port 1, in `state`.
pub fn slot_row(host: &str, slot: &str, state: super::ps::SlotState, instance: &str) -> super::ps::SlotRow {
    super::ps::SlotRow {
        host: host.into(),
        slot: slot.into(),
        service: "web".into(),
        image: String::new(),
        state,
        instance: Some(instance.into()),
        port: Some(1),
        routed: state == super::ps::SlotState::Serving,
        standby: false,
    }
}

/// Host `name` (1 GiB, 2 CPUs, no address) listing `placed`.
pub fn host(name: &str, placed: Vec<Placed>) -> HostRecord {
    HostRecord {
        name: name.into(),
        address: None,
        peer_port: None,
        memory_bytes: 1 << 30,
        cpus: 2,
        instances: placed.len() as u32,
        started_at: 0,
        version: "0".into(),
        placed,
        failing: Vec::new(),
        verified: None,
        quarantined: Vec::new(),
        routes: Default::default(),
        standby: Default::default(),
    }
}
