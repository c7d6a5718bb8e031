//! The command line as kiln's one command surface: each `kiln` command
//! converted into a [`Command`] (or, for the few that are the CLI's own,
//! an [`Invocation`] of their own), and what follows its output ([`Then`]).
//!
//! For: converting arguments. Must never: carry a command out or render
//! one (main does both, through the library).

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use kiln::command::fleet_api::FleetRequest;
use kiln::command::{self, Command};
use kiln::fleet::change::Change;
use kiln::runtime::logs::LogFilter;
use kiln::runtime::RunRequest;
use kiln::serve::api::Request;

use super::args::*;
use super::fleet_convert::{
    controller_token, fleet_change, fleet_deploy, fleet_hooks, fleet_secret, fleet_target, fleet_via, host_name,
};
use super::release::pick_service;

/// What one `kiln` command line asks for.
pub(crate) enum Invocation {
    /// A command carried out (here, or by the `kiln serve` of the home),
    /// its output rendered, then `then`.
    Command {
        command: Box<Command>,
        json: bool,
        then: Then,
    },
    /// `kiln deploy` and `kiln up`.
    Deploy(Deploy),
    /// `kiln serve`, in the foreground.
    Serve {
        file: PathBuf,
        tcp: Option<std::net::SocketAddr>,
        upgrade: bool,
    },
    /// The link to one host's dashboard, or (Some) the fleet's link.
    Dashboard(Option<String>),
    Chaos {
        options: super::chaos::Options,
        json: bool,
    },
    Drill {
        service: String,
        window: Option<std::time::Duration>,
        json: bool,
    },
    Completions(clap_complete::Shell),
    FollowLogs {
        filter: LogFilter,
        json: bool,
    },
    /// `kiln logs --follow --cluster|--controller`: polled, each time the
    /// command `poll` makes of the filter.
    FollowFleetLogs {
        filter: LogFilter,
        poll: Box<dyn Fn(LogFilter) -> anyhow::Result<Command>>,
        json: bool,
    },
    /// The supervisor of one instance (started by kiln itself).
    Shim {
        id: String,
    },
}

/// What follows a command's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Then {
    Nothing,
    /// A cold rollback is a release: followed to its end like a deploy.
    FollowRollback,
    /// `kiln down`: followed (with `wait`) until the service is gone.
    WaitDown {
        wait: bool,
        purge: bool,
    },
    /// `kiln verify-instances`: exit 5 when an instance drifted.
    ExitIfDrifted,
    /// Exit 2 when a fleet drill did not prove its rollback.
    ExitIfDrillFailed,
    /// `kiln sbom --output`: the chosen document written to a file.
    WriteSbom {
        path: PathBuf,
        cyclonedx: bool,
    },
    /// `kiln release`: the digest deployed once the pipeline passed.
    DeployPassed,
}

/// A deploy: the service's own image baked first (a cache hit when nothing
/// changed), then that digest released.
pub(crate) struct Deploy {
    pub service: String,
    pub image: Option<String>,
    /// The kiln.toml and `[image.X]` to bake first.
    pub bake: Option<(PathBuf, String)>,
    /// The file named on the command line (kiln serve refuses another).
    pub file: Option<PathBuf>,
    pub wait: bool,
    pub json: bool,
    /// `kiln up`: start kiln serve here first, stay in the foreground after.
    pub up: Option<Up>,
}

pub(crate) struct Up {
    pub file: PathBuf,
    pub listen: Option<std::net::SocketAddr>,
}

/// The request with who asked (user@host), for the history.
fn controller(req: Request, json: bool, then: Then) -> Invocation {
    Invocation::Command { command: Box::new(Command::Controller(req)), json, then }
}

/// The `[image.X]` of `file` that `service` runs, when it is one.
fn own_image(file: &std::path::Path, service: &str) -> anyhow::Result<Option<String>> {
    let spec = kiln::spec::load(file)?;
    Ok(spec.services.get(service).map(|s| s.image.clone()).filter(|i| spec.images.contains_key(i)))
}

