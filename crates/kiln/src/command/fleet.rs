//! The fleet's commands (`kiln controller`, `assign`, `place`,
//! `drain-host`, `hosts`, `services`, and `deploy`, `plan`, `rollback`,
//! `promote`, `abort`, `down`, `history`, `logs`, `ps`, `secret` with
//! `--cluster` or `--controller`) carried out through [`crate::fleet`] or a
//! controller's API, and a release followed to its end. `kiln agent` is
//! [`super::agent`].
//!
//! For: acting on a person's fleet commands. Must never: decide
//! placement, reconciliation, a change or a rollout's state (the pure
//! `fleet::place`, `fleet::reconcile` and `fleet::change` do).

use super::*;

mod checks;
use checks::{check_desired, check_port, check_slot_names, seal_tls};

/// How often a person's change is read, decided and written again when
/// the service or the history moved in between.
const CHANGE_TRIES: u32 = 5;

/// Carries out a fleet command; any other is refused by name.
pub(super) fn execute(cmd: Command, ctx: &mut Context<'_>) -> Result<Output, CommandError> {
    match cmd {
        Command::Assign { cluster, host, slot, assignment } => {
            let bad =
                |field: &str, message: &str| CommandError::BadRequest { field: field.into(), message: message.into() };
            if host.is_empty() || host.contains('/') || slot.is_empty() || slot.contains('/') {
                return Err(bad("host/slot", "a host and a slot are names without '/'"));
            }
            if let Some(a) = &assignment {
                crate::image::registry::Remote::parse(&a.image).map_err(crate::image::registry::RegistryError::from)?;
                if a.digest().is_none() {
                    return Err(bad(
                        "image",
                        "name the image by digest (REGISTRY/REPO@sha256:…): every host runs the same bytes",
                    ));
                }
                if !crate::spec::valid_image_name(&a.service) {
                    return Err(bad("service", "lowercase letters, digits and single . _ - between them"));
                }
            }
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            // Stamped with the current leader's epoch, as its own writes are.
            let epoch = etcd.get(crate::fleet::LEADER)?.map_or(0, |(rev, _)| rev);
            let assignment = assignment.map(|a| crate::fleet::reconcile::Assignment { epoch, ..a });
            crate::fleet::assign(&etcd, &host, &slot, assignment.as_ref())?;
            let message = match assignment {
                Some(a) => format!("{host}/{slot}: {} assigned", a.image),
                None => format!("{host}/{slot}: unassigned"),
            };
            Ok(Output::Done { message })
        }
        Command::FleetController { cluster, name, ttl_secs, api, notify } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            let stop = crate::sys::stop_on_signal();
            if let Some(addr) = api {
                // The token exists before the port answers: a caller that
                // waits for the port then reads it.
                crate::serve::token(ctx.store.home())?;
                let l = std::net::TcpListener::bind(addr).map_err(|e| CommandError::BadRequest {
                    field: "tcp".into(),
                    message: format!("cannot bind {addr}: {e}"),
                })?;
                let (home, retention, cluster) = (ctx.store.home().to_owned(), ctx.retention, cluster.clone());
                std::thread::spawn(move || {
                    if let Err(e) = super::fleet_api::serve(home, cluster, l, retention, stop) {
                        eprintln!("kiln controller: the fleet API stopped: {e}");
                    }
                });
                eprintln!("kiln controller {name}: fleet API on http://{addr}");
            }
            let log = |m: &str| eprintln!("kiln controller {name}: {m}");
            // The notifier starts when this controller first leads: one
            // standing by sends nothing (what it queued before, it sends
            // then).
            let mut notifier: Option<crate::observe::notify::Notifier> = None;
            let home = ctx.store.home().to_owned();
            // Certificates from ACME are the leader's to obtain.
            let mut issuer = super::fleet_acme::Issuer::new(cluster.clone(), home.clone());
            let mut after_round = |etcd: &crate::fleet::etcd::Etcd, epoch: i64| {
                issuer.round(etcd, epoch, &log);
                if notify.is_empty() {
                    return;
                }
                let n = match &notifier {
                    Some(n) => n,
                    None => match crate::observe::notify::Notifier::start(&home) {
                        Ok(n) => notifier.insert(n),
                        Err(e) => return log(&format!("webhooks: {}: {e}", home.join("notify").display())),
                    },
                };
                let mut queue = |e: &crate::serve::history::Entry| {
                    n.alert(&notify, &e.service, &e.release, e.at_ms.max(0) as u64, &e.event)
                };
                if let Err(e) = crate::fleet::alerts::round(etcd, epoch, &mut queue) {
                    log(&format!("webhooks: {e}"));
                }
            };
            crate::fleet::run_controller(&etcd, &name, ttl_secs, stop, &log, &mut after_round)?;
            Ok(Output::Done { message: format!("kiln controller {name} stopped") })
        }
        Command::Place { cluster, service, desired, actor } => {
            check_desired("kiln place", &service, &desired)?;
            if desired.blue_green.is_some() {
                return Err(CommandError::BadRequest {
                    field: "blue_green".into(),
                    message: "kiln place sets the desired state as given: a blue-green release starts from kiln \
                              deploy --cluster"
                        .into(),
                });
            }
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            check_slot_names(&etcd, &service)?;
            check_port("kiln place", &etcd, &service, &desired)?;
            let mut desired = desired;
            if let Some(t) = &mut desired.edge.tls {
                seal_tls(ctx.store.home(), &etcd, &service, desired.listen, &desired.edge.hosts, t, true)?;
            }
            // Written with its history entry, conditioned on what was read.
            let mut written = false;
            for _ in 0..CHANGE_TRIES {
                let (current, revision) = match crate::fleet::service(&etcd, &service)? {
                    Some((d, rev)) => (Some(d), rev),
                    None => (None, 0),
                };
                // Which set of slots is stable is the leader's: kept, or
                // every instance would be replaced under a new name.
                desired.color = current.as_ref().map(|c| c.color).unwrap_or_default();
                let next = (desired.replicas > 0).then_some(&desired);
                let entries = crate::fleet::records::of_place(&service, current.as_ref(), next, &actor);
                if crate::fleet::set_service_if(&etcd, &service, next, revision, &entries)? {
                    written = true;
                    break;
                }
            }
            if !written {
                return Err(crate::fleet::change::ChangeError::Contended { service, tries: CHANGE_TRIES }.into());
            }
            let message = match desired.replicas {
                0 => format!("{service}: removed from the fleet"),
                n => format!("{service}: {n} replicas of {}", desired.image),
            };
            Ok(Output::Done { message })
        }
        Command::FleetChange { cluster, service, mut change, registry, wait, bake, actor, dry_run } => {
            if !crate::spec::valid_image_name(&service) {
                return Err(CommandError::BadRequest {
                    field: "service".into(),
                    message: "lowercase letters, digits and single . _ - between them".into(),
                });
            }
            if let crate::fleet::change::Change::Deploy { settings, .. } = &mut change {
                if let Some(b) = bake {
                    settings.image = bake_and_push(b, &registry, ctx)?;
                }
                // A tag is resolved once, here, to this platform's image
                // manifest: every host then runs the same bytes.
                let remote = crate::image::registry::Remote::parse(&settings.image)
                    .map_err(crate::image::registry::RegistryError::from)?;
                if remote.reference.as_deref().is_some_and(|r| !r.starts_with("sha256:")) {
                    let resolved = crate::image::registry::resolve(&ctx.store, &remote, &registry)?;
                    settings.image = format!("{}@{}", remote.repository(), resolved.manifest);
                }
                check_desired("kiln deploy --cluster", &service, settings)?;
            }
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            if let crate::fleet::change::Change::Deploy { settings, .. } = &mut change {
                check_slot_names(&etcd, &service)?;
                check_port("kiln deploy --cluster", &etcd, &service, settings)?;
                if let Some(t) = &mut settings.edge.tls {
                    seal_tls(ctx.store.home(), &etcd, &service, settings.listen, &settings.edge.hosts, t, !dry_run)?;
                }
            }
            // Each secret at its newest version: this release's.
            if let crate::fleet::change::Change::Deploy { settings, .. } = &mut change {
                settings.secrets = crate::fleet::secrets::resolve(&etcd, &settings.secrets).map_err(|e| match e {
                    crate::fleet::secrets::FleetSecretError::Missing { name } => {
                        let i = settings.secrets.iter().position(|s| s.name == name).unwrap_or(0);
                        CommandError::BadRequest {
                            field: format!("service.{service}.secrets[{i}]"),
                            message: format!(
                                "no fleet secret {name:?}: set it first with `kiln secret set {name} --cluster URLS`"
                            ),
                        }
                    }
                    other => other.into(),
                })?;
            }
            // Read, decide, write if nothing changed since the read: the
            // leader may step a canary in between, and then the change is
            // decided again on what it wrote.
            for _ in 0..CHANGE_TRIES {
                let (current, revision) = match crate::fleet::service(&etcd, &service)? {
                    Some((d, rev)) => (Some(d), rev),
                    None => (None, 0),
                };
                let (next, applied) =
                    crate::fleet::change::apply(&service, current.as_ref(), change.clone(), crate::time::now_secs())?;
                let entries = crate::fleet::records::of_change(
                    &service,
                    &change,
                    current.as_ref(),
                    next.as_ref(),
                    &applied,
                    &actor,
                );
                if dry_run {
                    let changed = match (&current, &next) {
                        (Some(c), Some(n)) => crate::fleet::records::changed(c, n),
                        _ => Vec::new(),
                    };
                    return Ok(Output::FleetPlan(Box::new(crate::fleet::records::FleetPlan {
                        service,
                        summary: applied.to_string(),
                        changed,
                        desired: next,
                        entries: entries.into_iter().map(|r| r.event).collect(),
                    })));
                }
                if !crate::fleet::set_service_if(&etcd, &service, next.as_ref(), revision, &entries)? {
                    continue;
                }
                let message = format!("{service}: {applied}");
                use crate::fleet::change::Applied;
                let target = match (&applied, &next) {
                    (Applied::CanaryStarted { image, .. } | Applied::BlueGreenStarted { image }, _) => image.clone(),
                    (
                        Applied::Created { .. }
                        | Applied::Rolling { .. }
                        | Applied::RolledBack { .. }
                        | Applied::SwitchedBack { .. }
                        | Applied::CanaryAborted { .. }
                        | Applied::BlueGreenAborted { .. }
                        | Applied::Updated { changed: true },
                        Some(d),
                    ) => d.image.clone(),
                    _ => return Ok(Output::Done { message }),
                };
                let Some(wait) = wait else { return Ok(Output::Done { message }) };
                ctx.progress.step_output(&message);
                let mut observe = || observed_etcd(&etcd, &service);
                follow(&mut observe, &service, &target, wait, ctx.progress)?;
                return Ok(Output::Done { message: format!("{service}: {target} serves on every replica") });
            }
            Err(crate::fleet::change::ChangeError::Contended { service, tries: CHANGE_TRIES }.into())
        }
        Command::FleetRemote { controller, mut request, wait, bake } => {
            use super::fleet_api::FleetRequest;
            if let (Some(b), FleetRequest::Deploy { settings, registry, .. }) = (bake, &mut request) {
                settings.image = bake_and_push(b, registry, ctx)?;
            }
            let followed = match &request {
                FleetRequest::Deploy { service, .. } | FleetRequest::Rollback { service, .. } => Some(service.clone()),
                _ => None,
            };
            let output = controller.ask(&request)?;
            let (Some(service), Some(wait)) = (followed, wait) else { return Ok(output) };
            if let Output::Done { message } = &output {
                ctx.progress.step_output(message);
            }
            // Followed through the API: the image the change now wants.
            let mut observe = || observed_api(&controller, &service);
            let target = match observe()?.0 {
                Some(d) => match (d.canary, d.blue_green) {
                    (Some(c), _) => c.image,
                    (None, Some(bg)) if matches!(bg.phase, crate::fleet::bluegreen::Phase::Next { .. }) => bg.image,
                    _ => d.image,
                },
                None => return Ok(output),
            };
            follow(&mut observe, &service, &target, wait, ctx.progress)?;
            Ok(Output::Done { message: format!("{service}: {target} serves on every replica") })
        }
        Command::DrainHost { cluster, host, undo, actor } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            let mut written = false;
            for _ in 0..CHANGE_TRIES {
                written = crate::fleet::drain(&etcd, &host, !undo, &actor)?;
                if written {
                    break;
                }
            }
            if !written {
                return Err(CommandError::BadRequest {
                    field: "host".into(),
                    message: format!("{host}: the fleet's history kept moving; not written, try again"),
                });
            }
            let message = if undo {
                format!("{host}: no longer draining")
            } else {
                format!("{host}: draining, its slots move away surge-first")
            };
            Ok(Output::Done { message })
        }
        Command::FleetSecret { cluster, action } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            use super::FleetSecretAction as A;
            match action {
                A::Set { name, value } => {
                    let version = crate::fleet::secrets::set(&etcd, ctx.store.home(), &name, &value)?;
                    Ok(Output::Done {
                        message: format!(
                            "fleet secret {name} stored, version {version} ({} bytes, sealed); the next deploy of a \
                             service that uses it rolls it out",
                            value.len()
                        ),
                    })
                }
                A::List => Ok(Output::FleetSecrets(crate::fleet::secrets::list(&etcd)?)),
                A::Remove { name } => {
                    crate::fleet::secrets::remove(&etcd, &name)?;
                    Ok(Output::Done { message: format!("fleet secret {name} removed, every version") })
                }
                A::RotateKey { old_key_file, new_data_key: true } => {
                    let home = ctx.store.home();
                    let old = super::old_kek(old_key_file.as_deref(), home)?;
                    let r = crate::fleet::secrets::new_data_key(&etcd, home, old)?;
                    Ok(Output::Done {
                        message: format!(
                            "the fleet has a new data key, sealed with {}; {} version(s) of {} secret(s) re-encrypted \
                             under it in one write, each keeping its version",
                            r.sealed_with, r.versions, r.secrets
                        ),
                    })
                }
                A::RotateKey { old_key_file, new_data_key: false } => {
                    let home = ctx.store.home();
                    let old = super::old_kek(old_key_file.as_deref(), home)?;
                    let r = crate::fleet::secrets::rotate_key(&etcd, home, old)?;
                    let message = match r.rewrapped {
                        true => format!(
                            "the fleet's data key is sealed with {} now; its {} secret(s) and every version are \
                             unchanged, and only that key opens them",
                            r.sealed_with, r.secrets
                        ),
                        false => {
                            format!("the fleet's data key was sealed with {} already; nothing changed", r.sealed_with)
                        }
                    };
                    Ok(Output::Done { message })
                }
            }
        }
        Command::FleetPs { cluster } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            let assigned = crate::fleet::all_assignments(&etcd)?;
            Ok(Output::FleetPs(crate::fleet::ps::rows(&assigned, &crate::fleet::host_records(&etcd)?)))
        }
        Command::FleetMetrics { cluster } => {
            use crate::fleet::{self as f, metrics::FleetView};
            let etcd = f::etcd::Etcd::new(&cluster)?;
            let assigned = f::all_assignments(&etcd)?;
            let records = f::host_records(&etcd)?;
            let view = FleetView {
                entries: f::history::entries(&etcd, None)?,
                hosts: f::hosts(&etcd)?,
                slots: f::ps::rows(&assigned, &records),
                assigned,
                services: f::service_rows(&etcd)?,
                leader: etcd.get(f::LEADER)?.map(|(_, name)| String::from_utf8_lossy(&name).into_owned()),
            };
            Ok(Output::FleetMetrics(f::metrics::render(&view)))
        }
        Command::FleetDrill { via, service, weight, window_ms, actor } => {
            use crate::fleet::change::Change;
            let window_secs = window_ms.div_ceil(1000);
            let report = match via {
                FleetVia::Cluster(cluster) => {
                    let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
                    let start = |ctx: &mut Context<'_>| {
                        let change = Change::Drill { weight, window_secs };
                        let cmd = Command::FleetChange {
                            cluster: cluster.clone(),
                            service: service.clone(),
                            change,
                            registry: Default::default(),
                            wait: None,
                            bake: None,
                            actor: actor.clone(),
                            dry_run: false,
                        };
                        execute(cmd, ctx).map(drop)
                    };
                    let mut observe = || observed_etcd(&etcd, &service);
                    super::fleet_heal::drill(&mut observe, &mut |ctx| start(ctx), ctx, &service, window_ms)?
                }
                FleetVia::Controller(controller) => {
                    let request = super::fleet_api::FleetRequest::Drill {
                        service: service.clone(),
                        weight,
                        window_ms,
                        actor: actor.clone(),
                    };
                    let mut start = |_: &mut Context<'_>| controller.ask(&request).map(drop);
                    let mut observe = || observed_api(&controller, &service);
                    super::fleet_heal::drill(&mut observe, &mut start, ctx, &service, window_ms)?
                }
            };
            Ok(Output::FleetDrill(report))
        }
        cmd @ (Command::FleetChaos { .. }
        | Command::FleetKill { .. }
        | Command::FleetQuarantine { .. }
        | Command::FleetVerify { .. }) => super::fleet_heal::execute(cmd),
        Command::FleetLogs { cluster, filter } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            Ok(Output::FleetLogs(crate::fleet::peer::fleet_logs(&etcd, &filter)?))
        }
        Command::FleetHistory { cluster, service, verify } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            let verified = if verify { Some(crate::fleet::history::verify(&etcd)?) } else { None };
            Ok(Output::History { entries: crate::fleet::history::entries(&etcd, service.as_deref())?, verified })
        }
        Command::Hosts { cluster } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            Ok(Output::Hosts(crate::fleet::hosts(&etcd)?))
        }
        Command::FleetServices { cluster } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            Ok(Output::FleetServices(crate::fleet::service_rows(&etcd)?))
        }
        _ => Err(CommandError::BadRequest { field: "command".into(), message: "not a fleet command".into() }),
    }
}

