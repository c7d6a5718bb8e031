//! The whole command surface as one enum. The CLI (and later the HTTP API)
//! parse their input into a [`Command`] and render the [`Output`]; neither
//! contains logic of its own.

mod agent;
mod agent_heal;
mod error;
mod fleet;
pub mod fleet_api;
mod fleet_heal;
pub mod host;
mod output;
pub mod pipeline;
pub mod remote;

pub use error::*;
pub use output::*;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bake::{self, BakeOptions, Progress, Tools};
use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci::{self, Descriptor, ImageConfig, Manifest};
use crate::release::plan::{self, Current};
use crate::runtime::driver::Driver;
use crate::runtime::logs::{LogFilter, Retention};
use crate::runtime::{InstanceRecord, Launcher, RunError, RunRequest, Runtime};
use crate::secrets::{SecretError, Secrets};
use crate::serve::history::History;
use crate::spec::{self, SpecError};

/// Everything kiln can be asked to do. It is also the body of the API's
/// `POST /v1/commands` (see [`remote`]), externally tagged:
/// `{"bake": {"file": "/abs/kiln.toml"}}`; optional fields may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// A request for the running `kiln serve` of this home (rollback,
    /// promote, abort, quarantine, ...): carried out by a call to its API,
    /// which parses into the same [`crate::serve::api::Request`]. Not a
    /// command body: those requests have routes of their own.
    #[serde(skip)]
    Controller(crate::serve::api::Request),
    /// Bake one image (or all) from a kiln.toml.
    Bake {
        file: PathBuf,
        #[serde(default)]
        image: Option<String>,
        #[serde(default)]
        no_cache: bool,
        #[serde(default)]
        force: bool,
        /// Resolve registry bases' tags again and move their kiln.lock pins.
        #[serde(default)]
        update_base: bool,
    },
    /// The registry bases of a kiln.toml whose tag now names another
    /// digest than kiln.lock's pin (`kiln bases outdated`).
    BasesOutdated {
        file: PathBuf,
    },
    /// List tagged images.
    Images {},
    /// Show one image: manifest, config, annotations, tag history.
    Inspect {
        reference: String,
    },
    /// Remove unreferenced blobs.
    Gc {
        #[serde(default)]
        dry_run: bool,
    },
    /// Start one instance of an image; with `service_file`, the request's
    /// service is a `[service.NAME]` of that file, and its fields the overrides.
    Run {
        request: RunRequest,
        #[serde(default)]
        service_file: Option<PathBuf>,
    },
    /// List instances (running ones, or all).
    Ps {
        #[serde(default)]
        all: bool,
    },
    /// Stop an instance: its stop signal, the grace period, then SIGKILL.
    Stop {
        instance: String,
        #[serde(default)]
        grace_secs: Option<u64>,
    },
    /// Remove an exited instance (killing it first with `force`).
    Rm {
        instance: String,
        #[serde(default)]
        force: bool,
    },
    /// Freeze an instance for post-mortem (quarantine) / thaw it.
    Pause {
        instance: String,
    },
    Resume {
        instance: String,
    },
    /// Central logs, filtered.
    Logs(LogFilter),
    /// Named volumes, their size and users.
    Volumes {},
    /// Store a secret (the value comes from the front end, never a flag).
    SecretSet {
        name: String,
        value: Vec<u8>,
    },
    SecretList {},
    SecretRemove {
        name: String,
    },
    /// Re-encrypt a store under a new data key sealed by the current
    /// key-encryption key; `old_key_file` (or `KILN_OLD_PASSPHRASE`) opens
    /// it when it was sealed with another. Carried out where the key files
    /// are, in the caller's process, never by `kiln serve`.
    RotateKey {
        store: KeyStore,
        #[serde(default)]
        old_key_file: Option<PathBuf>,
    },
    /// What deploying each service (or one) of a kiln.toml would do, from
    /// what runs now; changes nothing.
    Plan {
        file: PathBuf,
        #[serde(default)]
        service: Option<String>,
    },
    /// The release history (of one service), and with `verify` a check of
    /// its whole hash chain.
    History {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        verify: bool,
    },
    /// Register this host in a fleet (etcd) and keep it registered until
    /// SIGINT or SIGTERM. Not a command body: it is the caller's foreground.
    #[serde(skip)]
    Agent {
        cluster: crate::fleet::etcd::Cluster,
        name: String,
        ttl_secs: i64,
        /// A PEM public key: every image the agent runs must carry a valid
        /// signature by it.
        signed_by: Option<PathBuf>,
        /// The address other hosts reach this one's instances at, and its
        /// load balancers listen on.
        advertise: std::net::IpAddr,
        /// kiln.toml's `[registries."HOST"]`: a CA, plain HTTP, or a key
        /// every image from that registry must be signed by.
        #[serde(default)]
        registries: std::collections::BTreeMap<String, crate::spec::registries::RegistrySpec>,
        /// Serve this host's store to the other agents on this port (0: any
        /// free one), and pull from theirs when the registry fails.
        #[serde(default)]
        peer_port: Option<u16>,
    },
    /// Assigns slot `slot` of host `host` (None: removes it), in etcd; the
    /// host's agent starts or removes the instance. Caller's process only.
    #[serde(skip)]
    Assign {
        cluster: crate::fleet::etcd::Cluster,
        host: String,
        slot: String,
        assignment: Option<crate::fleet::reconcile::Assignment>,
    },
    /// Campaign to lead the fleet's placement, and place while leading,
    /// until SIGINT or SIGTERM. The caller's foreground.
    #[serde(skip)]
    FleetController {
        cluster: crate::fleet::etcd::Cluster,
        name: String,
        ttl_secs: i64,
        /// Also serve the fleet API ([`fleet_api`]) on this address.
        api: Option<std::net::SocketAddr>,
        /// The webhooks the fleet's history is sent to while this
        /// controller leads (`[[notify]]` of its kiln.toml).
        notify: Vec<crate::spec::notify::NotifySpec>,
    },
    /// Sets a service's desired replicas and image in the fleet (replicas
    /// 0 removes it). Caller's process only.
    #[serde(skip)]
    Place {
        cluster: crate::fleet::etcd::Cluster,
        service: String,
        desired: crate::fleet::place::Desired,
        /// Who asked, for the history.
        actor: String,
    },
    /// A person's change to one fleet service (`deploy`, `rollback`,
    /// `promote`, `abort`, `down` with `--cluster`): decided by the pure
    /// [`crate::fleet::change::apply`] on what etcd holds, and written
    /// conditioned on the revision read. Caller's process only.
    #[serde(skip)]
    FleetChange {
        cluster: crate::fleet::etcd::Cluster,
        service: String,
        change: crate::fleet::change::Change,
        /// The registry's kiln.toml settings, to resolve a deploy's tag to
        /// its digest (every host runs the same bytes).
        registry: crate::spec::registries::RegistrySpec,
        /// Follow a deploy or rollback until it is done, failed or paused,
        /// for at most this long (None: return once written).
        wait: Option<std::time::Duration>,
        /// Bake the deploy's image from kiln.toml and push it first; the
        /// deploy then names the pushed digest.
        bake: Option<FleetBake>,
        /// Who asked, for the history.
        actor: String,
        /// Decide and say what would change (`kiln plan --cluster`), write
        /// nothing.
        dry_run: bool,
    },
    /// A fleet command sent to a controller's API (`--controller URL`)
    /// rather than to etcd; a deploy's [`FleetBake`] is done here first,
    /// and a deploy or rollback is followed through the API as through
    /// etcd. Caller's process only.
    #[serde(skip)]
    FleetRemote {
        controller: fleet_api::Controller,
        request: fleet_api::FleetRequest,
        wait: Option<std::time::Duration>,
        bake: Option<FleetBake>,
    },
    /// Marks a host as draining (`undo`: no longer): the leading
    /// controller moves its slots away, surge-first. Caller's process only.
    #[serde(skip)]
    DrainHost {
        cluster: crate::fleet::etcd::Cluster,
        host: String,
        undo: bool,
        /// Who asked, for the history.
        actor: String,
    },
    /// A fleet's secrets, sealed in etcd (`kiln secret … --cluster`): set
    /// on the caller's machine with its KEK, listed, removed. Caller's
    /// process only.
    #[serde(skip)]
    FleetSecret {
        cluster: crate::fleet::etcd::Cluster,
        action: FleetSecretAction,
    },
    /// Every live host's central logs (through each agent's peer port,
    /// with the fleet's token), merged by time. Caller's process only.
    #[serde(skip)]
    FleetLogs {
        cluster: crate::fleet::etcd::Cluster,
        filter: LogFilter,
    },
    /// Every slot of the fleet: host, service, image, state, instance.
    /// Caller's process only.
    #[serde(skip)]
    FleetPs {
        cluster: crate::fleet::etcd::Cluster,
    },
    /// Kills random serving instances of a fleet service at `kill_rate`
    /// a second for `duration_ms` (or `kills` of them), never more than
    /// `max_share` of its slots down, and reports how fast each slot
    /// served again. Caller's process only.
    #[serde(skip)]
    FleetChaos {
        cluster: crate::fleet::etcd::Cluster,
        service: String,
        kill_rate: f64,
        duration_ms: u64,
        max_share: f64,
        kills: Option<u32>,
        actor: String,
    },
    /// Quarantines a fleet instance (or, with `release`, ends its
    /// quarantine): asked of its host through etcd, with its history
    /// entry. Caller's process only.
    #[serde(skip)]
    FleetQuarantine {
        cluster: crate::fleet::etcd::Cluster,
        instance: String,
        reason: String,
        actor: String,
        release: bool,
    },
    /// Every live host checks its instances for drift now (drifted ones
    /// are replaced by their agents); what each found, of one service if
    /// given. Caller's process only.
    #[serde(skip)]
    FleetVerify {
        cluster: crate::fleet::etcd::Cluster,
        service: Option<String>,
    },
    /// The fleet's Prometheus metrics: counters from the fleet's history,
    /// gauges from its hosts and slots. Caller's process only.
    #[serde(skip)]
    FleetMetrics {
        cluster: crate::fleet::etcd::Cluster,
    },
    /// The fleet's release history, from etcd (of one service, if given);
    /// with `verify`, the whole chain and its etcd revisions are checked
    /// first. Caller's process only.
    #[serde(skip)]
    FleetHistory {
        cluster: crate::fleet::etcd::Cluster,
        service: Option<String>,
        verify: bool,
    },
    /// The hosts of a fleet whose lease is alive. Carried out in the
    /// caller's process (it talks to etcd), never as an API body.
    Hosts {
        cluster: crate::fleet::etcd::Cluster,
    },
    /// The fleet's services: desired state, canary progress and the last
    /// judged step. In the caller's process, never as an API body.
    FleetServices {
        cluster: crate::fleet::etcd::Cluster,
    },
    /// Run the load balancer in the foreground until SIGINT or SIGTERM.
    /// Not a command body: `kiln serve` runs load balancers of its own.
    #[serde(skip)]
    Proxy(ProxyRun),
    /// The test gate of an image: boot it privately, run its
    /// `[image.NAME.test]`, record the result on its digest.
    Test {
        file: PathBuf,
        reference: String,
    },
    /// The secret scan of an image (every layer, deleted files too, and
    /// its config), with `file`'s allowlist; recorded on the digest.
    ScanSecrets {
        file: PathBuf,
        reference: String,
    },
    /// The vulnerability scan of an image against an offline OSV database,
    /// judged by `file`'s `[image.X.scan]` policy; recorded on the digest.
    Scan {
        file: PathBuf,
        reference: String,
        /// A directory or zip of OSV JSON.
        #[serde(default)]
        db: Option<PathBuf>,
        /// Scan with a database older than the policy's `max_db_age`.
        #[serde(default)]
        force: bool,
    },
    /// Move an image's digest to channel `to` of `file`'s `[promotion]`
    /// (passed gate, valid signature, the channel before it), as `actor`.
    PromoteImage {
        file: PathBuf,
        reference: String,
        to: String,
        #[serde(default = "api_actor")]
        actor: String,
    },
    /// The pipeline: bake, test, scan, secret scan, SBOM, sign, promote.
    Release(pipeline::ReleaseRun),
    /// Copy an image and everything about it to a registry.
    Push {
        reference: String,
        remote: String,
        /// The registry's kiln.toml settings (`[registries."HOST"]`).
        #[serde(default)]
        registry: crate::spec::registries::RegistrySpec,
        /// Sign with this key first, the payload naming the registry
        /// repository (`cosign verify --key` of `HOST/REPO`).
        #[serde(default)]
        sign: Option<String>,
    },
    /// Fetch osv.dev's exports (or a mirror's) into kiln's own database,
    /// which `kiln scan` uses when no `db` is given. Carried out in the
    /// caller's process (it goes online), never as an API body.
    DbUpdate {
        /// A mirror laid out as osv.dev's bucket (`URL/<Ecosystem>/all.zip`).
        #[serde(default)]
        mirror: Option<String>,
        /// An extra CA for the mirror's certificate.
        #[serde(default)]
        ca: Option<PathBuf>,
        /// Only these ecosystems (default: all kiln matches).
        #[serde(default)]
        ecosystems: Vec<String>,
    },
    /// Copy an image and everything about it from a registry (tagged
    /// locally as `name`, default its title).
    Pull {
        remote: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        registry: crate::spec::registries::RegistrySpec,
    },
    /// Check credentials against a registry and keep them, encrypted.
    /// Carried out in the caller's process, never by `kiln serve`.
    Login {
        registry: String,
        username: String,
        password: Password,
        #[serde(default)]
        settings: crate::spec::registries::RegistrySpec,
    },
    /// Forget a registry's credentials.
    Logout {
        registry: String,
    },
    /// SPDX 2.3 and CycloneDX 1.5 SBOMs of an image, stored as artifacts.
    Sbom {
        reference: String,
    },
    /// A new ECDSA P-256 signing key pair named `name`.
    KeyGenerate {
        name: String,
    },
    /// Sign an image's digest (and its verification records) with key `key`.
    Sign {
        reference: String,
        key: String,
    },
    /// Check an image's signature with a PEM public key (default: the
    /// home's `default` key).
    VerifySignature {
        reference: String,
        #[serde(default)]
        key: Option<PathBuf>,
    },
}

