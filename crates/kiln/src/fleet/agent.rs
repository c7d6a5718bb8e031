//! `kiln agent`'s loop on etcd: the host registered under a lease kept
//! alive on its own thread, its assignments admitted (epochs) and handed
//! to the act side each round, its record written when it changed, every
//! service's table handed to its load balancers, an analysed canary's
//! counts published, and the fence when it is cut off.
//!
//! For: the agent's rounds against etcd. Must never: act on the host
//! itself (the hooks do, in `command::agent`), or take desired state
//! without a live lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::etcd::{Etcd, EtcdError};
use super::*;

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
                    let mut routed = if services.values().any(|d| d.listen.is_some()) {
                        route::tables(&services, &host_records(cluster)?)
                    } else {
                        Default::default()
                    };
                    // The tokens of certificates being obtained, read only
                    // while a service asks an ACME CA.
                    if routed.values().any(|r| r.edge.tls.as_ref().is_some_and(|t| t.acme.is_some())) {
                        for (service, tokens) in acme::challenges(cluster)? {
                            if let Some(r) = routed.get_mut(&service) {
                                r.challenges = tokens;
                            }
                        }
                    }
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
