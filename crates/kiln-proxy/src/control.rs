//! The one control surface: [`Control`] (what the controller, the admin
//! API and tests ask), [`ControlOutput`] and [`ControlError`], and what a
//! proxy hands its successor ([`Succession`]).
//!
//! For: the typed vocabulary of the data plane. Must never: do I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use metrics::WindowStats;

use crate::*;

/// Every operation on a running proxy, the one control surface: the admin
/// API parses HTTP into these, and the release controller calls
/// [`Proxy::control`] with them directly.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Replace the whole backend set and weights.
    SetReleases(Vec<TableEntry>),
    /// Change the weights of known releases.
    SetWeights(BTreeMap<String, u32>),
    /// Stop sending to a backend, wait for what it has in flight, cut the rest.
    Drain {
        backend: SocketAddr,
        deadline: Duration,
    },
    Releases,
    /// Windowed error rate and latency of a release (at most 60 s).
    Stats {
        release: String,
        window_secs: u64,
    },
    /// Prometheus text.
    Metrics,
    /// Request counts since start, over every release (what `kiln status`
    /// and `kiln chaos` report), typed: no one parses the Prometheus text.
    Totals,
    /// Each backend the table lists, with whether this proxy finds it
    /// healthy: what a fleet's agent reports so that a release is only
    /// called done once every load balancer routes to it.
    Backends,
}

/// What a [`Control`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlOutput {
    Done,
    Releases(Vec<TableEntry>),
    Drained(DrainReport),
    Stats(WindowStats),
    Metrics(String),
    Totals(metrics::Totals),
    Backends(Vec<BackendState>),
}

/// Why a [`Control`] was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("release {0:?} is empty or given twice")]
    BadRelease(String),
    #[error("no release {0:?}")]
    NoRelease(String),
    #[error("no backend {0}")]
    NoBackend(SocketAddr),
    /// The site serves no such service (or, with no name, more than one).
    #[error("no service {0:?} on this load balancer (with several, name one: ?service=NAME)")]
    NoService(String),
}

/// The state a proxy hands to its successor (see [`crate::handoff`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Succession {
    pub backends: Vec<BackendState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendState {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub draining: bool,
}

/// What a drain saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    pub backend: SocketAddr,
    /// Requests and upgraded connections in flight when the drain began
    /// that finished before the deadline.
    pub finished: u64,
    /// Still in flight at the deadline.
    pub cut: u64,
    pub waited_ms: u64,
}
