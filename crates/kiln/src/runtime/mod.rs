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
//!
//! Its parts: [`model`] (ids, states, records, requests, errors and the
//! pure [`decide_state`]), [`shim`] (the supervisor process and its
//! [`Launcher`]), this file (the lifecycle: run, observe, stop, remove,
//! pause, volumes), and the modules below.

pub mod bundle;
pub mod drift;
pub mod driver;
pub mod images;
mod lifecycle;
pub mod logs;
pub mod model;
pub mod postmortem;
pub mod sandbox_exec;
pub mod seccomp;
pub mod seccomp_bpf;
pub mod shim;
pub mod userns;

pub use model::*;
pub use shim::{shim, Launcher, ShimLauncher};

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::digest::Digest;
use crate::image::store::Store;
use crate::oci;
use crate::secrets::Secrets;
use bundle::InstanceConfig;
use driver::Driver;
use logs::{LogMeta, LogStore};

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |source| RunError::Io { path: path.to_owned(), source }
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
    /// runc mounts an instance's root and secrets from inside its user
    /// namespace, as a uid the host does not know: every directory above
    /// them must let others pass (not list). What lies below stays closed:
    /// bundles are 0700, each instance's secrets 0700 and owned by its root.
    fn traversable_run_dir(&self) -> io::Result<()> {
        for d in [Path::new("/run/kiln"), self.run_dir.as_path()] {
            fs::create_dir_all(d)?;
            let mode = fs::metadata(d)?.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(d, fs::Permissions::from_mode((mode & 0o7777) | 0o711))?;
            }
        }
        Ok(())
    }

    /// Where the image tree is idmapped for an instance in a user namespace
    /// (outside its bundle, which is removed recursively).
    fn idmapped_root(&self, id: &InstanceId) -> PathBuf {
        self.run_dir.join("rootfs").join(id.as_str())
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
    pub fn records(&self) -> Result<Vec<InstanceRecord>, RunError> {
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
        let secrets = match &req.secret_store {
            Some(dir) => Secrets::fleet(dir, &self.home),
            None => Secrets::new(&self.home),
        };
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
        // The service's user namespace range: its ids as the host sees them.
        let range = match req.sandbox.userns {
            true => Some(userns::range_for(&self.home, &service).map_err(io_err(&self.home.join("userns.json")))?),
            false => None,
        };
        let (host_uid, host_gid) = range.map_or((uid, gid), |r| (r.host(uid), r.host(gid)));

        let mut volumes = Vec::new();
        for (name, dest) in &req.volumes {
            let dir = self.home.join("volumes").join(&service).join(name);
            if !dir.exists() {
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                // The instance's user owns a new volume, so it can write to it.
                std::os::unix::fs::chown(&dir, Some(host_uid), Some(host_gid)).map_err(io_err(&dir))?;
            } else if let Some(r) = range {
                // Made before the service had a range: shifted into it once.
                userns::shift_volume(&dir, r).map_err(io_err(&dir))?;
            }
            volumes.push((dir, dest.clone()));
        }

        let sdir = self.secrets_dir(&id);
        let mut env = req.env.clone();
        let mut secret_files = Vec::new();
        if !values.is_empty() {
            fs::create_dir_all(&sdir).map_err(io_err(&sdir))?;
            fs::set_permissions(&sdir, fs::Permissions::from_mode(0o700)).map_err(io_err(&sdir))?;
            if let Some(r) = range {
                // Its root passes through (and nobody else).
                std::os::unix::fs::chown(&sdir, Some(r.host(0)), Some(r.host(0))).map_err(io_err(&sdir))?;
            }
        }
        for (s, v) in &values {
            let path = sdir.join(&s.name);
            let mut f =
                OpenOptions::new().write(true).create_new(true).mode(0o400).open(&path).map_err(io_err(&path))?;
            f.write_all(v.expose()).map_err(io_err(&path))?;
            std::os::unix::fs::fchown(&f, Some(host_uid), Some(host_gid)).map_err(io_err(&path))?;
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
        // Under a user namespace the shared image tree is shown to the
        // instance through a read-only idmapped mount of its own.
        // (Mounted just before the shim starts, see below.)
        let rootfs = match range {
            Some(_) => self.idmapped_root(&id),
            None => prepared.rootfs.clone(),
        };
        let sandbox_exec = match req.sandbox.seccomp {
            crate::spec::sandbox::Seccomp::Default => {
                let root = self.run_dir.parent().unwrap_or(&self.run_dir);
                sandbox_exec::install(root).map_err(io_err(&root.join("sandbox")))?
            }
            _ => None,
        };
        let config = bundle::runtime_config(&InstanceConfig {
            id: id.as_str(),
            rootfs: &rootfs,
            image: cfg,
            env: &env,
            port,
            uid,
            gid,
            volumes: &volumes,
            secret_files: &secret_files,
            limits: req.limits,
            cgroup: &cgroup,
            sandbox: &req.sandbox,
            userns: range,
            sandbox_exec: sandbox_exec.as_deref(),
        })?;
        if sandbox_exec.is_some() {
            let process = &config["process"];
            let program = process["args"][2].as_str().unwrap_or_default();
            let cwd = process["cwd"].as_str().unwrap_or("/");
            let env: Vec<String> = serde_json::from_value(process["env"].clone()).unwrap_or_default();
            if !sandbox_exec::find_program(&prepared.rootfs, cwd, program, &env) {
                let path = env.iter().find(|e| e.starts_with("PATH=")).cloned().unwrap_or_else(|| "no PATH".into());
                return Err(RunError::NoProgram { program: program.to_owned(), cwd: cwd.to_owned(), path });
            }
        }
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
        if let Some(r) = range {
            // runc cannot make a volume's mount point in a read-only root:
            // it is made in the image tree first, as runc made it before (an
            // empty directory the cache check allows).
            for (_, dest) in &volumes {
                let point = prepared.rootfs.join(dest.trim_start_matches('/'));
                if !point.exists() {
                    fs::create_dir_all(&point).map_err(io_err(&point))?;
                }
            }
            let mounted = self
                .traversable_run_dir()
                .and_then(|_| fs::create_dir_all(&rootfs))
                .and_then(|_| self.driver.mount_root(&prepared.rootfs, &rootfs, r));
            if let Err(e) = mounted {
                self.cleanup(&id);
                let message = format!("{}: {e}; `userns = false` runs it without a user namespace", rootfs.display());
                record.state = InstanceState::Exited { code: None, signal: None, reason: message.clone() };
                self.save(&record)?;
                return Err(RunError::StartFailed { id, message });
            }
        }
        let mut report = launcher.launch(&self.home, &id).map_err(|e| {
            self.cleanup(&id);
            RunError::StartFailed { id: id.clone(), message: format!("cannot start the shim: {e}") }
        })?;
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
        let root = self.idmapped_root(id);
        if root.exists() {
            self.driver.unmount_root(&root);
        }
        let _ = fs::remove_dir_all(self.bundle_dir(id));
        let _ = fs::remove_dir_all(self.secrets_dir(id));
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

#[cfg(test)]
mod tests;
