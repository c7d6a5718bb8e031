//! A fleet's webhooks: the leading controller turns the fleet's history
//! into the same alerts one host's `kiln serve` sends (`[[notify]]` of the
//! controller's kiln.toml, [`crate::observe::notify`] delivering them),
//! plus `host-lost`. Which entries were alerted is a cursor in etcd
//! (`/kiln/notify-cursor`, the last entry's sequence number), so a new
//! leader goes on where the old one stopped.
//!
//! Log before state: a round queues each entry's deliveries on the
//! controller's disk first, then advances the cursor, conditioned on the
//! leader's epoch. A leader that dies between the two leaves the cursor
//! behind, and the next one queues those entries again, with the same
//! delivery ids (`X-Kiln-Delivery`): delivery is at least once, and a
//! receiver dedupes by id. A delivery queued but not yet sent when its
//! controller dies is sent when that controller starts again.
//!
//! Hooks added to a fleet with a history begin at its end: old entries
//! are not alerted.
//!
//! For: the cursor and which entries a round hands to the notifier. Must
//! never: send anything itself, or advance the cursor past an entry not
//! yet queued.

use serde::{Deserialize, Serialize};

use super::etcd::Etcd;
use super::history::{self, FleetHistoryError};
use crate::serve::history::Entry;

/// The last entry alerted.
pub const CURSOR: &str = "/kiln/notify-cursor";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    seq: i64,
}

/// One round of the leader (epoch `epoch`): hands every entry after the
/// cursor to `queue` (which must have it on disk when it returns Ok),
/// then advances the cursor. How many entries it queued; none when the
/// cursor was only set (first round) or this controller no longer leads.
pub fn round(
    cluster: &Etcd,
    epoch: i64,
    queue: &mut dyn FnMut(&Entry) -> std::io::Result<()>,
) -> Result<usize, AlertsError> {
    let cursor = match cluster.get(CURSOR)? {
        Some((_, v)) => {
            serde_json::from_slice::<Cursor>(&v)
                .map_err(|e| AlertsError::Cursor { key: CURSOR, problem: e.to_string() })?
                .seq
        }
        None => {
            // Hooks new to this fleet: start at the history's end.
            let seq = history::tip(cluster)?.last.map_or(0, |(s, _)| s);
            advance(cluster, epoch, seq)?;
            return Ok(0);
        }
    };
    let entries = history::entries_after(cluster, cursor)?;
    let Some(last) = entries.last().map(|e| e.seq) else { return Ok(0) };
    for e in &entries {
        queue(e).map_err(|source| AlertsError::Queue { seq: e.seq, source })?;
    }
    Ok(if advance(cluster, epoch, last)? { entries.len() } else { 0 })
}

/// Sets the cursor to `seq` if the leader is still `epoch`'s.
fn advance(cluster: &Etcd, epoch: i64, seq: i64) -> Result<bool, AlertsError> {
    let value = serde_json::to_vec(&Cursor { seq }).unwrap_or_default();
    Ok(cluster.txn_if_created_at(super::LEADER, epoch, &[(CURSOR.to_owned(), value, 0)], &[])?)
}

/// Why a round stopped.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error(transparent)]
    Etcd(#[from] super::etcd::EtcdError),
    #[error(transparent)]
    History(#[from] FleetHistoryError),
    #[error("etcd key {key}: {problem}")]
    Cursor { key: &'static str, problem: String },
    /// A delivery could not be written to the controller's disk: the
    /// cursor stays, and the entry is queued again next round.
    #[error("queueing the alerts of history entry {seq}: {source}")]
    Queue { seq: i64, source: std::io::Error },
}
