//! Instances: running copies of one image digest, never modified.
//!
//! Stages, kube-rs style: *observe* (instance record, the shim's exit
//! record, the runtime's state), *decide* ([`decide_state`], pure), *act*
//! (driver calls). An instance is started by a detached shim (`kiln
//! __shim`, see [`shim`]) that owns the container as a child subreaper,
//! records its exit status, and moves its log lines to the central store;
//! killing kiln, even with SIGKILL, leaves shim and container running, and
//! any later kiln command adopts them from `$KILN_HOME/instances` and the
//! runtime's list. Containers the runtime knows but no record does are
//! reported and removed.
//!
//! Secrets and bundles live on tmpfs under `/run/kiln/<home-hash>/`; this
//! module never writes a secret value under `$KILN_HOME`.

pub mod bundle;
pub mod drift;
pub mod driver;
pub mod images;
pub mod logs;
pub mod postmortem;

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::store::{Store, StoreError};
use crate::oci;
use crate::secrets::{SecretError, Secrets};
use bundle::{BundleError, InstanceConfig, Limits};
use driver::{Driver, DriverError, RuntimeStatus};
use images::CacheError;
use logs::{LogMeta, LogStore};

/// `<service>-<8 hex>`; also the container id and the hostname.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    fn generate(service: &str) -> io::Result<Self> {
        let mut b = [0u8; 4];
        io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut b)?;
        Ok(InstanceId(format!("{service}-{}", crate::digest::hex(&b))))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Lifecycle: created → starting → running → stopping → exited; paused
/// (quarantine) from running and back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum InstanceState {
    Created,
    Starting,
    Running,
    Stopping,
    Paused,
    Exited {
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
        reason: String,
    },
}

impl InstanceState {
    pub fn is_exited(&self) -> bool {
        matches!(self, InstanceState::Exited { .. })
    }
    pub fn name(&self) -> &'static str {
        match self {
            InstanceState::Created => "created",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Paused => "paused",
            InstanceState::Exited { .. } => "exited",
        }
    }
}

/// A secret an instance receives: always as `/run/secrets/NAME`, and as
/// the environment variable `env` when given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretUse {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// What kiln remembers of an instance (`instances/<id>/instance.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: InstanceId,
    pub service: String,
    pub image: Digest,
    pub image_ref: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub release: Option<String>,
    pub port: u16,
    /// Unix seconds.
    pub created: i64,
    #[serde(default)]
    pub volumes: Vec<(String, String)>,
    #[serde(default)]
    pub secrets: Vec<SecretUse>,
    pub stop_signal: String,
    pub stop_grace_secs: u64,
    #[serde(default)]
    pub limits: Limits,
    #[serde(flatten)]
    pub state: InstanceState,
    #[serde(default)]
    pub stop_requested: bool,
    /// Unix milliseconds when it started running (0 in older records).
    #[serde(default)]
    pub started_ms: i64,
    /// The service settings of its release (see [`RunRequest::release_fields`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub release_fields: std::collections::BTreeMap<String, String>,
    /// The stored version of each secret it was given, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_versions: std::collections::BTreeMap<String, String>,
}

/// Written by the shim once the container has started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShimStarted {
    shim_pid: i32,
    container_pid: i32,
}

/// Written by the shim (or by `stop` if the shim is gone) when the
/// container has exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: i64,
    /// Unix milliseconds (records from before it have `at` only).
    #[serde(default)]
    pub at_ms: i64,
}

/// A request to start one instance (also the body of the API's `run`
/// command: every field but `reference` may be left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunRequest {
    /// Image tag, digest or digest prefix.
    pub reference: String,
    /// Service name; defaults to the image's title.
    pub service: Option<String>,
    /// (name, value), later ones replacing earlier ones of the same name.
    pub env: Vec<(String, String)>,
    /// (volume name, absolute path inside)
    pub volumes: Vec<(String, String)>,
    pub secrets: Vec<SecretUse>,
    pub limits: Limits,
    pub stop_grace_secs: Option<u64>,
    pub release: Option<String>,
    /// Secrets get a placeholder value (`kiln-test-placeholder-NAME`), never
    /// the stored one: a test instance (`kiln test`) needs their names only.
    /// Never from outside: only `kiln test` sets it.
    #[serde(skip)]
    pub placeholder_secrets: bool,
    /// The service settings of the release it is started for (kept on the
    /// instance, so that `kiln plan` sees what runs). Only kiln serve sets it.
    #[serde(skip)]
    pub release_fields: std::collections::BTreeMap<String, String>,
}