pub(crate) fn invocation(cmd: Cmd) -> anyhow::Result<Invocation> {
    let actor = super::actor;
    let mut then = Then::Nothing;
    let (command, json) = match cmd {
        Cmd::Serve { fleet, .. } if fleet.controller.is_some() => {
            bail!("--controller: kiln serve --cluster URLS is a controller itself; it talks to etcd")
        }
        Cmd::Serve { tcp, name, ttl, fleet, file, .. } if fleet.on() => {
            let name = host_name(name)?;
            // kiln serve's file is kiln.toml by default: its webhooks when
            // there is one.
            let notify = if file.exists() { fleet_hooks(&file)? } else { Vec::new() };
            (Command::FleetController { cluster: fleet.into(), name, ttl_secs: ttl, api: tcp, notify }, false)
        }
        Cmd::Serve { file, tcp, upgrade, .. } => return Ok(Invocation::Serve { file, tcp, upgrade }),
        Cmd::Dashboard { controller: None, .. } => return Ok(Invocation::Dashboard(None)),
        Cmd::Dashboard { controller: Some(url), token_file } => {
            let token = controller_token(token_file.as_deref())?;
            return Ok(Invocation::Dashboard(Some(format!("{}/?token={token}", url.trim_end_matches('/')))));
        }
        Cmd::Completions { shell } => return Ok(Invocation::Completions(shell)),
        Cmd::Shim { id } => return Ok(Invocation::Shim { id }),
        Cmd::Status { json, fleet, .. } if fleet.on() => (fleet_via(fleet, FleetRequest::Services {})?, json),
        Cmd::Rollback { to: Some(_), fleet, .. } if fleet.on() => {
            bail!("--to: a fleet rolls back to the image the current one replaced (kiln services shows it)")
        }
        Cmd::Rollback { service, file, json, fleet, .. } if fleet.on() => {
            (fleet_change(fleet, &file, service, Change::Rollback, true)?, json)
        }
        Cmd::Promote { service, file, json, fleet } if fleet.on() => {
            (fleet_change(fleet, &file, service, Change::Promote, false)?, json)
        }
        Cmd::Abort { service, file, json, fleet } if fleet.on() => {
            (fleet_change(fleet, &file, service, Change::Abort, false)?, json)
        }
        Cmd::Down { purge: true, fleet, .. } if fleet.on() => {
            bail!("--purge: a fleet's instances have no volumes to purge (volumes are not carried across hosts yet)")
        }
        Cmd::Down { service, file, json, fleet, .. } if fleet.on() => {
            (fleet_change(fleet, &file, service, Change::Down, false)?, json)
        }
        Cmd::Deploy { service, image, file, no_wait, json, fleet, push, sign } if fleet.on() => {
            (fleet_deploy(fleet, &file, service, image, push, sign, no_wait, false)?, json)
        }
        Cmd::Status { service, json, fleet: _ } => return Ok(controller(Request::Status { service }, json, then)),
        Cmd::Rollback { service, to, file, json, fleet: _ } => {
            let service = pick_service(&file, service)?;
            return Ok(controller(Request::Rollback { service, to, actor: actor() }, json, Then::FollowRollback));
        }
        Cmd::Promote { service, file, json, fleet: _ } => {
            let service = pick_service(&file, service)?;
            return Ok(controller(Request::Promote { service, actor: actor() }, json, then));
        }
        Cmd::Abort { service, file, json, fleet: _ } => {
            let service = pick_service(&file, service)?;
            return Ok(controller(Request::Abort { service, actor: actor() }, json, then));
        }
        Cmd::Quarantine { instance, reason, json, fleet } if fleet.on() => {
            let request = FleetRequest::Quarantine {
                instance,
                reason: reason.unwrap_or_default(),
                actor: actor(),
                release: false,
            };
            (fleet_via(fleet, request)?, json)
        }
        Cmd::ReleaseQuarantine { instance, json, fleet } if fleet.on() => {
            let request = FleetRequest::Quarantine { instance, reason: String::new(), actor: actor(), release: true };
            (fleet_via(fleet, request)?, json)
        }
        Cmd::Quarantine { instance, reason, json, .. } => {
            return Ok(controller(Request::Quarantine { instance, reason, actor: actor() }, json, then))
        }
        Cmd::ReleaseQuarantine { instance, json, .. } => {
            return Ok(controller(Request::ReleaseQuarantine { instance, actor: actor() }, json, then))
        }
        Cmd::InspectInstance { instance, json } => return Ok(controller(Request::Inspect { instance }, json, then)),
        Cmd::VerifyInstances { service, json, fleet } if fleet.on() => {
            let command = Box::new(fleet_via(fleet, FleetRequest::Verify { service })?);
            return Ok(Invocation::Command { command, json, then: Then::ExitIfDrifted });
        }
        Cmd::VerifyInstances { service, json, .. } => {
            return Ok(controller(Request::VerifyInstances { service }, json, Then::ExitIfDrifted))
        }
        Cmd::Down { service, file, purge, no_wait, json, fleet: _ } => {
            let service = pick_service(&file, service)?;
            let then = Then::WaitDown { wait: !no_wait, purge };
            return Ok(controller(Request::Down { service, purge, actor: actor() }, json, then));
        }
        Cmd::Chaos { service, drill: Some(DrillKind::Canary), window, file, json, fleet, .. } if fleet.on() => {
            let service = pick_service(&file, service)?;
            let (weight, window_ms) = drill_settings(&file, &service, window)?;
            let via = fleet_target(fleet)?;
            let command = Command::FleetDrill { via, service, weight, window_ms, actor: actor() };
            return Ok(Invocation::Command { command: Box::new(command), json, then: Then::ExitIfDrillFailed });
        }
        Cmd::Chaos { service, kill_rate, duration, max_share, kills, file, json, fleet, .. } if fleet.on() => {
            let service = pick_service(&file, service)?;
            let duration_ms = duration.as_millis() as u64;
            let via = fleet_target(fleet)?;
            (Command::FleetChaos { via, service, kill_rate, duration_ms, max_share, kills, actor: actor() }, json)
        }
        Cmd::Chaos { service, kill_rate, duration, max_share, kills, drill, window, file, json, .. } => {
            let service = pick_service(&file, service)?;
            if let Some(DrillKind::Canary) = drill {
                return Ok(Invocation::Drill { service, window, json });
            }
            if kill_rate.is_nan() || kill_rate <= 0.0 {
                bail!("--kill-rate {kill_rate}: must be more than 0 kills per second");
            }
            if !(max_share > 0.0 && max_share <= 1.0) {
                bail!("--max-share {max_share}: must be more than 0 and at most 1");
            }
            let options =
                super::chaos::Options { service, kill_rate, duration, max_share, max_kills: kills, actor: actor() };
            return Ok(Invocation::Chaos { options, json });
        }
        Cmd::Up { dir } => {
            let file = dir.join("kiln.toml");
            let service = pick_service(&file, None)?;
            let listen = kiln::spec::load(&file)?.services.get(&service).and_then(|s| s.release.listen);
            let bake = own_image(&file, &service)?.map(|own| (file.clone(), own));
            let up = Some(Up { file, listen });
            return Ok(Invocation::Deploy(Deploy {
                service,
                image: None,
                bake,
                file: None,
                wait: true,
                json: false,
                up,
            }));
        }
        Cmd::Deploy { push: Some(_), .. } => {
            bail!("--push: with --cluster or --controller (a fleet's hosts pull from it)")
        }
        Cmd::Deploy { service, image, file, no_wait, json, .. } => {
            let service = pick_service(&file, service)?;
            // kiln serve releases the service as its own kiln.toml says; it
            // refuses a deploy that names another file (see README).
            let named = Some(std::path::absolute(&file).with_context(|| format!("{}", file.display()))?);
            let bake = match image {
                Some(_) => None,
                None => own_image(&file, &service)?.map(|own| (file.clone(), own)),
            };
            let d = Deploy { service, image, bake, file: named, wait: !no_wait, json, up: None };
            return Ok(Invocation::Deploy(d));
        }
        Cmd::Bake { image, file, no_cache, force, update_base, json } => {
            (Command::Bake { file, image, no_cache, force, update_base }, json)
        }
        Cmd::Bases { action: BasesCmd::Outdated { file, json } } => (Command::BasesOutdated { file }, json),
        Cmd::Agent(AgentArgs { cluster, name, ttl, signed_by, advertise, file, peer_port }) => {
            let registries = if file.is_file() { kiln::spec::load(&file)?.registries } else { Default::default() };
            let name = host_name(name)?;
            (
                Command::Agent {
                    cluster: cluster.into(),
                    name,
                    ttl_secs: ttl,
                    signed_by,
                    advertise,
                    registries,
                    peer_port,
                },
                false,
            )
        }
        Cmd::Hosts(HostsArgs { fleet, json }) => (fleet_via(fleet, FleetRequest::Hosts {})?, json),
        Cmd::Metrics(MetricsArgs { fleet }) => (fleet_via(fleet, FleetRequest::Metrics {})?, false),
        Cmd::Services(ServicesArgs { fleet, json }) => (fleet_via(fleet, FleetRequest::Services {})?, json),
        Cmd::Assign(AssignArgs { cluster, host, slot, service, image, env }) => {
            let env = env
                .into_iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<Option<Vec<_>>>()
                .context("--env takes K=V")?;
            let assignment = kiln::fleet::reconcile::Assignment {
                image,
                service,
                env,
                memory_bytes: None,
                millicpus: None,
                singleton: false,
                health: None,
                channel: None,
                secrets: Vec::new(),
                volumes: Vec::new(),
                epoch: 0,
            };
            (Command::Assign { cluster: cluster.into(), host, slot, assignment: Some(assignment) }, false)
        }
        Cmd::Unassign(UnassignArgs { cluster, host, slot }) => {
            (Command::Assign { cluster: cluster.into(), host, slot, assignment: None }, false)
        }
        Cmd::Controller(ControllerArgs { cluster, name, ttl, api, file }) => {
            let name = host_name(name)?;
            let notify = file.as_deref().map(fleet_hooks).transpose()?.unwrap_or_default();
            (Command::FleetController { cluster: cluster.into(), name, ttl_secs: ttl, api, notify }, false)
        }
        Cmd::DrainHost(DrainHostArgs { fleet, host, undo }) => {
            (fleet_via(fleet, FleetRequest::DrainHost { host, undo, actor: actor() })?, false)
        }
        Cmd::Place(PlaceArgs {
            fleet,
            service,
            replicas,
            image,
            env,
            memory,
            cpus,
            singleton,
            listen,
            health,
            hosts,
            paths,
            canary,
            canary_replicas,
            canary_weight,
            canary_steps,
            step_interval,
            max_error_rate,
            max_p99_ratio,
        }) => {
            let memory_bytes = match memory {
                Some(m) => Some(
                    kiln::spec::parse_size(&m)
                        .with_context(|| format!("--memory {m:?}: expected a size like 256M or 1G"))?,
                ),
                None => None,
            };
            let env = env
                .into_iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<Option<Vec<_>>>()
                .context("--env takes K=V")?;
            let canary = canary.map(|image| kiln::fleet::place::Canary {
                image,
                replicas: canary_replicas,
                weight: canary_steps.first().copied().unwrap_or(canary_weight),
                step_secs: if canary_steps.is_empty() { 0 } else { step_interval.as_secs() },
                steps: canary_steps,
                pauses: Default::default(),
                progress: None,
                max_error_rate,
                max_p99_ratio,
                fault: None,
            });
            let millicpus = match cpus {
                Some(c) if c > 0.0 && c <= 1024.0 => Some((c * 1000.0).round() as u64),
                Some(c) => anyhow::bail!("--cpus {c}: a positive number of cores, at most 1024"),
                None => None,
            };
            let desired = kiln::fleet::place::Desired {
                image,
                replicas,
                env,
                memory_bytes,
                millicpus,
                singleton,
                listen,
                health,
                canary,
                // Which set is stable is the leader's: the place keeps it.
                color: Default::default(),
                blue_green: None,
                channel: None,
                previous: None,
                secrets: Vec::new(),
                volumes: Vec::new(),
                edge: kiln::fleet::place::FleetEdge { hosts, paths, ..Default::default() },
            };
            (fleet_via(fleet, FleetRequest::Place { service, desired, actor: actor() })?, false)
        }
        Cmd::Db { action: DbCmd::Update { mirror, ca, ecosystems, json } } => {
            (Command::DbUpdate { mirror, ca, ecosystems }, json)
        }
        Cmd::Images { json } => (Command::Images {}, json),
        Cmd::Inspect { reference, json } => (Command::Inspect { reference }, json),
        Cmd::Gc { dry_run, json } => (Command::Gc { dry_run }, json),
        Cmd::Key { action: KeyCmd::Generate { name, json } } => (Command::KeyGenerate { name }, json),
        Cmd::ScanSecrets { reference, file, json } => (Command::ScanSecrets { file, reference }, json),
        Cmd::Scan { reference, file, db, force, json } => {
            let db = db.or_else(|| std::env::var_os("KILN_OSV_DB").map(PathBuf::from));
            (Command::Scan { file, reference, db, force }, json)
        }
        Cmd::PromoteImage { reference, to, file, json } => {
            (Command::PromoteImage { file, reference, to, actor: super::actor() }, json)
        }
        Cmd::Release { service, file, db, force_db, to, no_deploy, json } => {
            let db = db.or_else(|| std::env::var_os("KILN_OSV_DB").map(PathBuf::from));
            if !no_deploy {
                then = Then::DeployPassed;
            }
            let run = command::pipeline::ReleaseRun { file, service, db, force_db, to, actor: super::actor() };
            (Command::Release(run), json)
        }
        Cmd::Push { reference, remote, file, sign, json } => {
            let registry = registry_settings(&file, &remote)?;
            (Command::Push { reference, remote, registry, sign }, json)
        }
        Cmd::Pull { remote, name, file, json } => {
            let registry = registry_settings(&file, &remote)?;
            (Command::Pull { remote, name, registry }, json)
        }
        Cmd::Login { registry, username, password_stdin: _, file } => {
            let mut password = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
                .context("reading the password from standard input")?;
            let password = kiln::command::Password(password.trim_end_matches(['\n', '\r']).to_owned());
            let settings = registry_settings(&file, &format!("{registry}/x"))?;
            (Command::Login { registry, username, password, settings }, false)
        }
        Cmd::Logout { registry } => (Command::Logout { registry }, false),
        Cmd::Sbom { reference, format, output, json } => {
            if let Some(path) = output {
                then = Then::WriteSbom { path, cyclonedx: format == SbomFormat::Cyclonedx };
            }
            (Command::Sbom { reference }, json)
        }
        Cmd::Sign { reference, key, json } => (Command::Sign { reference, key }, json),
        Cmd::Verify { reference, key, json } => (Command::VerifySignature { reference, key }, json),
        Cmd::Test { reference, file, json } => {
            let reference = match reference {
                Some(r) => r,
                None => {
                    let f = kiln::spec::load(&file)?;
                    let tested: Vec<&String> =
                        f.images.iter().filter(|(_, i)| i.test.is_some()).map(|(n, _)| n).collect();
                    match tested.as_slice() {
                        [one] => (*one).clone(),
                        [] => bail!("{}: no [image.X.test] table: nothing to test", file.display()),
                        many => bail!(
                            "{}: several images have tests ({}): name one",
                            file.display(),
                            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    }
                }
            };
            (Command::Test { file, reference }, json)
        }
        Cmd::Run {
            reference,
            service,
            file,
            name,
            env,
            volume,
            secret,
            memory,
            cpus,
            pids,
            stop_timeout,
            release,
            json,
        } => {
            let limits = kiln::runtime::bundle::Limits { memory_bytes: memory, cpus, pids };
            let service_file = service.is_some().then_some(file);
            let req = RunRequest {
                reference: reference.unwrap_or_default(),
                service: service.or(name),
                env,
                volumes: volume,
                secrets: secret,
                limits,
                stop_grace_secs: stop_timeout,
                release,
                placeholder_secrets: false,
                release_fields: Default::default(),
                sandbox: Default::default(),
                secret_store: None,
            };
            (Command::Run { request: req, service_file }, json)
        }
        Cmd::Ps { json, fleet, .. } if fleet.on() => (fleet_via(fleet, FleetRequest::Ps {})?, json),
        Cmd::Ps { all, json, .. } => (Command::Ps { all }, json),
        Cmd::Stop { instance, time } => (Command::Stop { instance, grace_secs: time }, false),
        Cmd::Rm { instance, force } => (Command::Rm { instance, force }, false),
        Cmd::Pause { instance } => (Command::Pause { instance }, false),
        Cmd::Resume { instance } => (Command::Resume { instance }, false),
        Cmd::Logs { service, release, instance, image, since, follow, json, fleet } => {
            let since = match since {
                None => None,
                Some(s) => Some(match kiln::time::parse_duration(&s) {
                    Some(d) => kiln::time::now_ms() as i64 - d * 1000,
                    None => kiln::time::parse_rfc3339(&s)
                        .map(|t| t * 1000)
                        .with_context(|| format!("--since {s:?}: expected a duration like 15m or an RFC 3339 time"))?,
                }),
            };
            let filter = LogFilter { service, release, instance, image, since };
            if fleet.on() {
                if follow {
                    fleet_via(fleet.clone(), FleetRequest::Logs { filter: filter.clone() })?;
                    let poll = move |filter| fleet_via(fleet.clone(), FleetRequest::Logs { filter });
                    return Ok(Invocation::FollowFleetLogs { filter, poll: Box::new(poll), json });
                }
                return Ok(Invocation::Command {
                    command: Box::new(fleet_via(fleet, FleetRequest::Logs { filter })?),
                    json,
                    then: Then::Nothing,
                });
            }
            if follow {
                return Ok(Invocation::FollowLogs { filter, json });
            }
            (Command::Logs(filter), json)
        }
        Cmd::Volumes { json } => (Command::Volumes {}, json),
        Cmd::Plan { service, file, json, image, fleet } if fleet.on() => {
            (fleet_deploy(fleet, &file, service, image, None, None, true, true)?, json)
        }
        Cmd::Plan { image: Some(_), .. } => bail!("--image: give --cluster or --controller (a fleet's plan)"),
        Cmd::Plan { service, file, json, .. } => (Command::Plan { file, service }, json),
        Cmd::History { service, verify, json, fleet } if fleet.on() => {
            (fleet_via(fleet, FleetRequest::History { service, verify })?, json)
        }
        Cmd::History { service, verify, json, fleet: _ } => (Command::History { service, verify }, json),
        Cmd::Secret { action: SecretCmd::Set { name, cluster } } => {
            let mut value = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut value)
                .context("reading the secret from standard input")?;
            if value.ends_with(b"\n") {
                value.pop();
            }
            match cluster.on() {
                true => fleet_secret(cluster, kiln::command::FleetSecretAction::Set { name, value }, false)?,
                false => (Command::SecretSet { name, value }, false),
            }
        }
        Cmd::Secret { action: SecretCmd::Ls { json, cluster } } if cluster.on() => {
            fleet_secret(cluster, kiln::command::FleetSecretAction::List, json)?
        }
        Cmd::Secret { action: SecretCmd::Ls { json, .. } } => (Command::SecretList {}, json),
        Cmd::Secret { action: SecretCmd::Rm { name, cluster } } if cluster.on() => {
            fleet_secret(cluster, kiln::command::FleetSecretAction::Remove { name }, false)?
        }
        Cmd::Secret { action: SecretCmd::Rm { name, .. } } => (Command::SecretRemove { name }, false),
        Cmd::Secret { action: SecretCmd::RotateKey { old_key_file, new_data_key, cluster } } if cluster.on() => {
            let old_key_file = old_key_file.map(|p| std::path::absolute(&p)).transpose()?;
            fleet_secret(cluster, kiln::command::FleetSecretAction::RotateKey { old_key_file, new_data_key }, false)?
        }
        Cmd::Secret { action: SecretCmd::RotateKey { new_data_key: true, .. } } => {
            anyhow::bail!("--new-data-key is for a fleet (--cluster): a host's rotate-key always makes a new data key")
        }
        Cmd::Secret { action: SecretCmd::RotateKey { old_key_file, .. } } => {
            (Command::RotateKey { store: kiln::command::KeyStore::Secrets, old_key_file }, false)
        }
        Cmd::Key { action: KeyCmd::Rotate { old_key_file } } => {
            (Command::RotateKey { store: kiln::command::KeyStore::SigningKeys, old_key_file }, false)
        }
        Cmd::Proxy {
            listen,
            admin,
            releases,
            releases_file,
            service,
            health_path,
            health_interval_ms,
            health_timeout_ms,
            healthy_threshold,
            unhealthy_threshold,
            sticky,
            release_header,
            retries,
            backend_timeout_ms,
            header_timeout_ms,
            workers,
            shutdown_grace_ms,
            handoff,
            take_over,
            tls_cert,
            tls_key,
            hosts,
            redirect_http,
            site,
        } => {
            let health = health_path.map(|path| kiln::proxy::HealthCheck {
                path,
                interval: std::time::Duration::from_millis(health_interval_ms),
                timeout: std::time::Duration::from_millis(health_timeout_ms),
                healthy_threshold,
                unhealthy_threshold,
            });
            let config = kiln::proxy::ProxyConfig {
                service,
                sticky,
                release_header,
                retries,
                backend_timeout: std::time::Duration::from_millis(backend_timeout_ms),
                health,
                header_timeout: std::time::Duration::from_millis(header_timeout_ms),
                ..Default::default()
            };
            let shutdown_grace = std::time::Duration::from_millis(shutdown_grace_ms);
            let workers = usize::from(workers);
            let run = command::ProxyRun {
                listen,
                admin,
                releases,
                releases_file,
                shutdown_grace,
                config,
                workers,
                handoff,
                take_over,
                tls: tls_cert.zip(tls_key).map(|(cert, key)| kiln::proxy::run::TlsRun {
                    files: kiln::proxy::tls::TlsFiles { cert, key },
                    hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                }),
                redirect_http,
                site,
            };
            (Command::Proxy(run), false)
        }
    };
    Ok(Invocation::Command { command: Box::new(command), json, then })
}

