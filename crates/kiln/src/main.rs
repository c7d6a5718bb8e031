//! The `kiln` binary: parses the command line into a [`kiln::command::Command`],
//! runs it, renders the output. `anyhow` lives here and nowhere else.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{CommandFactory, Parser, Subcommand};

use kiln::bake::sandbox::Runc;
use kiln::bake::{Outcome, Progress, StepReport, Tools};
use kiln::command::{self, Command, Context, Output};
use kiln::git::GitCli;
use kiln::runtime::driver::RuncDriver;
use kiln::runtime::logs::{LogFilter, LogLine, Retention};
use kiln::runtime::{RunRequest, ShimLauncher};
use kiln::store::Store;

mod cli_heal;
mod cli_release;
mod cli_verify;

/// kiln: bake reproducible images, run them immutably, release by replacement.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// kiln's data directory (store, cache, metadata). Default: $KILN_HOME,
    /// else $XDG_DATA_HOME/kiln, else ~/.local/share/kiln.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
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
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
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
        /// A directory or zip of OSV JSON (osv.dev's per-ecosystem exports). Default: $KILN_OSV_DB.
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
        /// The OSV database (directory or zip). Default: $KILN_OSV_DB.
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
    /// Push an image and everything about it (records, SBOMs, signatures) to an OCI registry on loopback: REGISTRY/REPO[:TAG] (TAG default: the reference's).
    Push {
        reference: String,
        remote: String,
        #[arg(long)]
        json: bool,
    },
    /// Pull an image and everything about it from an OCI registry; every blob is verified, and tags are set only when all of it is in.
    Pull {
        /// REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:...
        remote: String,
        /// The local image name (default: the image's title, else the repository's last part).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
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
    },
    /// Show what deploying each service of kiln.toml (or one) would do from what runs now: instances to start and stop, traffic steps, downtime. Changes nothing.
    Plan {
        /// Only this service.
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run the release controller in the foreground: its API on $KILN_HOME/serve.sock (0600), a load balancer process per service of kiln.toml with a listen address.
    Serve {
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        /// Also serve the API on this loopback address; requests need `Authorization: Bearer` with the token in $KILN_HOME/serve.token.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<std::net::SocketAddr>,
        /// Take over from the running kiln serve (after upgrading kiln): its API sockets, instances and load balancers, which are replaced by this binary's without a refused connection; it then exits.
        #[arg(long)]
        upgrade: bool,
    },
    /// Print the link that opens kiln serve's web dashboard in a browser (signing it in once; kiln serve needs --tcp).
    Dashboard,
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
    },
    /// Let a paused release go on.
    Promote {
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stop the release in progress: its instances removed, traffic on stable.
    Abort {
        service: Option<String>,
        #[arg(short = 'f', long = "file", default_value = "kiln.toml")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Take an instance out of traffic at once, freeze it (runc pause) and keep its logs, tmpfs and volume contents for a post-mortem; a replacement starts.
    Quarantine {
        instance: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Destroy a quarantined instance and what was kept of it.
    ReleaseQuarantine {
        instance: String,
        #[arg(long)]
        json: bool,
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
    },
    /// Show the release history (hash-chained); --verify checks the whole chain (exit 3 if broken).
    History {
        /// Only this service's releases.
        service: Option<String>,
        /// Check every entry's hash and link; name the first that was edited, removed or reordered.
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        json: bool,
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
        releases: Vec<kiln::proxy::ReleaseSpec>,
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

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Create key pair NAME (default "default"); prints the public key.
    Generate {
        #[arg(default_value = "default")]
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SbomFormat {
    Spdx,
    Cyclonedx,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DrillKind {
    Canary,
}

#[derive(Debug, Subcommand)]
enum SecretCmd {
    /// Store a secret; the value is read from standard input (one trailing newline is dropped).
    Set { name: String },
    /// List secret names.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret.
    Rm { name: String },
}

fn parse_health_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: expected a path starting with / and without spaces or control characters"))
    }
}

fn parse_sticky(s: &str) -> Result<kiln::proxy::Sticky, String> {
    match s {
        "none" => Ok(kiln::proxy::Sticky::None),
        "cookie" => Ok(kiln::proxy::Sticky::Cookie),
        _ => match s.strip_prefix("header:").map(|h| hyper::header::HeaderName::from_bytes(h.as_bytes())) {
            Some(Ok(h)) => Ok(kiln::proxy::Sticky::Header(h)),
            _ => Err(format!("{s:?}: expected none, cookie or header:NAME")),
        },
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn parse_volume(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, p)) if !n.is_empty() && p.starts_with('/') => Ok((n.to_owned(), p.to_owned())),
        _ => Err(format!("{s:?}: expected NAME:/absolute/path")),
    }
}

fn parse_secret(s: &str) -> Result<kiln::runtime::SecretUse, String> {
    let (name, env) = match s.split_once(':') {
        Some((n, e)) if !e.is_empty() => (n, Some(e.to_owned())),
        Some(_) => return Err(format!("{s:?}: expected NAME or NAME:ENV_VAR")),
        None => (s, None),
    };
    if !kiln::secrets::valid_name(name) {
        return Err(format!("{name:?} is not a valid secret name"));
    }
    Ok(kiln::runtime::SecretUse { name: name.to_owned(), env })
}

fn parse_size(s: &str) -> Result<u64, String> {
    kiln::spec::parse_size(s).ok_or_else(|| format!("{s:?}: expected a size like 256M"))
}

/// Step progress on a terminal: one line per step, rewritten in place.
struct TtyProgress {
    current: String,
}

impl Progress for TtyProgress {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.current = format!("[{}/{total}] {description}", index + 1);
        eprint!("{} ...", self.current);
        let _ = std::io::stderr().flush();
    }
    fn step_output(&mut self, line: &str) {
        eprint!("\r\x1b[K    | {line}\n{} ...", self.current);
    }
    fn step_finished(&mut self, r: &StepReport) {
        eprintln!("\r\x1b[K{} {}", self.current, outcome(r));
    }
}

/// Step progress elsewhere: plain lines.
struct PlainProgress {
    current: String,
}

impl Progress for PlainProgress {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.current = format!("[{}/{total}] {description}", index + 1);
    }
    fn step_output(&mut self, line: &str) {
        eprintln!("    | {line}");
    }
    fn step_finished(&mut self, r: &StepReport) {
        eprintln!("{} {}", self.current, outcome(r));
    }
}

fn outcome(r: &StepReport) -> String {
    match r.outcome {
        Outcome::Cached => format!("cached ({} ms)", r.millis),
        Outcome::Built => format!("built ({} ms)", r.millis),
    }
}

fn human_size(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MiB", n as f64 / 1048576.0),
        n => format!("{:.1} GiB", n as f64 / 1073741824.0),
    }
}