/// Bakes `b.image` from `b.file` and pushes it (signed, with `b.sign`) to
/// `b.push_to` under the bake's first tag; returns `REGISTRY/REPO@digest`.
pub(super) fn bake_and_push(
    b: super::FleetBake,
    registry: &crate::spec::registries::RegistrySpec,
    ctx: &mut Context<'_>,
) -> Result<String, CommandError> {
    let super::FleetBake { file, image, push_to, sign } = b;
    let baked = super::execute(
        Command::Bake { file, image: Some(image.clone()), no_cache: false, force: false, update_base: false },
        ctx,
    )?;
    let report = match baked {
        Output::Baked(reports) => reports.into_iter().find(|r| r.image == image),
        _ => None,
    };
    let Some(report) = report else {
        return Err(CommandError::BadRequest { field: "image".into(), message: format!("{image} was not baked") });
    };
    let local = report.tags.first().cloned().unwrap_or_else(|| report.digest.to_string());
    let tag = match local.rsplit_once(':') {
        Some((_, t)) => t.to_owned(),
        None => format!("d-{}", &report.digest.hex()[..12]),
    };
    let remote = format!("{push_to}:{tag}");
    ctx.progress.step_output(&format!("{image}: baked {}, pushing to {remote}", report.digest));
    super::execute(Command::Push { reference: local, remote, registry: registry.clone(), sign }, ctx)?;
    Ok(format!("{push_to}@{}", report.digest))
}

