//! The fleet's subcommands' arguments (`kiln agent`, `controller`,
//! `place`, `assign`, `unassign`, `drain-host`, `services`, `hosts`) and
//! how a command reaches a fleet (`--cluster` and its TLS files, or
//! `--controller`). Parsing only; nothing here acts.

use std::path::PathBuf;

use super::args::parse_duration;

/// `kiln agent`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub(crate) cluster: EtcdArgs,
    /// The host's name in the fleet (default: the machine's hostname).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// The lease's TTL in seconds: how soon a lost host is noticed.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..=60))]
    pub(crate) ttl: i64,
    /// A PEM public key: an image is run only with a valid signature by it (checked before any tag is set).
    #[arg(long, value_name = "PEM")]
    pub(crate) signed_by: Option<PathBuf>,
    /// The address other hosts reach this host's instances at; its load balancers listen on it.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub(crate) advertise: std::net::IpAddr,
    /// A kiln.toml whose [registries."HOST"] tables apply to the images pulled (a CA, plain HTTP, signed_by); read when it exists.
    #[arg(long, default_value = "kiln.toml")]
    pub(crate) file: PathBuf,
    /// Serve this host's store (manifests and blobs by digest, read-only) to the other agents on this port of --advertise (0: any free port), and pull from theirs when the registry fails.
    #[arg(long, value_name = "PORT")]
    pub(crate) peer_port: Option<u16>,
}

/// `kiln assign`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct AssignArgs {
    #[command(flatten)]
    pub(crate) cluster: EtcdArgs,
    #[arg(long)]
    pub(crate) host: String,
    #[arg(long)]
    pub(crate) slot: String,
    #[arg(long)]
    pub(crate) service: String,
    /// REGISTRY/REPO@sha256:… (a digest: every host runs the same bytes).
    pub(crate) image: String,
    /// Environment variable K=V (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub(crate) env: Vec<String>,
}

/// `kiln controller`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct ControllerArgs {
    #[command(flatten)]
    pub(crate) cluster: EtcdArgs,
    /// Default: the machine's hostname.
    #[arg(long)]
    pub(crate) name: Option<String>,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i64).range(1..=60))]
    pub(crate) ttl: i64,
    /// Also serve the fleet API on this address (GET /v1/fleet/services, /v1/fleet/hosts, POST /v1/fleet); requests need `Authorization: Bearer` with the token in $KILN_HOME/serve.token.
    #[arg(long, value_name = "ADDR")]
    pub(crate) api: Option<std::net::SocketAddr>,
    /// A kiln.toml whose [[notify]] webhooks get the fleet's alerts while this controller leads (signed with secrets of this host's store).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub(crate) file: Option<PathBuf>,
}

/// `kiln place`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct PlaceArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[arg(long)]
    pub(crate) service: String,
    #[arg(long)]
    pub(crate) replicas: u32,
    /// REGISTRY/REPO@sha256:…
    pub(crate) image: String,
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub(crate) env: Vec<String>,
    /// Each replica's memory limit, which its host must have free (256M, 1G).
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,
    /// Each replica's CPU limit in cores (0.5), which its host must have unclaimed.
    #[arg(long, value_name = "CORES")]
    pub(crate) cpus: Option<f64>,
    /// Never two instances of a slot at once: a host cut off from etcd stops it after two lease TTLs, and the controller moves it only after that.
    #[arg(long)]
    pub(crate) singleton: bool,
    /// A load balancer on every live host, on this port of its --advertise address, routing to every host's instances.
    #[arg(long, value_name = "PORT")]
    pub(crate) listen: Option<u16>,
    /// The instances' health check: GET PATH must answer 2xx or 3xx (default: the port accepts a connection). An agent lists an instance for the load balancers once it passes, and the load balancers keep checking it.
    #[arg(long, value_name = "PATH")]
    pub(crate) health: Option<String>,
    /// A host name the load balancers answer for (repeat for more; `*.example.com` for one label): services on one port share it by name.
    #[arg(long = "host", value_name = "NAME")]
    pub(crate) hosts: Vec<String>,
    /// A path prefix the load balancers answer on (repeat for more).
    #[arg(long = "path", value_name = "PREFIX")]
    pub(crate) paths: Vec<String>,
    /// A canary image (REGISTRY/REPO@sha256:…) with its own slots, given --canary-weight percent of every load balancer's requests.
    #[arg(long, value_name = "IMAGE", requires = "listen")]
    pub(crate) canary: Option<String>,
    #[arg(long, value_name = "N", default_value_t = 1, requires = "canary")]
    pub(crate) canary_replicas: u32,
    /// Percent of requests, 0 to 100.
    #[arg(long, value_name = "PERCENT", default_value_t = 10, requires = "canary", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub(crate) canary_weight: u32,
    /// Analysed steps, percent (10,50): the leading controller judges the whole fleet's counts at the end of each step, moves to the next weight on a pass, promotes after the last and removes the canary on a failure. Replaces --canary-weight.
    #[arg(long, value_name = "PERCENTS", requires = "canary", value_delimiter = ',', conflicts_with = "canary_weight")]
    pub(crate) canary_steps: Vec<u32>,
    /// How long each analysed step lasts, and the window it is judged on (at most 60 s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, requires = "canary_steps")]
    pub(crate) step_interval: std::time::Duration,
    /// How far the canary's error rate may exceed stable's before a step fails (0.01: one point; default kiln.toml's).
    #[arg(long, value_name = "RATE", requires = "canary_steps")]
    pub(crate) max_error_rate: Option<f64>,
    /// How far the canary's p99 latency may exceed stable's, as a ratio (default kiln.toml's, 1.5).
    #[arg(long, value_name = "RATIO", requires = "canary_steps")]
    pub(crate) max_p99_ratio: Option<f64>,
}

