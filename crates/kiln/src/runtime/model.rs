//! The instance model: ids, states, records, requests, errors, and
//! [`decide_state`], the pure decision of an instance's state from what
//! was observed.
//!
//! For: the types every part of the runtime (and the controller) shares.
//! Must never: do I/O.

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::bundle::{BundleError, Limits};
use super::driver::{DriverError, RuntimeStatus};
use super::images::CacheError;
use crate::digest::Digest;
use crate::image::store::StoreError;
use crate::secrets::SecretError;

/// `<service>-<8 hex>`; also the container id and the hostname.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(pub(crate) String);

impl InstanceId {
    pub(crate) fn generate(service: &str) -> io::Result<Self> {
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
pub(crate) struct ShimStarted {
    pub(crate) shim_pid: i32,
    pub(crate) container_pid: i32,
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
    /// Seccomp and capabilities: the default sandbox unless the request is
    /// for a `[service.NAME]` that says otherwise. Never from outside: an
    /// API body cannot ask for privileges its kiln.toml does not give.
    #[serde(skip)]
    pub sandbox: crate::spec::sandbox::SandboxSpec,
    /// Where `secrets` are read from instead of this host's store: a
    /// fleet's sealed files for this start. Only a fleet agent sets it.
    #[serde(skip)]
    pub secret_store: Option<std::path::PathBuf>,
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
            sandbox: service.sandbox.clone(),
            release_fields: flags.release_fields,
            secret_store: flags.secret_store,
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
    #[error("the image's program {program:?} is not an executable file in its tree (looked up from {cwd:?} in {path}), so the instance cannot start")]
    NoProgram { program: String, cwd: String, path: String },
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
