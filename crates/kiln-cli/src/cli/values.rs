//! The parsers of flag values (health paths, sticky modes, env pairs,
//! volumes, secrets, sizes, durations): each refuses a bad value with a
//! message naming what a good one looks like.
//!
//! For: parsing one flag's value. Must never: act.

pub(crate) fn parse_health_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: expected a path starting with / and without spaces or control characters"))
    }
}

pub(crate) fn parse_sticky(s: &str) -> Result<kiln::proxy::Sticky, String> {
    s.parse()
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

pub(crate) fn parse_volume(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((n, p)) if !n.is_empty() && p.starts_with('/') => Ok((n.to_owned(), p.to_owned())),
        _ => Err(format!("{s:?}: expected NAME:/absolute/path")),
    }
}

pub(crate) fn parse_secret(s: &str) -> Result<kiln::runtime::SecretUse, String> {
    let (name, env) = match s.split_once(':') {
        Some((n, e)) if !e.is_empty() => (n, Some(e.to_owned())),
        Some(_) => return Err(format!("{s:?}: expected NAME or NAME:ENV_VAR")),
        None => (s, None),
    };
    if !kiln::secrets::valid_name(name) {
        return Err(format!("{name:?} is not a valid secret name"));
    }
    Ok(kiln::runtime::SecretUse { name: name.to_owned(), env })
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    kiln::spec::parse_size(s).ok_or_else(|| format!("{s:?}: expected a size like 256M"))
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    kiln::time::parse_duration_ms(s)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{s:?}: expected a duration like 500ms, 30s, 10m"))
}
