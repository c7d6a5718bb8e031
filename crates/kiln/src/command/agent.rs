//! `kiln agent`: a host in a fleet. Registers it under a lease, admits
//! and reconciles its assignments (starting a slot's instance from the
//! registry or a peer, with its sealed secrets; listing it once ready;
//! draining and stopping the one it replaces), runs the host's load
//! balancers from the fleet's tables, stops singletons when cut off, and
//! serves its store and logs to the other agents.
//!
//! For: the agent's acts on its host. Must never: decide placement,
//! reconciliation or routing (the pure `fleet::place`, `fleet::reconcile`
//! and `fleet::route` do).

use super::agent_routes::{write_tls, LoadBalancers};
use super::*;

/// Where an agent's images (and a slot's sealed secrets) come from, and
/// what they must be signed by.
struct Sources<'a> {
    /// The agent's own key (`--signed-by`), for every registry.
    signed_by: Option<&'a std::path::Path>,
    /// kiln.toml's `[registries."HOST"]`.
    registries: &'a std::collections::BTreeMap<String, crate::spec::registries::RegistrySpec>,
    /// The other agents serving their stores, asked when the registry
    /// fails.
    peers: &'a dyn Fn() -> Vec<(String, std::net::SocketAddr)>,
    /// The sealed files of a slot's secrets, from etcd, for one start.
    secrets: &'a dyn Fn(&[crate::fleet::place::FleetSecret]) -> Result<crate::fleet::secrets::SealedDir, CommandError>,
}

/// Starts slot `slot`'s instance: its image fetched by digest into the
/// store (every blob verified) and tagged `SERVICE:fleet-<hex>`, then run.
fn start_slot(
    store: &Store,
    rt: &Runtime<'_>,
    launcher: &dyn Launcher,
    slot: &str,
    a: &crate::fleet::reconcile::Assignment,
    sources: &Sources<'_>,
    now: i64,
) -> Result<(), CommandError> {
    use crate::image::registry;
    let Sources { signed_by, registries, peers, secrets } = *sources;
    let remote = registry::Remote::parse(&a.image).map_err(registry::RegistryError::from)?;
    let settings = registries.get(&remote.host).cloned().unwrap_or_default();
    // The agent's own key, or the registry's (kiln.toml's `signed_by`).
    let signed_by = signed_by.or(settings.signed_by.as_deref());
    if let (Some(channel), None) = (&a.channel, signed_by) {
        return Err(CommandError::BadRequest {
            field: format!("assign.{slot}.channel"),
            message: format!(
                "channel {channel:?}: the agent needs the [promotion] public key (--signed-by, or the registry's \
                 signed_by) to check that a digest is promoted to it"
            ),
        });
    }
    let digest = a.digest().ok_or_else(|| CommandError::BadRequest {
        field: format!("assign.{slot}.image"),
        message: "name the image by digest".into(),
    })?;
    let plain = crate::spec::registries::RegistrySpec { insecure: true, ..Default::default() };
    let peer_at = |addr: std::net::SocketAddr| registry::Remote {
        host: addr.to_string(),
        repo: remote.repo.clone(),
        reference: Some(digest.to_string()),
    };
    match signed_by {
        // The image with its artifacts (a peer's too: its referrers), its
        // signature checked before any tag is set, as `kiln pull` from a
        // `signed_by` registry; the signature names the registry's image,
        // wherever the bytes came from.
        Some(key) => {
            let fetched = registry::fetch(store, &remote, &settings, Some(&a.service)).or_else(|e| {
                from_peers(peers(), &a.image, e, |addr| {
                    registry::fetch(store, &peer_at(addr), &plain, Some(&a.service))
                })
            })?;
            let verified = verify_fetched(store, &fetched, key, &a.image)?;
            // A service with a channel runs only digests promoted to it,
            // as on one host.
            if let Some(channel) = a.channel.as_ref().filter(|c| !verified.channels.contains_key(*c)) {
                return Err(crate::verify::promote::PromoteError::NotPromoted {
                    digest: digest.clone(),
                    channel: channel.clone(),
                    promoted: verified.channels.into_keys().collect(),
                }
                .into());
            }
            registry::tag_fetched(store, fetched, now)?;
        }
        None => {
            registry::fetch_image(store, &remote, &digest, &settings).map(drop).or_else(|e| {
                from_peers(peers(), &a.image, e, |addr| {
                    registry::fetch_image(store, &peer_at(addr), &digest, &plain).map(drop)
                })
            })?;
        }
    }
    let size = store.read_blob(&digest)?.len() as u64;
    let tag = format!("{}:fleet-{}", a.service, &digest.hex()[..12]);
    store.set_tags(&[tag], &Descriptor::new(oci::MEDIA_MANIFEST, digest.clone(), size), true, now)?;
    // Opened only inside `run`, with this host's KEK; the sealed copies
    // go when this returns.
    let sealed = if a.secrets.is_empty() { None } else { Some(secrets(&a.secrets)?) };
    let req = RunRequest {
        reference: digest.to_string(),
        service: Some(a.service.clone()),
        env: a.env.clone(),
        secrets: a
            .secrets
            .iter()
            .map(|s| crate::runtime::SecretUse { name: s.name.clone(), env: s.env.clone() })
            .collect(),
        secret_store: sealed.as_ref().map(|d| d.path().to_owned()),
        release: Some(format!("fleet:{slot}")),
        volumes: a.volumes.clone(),
        limits: crate::runtime::bundle::Limits {
            memory_bytes: a.memory_bytes,
            cpus: a.millicpus.map(|m| m as f64 / 1000.0),
            ..Default::default()
        },
        release_fields: std::collections::BTreeMap::from([
            ("fleet.singleton".to_owned(), a.singleton.to_string()),
            ("fleet.release".to_owned(), a.release()),
        ]),
        ..RunRequest::default()
    };
    rt.run(&req, launcher, now)?;
    Ok(())
}

