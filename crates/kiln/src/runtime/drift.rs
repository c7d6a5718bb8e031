//! Drift: what differs between a running instance and what kiln started.
//!
//! For: judging drift only on what kiln controls and can read without
//! racing the app: the runtime config as runc holds it (its `state.json`,
//! compared leaf by leaf with the copy taken when the container started),
//! the live cgroup limits, the image tree against its digest, and the
//! mount table (nothing writable outside volumes and tmpfs).
//!
//! Must never: read the process's own args, environment or user (a
//! process that execs, forks or rewrites its argv is not drift: `sh -c
//! "exec …"` entrypoints do exactly that), or put a value in a finding:
//! findings name the field (a config path, an env name), so that a secret
//! never reaches a log, an event or a webhook.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::{images, InstanceId, InstanceRecord, Runtime};

/// Where the runtime config as runc held it at start is kept.
const BASELINE: &str = "runtime-config.json";

/// The leaves of a JSON document, by path (`cgroups.resources.pids_limit`,
/// `mounts[3].source`), each with its value's JSON text. Pure.
pub fn leaves(v: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(path: String, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    walk(p, x, out);
                }
            }
            serde_json::Value::Array(a) if !a.is_empty() => {
                for (i, x) in a.iter().enumerate() {
                    walk(format!("{path}[{i}]"), x, out);
                }
            }
            other => {
                out.insert(path, other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(String::new(), v, &mut out);
    out
}

/// The paths whose values differ between the config at start and now
/// (changed, added or removed), named and never valued; an environment
/// entry (`NAME=value` in a list) is named by its variable. Pure.
pub fn config_drift(at_start: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    let (a, b) = (leaves(at_start), leaves(now));
    let name = |path: &str, value: Option<&String>| -> String {
        // An `env` list entry is named by its variable, never its value.
        let var = path.rsplit_once("env[").filter(|_| path.ends_with(']')).and_then(|(prefix, _)| {
            let text = serde_json::from_str::<String>(value?).ok()?;
            Some(format!("{prefix}env {}", text.split_once('=')?.0))
        });
        var.unwrap_or_else(|| path.to_owned())
    };
    let mut out = Vec::new();
    for (path, va) in &a {
        match b.get(path) {
            Some(vb) if vb == va => {}
            Some(vb) => {
                let (na, nb) = (name(path, Some(va)), name(path, Some(vb)));
                if na == nb {
                    out.push(format!("runtime config: {na} changed"));
                } else {
                    out.push(format!("runtime config: {na} changed to {nb}"));
                }
            }
            None => out.push(format!("runtime config: {} removed", name(path, Some(va)))),
        }
    }
    for (path, vb) in &b {
        if !a.contains_key(path) {
            out.push(format!("runtime config: {} added", name(path, Some(vb))));
        }
    }
    out
}

/// File systems an instance may have read-write besides its volumes: its
/// tmpfs mounts and the kernel's own.
const EPHEMERAL_FS: &[&str] = &["tmpfs", "devpts", "mqueue", "proc", "sysfs", "cgroup", "cgroup2"];

/// The device nodes runc binds from the host's devtmpfs in a user
/// namespace (it cannot mknod them there), by their path on that devtmpfs.
const DEVICES: &[&str] = &["/null", "/zero", "/full", "/random", "/urandom", "/tty"];

/// What an instance's mount table (`/proc/PID/mountinfo`, as the
/// instance sees it) shows that kiln did not set up: a writable root, or
/// a writable mount of a real file system outside `volumes`. Pure.
pub fn mount_drift(mountinfo: &str, volumes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // id parent dev root mountpoint options [optional...] - fstype source super
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else { continue };
        let (Some(point), Some(opts), Some(fstype)) = (f.get(4), f.get(5), f.get(dash + 1)) else { continue };
        let rw = opts.split(',').any(|o| o == "rw");
        if *point == "/" {
            if rw {
                out.push("the root file system is mounted read-write".to_owned());
            }
            continue;
        }
        // In a user namespace runc cannot make device nodes: it binds the
        // host's (and masks paths with a bind of /dev/null). Harmless.
        let device = *fstype == "devtmpfs" && f.get(3).is_some_and(|r| DEVICES.contains(r));
        if rw && !EPHEMERAL_FS.contains(fstype) && !volumes.contains(point) && !device {
            out.push(format!("{point} is mounted read-write ({fstype}) and is not a declared volume"));
        }
    }
    out
}

