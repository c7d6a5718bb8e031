//! `kiln.toml`: parsing and validating image specs.
//!
//! Parsing is pure (text in, [`SpecFile`] out) so that every rule here is
//! cheap to test. Every error names the file, the line and the key. This
//! module must never touch the file system beyond [`load`] reading the file
//! itself: whether a copy source exists is the baker's question.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::digest::Digest;

pub mod edge;
mod fleet;
mod image;
pub mod notify;
pub mod registries;
pub mod release;
pub mod sandbox;
mod service;
pub use service::volume_problem;
pub mod syslog;
pub mod verify;

pub use fleet::{fleet_port_shared, fleet_service, FleetSite};

use image::validate_image;
pub use image::{valid_image_name, validate_version};
pub use release::{AnalysisSpec, BlueGreenSpec, CanaryStep, HealthSpec, ReleaseSpec, SmokeCheck, Strategy};
use service::validate_service;

/// A parsed, validated `kiln.toml`.
#[derive(Debug, Clone)]
pub struct SpecFile {
    /// The file it came from (used for errors and to resolve relative paths).
    pub path: PathBuf,
    pub images: BTreeMap<String, ImageSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// `[promotion]`: the channel order and the signing key.
    pub promotion: verify::PromotionSpec,
    /// `[[notify]]`: webhooks for every failure path.
    pub notify: Vec<notify::NotifySpec>,
    /// `[syslog]`: where instance logs are shipped, if anywhere.
    pub syslog: Option<syslog::SyslogSpec>,
    /// `[registries."HOST"]`: a CA, or plain HTTP, per registry.
    pub registries: BTreeMap<String, registries::RegistrySpec>,
}

impl SpecFile {
    /// The directory relative paths in the file are resolved against.
    pub fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }
    }
}

/// One `[image.NAME]` table, validated and normalised. Its canonical JSON is
/// what the `dev.kiln.spec.sha256` annotation hashes, so it holds no spans,
/// absolute paths or anything else that depends on where the file lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSpec {
    pub name: String,
    pub from: BaseRef,
    pub copy: Vec<CopySpec>,
    pub run: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `PORT/proto`, sorted and deduplicated.
    pub expose: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub version: Option<String>,
    /// `[image.NAME.test]`: what `kiln test` checks. Not part of the image
    /// (changing a test never changes a digest).
    #[serde(skip)]
    pub test: Option<verify::TestSpec>,
    /// `[image.NAME.scan]`: what the scans accept (not part of the image).
    #[serde(skip)]
    pub scan: verify::ScanSpec,
    /// Line of the `[image.NAME]` header, for errors found later.
    #[serde(skip)]
    pub line: usize,
}

/// Where an image starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum BaseRef {
    Scratch,
    /// An OCI image layout directory, optionally with a tag or a digest.
    Oci {
        path: String,
        reference: Option<OciRef>,
    },
    /// A root filesystem tarball (plain or gzip).
    Rootfs {
        path: String,
    },
    /// An image in a registry, by tag (pinned in kiln.lock) or by digest.
    /// Its `reference` is always set.
    Registry(registries::Remote),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OciRef {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for BaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseRef::Scratch => f.write_str("scratch"),
            BaseRef::Oci { path, reference: None } => write!(f, "oci:{path}"),
            BaseRef::Oci { path, reference: Some(OciRef::Tag(t)) } => write!(f, "oci:{path}:{t}"),
            BaseRef::Oci { path, reference: Some(OciRef::Digest(d)) } => write!(f, "oci:{path}@{d}"),
            BaseRef::Rootfs { path } => write!(f, "rootfs:{path}"),
            BaseRef::Registry(r) => write!(f, "{r}"),
        }
    }
}

/// One `copy` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopySpec {
    /// Paths or globs relative to the kiln.toml's directory.
    pub src: Vec<String>,
    /// Absolute destination inside the image; a trailing `/` means a directory.
    pub dest: String,
    /// Mode for copied files; by default 0755 if the owner may execute, else 0644.
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip)]
    pub line: usize,
}