/// What `pull` gets from the first of `peers` that has it, after the
/// registry failed with `failed` (returned if no peer has it): a peer's
/// store, by the same digest, every blob verified against it as from the
/// registry.
fn from_peers<T>(
    peers: Vec<(String, std::net::SocketAddr)>,
    image: &str,
    failed: crate::image::registry::RegistryError,
    pull: impl Fn(std::net::SocketAddr) -> Result<T, crate::image::registry::RegistryError>,
) -> Result<T, crate::image::registry::RegistryError> {
    for (peer, addr) in peers {
        if let Ok(got) = pull(addr) {
            eprintln!("{image}: the registry failed ({failed}); pulled from peer {peer}");
            return Ok(got);
        }
    }
    Err(failed)
}

/// Runs `kiln agent` until SIGTERM or SIGINT.
pub(super) fn execute(cmd: Command, ctx: &mut Context<'_>) -> Result<Output, CommandError> {
    let Command::Agent { cluster, name, ttl_secs, signed_by, advertise, registries, peer_port } = cmd else {
        return Err(CommandError::BadRequest { field: "command".into(), message: "not kiln agent".into() });
    };
    // Every call within a TTL: a round stuck on a member that drops
    // packets must not hold up the fence of singletons.
    let etcd =
        crate::fleet::etcd::Etcd::new(&cluster)?.with_timeout(std::time::Duration::from_secs(ttl_secs.max(1) as u64));
    let stop = crate::sys::stop_on_signal();
    // The store, by digest, to the other agents: bound before the
    // host registers, so the port it reports answers.
    let peer_port = match peer_port {
        Some(port) => {
            let addr = std::net::SocketAddr::new(advertise, port);
            let l = std::net::TcpListener::bind(addr).map_err(|e| CommandError::BadRequest {
                field: "peer_port".into(),
                message: format!("cannot bind {addr}: {e}"),
            })?;
            let bound = l.local_addr().map(|a| a.port()).unwrap_or(port);
            let store = ctx.store.clone();
            // Its logs to the fleet, with the fleet's token (made
            // now if this is the first agent).
            let logs_etcd = std::sync::Arc::new(crate::fleet::etcd::Etcd::new(&cluster)?);
            if let Err(e) = crate::fleet::peer::token(&logs_etcd) {
                eprintln!("kiln agent {name}: the fleet's token: {e}");
            }
            let logs = crate::fleet::peer::LogAccess {
                home: ctx.store.home().to_owned(),
                token: std::sync::Arc::new(move || crate::fleet::peer::token(&logs_etcd).ok()),
            };
            std::thread::spawn(move || crate::fleet::peer::serve(store, l, stop, Some(logs)));
            Some(bound)
        }
        None => None,
    };
    let (memory_bytes, cpus) = crate::fleet::capacity();
    let started_at = ctx.now;
    let rt = Runtime::new(&ctx.store, ctx.driver);
    let slot_of = |r: &InstanceRecord| r.release.as_deref().and_then(|x| x.strip_prefix("fleet:")).map(str::to_owned);
    // Instances on their way out, since when: no longer in the
    // host's record, so every host's load balancer drops them in
    // its next round; stopped once that must have happened.
    // With when it was asked to stop, once it was: stops never block
    // the loop (a process that ignores SIGTERM, as busybox httpd
    // does as PID 1, holds nothing up for its grace).
    #[allow(clippy::type_complexity)]
    let draining: std::sync::Mutex<
        std::collections::BTreeMap<String, (std::time::Instant, Option<std::time::Instant>)>,
    > = std::sync::Mutex::default();
    const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
    let drain_for = std::time::Duration::from_secs(ttl_secs.max(2) as u64);
    let is_draining = |id: &str| draining.lock().is_ok_and(|d| d.contains_key(id));
    // Instances that passed their service's health check here once,
    // since when they are listed: only they are listed for the load
    // balancers.
    let ready: std::sync::Mutex<std::collections::BTreeMap<String, std::time::Instant>> = std::sync::Mutex::default();
    let is_ready = |id: &str| ready.lock().is_ok_and(|r| r.contains_key(id));
    // A listed instance reaches every host's load balancer within a
    // round of theirs, which then checks it (new backends start
    // unhealthy): the instance it replaces drains only after that,
    // so a slot is never without a healthy backend anywhere.
    let settle = std::time::Duration::from_millis((ttl_secs.max(1) as u64 * 1000) * 2 / 3 + 300);
    let settled = |id: &str| ready.lock().is_ok_and(|r| r.get(id).is_some_and(|t| t.elapsed() >= settle));
    // An instance asked to stop is on its way out, even if its slot
    // is assigned its image again: its stop goes on (an app that
    // ignores SIGTERM would linger unlisted), and another starts.
    let stopping = |id: &str| draining.lock().is_ok_and(|d| d.get(id).is_some_and(|(_, asked)| asked.is_some()));
    // Failed starts in a row, by slot: two, and the host reports
    // the slot failing, for the leader to place it elsewhere.
    let failures: std::sync::Mutex<std::collections::BTreeMap<String, u32>> = std::sync::Mutex::default();
    // Drift: the last check's findings, and the instances found drifted
    // (replaced as if they had exited: a successor first, then a drain).
    let checks: std::sync::Mutex<super::agent_heal::DriftChecks> = std::sync::Mutex::default();
    let is_drifted = |id: &str| checks.lock().is_ok_and(|c| c.drifted.contains(id));
    // Quarantines asked of this host (`kiln quarantine --cluster`), by
    // instance, with when this agent first saw each.
    let quarantines: std::sync::Mutex<std::collections::BTreeMap<String, std::time::Instant>> =
        std::sync::Mutex::default();
    let quarantine_dir = |id: &str| ctx.store.home().join("quarantine").join(id);
    let is_quarantined = |id: &str| quarantines.lock().is_ok_and(|q| q.contains_key(id)) || quarantine_dir(id).exists();
    // What this host's load balancers route to, and hold on standby,
    // after their last round.
    type Backends = std::collections::BTreeMap<String, Vec<std::net::SocketAddr>>;
    let routes: std::sync::Mutex<(Backends, Backends)> = std::sync::Mutex::default();
    let mut record = || {
        let records = rt.records().unwrap_or_default();
        let as_placed = |r: &crate::runtime::InstanceRecord| {
            Some(crate::fleet::Placed {
                slot: slot_of(r)?,
                service: r.service.clone(),
                instance: r.id.to_string(),
                port: r.port,
                image: r.image.clone(),
                release: r.release_fields.get("fleet.release").cloned(),
            })
        };
        let placed = records
            .iter()
            .filter(|r| {
                let id = r.id.to_string();
                !r.state.is_exited() && is_ready(&id) && !is_draining(&id) && !is_quarantined(&id)
            })
            .filter_map(as_placed)
            .collect();
        let quarantined = records
            .iter()
            .filter(|r| !r.state.is_exited() && is_quarantined(r.id.as_str()))
            .filter_map(as_placed)
            .collect();
        crate::fleet::HostRecord {
            name: name.clone(),
            address: Some(advertise),
            peer_port,
            memory_bytes,
            cpus,
            instances: records.iter().filter(|r| !r.state.is_exited()).count() as u32,
            started_at,
            version: env!("CARGO_PKG_VERSION").into(),
            placed,
            failing: failures
                .lock()
                .map(|f| f.iter().filter(|(_, n)| **n >= 2).map(|(s, _)| s.clone()).collect())
                .unwrap_or_default(),
            verified: checks.lock().ok().and_then(|c| c.last.clone()),
            quarantined,
            routes: routes.lock().map(|r| r.0.clone()).unwrap_or_default(),
            standby: routes.lock().map(|r| r.1.clone()).unwrap_or_default(),
        }
    };
    let (store, launcher, now, retention) = (&ctx.store, ctx.launcher, ctx.now, ctx.retention);
    let pruned = std::sync::Mutex::new(std::time::Instant::now());
    let mut reconcile = |assigned: std::collections::BTreeMap<String, crate::fleet::reconcile::Assignment>| {
        use crate::fleet::reconcile::{decide, Act, Running};
        let records = match rt.observe_all() {
            Ok((r, _)) => r,
            Err(e) => return eprintln!("kiln agent {name}: observing instances: {e}"),
        };
        // The instances' output into the host's central logs, for
        // `kiln logs` here and `kiln logs --cluster` anywhere; kept
        // within the retention (checked about once a minute).
        if let Err(e) = rt.ingest_all() {
            eprintln!("kiln agent {name}: logs: {e}");
        }
        if let Ok(mut last) = pruned.lock() {
            if last.elapsed() >= std::time::Duration::from_secs(60) {
                *last = std::time::Instant::now();
                let live = rt.live_ids().unwrap_or_default();
                if let Err(e) = rt.logs().prune(&retention, crate::time::now_secs(), &live) {
                    eprintln!("kiln agent {name}: pruning logs: {e}");
                }
            }
        }
        // Drift, on request (`kiln verify-instances --cluster`) and every
        // DRIFT_EVERY: each serving instance against what kiln started.
        // What is asked of agents, in one read: a drift check (its last
        // write: the mod revision, which a second request moves) and
        // chaos kills of this host's instances.
        let asks = etcd.range_prefix(crate::fleet::ASKS).unwrap_or_default();
        let asked = asks.iter().find(|kv| kv.key == crate::fleet::VERIFY).map_or(0, |kv| kv.mod_revision);
        let kill_prefix = format!("{}{name}/", crate::fleet::chaos::KILLS);
        for kv in asks.iter().filter(|kv| kv.key.starts_with(&kill_prefix)) {
            let instance = &kv.key[kill_prefix.len()..];
            // Killed as a failure, not stopped: its replacement comes as
            // for any instance that exited.
            match rt.kill(instance) {
                Ok(_) => eprintln!("kiln agent {name}: chaos: killed {instance}"),
                Err(e) => eprintln!("kiln agent {name}: chaos: {instance}: {e}"),
            }
            let _ = etcd.delete(&kv.key);
        }
        super::agent_heal::quarantine_round(&super::agent_heal::QuarantineRound {
            etcd: &etcd,
            rt: &rt,
            name: &name,
            asks: &asks,
            records: &records,
            seen: &quarantines,
            dir: &quarantine_dir,
            // Out of every load balancer's table first: this host's
            // record without it, the others' next round, then in-flight
            // requests' 2 s.
            drain: settle + std::time::Duration::from_secs(2),
        });
        let due = checks
            .lock()
            .is_ok_and(|c| c.at.is_none_or(|t| t.elapsed() >= crate::fleet::DRIFT_EVERY) || asked > c.asked);
        if due {
            let mut found = Vec::new();
            let mut checked = 0;
            for r in records.iter().filter(|r| !r.state.is_exited()) {
                let (Some(slot), id) = (slot_of(r), r.id.to_string()) else { continue };
                if !is_ready(&id) || stopping(&id) || is_drifted(&id) {
                    continue;
                }
                checked += 1;
                let findings = rt.drift(r);
                if !findings.is_empty() {
                    eprintln!("kiln agent {name}: {id} drifted ({}): replacing it", findings.join("; "));
                    // Recorded before it is replaced; a history that
                    // cannot be written does not keep a drifted instance
                    // serving (the agent's log says so).
                    let image = format!("{}@{}", r.service, r.image);
                    let detail = format!("on {name}: {}", findings.join("; "));
                    let entry =
                        crate::fleet::records::of_replacing(&r.service, &image, &id, crate::heal::Cause::Drift, detail);
                    match crate::fleet::history::record(&etcd, &[entry], &[], &[]) {
                        Ok(true) => {}
                        Ok(false) => {
                            eprintln!("kiln agent {name}: {id}: its drift not recorded: the history kept moving")
                        }
                        Err(e) => eprintln!("kiln agent {name}: {id}: its drift not recorded: {e}"),
                    }
                    found.push(crate::fleet::Drifted { slot, service: r.service.clone(), instance: id, findings });
                }
            }
            if let Ok(mut c) = checks.lock() {
                c.drifted.extend(found.iter().map(|d| d.instance.clone()));
                let live: std::collections::BTreeSet<String> = records.iter().map(|r| r.id.to_string()).collect();
                c.drifted.retain(|id| live.contains(id));
                c.at = Some(std::time::Instant::now());
                c.asked = asked;
                c.last = Some(crate::fleet::Verified { asked, at: crate::time::now_secs(), checked, drifted: found });
            }
        }
        let running: Vec<Running> = records
            .iter()
            .filter_map(|r| {
                let instance = r.id.to_string();
                // A quarantined instance is neither kept nor removed: its
                // slot gets a successor, and it stays frozen.
                if is_quarantined(&instance) {
                    return None;
                }
                Some(Running {
                    slot: slot_of(r)?,
                    alive: !r.state.is_exited() && !stopping(&instance) && !is_drifted(&instance),
                    instance,
                    image: r.image.clone(),
                    release: r.release_fields.get("fleet.release").cloned(),
                })
            })
            .collect();
        // Readiness: each live instance not yet ready is checked
        // once a round, as the load balancers will check it.
        for r in running.iter().filter(|r| r.alive && !is_ready(&r.instance)) {
            let Some(port) = records.iter().find(|x| x.id.to_string() == r.instance).map(|x| x.port) else {
                continue;
            };
            let health = assigned.get(&r.slot).and_then(|a| a.health.as_deref());
            let addr = std::net::SocketAddr::new(advertise, port);
            if crate::serve::prober::check(addr, health, std::time::Duration::from_millis(300)).is_ok() {
                if let Ok(mut set) = ready.lock() {
                    set.insert(r.instance.clone(), std::time::Instant::now());
                }
            }
        }
        if let Ok(mut f) = failures.lock() {
            f.retain(|slot, _| assigned.contains_key(slot));
        }
        let acts = decide(&assigned, &running);
        // A drain is called off when its instance is wanted again
        // (its slot assigned back with its digest) before it was
        // asked to stop: it is listed again.
        if let Ok(mut d) = draining.lock() {
            let mut relisted = Vec::new();
            d.retain(|id, (_, asked)| {
                let keep =
                    asked.is_some() || acts.iter().any(|a| matches!(a, Act::Remove { instance, .. } if instance == id));
                if !keep {
                    relisted.push(id.clone());
                }
                keep
            });
            // Listed again, it is new to the load balancers again.
            if let Ok(mut r) = ready.lock() {
                for id in relisted {
                    r.entry(id).and_modify(|t| *t = std::time::Instant::now());
                }
            }
        }
        // One failing slot never stops the others.
        for act in acts {
            let result = match &act {
                Act::Start { slot, assignment } => {
                    let sources = Sources {
                        signed_by: signed_by.as_deref(),
                        registries: &registries,
                        peers: &|| {
                            let records = crate::fleet::host_records(&etcd).unwrap_or_default();
                            records
                                .iter()
                                .filter(|r| r.name != name)
                                .filter_map(|r| Some((r.name.clone(), crate::fleet::peer::address(r)?)))
                                .collect()
                        },
                        secrets: &|wanted| Ok(crate::fleet::secrets::sealed(&etcd, store.home(), wanted)?),
                    };
                    let started = start_slot(store, &rt, launcher, slot, assignment, &sources, now);
                    if started.is_ok() {
                        eprintln!(
                            "kiln agent {name}: {slot}: started ({} release {})",
                            assignment.image,
                            assignment.release()
                        );
                    }
                    if let Ok(mut f) = failures.lock() {
                        match started {
                            Ok(()) => f.remove(slot),
                            Err(_) => Some(*f.entry(slot.clone()).and_modify(|n| *n += 1).or_insert(1)),
                        };
                    }
                    started
                }
                Act::Remove { instance, slot } => {
                    let alive = records.iter().any(|r| r.id.to_string() == *instance && !r.state.is_exited());
                    // An instance being replaced serves until its
                    // replacement is ready (a replacement that
                    // never is leaves it serving). The replacement
                    // runs what the slot is assigned now and is
                    // listed: not an older instance of the slot
                    // still draining from the change before (a
                    // deploy right after a deploy).
                    let want = assigned.get(slot).map(|a| a.release());
                    let replaced = want.is_some();
                    let successor_ready = running.iter().any(|r| {
                        r.slot == *slot
                            && r.instance != *instance
                            && r.alive
                            && r.release == want
                            && !is_draining(&r.instance)
                            && settled(&r.instance)
                    });
                    if alive && replaced && !successor_ready && !is_draining(instance) {
                        continue;
                    }
                    let now_i = std::time::Instant::now();
                    let (since, asked) = draining
                        .lock()
                        .map(|mut d| *d.entry(instance.clone()).or_insert((now_i, None)))
                        .unwrap_or((now_i, None));
                    // Drained across hosts first: an exited one
                    // serves no one and goes at once.
                    if alive && since.elapsed() < drain_for {
                        continue;
                    }
                    if alive {
                        // SIGTERM once, SIGKILL after the grace; removed
                        // in a later round, once it exited.
                        let result = match asked {
                            None => rt.request_stop(instance, false).map(|_| {
                                if let Ok(mut d) = draining.lock() {
                                    d.insert(instance.clone(), (since, Some(now_i)));
                                }
                            }),
                            Some(t) if t.elapsed() >= STOP_GRACE => rt.request_stop(instance, true).map(drop),
                            Some(_) => Ok(()),
                        };
                        if let Err(e) = result {
                            eprintln!("kiln agent {name}: stopping {instance}: {e}");
                        }
                        continue;
                    }
                    let done = rt.remove(instance, true).map(|_| ()).map_err(CommandError::from);
                    if done.is_ok() {
                        if let Ok(mut d) = draining.lock() {
                            d.remove(instance);
                        }
                        if let Ok(mut r) = ready.lock() {
                            r.remove(instance);
                        }
                    }
                    done
                }
            };
            if let Err(e) = result {
                eprintln!("kiln agent {name}: {act:?}: {e}");
            }
        }
    };
    let mut fence = || {
        // The instances of singleton slots, stopped and removed.
        let Ok(records) = rt.records() else { return };
        for r in records.iter().filter(|r| !r.state.is_exited()) {
            let singleton = r.release_fields.get("fleet.singleton").is_some_and(|v| v == "true");
            if singleton && slot_of(r).is_some() {
                let id = r.id.to_string();
                eprintln!("kiln agent {name}: cut off past lease and grace: stopping singleton {id}");
                let _ = rt.stop(&id, Some(std::time::Duration::from_secs(2))).and_then(|_| rt.remove(&id, true));
            }
        }
    };
    let planes = crate::serve::dataplane::ProxyProcesses::new(ctx.store.home());
    let mut lbs = LoadBalancers::default();
    let home = ctx.store.home().to_owned();
    let tls_files = |service: &str, t: &crate::fleet::place::FleetTls| write_tls(&etcd, &home, service, t);
    let mut route = |routed: std::collections::BTreeMap<String, crate::fleet::route::Routed>| {
        let counted = lbs.apply(&planes, advertise, routed, &tls_files, &|m| eprintln!("kiln agent {name}: {m}"));
        if let Ok(mut r) = routes.lock() {
            r.0.clone_from(&lbs.routes);
            r.1.clone_from(&lbs.standby);
        }
        counted
    };
    // The newest leader epoch and the assignments acted on, kept
    // across restarts: an old leader's change is refused after one
    // too, and the slot keeps what it was accepted with.
    let admitted_file = ctx.store.home().join("fleet-admitted.json");
    let admitted = std::fs::read(&admitted_file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut keep = |a: &crate::fleet::reconcile::Admitted| {
        let bytes = serde_json::to_vec_pretty(a).unwrap_or_default();
        if let Err(e) = crate::sys::atomic::write(&admitted_file, &bytes) {
            eprintln!("kiln agent {name}: keeping {}: {e}", admitted_file.display());
        }
    };
    let log = |m: &str| eprintln!("kiln agent {name}: {m}");
    let hooks = crate::fleet::AgentHooks {
        record: &mut record,
        reconcile: &mut reconcile,
        route: &mut route,
        fence: &mut fence,
        admitted,
        keep: &mut keep,
        log: &log,
    };
    crate::fleet::run_agent(&etcd, &name, ttl_secs, stop, hooks)?;
    Ok(Output::Done { message: format!("kiln agent {name} left the fleet") })
}
