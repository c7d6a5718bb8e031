//! A service's sandbox keys, validated once: `seccomp` (`"default"`,
//! `"unconfined"` or a profile file), `capabilities` (none by default) and
//! `privileged` (the only way to ask for a dangerous capability).
//!
//! For: what an instance may do to the kernel, as kiln.toml says it.
//! Must never: build the runtime config (the runtime does) or weaken a
//! default without `privileged`/`unconfined` saying so.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::FieldError;

/// Which seccomp filter an instance runs under.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// kiln's own allow-list (see the runtime's `seccomp` module).
    #[default]
    Default,
    /// No filter at all (`plan` warns).
    Unconfined,
    /// An OCI `linux.seccomp` profile from a file, relative to kiln.toml;
    /// read and checked when the file is loaded ([`super::load`]).
    Profile {
        path: PathBuf,
        #[serde(default)]
        profile: Option<serde_json::Value>,
    },
}

/// What an instance may do beyond an unprivileged process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxSpec {
    pub seccomp: Seccomp,
    /// Capabilities kept, as `CAP_NAME`; none by default.
    pub capabilities: Vec<String>,
    /// Allows the dangerous capabilities (`plan` flags it).
    pub privileged: bool,
    /// Its uid 0 is an unprivileged host uid (a user namespace); on by
    /// default, `userns = false` opts out (`plan` warns).
    pub userns: bool,
}

impl Default for SandboxSpec {
    fn default() -> Self {
        SandboxSpec { seccomp: Seccomp::Default, capabilities: Vec::new(), privileged: false, userns: true }
    }
}

impl SandboxSpec {
    /// Whether this is the default (nothing added, nothing taken away).
    pub fn is_default(&self) -> bool {
        *self == SandboxSpec::default()
    }

    /// What `plan` warns about, one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.privileged {
            out.push(format!("privileged: it may hold {}", self.capabilities.join(", ")));
        }
        if !self.userns {
            out.push("userns = false: its root is the host's root".to_owned());
        }
        if self.seccomp == Seccomp::Unconfined {
            out.push("seccomp = \"unconfined\": every syscall of the kernel is open to it".to_owned());
        }
        out
    }

    /// A short text of the settings, for a release's fields.
    pub fn field(&self) -> String {
        let seccomp = match &self.seccomp {
            Seccomp::Default => "default".to_owned(),
            Seccomp::Unconfined => "unconfined".to_owned(),
            Seccomp::Profile { path, profile } => {
                let text = profile.as_ref().map(|p| p.to_string()).unwrap_or_default();
                format!("{} {}", path.display(), &crate::digest::Digest::of(text.as_bytes()).hex()[..12])
            }
        };
        format!(
            "seccomp={seccomp} caps={} privileged={} userns={}",
            self.capabilities.join(","),
            self.privileged,
            self.userns
        )
    }
}

/// Every capability Linux knows, without `CAP_`.
const KNOWN: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Capabilities that hand over the machine, or most of it: refused
/// unless the service is `privileged`.
const DANGEROUS: &[&str] = &[
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_BOOT",
    "SYS_TIME",
    "NET_ADMIN",
    "DAC_READ_SEARCH",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "BPF",
    "PERFMON",
    "SYSLOG",
    "LINUX_IMMUTABLE",
    "SETFCAP",
    "SETPCAP",
    "AUDIT_CONTROL",
    "CHECKPOINT_RESTORE",
];

/// The keys as kiln.toml has them.
pub(super) struct RawSandbox {
    pub seccomp: Option<Spanned<String>>,
    pub capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    pub privileged: Option<Spanned<bool>>,
    pub userns: Option<Spanned<bool>>,
}

fn err(span: Range<usize>, key: &str, message: impl Into<String>) -> FieldError {
    (Some(span), key.to_owned(), message.into())
}

pub(super) fn validate(raw: RawSandbox) -> Result<SandboxSpec, FieldError> {
    let privileged = raw.privileged.as_ref().is_some_and(|p| *p.get_ref());
    let seccomp = match &raw.seccomp {
        None => Seccomp::Default,
        Some(s) => match s.get_ref().as_str() {
            "default" => Seccomp::Default,
            "unconfined" => Seccomp::Unconfined,
            "" => return Err(err(s.span(), "seccomp", "\"default\", \"unconfined\" or the path of a profile")),
            path => Seccomp::Profile { path: PathBuf::from(path), profile: None },
        },
    };
    let mut capabilities = Vec::new();
    for (i, c) in raw.capabilities.map(Spanned::into_inner).unwrap_or_default().into_iter().enumerate() {
        let key = format!("capabilities[{i}]");
        let given = c.get_ref().to_ascii_uppercase();
        let name = given.strip_prefix("CAP_").unwrap_or(&given);
        if !KNOWN.contains(&name) {
            return Err(err(c.span(), &key, format!("{:?} is not a Linux capability", c.get_ref())));
        }
        if DANGEROUS.contains(&name) && !privileged {
            let message = format!("CAP_{name} hands the instance much of the host; set privileged = true to allow it");
            return Err(err(c.span(), &key, message));
        }
        let full = format!("CAP_{name}");
        if !capabilities.contains(&full) {
            capabilities.push(full);
        }
    }
    let userns = raw.userns.is_none_or(|u| *u.get_ref());
    Ok(SandboxSpec { seccomp, capabilities, privileged, userns })
}