/// One `[service.NAME]` table: how instances of an image are run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceSpec {
    pub name: String,
    /// An `[image.X]` of this file (its newest build) or any image reference.
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Volume name → absolute path inside.
    pub volumes: BTreeMap<String, String>,
    pub secrets: Vec<SecretRef>,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Seconds between the stop signal and SIGKILL.
    pub stop_timeout: Option<u64>,
    /// How `kiln deploy` replaces its instances.
    pub release: ReleaseSpec,
    /// `channel`: only digests promoted to it, with a signature that
    /// verifies, may run as this service.
    pub channel: Option<verify::ChannelRule>,
    /// Seccomp, capabilities, privileged.
    #[serde(default)]
    pub sandbox: sandbox::SandboxSpec,
    /// Host names, TLS and the HTTP redirect of its load balancer.
    #[serde(default)]
    pub edge: edge::EdgeSpec,
    #[serde(skip)]
    pub line: usize,
    /// Line of the `image` key, for an image the store does not have.
    #[serde(skip)]
    pub image_line: usize,
    /// The kiln.toml it was read from, for errors found later (a listen
    /// address another process holds).
    #[serde(skip)]
    pub file: PathBuf,
}

impl ServiceSpec {
    /// What makes an instance of this service what it is, besides its
    /// image: one entry per setting (`env.NAME`, `volume.NAME`,
    /// `secret.NAME`, `memory`, `cpus`, `pids`, `stop_timeout`, `health`,
    /// `strategy`), each a short digest or a plain figure, never a value
    /// from kiln.toml or the secret store. `secret_versions` are the stored
    /// versions of the secrets it uses (a rotation changes the release).
    /// `replicas` is not in it: a change of it alone is a scale. Pure.
    pub fn release_fields(&self, secret_versions: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let short = |v: &[u8]| crate::digest::Digest::of(v).hex()[..12].to_owned();
        let json = |v: String| short(v.as_bytes());
        let mut out = BTreeMap::new();
        for (k, v) in &self.env {
            out.insert(format!("env.{k}"), short(v.as_bytes()));
        }
        for (k, v) in &self.volumes {
            out.insert(format!("volume.{k}"), v.clone());
        }
        for s in &self.secrets {
            let version = secret_versions.get(&s.name).map_or("unset", String::as_str);
            out.insert(format!("secret.{}", s.name), format!("{} {version}", s.env.as_deref().unwrap_or("-")));
        }
        out.insert("memory".into(), self.memory_bytes.map_or("-".into(), |m| m.to_string()));
        out.insert("cpus".into(), self.cpus.map_or("-".into(), |c| c.to_string()));
        out.insert("pids".into(), self.pids.map_or("-".into(), |p| p.to_string()));
        out.insert("stop_timeout".into(), self.stop_timeout.map_or("-".into(), |t| t.to_string()));
        // Only when set: instances started before the key existed are not
        // replaced for it.
        if !self.sandbox.is_default() {
            out.insert("sandbox".into(), self.sandbox.field());
        }
        let health = serde_json::to_string(&self.release.health).expect("specs serialize");
        let strategy = serde_json::to_string(&self.release.strategy).expect("specs serialize");
        out.insert("health".into(), json(health));
        out.insert("strategy".into(), format!("{} {}", self.release.strategy.name(), json(strategy)));
        out
    }
}

/// The digest of a service's release fields ([`ServiceSpec::release_fields`]).
pub fn fields_digest(fields: &BTreeMap<String, String>) -> crate::digest::Digest {
    crate::digest::Digest::of(serde_json::to_string(fields).expect("strings serialize").as_bytes())
}

/// What changed between two sets of release fields, by name only
/// (`env.RUST_LOG changed`, `secret.db added`). Pure.
pub fn fields_diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            Some(o) if o == v => {}
            Some(_) => out.push(format!("{k} changed")),
            None => out.push(format!("{k} added")),
        }
    }
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).map(|k| format!("{k} removed")));
    out
}