/// What a path a command names must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNeed {
    /// A file that is there (a kiln.toml to bake, a key).
    File,
    /// A file or directory that is there (an OSV database).
    Exists,
    /// Consulted when there, and then a file (an allowlist, a policy).
    Optional,
}

impl Command {
    /// The paths a command names, by field (`bake.file`), so a front end can
    /// make them absolute and the API can refuse relative ones.
    pub fn paths_mut(&mut self) -> Vec<(&'static str, &mut PathBuf, PathNeed)> {
        match self {
            Command::Bake { file, .. } => vec![("bake.file", file, PathNeed::File)],
            Command::BasesOutdated { file } => vec![("bases_outdated.file", file, PathNeed::File)],
            Command::Run { service_file: Some(f), .. } => vec![("run.service_file", f, PathNeed::File)],
            Command::Plan { file, .. } => vec![("plan.file", file, PathNeed::File)],
            Command::Test { file, .. } => vec![("test.file", file, PathNeed::File)],
            Command::ScanSecrets { file, .. } => vec![("scan_secrets.file", file, PathNeed::Optional)],
            Command::Scan { file, db, .. } => {
                let mut v = vec![("scan.file", file, PathNeed::Optional)];
                v.extend(db.as_mut().map(|d| ("scan.db", d, PathNeed::Exists)));
                v
            }
            Command::PromoteImage { file, .. } => vec![("promote_image.file", file, PathNeed::Optional)],
            Command::Release(run) => {
                let mut v = vec![("release.file", &mut run.file, PathNeed::File)];
                v.extend(run.db.as_mut().map(|d| ("release.db", d, PathNeed::Exists)));
                v
            }
            Command::VerifySignature { key: Some(k), .. } => vec![("verify_signature.key", k, PathNeed::File)],
            Command::DbUpdate { ca: Some(c), .. } => vec![("db_update.ca", c, PathNeed::File)],
            Command::Push { registry, .. } => {
                registry.ca.as_mut().map(|c| ("push.registry.ca", c, PathNeed::File)).into_iter().collect()
            }
            Command::Pull { registry, .. } => {
                let crate::spec::registries::RegistrySpec { ca, signed_by, .. } = registry;
                let mut v: Vec<(&'static str, &mut PathBuf, PathNeed)> = Vec::new();
                v.extend(ca.as_mut().map(|c| ("pull.registry.ca", c, PathNeed::File)));
                v.extend(signed_by.as_mut().map(|k| ("pull.registry.signed_by", k, PathNeed::File)));
                v
            }
            Command::RotateKey { old_key_file: Some(k), .. } => vec![("rotate_key.old_key_file", k, PathNeed::File)],
            _ => Vec::new(),
        }
    }
}

/// What `kiln secret … --cluster` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetSecretAction {
    /// A new version of `name` (the value from the front end, never a flag).
    Set {
        name: String,
        value: Vec<u8>,
    },
    List,
    /// Every version of `name`, unless a service still uses it.
    Remove {
        name: String,
    },
}

