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

pub mod alerts;
pub mod canary;
pub mod change;
pub mod chaos;
pub mod etcd;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod history;
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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

/// What the agent loop calls on its host (the act side, kept out of
/// this module): the host's record, the reconciliation of its
/// assignments, the fence (stop singletons when cut off), and its log.
pub struct AgentHooks<'a> {
    pub record: &'a mut dyn FnMut() -> HostRecord,
    pub reconcile: &'a mut dyn FnMut(std::collections::BTreeMap<String, reconcile::Assignment>),
    /// The host's load balancers brought to the fleet's tables ([`route::tables`]).
    /// Returns, for each service with an analysed canary, what the host's
    /// load balancer counted over the window asked for.
    pub route: &'a mut dyn FnMut(
        std::collections::BTreeMap<String, route::Routed>,
    ) -> std::collections::BTreeMap<String, canary::HostStats>,
    pub fence: &'a mut dyn FnMut(),
    /// What this host acted on when the agent started (kept across
    /// restarts), and where it is kept when it changes.
    pub admitted: reconcile::Admitted,
    pub keep: &'a mut dyn FnMut(&reconcile::Admitted),
    pub log: &'a (dyn Fn(&str) + Sync),
}

impl std::fmt::Debug for AgentHooks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentHooks")
    }
}

/// `kiln agent`: registers `record()` under a lease of `ttl` seconds until
/// `stop`. A thread of its own renews the lease every third of the TTL,
/// so a slow act (an image pull, a stop's grace) never lets it lapse; a
/// lease that expired (etcd unreachable for longer than the TTL) is
/// replaced by a new one, with the last record written under it at once.
/// Each round of the main loop, while the lease is alive, reads the host's
/// assignments, hands them to `reconcile` and writes `record()` when it
/// changed: an agent that cannot renew its lease takes no new desired
/// state. Returns when
/// `stop` is set, revoking the lease so the host leaves at once.
pub fn run_agent(
    cluster: &Etcd,
    name: &str,
    ttl: i64,
    stop: &AtomicBool,
    hooks: AgentHooks<'_>,
) -> Result<(), EtcdError> {
    let AgentHooks { record, reconcile, route, fence, mut admitted, keep, log } = hooks;
    let key = format!("{HOSTS}{name}");
    let ttl_d = Duration::from_secs(ttl.max(1) as u64);
    let lease = lease::Lease::new(ttl);
    let stale = || lease.age();
    let current = || lease.current();
    let last: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(serde_json::to_vec(&record()).unwrap_or_default());
    // No lease, or one that expired: the host registers again at once,
    // with the last record written.
    let register = |expired: Option<i64>| -> Result<(), EtcdError> {
        if expired.is_some() {
            log("the lease expired: registering again");
        }
        let id = cluster.grant(ttl)?;
        let value = last.lock().map(|v| v.clone()).unwrap_or_default();
        cluster.put(&key, &value, id)?;
        lease.set(Some(id));
        Ok(())
    };
    std::thread::scope(|s| {
        s.spawn(|| lease.keep_alive(cluster, stop, log, &register));
        let mut fenced = false;
        let mut written: Option<(i64, Vec<u8>)> = None;
        let mut published: std::collections::BTreeMap<String, Instant> = std::collections::BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            // Cut off for two TTLs: its lease is gone and the controller
            // may move its singletons; they stop here first.
            match stale() {
                Some(age) if age > 2 * ttl_d => {
                    if !fenced {
                        log("no lease renewed for two TTLs: stopping singletons");
                    }
                    fenced = true;
                    fence();
                }
                _ => fenced = false,
            }
            // No new desired state without a live lease.
            let fresh = stale().is_some_and(|age| age < ttl_d);
            if let (Some(id), true) = (current(), fresh) {
                let mut step = || -> Result<(), EtcdError> {
                    let (assigned, bad) = assignments(cluster, name)?;
                    for b in bad {
                        log(&b);
                    }
                    let before = admitted.clone();
                    let (assigned, refused) = reconcile::admit(assigned, &mut admitted);
                    for r in refused {
                        log(&format!("refused {r}"));
                    }
                    if admitted != before {
                        keep(&admitted);
                    }
                    reconcile(assigned);
                    let value = serde_json::to_vec(&record()).unwrap_or_default();
                    if let Ok(mut l) = last.lock() {
                        l.clone_from(&value);
                    }
                    // Written only when it changed: the lease, not the
                    // record, says the host is alive (a write per round
                    // per host would load etcd for nothing).
                    if written.as_ref() != Some(&(id, value.clone())) {
                        cluster.put(&key, &value, id)?;
                        written = Some((id, value));
                    }
                    // Every service's table from every live host's record:
                    // reads only, and only while the lease is fresh (cut
                    // off, the load balancers keep their last tables).
                    let services: std::collections::BTreeMap<String, place::Desired> =
                        services(cluster, log)?.into_iter().map(|(n, (d, _))| (n, d)).collect();
                    let routed = if services.values().any(|d| d.listen.is_some()) {
                        route::tables(&services, &host_records(cluster)?)
                    } else {
                        Default::default()
                    };
                    let counted = route(routed);
                    // An analysed canary's counts, for the leader to judge
                    // with every other host's: at most once a second, under
                    // the host's lease (they leave with it).
                    for (service, stats) in counted {
                        let key = format!("{STATS}{service}/{name}");
                        if published.get(&key).is_some_and(|t: &Instant| t.elapsed() < Duration::from_secs(1)) {
                            continue;
                        }
                        cluster.put(&key, &serde_json::to_vec(&stats).unwrap_or_default(), id)?;
                        published.insert(key, Instant::now());
                    }
                    let done: Vec<String> = published
                        .keys()
                        .filter(|k| {
                            let service = k.trim_start_matches(STATS).split('/').next().unwrap_or_default();
                            services.get(service).and_then(|d| d.canary.as_ref()).is_none_or(|c| c.progress.is_none())
                        })
                        .cloned()
                        .collect();
                    for key in done {
                        cluster.delete(&key)?;
                        published.remove(&key);
                    }
                    Ok(())
                };
                if let Err(e) = step() {
                    log(&e.to_string());
                }
            }
            lease.pause(started, stop);
        }
    });
    lease.revoke(cluster);
    Ok(())
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

