//! A host's place in a fleet, on etcd: `kiln agent` registers the host
//! under `/kiln/hosts/NAME`, bound to a lease it keeps alive, with its
//! capacity and how many instances it runs; `kiln hosts` lists the hosts
//! whose lease is alive. A host whose agent dies (or is cut off) vanishes
//! when its lease expires: that is how its loss is detected.
//!
//! Around it: the leading controller's placement ([`place`], [`lead_round`],
//! [`run_controller`]), the agent's reconciliation ([`reconcile`]) and the
//! tables of every host's load balancers ([`route`]).
//!
//! For: registration and the host list. Must never: keep a host's liveness
//! anywhere but in its etcd lease.

pub mod acme;
pub mod agent;
pub mod alerts;
pub mod bluegreen;
pub mod canary;
pub mod change;
pub mod chaos;
pub mod drill;
pub mod etcd;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod history;
pub mod lead;
pub mod lease;
pub mod metrics;
pub mod peer;
pub mod place;
pub mod ps;
pub mod quarantine;
pub mod reconcile;
pub mod records;
pub mod route;
pub mod secrets;

pub use agent::{run_agent, AgentHooks};
pub use lead::{lead_round, run_controller};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use etcd::{Etcd, EtcdError};

/// Where hosts register.
pub const HOSTS: &str = "/kiln/hosts/";
/// Where slots are assigned to hosts: `/kiln/assign/HOST/SLOT`.
pub const ASSIGN: &str = "/kiln/assign/";
/// Hosts being drained: `/kiln/drain/HOST`.
pub const DRAIN: &str = "/kiln/drain/";
/// Services' desired state: `/kiln/services/NAME`.
pub const SERVICES: &str = "/kiln/services/";
/// Each host's load balancer counts of an analysed canary:
/// `/kiln/stats/SERVICE/HOST`.
pub const STATS: &str = "/kiln/stats/";
/// The last judged step of each service's canary: `/kiln/verdicts/SERVICE`.
pub const VERDICTS: &str = "/kiln/verdicts/";
/// The leading controller's key, bound to its lease: its create revision
/// is the leader's epoch, and every write of the leader is conditioned on
/// it.
pub const LEADER: &str = "/kiln/leader";
/// `kiln verify-instances --cluster` writes here: every agent checks its
/// instances for drift when this key's revision moves past the last it
/// answered, and says what it found in its host record.
pub const VERIFY: &str = "/kiln/ask/verify";
/// What is asked of agents (a drift check, chaos kills): read by each
/// agent once a round.
pub const ASKS: &str = "/kiln/ask/";

/// What an agent found when it last checked its instances for drift (on
/// a request, and every [`DRIFT_EVERY`] on its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The revision of the `/kiln/verify` request answered (the newest
    /// seen, when it checked on its own).
    pub asked: i64,
    /// Unix seconds.
    pub at: i64,
    /// Running instances checked.
    pub checked: u32,
    /// The drifted ones, each replaced by the agent (surge-first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<Drifted>,
}

/// An instance that is no longer what kiln started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drifted {
    pub slot: String,
    pub service: String,
    pub instance: String,
    /// What differs, by name (`runtime config: pids limit is 77, kiln set
    /// max`), never a value of the app's.
    pub findings: Vec<String>,
}

/// How often an agent checks its instances for drift on its own.
pub const DRIFT_EVERY: Duration = Duration::from_secs(60);

/// An instance the agent runs for a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub slot: String,
    /// The service the slot is of.
    #[serde(default)]
    pub service: String,
    pub instance: String,
    pub port: u16,
    pub image: crate::digest::Digest,
    /// The [`reconcile::Assignment::release`] it runs (None: from an
    /// older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