fn source_date_epoch() -> anyhow::Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => bail!("SOURCE_DATE_EPOCH={v:?}: expected a non-negative number of seconds since 1970"),
        },
        _ => Ok(None),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Log retention from `KILN_LOG_MAX_BYTES` and `KILN_LOG_MAX_AGE` (a duration).
fn retention() -> anyhow::Result<Retention> {
    let mut r = Retention::default();
    if let Ok(v) = std::env::var("KILN_LOG_MAX_BYTES") {
        r.max_bytes = parse_size(&v).map_err(|e| anyhow::anyhow!("KILN_LOG_MAX_BYTES: {e}"))?;
    }
    if let Ok(v) = std::env::var("KILN_LOG_MAX_AGE") {
        r.max_age_secs = kiln::time::parse_duration(&v)
            .with_context(|| format!("KILN_LOG_MAX_AGE={v:?}: expected a duration like 7d"))?;
    }
    Ok(r)
}

fn print_log(l: &LogLine, json: bool) {
    if json {
        println!("{}", serde_json::to_string(l).unwrap_or_default());
    } else {
        let err = if l.stream == "stderr" { " !" } else { "" };
        println!("{} {}{err} {}", kiln::time::rfc3339_millis(l.ts), l.meta.instance, l.line);
    }
}

