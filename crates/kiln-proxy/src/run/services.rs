//! What a `kiln proxy` process serves, built from its flags (one service)
//! or its site file (every service on its address), and rebuilt on a
//! reload: the routes, their load balancers and the certificates.
//!
//! For: turning configuration into a [`Site`] and keeping each service's
//! state (backend health, counters) across reloads. Must never: bind or
//! accept; a reload that fails changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use super::ProxyRun;
use crate::site::{Route, Site};
use crate::tls::{CertSpec, Certs};
use crate::{Proxy, SiteFile, TableEntry};

/// Where the services come from.
#[derive(Debug)]
pub(super) enum Source {
    /// `--release` flags and `--releases-file`, one service.
    Flags,
    /// `--site FILE`.
    Site(PathBuf),
}

/// A process's services: the site, its certificates and where they came from.
#[derive(Debug)]
pub(super) struct Services {
    pub site: Arc<Site>,
    pub certs: Option<Arc<Certs>>,
    source: Source,
}

fn flag_releases(run: &ProxyRun) -> Result<Vec<TableEntry>, String> {
    let mut releases = run.releases.clone();
    if let Some(path) = &run.releases_file {
        releases.extend(crate::read_releases_file(path)?);
    }
    Ok(releases)
}

fn cert_specs(site: &SiteFile) -> Vec<CertSpec> {
    site.services
        .iter()
        .filter_map(|s| {
            s.tls.clone().map(|files| CertSpec { service: s.service.clone(), files, hosts: s.hosts.clone() })
        })
        .collect()
}

impl Services {
    /// Builds the services; certificates are checked at `now`.
    pub fn load(run: &ProxyRun, now: i64) -> Result<Services, String> {
        let (routes, specs, source) = match &run.site {
            None => {
                let proxy = Proxy::new(run.config.clone());
                proxy.set_releases(flag_releases(run)?).map_err(|e| e.to_string())?;
                let hosts = run.tls.as_ref().map(|t| t.hosts.clone()).unwrap_or_default();
                let specs: Vec<CertSpec> = run
                    .tls
                    .iter()
                    .map(|t| CertSpec {
                        service: run.config.service.clone(),
                        files: t.files.clone(),
                        hosts: t.hosts.clone(),
                    })
                    .collect();
                let route = Route { service: run.config.service.clone(), hosts, paths: vec![], proxy };
                (vec![route], specs, Source::Flags)
            }
            Some(path) => {
                let file = crate::read_site_file(path)?;
                let mut routes = Vec::new();
                for s in &file.services {
                    let proxy = Proxy::new(s.config(&run.config));
                    let table = crate::read_releases_file(&s.releases_file)?;
                    proxy.set_releases(table).map_err(|e| format!("service {}: {e}", s.service))?;
                    routes.push(Route {
                        service: s.service.clone(),
                        hosts: s.hosts.clone(),
                        paths: s.paths.clone(),
                        proxy,
                    });
                }
                (routes, cert_specs(&file), Source::Site(path.clone()))
            }
        };
        let certs = match specs.is_empty() {
            true => None,
            false => Some(Arc::new(Certs::load(&specs, now).map_err(|e| e.to_string())?)),
        };
        let site = Site::new(routes, run.config.header_timeout);
        if let Some(c) = &certs {
            site.set_certs(c.clone());
        }
        Ok(Services { site, certs, source })
    }

    /// Re-reads the releases (and, for a site, its services): a service
    /// that stays keeps its load balancer and so its backends' health and
    /// counters; a new one starts its health checks; one that left stops
    /// them. Anything wrong changes nothing. Returns what changed.
    pub fn reload(&self, run: &ProxyRun, now: i64) -> Result<String, String> {
        let path = match &self.source {
            Source::Flags => {
                let proxy = self.site.proxy(None).map_err(|e| e.to_string())?;
                proxy.set_releases(flag_releases(run)?).map_err(|e| e.to_string())?;
                return Ok("releases reloaded".into());
            }
            Source::Site(path) => path,
        };
        let file = crate::read_site_file(path)?;
        if file.services.iter().any(|s| s.tls.is_some()) != self.certs.is_some() {
            return Err(format!("{}: HTTPS on or off needs a new process (a handoff)", path.display()));
        }
        let old = self.site.routes();
        // Everything is read and checked before anything changes.
        let mut next = Vec::new();
        let mut tables = Vec::new();
        for s in &file.services {
            let table = crate::read_releases_file(&s.releases_file)?;
            let proxy = match old.iter().find(|r| r.service == s.service) {
                Some(r) => r.proxy.clone(),
                None => Proxy::new(s.config(&run.config)),
            };
            tables.push((proxy.clone(), table));
            next.push(Arc::new(Route {
                service: s.service.clone(),
                hosts: s.hosts.clone(),
                paths: s.paths.clone(),
                proxy,
            }));
        }
        if let Some(c) = &self.certs {
            c.set(&cert_specs(&file), now).map_err(|e| e.to_string())?;
        }
        for (proxy, table) in tables {
            proxy.set_releases(table).map_err(|e| format!("{}: {e}", proxy.config.service))?;
        }
        let added: Vec<_> = next.iter().filter(|r| !old.iter().any(|o| o.service == r.service)).collect();
        for r in &added {
            tokio::spawn(r.proxy.clone().health_loop());
        }
        let removed: Vec<_> = old.iter().filter(|o| !next.iter().any(|r| r.service == o.service)).collect();
        for r in &removed {
            r.proxy.retire();
        }
        let names = |rs: &[&Arc<Route>]| rs.iter().map(|r| r.service.as_str()).collect::<Vec<_>>().join(", ");
        let summary =
            format!("site reloaded: {} services; added [{}], removed [{}]", next.len(), names(&added), names(&removed));
        self.site.set_routes(next);
        Ok(summary)
    }
}