/// A secret a service needs: always at `/run/secrets/NAME`, and as `env`
/// when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub name: String,
    pub env: Option<String>,
}

/// A `kiln.toml` problem, naming the file, line and key.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}{}{message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { "" } else { ": " })]
pub struct SpecError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Reads and parses a kiln.toml.
pub fn load(path: &Path) -> Result<SpecFile, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: path.to_owned(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    let mut file = parse(path, &text)?;
    // A seccomp profile file is read once, here, beside its kiln.toml.
    let dir = path.parent().unwrap_or(Path::new("."));
    for r in file.registries.values_mut() {
        if let Some(ca) = &mut r.ca {
            *ca = dir.join(&*ca);
        }
        if let Some(k) = &mut r.signed_by {
            *k = dir.join(&*k);
        }
    }
    for (name, service) in &mut file.services {
        edge::resolve(&mut service.edge, dir);
        sandbox::load_profile(&mut service.sandbox, dir).map_err(|(profile, e)| SpecError {
            file: profile,
            line: None,
            key: e.key.clone(),
            message: format!("{} (the seccomp profile of service.{name})", e.message),
        })?;
    }
    Ok(file)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    image: BTreeMap<String, Spanned<RawImage>>,
    #[serde(default)]
    service: BTreeMap<String, Spanned<RawService>>,
    promotion: Option<Spanned<verify::RawPromotion>>,
    #[serde(default)]
    notify: Vec<Spanned<notify::RawNotify>>,
    syslog: Option<Spanned<syslog::RawSyslog>>,
    #[serde(default)]
    registries: BTreeMap<String, Spanned<registries::RawRegistry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: Spanned<String>,
    channel: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    volumes: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    secrets: Vec<Spanned<RawSecret>>,
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<f64>>,
    pids: Option<Spanned<i64>>,
    stop_timeout: Option<Spanned<i64>>,
    replicas: Option<Spanned<i64>>,
    listen: Option<Spanned<String>>,
    strategy: Option<Spanned<String>>,
    drain_timeout: Option<Spanned<String>>,
    keep_previous: Option<Spanned<String>>,
    progress_deadline: Option<Spanned<String>>,
    keep_releases: Option<Spanned<i64>>,
    health: Option<Spanned<release::RawHealth>>,
    rolling: Option<Spanned<release::RawRolling>>,
    blue_green: Option<Spanned<release::RawBlueGreen>>,
    canary: Option<Spanned<release::RawCanary>>,
    heal: Option<Spanned<release::RawHeal>>,
    seccomp: Option<Spanned<String>>,
    capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    privileged: Option<Spanned<bool>>,
    userns: Option<Spanned<bool>>,
    hosts: Option<Spanned<Vec<Spanned<String>>>>,
    paths: Option<Spanned<Vec<Spanned<String>>>>,
    tls: Option<Spanned<edge::RawTls>>,
    redirect_http: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSecret {
    Name(String),
    Full { name: String, env: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    from: Spanned<String>,
    #[serde(default)]
    copy: Vec<Spanned<RawCopy>>,
    #[serde(default)]
    run: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    workdir: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    #[serde(default)]
    expose: Vec<Spanned<RawPort>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    stop_signal: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    test: Option<Spanned<verify::RawTest>>,
    scan: Option<Spanned<verify::RawScan>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    src: OneOrMany,
    dest: Spanned<String>,
    mode: Option<Spanned<RawMode>>,
    owner: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawMode {
    Number(i64),
    Text(String),
}

/// Parses `text` as the kiln.toml at `path`.
pub fn parse(path: &Path, text: &str) -> Result<SpecFile, SpecError> {
    let lines = LineIndex::new(text);
    let err = |span: Option<Range<usize>>, key: &str, message: String| SpecError {
        file: path.to_owned(),
        line: span.map(|s| lines.line(s.start)),
        key: key.to_owned(),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let key = e.span().map(|s| key_at(text, s)).unwrap_or_default();
        err(e.span(), &key, e.message().trim().to_owned())
    })?;
    // A file of registry settings alone is a kiln.toml for push and pull
    // on a host that bakes nothing; one of webhooks alone, a fleet
    // controller's.
    if raw.image.is_empty() && raw.service.is_empty() && raw.registries.is_empty() && raw.notify.is_empty() {
        return Err(err(
            None,
            "image",
            "no [image.NAME], [service.NAME], [registries.\"HOST\"] or [[notify]] table".into(),
        ));
    }
    let mut images = BTreeMap::new();
    for (name, raw_image) in raw.image {
        let line = lines.line(raw_image.span().start);
        let image = validate_image(&name, raw_image.into_inner(), line, &lines)
            .map_err(|(span, key, message)| err(span, &format!("image.{name}.{key}"), message))?;
        images.insert(name, image);
    }
    let promotion = match raw.promotion {
        Some(p) => verify::validate_promotion(p)
            .map_err(|(span, key, message)| err(span, &format!("promotion.{key}"), message))?,
        None => verify::PromotionSpec::default(),
    };
    let mut hooks = Vec::new();
    for (i, n) in raw.notify.into_iter().enumerate() {
        hooks.push(notify::validate(i, n).map_err(|(span, key, message)| err(span, &key, message))?);
    }
    let syslog =
        raw.syslog.map(syslog::validate).transpose().map_err(|(span, key, message)| err(span, &key, message))?;
    let mut services = BTreeMap::new();
    let mut claimed: BTreeMap<std::net::SocketAddr, (String, String)> = BTreeMap::new();
    for (name, raw_service) in raw.service {
        let line = lines.line(raw_service.span().start);
        let channel = match &raw_service.get_ref().channel {
            Some(c) if !promotion.channels.contains(c.get_ref()) => {
                let message =
                    format!("{:?} is not a channel of [promotion] ({})", c.get_ref(), promotion.channels.join(", "));
                return Err(err(Some(c.span()), &format!("service.{name}.channel"), message));
            }
            Some(c) => Some(verify::ChannelRule { channel: c.get_ref().clone(), key: promotion.key.clone() }),
            None => None,
        };
        let key_of = |key: &str| format!("service.{name}{}{key}", if key.is_empty() { "" } else { "." });
        let (mut service, claims) = validate_service(&name, raw_service.into_inner(), line)
            .map_err(|(span, key, message)| err(span, &key_of(&key), message))?;
        service.image_line = lines.line(service.image_line);
        if service.edge.tls.is_some() {
            service.edge.tls_line = lines.line(service.edge.tls_line);
        }
        if !service.edge.hosts.is_empty() {
            service.edge.hosts_line = lines.line(service.edge.hosts_line);
        }
        service.channel = channel;
        service.file = path.to_owned();
        // Two listeners on one address: the second would fail to bind in
        // the middle of a deploy, so it is refused here, unless services
        // share the address by host name (see edge::share).
        for (addr, key, span) in claims {
            if key == "listen" {
                service.release.listen_line = lines.line(span.start);
            }
            if let Some((first, first_key)) = claimed.get(&addr) {
                let Some(other) = services.get(first) else {
                    let message = format!("{addr} is already service.{first}.{first_key}");
                    return Err(err(Some(span), &key_of(&key), message));
                };
                edge::share(other, first_key, &service, &key, addr).map_err(|(at_hosts, message)| {
                    let (line, k) = match at_hosts {
                        true => (Some(service.edge.hosts_line), key_of("hosts")),
                        false => (Some(lines.line(span.start)), key_of(&key)),
                    };
                    SpecError { file: path.to_owned(), line, key: k, message }
                })?;
                continue;
            }
            claimed.insert(addr, (name.clone(), key));
        }
        services.insert(name, service);
    }
    for (name, image) in &images {
        if let Some(s) = image.test.as_ref().and_then(|t| t.service.as_ref()).filter(|s| !services.contains_key(*s)) {
            let message = format!("no [service.{s}] in this file");
            return Err(SpecError {
                file: path.to_owned(),
                line: Some(image.line),
                key: format!("image.{name}.test.service"),
                message,
            });
        }
    }
    let registries = registries::validate(raw.registries).map_err(|(span, key, message)| err(span, &key, message))?;
    Ok(SpecFile { path: path.to_owned(), images, services, promotion, notify: hooks, syslog, registries })
}

/// The full path of the key at `span` (`service.web.replica`): the table
/// header above it, the inline table it sits in on its line, and the key
/// itself, for errors the TOML parser reports with a span only. Pure.
fn key_at(text: &str, span: Range<usize>) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    let line = &text[line_start..];
    let line = &line[..line.find('\n').unwrap_or(line.len())];
    let before = &text[line_start..start];
    // `canary = { stepz = 1 }`: the key sits in the inline table `canary`.
    let inline = before.find('{').and_then(|b| before[..b].split('=').next()).map(str::trim).filter(|k| !k.is_empty());
    // A span on a value (`privileged = "yes"`, a wrong type): its key is
    // what stands before the '=' of the last key-value in the line.
    let last = &before[before.rfind(['{', ',']).map_or(0, |i| i + 1)..];
    let of_value = last.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty());
    let own = text.get(span.clone()).map(str::trim).filter(|k| !k.is_empty() && !k.contains('\n'));
    let own = of_value.or(own).or_else(|| line.split('=').next().map(str::trim)).unwrap_or("").trim_matches('"');
    [table.as_str(), inline.unwrap_or(""), if inline == Some(own) { "" } else { own }]
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".")
}