/// What an agent says of its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Where other hosts reach its instances and load balancers
    /// (`kiln agent --advertise`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    /// The port its store is served on to other agents ([`peer`]), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    pub memory_bytes: u64,
    pub cpus: u32,
    pub instances: u32,
    /// Unix seconds the agent started.
    pub started_at: i64,
    pub version: String,
    /// The slots it runs, with their instances.
    #[serde(default)]
    pub placed: Vec<Placed>,
    /// Slots it was assigned and could not start twice running (a failed
    /// pull, a refused signature): the leader places them elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<String>,
    /// Its last drift check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// Its instances quarantined (`kiln quarantine --cluster`): in no
    /// load balancer's table, frozen, kept for a post-mortem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Placed>,
    /// What its load balancers route to, by service: the backends each
    /// finds healthy (its own checks) and sends requests to. A release is
    /// done only once every host's load balancer routes to it
    /// ([`change::rollout`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub routes: std::collections::BTreeMap<String, Vec<std::net::SocketAddr>>,
    /// The backends each load balancer finds healthy but sends nothing
    /// (a blue-green release's other set, at weight 0): ready for a
    /// switch.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub standby: std::collections::BTreeMap<String, Vec<std::net::SocketAddr>>,
}

/// One row of `kiln hosts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRow {
    #[serde(flatten)]
    pub host: HostRecord,
    /// Seconds left on the host's lease, and the TTL it was granted.
    pub lease_left_secs: Option<i64>,
    pub lease_ttl_secs: i64,
    /// Set by `kiln drain-host`: nothing new is placed on it.
    #[serde(default)]
    pub draining: bool,
}

/// The hosts whose lease is alive.
pub fn hosts(cluster: &Etcd) -> Result<Vec<HostRow>, EtcdError> {
    let mut rows = Vec::new();
    let drained: Vec<String> =
        cluster.range_prefix(DRAIN)?.into_iter().map(|kv| kv.key[DRAIN.len()..].to_owned()).collect();
    for kv in cluster.range_prefix(HOSTS)? {
        let Ok(host) = serde_json::from_slice::<HostRecord>(&kv.value) else { continue };
        let (left, ttl) = if kv.lease != 0 { cluster.time_to_live(kv.lease)? } else { (None, 0) };
        let draining = drained.contains(&host.name);
        rows.push(HostRow { host, lease_left_secs: left, lease_ttl_secs: ttl, draining });
    }
    rows.sort_by(|a, b| a.host.name.cmp(&b.host.name));
    Ok(rows)
}

/// One row of `kiln services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub desired: place::Desired,
    /// The last judged step of its canary (this one's or a previous one's).
    pub verdict: Option<canary::FleetVerdict>,
}

