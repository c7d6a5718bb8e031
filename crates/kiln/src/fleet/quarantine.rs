//! `kiln quarantine --cluster ID`: a fleet instance taken out of traffic,
//! frozen and kept for a post-mortem on its host, while its slot gets a
//! new instance. The ask is a key, `/kiln/ask/quarantine/HOST/INSTANCE`,
//! written in the same etcd transaction as its history entry; it stays
//! while the instance is quarantined, so an agent that restarts knows. Its
//! agent leaves the instance out of its host record (every load balancer
//! drops it), out of reconciliation (the slot starts a successor, and the
//! instance is never removed), then freezes it and copies what it changed
//! to `$KILN_HOME/quarantine/ID/`, as on one host. `release-quarantine
//! --cluster` deletes the ask with its own entry; the agent then destroys
//! the instance and what was kept. An ask older than [`TTL_MS`] is released
//! by the agent.
//!
//! For: the ask's key and value, and finding an instance's host. Must
//! never: do I/O beyond what the caller hands in.

use serde::{Deserialize, Serialize};

use super::ps::{SlotRow, SlotState};

/// Where quarantines are asked: `/kiln/ask/quarantine/HOST/INSTANCE`.
pub const ASKS: &str = "/kiln/ask/quarantine/";

/// How long a quarantined instance is kept, as one host's default.
pub const TTL_MS: u64 = 24 * 3600 * 1000;

/// An ask's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    pub reason: String,
    pub actor: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// The key of a quarantine of `instance` on `host`.
pub fn key(host: &str, instance: &str) -> String {
    format!("{ASKS}{host}/{instance}")
}

/// The slot row of the instance `wanted` names (an id or a unique prefix
/// of one), serving or already quarantined; or why none.
pub fn find<'a>(rows: &'a [SlotRow], wanted: &str) -> Result<&'a SlotRow, String> {
    let hits: Vec<&SlotRow> = rows
        .iter()
        .filter(|r| r.instance.as_deref().is_some_and(|i| i.starts_with(wanted)))
        .filter(|r| matches!(r.state, SlotState::Serving | SlotState::Quarantined | SlotState::Leaving))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no instance {wanted} in the fleet (kiln ps --cluster lists them)")),
        many => Err(format!(
            "{wanted} names {} instances: {}",
            many.len(),
            many.iter().filter_map(|r| r.instance.clone()).collect::<Vec<_>>().join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, state: SlotState) -> SlotRow {
        crate::fleet::fixtures::slot_row("h1", "web-0", state, instance)
    }

    #[test]
    fn an_instance_is_found_by_a_unique_prefix() {
        let rows = vec![row("web-aa11", SlotState::Serving), row("web-aa22", SlotState::Quarantined)];
        assert_eq!(find(&rows, "web-aa1").unwrap().instance.as_deref(), Some("web-aa11"));
        assert_eq!(find(&rows, "web-aa2").unwrap().state, SlotState::Quarantined);
        assert!(find(&rows, "web-aa").unwrap_err().contains("names 2 instances"));
        assert!(find(&rows, "nope").unwrap_err().contains("no instance nope"));
        assert_eq!(key("h1", "web-aa11"), "/kiln/ask/quarantine/h1/web-aa11");
    }
}