/// A problem inside one table: span, key (relative to the table), message.
type FieldError = (Option<Range<usize>>, String, String);

fn field_err(span: Range<usize>, key: &str, message: impl Into<String>) -> FieldError {
    (Some(span), key.to_owned(), message.into())
}

/// Parses a size like `512`, `64K`, `256M`, `2G` into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

fn check_env_names(env: &BTreeMap<String, String>) -> Result<(), FieldError> {
    match env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        Some(k) => {
            Err((None, format!("env.{k}"), "an environment variable name must be non-empty and contain no '='".into()))
        }
        None => Ok(()),
    }
}

fn parse_port(p: &RawPort) -> Result<String, String> {
    let (num, proto) = match p {
        RawPort::Number(n) => (*n, "tcp"),
        RawPort::Text(t) => {
            let (n, proto) = t.split_once('/').unwrap_or((t, "tcp"));
            (n.parse().map_err(|_| format!("{t:?}: expected PORT or PORT/PROTO"))?, proto)
        }
    };
    if !(1..=65535).contains(&num) {
        return Err(format!("port {num} is out of range 1-65535"));
    }
    if !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!("protocol {proto:?} must be tcp, udp or sctp"));
    }
    Ok(format!("{num}/{proto}"))
}

const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
];

/// Normalises `TERM`, `SIGTERM` or `15` to `SIGTERM`.
pub fn parse_signal(s: &str) -> Result<String, String> {
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    if let Some((n, _)) = SIGNALS.iter().find(|(n, _)| *n == name) {
        return Ok((*n).to_owned());
    }
    if let Ok(num) = s.parse::<i32>() {
        if let Some((n, _)) = SIGNALS.iter().find(|(_, v)| *v == num) {
            return Ok((*n).to_owned());
        }
    }
    Err(format!("unknown signal {s:?}"))
}

/// Maps byte offsets to 1-based line numbers.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }
    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset)
    }
}

/// Whether `name` can name a secret: letters, digits, `_`, `.`, `-`, at
/// most 128, not starting with `.` (it becomes a file name).
pub fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests;