impl RunRequest {
    /// The request for a `[service.NAME]`, with `flags` added on top (their
    /// env, volumes and secrets added or replacing, their limits winning).
    pub fn for_service(service: &crate::spec::ServiceSpec, flags: RunRequest) -> RunRequest {
        let mut env: Vec<(String, String)> = service.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in flags.env {
            env.retain(|(e, _)| *e != k);
            env.push((k, v));
        }
        let mut volumes: Vec<(String, String)> = service.volumes.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (n, d) in flags.volumes {
            volumes.retain(|(e, _)| *e != n);
            volumes.push((n, d));
        }
        let mut secrets: Vec<SecretUse> =
            service.secrets.iter().map(|s| SecretUse { name: s.name.clone(), env: s.env.clone() }).collect();
        for s in flags.secrets {
            secrets.retain(|e| e.name != s.name);
            secrets.push(s);
        }
        RunRequest {
            reference: if flags.reference.is_empty() { service.image.clone() } else { flags.reference },
            service: Some(service.name.clone()),
            env,
            volumes,
            secrets,
            limits: Limits {
                memory_bytes: flags.limits.memory_bytes.or(service.memory_bytes),
                cpus: flags.limits.cpus.or(service.cpus),
                pids: flags.limits.pids.or(service.pids),
            },
            stop_grace_secs: flags.stop_grace_secs.or(service.stop_timeout),
            release: flags.release,
            placeholder_secrets: flags.placeholder_secrets,
            release_fields: flags.release_fields,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Invalid(String),
    #[error("instance {id} failed to start: {message}")]
    StartFailed { id: InstanceId, message: String },
    #[error("no instance matches {0:?} (see `kiln ps --all`)")]
    NotFound(String),
    #[error("{reference:?} matches several instances: {}", candidates.join(", "))]
    Ambiguous { reference: String, candidates: Vec<String> },
    #[error("instance {0} is {1}; stop it first, or pass --force")]
    NotExited(InstanceId, &'static str),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |source| RunError::Io { path: path.to_owned(), source }
}

/// Starts the shim for an instance; behind a trait so the code above is
/// testable without processes.
pub trait Launcher {
    /// Starts the shim; the returned reader yields its one-line report,
    /// `started` or `error: …`.
    fn launch(&self, home: &Path, id: &InstanceId) -> io::Result<Box<dyn io::Read>>;
}

/// Starts `kiln __shim` in its own session, detached from the caller.
#[derive(Debug, Default)]
pub struct ShimLauncher;

impl Launcher for ShimLauncher {
    fn launch(&self, home: &Path, id: &InstanceId) -> io::Result<Box<dyn io::Read>> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("instances").join(id.as_str()).join("shim.log"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("--home").arg(home).arg("__shim").arg(id.as_str());
        let (report, report_w) = io::pipe()?;
        cmd.stdin(std::process::Stdio::null()).stdout(report_w).stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory; it only
        // makes the child a session leader so the caller's terminal and
        // process group signals do not reach the shim.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // Not waited for: the shim outlives the caller (a long-running
        // caller reaps it, see crate::sys::children).
        crate::sys::children::abandon(cmd.spawn()?);
        drop(cmd);
        Ok(Box::new(report))
    }
}

/// Decides an instance's state from what was observed. Pure.
pub fn decide_state(
    recorded: &InstanceState,
    stop_requested: bool,
    exit: Option<&ExitInfo>,
    runtime: Option<RuntimeStatus>,
    shim_alive: bool,
) -> InstanceState {
    if recorded.is_exited() {
        return recorded.clone();
    }
    if let Some(e) = exit {
        let reason = match (e.code, e.signal, stop_requested) {
            (_, Some(s), true) => format!("stopped (signal {s})"),
            (Some(c), _, true) => format!("stopped (exit code {c})"),
            (Some(c), _, false) => format!("exited with code {c}"),
            (_, Some(s), false) => format!("killed by signal {s}"),
            _ => "exited".to_owned(),
        };
        return InstanceState::Exited { code: e.code, signal: e.signal, reason };
    }
    match runtime {
        Some(RuntimeStatus::Running) if stop_requested => InstanceState::Stopping,
        Some(RuntimeStatus::Running) => InstanceState::Running,
        Some(RuntimeStatus::Paused) => InstanceState::Paused,
        Some(RuntimeStatus::Created) => InstanceState::Starting,
        // The shim is about to record the exit status.
        Some(RuntimeStatus::Stopped) | None
            if shim_alive && !matches!(recorded, InstanceState::Created | InstanceState::Starting) =>
        {
            InstanceState::Stopping
        }
        Some(RuntimeStatus::Stopped) => InstanceState::Exited {
            code: None,
            signal: None,
            reason: "exited; status unknown (its shim is gone)".into(),
        },
        None if matches!(recorded, InstanceState::Created | InstanceState::Starting) => recorded.clone(),
        None => {
            InstanceState::Exited { code: None, signal: None, reason: "lost: the runtime no longer knows it".into() }
        }
    }
}

/// A volume and who uses it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VolumeInfo {
    pub service: String,
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub users: Vec<InstanceId>,
}

/// The instance runtime over one `$KILN_HOME`.
pub struct Runtime<'a> {
    pub store: &'a Store,
    pub driver: &'a dyn Driver,
    home: PathBuf,
    run_dir: PathBuf,
}

impl fmt::Debug for Runtime<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("home", &self.home).field("run_dir", &self.run_dir).finish()
    }
}