/// The fleet's services with their last verdicts.
pub fn service_rows(cluster: &Etcd) -> Result<Vec<ServiceRow>, EtcdError> {
    let mut verdicts: std::collections::BTreeMap<String, canary::FleetVerdict> = cluster
        .range_prefix(VERDICTS)?
        .into_iter()
        .filter_map(|kv| {
            Some((kv.key.trim_start_matches(VERDICTS).to_owned(), serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    Ok(services(cluster, &|_| {})?
        .into_iter()
        .map(|(name, (desired, _))| ServiceRow { verdict: verdicts.remove(&name), name, desired })
        .collect())
}

/// This machine's memory (from /proc/meminfo) and CPUs.
pub fn capacity() -> (u64, u32) {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (mem, cpus)
}

/// Sets (or, with None, removes) slot `slot` of host `host`.
pub fn assign(cluster: &Etcd, host: &str, slot: &str, a: Option<&reconcile::Assignment>) -> Result<(), EtcdError> {
    let key = format!("{ASSIGN}{host}/{slot}");
    match a {
        Some(a) => cluster.put(&key, &serde_json::to_vec(a).unwrap_or_default(), 0).map(|_| ()),
        None => cluster.delete(&key),
    }
}

/// Host `host`'s assignments, by slot; ones that do not parse are named
/// in the second list and left out.
pub fn assignments(
    cluster: &Etcd,
    host: &str,
) -> Result<(std::collections::BTreeMap<String, reconcile::Assignment>, Vec<String>), EtcdError> {
    let prefix = format!("{ASSIGN}{host}/");
    let mut out = std::collections::BTreeMap::new();
    let mut bad = Vec::new();
    for kv in cluster.range_prefix(&prefix)? {
        let slot = kv.key.trim_start_matches(&prefix).to_owned();
        match serde_json::from_slice::<reconcile::Assignment>(&kv.value) {
            Ok(a) if a.digest().is_some() => {
                out.insert(slot, a);
            }
            Ok(_) => bad.push(format!("{}: the image is not named by digest", kv.key)),
            Err(e) => bad.push(format!("{}: {e}", kv.key)),
        }
    }
    Ok((out, bad))
}

/// Marks host `host` as draining (or, with false, no longer), with its
/// history entry in the same transaction; false when the history moved
/// since `tip` was read.
pub fn drain(cluster: &Etcd, host: &str, on: bool, actor: &str) -> Result<bool, history::FleetHistoryError> {
    let key = format!("{DRAIN}{host}");
    let tip = history::tip(cluster)?;
    let (compare, mut puts) =
        history::append(&tip, &[records::of_drain(host, on, actor)], crate::time::now_ms() as i64);
    let mut deletes = Vec::new();
    if on {
        puts.push((key, b"{}".to_vec(), 0));
    } else {
        deletes.push(key);
    }
    Ok(cluster.txn(&[compare], &puts, &deletes)?)
}

/// Service `name`'s desired state with the revision it was last written
/// at (None: not in the fleet).
pub fn service(cluster: &Etcd, name: &str) -> Result<Option<(place::Desired, i64)>, EtcdError> {
    let key = format!("{SERVICES}{name}");
    let Some(kv) = cluster.range_prefix(&key)?.into_iter().find(|kv| kv.key == key) else { return Ok(None) };
    let d = serde_json::from_slice(&kv.value)
        .map_err(|e| EtcdError::Malformed { key: key.clone(), message: e.to_string() })?;
    Ok(Some((d, kv.mod_revision)))
}

/// Sets (or, with None, removes) service `name`'s desired state if it was
/// last written at `revision` (0: if it is absent), with `records`
/// appended to the history in the same transaction (log and state
/// together); false when the service or the history moved since they
/// were read.
pub fn set_service_if(
    cluster: &Etcd,
    name: &str,
    d: Option<&place::Desired>,
    revision: i64,
    records: &[history::Record],
) -> Result<bool, history::FleetHistoryError> {
    let key = format!("{SERVICES}{name}");
    let tip = history::tip(cluster)?;
    let (logged, mut puts) = history::append(&tip, records, crate::time::now_ms() as i64);
    let compare = [etcd::Compare::Modified { key: key.clone(), revision }, logged];
    let mut deletes = Vec::new();
    match d {
        Some(d) => puts.push((key, serde_json::to_vec(d).unwrap_or_default(), 0)),
        None => deletes.push(key),
    }
    Ok(cluster.txn(&compare, &puts, &deletes)?)
}

/// Every service's desired state, with the revision it was last written
/// at; one that does not parse is logged, naming its key, and left out.
pub fn services(
    cluster: &Etcd,
    log: &(dyn Fn(&str) + Sync),
) -> Result<std::collections::BTreeMap<String, (place::Desired, i64)>, EtcdError> {
    let mut services = std::collections::BTreeMap::new();
    for kv in cluster.range_prefix(SERVICES)? {
        let name = kv.key.trim_start_matches(SERVICES).to_owned();
        match serde_json::from_slice::<place::Desired>(&kv.value) {
            Ok(d) => {
                services.insert(name, (d, kv.mod_revision));
            }
            Err(e) => log(&format!("{}: {e}", kv.key)),
        }
    }
    Ok(services)
}

/// Every slot's assignment, by (host, slot); one that does not read is
/// left out.
pub fn all_assignments(
    cluster: &Etcd,
) -> Result<std::collections::BTreeMap<(String, String), reconcile::Assignment>, EtcdError> {
    let mut out = std::collections::BTreeMap::new();
    for kv in cluster.range_prefix(ASSIGN)? {
        let Some((host, slot)) = kv.key.trim_start_matches(ASSIGN).split_once('/') else { continue };
        if let Ok(a) = serde_json::from_slice::<reconcile::Assignment>(&kv.value) {
            out.insert((host.to_owned(), slot.to_owned()), a);
        }
    }
    Ok(out)
}

/// The records of the hosts whose lease is alive.
pub fn host_records(cluster: &Etcd) -> Result<Vec<HostRecord>, EtcdError> {
    Ok(cluster.range_prefix(HOSTS)?.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
}