/// One leading round: reads services, live hosts and assignments, and
/// applies [`place::decide`]'s changes, each a transaction conditioned on
/// `epoch` (the leader key's create revision). Returns false when a write
/// was refused: leadership is lost, and nothing more is written.
pub fn lead_round(
    cluster: &Etcd,
    epoch: i64,
    seen: &mut std::collections::BTreeMap<String, Instant>,
    fence: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<bool, EtcdError> {
    let versioned = services(cluster, log)?;
    let services: std::collections::BTreeMap<String, place::Desired> =
        versioned.iter().map(|(n, (d, _))| (n.clone(), d.clone())).collect();
    let draining: std::collections::BTreeSet<String> =
        cluster.range_prefix(DRAIN)?.into_iter().map(|kv| kv.key.trim_start_matches(DRAIN).to_owned()).collect();
    let records = host_records(cluster)?;
    let mut hosts = std::collections::BTreeMap::new();
    for r in &records {
        let info = place::HostInfo {
            memory_bytes: r.memory_bytes,
            millicpus: u64::from(r.cpus) * 1000,
            draining: draining.contains(&r.name),
            failing: r.failing.iter().cloned().collect(),
            running: r.placed.iter().map(|p| (p.slot.clone(), p.release.clone().unwrap_or_default())).collect(),
        };
        hosts.insert(r.name.clone(), info);
    }
    let current = all_assignments(cluster)?;
    // A host whose lease is gone may still run a singleton until its agent
    // must have stopped it: `fence` after this controller last saw it
    // (after it started leading, for a host it never saw).
    let now = Instant::now();
    for h in hosts.keys() {
        seen.insert(h.clone(), now);
    }
    let fencing: std::collections::BTreeSet<String> = current
        .keys()
        .map(|(h, _)| h)
        .filter(|h| !hosts.contains_key(*h))
        .filter(|h| seen.entry((*h).clone()).or_insert(now).elapsed() < fence)
        .cloned()
        .collect();
    let (changes, notes) = place::decide(&services, &hosts, &current, &fencing);
    for n in notes {
        log(&n);
    }
    // A lost host's slots leave it: recorded in the history with the
    // first of them this round.
    let mut lost: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for change in &changes {
        if let place::Change::Unassign { host, slot } = change {
            if !hosts.contains_key(host) {
                lost.entry(host.clone()).or_default().push(slot.clone());
            }
        }
    }
    for change in changes {
        let (mut puts, deletes, mut entries) = match &change {
            place::Change::Assign { host, slot, assignment } => {
                let stamped = reconcile::Assignment { epoch, ..(**assignment).clone() };
                let value = serde_json::to_vec(&stamped).unwrap_or_default();
                (vec![(format!("{ASSIGN}{host}/{slot}"), value, 0)], vec![], Vec::new())
            }
            place::Change::Unassign { host, slot } => {
                let entries = match lost.remove(host) {
                    Some(slots) => vec![records::of_lost_host(host, slots)],
                    None => Vec::new(),
                };
                (vec![], vec![format!("{ASSIGN}{host}/{slot}")], entries)
            }
        };
        let mut compares = vec![etcd::Compare::Created { key: LEADER.to_owned(), revision: epoch }];
        if !entries.is_empty() {
            let tip = leader_tip(cluster)?;
            let (logged, logged_puts) =
                history::append(&tip, &std::mem::take(&mut entries), crate::time::now_ms() as i64);
            compares.push(logged);
            puts.extend(logged_puts);
        }
        if !cluster.txn(&compares, &puts, &deletes)? {
            // Refused: by the epoch (leadership lost) or by the history
            // (another writer appended; the next round decides again).
            if cluster.get(LEADER)?.is_some_and(|(rev, _)| rev == epoch) {
                log("a write was refused: the history moved; decided again next round");
                return Ok(true);
            }
            log("a write was refused: no longer the leader");
            return Ok(false);
        }
        log(&format!("{change:?}"));
    }
    for (name, (d, revision)) in &versioned {
        step_canary(cluster, epoch, name, d, *revision, &records, log)?;
    }
    Ok(true)
}

/// The history's end, for the leader's writes: an unreadable head is an
/// etcd value that no longer reads as what kiln wrote.
fn leader_tip(cluster: &Etcd) -> Result<history::Tip, EtcdError> {
    history::tip(cluster).map_err(|e| match e {
        history::FleetHistoryError::Etcd(e) => e,
        other => EtcdError::Malformed { key: history::HEAD.into(), message: other.to_string() },
    })
}

/// Moves service `name`'s analysed canary on ([`canary::decide`]): its
/// new state and the verdict that decided it are written in one
/// transaction, conditioned on the leader's epoch and on the service not
/// having changed since it was read (a person's `kiln place` wins).
fn step_canary(
    cluster: &Etcd,
    epoch: i64,
    name: &str,
    d: &place::Desired,
    revision: i64,
    records: &[HostRecord],
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), EtcdError> {
    let Some(c) = d.canary.as_ref().filter(|c| !c.steps.is_empty()) else { return Ok(()) };
    let digest = c.image.rsplit_once('@').map(|(_, d)| d);
    let prefix = format!("{name}-canary-");
    let running = records
        .iter()
        .flat_map(|r| &r.placed)
        .filter(|p| p.service == name && p.slot.starts_with(&prefix) && Some(p.image.to_string().as_str()) == digest)
        .count() as u32;
    let stats_prefix = format!("{STATS}{name}/");
    let hosts: std::collections::BTreeMap<String, canary::HostStats> = cluster
        .range_prefix(&stats_prefix)?
        .into_iter()
        .filter_map(|kv| {
            Some((kv.key.trim_start_matches(&stats_prefix).to_owned(), serde_json::from_slice(&kv.value).ok()?))
        })
        .collect();
    let obs = canary::Observed { running, hosts };
    let now = crate::time::now_secs();
    use records::CanaryAct;
    let (next, verdict, act) = match canary::decide(c, &c.analysis(), &obs, now) {
        canary::Decision::Wait => return Ok(()),
        canary::Decision::Set { canary: next, verdict } => {
            let act = match (&c.progress, &next.progress) {
                (None, _) => CanaryAct::Start,
                (_, Some(p)) if p.paused.is_some() => CanaryAct::Pause,
                (Some(a), Some(b)) if b.step > a.step => CanaryAct::Advance,
                _ => CanaryAct::Extend,
            };
            (place::Desired { canary: Some(next), ..d.clone() }, verdict, act)
        }
        canary::Decision::Promote { verdict } => {
            let promoted =
                place::Desired { image: c.image.clone(), previous: Some(d.image.clone()), canary: None, ..d.clone() };
            (promoted, Some(verdict), CanaryAct::Promote)
        }
        canary::Decision::Abort { verdict } => {
            (place::Desired { canary: None, ..d.clone() }, Some(verdict), CanaryAct::Abort)
        }
    };
    let action = format!("{act:?}").to_lowercase();
    // Its history entries go in the same transaction as the step.
    let entries = records::of_canary(name, &d.image, c, next.canary.as_ref(), act, verdict.as_ref());
    let tip = leader_tip(cluster)?;
    let (logged, mut puts) = history::append(&tip, &entries, now * 1000);
    let key = format!("{SERVICES}{name}");
    puts.push((key.clone(), serde_json::to_vec(&next).unwrap_or_default(), 0));
    if let Some(verdict) = verdict {
        let record = canary::FleetVerdict {
            at: now,
            action: action.clone(),
            image: c.image.clone(),
            weight: c.weight,
            verdict,
            hosts: obs.hosts.iter().map(|(h, s)| (h.clone(), (s.canary.requests, s.stable.requests))).collect(),
        };
        puts.push((format!("{VERDICTS}{name}"), serde_json::to_vec(&record).unwrap_or_default(), 0));
    }
    let compares = [
        etcd::Compare::Created { key: LEADER.to_owned(), revision: epoch },
        etcd::Compare::Modified { key, revision },
        logged,
    ];
    if cluster.txn(&compares, &puts, &[])? {
        log(&format!("{name}: canary {action} (at {} %)", c.weight));
    } else {
        log(&format!(
            "{name}: canary {action} not written: the service or the history changed, or another controller leads"
        ));
    }
    Ok(())
}

/// `kiln controller`: campaigns for leadership with a lease of `ttl`
/// seconds (renewed on a thread of its own); while leading, places every
/// third of the TTL ([`lead_round`]). A controller whose lease lapsed, or
/// whose conditioned write was refused, stops leading at once and
/// campaigns again. On `stop`, the lease is revoked: another controller
/// leads within a round. After each round it led, `after_round` runs with
/// the epoch (the fleet's webhooks: [`alerts`]).
pub fn run_controller(
    cluster: &Etcd,
    name: &str,
    ttl: i64,
    stop: &AtomicBool,
    log: &(dyn Fn(&str) + Sync),
    after_round: &mut dyn FnMut(&Etcd, i64),
) -> Result<(), EtcdError> {
    let lease = lease::Lease::new(ttl);
    let current = || lease.current();
    let set = |v: Option<i64>| lease.set(v);
    // An expired lease ends leadership: the main loop campaigns again
    // under a new one.
    let lapsed = |expired: Option<i64>| -> Result<(), EtcdError> {
        if expired.is_some() {
            set(None);
        }
        Ok(())
    };
    std::thread::scope(|s| {
        s.spawn(|| lease.keep_alive(cluster, stop, log, &lapsed));
        let mut epoch: Option<i64> = None;
        let mut seen = std::collections::BTreeMap::new();
        // An agent stops a singleton 2 × TTL after its last renewal, and
        // its key lasted one TTL past that: the fence is a TTL from when
        // the host was last seen, plus a margin for the stop itself.
        let fence = Duration::from_secs(ttl.max(1) as u64) + Duration::from_secs(3);
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut step = || -> Result<(), EtcdError> {
                let id = match current() {
                    Some(id) => id,
                    None => {
                        epoch = None;
                        let id = cluster.grant(ttl)?;
                        set(Some(id));
                        id
                    }
                };
                if epoch.is_none() {
                    if cluster.txn_if_created_at(
                        LEADER,
                        0,
                        &[(LEADER.to_owned(), name.as_bytes().to_vec(), id)],
                        &[],
                    )? {
                        epoch = cluster.get(LEADER)?.map(|(rev, _)| rev);
                        seen.clear();
                        log(&format!("leading, epoch {}", epoch.unwrap_or(0)));
                    } else {
                        return Ok(());
                    }
                }
                if let Some(e) = epoch {
                    if lead_round(cluster, e, &mut seen, fence, log)? {
                        after_round(cluster, e);
                    } else {
                        epoch = None;
                    }
                }
                Ok(())
            };
            if let Err(e) = step() {
                log(&e.to_string());
            }
            lease.pause(started, stop);
        }
    });
    lease.revoke(cluster);
    Ok(())
}
