//! The container runtime seam: a narrow [`Driver`] trait, [`RuncDriver`]
//! (Debian's `runc`), and [`RecordingDriver`] for unit tests of the code
//! above it. A Docker Engine driver can implement the same trait later.
//!
//! runc's state (`--root`) lives on tmpfs under `/run/kiln/`, because it
//! holds a copy of each config, environment included.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde::Deserialize;

/// What the runtime says about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    pub id: String,
    pub status: RuntimeStatus,
    pub pid: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeStatus {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot run {program}: {source} (is it installed? `apt-get install runc`)")]
    Spawn { program: String, source: std::io::Error },
    #[error("runc {op} {id}: {message}")]
    Failed { op: String, id: String, message: String },
}

/// Create, start, signal, pause/resume, inspect, delete and list containers.
pub trait Driver: Send + Sync {
    /// Creates the container from `bundle`; its stdout and stderr are
    /// written straight to the given files.
    fn create(&self, id: &str, bundle: &Path, stdout: File, stderr: File) -> Result<(), DriverError>;
    fn start(&self, id: &str) -> Result<(), DriverError>;
    /// Creates and starts in one step, returning the container's pid.
    fn run_detached(&self, id: &str, bundle: &Path, stdout: File, stderr: File) -> Result<i32, DriverError> {
        self.create(id, bundle, stdout, stderr)?;
        let pid = self.state(id)?.map(|s| s.pid).ok_or_else(|| DriverError::Failed {
            op: "state".into(),
            id: id.into(),
            message: "the container vanished after create".into(),
        })?;
        self.start(id)?;
        Ok(pid)
    }
    fn signal(&self, id: &str, signal: &str) -> Result<(), DriverError>;
    fn pause(&self, id: &str) -> Result<(), DriverError>;
    fn resume(&self, id: &str) -> Result<(), DriverError>;
    /// `None` if the runtime does not know the container.
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, DriverError>;
    fn delete(&self, id: &str, force: bool) -> Result<(), DriverError>;
    fn list(&self) -> Result<Vec<RuntimeState>, DriverError>;
    /// The runtime config as the runtime holds it for a running container
    /// (runc: the `config` of its `state.json`); `None` if it holds none.
    fn config(&self, id: &str) -> Result<Option<serde_json::Value>, DriverError>;
    /// Shows the image tree `src` at `dst` (an empty directory) read-only,
    /// its ids shifted into `range`: an instance's root in its user
    /// namespace ([`super::userns::mount_idmapped`]).
    fn mount_root(&self, src: &Path, dst: &Path, range: super::userns::Range) -> std::io::Result<()> {
        super::userns::mount_idmapped(src, dst, range)
    }
    /// Undoes [`Driver::mount_root`] (and removes the empty directory).
    fn unmount_root(&self, dst: &Path) {
        super::userns::unmount(dst)
    }
}

#[derive(Debug, Clone)]
pub struct RuncDriver {
    pub program: PathBuf,
    pub root: PathBuf,
}

#[derive(Deserialize)]
struct RuncState {
    id: String,
    status: String,
    #[serde(default)]
    pid: i32,
}

fn status(s: &str) -> RuntimeStatus {
    match s {
        "created" | "creating" => RuntimeStatus::Created,
        "running" => RuntimeStatus::Running,
        "paused" | "pausing" => RuntimeStatus::Paused,
        _ => RuntimeStatus::Stopped,
    }
}

impl RuncDriver {
    pub fn new(root: PathBuf) -> Self {
        let program = std::env::var_os("KILN_RUNC").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("runc"));
        RuncDriver { program, root }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--root").arg(&self.root).args(args).stdin(Stdio::null());
        c
    }

    fn run(&self, op: &str, id: &str, mut cmd: Command) -> Result<Vec<u8>, DriverError> {
        let out = cmd
            .output()
            .map_err(|source| DriverError::Spawn { program: self.program.display().to_string(), source })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            Err(DriverError::Failed { op: op.into(), id: id.into(), message })
        }
    }
}

