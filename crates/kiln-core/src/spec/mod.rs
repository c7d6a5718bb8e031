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

pub mod notify;
pub mod release;
pub mod syslog;
pub mod verify;

pub use release::{AnalysisSpec, BlueGreenSpec, CanaryStep, HealthSpec, ReleaseSpec, SmokeCheck, Strategy};

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
    parse(path, &text)
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
    if raw.image.is_empty() && raw.service.is_empty() {
        return Err(err(None, "image", "no [image.NAME] or [service.NAME] table".into()));
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
    let mut claimed: BTreeMap<std::net::SocketAddr, String> = BTreeMap::new();
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
        service.channel = channel;
        service.file = path.to_owned();
        // Two listeners on one address: the second would fail to bind in
        // the middle of a deploy, so it is refused here.
        for (addr, key, span) in claims {
            if key == "listen" {
                service.release.listen_line = lines.line(span.start);
            }
            if let Some(first) = claimed.get(&addr) {
                return Err(err(Some(span), &key_of(&key), format!("{addr} is already {first}")));
            }
            claimed.insert(addr, format!("service.{name}.{key}"));
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
    Ok(SpecFile { path: path.to_owned(), images, services, promotion, notify: hooks, syslog })
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
    let own = text.get(span.clone()).map(str::trim).filter(|k| !k.is_empty() && !k.contains('\n'));
    let own = own.or_else(|| line.split('=').next().map(str::trim)).unwrap_or("").trim_matches('"');
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

fn validate_image(name: &str, raw: RawImage, line: usize, lines: &LineIndex) -> Result<ImageSpec, FieldError> {
    if !valid_image_name(name) {
        return Err((
            None,
            String::new(),
            format!("image name {name:?} must be lowercase letters, digits and single . _ - between them"),
        ));
    }
    let from = parse_base(raw.from.get_ref()).map_err(|m| field_err(raw.from.span(), "from", m))?;
    let mut copy = Vec::with_capacity(raw.copy.len());
    for (i, c) in raw.copy.into_iter().enumerate() {
        let span = c.span();
        copy.push(validate_copy(c.into_inner(), lines.line(span.start)).map_err(|(s, k, m)| {
            (s.or(Some(span.clone())), format!("copy[{i}]{}{k}", if k.is_empty() { "" } else { "." }), m)
        })?);
    }
    let mut run = Vec::with_capacity(raw.run.len());
    for (i, r) in raw.run.into_iter().enumerate() {
        if r.get_ref().trim().is_empty() {
            return Err(field_err(r.span(), &format!("run[{i}]"), "empty command"));
        }
        run.push(r.into_inner());
    }
    check_env_names(&raw.env)?;
    if let Some(w) = &raw.workdir {
        if !w.get_ref().starts_with('/') {
            return Err(field_err(w.span(), "workdir", "must be an absolute path"));
        }
    }
    if let Some(u) = &raw.user {
        let ok = !u.get_ref().is_empty()
            && u.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'));
        if !ok {
            return Err(field_err(u.span(), "user", "expected a user name or uid, optionally with :group or :gid"));
        }
    }
    let mut expose = Vec::new();
    for (i, p) in raw.expose.iter().enumerate() {
        expose.push(parse_port(p.get_ref()).map_err(|m| field_err(p.span(), &format!("expose[{i}]"), m))?);
    }
    expose.sort();
    expose.dedup();
    let stop_signal = match &raw.stop_signal {
        Some(s) => Some(parse_signal(s.get_ref()).map_err(|m| field_err(s.span(), "stop_signal", m))?),
        None => None,
    };
    let version = match &raw.version {
        Some(v) => Some(validate_version(v.get_ref()).map_err(|m| field_err(v.span(), "version", m))?),
        None => None,
    };
    for (key, list) in [("entrypoint", &raw.entrypoint), ("cmd", &raw.cmd)] {
        if list.as_ref().is_some_and(|l| l.iter().any(|a| a.contains('\0'))) {
            return Err((None, key.into(), "arguments must not contain NUL".into()));
        }
    }
    let test = raw.test.map(verify::validate_test).transpose()?;
    let scan = raw.scan.map(verify::validate_scan).transpose()?.unwrap_or_default();
    Ok(ImageSpec {
        name: name.to_owned(),
        test,
        scan,
        from,
        copy,
        run,
        env: raw.env,
        entrypoint: raw.entrypoint,
        cmd: raw.cmd,
        workdir: raw.workdir.map(Spanned::into_inner),
        user: raw.user.map(Spanned::into_inner),
        expose,
        labels: raw.labels,
        stop_signal,
        version,
        line,
    })
}

fn validate_copy(raw: RawCopy, line: usize) -> Result<CopySpec, FieldError> {
    let src = match raw.src {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    if src.is_empty() {
        return Err((None, "src".into(), "needs at least one source path".into()));
    }
    for s in &src {
        if s.is_empty() || s.starts_with('/') {
            return Err((None, "src".into(), format!("{s:?}: sources are paths relative to the kiln.toml")));
        }
    }
    let dest = normalize_dest(raw.dest.get_ref()).map_err(|m| field_err(raw.dest.span(), "dest", m))?;
    let mode = match &raw.mode {
        None => None,
        Some(m) => Some(parse_mode(m.get_ref()).map_err(|msg| field_err(m.span(), "mode", msg))?),
    };
    let (uid, gid) = match &raw.owner {
        None => (0, 0),
        Some(o) => parse_owner(o.get_ref()).map_err(|m| field_err(o.span(), "owner", m))?,
    };
    Ok(CopySpec { src, dest, mode, uid, gid, line })
}

fn validate_service(
    name: &str,
    raw: RawService,
    line: usize,
) -> Result<(ServiceSpec, Vec<release::Claim>), FieldError> {
    if !valid_image_name(name) || name.contains('.') {
        return Err((
            None,
            String::new(),
            format!("service name {name:?} must be lowercase letters, digits and single '-'/'_'"),
        ));
    }
    if raw.image.get_ref().trim().is_empty() {
        return Err(field_err(raw.image.span(), "image", "names no image"));
    }
    check_env_names(&raw.env)?;
    let mut volumes = BTreeMap::new();
    for (v, dest) in raw.volumes {
        let ok_name = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !ok_name {
            return Err(field_err(
                dest.span(),
                &format!("volumes.{v}"),
                "a volume name is letters, digits, '_' and '-'",
            ));
        }
        let d = dest.get_ref();
        if !d.starts_with('/') || d.split('/').any(|p| p == "..") {
            return Err(field_err(
                dest.span(),
                &format!("volumes.{v}"),
                format!("{d:?} must be an absolute path without '..'"),
            ));
        }
        volumes.insert(v, dest.into_inner());
    }
    let mut secrets = Vec::new();
    for (i, sec) in raw.secrets.into_iter().enumerate() {
        let span = sec.span();
        let (n, env) = match sec.into_inner() {
            RawSecret::Name(n) => (n, None),
            RawSecret::Full { name, env } => (name, env),
        };
        let valid = !n.is_empty()
            && n.len() <= 128
            && !n.starts_with('.')
            && n.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(field_err(span, &format!("secrets[{i}]"), format!("{n:?} is not a valid secret name")));
        }
        if env.as_ref().is_some_and(|e| e.is_empty() || e.contains('=')) {
            return Err(field_err(span, &format!("secrets[{i}].env"), "must be a variable name"));
        }
        secrets.push(SecretRef { name: n, env });
    }
    let memory_bytes =
        match &raw.memory {
            Some(m) => Some(parse_size(m.get_ref()).ok_or_else(|| {
                field_err(m.span(), "memory", format!("{:?}: expected a size like 256M", m.get_ref()))
            })?),
            None => None,
        };
    if let Some(c) = &raw.cpus {
        if !(*c.get_ref() > 0.0 && *c.get_ref() <= 1024.0) {
            return Err(field_err(c.span(), "cpus", "must be a positive number of cores"));
        }
    }
    let positive = |v: &Option<Spanned<i64>>, key: &str| -> Result<Option<u64>, FieldError> {
        match v {
            Some(n) if *n.get_ref() < 0 => Err(field_err(n.span(), key, "must not be negative")),
            Some(n) => Ok(Some(*n.get_ref() as u64)),
            None => Ok(None),
        }
    };
    let (release, claims) = release::validate(release::RawRelease {
        replicas: raw.replicas,
        listen: raw.listen,
        strategy: raw.strategy,
        drain_timeout: raw.drain_timeout,
        keep_previous: raw.keep_previous,
        progress_deadline: raw.progress_deadline,
        keep_releases: raw.keep_releases,
        health: raw.health,
        rolling: raw.rolling,
        blue_green: raw.blue_green,
        canary: raw.canary,
        heal: raw.heal,
    })?;
    // A byte offset until `parse` turns it into a line.
    let image_line = raw.image.span().start;
    let service = ServiceSpec {
        name: name.to_owned(),
        image: raw.image.into_inner(),
        env: raw.env,
        volumes,
        secrets,
        memory_bytes,
        cpus: raw.cpus.map(Spanned::into_inner),
        pids: positive(&raw.pids, "pids")?,
        stop_timeout: positive(&raw.stop_timeout, "stop_timeout")?,
        release,
        channel: None,
        line,
        image_line,
        file: PathBuf::new(),
    };
    Ok((service, claims))
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

/// Image names become tag prefixes and OCI `ref.name`s.
pub fn valid_image_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
        && !b.windows(2).any(|w| !w[0].is_ascii_alphanumeric() && !w[1].is_ascii_alphanumeric())
}

/// Checks a user-chosen tag (the `version`): tag characters, and not one of
/// the forms kiln generates or refuses.
pub fn validate_version(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let chars_ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if !chars_ok {
        return Err(format!("{v:?} is not a valid tag: use letters, digits, '_', '.', '-' (at most 128)"));
    }
    if v.eq_ignore_ascii_case("latest") {
        return Err("\"latest\" is refused: a tag must say which build it is".into());
    }
    if v.starts_with("git-") || (v.len() > 1 && v.starts_with('b') && v[1..].bytes().all(|c| c.is_ascii_digit())) {
        return Err(format!("{v:?} is reserved for kiln's own git-<sha> and b<N> tags"));
    }
    Ok(v.to_owned())
}

fn parse_base(s: &str) -> Result<BaseRef, String> {
    if s == "scratch" {
        return Ok(BaseRef::Scratch);
    }
    if let Some(p) = s.strip_prefix("rootfs:") {
        if p.is_empty() {
            return Err("rootfs: needs a tarball path".into());
        }
        return Ok(BaseRef::Rootfs { path: p.to_owned() });
    }
    if let Some(rest) = s.strip_prefix("oci:") {
        // As skopeo reads it: the path ends at the first ':', and the
        // reference after it may hold colons (`store:deb:12.0.1`, kiln's
        // own `NAME:TAG`); `@sha256:…` names a digest.
        let (path, reference) = match rest.rsplit_once('@') {
            Some((p, d)) if d.starts_with("sha256:") => {
                (p, Some(OciRef::Digest(Digest::parse(d).map_err(|e| e.to_string())?)))
            }
            _ => match rest.split_once(':') {
                Some((_, "")) => return Err(format!("{s:?}: empty tag after ':'")),
                Some((p, t)) => (p, Some(OciRef::Tag(t.to_owned()))),
                None => (rest, None),
            },
        };
        if path.is_empty() {
            return Err("oci: needs a layout directory path".into());
        }
        return Ok(BaseRef::Oci { path: path.to_owned(), reference });
    }
    Err(format!("{s:?}: expected \"scratch\", \"oci:PATH[:TAG|@DIGEST]\" or \"rootfs:PATH\""))
}

fn normalize_dest(d: &str) -> Result<String, String> {
    if !d.starts_with('/') {
        return Err(format!("{d:?} must be an absolute path inside the image"));
    }
    let mut parts = Vec::new();
    for c in d.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("{d:?} must not contain '..'")),
            c if c.contains('\0') => return Err("must not contain NUL".into()),
            c => parts.push(c),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if d.ends_with('/') && out != "/" {
        out.push('/');
    }
    Ok(out)
}

fn parse_mode(m: &RawMode) -> Result<u32, String> {
    let v = match m {
        RawMode::Number(n) => *n,
        RawMode::Text(t) => i64::from_str_radix(t.trim_start_matches("0o"), 8)
            .map_err(|_| format!("{t:?} is not an octal mode like \"0755\""))?,
    };
    if !(0..=0o7777).contains(&v) {
        return Err(format!("{v:o} is out of range (at most 7777 octal)"));
    }
    Ok(v as u32)
}

fn parse_owner(o: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{o:?}: expected numeric \"uid:gid\" or \"uid\"");
    let (u, g) = o.split_once(':').unwrap_or((o, o));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
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
mod tests {
    #[test]
    fn an_unknown_key_is_named_by_its_full_path_and_line() {
        let text = "[image.web]\nfrom = \"scratch\"\nversion = \"1\"\n\n[service.web]\nimage = \"web\"\nreplica = 3\n";
        let e = super::parse(std::path::Path::new("kiln.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("kiln.toml:7: service.web.replica: unknown field `replica`"), "{e}");
        let text = "[service.web]\nimage = \"x:1\"\ncanary = { stepz = [1] }\n";
        let e = super::parse(std::path::Path::new("kiln.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("kiln.toml:3: service.web.canary.stepz: unknown field `stepz`"), "{e}");
        let text = "[service.web]\nimage = \"x:1\"\n[service.web.health]\npth = \"/\"\n";
        let e = super::parse(std::path::Path::new("kiln.toml"), text).unwrap_err().to_string();
        assert!(e.starts_with("kiln.toml:4: service.web.health.pth: unknown field `pth`"), "{e}");
    }

    use super::*;

    fn p(text: &str) -> Result<SpecFile, SpecError> {
        parse(Path::new("dir/kiln.toml"), text)
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn webhooks_are_checked_where_they_are_written() {
        let svc = "[service.web]\nimage = \"web\"\n";
        let f = p(&format!("[[notify]]\nurl = \"http://127.0.0.1:9000/hook\"\nsecret = \"hook\"\n{svc}")).unwrap();
        assert_eq!(f.notify[0].authority, "127.0.0.1:9000");
        assert_eq!(f.notify[0].path, "/hook");
        assert_eq!(f.notify[0].events.len(), 8, "all by default");
        let f = p(&format!("[syslog]\nurl = \"relp://127.0.0.1:2514\"\n{svc}")).unwrap();
        let sl = f.syslog.unwrap();
        assert_eq!((sl.transport, sl.authority.as_str(), sl.facility), (syslog::Transport::Relp, "127.0.0.1:2514", 16));
        let e = err(&format!("[syslog]\nurl = \"udp://127.0.0.1:514\"\n{svc}"));
        assert!(e.contains("kiln.toml:2: syslog.url") && e.contains("relp://"), "{e}");
        let e = err(&format!("[syslog]\nurl = \"tcp://127.0.0.1\"\n{svc}"));
        assert!(e.contains("syslog.url") && e.contains("HOST:PORT"), "{e}");
        let e = err(&format!("[syslog]\nurl = \"tcp://127.0.0.1:514\"\nfacility = \"kern\"\n{svc}"));
        assert!(e.contains("kiln.toml:3: syslog.facility") && e.contains("local0"), "{e}");
        let e = err(&format!("[syslog]\nurl = \"tcp://127.0.0.1:514\"\nport = 1\n{svc}"));
        assert!(e.contains("port"), "{e}");
        let e = err(&format!("[[notify]]\nurl = \"https://hooks.example.com/x\"\n{svc}"));
        assert!(e.contains("kiln.toml:2: notify[0].url") && e.contains("TLS"), "{e}");
        let e = err(&format!("[[notify]]\nurl = \"http://127.0.0.1:9000/\"\nevents = [\"oops\"]\n{svc}"));
        assert!(e.contains("notify[0].events") && e.contains("release-failed"), "{e}");
        let e = err(&format!("[[notify]]\nurl = \"http://nohost/\"\n{svc}"));
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn channels_are_declared_once_and_services_name_one_of_them() {
        let svc = "[service.web]\nimage = \"web\"\nchannel = \"prod\"\n";
        let f = p(svc).unwrap();
        assert_eq!(f.promotion.channels, ["dev", "staging", "prod"]);
        let rule = f.services["web"].channel.clone().unwrap();
        assert_eq!((rule.channel.as_str(), rule.key.as_str()), ("prod", "default"));
        let f = p(&format!(
            "[promotion]\nchannels = [\"test\", \"live\"]\nkey = \"release\"\n{}",
            svc.replace("prod", "live")
        ))
        .unwrap();
        assert_eq!(f.services["web"].channel.as_ref().unwrap().key, "release");
        let e = err(&format!("[promotion]\nchannels = [\"test\", \"live\"]\n{svc}"));
        assert!(e.contains("kiln.toml:5: service.web.channel") && e.contains("(test, live)"), "{e}");
        let e = err("[promotion]\nchannels = [\"a\", \"a\"]\n[service.web]\nimage = \"web\"\n");
        assert!(e.contains("promotion.channels[1]") && e.contains("twice"), "{e}");
        let e = err("[promotion]\nchannels = []\n[service.web]\nimage = \"web\"\n");
        assert!(e.contains("promotion.channels"), "{e}");
        assert!(p("[service.web]\nimage = \"web\"\n").unwrap().services["web"].channel.is_none());
    }

    #[test]
    fn parses_a_full_image() {
        let f = p(r#"
[image.web]
from = "oci:../base:1.2"
version = "1.0.0"
copy = [{ src = ["bin/*", "conf"], dest = "/app/", mode = "0750", owner = "10:20" }]
run = ["echo hi > /x"]
env = { B = "2", A = "1" }
entrypoint = ["/app/web"]
cmd = ["--port", "80"]
workdir = "/app"
user = "10:20"
expose = [80, "53/udp", 80]
labels = { team = "core" }
stop_signal = "term"
"#)
        .unwrap();
        let i = &f.images["web"];
        assert_eq!(i.from, BaseRef::Oci { path: "../base".into(), reference: Some(OciRef::Tag("1.2".into())) });
        assert_eq!(i.copy[0].mode, Some(0o750));
        assert_eq!((i.copy[0].uid, i.copy[0].gid), (10, 20));
        assert_eq!(i.copy[0].line, 5);
        assert_eq!(i.expose, vec!["53/udp", "80/tcp"]);
        assert_eq!(i.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(i.line, 2);
        assert_eq!(f.dir(), Path::new("dir"));
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let e = err("[image.a]\nfrom = \"scratch\"\nfrmo = 1\n");
        assert!(e.starts_with("dir/kiln.toml:3"), "{e}");
        assert!(e.contains("frmo"), "{e}");
        let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"a\", dest = \"/a\", chmod = 1 }]\n");
        assert!(e.contains(":3") && e.contains("chmod"), "{e}");
        let e = err("[images.a]\nfrom = \"scratch\"\n");
        assert!(e.contains(":1") && e.contains("images"), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let e = err("[image.a]\nfrom = \"scratch\"\nversion = \"latest\"\n");
        assert_eq!(e, "dir/kiln.toml:3: image.a.version: \"latest\" is refused: a tag must say which build it is");
        let e = err("[image.a]\nfrom = \"scratch\"\n\ncopy = [{ src = \"a\", dest = \"rel\" }]\n");
        assert!(e.starts_with("dir/kiln.toml:4: image.a.copy[0].dest:"), "{e}");
        let e = err("[image.a]\nfrom = \"docker:x\"\n");
        assert!(e.starts_with("dir/kiln.toml:2: image.a.from:"), "{e}");
        let e = err("[image.a]\nfrom = \"scratch\"\nexpose = [70000]\n");
        assert!(e.contains(":3: image.a.expose[0]: port 70000"), "{e}");
        let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"a\", dest = \"/a/../b\" }]\n");
        assert!(e.contains("'..'"), "{e}");
        let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"/etc/passwd\", dest = \"/a\" }]\n");
        assert!(e.contains("copy[0].src"), "{e}");
        let e = err("[image.a]\nfrom = \"scratch\"\ncopy = [{ src = \"a\", dest = \"/a\", mode = \"999\" }]\n");
        assert!(e.contains("copy[0].mode"), "{e}");
        let e = err("[image.Bad]\nfrom = \"scratch\"\n");
        assert!(e.contains("image.Bad"), "{e}");
        assert!(err("").contains("no [image.NAME]"));
        let e = err("[service.web]\nimage = \"hello\"\nvolumes = { data = \"rel\" }\n");
        assert!(e.starts_with("dir/kiln.toml:3: service.web.volumes.data:"), "{e}");
        let e = err("[service.web]\nimage = \"hello\"\nmemory = \"lots\"\n");
        assert!(e.starts_with("dir/kiln.toml:3: service.web.memory:"), "{e}");
        let e = err("[service.web]\nimage = \"hello\"\nreplica = 3\n");
        assert!(e.contains(":3") && e.contains("replica"), "{e}");
        let e = err("[service.web]\nimage = \"hello\"\nsecrets = [\"ok\", \"../bad\"]\n");
        assert!(e.contains("service.web.secrets[1]"), "{e}");
        assert!(err("[image.a]\n").contains("from"));
    }

    #[test]
    fn parses_a_service() {
        let f = p(r#"
[image.hello]
from = "scratch"

[service.web]
image = "hello"
env = { LOG = "info" }
volumes = { data = "/var/lib/app" }
secrets = ["api_key", { name = "db", env = "DB_PASSWORD" }]
memory = "256M"
cpus = 0.5
pids = 100
stop_timeout = 3
"#)
        .unwrap();
        let s = &f.services["web"];
        assert_eq!(s.image, "hello");
        assert_eq!(s.volumes["data"], "/var/lib/app");
        assert_eq!(s.secrets[1], SecretRef { name: "db".into(), env: Some("DB_PASSWORD".into()) });
        assert_eq!(s.memory_bytes, Some(256 << 20));
        assert_eq!((s.cpus, s.pids, s.stop_timeout), (Some(0.5), Some(100), Some(3)));
        assert_eq!(s.line, 5);
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn reserved_and_invalid_versions() {
        assert!(validate_version("b12").is_err());
        assert!(validate_version("git-abc").is_err());
        assert!(validate_version("LATEST").is_err());
        assert!(validate_version("1.0/x").is_err());
        assert!(validate_version("build2").is_ok());
        assert!(validate_version("1.2.3-rc.1").is_ok());
    }

    #[test]
    fn base_references() {
        assert_eq!(parse_base("oci:/a/b").unwrap(), BaseRef::Oci { path: "/a/b".into(), reference: None });
        let d = Digest::of(b"x");
        assert_eq!(
            parse_base(&format!("oci:layout@{d}")).unwrap(),
            BaseRef::Oci { path: "layout".into(), reference: Some(OciRef::Digest(d)) }
        );
        assert!(parse_base("oci:layout@sha256:zz").is_err());
        assert_eq!(parse_base("rootfs:a.tar").unwrap(), BaseRef::Rootfs { path: "a.tar".into() });
        assert_eq!(parse_base("oci:x:").unwrap_err(), "\"oci:x:\": empty tag after ':'");
        // A reference with colons, as kiln's own store names its images.
        assert_eq!(
            parse_base("oci:/home/k/store:deb:12.0.1").unwrap(),
            BaseRef::Oci { path: "/home/k/store".into(), reference: Some(OciRef::Tag("deb:12.0.1".into())) }
        );
    }

    #[test]
    fn dest_normalisation() {
        assert_eq!(normalize_dest("//a/./b/").unwrap(), "/a/b/");
        assert_eq!(normalize_dest("/").unwrap(), "/");
        assert_eq!(normalize_dest("/a//b").unwrap(), "/a/b");
    }

    #[test]
    fn image_names() {
        assert!(valid_image_name("hello"));
        assert!(valid_image_name("my-app.v2"));
        assert!(!valid_image_name("My"));
        assert!(!valid_image_name("a--b"));
        assert!(!valid_image_name("-a"));
    }
}