/// `kiln drain-host`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct DrainHostArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    pub(crate) host: String,
    #[arg(long)]
    pub(crate) undo: bool,
}

/// `kiln unassign`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct UnassignArgs {
    #[command(flatten)]
    pub(crate) cluster: EtcdArgs,
    #[arg(long)]
    pub(crate) host: String,
    #[arg(long)]
    pub(crate) slot: String,
}

/// `kiln services`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct ServicesArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[arg(long)]
    pub(crate) json: bool,
}

/// `kiln hosts`'s arguments (its help is the subcommand's, in `args`).
#[derive(Debug, clap::Args)]
pub(crate) struct HostsArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[arg(long)]
    pub(crate) json: bool,
}

/// `kiln metrics`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct MetricsArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
}

/// Where a fleet's etcd is, and how to reach it.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd client URLs (http://HOST:PORT or https://HOST:PORT), comma-separated or repeated.
    #[arg(long, required = true, value_name = "URLS")]
    pub cluster: Vec<String>,
    /// A CA (PEM) for the members' certificates, besides the system's.
    #[arg(long, value_name = "PEM")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's --client-cert-auth, with --etcd-key.
    #[arg(long, value_name = "PEM", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl From<EtcdArgs> for kiln::fleet::etcd::Cluster {
    fn from(a: EtcdArgs) -> Self {
        kiln::fleet::etcd::Cluster { urls: a.cluster, ca: a.etcd_ca, cert: a.etcd_cert, key: a.etcd_key }
    }
}

/// `--cluster` on a command that also works on this host alone.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetArgs {
    /// Against a fleet instead of this host's kiln serve: etcd client URLs (http:// or https://), comma-separated or repeated.
    #[arg(long, value_name = "URLS")]
    pub cluster: Vec<String>,
    /// Against a fleet through a controller's API instead of etcd (kiln serve --cluster … --tcp): http://HOST:PORT or https://.
    #[arg(long, value_name = "URL", conflicts_with = "cluster")]
    pub controller: Option<String>,
    /// The controller's API token, from its $KILN_HOME/serve.token (default: $KILN_TOKEN).
    #[arg(long, value_name = "FILE", requires = "controller")]
    pub token_file: Option<PathBuf>,
    /// A CA (PEM) for etcd's certificates, besides the system's.
    #[arg(long, value_name = "PEM", requires = "cluster")]
    pub etcd_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's --client-cert-auth, with --etcd-key.
    #[arg(long, value_name = "PEM", requires_all = ["etcd_key", "cluster"])]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, value_name = "PEM", requires_all = ["etcd_cert", "cluster"])]
    pub etcd_key: Option<PathBuf>,
}

impl FleetArgs {
    /// Whether the command is against a fleet.
    pub fn on(&self) -> bool {
        !self.cluster.is_empty() || self.controller.is_some()
    }
}

impl From<FleetArgs> for kiln::fleet::etcd::Cluster {
    fn from(a: FleetArgs) -> Self {
        kiln::fleet::etcd::Cluster { urls: a.cluster, ca: a.etcd_ca, cert: a.etcd_cert, key: a.etcd_key }
    }
}