impl Driver for RuncDriver {
    fn create(&self, id: &str, bundle: &Path, stdout: File, stderr: File) -> Result<(), DriverError> {
        let mut c = self.command(&["create", "--bundle"]);
        c.arg(bundle).arg(id).stdout(stdout).stderr(stderr);
        let status =
            c.status().map_err(|source| DriverError::Spawn { program: self.program.display().to_string(), source })?;
        if status.success() {
            Ok(())
        } else {
            let message =
                format!("exited with {status}; runc's own message is at the end of the instance's stderr log");
            Err(DriverError::Failed { op: "create".into(), id: id.into(), message })
        }
    }
    fn start(&self, id: &str) -> Result<(), DriverError> {
        self.run("start", id, self.command(&["start", id])).map(drop)
    }
    /// One `runc run --detach` instead of create, state and start: each
    /// runc invocation is a Go program starting, several ms here.
    fn run_detached(&self, id: &str, bundle: &Path, stdout: File, stderr: File) -> Result<i32, DriverError> {
        let pid_file = bundle.join("pid");
        let mut c = self.command(&["run", "--detach", "--pid-file"]);
        c.arg(&pid_file).arg("--bundle").arg(bundle).arg(id).stdout(stdout).stderr(stderr);
        let status =
            c.status().map_err(|source| DriverError::Spawn { program: self.program.display().to_string(), source })?;
        if !status.success() {
            let message =
                format!("exited with {status}; runc's own message is at the end of the instance's stderr log");
            return Err(DriverError::Failed { op: "run".into(), id: id.into(), message });
        }
        std::fs::read_to_string(&pid_file).ok().and_then(|p| p.trim().parse().ok()).ok_or_else(|| DriverError::Failed {
            op: "run".into(),
            id: id.into(),
            message: "no pid file".into(),
        })
    }
    fn signal(&self, id: &str, signal: &str) -> Result<(), DriverError> {
        self.run("kill", id, self.command(&["kill", id, signal])).map(drop)
    }
    fn pause(&self, id: &str) -> Result<(), DriverError> {
        self.run("pause", id, self.command(&["pause", id])).map(drop)
    }
    fn resume(&self, id: &str) -> Result<(), DriverError> {
        self.run("resume", id, self.command(&["resume", id])).map(drop)
    }
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, DriverError> {
        match self.run("state", id, self.command(&["state", id])) {
            Ok(out) => {
                let s: RuncState = serde_json::from_slice(&out).map_err(|e| DriverError::Failed {
                    op: "state".into(),
                    id: id.into(),
                    message: e.to_string(),
                })?;
                Ok(Some(RuntimeState { id: s.id, status: status(&s.status), pid: s.pid }))
            }
            Err(DriverError::Failed { message, .. }) if message.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn delete(&self, id: &str, force: bool) -> Result<(), DriverError> {
        let args: &[&str] = if force { &["delete", "--force", id] } else { &["delete", id] };
        match self.run("delete", id, self.command(args)) {
            Err(DriverError::Failed { message, .. }) if message.contains("does not exist") => Ok(()),
            other => other.map(drop),
        }
    }
    fn list(&self) -> Result<Vec<RuntimeState>, DriverError> {
        // `runc list` fails when a container's state directory vanishes
        // while it reads them (a shim deleting its exited container): that
        // race is retried, a lasting failure is not.
        let mut tries = 0;
        let out = loop {
            match self.run("list", "", self.command(&["list", "--format", "json"])) {
                Ok(out) => break out,
                Err(DriverError::Failed { message, .. })
                    if tries < 3 && message.contains("no such file or directory") =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        let list: Option<Vec<RuncState>> = serde_json::from_slice(&out).map_err(|e| DriverError::Failed {
            op: "list".into(),
            id: String::new(),
            message: e.to_string(),
        })?;
        Ok(list
            .unwrap_or_default()
            .into_iter()
            .map(|s| RuntimeState { id: s.id, status: status(&s.status), pid: s.pid })
            .collect())
    }
    fn config(&self, id: &str) -> Result<Option<serde_json::Value>, DriverError> {
        // Read, not `runc state` (which does not print the config): runc
        // writes this file atomically, on create and on `runc update`.
        let path = self.root.join(id).join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DriverError::Failed { op: "config".into(), id: id.into(), message: e.to_string() }),
        };
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| DriverError::Failed {
            op: "config".into(),
            id: id.into(),
            message: format!("{}: {e}", path.display()),
        })?;
        Ok(Some(v["config"].take()).filter(|c| !c.is_null()))
    }
}

/// A fake that keeps containers in memory and records every call.
#[derive(Debug, Default)]
pub struct RecordingDriver {
    pub calls: Mutex<Vec<String>>,
    pub containers: Mutex<Vec<RuntimeState>>,
    /// What [`Driver::config`] answers, by container id.
    pub configs: Mutex<std::collections::HashMap<String, serde_json::Value>>,
}

impl RecordingDriver {
    fn record(&self, call: String) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
    fn set(&self, id: &str, status: RuntimeStatus) -> Result<(), DriverError> {
        let mut cs = self.containers.lock().map_err(|_| DriverError::Failed {
            op: "lock".into(),
            id: id.into(),
            message: "poisoned".into(),
        })?;
        match cs.iter_mut().find(|c| c.id == id) {
            Some(c) => {
                c.status = status;
                Ok(())
            }
            None => {
                Err(DriverError::Failed { op: "set".into(), id: id.into(), message: "container does not exist".into() })
            }
        }
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Driver for RecordingDriver {
    fn create(&self, id: &str, bundle: &Path, _: File, _: File) -> Result<(), DriverError> {
        self.record(format!("create {id} {}", bundle.display()));
        if let Ok(mut cs) = self.containers.lock() {
            cs.push(RuntimeState { id: id.into(), status: RuntimeStatus::Created, pid: 4242 });
        }
        Ok(())
    }
    fn start(&self, id: &str) -> Result<(), DriverError> {
        self.record(format!("start {id}"));
        self.set(id, RuntimeStatus::Running)
    }
    fn signal(&self, id: &str, signal: &str) -> Result<(), DriverError> {
        self.record(format!("signal {id} {signal}"));
        if signal == "SIGKILL" {
            self.set(id, RuntimeStatus::Stopped)?;
        }
        Ok(())
    }
    fn pause(&self, id: &str) -> Result<(), DriverError> {
        self.record(format!("pause {id}"));
        self.set(id, RuntimeStatus::Paused)
    }
    fn resume(&self, id: &str) -> Result<(), DriverError> {
        self.record(format!("resume {id}"));
        self.set(id, RuntimeStatus::Running)
    }
    fn state(&self, id: &str) -> Result<Option<RuntimeState>, DriverError> {
        Ok(self.containers.lock().ok().and_then(|cs| cs.iter().find(|c| c.id == id).cloned()))
    }
    fn delete(&self, id: &str, force: bool) -> Result<(), DriverError> {
        self.record(format!("delete {id} force={force}"));
        if let Ok(mut cs) = self.containers.lock() {
            cs.retain(|c| c.id != id);
        }
        Ok(())
    }
    fn list(&self) -> Result<Vec<RuntimeState>, DriverError> {
        Ok(self.containers.lock().map(|c| c.clone()).unwrap_or_default())
    }
    fn config(&self, id: &str) -> Result<Option<serde_json::Value>, DriverError> {
        Ok(self.configs.lock().ok().and_then(|c| c.get(id).cloned()))
    }
    fn mount_root(&self, src: &Path, dst: &Path, range: super::userns::Range) -> std::io::Result<()> {
        self.record(format!("mount_root {} {} {}", src.display(), dst.display(), range.base));
        Ok(())
    }
    fn unmount_root(&self, dst: &Path) {
        self.record(format!("unmount_root {}", dst.display()));
        let _ = std::fs::remove_dir(dst);
    }
}