/// `kiln logs --follow`: prints what is there, then new lines as they come.
fn follow_logs(home: Option<PathBuf>, mut filter: LogFilter, json: bool) -> anyhow::Result<()> {
    let home = home.unwrap_or_else(Store::default_home);
    let store = Store::open(&home)?;
    let driver = RuncDriver::new(kiln::runtime::run_dir(&home).join("runc"));
    let rt = kiln::runtime::Runtime::new(&store, &driver);
    let mut seen_at_last: Vec<LogLine> = Vec::new();
    loop {
        rt.ingest_all()?;
        let lines = rt.logs().query(&filter)?;
        let last = lines.last().map(|l| l.ts);
        for l in &lines {
            if !seen_at_last.contains(l) {
                print_log(l, json);
            }
        }
        if let Some(ts) = last {
            // Lines at the newest timestamp may still be joined by others at
            // the same millisecond; remember them rather than skip the ms.
            seen_at_last = lines.into_iter().filter(|l| l.ts == ts).collect();
            filter.since = Some(ts);
        }
        let _ = std::io::stdout().flush();
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    kiln::time::parse_duration_ms(s)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: expected a duration like 500ms, 30s, 10m"))
}

/// The request with who asked (user@host), for the history.
fn with_actor(req: kiln::serve::api::Request) -> kiln::serve::api::Request {
    use kiln::serve::api::Request;
    let actor = cli_release::actor();
    match req {
        Request::Rollback { service, to, .. } => Request::Rollback { service, to, actor },
        Request::Promote { service, .. } => Request::Promote { service, actor },
        Request::Abort { service, .. } => Request::Abort { service, actor },
        other => other,
    }
}

fn main() {
    // SAFETY: restores the default SIGPIPE action before any thread starts,
    // so `kiln status | head` ends quietly instead of panicking on EPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    if let Err(e) = run() {
        eprintln!("kiln: {e:#}");
        std::process::exit(e.downcast_ref::<command::CommandError>().map_or(1, |c| c.exit_code()));
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A deploy whose image is an [image.X] of the file bakes it first (a
    // cache hit when nothing changed), then releases that digest.
    let mut deploy_after = None;
    // `kiln up`: after the deploy, stay in the foreground serving.
    let mut up_listen = None;
    // `kiln sbom --output FILE`: where the chosen document goes.
    let mut sbom_out = None;
    // `kiln release`: deploy the digest once the pipeline passed (json?).
    let mut release_deploy = None;
    let (cmd, json) = match cli.command {
        Cmd::Serve { file, tcp, upgrade } => {
            return cli_release::serve(&cli_release::default_home(cli.home), &file, tcp, upgrade)
        }
        Cmd::Dashboard => {
            println!("{}", kiln::serve::dashboard_link(&cli_release::default_home(cli.home))?);
            return Ok(());
        }
        Cmd::Status { service, json } => {
            return cli_release::status(&cli_release::default_home(cli.home), service, json)
        }
        Cmd::Rollback { service, to, file, json } => {
            let service = cli_release::pick_service(&file, service)?;
            (
                Command::Controller(with_actor(kiln::serve::api::Request::Rollback {
                    service,
                    to,
                    actor: String::new(),
                })),
                json,
            )
        }
        Cmd::Promote { service, file, json } => {
            let service = cli_release::pick_service(&file, service)?;
            (
                Command::Controller(with_actor(kiln::serve::api::Request::Promote { service, actor: String::new() })),
                json,
            )
        }
        Cmd::Abort { service, file, json } => {
            let service = cli_release::pick_service(&file, service)?;
            (Command::Controller(with_actor(kiln::serve::api::Request::Abort { service, actor: String::new() })), json)
        }
        Cmd::Quarantine { instance, reason, json } => (
            Command::Controller(kiln::serve::api::Request::Quarantine {
                instance,
                reason,
                actor: cli_release::actor(),
            }),
            json,
        ),
        Cmd::ReleaseQuarantine { instance, json } => (
            Command::Controller(kiln::serve::api::Request::ReleaseQuarantine { instance, actor: cli_release::actor() }),
            json,
        ),
        Cmd::InspectInstance { instance, json } => {
            return cli_heal::inspect(&cli_release::default_home(cli.home), instance, json)
        }
        Cmd::VerifyInstances { service, json } => {
            let drifted = cli_heal::verify(&cli_release::default_home(cli.home), service, json)?;
            std::process::exit(if drifted { 5 } else { 0 });
        }
        Cmd::Chaos { service, kill_rate, duration, max_share, kills, drill, window, file, json } => {
            let service = cli_release::pick_service(&file, service)?;
            if let Some(DrillKind::Canary) = drill {
                let home = cli_release::default_home(cli.home);
                std::process::exit(cli_heal::drill(&home, &service, window, json)?);
            }
            if kill_rate.is_nan() || kill_rate <= 0.0 {
                bail!("--kill-rate {kill_rate}: must be more than 0 kills per second");
            }
            if !(max_share > 0.0 && max_share <= 1.0) {
                bail!("--max-share {max_share}: must be more than 0 and at most 1");
            }
            let actor = cli_release::actor();
            let o = kiln::chaos::Options { service, kill_rate, duration, max_share, max_kills: kills, actor };
            return cli_heal::chaos(&cli_release::default_home(cli.home), &o, json);
        }
        Cmd::Up { dir } => {
            let file = dir.join("kiln.toml");
            let service = cli_release::pick_service(&file, None)?;
            let spec = kiln::spec::load(&file)?;
            let own = spec.services.get(&service).map(|s| s.image.clone()).filter(|i| spec.images.contains_key(i));
            let listen = spec.services.get(&service).and_then(|s| s.release.listen);
            deploy_after = Some((service, true, false));
            up_listen = Some((listen, file.clone()));
            match own {
                Some(own) => (Command::Bake { file, image: Some(own), no_cache: false, force: false }, false),
                None => (Command::Images, false),
            }
        }
        Cmd::Deploy { service, image, file, no_wait, json } => {
            let service = cli_release::pick_service(&file, service)?;
            let spec = kiln::spec::load(&file)?;
            let own = spec.services.get(&service).map(|s| s.image.clone()).filter(|i| spec.images.contains_key(i));
            match (image, own) {
                (Some(image), _) => {
                    let code = cli_release::deploy(
                        &cli_release::default_home(cli.home),
                        service,
                        Some(image),
                        !no_wait,
                        json,
                    )?;
                    std::process::exit(code);
                }
                (None, Some(own)) => {
                    deploy_after = Some((service, !no_wait, json));
                    (Command::Bake { file, image: Some(own), no_cache: false, force: false }, false)
                }
                (None, None) => {
                    let code =
                        cli_release::deploy(&cli_release::default_home(cli.home), service, None, !no_wait, json)?;
                    std::process::exit(code);
                }
            }
        }
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Bake { image, file, no_cache, force, json } => (Command::Bake { file, image, no_cache, force }, json),
        Cmd::Images { json } => (Command::Images, json),
        Cmd::Inspect { reference, json } => (Command::Inspect { reference }, json),
        Cmd::Gc { dry_run, json } => (Command::Gc { dry_run }, json),
        Cmd::Key { action: KeyCmd::Generate { name, json } } => (Command::KeyGenerate { name }, json),
        Cmd::ScanSecrets { reference, file, json } => (Command::ScanSecrets { file, reference }, json),
        Cmd::Scan { reference, file, db, force, json } => {
            let db = db.or_else(|| std::env::var_os("KILN_OSV_DB").map(PathBuf::from));
            (Command::Scan { file, reference, db, force }, json)
        }
        Cmd::PromoteImage { reference, to, file, json } => {
            (Command::PromoteImage { file, reference, to, actor: cli_release::actor() }, json)
        }
        Cmd::Release { service, file, db, force_db, to, no_deploy, json } => {
            let db = db.or_else(|| std::env::var_os("KILN_OSV_DB").map(PathBuf::from));
            if !no_deploy {
                release_deploy = Some(json);
            }
            let run = command::pipeline::ReleaseRun { file, service, db, force_db, to, actor: cli_release::actor() };
            (Command::Release(run), json)
        }
        Cmd::Push { reference, remote, json } => (Command::Push { reference, remote }, json),
        Cmd::Pull { remote, name, json } => (Command::Pull { remote, name }, json),
        Cmd::Sbom { reference, format, output, json } => {
            sbom_out = output.map(|o| (o, format));
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
            if cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
                bail!("--cpus must be a positive number of cores");
            }
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
            };
            (Command::Run { request: req, service_file }, json)
        }
        Cmd::Ps { all, json } => (Command::Ps { all }, json),
        Cmd::Stop { instance, time } => (Command::Stop { instance, grace_secs: time }, false),
        Cmd::Rm { instance, force } => (Command::Rm { instance, force }, false),
        Cmd::Pause { instance } => (Command::Pause { instance }, false),
        Cmd::Resume { instance } => (Command::Resume { instance }, false),
        Cmd::Logs { service, release, instance, image, since, follow, json } => {
            let since = match since {
                None => None,
                Some(s) => Some(match kiln::time::parse_duration(&s) {
                    Some(d) => now_ms() - d * 1000,
                    None => kiln::time::parse_rfc3339(&s)
                        .map(|t| t * 1000)
                        .with_context(|| format!("--since {s:?}: expected a duration like 15m or an RFC 3339 time"))?,
                }),
            };
            let filter = LogFilter { service, release, instance, image, since };
            if follow {
                return follow_logs(cli.home, filter, json);
            }
            (Command::Logs(filter), json)
        }
        Cmd::Volumes { json } => (Command::Volumes, json),
        Cmd::Plan { service, file, json } => (Command::Plan { file, service }, json),
        Cmd::History { service, verify, json } => (Command::History { service, verify }, json),
        Cmd::Secret { action: SecretCmd::Set { name } } => {
            let mut value = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut value)
                .context("reading the secret from standard input")?;
            if value.ends_with(b"\n") {
                value.pop();
            }
            (Command::SecretSet { name, value }, false)
        }
        Cmd::Secret { action: SecretCmd::Ls { json } } => (Command::SecretList, json),
        Cmd::Secret { action: SecretCmd::Rm { name } } => (Command::SecretRemove { name }, false),
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
            };
            (Command::Proxy(run), false)
        }
        Cmd::Shim { id } => {
            let home = cli.home.unwrap_or_else(Store::default_home);
            let store = Store::open(&home)?;
            let driver = RuncDriver::new(kiln::runtime::run_dir(&home).join("runc"));
            std::process::exit(kiln::runtime::shim(&store, &driver, &id));
        }
    };
    let home = cli.home.unwrap_or_else(Store::default_home);
    let store = Store::open(&home).with_context(|| format!("opening the store at {}", home.display()))?;
    let sandbox = Runc::new(home.join("runc"));
    let git = GitCli;
    let mut tty = TtyProgress { current: String::new() };
    let mut plain = PlainProgress { current: String::new() };
    let progress: &mut dyn Progress = if std::io::stderr().is_terminal() { &mut tty } else { &mut plain };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let driver = RuncDriver::new(kiln::runtime::run_dir(&home).join("runc"));
    let launcher = ShimLauncher;
    let mut ctx = Context {
        store,
        tools: Tools { sandbox: &sandbox, git: &git },
        progress,
        now,
        source_date_epoch: source_date_epoch()?,
        driver: &driver,
        launcher: &launcher,
        retention: retention()?,
    };
    let output = command::execute(cmd, &mut ctx)?;
    if let Some((service, wait, json)) = deploy_after {
        let digest = match &output {
            Output::Baked(reports) => {
                Some(reports.first().map(|r| r.digest.to_string()).context("the bake produced no image")?)
            }
            _ => None,
        };
        // `kiln up` starts its controller only after the bake: the
        // controller reaps this process's exited children, and the bake's
        // run steps wait for their own.
        if let Some((_, file)) = &up_listen {
            cli_release::serve_in_background(ctx.store.home(), file)?;
        }
        let code = cli_release::deploy(ctx.store.home(), service, digest, wait, json)?;
        if let Some((listen, _)) = up_listen {
            if let Some(l) = listen {
                println!("serving http://{l}/ (Ctrl-C stops kiln serve; the load balancer and instances keep running)");
            }
            loop {
                std::thread::park();
            }
        }
        std::process::exit(code);
    }
    if let (Some((path, format)), Output::Sbom(r)) = (&sbom_out, &output) {
        cli_verify::write_sbom(r, path, *format == SbomFormat::Cyclonedx)?;
    }
    if let Output::Pipeline(r) = &output {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            cli_verify::render(&output);
        }
        match (r.passed, release_deploy, &r.digest) {
            (true, Some(json), Some(d)) => {
                let code = cli_release::deploy(ctx.store.home(), r.service.clone(), Some(d.to_string()), true, json)?;
                std::process::exit(code);
            }
            _ => std::process::exit(r.exit_code),
        }
    }
    if json {
        if let Output::Logs(lines) = &output {
            for l in lines {
                print_log(l, true);
            }
        } else if let Output::Controller { answer, .. } = &output {
            println!("{answer}");
        } else {
            println!("{}", serde_json::to_string_pretty(&output)?);
        }
    } else {
        render(&output, now);
    }
    // A failed gate is a result (rendered), with its own exit status.
    if let Some(code) = cli_verify::gate_exit_code(&output) {
        std::process::exit(code);
    }
    Ok(())
}