/// The tmpfs directory for a home: runc state, bundles, secret files.
pub fn run_dir(home: &Path) -> PathBuf {
    let abs = std::path::absolute(home).unwrap_or_else(|_| home.to_owned());
    let h = Digest::of(abs.as_os_str().as_encoded_bytes());
    PathBuf::from("/run/kiln").join(&h.hex()[..12])
}

fn now_ms() -> i64 {
    crate::time::now_ms() as i64
}

/// Atomic (rename) but not fsynced: these records describe running
/// containers, which a power loss ends anyway, while a crash of kiln keeps
/// the page cache. Skipping the fsyncs saves tens of ms per start.
fn write_json_atomic(path: &Path, value: &impl Serialize, mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(value).unwrap_or_default())?;
    fs::rename(&tmp, path)
}

fn valid_service(s: &str) -> bool {
    crate::spec::valid_image_name(s) && !s.contains('.')
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl<'a> Runtime<'a> {
    pub fn new(store: &'a Store, driver: &'a dyn Driver) -> Self {
        let home = store.home().to_owned();
        Runtime { store, driver, run_dir: run_dir(&home), home }
    }

    fn instances_dir(&self) -> PathBuf {
        self.home.join("instances")
    }
    fn instance_dir(&self, id: &InstanceId) -> PathBuf {
        self.instances_dir().join(id.as_str())
    }
    /// Where an instance's runtime bundle (its `config.json`) is.
    pub fn bundle_dir(&self, id: &InstanceId) -> PathBuf {
        self.run_dir.join("bundles").join(id.as_str())
    }
    fn secrets_dir(&self, id: &InstanceId) -> PathBuf {
        self.run_dir.join("secrets").join(id.as_str())
    }
    pub fn logs(&self) -> LogStore {
        LogStore::new(&self.home)
    }

    pub fn load(&self, id: &InstanceId) -> Result<InstanceRecord, RunError> {
        let path = self.instance_dir(id).join("instance.json");
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| RunError::Invalid(format!("{}: {e}", path.display())))
    }

    fn save(&self, r: &InstanceRecord) -> Result<(), RunError> {
        let path = self.instance_dir(&r.id).join("instance.json");
        write_json_atomic(&path, r, 0o644).map_err(io_err(&path))
    }

    /// The container's init process, as the shim recorded it.
    pub fn container_pid(&self, id: &InstanceId) -> Option<i32> {
        let bytes = fs::read(self.instance_dir(id).join("shim.json")).ok()?;
        serde_json::from_slice::<ShimStarted>(&bytes).ok().map(|s| s.container_pid)
    }

    /// The shim's record of how and when the container exited.
    /// The first `n` lines of an instance's output (stdout, then stderr).
    pub fn log_head(&self, id: &InstanceId, n: usize) -> Vec<String> {
        let dir = self.home.join("instances").join(id.as_str());
        let mut out = Vec::new();
        for (file, tag) in [("stdout.log", "out"), ("stderr.log", "err")] {
            let text = fs::read_to_string(dir.join(file)).unwrap_or_default();
            out.extend(text.lines().take(n.saturating_sub(out.len())).map(|l| format!("{tag}| {l}")));
        }
        out
    }

    pub fn exit_info(&self, id: &InstanceId) -> Option<ExitInfo> {
        serde_json::from_slice(&fs::read(self.instance_dir(id).join("exit.json")).ok()?).ok()
    }

    /// Observes and decides an instance's state, persisting a final one.
    pub fn observe(&self, r: &mut InstanceRecord) -> Result<(), RunError> {
        if r.state.is_exited() {
            return Ok(());
        }
        let exit = self.exit_info(&r.id);
        let shim_alive = exit.is_none() && self.shim_alive(&r.id);
        // The common case needs no `runc state` (a Go program starting, some
        // 10 ms, per instance per observation): running, its shim alive, no
        // exit recorded. The shim records the exit the moment it happens.
        if shim_alive && r.state == InstanceState::Running && !r.stop_requested {
            return Ok(());
        }
        let runtime = self.driver.state(r.id.as_str())?.map(|s| s.status);
        let state = decide_state(&r.state, r.stop_requested, exit.as_ref(), runtime, shim_alive);
        if state != r.state {
            r.state = state;
            if let Err(e) = self.save(r) {
                // Removed meanwhile by another kiln (kiln serve reaps an
                // instance a `kiln stop` beside it is waiting on): what was
                // observed stands, there is no record left to update. A
                // directory being removed still exists while its files go
                // (seen once: a 500 from /v1/status during an upgrade), so
                // a record not found is gone too.
                let not_found = matches!(&e, RunError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound);
                if !not_found && self.instance_dir(&r.id).exists() {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Whether the instance's shim process still runs (checked by pid and
    /// command line, so a reused pid does not count).
    fn shim_alive(&self, id: &InstanceId) -> bool {
        let Ok(bytes) = fs::read(self.instance_dir(id).join("shim.json")) else { return false };
        let Ok(s) = serde_json::from_slice::<ShimStarted>(&bytes) else { return false };
        let cmdline = fs::read(format!("/proc/{}/cmdline", s.shim_pid)).unwrap_or_default();
        let stat = fs::read_to_string(format!("/proc/{}/stat", s.shim_pid)).unwrap_or_default();
        let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        let mut args = cmdline.split(|&b| b == 0);
        !zombie && args.clone().any(|a| a == b"__shim") && args.any(|a| a == id.as_str().as_bytes())
    }

    /// Every instance record, oldest first.
    fn records(&self) -> Result<Vec<InstanceRecord>, RunError> {
        let dir = self.instances_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RunError::Io { path: dir, source: e }),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let id = InstanceId(e.file_name().to_string_lossy().into_owned());
            if let Ok(r) = self.load(&id) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Resolves an id or a unique prefix.
    pub fn find(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        if reference.is_empty() {
            // The prefix of every instance: never one of them.
            return Err(RunError::Invalid("name an instance (an id or a unique prefix of one)".into()));
        }
        let all = self.records()?;
        if let Some(r) = all.iter().find(|r| r.id.as_str() == reference) {
            return Ok(r.clone());
        }
        let hits: Vec<_> = all.into_iter().filter(|r| r.id.as_str().starts_with(reference)).collect();
        match hits.len() {
            1 => Ok(hits.into_iter().next().ok_or_else(|| RunError::NotFound(reference.to_owned()))?),
            0 => Err(RunError::NotFound(reference.to_owned())),
            _ => Err(RunError::Ambiguous {
                reference: reference.to_owned(),
                candidates: hits.iter().map(|r| r.id.to_string()).collect(),
            }),
        }
    }

    /// Observes every instance (adopting them), removes runtime containers
    /// no record knows, and returns the records plus the removed orphans.
    pub fn observe_all(&self) -> Result<(Vec<InstanceRecord>, Vec<String>), RunError> {
        // An instance removed meanwhile by another kiln is observed as it
        // was (see `observe`), not an error.
        let mut records = self.records()?;
        for r in &mut records {
            self.observe(r)?;
        }
        let mut orphans = Vec::new();
        for c in self.driver.list()? {
            if !records.iter().any(|r| r.id.as_str() == c.id) {
                self.driver.delete(&c.id, true)?;
                orphans.push(c.id);
            }
        }
        Ok((records, orphans))
    }

    /// Starts one instance and returns once it is running (or failed).
    pub fn run(&self, req: &RunRequest, launcher: &dyn Launcher, now: i64) -> Result<InstanceRecord, RunError> {
        let (desc, tags) = self.store.resolve(&req.reference)?;
        let prepared = images::prepare(self.store, &desc.digest)?;
        let service = match &req.service {
            Some(s) => s.clone(),
            None => prepared.manifest.annotation(oci::ANNOTATION_TITLE).unwrap_or("run").to_owned(),
        };
        if !valid_service(&service) {
            return Err(RunError::Invalid(format!("service name {service:?}: use lowercase letters, digits and '-'")));
        }
        if req.limits.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
            return Err(RunError::Invalid("cpus: must be a positive number of cores, at most 1024".into()));
        }
        if let Some((k, _)) = req.env.iter().find(|(k, _)| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(RunError::Invalid(format!(
                "environment variable name {k:?}: must be non-empty, without '=' or NUL"
            )));
        }
        if let Some((k, _)) = req.env.iter().find(|(_, v)| v.contains('\0')) {
            return Err(RunError::Invalid(format!("environment variable {k}: its value holds a NUL byte")));
        }
        for (name, dest) in &req.volumes {
            if !valid_service(name) && !crate::secrets::valid_name(name) {
                return Err(RunError::Invalid(format!("volume name {name:?}: use letters, digits, '_', '-'")));
            }
            if !dest.starts_with('/') || dest.split('/').any(|p| p == "..") {
                return Err(RunError::Invalid(format!(
                    "volume {name}: {dest:?} must be an absolute path without '..'"
                )));
            }
        }
        // Read all secrets first: a missing one fails before anything exists.
        let secrets = Secrets::new(&self.home);
        let mut values = Vec::new();
        let mut secret_versions = std::collections::BTreeMap::new();
        for s in &req.secrets {
            let v = if req.placeholder_secrets {
                crate::secrets::SecretValue::placeholder(&s.name)
            } else {
                // The version read with the value (a rotation in between
                // shows as the newer version on both).
                let v = secrets.get(&s.name)?;
                secret_versions.insert(s.name.clone(), secrets.version(&s.name)?);
                v
            };
            values.push((s, v));
        }
        let id = InstanceId::generate(&service).map_err(io_err(Path::new("/dev/urandom")))?;
        let cfg = &prepared.config.config;
        let read = |p: &str| fs::read_to_string(prepared.rootfs.join(p)).ok();
        let (uid, gid) =
            bundle::resolve_user(cfg.user.as_deref(), read("etc/passwd").as_deref(), read("etc/group").as_deref())
                .map_err(RunError::Invalid)?;
        let port = free_port().map_err(io_err(Path::new("127.0.0.1")))?;

        let mut volumes = Vec::new();
        for (name, dest) in &req.volumes {
            let dir = self.home.join("volumes").join(&service).join(name);
            if !dir.exists() {
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                // The instance's user owns a new volume, so it can write to it.
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io_err(&dir))?;
            }
            volumes.push((dir, dest.clone()));
        }

        let sdir = self.secrets_dir(&id);
        let mut env = req.env.clone();
        let mut secret_files = Vec::new();
        if !values.is_empty() {
            fs::create_dir_all(&sdir).map_err(io_err(&sdir))?;
            fs::set_permissions(&sdir, fs::Permissions::from_mode(0o700)).map_err(io_err(&sdir))?;
        }
        for (s, v) in &values {
            let path = sdir.join(&s.name);
            let mut f =
                OpenOptions::new().write(true).create_new(true).mode(0o400).open(&path).map_err(io_err(&path))?;
            f.write_all(v.expose()).map_err(io_err(&path))?;
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io_err(&path))?;
            secret_files.push((path, s.name.clone()));
            if let Some(var) = &s.env {
                let text = std::str::from_utf8(v.expose()).map_err(|_| {
                    RunError::Invalid(format!(
                        "secret {} is not UTF-8, so it cannot be an environment variable",
                        s.name
                    ))
                })?;
                env.push((var.clone(), text.to_owned()));
            }
        }

        let cgroup = format!("/kiln/{id}");
        let config = bundle::runtime_config(&InstanceConfig {
            id: id.as_str(),
            rootfs: &prepared.rootfs,
            image: cfg,
            env: &env,
            port,
            uid,
            gid,
            volumes: &volumes,
            secret_files: &secret_files,
            limits: req.limits,
            cgroup: &cgroup,
        })?;
        let bdir = self.bundle_dir(&id);
        fs::create_dir_all(&bdir).map_err(io_err(&bdir))?;
        fs::set_permissions(&bdir, fs::Permissions::from_mode(0o700)).map_err(io_err(&bdir))?;
        write_json_atomic(&bdir.join("config.json"), &config, 0o600).map_err(io_err(&bdir))?;

        let idir = self.instance_dir(&id);
        fs::create_dir_all(&idir).map_err(io_err(&idir))?;
        let mut record = InstanceRecord {
            id: id.clone(),
            service,
            image: desc.digest.clone(),
            image_ref: tags
                .iter()
                .find(|t| *t == &req.reference)
                .or(tags.first())
                .cloned()
                .unwrap_or_else(|| desc.digest.to_string()),
            revision: prepared.manifest.annotation(oci::ANNOTATION_REVISION).map(str::to_owned),
            release: req.release.clone(),
            port,
            created: now,
            volumes: req.volumes.clone(),
            secrets: req.secrets.clone(),
            stop_signal: cfg.stop_signal.clone().unwrap_or_else(|| "SIGTERM".into()),
            stop_grace_secs: req.stop_grace_secs.unwrap_or(10),
            limits: req.limits,
            state: InstanceState::Created,
            stop_requested: false,
            started_ms: 0,
            release_fields: req.release_fields.clone(),
            secret_versions,
        };
        self.save(&record)?;
        record.state = InstanceState::Starting;
        self.save(&record)?;
        let mut report = launcher
            .launch(&self.home, &id)
            .map_err(|e| RunError::StartFailed { id: id.clone(), message: format!("cannot start the shim: {e}") })?;
        // The shim writes one line once the container runs or failed; EOF
        // without it means the shim died (its stderr is in shim.log).
        let mut line = String::new();
        let _ = io::BufRead::read_line(&mut io::BufReader::new(&mut report), &mut line);
        if line.trim() != "started" {
            let msg = match line.trim().strip_prefix("error: ") {
                Some(m) => m.to_owned(),
                None => fs::read_to_string(idir.join("start-error"))
                    .unwrap_or_else(|_| "the shim exited without reporting (see shim.log)".into()),
            };
            let _ = self.driver.delete(id.as_str(), true);
            self.cleanup(&id);
            record.state =
                InstanceState::Exited { code: None, signal: None, reason: format!("failed to start: {msg}") };
            self.save(&record)?;
            return Err(RunError::StartFailed { id, message: msg });
        }
        record.state = InstanceState::Running;
        record.started_ms = now_ms();
        self.save(&record)?;
        Ok(record)
    }

    /// Removes the tmpfs leftovers of an instance.
    fn cleanup(&self, id: &InstanceId) {
        let _ = fs::remove_dir_all(self.bundle_dir(id));
        let _ = fs::remove_dir_all(self.secrets_dir(id));
    }

    fn wait_exit(&self, r: &mut InstanceRecord, timeout: Duration) -> Result<bool, RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.observe(r)?;
            if r.state.is_exited() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the stop signal, waits the grace period, then kills.
    pub fn stop(&self, reference: &str, grace: Option<Duration>) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if r.state.is_exited() {
            return Ok(r);
        }
        r.stop_requested = true;
        self.save(&r)?;
        let id = r.id.to_string();
        if r.state == InstanceState::Paused {
            let _ = self.driver.resume(&id);
        }
        let grace = grace.unwrap_or(Duration::from_secs(r.stop_grace_secs));
        let _ = self.driver.signal(&id, &r.stop_signal);
        if !self.wait_exit(&mut r, grace)? {
            let _ = self.driver.signal(&id, "SIGKILL");
            if !self.wait_exit(&mut r, Duration::from_secs(10))? {
                return Err(RunError::Invalid(format!("instance {id} did not exit after SIGKILL")));
            }
        }
        self.cleanup(&r.id);
        Ok(r)
    }

    /// Asks an instance to stop and returns at once: the stop is recorded,
    /// then its stop signal (SIGKILL with `kill`) is sent. For callers that
    /// cannot wait (the release controller's loop); they call it again with
    /// `kill` once the grace period is over, and remove the instance once
    /// it has exited. Idempotent.
    pub fn request_stop(&self, reference: &str, kill: bool) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if r.state.is_exited() {
            return Ok(r);
        }
        if !r.stop_requested {
            r.stop_requested = true;
            self.save(&r)?;
        }
        let id = r.id.to_string();
        if r.state == InstanceState::Paused {
            let _ = self.driver.resume(&id);
        }
        let _ = self.driver.signal(&id, if kill { "SIGKILL" } else { &r.stop_signal });
        Ok(r)
    }

    /// SIGKILLs an instance without recording a stop: to whoever watches it,
    /// it failed (chaos testing). Idempotent once it has exited.
    pub fn kill(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if !r.state.is_exited() {
            self.driver.signal(r.id.as_str(), "SIGKILL")?;
        }
        Ok(r)
    }

    /// Freezes an instance (quarantine): out of traffic, processes kept.
    pub fn pause(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.driver.pause(r.id.as_str())?;
        // Recorded at once: observing a running instance skips `runc state`.
        if r.state == InstanceState::Running {
            r.state = InstanceState::Paused;
            self.save(&r)?;
        }
        self.observe(&mut r)?;
        Ok(r)
    }

    pub fn resume(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.driver.resume(r.id.as_str())?;
        if r.state == InstanceState::Paused {
            r.state = InstanceState::Running;
            self.save(&r)?;
        }
        self.observe(&mut r)?;
        Ok(r)
    }

    /// Removes an exited instance (or, with `force`, kills it first). Its
    /// logs stay in the central store.
    pub fn remove(&self, reference: &str, force: bool) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if !r.state.is_exited() {
            if !force {
                return Err(RunError::NotExited(r.id.clone(), r.state.name()));
            }
            r = self.stop(r.id.as_str(), Some(Duration::ZERO))?;
        }
        self.logs()
            .ingest(&self.log_meta(&r), &self.instance_dir(&r.id), now_ms(), true)
            .map_err(io_err(&self.home))?;
        self.driver.delete(r.id.as_str(), true)?;
        self.cleanup(&r.id);
        let dir = self.instance_dir(&r.id);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(r)
    }

    pub fn log_meta(&self, r: &InstanceRecord) -> LogMeta {
        LogMeta {
            service: r.service.clone(),
            instance: r.id.to_string(),
            image: r.image.to_string(),
            revision: r.revision.clone(),
            release: r.release.clone(),
        }
    }

    /// Moves pending log lines of every instance into the central store.
    pub fn ingest_all(&self) -> Result<(), RunError> {
        for r in self.records()? {
            self.logs()
                .ingest(&self.log_meta(&r), &self.instance_dir(&r.id), now_ms(), r.state.is_exited())
                .map_err(io_err(&self.home))?;
        }
        Ok(())
    }

    /// Ids of instances that still exist (for log retention).
    pub fn live_ids(&self) -> Result<std::collections::HashSet<String>, RunError> {
        Ok(self.records()?.into_iter().map(|r| r.id.to_string()).collect())
    }

    /// Named volumes with their size and the instances using them.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, RunError> {
        let root = self.home.join("volumes");
        let records = self.records()?;
        let mut out = Vec::new();
        let Ok(services) = fs::read_dir(&root) else { return Ok(out) };
        for s in services.flatten() {
            let service = s.file_name().to_string_lossy().into_owned();
            for v in fs::read_dir(s.path()).map_err(io_err(&s.path()))?.flatten() {
                let name = v.file_name().to_string_lossy().into_owned();
                let users = records
                    .iter()
                    .filter(|r| {
                        r.service == service && !r.state.is_exited() && r.volumes.iter().any(|(n, _)| *n == name)
                    })
                    .map(|r| r.id.clone())
                    .collect();
                out.push(VolumeInfo { service: service.clone(), name, path: v.path(), bytes: du(&v.path()), users });
            }
        }
        out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(out)
    }
}