/// An `[image.X]` of a kiln.toml baked and pushed for a fleet deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetBake {
    pub file: PathBuf,
    /// The `[image.X]` name.
    pub image: String,
    /// `REGISTRY/REPO`: pushed there with the bake's first tag.
    pub push_to: String,
    /// Sign it with this key first (`kiln push --sign`).
    pub sign: Option<String>,
}

/// Which encrypted store a rotation re-seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStore {
    Secrets,
    SigningKeys,
}

/// A password, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

/// Who asked, when an API client does not say.
pub(crate) fn api_actor() -> String {
    "api".into()
}

pub use kiln_proxy::run::ProxyRun;

/// What commands run against.
pub struct Context<'a> {
    pub store: Store,
    pub tools: Tools<'a>,
    pub progress: &'a mut dyn Progress,
    pub now: i64,
    pub source_date_epoch: Option<i64>,
    pub driver: &'a dyn Driver,
    pub launcher: &'a dyn Launcher,
    pub retention: Retention,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("store", &self.store).finish()
    }
}

/// Checks a fetched image's signature with the PEM public key at `path`:
/// a valid signature over a payload naming this digest, else refused.
fn verify_fetched(
    store: &Store,
    fetched: &crate::image::registry::Fetched,
    path: &std::path::Path,
    reference: &str,
) -> Result<crate::verify::sign::Verified, CommandError> {
    use crate::verify::sign;
    let pem = std::fs::read_to_string(path).map_err(|source| sign::SignError::Io { path: path.to_owned(), source })?;
    let what = path.display().to_string();
    let key = sign::read_public_key(&pem, &what)?;
    let Some(sig) = fetched.signature() else {
        return Err(sign::SignError::Unsigned {
            reference: reference.to_owned(),
            tag: format!("sha256-{}.sig", fetched.digest.hex()),
        }
        .into());
    };
    let m: Manifest = store.read_json(sig)?;
    Ok(sign::verify_manifest(store, reference, &fetched.digest, &m, &key, &what)?)
}

