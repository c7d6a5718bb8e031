//! The `[image.NAME]` table: its fields checked once (base reference,
//! copy entries, modes, owners, the version), each error naming its key.
//!
//! For: turning a raw image table into an [`ImageSpec`]. Must never: read
//! a file or the clock.

use super::*;

pub(super) fn validate_image(
    name: &str,
    raw: RawImage,
    line: usize,
    lines: &LineIndex,
) -> Result<ImageSpec, FieldError> {
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

pub(super) fn validate_copy(raw: RawCopy, line: usize) -> Result<CopySpec, FieldError> {
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

pub(super) fn parse_base(s: &str) -> Result<BaseRef, String> {
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
    if registries::looks_like_registry(s) {
        let r = registries::Remote::parse(s).map_err(|e| e.to_string())?;
        if r.reference.is_none() {
            return Err(format!("{s:?}: name a tag or a digest (kiln never assumes :latest)"));
        }
        return Ok(BaseRef::Registry(r));
    }
    // A short name, as docker would take it, named in full: which registry
    // an image comes from is never guessed.
    let hint = if s.is_empty() || s.contains(char::is_whitespace) {
        String::new()
    } else if s.contains('/') {
        format!("; for Docker Hub, write \"docker.io/{s}\"")
    } else {
        format!("; for Docker Hub, write \"docker.io/library/{s}\"")
    };
    Err(format!(
        "{s:?}: expected \"scratch\", \"oci:PATH[:TAG|@DIGEST]\", \"rootfs:PATH\" or \"HOST[:PORT]/REPO:TAG|@DIGEST\"{hint}"
    ))
}

pub(super) fn normalize_dest(d: &str) -> Result<String, String> {
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

pub(super) fn parse_mode(m: &RawMode) -> Result<u32, String> {
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

pub(super) fn parse_owner(o: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{o:?}: expected numeric \"uid:gid\" or \"uid\"");
    let (u, g) = o.split_once(':').unwrap_or((o, o));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}
