//! The command surface itself: [`Command`], everything kiln can be asked
//! to do, which every front end (the CLI, the HTTP API, the dashboard)
//! parses into, and the small types its variants carry.
//!
//! For: what can be asked, and the paths a command names. Must never:
//! carry a command out (`command::execute` does).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::*;

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
    /// served again. Caller's process only: it reads the slots and asks
    /// each kill through etcd or, as from a machine without etcd
    /// credentials, through a controller's API.
    #[serde(skip)]
    FleetChaos {
        via: FleetVia,
        service: String,
        kill_rate: f64,
        duration_ms: u64,
        max_share: f64,
        kills: Option<u32>,
        actor: String,
    },
    /// A rollback drill of fleet service `service`: a canary of its stable
    /// image at `weight` percent, judged after `window_ms`, that every
    /// load balancer fails; followed until the leader's analysis ended it
    /// and its instances are gone. Caller's process only.
    #[serde(skip)]
    FleetDrill {
        via: FleetVia,
        service: String,
        weight: u32,
        window_ms: u64,
        actor: String,
    },
    /// Kills serving instance `instance` of fleet service `service`
    /// (SIGKILL, asked of its host through etcd with its history entry):
    /// one of `kiln chaos --controller`'s kills, on the controller.
    #[serde(skip)]
    FleetKill {
        cluster: crate::fleet::etcd::Cluster,
        service: String,
        instance: String,
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

/// How a command that drives the fleet from the caller's machine reaches
/// it: etcd itself, or a controller's API.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetVia {
    Cluster(crate::fleet::etcd::Cluster),
    Controller(fleet_api::Controller),
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
    /// The fleet's data key sealed under this machine's KEK, opened with
    /// `old_key_file` (else `KILN_OLD_KEY_FILE` or `KILN_OLD_PASSPHRASE`);
    /// with `new_data_key`, a new data key and every version re-encrypted
    /// under it.
    RotateKey {
        old_key_file: Option<PathBuf>,
        new_data_key: bool,
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
