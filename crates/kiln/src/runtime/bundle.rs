//! The OCI runtime config (`config.json`) of an instance. Pure: everything
//! it needs comes in an [`InstanceConfig`], so every rule is unit-tested.
//!
//! What every instance gets: a read-only root shared with the other
//! instances of its image, tmpfs `/tmp` and `/run`, `noNewPrivileges`, no
//! capability unless its service asks (`capabilities`), kiln's seccomp
//! allow-list ([`super::seccomp`], loaded by kiln's sandbox-exec helper
//! mounted read-only at `/dev/.kiln`) unless its service names another, the
//! host network (a port on 127.0.0.1 passed as `PORT`), its own
//! pid/ipc/uts/mount/cgroup namespaces, hostname = instance id, and runc's
//! masked and read-only paths of /proc and /sys.
//! Secrets are bind-mounted read-only from host tmpfs at `/run/secrets/NAME`;
//! volumes are bind-mounted read-write. This module never sees a secret value
//! unless the service asked for one as an environment variable, and then
//! the config goes to a tmpfs bundle, never under `$KILN_HOME`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::oci::RunConfig;

/// Resource limits from the service spec or `kiln run` flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPUs as a fraction (0.5 = half a core).
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

/// Everything the runtime config is made from.
#[derive(Debug, Clone)]
pub struct InstanceConfig<'a> {
    pub id: &'a str,
    pub rootfs: &'a Path,
    pub image: &'a RunConfig,
    /// Service environment; overrides the image's.
    pub env: &'a [(String, String)],
    pub port: u16,
    pub uid: u32,
    pub gid: u32,
    /// (host directory, absolute destination)
    pub volumes: &'a [(PathBuf, String)],
    /// (host file on tmpfs, secret name)
    pub secret_files: &'a [(PathBuf, String)],
    pub limits: Limits,
    pub cgroup: &'a str,
    pub sandbox: &'a crate::spec::sandbox::SandboxSpec,
    /// Its user namespace's host range; `rootfs` is then the image tree
    /// idmapped into it ([`super::userns`]).
    pub userns: Option<super::userns::Range>,
    /// The host directory of the sandbox-exec helper and the default filter
    /// compiled by kiln ([`super::sandbox_exec`]); `None`: runc compiles the
    /// default profile.
    pub sandbox_exec: Option<&'a Path>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("the image has neither an entrypoint nor a cmd: nothing to run")]
    NothingToRun,
    #[error("volume destination {0:?} must be an absolute path without '..'")]
    BadVolumeDest(String),
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process environment: the image's, then the service's (same names
/// replaced), then `PORT`.
pub fn environment(image: &RunConfig, service: &[(String, String)], port: u16) -> Vec<String> {
    let mut env: Vec<String> = image.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    let mut set = |k: &str, v: &str| {
        let prefix = format!("{k}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    };
    for (k, v) in service {
        set(k, v);
    }
    set("PORT", &port.to_string());
    env
}

pub fn runtime_config(c: &InstanceConfig<'_>) -> Result<Value, BundleError> {
    let mut args: Vec<String> = c.image.entrypoint.clone().unwrap_or_default();
    args.extend(c.image.cmd.clone().unwrap_or_default());
    if args.is_empty() {
        return Err(BundleError::NothingToRun);
    }
    let caps = &c.sandbox.capabilities;
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc" }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }),
        json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] }),
        // In a user namespace that does not own the network namespace (the
        // host's), sysfs cannot be mounted: the host's is bound, read-only.
        if c.userns.is_some() {
            json!({ "destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"] })
        } else {
            json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] })
        },
        json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=65536k"] }),
        json!({ "destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755", "size=16384k"] }),
    ];
    if !c.secret_files.is_empty() {
        mounts.push(json!({ "destination": "/run/secrets", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "mode=0755", "size=1024k"] }));
    }
    for (host, name) in c.secret_files {
        mounts.push(json!({ "destination": format!("/run/secrets/{name}"), "type": "bind", "source": host, "options": ["bind", "ro", "nosuid", "nodev", "noexec"] }));
    }
    for (host, dest) in c.volumes {
        if !dest.starts_with('/') || dest.split('/').any(|p| p == "..") {
            return Err(BundleError::BadVolumeDest(dest.clone()));
        }
        mounts.push(json!({ "destination": dest, "type": "bind", "source": host, "options": ["rbind", "rw", "nosuid", "nodev"] }));
    }
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if let Some(m) = c.limits.memory_bytes {
        resources["memory"] = json!({ "limit": m });
    }
    if let Some(cpus) = c.limits.cpus {
        let period: u64 = 100_000;
        resources["cpu"] = json!({ "quota": (cpus * period as f64).round() as i64, "period": period });
    }
    if let Some(p) = c.limits.pids {
        resources["pids"] = json!({ "limit": p });
    }
    use crate::spec::sandbox::Seccomp;
    let seccomp = match (&c.sandbox.seccomp, c.sandbox_exec) {
        // kiln's helper loads the filter kiln compiled, then execs the
        // instance's program (in PATH, as runc would look it up).
        (Seccomp::Default, Some(dir)) => {
            use super::sandbox_exec::{FILTER_PATH, HELPER_PATH, MOUNT_AT};
            mounts.push(json!({ "destination": MOUNT_AT, "type": "bind", "source": dir, "options": ["bind", "ro", "nosuid", "nodev"] }));
            args.splice(0..0, [HELPER_PATH.to_owned(), FILTER_PATH.to_owned()]);
            None
        }
        (Seccomp::Default, None) => Some(super::seccomp::default_profile()),
        (Seccomp::Unconfined, _) => None,
        (Seccomp::Profile { profile, .. }, _) => profile.clone(),
    };
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": c.uid, "gid": c.gid },
            "args": args,
            "env": environment(c.image, c.env, c.port),
            "cwd": c.image.working_dir.clone().filter(|w| w.starts_with('/')).unwrap_or_else(|| "/".into()),
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "noNewPrivileges": true
        },
        "root": { "path": c.rootfs, "readonly": true },
        "hostname": c.id,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": c.cgroup,
            "resources": resources,
            // No network namespace: instances share the host's and listen on their PORT.
            "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(profile) = seccomp {
        config["linux"]["seccomp"] = profile;
    }
    if let Some(r) = c.userns {
        let map = json!([{ "containerID": 0, "hostID": r.base, "size": r.size }]);
        config["linux"]["namespaces"].as_array_mut().expect("a list").push(json!({ "type": "user" }));
        config["linux"]["uidMappings"] = map.clone();
        config["linux"]["gidMappings"] = map;
    }
    Ok(config)
}

