//! Running a `run` step's command inside the image's filesystem.
//!
//! [`Sandbox`] is the narrow seam: the baker hands it a rootfs and a
//! command and gets the exit status; [`Runc`] is the real implementation
//! (Debian's `runc`, no network, fresh pid/ipc/uts/mount namespaces, a
//! docker-like capability set); [`RecordingSandbox`] records calls for unit
//! tests. The sandbox never decides what the step's layer contains: the
//! baker diffs the rootfs afterwards.

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    /// The rootfs; it must be a directory named `rootfs` inside a bundle
    /// directory the sandbox may write its config into.
    pub rootfs: &'a Path,
    pub command: &'a str,
    pub env: &'a [String],
    pub workdir: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot start {program}: {source} (is it installed? `apt-get install runc`)")]
    Spawn { program: String, source: io::Error },
    #[error("the command exited with status {code}{}", if tail.is_empty() { String::new() } else { format!("; last output:\n{tail}") })]
    Failed { code: i32, tail: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Runs a shell command inside a root filesystem.
pub trait Sandbox {
    /// Runs `spec.command` with `/bin/sh -c`, passing each output line to
    /// `output`. Ok only if the command exits 0.
    fn run(&self, spec: &RunSpec<'_>, output: &mut dyn FnMut(&str)) -> Result<(), SandboxError>;
}

/// The real sandbox: `runc run` on a bundle made for the step.
#[derive(Debug, Clone)]
pub struct Runc {
    pub program: PathBuf,
    /// runc's own state directory (`--root`), kept apart from the system's.
    pub state_root: PathBuf,
}

impl Runc {
    pub fn new(state_root: PathBuf) -> Self {
        let program = std::env::var_os("KILN_RUNC").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("runc"));
        Runc { program, state_root }
    }
}

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// The OCI runtime config for a build step. Pure, so it can be checked.
pub fn bake_config(spec: &RunSpec<'_>, id: &str) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/sh", "-c", spec.command],
            "env": spec.env,
            "cwd": spec.workdir,
            "capabilities": { "bounding": CAPS, "effective": CAPS, "permitted": CAPS },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "kiln-bake",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
        ],
        "linux": {
            "cgroupsPath": format!("/kiln/{id}"),
            // A new, empty network namespace: loopback only, so no network.
            "namespaces": [{ "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

impl Sandbox for Runc {
    fn run(&self, spec: &RunSpec<'_>, output: &mut dyn FnMut(&str)) -> Result<(), SandboxError> {
        let bundle = spec.rootfs.parent().ok_or_else(|| io::Error::other("rootfs has no parent directory"))?;
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!("kiln-bake-{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&bake_config(spec, &id)).unwrap_or_default(),
        )?;
        std::fs::create_dir_all(&self.state_root)?;
        let (reader, writer) = io::pipe()?;
        let mut child = Command::new(&self.program)
            .arg("--root")
            .arg(&self.state_root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .spawn()
            .map_err(|source| SandboxError::Spawn { program: self.program.display().to_string(), source })?;
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(reader).lines() {
            let line = line.unwrap_or_else(|e| format!("<unreadable output: {e}>"));
            output(&line);
            if tail.len() == 20 {
                tail.remove(0);
            }
            tail.push(line);
        }
        let status = child.wait()?;
        // `runc run` removes the container when it exits; this catches the
        // case where runc itself failed half-way.
        let _ = Command::new(&self.program)
            .arg("--root")
            .arg(&self.state_root)
            .args(["delete", "--force", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(bundle.join("config.json"));
        if status.success() {
            Ok(())
        } else {
            Err(SandboxError::Failed { code: status.code().unwrap_or(-1), tail: tail.join("\n") })
        }
    }
}

/// A fake that records each command and applies a caller-given effect to
/// the rootfs instead of running anything.
pub struct RecordingSandbox {
    pub calls: Mutex<Vec<String>>,
    #[allow(clippy::type_complexity)]
    effect: Box<dyn Fn(&Path, &str) -> Result<(), SandboxError> + Send + Sync>,
}

impl std::fmt::Debug for RecordingSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingSandbox").field("calls", &self.calls).finish()
    }
}

impl RecordingSandbox {
    pub fn new(effect: impl Fn(&Path, &str) -> Result<(), SandboxError> + Send + Sync + 'static) -> Self {
        RecordingSandbox { calls: Mutex::new(Vec::new()), effect: Box::new(effect) }
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Sandbox for RecordingSandbox {
    fn run(&self, spec: &RunSpec<'_>, output: &mut dyn FnMut(&str)) -> Result<(), SandboxError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(spec.command.to_owned());
        }
        output(&format!("fake: {}", spec.command));
        (self.effect)(spec.rootfs, spec.command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bake_config_has_no_network_and_runs_the_shell() {
        let env = vec!["PATH=/bin".to_owned()];
        let spec = RunSpec { rootfs: Path::new("/b/rootfs"), command: "echo hi", env: &env, workdir: "/w" };
        let c = bake_config(&spec, "id1");
        assert_eq!(c["process"]["args"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(c["process"]["cwd"], "/w");
        let ns: Vec<_> =
            c["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"network"), "a new network namespace cuts the network");
        assert_eq!(c["root"]["readonly"], false);
    }
}