impl Runtime<'_> {
    /// Keeps the runtime config as runc holds it right after the start,
    /// the baseline [`Runtime::drift`] compares with (best effort: without
    /// one, that check is skipped, never a false drift).
    pub(super) fn keep_runtime_config(&self, id: &InstanceId, dir: &Path) {
        if let Ok(Some(config)) = self.driver.config(id.as_str()) {
            let _ = super::write_json_atomic(&dir.join(BASELINE), &config, 0o600);
        }
    }

    /// What differs between a running instance and what kiln started;
    /// empty when nothing does. See the module doc for what is judged.
    pub fn drift(&self, r: &InstanceRecord) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = images::verify_cache(self.store, &r.image) {
            out.push(format!("image cache: {e}"));
        }
        let baseline = fs::read(self.instance_dir(&r.id).join(BASELINE))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let (Some(at_start), Ok(Some(now))) = (baseline, self.driver.config(r.id.as_str())) {
            out.extend(config_drift(&at_start, &now));
        }
        // Limits changed behind kiln's back (`runc update`), as the kernel
        // applies them.
        let pids = ["/sys/fs/cgroup/pids/kiln", "/sys/fs/cgroup/kiln"]
            .iter()
            .find_map(|d| fs::read_to_string(Path::new(d).join(r.id.as_str()).join("pids.max")).ok());
        if let Some(now) = pids {
            let want = r.limits.pids.map_or("max".to_owned(), |p| p.to_string());
            if now.trim() != want {
                out.push(format!("runtime config: pids limit is {}, kiln set {want}", now.trim()));
            }
        }
        if let Some(pid) = self.container_pid(&r.id) {
            if let Ok(info) = fs::read_to_string(format!("/proc/{pid}/mountinfo")) {
                let volumes: Vec<&str> = r.volumes.iter().map(|(_, d)| d.as_str()).collect();
                out.extend(mount_drift(&info, &volumes));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_drift_names_paths_and_env_names_never_values() {
        let a = json!({
            "readonlyfs": true,
            "cgroups": { "resources": { "pids_limit": 200 } },
            "mounts": [{ "destination": "/data", "source": "/v/data" }],
            "env": ["PATH=/bin", "DB_PASSWORD=hunter2"],
        });
        assert!(config_drift(&a, &a).is_empty());
        let mut b = a.clone();
        b["readonlyfs"] = json!(false);
        b["cgroups"]["resources"]["pids_limit"] = json!(77);
        b["env"][1] = json!("DB_PASSWORD=letmein");
        b["mounts"] =
            json!([{ "destination": "/data", "source": "/v/data" }, { "destination": "/etc", "source": "/" }]);
        let d = config_drift(&a, &b);
        assert_eq!(
            d,
            [
                "runtime config: cgroups.resources.pids_limit changed",
                "runtime config: env DB_PASSWORD changed",
                "runtime config: readonlyfs changed",
                "runtime config: mounts[1].destination added",
                "runtime config: mounts[1].source added",
            ],
        );
        assert!(d.iter().all(|l| !l.contains("letmein") && !l.contains("hunter2") && !l.contains("77")), "{d:?}");
        // A variable replaced by another is named by both names.
        let mut c = a.clone();
        c["env"][1] = json!("API_KEY=x");
        assert_eq!(config_drift(&a, &c), ["runtime config: env DB_PASSWORD changed to env API_KEY"]);
    }

    #[test]
    fn mount_drift_finds_a_writable_root_and_writable_mounts_outside_the_volumes() {
        let good = "\
22 1 0:50 / / ro,relatime - overlay overlay rw
23 22 0:51 / /proc rw,nosuid - proc proc rw
24 22 0:52 / /tmp rw,nosuid - tmpfs tmpfs rw
25 22 8:1 /var/lib/kiln/volumes/web/data /data rw,relatime - ext4 /dev/sda1 rw
26 22 8:1 /run/kiln/x/secrets/db /run/secrets/db ro,relatime - tmpfs tmpfs rw
";
        assert_eq!(mount_drift(good, &["/data"]), Vec::<String>::new());
        let bad = good.replace("/ / ro,relatime", "/ / rw,relatime")
            + "27 22 8:1 /etc /etc rw,relatime - ext4 /dev/sda1 rw\n";
        let d = mount_drift(&bad, &["/data"]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("root") && d[1].starts_with("/etc is mounted read-write (ext4)"), "{d:?}");
        // A volume that is not declared is drift too.
        assert_eq!(mount_drift(good, &[]).len(), 1);
        // runc's device binds in a user namespace are not drift; another
        // file of the host's devtmpfs is.
        let userns = "\
22 1 0:50 / / ro,relatime - ext4 /dev/vda rw
30 22 0:5 /null /dev/null rw,nosuid - devtmpfs udev rw
31 22 0:5 /null /proc/keys rw,nosuid - devtmpfs udev rw
32 22 0:5 /sda /dev/sda rw,nosuid - devtmpfs udev rw
";
        assert_eq!(
            mount_drift(userns, &[]),
            ["/dev/sda is mounted read-write (devtmpfs) and is not a declared volume"]
        );
    }
}