/// The `[registries."HOST"]` settings of `remote`'s registry, from `file`
/// when it exists (push and pull also work outside a project).
/// A fleet drill's share and window: kiln.toml's canary (its first
/// weight, its `step_interval`) when the service has one, else 10 % and
/// 10 s; `--window` wins.
fn drill_settings(
    file: &std::path::Path,
    service: &str,
    window: Option<std::time::Duration>,
) -> anyhow::Result<(u32, u64)> {
    let spec = if file.is_file() { kiln::spec::load(file)?.services.get(service).cloned() } else { None };
    let canary = spec.and_then(|s| match s.release.strategy {
        kiln::spec::Strategy::Canary(c) => Some(c),
        _ => None,
    });
    let weight = canary
        .as_ref()
        .and_then(|c| {
            c.steps.iter().find_map(|s| match s {
                kiln::spec::CanaryStep::Weight(w) => Some(*w),
                kiln::spec::CanaryStep::Pause(_) => None,
            })
        })
        .unwrap_or(10)
        .clamp(1, 50);
    let window_ms = window.map(|w| w.as_millis() as u64).or(canary.map(|c| c.step_interval_ms)).unwrap_or(10_000);
    Ok((weight, window_ms))
}

pub(super) fn registry_settings(
    file: &std::path::Path,
    remote: &str,
) -> anyhow::Result<kiln::spec::registries::RegistrySpec> {
    if !file.is_file() {
        return Ok(Default::default());
    }
    let host = remote.trim_start_matches("http://").split('/').next().unwrap_or_default();
    Ok(kiln::spec::load(file)?.registries.get(host).cloned().unwrap_or_default())
}
