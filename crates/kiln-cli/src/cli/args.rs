//! The command line: clap's definitions of every subcommand and flag, and
//! the parsers of flag values. Parsing only; nothing here acts.

use clap::{Parser, Subcommand};

pub(crate) use super::fleet_args::*;
pub(crate) use super::subcommands::*;
pub(crate) use super::values::*;
use std::path::PathBuf;

/// kiln: bake reproducible images, run them immutably, release by replacement.
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about,
    after_help = "While a `kiln serve` runs on the home, every command is carried out by it (POST /v1/commands on its socket); without one, kiln carries it out itself.",
    propagate_version = true
)]
pub(crate) struct Cli {
    /// kiln's data directory (store, cache, metadata). Default: $KILN_HOME,
    /// else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln.
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// Bake an image (or every image) from a kiln.toml into the store.
    ///
    /// Prints the manifest digest and the tags it got: NAME:b<N> always,
    /// NAME:git-<sha>[-dirty] in a git work tree, NAME:<version> when the spec
    /// has one. `created` comes from SOURCE_DATE_EPOCH, else the HEAD commit
    /// time, else 1970-01-01.
    Bake {
        /// Image to bake (an [image.NAME] table); all of them if omitted.
        image: Option<String>,
        /// The spec file.
        #[arg(short, long, default_value = "kiln.toml", value_name = "PATH")]
        file: PathBuf,
        /// Rebuild every step, ignoring the step cache.
        #[arg(long)]
        no_cache: bool,
        /// Allow moving a tag that already points to another digest (the move is recorded).
        #[arg(long)]
        force: bool,
        /// Resolve registry bases' tags again and move their pins in kiln.lock (prints from which digest to which).
        #[arg(long)]
        update_base: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register this host in a fleet: a lease in etcd (`/kiln/hosts/NAME`) kept alive with the host's capacity and instance count, until SIGTERM or SIGINT (then the lease is revoked). A host whose agent dies leaves the fleet when its lease expires.
    Agent(AgentArgs),
    /// Assign a slot of a host: the host's agent pulls the image by digest and runs it (a changed assignment, image or env, replaces the instance, start first).
    Assign(AssignArgs),
    /// A fleet controller: campaigns for leadership through an etcd lease; the leader places every service's replicas on live hosts (spread, moved off a lost host), each write conditioned on its epoch. Run several; until SIGTERM or SIGINT.
    Controller(ControllerArgs),
    /// Set a service's desired replicas and image in the fleet (--replicas 0 removes it); the leading controller places them.
    Place(PlaceArgs),
    /// Drain a host: the leading controller moves its slots to other hosts, each new copy running before the old one is removed (--undo to stop draining).
    DrainHost(DrainHostArgs),
    /// Remove a slot's assignment: the host's agent removes its instance.
    Unassign(UnassignArgs),
    /// The fleet's services: image, replicas, load balancer port, canary and its progress, and the last judged canary step.
    Services(ServicesArgs),
    /// The hosts of a fleet whose agent's lease is alive: capacity, instances, lease left.
    Hosts(HostsArgs),
    /// A fleet's Prometheus metrics, as a controller's GET /metrics answers them (one host's: kiln serve's GET /metrics).
    Metrics(MetricsArgs),
    /// kiln's own vulnerability database (osv.dev's exports), which `kiln scan` uses when no --db is given.
    Db {
        #[command(subcommand)]
        action: DbCmd,
    },
    /// Registry base images (`from = "HOST/REPO:TAG"`), pinned in kiln.lock.
    Bases {
        #[command(subcommand)]
        action: BasesCmd,
    },
    /// List tagged images: tags, digest, size, age, git revision.
    Images {
        #[arg(long)]
        json: bool,
    },
    /// Show an image's manifest, config, annotations and tag history.
    Inspect {
        /// A tag (NAME:TAG), a digest, or a unique digest prefix.
        reference: String,
        #[arg(long)]
        json: bool,
    },
    /// The test gate: boot IMAGE (an [image.X] of kiln.toml, or NAME:TAG, digest) privately with placeholder secrets, run its [image.X.test] checks and commands, record the result on the digest; exit 0 passed, 6 failed.
    Test {
        /// Default: the only [image.X] with a test table (its newest build).
        reference: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The secret scan: every layer's files (deleted ones too) and the image config, against credential formats and random-looking assignments; findings name layer, path, line and rule, never the secret; exit 8 if any is not allowed ([image.X.scan] allow_secrets).
    ScanSecrets {
        reference: String,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The vulnerability scan: the image's packages (os-release, dpkg, apk, cargo-auditable binaries) against an offline OSV database, judged by [image.X.scan] (fail_on, fail_unknown, max_db_age, allow with expiry); recorded on the digest; exit 9 if it fails.
    Scan {
        reference: String,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// A directory or zip of OSV JSON (osv.dev's per-ecosystem exports). Default: $KILN_OSV_DB, else the database `kiln db update` keeps.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// Scan even with a database older than max_db_age (the report says so).
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Promote an image's digest to a channel of [promotion] (default dev, staging, prod): needs passed test, scan and scan-secrets records, a valid signature by the [promotion] key, and the channel before; adds a channel signature naming who and when; exit 7 if refused.
    PromoteImage {
        reference: String,
        #[arg(long, value_name = "CHANNEL")]
        to: String,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The whole pipeline for a service: bake, test, scan (vulnerabilities), scan-secrets, sbom, sign, promote (through the channels up to --to, default the service's channel), then deploy through kiln serve. Exit 0 released; 6 test, 9 vulnerabilities, 8 secrets, 7 signature or promotion refused; deploy's own codes after (2 rolled back, 4 paused). With --json: the pipeline report, then the deploy's final status, one JSON document per line.
    Release {
        /// Default: the file's only service.
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// The OSV database (directory or zip). Default: $KILN_OSV_DB, else the database `kiln db update` keeps.
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
        /// Scan with a database older than max_db_age.
        #[arg(long)]
        force_db: bool,
        /// Promote up to this channel (default: the service's channel).
        #[arg(long, value_name = "CHANNEL")]
        to: Option<String>,
        /// Stop after promotion (no deploy).
        #[arg(long)]
        no_deploy: bool,
        #[arg(long)]
        json: bool,
    },
    /// Push an image and everything about it (records, SBOMs, signatures) to an OCI registry: REGISTRY/REPO[:TAG] (TAG default: the reference's). TLS unless kiln.toml says `insecure` (or the registry is on loopback with no `ca`); credentials from `kiln login` or docker's config.
    Push {
        reference: String,
        remote: String,
        /// The kiln.toml whose `[registries."HOST"]` applies (used when it exists).
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// Sign with this key first, the signature naming the registry repository (what `cosign verify --key` checks).
        #[arg(long, value_name = "KEY")]
        sign: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check a registry's credentials and keep them, encrypted in KILN_HOME (the password is read from standard input).
    Login {
        /// HOST[:PORT]
        registry: String,
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
    },
    /// Forget a registry's credentials.
    Logout { registry: String },
    /// Pull an image and everything about it from an OCI registry; every blob is verified, and tags are set only when all of it is in.
    Pull {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        remote: String,
        /// The local image name (default: the image's title, else the repository's last part).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
        /// The kiln.toml whose `[registries."HOST"]` applies (used when it exists).
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// SBOMs of an image: SPDX 2.3 and CycloneDX 1.5 JSON, stored as artifacts on its digest (tags NAME:sha256-<hex>.spdx, .cdx).
    Sbom {
        reference: String,
        /// Write this format's document to --output (or print it with --output -).
        #[arg(long, value_enum, default_value = "spdx")]
        format: SbomFormat,
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Signing keys (ECDSA P-256; the private key encrypted at rest, the public key PKIX PEM).
    Key {
        #[command(subcommand)]
        action: KeyCmd,
    },
    /// Sign an image (cosign's simple-signing format, tag NAME:sha256-<hex>.sig) and its verification records.
    Sign {
        reference: String,
        /// The key's name (see `kiln key generate`).
        #[arg(long, default_value = "default")]
        key: String,
        #[arg(long)]
        json: bool,
    },
    /// Check an image's signature with a PEM public key; exit 7 if unsigned or invalid.
    Verify {
        reference: String,
        /// A PKIX PEM public key file (default: $KILN_HOME/keys/default.pub).
        #[arg(long, value_name = "PEM")]
        key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs that no tag or archive record references.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start one instance of an image (detached) and print its id and port.
    ///
    /// The instance runs through runc with a read-only root, tmpfs /tmp and
    /// /run, no new privileges and the image's user; it listens on PORT
    /// (a free port on 127.0.0.1, in the host network). There is no way to
    /// open a shell in it.
    Run {
        /// Image: NAME (its newest build), NAME:TAG, a digest or a digest prefix.
        /// Optional with --service, whose `image` it then replaces.
        reference: Option<String>,
        /// Run a [service.NAME] of the kiln.toml: its image, env, volumes,
        /// secrets and limits (flags given here add to or override them).
        #[arg(long, value_name = "NAME", conflicts_with = "name")]
        service: Option<String>,
        /// The spec file for --service.
        #[arg(short, long, default_value = "kiln.toml", value_name = "PATH")]
        file: PathBuf,
        /// Service name (volumes live under it). Default: the image's name.
        #[arg(long, value_name = "SERVICE")]
        name: Option<String>,
        /// Environment variable for the instance (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Named volume: NAME:/path/inside (repeatable). Kept under $KILN_HOME/volumes/SERVICE/NAME.
        #[arg(short, long = "volume", value_name = "NAME:/PATH", value_parser = parse_volume)]
        volume: Vec<(String, String)>,
        /// Secret: NAME (as /run/secrets/NAME) or NAME:ENV_VAR (also as that variable). Repeatable.
        #[arg(short, long = "secret", value_name = "NAME[:ENV]", value_parser = parse_secret)]
        secret: Vec<kiln::runtime::SecretUse>,
        /// Memory limit, e.g. 256M or 1G.
        #[arg(long, value_parser = parse_size)]
        memory: Option<u64>,
        /// CPU limit in cores, e.g. 0.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Maximum number of processes.
        #[arg(long)]
        pids: Option<u64>,
        /// Seconds between the stop signal and SIGKILL (default 10).
        #[arg(long, value_name = "SECS")]
        stop_timeout: Option<u64>,
        /// Release id to tag the instance's logs with.
        #[arg(long)]
        release: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List instances: id, service, image, state, age, port.
    Ps {
        /// Include exited instances.
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        json: bool,
        /// With --cluster or --controller: every slot of the fleet, its host and state (serving, starting, failing, leaving, host-lost).
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Stop an instance: its stop signal, then SIGKILL after the grace period.
    Stop {
        /// Instance id (or a unique prefix).
        instance: String,
        /// Grace period in seconds (default: the instance's stop timeout).
        #[arg(short, long, value_name = "SECS")]
        time: Option<u64>,
    },
    /// Remove an exited instance; its logs stay in the central store.
    Rm {
        instance: String,
        /// Kill it first if it is still running.
        #[arg(short, long)]
        force: bool,
    },
    /// Freeze an instance (quarantine): its processes stay, frozen, for post-mortem.
    Pause { instance: String },
    /// Thaw a paused instance.
    Resume { instance: String },
    /// Show central logs (they outlive instances).
    Logs {
        #[arg(long)]
        service: Option<String>,
        /// A release id (web-3): the lines of every instance it ran.
        #[arg(long)]
        release: Option<String>,
        /// Instance id or prefix.
        #[arg(long)]
        instance: Option<String>,
        /// Image digest or prefix.
        #[arg(long)]
        image: Option<String>,
        /// Only lines from the last DURATION (90s, 15m, 2h, 7d) or since an RFC 3339 time.
        #[arg(long, value_name = "DURATION|TIME")]
        since: Option<String>,
        /// Keep printing new lines (until interrupted).
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        json: bool,
        /// With --cluster or --controller: every live host's logs (agents with --peer-port), merged by time.
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Show what deploying each service of kiln.toml (or one) would do from what runs now: instances to start and stop, traffic steps, downtime. Changes nothing.
    Plan {
        /// Only this service.
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// With --cluster or --controller: the image a deploy would release (default: the service's).
        #[arg(long)]
        image: Option<String>,
        /// With --cluster or --controller: what `kiln deploy --cluster` would change in the fleet (tag and secrets resolved, nothing written).
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Run the release controller in the foreground: its API on $KILN_HOME/serve.sock (0600), a load balancer process per service of kiln.toml with a listen address. With --cluster: a fleet controller instead (as kiln controller), its fleet API on --tcp.
    Serve {
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// Also serve the API on this loopback address; requests need `Authorization: Bearer` with the token in $KILN_HOME/serve.token.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<std::net::SocketAddr>,
        /// Take over from the running kiln serve (after upgrading kiln): its API sockets, instances and load balancers, which are replaced by this binary's without a refused connection; it then exits.
        #[arg(long, conflicts_with = "cluster")]
        upgrade: bool,
        /// With --cluster: this controller's name in the election (default: the machine's hostname).
        #[arg(long, requires = "cluster")]
        name: Option<String>,
        /// With --cluster: the controller's lease, in seconds.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..=60))]
        ttl: i64,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Print the link that opens kiln serve's web dashboard in a browser (signing it in once; kiln serve needs --tcp), or with --controller a fleet's.
    Dashboard {
        /// A fleet controller's API (kiln serve --cluster … --tcp): http://HOST:PORT or https://.
        #[arg(long, value_name = "URL")]
        controller: Option<String>,
        /// The controller's API token, from its $KILN_HOME/serve.token (default: $KILN_TOKEN).
        #[arg(long, value_name = "FILE", requires = "controller")]
        token_file: Option<PathBuf>,
    },
    /// Release a service (baking its image first when it is an [image.X] of kiln.toml) and follow the release: exit 0 done, 2 failed or rolled back, 4 paused for `kiln promote`.
    Deploy {
        /// The service (default: the only one with a listen address).
        service: Option<String>,
        /// Release this image (NAME:TAG, digest) instead of the service's own.
        #[arg(long)]
        image: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// Return once the release has started.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
        /// With --cluster, for a service whose image is an [image.X] of kiln.toml: bake it, push it to this REGISTRY/REPO under its first tag, and deploy that digest.
        #[arg(long, value_name = "REGISTRY/REPO")]
        push: Option<String>,
        /// With --push: sign it with this key first, the signature naming the registry's repository.
        #[arg(long, value_name = "KEY", requires = "push")]
        sign: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Take a service down: drain and destroy its instances, stop its load balancer, record it in history. History, the archive and volumes stay (volumes go with --purge); `kiln deploy` brings it back.
    Down {
        /// The service (default: the only one with a listen address).
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// Also remove the service's volumes once its instances are gone.
        #[arg(long)]
        purge: bool,
        /// Return once it is under way.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// The quick start: bake DIR/kiln.toml, serve it (in this process, unless a kiln serve already runs), deploy its service, print its URL, and stay in the foreground.
    Up {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Services: releases, the rollout in progress, traffic split, instances.
    Status {
        service: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Back to the previous release: a traffic switch when it is still warm, else a fast release of its image.
    Rollback {
        service: Option<String>,
        /// Roll back to this release (an id from `kiln history`), not the previous one.
        #[arg(long, value_name = "RELEASE")]
        to: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Let a paused release go on.
    Promote {
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Stop the release in progress: its instances removed, traffic on stable.
    Abort {
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Take an instance out of traffic at once, freeze it (runc pause) and keep its logs, tmpfs and volume contents for a post-mortem; a replacement starts.
    Quarantine {
        instance: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
        /// With --cluster or --controller: a fleet instance, asked of its host's agent.
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Destroy a quarantined instance and what was kept of it.
    ReleaseQuarantine {
        instance: String,
        #[arg(long)]
        json: bool,
        /// With --cluster or --controller: a fleet instance, asked of its host's agent.
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// What an instance runs (digest, git revision, release, env names, never values) and why it is quarantined.
    InspectInstance {
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Check that every instance still is what its release says (image cache, runtime config, mounts); drifted ones are healed (exit 5 if any drifted).
    VerifyInstances {
        service: Option<String>,
        #[arg(long)]
        json: bool,
        /// With --cluster or --controller: every live host checks its instances now; drifted ones are replaced by their agents.
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Kill random instances of a service (never more than --max-share at once) and report replacements and failed requests.
    Chaos {
        service: Option<String>,
        /// Kills per second.
        #[arg(long, default_value_t = 1.0)]
        kill_rate: f64,
        /// How long to kill, e.g. 30s or 10m.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// At most this share of the replicas down at once.
        #[arg(long, default_value_t = 0.34)]
        max_share: f64,
        /// Stop after this many kills (refused ones do not count), if before --duration.
        #[arg(long, value_name = "N")]
        kills: Option<u32>,
        /// Instead of kills, a rollback drill: `canary` releases a canary of the stable digest whose share the load balancer fails (no client sees it), proves analysis rolls it back, and reports how long it took (exit 0 caught, 2 not).
        #[arg(long, value_enum, value_name = "KIND")]
        drill: Option<DrillKind>,
        /// The drill's analysis window (default: the service's canary step_interval, or 10s).
        #[arg(long, value_parser = parse_duration, requires = "drill")]
        window: Option<std::time::Duration>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// With --cluster: kill random instances across the fleet (asked of each host's agent through etcd) and report how fast each slot served again.
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Show the release history (hash-chained); --verify checks the whole chain (exit 3 if broken). With --cluster or --controller: the fleet's history, kept in etcd
    History {
        /// Only this service's releases.
        service: Option<String>,
        /// Check every entry's hash and link; name the first that was edited, removed or reordered.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// List named volumes with their size and users.
    Volumes {
        #[arg(long)]
        json: bool,
    },
    /// Manage secrets (stored encrypted; values are never printed).
    Secret {
        #[command(subcommand)]
        action: SecretCmd,
    },
    /// Run kiln's HTTP load balancer in the foreground (SIGHUP re-reads --releases-file; SIGINT/SIGTERM stop it after the grace period).
    ///
    /// Backends are grouped by release, each with a weight. The admin API
    /// (--admin) changes them at run time: PUT /releases, PUT /weights,
    /// POST /drain?backend=ADDR&deadline_ms=N, GET /metrics, GET /stats.
    Proxy {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Address of the admin API (off if not given).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// A release: NAME=WEIGHT@ADDR[,ADDR...] (repeatable).
        #[arg(long = "release", value_name = "NAME=WEIGHT@ADDRS", value_parser = kiln::proxy::parse_release_flag)]
        releases: Vec<kiln::proxy::TableEntry>,
        /// Releases from a JSON file (the list PUT /releases takes), added to
        /// the --release flags; SIGHUP re-reads it (a bad file changes nothing).
        #[arg(long, value_name = "FILE")]
        releases_file: Option<std::path::PathBuf>,
        /// Service name for metrics labels.
        #[arg(long, default_value = "default")]
        service: String,
        /// Active health check path, e.g. /healthz (off if not given; backends are then healthy at once).
        #[arg(long, value_name = "PATH", value_parser = parse_health_path)]
        health_path: Option<String>,
        /// Time between two checks of a backend.
        #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        health_interval_ms: u64,
        /// Time a check may take before it counts as failed.
        #[arg(long, default_value_t = 500, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        health_timeout_ms: u64,
        /// Passing checks in a row that make a backend healthy (and let a new one join).
        #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        healthy_threshold: u32,
        /// Failing checks in a row that take a backend out.
        #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        unhealthy_threshold: u32,
        /// Stickiness: none, cookie, or header:NAME.
        #[arg(long, default_value = "none", value_parser = parse_sticky)]
        sticky: kiln::proxy::Sticky,
        /// Add X-Kiln-Release to responses.
        #[arg(long)]
        release_header: bool,
        /// Extra attempts on another backend when safe.
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Time allowed for a backend's response head, from the end of the request.
        #[arg(long, default_value_t = 30_000, value_name = "MS")]
        backend_timeout_ms: u64,
        /// Time a client gets to send its request headers.
        #[arg(long, default_value_t = 10_000, value_name = "MS")]
        header_timeout_ms: u64,
        /// Worker threads, each with its own listener and backend pool.
        #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: u16,
        /// On SIGTERM or Ctrl-C, time given to requests in flight before exit.
        #[arg(long, default_value_t = 10_000, value_name = "MS")]
        shutdown_grace_ms: u64,
        /// Offer the listeners to a successor on this unix socket (`--take-over` it).
        #[arg(long, value_name = "SOCKET")]
        handoff: Option<PathBuf>,
        /// Serve on a running proxy's listeners, taken over from its --handoff socket; it then stops.
        #[arg(long, value_name = "SOCKET")]
        take_over: Option<PathBuf>,
        /// Serve HTTPS with this certificate chain (PEM), re-read when it changes.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A host name served (repeatable; `*.example.com` for one label): the certificate must cover it, and a client naming another host is refused. None: every name.
        #[arg(long = "host", value_name = "NAME", requires = "tls_cert")]
        hosts: Vec<String>,
        /// Also listen for plain HTTP here and redirect every request to HTTPS (308).
        #[arg(long, value_name = "ADDR")]
        redirect_http: Option<std::net::SocketAddr>,
        /// Serve every service of a site file (JSON, as kiln serve writes it: services with their hosts, paths, certificates and releases files) on --listen, routed by host and path; SIGHUP or POST /reload re-reads it. Replaces --release, --releases-file and --tls-*.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["releases", "releases_file", "tls_cert"])]
        site: Option<PathBuf>,
    },
    /// Internal: the per-instance shim started by `kiln run`.
    #[command(name = "__shim", hide = true)]
    Shim { id: String },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}