fn render_image_config(config: &kiln::oci::ImageConfig, manifest: &kiln::oci::Manifest) {
    println!("platform: {}/{}", config.os, config.architecture);
    if let Some(c) = &config.created {
        println!("created:  {c}");
    }
    println!("annotations:");
    for (k, v) in manifest.annotations.iter().flatten() {
        println!("  {k} = {v}");
    }
    let c = &config.config;
    println!("config:");
    if let Some(e) = &c.entrypoint {
        println!("  entrypoint: {e:?}");
    }
    if let Some(e) = &c.cmd {
        println!("  cmd:        {e:?}");
    }
    for e in c.env.iter().flatten() {
        println!("  env:        {e}");
    }
    if let Some(u) = &c.user {
        println!("  user:       {u}");
    }
    if let Some(w) = &c.working_dir {
        println!("  workdir:    {w}");
    }
    for p in c.exposed_ports.iter().flat_map(|p| p.keys()) {
        println!("  expose:     {p}");
    }
    if let Some(s) = &c.stop_signal {
        println!("  stop:       {s}");
    }
    println!("layers:");
    for (l, h) in manifest.layers.iter().zip(config.history.iter().filter(|h| !h.empty_layer)) {
        println!("  {} {:>10}  {}", l.digest, human_size(l.size), h.created_by.as_deref().unwrap_or(""));
    }
}

