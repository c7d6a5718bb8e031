//! A fleet service's load balancer settings (`kiln place --listen
//! --health`, a deploy's edge keys) read by kiln.toml's one parser, so
//! their checks and defaults are kiln.toml's; and the rule for two fleet
//! services on one port.
//!
//! For: turning fleet settings into a [`ServiceSpec`]. Must never: keep a
//! second set of rules beside kiln.toml's.

use std::path::{Path, PathBuf};

use super::*;

/// What a fleet service's load balancer serves beyond its port: the edge
/// keys of kiln.toml, as each host's agent has them (the certificate's
/// files written on the host).
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetSite<'a> {
    pub hosts: &'a [String],
    pub paths: &'a [String],
    /// The certificate chain and key files.
    pub tls: Option<(&'a Path, &'a Path)>,
    /// The certificate comes from this ACME directory (then `tls`'s files
    /// are where kiln puts it, and the parser's ACME checks apply).
    pub acme: Option<&'a str>,
    pub redirect_http: Option<std::net::SocketAddr>,
}

/// Whether fleet services `first` and `second`, on one port, may share
/// it: by host names, as two services of one kiln.toml (the same rule).
pub fn fleet_port_shared(first: &ServiceSpec, second: &ServiceSpec) -> Result<(), String> {
    let addr = second.release.listen.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    edge::share(first, "listen", second, "listen", addr).map_err(|(_, message)| message)
}

/// A fleet service's load balancer settings (`kiln place --listen
/// --health`) as a [`ServiceSpec`], read by the one parser so their
/// checks and defaults are kiln.toml's; an error names `source` (what the
/// settings came from) and the key.
pub fn fleet_service(
    source: &str,
    name: &str,
    listen: std::net::SocketAddr,
    health: Option<&str>,
    site: &FleetSite<'_>,
) -> Result<ServiceSpec, SpecError> {
    let bad = |key: &str, message: &str| SpecError {
        file: PathBuf::from(source),
        line: None,
        key: key.to_owned(),
        message: message.to_owned(),
    };
    if !valid_image_name(name) {
        return Err(bad("service", "lowercase letters, digits and single . _ - between them"));
    }
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut text = format!("[service.{}]\nimage = \"fleet\"\nlisten = \"{listen}\"\n", quote(name));
    let list = |v: &[String]| format!("[{}]", v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "));
    if !site.hosts.is_empty() {
        text.push_str(&format!("hosts = {}\n", list(site.hosts)));
    }
    if !site.paths.is_empty() {
        text.push_str(&format!("paths = {}\n", list(site.paths)));
    }
    match (site.acme, site.tls) {
        (Some(directory), _) => text.push_str(&format!("tls = {{ acme = {} }}\n", quote(directory))),
        (None, Some((cert, key))) => {
            let path = |p: &Path| quote(&p.to_string_lossy());
            text.push_str(&format!("tls = {{ cert = {}, key = {} }}\n", path(cert), path(key)));
        }
        (None, None) => {}
    }
    if let Some(r) = site.redirect_http {
        text.push_str(&format!("redirect_http = \"{r}\"\n"));
    }
    if let Some(p) = health {
        text.push_str(&format!("health = {{ path = {} }}\n", quote(p)));
    }
    let mut file = parse(Path::new(source), &text).map_err(|e| SpecError { line: None, ..e })?;
    file.services.remove(name).ok_or_else(|| bad("service", "not read back"))
}
