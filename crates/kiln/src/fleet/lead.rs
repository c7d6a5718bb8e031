//! `kiln controller`'s leadership and what the leader does each round:
//! placement ([`place::decide`]), canary steps ([`canary::decide`]) and
//! blue-green switches ([`bluegreen::decide`], with the smoke checks it
//! asks for run here), every write a transaction conditioned on the
//! leader's epoch.
//!
//! For: the leader's rounds against etcd. Must never: decide anything
//! itself (the pure `place` and `canary` do), or write unconditioned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::etcd::{Etcd, EtcdError};
use super::*;

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
        step_blue_green(cluster, epoch, name, d, *revision, &records, log)?;
    }
    Ok(true)
}

/// Moves service `name`'s blue-green release on ([`bluegreen::decide`]):
/// the smoke checks run here, each once on every instance of the new set
/// (they listen on their hosts' addresses), then the switch or the
/// failure is written with its history entries in one transaction,
/// conditioned on the epoch, the service's revision and the history's
/// head; a kept set whose time is over is let go.
fn step_blue_green(
    cluster: &Etcd,
    epoch: i64,
    name: &str,
    d: &place::Desired,
    revision: i64,
    records: &[HostRecord],
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), EtcdError> {
    use bluegreen::{Decision, Phase};
    let now = crate::time::now_secs();
    let image = d.blue_green.as_ref().map(|bg| bg.image.clone()).unwrap_or_default();
    let (next, entries, what) = match bluegreen::decide(name, d, records, now) {
        Decision::Wait => return Ok(()),
        Decision::Release => (bluegreen::without(d), Vec::new(), "its kept set released".to_owned()),
        Decision::Abort { why } => {
            let entry = records::of_blue_green_failed(name, &image, &why, true);
            (bluegreen::failed(d, why.clone()), vec![entry], format!("blue-green failed: {why}"))
        }
        Decision::Smoke { targets } => {
            let smoke = match d.blue_green.as_ref().map(|bg| &bg.phase) {
                Some(Phase::Next { smoke, .. }) => smoke.clone(),
                _ => return Ok(()),
            };
            let failed = smoke.iter().find_map(|c| {
                targets.iter().find_map(|(slot, addr)| {
                    crate::serve::prober::smoke(*addr, c).err().map(|e| format!("smoke check on {slot} ({addr}): {e}"))
                })
            });
            match (failed, bluegreen::switch(d, now)) {
                (Some(why), _) => {
                    let entry = records::of_blue_green_failed(name, &image, &why, false);
                    (bluegreen::failed(d, why.clone()), vec![entry], format!("blue-green failed: {why}"))
                }
                (None, Some(switched)) => {
                    let entries = records::of_switch(name, d, smoke.len() * targets.len());
                    (switched, entries, format!("switched to {image}"))
                }
                (None, None) => return Ok(()),
            }
        }
    };
    let tip = leader_tip(cluster)?;
    let (logged, mut puts) = history::append(&tip, &entries, now * 1000);
    let key = format!("{SERVICES}{name}");
    puts.push((key.clone(), serde_json::to_vec(&next).unwrap_or_default(), 0));
    let compares = [
        etcd::Compare::Created { key: LEADER.to_owned(), revision: epoch },
        etcd::Compare::Modified { key, revision },
        logged,
    ];
    if cluster.txn(&compares, &puts, &[])? {
        log(&format!("{name}: {what}"));
    } else {
        log(&format!("{name}: {what}: not written, the service or the history changed, or another leads"));
    }
    Ok(())
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
    // Running, and routed to by every host's load balancer (every one that
    // reports its routes: one that failed to start holds nothing up): a
    // step's window is judged on the whole fleet's share from its start.
    let running = records
        .iter()
        .flat_map(|r| r.placed.iter().map(move |p| (r, p)))
        .filter(|(_, p)| {
            p.service == name && p.slot.starts_with(&prefix) && Some(p.image.to_string().as_str()) == digest
        })
        .filter(|(r, p)| r.address.is_some_and(|ip| route::routed_by_all(name, (ip, p.port).into(), records)))
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
