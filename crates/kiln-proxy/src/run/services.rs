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
            s.tls.clone().map(|files| CertSpec {
                service: s.service.clone(),
                files,
                hosts: s.hosts.clone(),
                pending_ok: s.acme,
            })
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
                        pending_ok: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn run_with(site: &std::path::Path) -> ProxyRun {
        ProxyRun {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin: None,
            releases: vec![],
            releases_file: None,
            shutdown_grace: std::time::Duration::from_secs(1),
            config: crate::ProxyConfig::default(),
            workers: 1,
            handoff: None,
            take_over: None,
            tls: None,
            redirect_http: None,
            site: Some(site.to_owned()),
        }
    }

    fn service(dir: &std::path::Path, name: &str, hosts: &[&str], backend: &str) -> crate::SiteService {
        let releases = dir.join(format!("{name}.json"));
        let table = format!("[{{\"release\":\"r1\",\"weight\":1,\"backends\":[\"{backend}\"]}}]");
        std::fs::write(&releases, table).unwrap();
        crate::SiteService {
            service: name.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            paths: vec![],
            tls: None,
            releases_file: releases,
            health: None,
            release_header: false,
            redirect_http: None,
            acme: false,
        }
    }

    fn write(path: &std::path::Path, services: Vec<crate::SiteService>) {
        std::fs::write(path, serde_json::to_vec(&SiteFile { services }).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn a_reload_keeps_a_staying_service_s_state_adds_and_removes_and_a_bad_file_changes_nothing() {
        let dir = kiln_testutil::tempdir("site-reload");
        let file = dir.join("site.json");
        let a = service(&dir, "a", &["a.test"], "127.0.0.1:1");
        write(&file, vec![a.clone(), service(&dir, "b", &["b.test"], "127.0.0.1:2")]);
        let run = run_with(&file);
        let s = Services::load(&run, 0).unwrap();
        let a_before = s.site.proxy(Some("a")).unwrap();
        let b_before = s.site.proxy(Some("b")).unwrap();
        // Some state of a's: a counted failure on its backend.
        a_before.registry().backends.values().next().unwrap().failures.store(2, Ordering::Relaxed);

        write(&file, vec![a.clone(), service(&dir, "c", &["c.test"], "127.0.0.1:3")]);
        let what = s.reload(&run, 0).unwrap();
        assert!(what.contains("added [c], removed [b]"), "{what}");
        let a_after = s.site.proxy(Some("a")).unwrap();
        assert!(Arc::ptr_eq(&a_before, &a_after), "a stayed: the same load balancer, its state kept");
        assert_eq!(a_after.registry().backends.values().next().unwrap().failures.load(Ordering::Relaxed), 2);
        assert!(
            s.site.proxy(Some("b")).is_err() && b_before.retired.load(Ordering::Relaxed),
            "b left and stopped checking"
        );
        assert!(s.site.proxy(Some("c")).is_ok());

        // A bad file, a bad table, two services with one name: nothing changes.
        let routes = s.site.routes();
        std::fs::write(&file, "{\"services\": [").unwrap();
        assert!(s.reload(&run, 0).unwrap_err().contains("site.json: line 1"));
        write(&file, vec![a.clone(), a.clone()]);
        assert!(s.reload(&run, 0).unwrap_err().contains("given twice"));
        let mut broken = service(&dir, "d", &["d.test"], "127.0.0.1:4");
        std::fs::write(&broken.releases_file, "not json").unwrap();
        broken.hosts = vec!["d.test".into()];
        write(&file, vec![a, broken]);
        assert!(s.reload(&run, 0).unwrap_err().contains("d.json"));
        let now = s.site.routes();
        assert_eq!(now.len(), routes.len());
        assert!(now.iter().zip(routes.iter()).all(|(x, y)| Arc::ptr_eq(x, y)), "the routes are the ones before");
    }
}
