//! A `[service.NAME]` table checked into a [`ServiceSpec`]: its image,
//! env, volumes, secrets and limits here, its release keys in
//! [`super::release`] and its sandbox keys in [`super::sandbox`].
//!
//! For: one service's keys, each error naming its key. Must never: look at
//! other services (listener clashes are `parse`'s) or at the store.

use super::*;

pub(super) fn validate_service(
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
        if let Some(problem) = volume_problem(&v, dest.get_ref()) {
            return Err(field_err(dest.span(), &format!("volumes.{v}"), problem));
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
    let (edge, edge_claims) = edge::validate(edge::RawEdge {
        hosts: raw.hosts,
        paths: raw.paths,
        tls: raw.tls,
        redirect_http: raw.redirect_http,
        has_listen: release.listen.is_some(),
    })?;
    let mut claims = claims;
    claims.extend(edge_claims);
    let sandbox = sandbox::validate(sandbox::RawSandbox {
        seccomp: raw.seccomp,
        capabilities: raw.capabilities,
        privileged: raw.privileged,
        userns: raw.userns,
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
        sandbox,
        edge,
        line,
        image_line,
        file: PathBuf::new(),
    };
    Ok((service, claims))
}

/// What is wrong with volume `name` mounted at `dest`, if anything: the
/// one check for kiln.toml and for a fleet's desired state given whole.
pub fn volume_problem(name: &str, dest: &str) -> Option<String> {
    let ok_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok_name {
        return Some("a volume name is letters, digits, '_' and '-'".into());
    }
    if !dest.starts_with('/') || dest.split('/').any(|p| p == "..") {
        return Some(format!("{dest:?} must be an absolute path without '..'"));
    }
    None
}