/// Service `service`'s desired state, last verdict and the live hosts'
/// records, read from etcd.
fn observed_etcd(etcd: &crate::fleet::etcd::Etcd, service: &str) -> Result<Observed, CommandError> {
    let desired = crate::fleet::service(etcd, service)?.map(|(d, _)| d);
    let verdict = crate::fleet::service_rows(etcd)?.into_iter().find(|r| r.name == service).and_then(|r| r.verdict);
    Ok((desired, verdict, crate::fleet::host_records(etcd)?))
}

/// The same through a controller's API (`GET /v1/fleet/services` and
/// `/v1/fleet/hosts`).
fn observed_api(controller: &super::fleet_api::Controller, service: &str) -> Result<Observed, CommandError> {
    use super::fleet_api::FleetRequest;
    let row = match controller.ask(&FleetRequest::Services {})? {
        Output::FleetServices(rows) => rows.into_iter().find(|r| r.name == service),
        _ => None,
    };
    let hosts = match controller.ask(&FleetRequest::Hosts {})? {
        Output::Hosts(rows) => rows.into_iter().map(|r| r.host).collect(),
        _ => Vec::new(),
    };
    Ok(match row {
        Some(r) => (Some(r.desired), r.verdict, hosts),
        None => (None, None, hosts),
    })
}