fn du(path: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(path) else { return 0 };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(path).map(|d| d.flatten().map(|e| du(&e.path())).sum()).unwrap_or(0)
}

/// The shim: started detached by [`ShimLauncher`] as `kiln __shim ID`.
/// Creates and starts the container as this process's descendant (it is a
/// child subreaper, so it can read the exit status), removes the bundle and
/// secret files once the container holds them, moves log lines to the
/// central store every 200 ms, and records the exit. Returns the process
/// exit code.
pub fn shim(store: &Store, driver: &dyn Driver, id: &str) -> i32 {
    match shim_inner(store, driver, id) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kiln shim {id}: {e}");
            1
        }
    }
}

/// Writes the shim's one-line report to its stdout (a pipe to `kiln run`),
/// then points stdout at /dev/null: the reader is gone soon after.
fn report(line: &str) {
    let mut out = io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(null) = fs::File::open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 with a valid open fd; no memory is involved.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

fn shim_inner(store: &Store, driver: &dyn Driver, id: &str) -> Result<(), RunError> {
    let rt = Runtime::new(store, driver);
    let id = InstanceId(id.to_owned());
    let record = rt.load(&id)?;
    let idir = rt.instance_dir(&id);
    let fail = |message: String| {
        let _ = fs::write(idir.join("start-error"), &message);
        report(&format!("error: {}", message.replace('\n', " ")));
        RunError::StartFailed { id: id.clone(), message }
    };
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and has no
    // memory-safety preconditions.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(fail(format!("cannot become a subreaper: {}", io::Error::last_os_error())));
    }
    let open = |name: &str| OpenOptions::new().create(true).append(true).mode(0o640).open(idir.join(name));
    let (out, err) = match (open("stdout.log"), open("stderr.log")) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return Err(fail(format!("cannot open the log files: {e}"))),
    };
    let pid = match driver.run_detached(id.as_str(), &rt.bundle_dir(&id), out, err) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = driver.delete(id.as_str(), true);
            let tail = fs::read_to_string(idir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            return Err(fail(format!("{e}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" / "))));
        }
    };
    // The container holds its config and secret mounts now; the clear
    // copies on tmpfs are no longer needed.
    rt.cleanup(&id);
    rt.keep_runtime_config(&id, &idir);
    let started = ShimStarted { shim_pid: std::process::id() as i32, container_pid: pid };
    write_json_atomic(&idir.join("shim.json"), &started, 0o644).map_err(io_err(&idir))?;
    report("started");

    let meta = rt.log_meta(&record);
    let logs = rt.logs();
    let done = std::sync::atomic::AtomicBool::new(false);
    let status = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = logs.ingest(&meta, &idir, now_ms(), false);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // Reap every child (as subreaper the shim inherits the container's
        // orphans too) until the container itself exits.
        let status = loop {
            let mut st: libc::c_int = 0;
            // SAFETY: waitpid writes only into `st`, a valid local.
            let r = unsafe { libc::waitpid(-1, &mut st, 0) };
            if r == pid {
                break st;
            }
            if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                // No children left: the container is gone without a status.
                break -1;
            }
        };
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        status
    });
    let _ = logs.ingest(&meta, &idir, now_ms(), true);
    let exit = ExitInfo {
        code: (status >= 0 && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status)),
        signal: (status >= 0 && libc::WIFSIGNALED(status)).then(|| libc::WTERMSIG(status)),
        at: now_ms() / 1000,
        at_ms: now_ms(),
    };
    write_json_atomic(&idir.join("exit.json"), &exit, 0o644).map_err(io_err(&idir))?;
    let _ = driver.delete(id.as_str(), true);
    Ok(())
}

#[cfg(test)]
mod tests;