/// Resolves the image's `user` (`uid`, `uid:gid`, `name`, `name:group`) to
/// numeric ids, looking names up in the image's /etc/passwd and /etc/group.
pub fn resolve_user(user: Option<&str>, passwd: Option<&str>, group: Option<&str>) -> Result<(u32, u32), String> {
    let user = user.unwrap_or("").trim();
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // Returns the third field (uid or gid) and, in passwd, the fourth (primary gid).
    let lookup = |file: Option<&str>, name: &str, what: &str| -> Result<(u32, Option<u32>), String> {
        file.unwrap_or("")
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 3 && f[0] == name)
                    .then(|| Some((f[2].parse().ok()?, f.get(3).and_then(|g| g.parse().ok()))))?
            })
            .ok_or_else(|| format!("{what} {name:?} is not in the image's /etc/{what}"))
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => {
            // A numeric uid takes its primary group from the passwd entry with that uid.
            let primary = passwd.unwrap_or("").lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[2].parse() == Ok(n)).then(|| f[3].parse().ok())?
            });
            (n, primary.unwrap_or(n))
        }
        Err(_) => {
            let (uid, gid) = lookup(passwd, u, "passwd")?;
            (uid, gid.unwrap_or(uid))
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(group, g, "group")?.0,
        },
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> RunConfig {
        RunConfig {
            entrypoint: Some(vec!["/app".into()]),
            cmd: Some(vec!["--x".into()]),
            env: Some(vec!["A=1".into(), "B=2".into()]),
            working_dir: Some("/srv".into()),
            ..Default::default()
        }
    }

    #[test]
    fn config_is_locked_down() {
        let img = image();
        let env = vec![("B".to_owned(), "svc".to_owned())];
        let vols = vec![(PathBuf::from("/h/v"), "/data".to_owned())];
        let secrets = vec![(PathBuf::from("/run/kiln/s/x"), "db".to_owned())];
        let c = InstanceConfig {
            id: "web-1",
            rootfs: Path::new("/cache/rootfs"),
            image: &img,
            env: &env,
            port: 4242,
            uid: 65534,
            gid: 65534,
            volumes: &vols,
            secret_files: &secrets,
            limits: Limits { memory_bytes: Some(64 << 20), cpus: Some(0.5), pids: Some(64) },
            cgroup: "/kiln/web-1",
            sandbox: &Default::default(),
            userns: None,
            sandbox_exec: None,
        };
        let v = runtime_config(&c).unwrap();
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["args"], json!(["/app", "--x"]));
        assert_eq!(v["process"]["cwd"], "/srv");
        assert_eq!(v["process"]["user"]["uid"], 65534);
        assert_eq!(v["process"]["capabilities"]["bounding"], json!([]), "no capability by default");
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO", "kiln's allow-list by default");
        assert_eq!(v["hostname"], "web-1");
        let env: Vec<&str> = v["process"]["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
        assert!(
            env.contains(&"B=svc") && !env.contains(&"B=2") && env.contains(&"PORT=4242") && env.contains(&"A=1"),
            "{env:?}"
        );
        let dests: Vec<&str> =
            v["mounts"].as_array().unwrap().iter().map(|m| m["destination"].as_str().unwrap()).collect();
        for d in ["/tmp", "/run", "/run/secrets", "/run/secrets/db", "/data"] {
            assert!(dests.contains(&d), "{d} in {dests:?}");
        }
        let secret = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/run/secrets/db").unwrap();
        assert!(secret["options"].as_array().unwrap().contains(&json!("ro")));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 64);
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(!ns.contains(&"network"));
        assert!(ns.contains(&"cgroup"));
        let masked = v["linux"]["maskedPaths"].as_array().unwrap();
        for p in ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"] {
            assert!(masked.contains(&json!(p)), "{p} masked");
        }

        // What a service asks for: a capability, no filter, a profile.
        use crate::spec::sandbox::{SandboxSpec, Seccomp};
        let asked = SandboxSpec {
            capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
            seccomp: Seccomp::Unconfined,
            privileged: false,
            userns: true,
        };
        let v = runtime_config(&InstanceConfig { sandbox: &asked, ..c.clone() }).unwrap();
        assert_eq!(v["process"]["capabilities"]["effective"], json!(["CAP_NET_BIND_SERVICE"]));
        assert!(v["linux"].get("seccomp").is_none(), "unconfined: no filter");
        let profile = json!({ "defaultAction": "SCMP_ACT_ALLOW" });
        let own = SandboxSpec {
            seccomp: Seccomp::Profile { path: "p.json".into(), profile: Some(profile.clone()) },
            ..Default::default()
        };
        let v = runtime_config(&InstanceConfig { sandbox: &own, ..c.clone() }).unwrap();
        assert_eq!(v["linux"]["seccomp"], profile);

        // The default filter compiled by kiln: its helper runs first, from a
        // read-only mount, and runc compiles nothing.
        let dir = PathBuf::from("/run/kiln/x/sandbox/abc");
        let v = runtime_config(&InstanceConfig { sandbox_exec: Some(&dir), ..c.clone() }).unwrap();
        assert_eq!(v["process"]["args"], json!(["/dev/.kiln/sandbox-exec", "/dev/.kiln/default.bpf", "/app", "--x"]));
        assert!(v["linux"].get("seccomp").is_none(), "the helper loads the filter");
        let m = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/dev/.kiln").unwrap();
        assert_eq!((m["source"].as_str(), m["options"][1].as_str()), (Some("/run/kiln/x/sandbox/abc"), Some("ro")));
        let dev = v["mounts"].as_array().unwrap().iter().position(|m| m["destination"] == "/dev").unwrap();
        let at = v["mounts"].as_array().unwrap().iter().position(|m| m["destination"] == "/dev/.kiln").unwrap();
        assert!(dev < at, "mounted on the instance's /dev");
        // Any other choice leaves the program and mounts alone.
        let v = runtime_config(&InstanceConfig { sandbox: &own, sandbox_exec: Some(&dir), ..c.clone() }).unwrap();
        assert_eq!(v["process"]["args"], json!(["/app", "--x"]));
        assert_eq!(v["linux"]["seccomp"], profile);
        assert!(!v["mounts"].as_array().unwrap().iter().any(|m| m["destination"] == "/dev/.kiln"));

        // A user namespace: root inside is the range's first host uid, and
        // /sys is the host's, bound read-only (sysfs needs the netns).
        let range = crate::runtime::userns::Range { base: 1 << 30, size: 65536 };
        let v = runtime_config(&InstanceConfig { userns: Some(range), ..c }).unwrap();
        assert!(v["linux"]["namespaces"].as_array().unwrap().contains(&json!({ "type": "user" })));
        assert_eq!(v["linux"]["uidMappings"], json!([{ "containerID": 0, "hostID": 1u32 << 30, "size": 65536 }]));
        assert_eq!(v["linux"]["gidMappings"], v["linux"]["uidMappings"]);
        let sys = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/sys").unwrap();
        assert_eq!((sys["source"].as_str(), sys["options"][0].as_str()), (Some("/sys"), Some("rbind")));
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn nothing_to_run_and_bad_volumes_are_errors() {
        let img = RunConfig::default();
        let c = InstanceConfig {
            id: "x",
            rootfs: Path::new("/r"),
            image: &img,
            env: &[],
            port: 1,
            uid: 0,
            gid: 0,
            volumes: &[],
            secret_files: &[],
            limits: Limits::default(),
            cgroup: "/k/x",
            sandbox: &Default::default(),
            userns: None,
            sandbox_exec: None,
        };
        assert_eq!(runtime_config(&c).unwrap_err(), BundleError::NothingToRun);
        let img = image();
        let vols = vec![(PathBuf::from("/h"), "rel".to_owned())];
        let c = InstanceConfig { image: &img, volumes: &vols, ..c };
        assert!(matches!(runtime_config(&c).unwrap_err(), BundleError::BadVolumeDest(_)));
    }

    #[test]
    fn users_resolve_numerically_and_by_name() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user(None, None, None).unwrap(), (0, 0));
        assert_eq!(resolve_user(Some("65534:65534"), None, None).unwrap(), (65534, 65534));
        assert_eq!(resolve_user(Some("app"), Some(passwd), Some(group)).unwrap(), (1000, 1001));
        assert_eq!(resolve_user(Some("app:staff"), Some(passwd), Some(group)).unwrap(), (1000, 50));
        assert_eq!(resolve_user(Some("1000"), Some(passwd), None).unwrap(), (1000, 1001));
        assert!(resolve_user(Some("nobody"), Some(passwd), None).unwrap_err().contains("nobody"));
    }

    #[test]
    fn environment_adds_path_and_port() {
        let e = environment(&RunConfig::default(), &[("PORT".into(), "1".into())], 8080);
        assert_eq!(e, vec![DEFAULT_PATH.to_owned(), "PORT=8080".to_owned()]);
    }
}