/// What a release is followed on: the service's desired state, its last
/// verdict, and the live hosts' records.
pub(super) type Observed =
    (Option<crate::fleet::place::Desired>, Option<crate::fleet::canary::FleetVerdict>, Vec<crate::fleet::HostRecord>);

/// Follows the release of `target` until every replica runs it (Ok), its
/// canary fails or another change replaces it (Failed), it pauses, or
/// `wait` passes (Failed), reporting each new state.
pub(super) fn follow(
    observe: &mut dyn FnMut() -> Result<Observed, CommandError>,
    service: &str,
    target: &str,
    wait: std::time::Duration,
    progress: &mut dyn Progress,
) -> Result<(), CommandError> {
    use crate::fleet::change::{rollout, ChangeError, Rollout};
    let deadline = std::time::Instant::now() + wait;
    let mut last = None;
    loop {
        let (desired, verdict, records) = observe()?;
        let now = rollout(service, desired.as_ref(), verdict.as_ref(), &records, target);
        if last.as_ref() != Some(&now) {
            match &now {
                Rollout::Rolling { ready, want } => progress.step_output(&format!("{ready}/{want} replicas run it")),
                Rollout::Canary { weight } => progress.step_output(&format!("canary at {weight} %")),
                Rollout::BlueGreen { ready, want } if ready < want => {
                    progress.step_output(&format!("blue-green: {ready}/{want} of the new set run it, no traffic yet"))
                }
                Rollout::BlueGreen { .. } => progress.step_output(
                    "blue-green: the whole new set runs; smoke checks and the switch once every load balancer \
                     routes to it",
                ),
                Rollout::Routing { hosts } => progress.step_output(&format!(
                    "every replica runs it; waiting for the load balancers of {} to route to it",
                    hosts.join(", ")
                )),
                _ => {}
            }
        }
        match now {
            Rollout::Done => return Ok(()),
            Rollout::Failed { why } => return Err(ChangeError::Failed { service: service.to_owned(), why }.into()),
            Rollout::Paused { why } => return Err(ChangeError::Paused { service: service.to_owned(), why }.into()),
            Rollout::Rolling { ready, want } if std::time::Instant::now() >= deadline => {
                let why = format!("{ready} of {want} replicas ran it after {} s", wait.as_secs());
                return Err(ChangeError::Failed { service: service.to_owned(), why }.into());
            }
            Rollout::Routing { hosts } if std::time::Instant::now() >= deadline => {
                let why = format!(
                    "every replica ran it, but after {} s the load balancers of {} did not route to it (their health \
                     checks failed it: is it reachable from those hosts?)",
                    wait.as_secs(),
                    hosts.join(", ")
                );
                return Err(ChangeError::Failed { service: service.to_owned(), why }.into());
            }
            Rollout::Canary { .. } if std::time::Instant::now() >= deadline => {
                let why = format!("its canary was still in progress after {} s", wait.as_secs());
                return Err(ChangeError::Failed { service: service.to_owned(), why }.into());
            }
            Rollout::BlueGreen { ready, want } if std::time::Instant::now() >= deadline => {
                let why = format!("{ready} of {want} of its new set ran it after {} s, not switched", wait.as_secs());
                return Err(ChangeError::Failed { service: service.to_owned(), why }.into());
            }
            _ => {}
        }
        last = Some(now);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests;