/// A problem in a profile file: its key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    pub key: String,
    pub message: String,
}

const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
];

const OPS: &[&str] =
    &["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"];

/// Checks an OCI `linux.seccomp` profile (the JSON runc takes), naming the
/// key of the first problem. Pure.
pub fn check_profile(text: &str) -> Result<serde_json::Value, ProfileError> {
    let e = |key: &str, message: String| ProfileError { key: key.to_owned(), message };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|x| e("", format!("not JSON: {x}")))?;
    let action = |key: &str, a: &serde_json::Value| match a.as_str() {
        Some(s) if ACTIONS.contains(&s) => Ok(()),
        _ => Err(e(key, format!("{a} is not a seccomp action ({})", ACTIONS.join(", ")))),
    };
    let Some(obj) = v.as_object() else { return Err(e("", "a profile is a JSON object".into())) };
    for k in obj.keys() {
        if ![
            "defaultAction",
            "defaultErrnoRet",
            "architectures",
            "flags",
            "listenerPath",
            "listenerMetadata",
            "syscalls",
        ]
        .contains(&k.as_str())
        {
            return Err(e(k, "not a key of an OCI seccomp profile".into()));
        }
    }
    action("defaultAction", v.get("defaultAction").unwrap_or(&serde_json::Value::Null))?;
    if let Some(a) = v.get("architectures") {
        let ok =
            a.as_array().is_some_and(|a| a.iter().all(|x| x.as_str().is_some_and(|s| s.starts_with("SCMP_ARCH_"))));
        if !ok {
            return Err(e("architectures", "a list of SCMP_ARCH_* names".into()));
        }
    }
    let rules = match v.get("syscalls") {
        None => &Vec::new(),
        Some(s) => s.as_array().ok_or_else(|| e("syscalls", "a list of rules".into()))?,
    };
    for (i, r) in rules.iter().enumerate() {
        let key = |k: &str| format!("syscalls[{i}].{k}");
        let names = r.get("names").and_then(|n| n.as_array());
        let ok = names.is_some_and(|n| !n.is_empty() && n.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())));
        if !ok {
            return Err(e(&key("names"), "a non-empty list of syscall names".into()));
        }
        action(&key("action"), r.get("action").unwrap_or(&serde_json::Value::Null))?;
        for (j, a) in r.get("args").and_then(|a| a.as_array()).into_iter().flatten().enumerate() {
            let k = |f: &str| format!("syscalls[{i}].args[{j}].{f}");
            let index = a.get("index").and_then(serde_json::Value::as_u64);
            if index.is_none_or(|n| n >= 6) {
                return Err(e(&k("index"), "an argument index from 0 to 5".into()));
            }
            if !a.get("value").is_some_and(serde_json::Value::is_u64) {
                return Err(e(&k("value"), "an unsigned number".into()));
            }
            if !a.get("op").and_then(|o| o.as_str()).is_some_and(|o| OPS.contains(&o)) {
                return Err(e(&k("op"), format!("one of {}", OPS.join(", "))));
            }
        }
    }
    Ok(v)
}

/// Reads and checks the profile of `sandbox`, relative to `dir` (the
/// kiln.toml's); errors name the profile file.
pub fn load_profile(sandbox: &mut SandboxSpec, dir: &Path) -> Result<(), (PathBuf, ProfileError)> {
    if let Seccomp::Profile { path, profile } = &mut sandbox.seccomp {
        let full = dir.join(&*path);
        let text = std::fs::read_to_string(&full)
            .map_err(|x| (full.clone(), ProfileError { key: String::new(), message: x.to_string() }))?;
        *profile = Some(check_profile(&text).map_err(|x| (full.clone(), x))?);
        *path = full;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_error_names_its_key() {
        let bad = [
            (r#"[]"#, ""),
            (r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, "defaultAction"),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}"#,
                "syscalls[0].names",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "ALLOW"}]}"#,
                "syscalls[0].action",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0].args[0].index",
            ),
            (r#"{"defaultAction": "SCMP_ACT_ERRNO", "sycalls": []}"#, "sycalls"),
        ];
        for (text, key) in bad {
            assert_eq!(check_profile(text).unwrap_err().key, key, "{text}");
        }
        let good = r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#;
        assert!(check_profile(good).is_ok());
    }
}