pub fn execute(cmd: Command, ctx: &mut Context<'_>) -> Result<Output, CommandError> {
    match cmd {
        Command::Controller(request) => {
            let answer = crate::serve::call(ctx.store.home(), &request)?;
            Ok(Output::Controller { request, answer: Box::new(answer) })
        }
        Command::Bake { file, image, no_cache, force, update_base } => {
            let f = spec::load(&file)?;
            let names: Vec<String> = match image {
                Some(n) => vec![n],
                None => f.images.keys().cloned().collect(),
            };
            let opts =
                BakeOptions { no_cache, force, source_date_epoch: ctx.source_date_epoch, now: ctx.now, update_base };
            let mut out = Vec::new();
            for n in names {
                out.push(bake::bake(&ctx.store, &f, &n, &opts, &ctx.tools, ctx.progress)?);
            }
            Ok(Output::Baked(out))
        }
        Command::BasesOutdated { file } => {
            let f = spec::load(&file)?;
            Ok(Output::Bases(bake::base::statuses(&ctx.store, &f)?))
        }
        Command::Images {} => Ok(Output::Images(images(&ctx.store)?)),
        Command::Inspect { reference } => Ok(Output::Inspect(Box::new(inspect(&ctx.store, &reference)?))),
        Command::Gc { dry_run } => Ok(Output::Gc(ctx.store.gc(dry_run)?)),
        Command::Run { request, service_file } => {
            let mut channel = None;
            let req = match (service_file, request.service.clone()) {
                (Some(path), Some(name)) => {
                    let f = spec::load(&path)?;
                    let service = f.services.get(&name).ok_or_else(|| no_such_service(&f, &name))?;
                    channel.clone_from(&service.channel);
                    RunRequest::for_service(service, request)
                }
                _ => request,
            };
            if req.reference.is_empty() {
                return Err(RunError::Invalid("name an image to run, or a --service from kiln.toml".into()).into());
            }
            // A service with a channel runs only digests promoted to it.
            if let Some(rule) = &channel {
                let (desc, _) = ctx.store.resolve(&req.reference)?;
                crate::verify::promote::admit(&ctx.store, rule, &desc.digest)?;
            }
            let rt = Runtime::new(&ctx.store, ctx.driver);
            Ok(Output::Instance(Box::new(rt.run(&req, ctx.launcher, ctx.now)?)))
        }
        Command::Ps { all } => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            let (mut instances, orphans_removed) = rt.observe_all()?;
            if !all {
                instances.retain(|r| !r.state.is_exited());
            }
            Ok(Output::Instances { instances, orphans_removed })
        }
        Command::Stop { instance, grace_secs } => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            let grace = grace_secs.map(std::time::Duration::from_secs);
            Ok(Output::Instance(Box::new(rt.stop(&instance, grace)?)))
        }
        Command::Rm { instance, force } => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            Ok(Output::Instance(Box::new(rt.remove(&instance, force)?)))
        }
        Command::Pause { instance } => {
            Ok(Output::Instance(Box::new(Runtime::new(&ctx.store, ctx.driver).pause(&instance)?)))
        }
        Command::Resume { instance } => {
            Ok(Output::Instance(Box::new(Runtime::new(&ctx.store, ctx.driver).resume(&instance)?)))
        }
        Command::Logs(filter) => {
            let rt = Runtime::new(&ctx.store, ctx.driver);
            rt.ingest_all()?;
            let live = rt.live_ids()?;
            let logs = rt.logs();
            let io = |source| RunError::Io { path: ctx.store.home().join("logs"), source };
            logs.prune(&ctx.retention, ctx.now, &live).map_err(io)?;
            Ok(Output::Logs(logs.query(&filter).map_err(io)?))
        }
        Command::Volumes {} => Ok(Output::Volumes(Runtime::new(&ctx.store, ctx.driver).volumes()?)),
        Command::SecretSet { name, value } => {
            Secrets::new(ctx.store.home()).set(&name, &value)?;
            Ok(Output::Done { message: format!("secret {name} stored ({} bytes, encrypted)", value.len()) })
        }
        Command::SecretList {} => Ok(Output::Secrets(Secrets::new(ctx.store.home()).list()?)),
        cmd @ Command::Agent { .. } => agent::execute(cmd, ctx),
        cmd @ (Command::Assign { .. }
        | Command::FleetController { .. }
        | Command::Place { .. }
        | Command::FleetChange { .. }
        | Command::FleetRemote { .. }
        | Command::DrainHost { .. }
        | Command::Hosts { .. }
        | Command::FleetHistory { .. }
        | Command::FleetSecret { .. }
        | Command::FleetLogs { .. }
        | Command::FleetPs { .. }
        | Command::FleetMetrics { .. }
        | Command::FleetVerify { .. }
        | Command::FleetChaos { .. }
        | Command::FleetQuarantine { .. }
        | Command::FleetServices { .. }) => fleet::execute(cmd, ctx),
        Command::Proxy(run) => {
            kiln_proxy::run::run(run).map_err(|e| RunError::Invalid(format!("kiln proxy: {e}")))?;
            Ok(Output::Done { message: "kiln proxy stopped".into() })
        }
        Command::SecretRemove { name } => {
            Secrets::new(ctx.store.home()).remove(&name)?;
            Ok(Output::Done { message: format!("secret {name} removed") })
        }
        Command::RotateKey { store, old_key_file } => {
            use crate::secrets::kek;
            let home = ctx.store.home();
            let (secrets, what) = match store {
                KeyStore::Secrets => (Secrets::new(home), "secret(s)"),
                KeyStore::SigningKeys => (Secrets::signing_keys(home), "signing key(s)"),
            };
            let old = match (old_key_file, std::env::var(kek::OLD_PASSPHRASE_ENV)) {
                (Some(p), _) => Some(kek::from_file(&p, "--old-key-file", home).map_err(SecretError::from)?),
                (None, Ok(pass)) => Some(
                    kek::from_passphrase(&pass, kek::Origin::PassphraseEnv(kek::OLD_PASSPHRASE_ENV))
                        .map_err(SecretError::from)?,
                ),
                (None, Err(_)) => None,
            };
            let r = secrets.rotate(old.clone())?;
            // The keys of certificates kiln obtained go with the secrets.
            // The keys of certificates kiln obtained, and registry
            // credentials, go with the secrets.
            if matches!(store, KeyStore::Secrets) {
                for (other, dir) in [(Secrets::tls_keys(home), "tls"), (Secrets::credentials(home), "auth")] {
                    if home.join(dir).join("dek").exists() {
                        other.rotate(old.clone())?;
                    }
                }
            }
            let migrated = if r.migrated { "; the bare key that sat beside them is removed" } else { "" };
            Ok(Output::Done {
                message: format!(
                    "{} {what} re-encrypted under a new data key, sealed with {}{migrated}",
                    r.count, r.sealed_with
                ),
            })
        }
        Command::Plan { file, service } => {
            let f = spec::load(&file)?;
            let chosen: Vec<&spec::ServiceSpec> = match &service {
                Some(name) => vec![f.services.get(name).ok_or_else(|| no_such_service(&f, name))?],
                None => f.services.values().collect(),
            };
            if chosen.is_empty() {
                return Err(SpecError {
                    file: f.path.clone(),
                    line: None,
                    key: "service".into(),
                    message: "no [service.NAME] table to plan".into(),
                }
                .into());
            }
            let rt = Runtime::new(&ctx.store, ctx.driver);
            let (instances, _) = rt.observe_all()?;
            let mut plans = Vec::new();
            for s in chosen {
                let (target, _) = ctx.store.resolve(&s.image).map_err(|e| match e {
                    StoreError::NotFound(_) => CommandError::Spec(SpecError {
                        file: f.path.clone(),
                        line: Some(s.image_line),
                        key: format!("service.{}.image", s.name),
                        message: if f.images.contains_key(&s.image) {
                            format!("[image.{}] has not been baked yet (kiln bake {})", s.image, s.image)
                        } else {
                            format!("{:?} is neither an [image.NAME] of this file nor an image in the store", s.image)
                        },
                    }),
                    other => other.into(),
                })?;
                let secrets = crate::secrets::Secrets::new(ctx.store.home());
                let versions = s
                    .secrets
                    .iter()
                    .filter_map(|x| secrets.version(&x.name).ok().map(|v| (x.name.clone(), v)))
                    .collect();
                let fields = s.release_fields(&versions);
                let now = current(&instances, &s.name);
                let mut p = plan::plan_release(&s.name, &s.release, now.as_ref(), &target.digest, &fields);
                p.warnings = s.sandbox.warnings();
                plans.push(p);
            }
            Ok(Output::Plans(plans))
        }
        Command::Test { file, reference } => {
            let f = spec::load(&file)?;
            let r = crate::verify::gate::test(&ctx.store, ctx.driver, ctx.launcher, &f, &reference, ctx.now)?;
            Ok(Output::Test(Box::new(r)))
        }
        Command::ScanSecrets { file, reference } => {
            // The allowlist is in kiln.toml; an image from elsewhere has none.
            let f = if file.is_file() { Some(spec::load(&file)?) } else { None };
            let g = crate::verify::leaks::gate(&ctx.store, f.as_ref(), &reference, ctx.now)?;
            Ok(Output::Leaks(Box::new(g)))
        }
        Command::Scan { file, reference, db, force } => {
            let f = if file.is_file() { Some(spec::load(&file)?) } else { None };
            let db = db
                .or_else(|| crate::verify::osvdb::current(ctx.store.home()))
                .ok_or(crate::verify::vulns::VulnError::NoDatabase)?;
            let r = crate::verify::vulns::gate(&ctx.store, f.as_ref(), &reference, &db, force, ctx.now)?;
            Ok(Output::Vulns(Box::new(r)))
        }
        Command::PromoteImage { file, reference, to, actor } => {
            let policy = if file.is_file() { spec::load(&file)?.promotion } else { Default::default() };
            let p = crate::verify::promote::promote(&ctx.store, &policy, &reference, &to, &actor, ctx.now)?;
            Ok(Output::Promoted(Box::new(p)))
        }
        Command::Release(run) => Ok(Output::Pipeline(Box::new(pipeline::release(run, ctx)?))),
        Command::Push { reference, remote, registry, sign } => {
            use crate::image::registry;
            let r = registry::Remote::parse(&remote).map_err(registry::RegistryError::from)?;
            if let Some(key) = &sign {
                let image = crate::verify::sign::sign_as(
                    &ctx.store,
                    key,
                    &reference,
                    Some(&r.repository()),
                    Default::default(),
                    ctx.now,
                )?;
                for record in crate::verify::record_artifacts(&ctx.store, &image.digest)? {
                    crate::verify::sign::sign(&ctx.store, key, record.as_str(), Default::default(), ctx.now)?;
                }
            }
            let mut t = registry::push(&ctx.store, &reference, &r, &registry)?;
            t.signed_by = sign;
            Ok(Output::Transfer(Box::new(t)))
        }
        Command::Pull { remote, name, registry } => {
            use crate::image::registry;
            let r = registry::Remote::parse(&remote).map_err(registry::RegistryError::from)?;
            let fetched = registry::fetch(&ctx.store, &r, &registry, name.as_deref())?;
            // A registry with `signed_by`: no tag is set for an image
            // without a valid signature by that key.
            if let Some(path) = &registry.signed_by {
                verify_fetched(&ctx.store, &fetched, path, &remote)?;
            }
            let mut t = registry::tag_fetched(&ctx.store, fetched, ctx.now)?;
            t.signed_by = registry.signed_by.map(|p| p.display().to_string());
            Ok(Output::Transfer(Box::new(t)))
        }
        Command::DbUpdate { mirror, ca, ecosystems } => {
            let source = mirror.as_deref().unwrap_or(crate::verify::osvdb::DEFAULT_SOURCE);
            let u = crate::verify::osvdb::update(ctx.store.home(), source, ca.as_deref(), &ecosystems, ctx.now)?;
            Ok(Output::DbUpdated(Box::new(u)))
        }
        Command::Login { registry, username, password, settings } => {
            let creds = crate::image::registry::Credentials { username, password: password.0 };
            crate::image::registry::login(ctx.store.home(), &registry, &settings, &creds)?;
            Ok(Output::Done {
                message: format!("logged in to {registry} as {}; credentials kept encrypted", creds.username),
            })
        }
        Command::Logout { registry } => {
            let had = crate::image::registry::forget_credentials(ctx.store.home(), &registry)?;
            let message = if had {
                format!("forgot the credentials of {registry}")
            } else {
                format!("no credentials kept for {registry}")
            };
            Ok(Output::Done { message })
        }
        Command::Sbom { reference } => {
            Ok(Output::Sbom(Box::new(crate::verify::sbom::generate(&ctx.store, &reference, ctx.now)?)))
        }
        Command::KeyGenerate { name } => {
            let pem = crate::verify::sign::generate(ctx.store.home(), &name)?;
            let public_key = crate::verify::sign::public_key_path(ctx.store.home(), &name);
            Ok(Output::Key { name, public_key, pem })
        }
        Command::Sign { reference, key } => {
            use crate::verify::sign;
            let image = sign::sign(&ctx.store, &key, &reference, Default::default(), ctx.now)?;
            // Its verification records are signed too.
            let mut out = vec![image.clone()];
            for record in crate::verify::record_artifacts(&ctx.store, &image.digest)? {
                out.push(sign::sign(&ctx.store, &key, record.as_str(), Default::default(), ctx.now)?);
            }
            Ok(Output::Signed(out))
        }
        Command::VerifySignature { reference, key } => {
            use crate::verify::sign;
            let path = key.unwrap_or_else(|| sign::public_key_path(ctx.store.home(), "default"));
            let pem =
                std::fs::read_to_string(&path).map_err(|e| sign::SignError::Io { path: path.clone(), source: e })?;
            let k = sign::read_public_key(&pem, &path.display().to_string())?;
            Ok(Output::Verified(sign::verify(&ctx.store, &reference, &k, &path.display().to_string())?))
        }
        Command::History { service, verify } => {
            let path = History::path_in(ctx.store.home());
            if !path.exists() {
                // No release yet: an empty history, and no file created by a read.
                return Ok(Output::History { entries: Vec::new(), verified: verify.then_some(0) });
            }
            let h = History::open(&path)?;
            let verified = if verify { Some(h.verify()?) } else { None };
            Ok(Output::History { entries: h.entries(service.as_deref())?, verified })
        }
    }
}