fn render(output: &Output, now: i64) {
    match output {
        Output::Controller { request, answer } => cli_release::render_answer(request, answer),
        Output::Test(_)
        | Output::Leaks(_)
        | Output::Vulns(_)
        | Output::Sbom(_)
        | Output::Promoted(_)
        | Output::Transfer(_)
        | Output::Pipeline(_)
        | Output::Key { .. }
        | Output::Signed(_)
        | Output::Verified(_) => cli_verify::render(output),
        Output::Baked(reports) => {
            for r in reports {
                println!("{} {}", r.image, r.digest);
                for t in &r.tags {
                    println!("  tag {t}");
                }
                for c in r.tag_changes.iter().filter(|c| c.from.is_some()) {
                    println!(
                        "  moved {} from {} (forced)",
                        c.tag,
                        c.from.as_ref().map(|d| d.to_string()).unwrap_or_default()
                    );
                }
            }
        }
        Output::Images(rows) => {
            println!("{:<19} {:>10} {:>6}  {:<12}  TAGS", "DIGEST", "SIZE", "AGE", "REVISION");
            for r in rows {
                let age = r.tagged_at.map(|t| kiln::time::age(now - t)).unwrap_or_else(|| "-".into());
                let rev = r.revision.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("-");
                let digest = format!("sha256:{}", r.digest.short());
                println!("{digest:<19} {:>10} {age:>6}  {rev:<12}  {}", human_size(r.size), r.tags.join(" "));
            }
        }
        Output::Inspect(i) => {
            println!("digest:   {}", i.digest);
            println!("tags:     {}", if i.tags.is_empty() { "-".into() } else { i.tags.join(", ") });
            println!("size:     {}", human_size(i.size));
            match &i.config {
                Some(config) => render_image_config(config, &i.manifest),
                None => {
                    let kind = i.manifest.artifact_type.as_deref().unwrap_or("");
                    println!("artifact: {kind}");
                    if let Some(sub) = &i.manifest.subject {
                        println!("about:    {}", sub.digest);
                    }
                    println!("annotations:");
                    for (k, v) in i.manifest.annotations.iter().flatten() {
                        println!("  {k} = {v}");
                    }
                }
            }
            for r in &i.records {
                let verdict = if r.passed { "passed" } else { "FAILED" };
                println!("verified: {} {verdict} at {} ({} ms)", r.kind, r.at, r.duration_ms);
            }
            println!("tag history:");
            for e in &i.tag_history {
                match &e.from {
                    Some(f) if *f == i.digest => println!("  {} {} moved away to {}", e.time, e.tag, e.to),
                    Some(f) => println!("  {} {} moved here from {}", e.time, e.tag, f),
                    None => println!("  {} {} set", e.time, e.tag),
                }
            }
        }
        Output::Instance(r) => {
            println!("{} {} port {} image {} ({})", r.id, r.state.name(), r.port, r.image_ref, r.image.short());
            if let kiln::runtime::InstanceState::Exited { reason, .. } = &r.state {
                println!("  {reason}");
            }
        }
        Output::Instances { instances, orphans_removed } => {
            for o in orphans_removed {
                eprintln!("kiln: removed container {o}, which no instance record knows");
            }
            println!("{:<22} {:<12} {:<30} {:<10} {:>6} {:>6}", "ID", "SERVICE", "IMAGE", "STATE", "AGE", "PORT");
            for r in instances {
                let image = format!("{} ({})", r.image_ref, &r.image.short()[..7]);
                let state = match &r.state {
                    kiln::runtime::InstanceState::Exited { code: Some(c), .. } => format!("exited({c})"),
                    kiln::runtime::InstanceState::Exited { signal: Some(sig), .. } => format!("killed({sig})"),
                    other => other.name().to_owned(),
                };
                println!(
                    "{:<22} {:<12} {:<30} {:<10} {:>6} {:>6}",
                    r.id,
                    r.service,
                    image,
                    state,
                    kiln::time::age(now - r.created),
                    r.port
                );
            }
        }
        Output::Logs(lines) => {
            for l in lines {
                print_log(l, false);
            }
        }
        Output::Volumes(vs) => {
            println!("{:<14} {:<14} {:>10}  USERS", "SERVICE", "VOLUME", "SIZE");
            for v in vs {
                let users: Vec<String> = v.users.iter().map(|u| u.to_string()).collect();
                println!(
                    "{:<14} {:<14} {:>10}  {}",
                    v.service,
                    v.name,
                    human_size(v.bytes),
                    if users.is_empty() { "-".into() } else { users.join(",") }
                );
            }
        }
        Output::Secrets(names) => {
            for n in names {
                println!("{n}");
            }
        }
        Output::Done { message } => println!("{message}"),
        Output::History { entries, verified } => cli_release::render_history(entries, *verified),
        Output::Plans(plans) => plans.iter().for_each(cli_release::render_plan),
        Output::Gc(g) => {
            for (d, size) in &g.removed {
                println!("removed {d} ({})", human_size(*size));
            }
            println!("{} blobs removed ({}), {} kept", g.removed.len(), human_size(g.freed_bytes), g.kept);
        }
    }
}