fn no_such_service(f: &spec::SpecFile, name: &str) -> CommandError {
    SpecError {
        file: f.path.clone(),
        line: None,
        key: format!("service.{name}"),
        message: format!(
            "no such service (the file defines: {})",
            f.services.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
    .into()
}

/// What serves a service now: the digest most of its live instances run.
/// What runs of `service`: the (digest, settings) pair most of its live
/// instances run, as the controller's releases started them.
fn current(instances: &[InstanceRecord], service: &str) -> Option<Current> {
    type Key<'a> = (&'a Digest, &'a std::collections::BTreeMap<String, String>);
    let mut by_release: std::collections::BTreeMap<Key<'_>, u32> = std::collections::BTreeMap::new();
    for r in instances.iter().filter(|r| r.service == service && !r.state.is_exited() && !r.stop_requested) {
        *by_release.entry((&r.image, &r.release_fields)).or_default() += 1;
    }
    by_release.into_iter().max_by_key(|(_, n)| *n).map(|((d, f), n)| Current {
        digest: d.clone(),
        instances: n,
        fields: f.clone(),
    })
}

fn image_size(m: &Manifest) -> u64 {
    m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>()
}

fn images(store: &Store) -> Result<Vec<ImageRow>, StoreError> {
    let log = store.tag_log()?;
    let mut rows = Vec::new();
    for (desc, tags) in store.tagged()? {
        let m: Manifest = store.read_json(&desc.digest)?;
        if m.artifact_type.is_some() || m.subject.is_some() {
            // Records and signatures about an image, not images: `kiln
            // inspect` shows them.
            continue;
        }
        let tagged_at = log
            .iter()
            .filter(|e| e.to == desc.digest && tags.contains(&e.tag))
            .filter_map(|e| crate::time::parse_rfc3339(&e.time))
            .max();
        rows.push(ImageRow {
            tags,
            digest: desc.digest.clone(),
            size: image_size(&m),
            tagged_at,
            revision: m.annotation(oci::ANNOTATION_REVISION).map(str::to_owned),
            created: m.annotation(oci::ANNOTATION_CREATED).map(str::to_owned),
        });
    }
    rows.sort_by(|a, b| b.tagged_at.cmp(&a.tagged_at).then_with(|| a.tags.cmp(&b.tags)));
    Ok(rows)
}

fn inspect(store: &Store, reference: &str) -> Result<Inspection, StoreError> {
    let (desc, tags): (Descriptor, Vec<String>) = store.resolve(reference)?;
    let manifest: Manifest = store.read_json(&desc.digest)?;
    let config: Option<ImageConfig> = match manifest.artifact_type {
        Some(_) => None,
        None => Some(store.read_json(&manifest.config.digest)?),
    };
    let tag_history =
        store.tag_log()?.into_iter().filter(|e| e.to == desc.digest || e.from.as_ref() == Some(&desc.digest)).collect();
    let records = crate::verify::records_of(store, &desc.digest)?;
    Ok(Inspection { digest: desc.digest, tags, size: image_size(&manifest), manifest, config, tag_history, records })
}
