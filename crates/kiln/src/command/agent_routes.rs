//! The load balancers `kiln agent` runs on its host: one per fleet
//! service that listens, brought to the fleet's tables each round, with
//! what each finds healthy kept for the host's record; and the fleet
//! certificates they serve, written onto tmpfs from sealed secrets.
//!
//! For: the agent's load balancers and their certificate files. Must
//! never: decide what a table holds (the pure `fleet::route` does).

use crate::serve::dataplane::{DataPlane, DataPlanes};

/// The load balancers this host runs for the fleet's services, each with
/// what it was started for and the table it was last given.
#[derive(Debug, Default)]
pub(super) struct LoadBalancers {
    running: std::collections::BTreeMap<String, (std::sync::Arc<dyn DataPlane>, crate::fleet::route::Routed)>,
    /// What each routes to after the last round: the backends it finds
    /// healthy and sends requests to (for the host's record).
    pub(super) routes: std::collections::BTreeMap<String, Vec<std::net::SocketAddr>>,
    /// The backends each finds healthy in a release of weight 0 only (a
    /// blue-green release's other set).
    pub(super) standby: std::collections::BTreeMap<String, Vec<std::net::SocketAddr>>,
    /// The ACME tokens each load balancer was given (token → key
    /// authorization).
    answering: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

impl LoadBalancers {
    /// Brings this host's load balancers to `routed`: one per service, on
    /// `advertise:listen`, started (or adopted from a previous agent) when
    /// missing, dead or moved; its table set when it changed; stopped when
    /// the service no longer has one. One failing service never stops the
    /// others'. Returns what each load balancer counted over the window
    /// its service's analysed canary asks for; keeps in `routes` the
    /// backends each finds healthy.
    pub(super) fn apply(
        &mut self,
        planes: &dyn DataPlanes,
        advertise: std::net::IpAddr,
        routed: std::collections::BTreeMap<String, crate::fleet::route::Routed>,
        tls_files: &dyn Fn(&str, &crate::fleet::place::FleetTls) -> Result<TlsPaths, String>,
        log: &dyn Fn(&str),
    ) -> std::collections::BTreeMap<String, crate::fleet::canary::HostStats> {
        use crate::fleet::route::{CANARY, STABLE};
        let mut counted = std::collections::BTreeMap::new();
        self.routes.clear();
        self.standby.clear();
        let gone: Vec<String> = self.running.keys().filter(|s| !routed.contains_key(*s)).cloned().collect();
        for service in gone {
            planes.stop(&service);
            self.running.remove(&service);
            self.answering.remove(&service);
            log(&format!("{service}: load balancer stopped"));
        }
        for (service, want) in routed {
            let same_site = |(p, had): &(std::sync::Arc<dyn DataPlane>, crate::fleet::route::Routed)| {
                p.is_alive() && had.listen == want.listen && had.health == want.health && had.edge == want.edge
            };
            let result = match self.running.get(&service) {
                Some(cur) if same_site(cur) && cur.1.table == want.table => Ok(cur.0.clone()),
                Some(cur) if same_site(cur) => cur.0.set_table(&want.table).map(|()| cur.0.clone()),
                _ => {
                    // A new process answers no token yet.
                    self.answering.remove(&service);
                    let files = match &want.edge.tls {
                        Some(t) => match tls_files(&service, t) {
                            Ok(f) => Some(f),
                            Err(e) => {
                                log(&format!("{service}: its certificate: {e}"));
                                continue;
                            }
                        },
                        None => None,
                    };
                    let tls = files.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                    let listen = std::net::SocketAddr::new(advertise, want.listen);
                    crate::spec::fleet_service(
                        "kiln place",
                        &service,
                        listen,
                        want.health.as_deref(),
                        &want.edge.site(tls, advertise),
                    )
                    .map_err(crate::serve::ServeError::Spec)
                    .and_then(|spec| planes.ensure(&spec))
                    .and_then(|p| p.set_table(&want.table).map(|()| p))
                }
            };
            match result {
                Ok(p) => {
                    if let Some(w) = want.window_secs {
                        // A release this load balancer does not route to
                        // (yet) counted nothing.
                        let stats = |release: &str| p.stats(release, w).unwrap_or_default();
                        let host = crate::fleet::canary::HostStats { canary: stats(CANARY), stable: stats(STABLE) };
                        counted.insert(service.clone(), host);
                    }
                    match p.backends() {
                        Ok(b) => {
                            let weighted: std::collections::BTreeSet<std::net::SocketAddr> =
                                want.table.iter().filter(|e| e.weight > 0).flat_map(|e| e.backends.clone()).collect();
                            let (routed, standby): (Vec<_>, Vec<_>) = b
                                .into_iter()
                                .filter(|b| b.healthy && !b.draining)
                                .map(|b| b.addr)
                                .partition(|a| weighted.contains(a));
                            self.routes.insert(service.clone(), routed);
                            if !standby.is_empty() {
                                self.standby.insert(service.clone(), standby);
                            }
                        }
                        Err(e) => log(&format!("{service}: its backends' health: {e}")),
                    }
                    self.answer(&service, &*p, &want.challenges, log);
                    self.running.insert(service, (p, want));
                }
                Err(e) => log(&format!("{service}: load balancer: {e}")),
            }
        }
        counted
    }

    /// Gives `service`'s load balancer the tokens it should answer and
    /// takes back those no longer wanted; one that fails is tried again
    /// next round.
    fn answer(
        &mut self,
        service: &str,
        p: &dyn DataPlane,
        want: &std::collections::BTreeMap<String, String>,
        log: &dyn Fn(&str),
    ) {
        let had = self.answering.entry(service.to_owned()).or_default();
        let gone: Vec<String> = had.keys().filter(|t| !want.contains_key(*t)).cloned().collect();
        for token in gone {
            match p.challenge(&token, None) {
                Ok(()) => {
                    had.remove(&token);
                }
                Err(e) => log(&format!("{service}: withdrawing ACME token {token}: {e}")),
            }
        }
        for (token, key_auth) in want {
            if had.get(token) == Some(key_auth) {
                continue;
            }
            match p.challenge(token, Some(key_auth)) {
                Ok(()) => {
                    had.insert(token.clone(), key_auth.clone());
                }
                Err(e) => log(&format!("{service}: answering ACME token {token}: {e}")),
            }
        }
    }
}

/// A certificate chain's file and its key's, as a load balancer reads them.
type TlsPaths = (std::path::PathBuf, std::path::PathBuf);

/// Writes a fleet service's certificate and key where this host's load
/// balancer reads them: `/run/kiln/<home>/fleet-tls/SERVICE/` (tmpfs,
/// mode 0700; the key 0600), the key opened from its sealed version with
/// this host's KEK. Written again only when the version or the chain
/// changed; the load balancer re-reads changed files on its own.
pub(super) fn write_tls(
    etcd: &crate::fleet::etcd::Etcd,
    home: &std::path::Path,
    service: &str,
    t: &crate::fleet::place::FleetTls,
) -> Result<TlsPaths, String> {
    use std::os::unix::fs::PermissionsExt;
    // A certificate from ACME is where the load balancer of a service
    // that asks a CA looks for it; none yet: it refuses those names in
    // the handshake until the leader has obtained one.
    let dir = match &t.acme {
        Some(_) => crate::runtime::run_dir(home).join("tls").join(service),
        None => crate::runtime::run_dir(home).join("fleet-tls").join(service),
    };
    if t.acme.is_some() && t.cert.is_empty() {
        return Ok((dir.join("cert.pem"), dir.join("key.pem")));
    }
    let at = |p: &std::path::Path, e: std::io::Error| format!("{}: {e}", p.display());
    std::fs::create_dir_all(&dir).map_err(|e| at(&dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| at(&dir, e))?;
    let (cert, key, version) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("key.version"));
    let want = format!("{}/{}", t.key.name, t.key.version);
    let current = std::fs::read_to_string(&version).is_ok_and(|v| v == want)
        && key.exists()
        && std::fs::read_to_string(&cert).is_ok_and(|c| c == t.cert);
    if !current {
        let sealed =
            crate::fleet::secrets::sealed(etcd, home, std::slice::from_ref(&t.key)).map_err(|e| e.to_string())?;
        let value = crate::secrets::Secrets::fleet(sealed.path(), home).get(&t.key.name).map_err(|e| e.to_string())?;
        // The key before its chain: a chain that meets an old key is
        // refused by the load balancer, which keeps its pair and tries
        // again.
        let private = |path: &std::path::Path, bytes: &[u8]| -> Result<(), String> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| at(&tmp, e))?;
            f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| at(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| at(path, e))
        };
        private(&key, value.expose())?;
        private(&cert, t.cert.as_bytes())?;
        private(&version, want.as_bytes())?;
    }
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::route::Routed;
    use crate::proxy::TableEntry;
    use crate::serve::dataplane::RecordingDataPlanes;

    fn routed(backends: &[&str]) -> Routed {
        let backends = backends.iter().map(|b| b.parse().unwrap()).collect();
        Routed {
            listen: 18080,
            health: Some("/".into()),
            edge: Default::default(),
            table: vec![TableEntry { release: "stable".into(), weight: 100, backends, fault: None }],
            window_secs: None,
            challenges: Default::default(),
        }
    }

    #[test]
    fn each_load_balancer_s_healthy_backends_are_kept_and_one_failing_stops_no_other() {
        let planes = RecordingDataPlanes::default();
        let mut lbs = LoadBalancers::default();
        let ip: std::net::IpAddr = "127.0.0.5".parse().unwrap();
        let no_tls = |_: &str, _: &crate::fleet::place::FleetTls| -> Result<TlsPaths, String> { Err("none".into()) };
        let said = std::sync::Mutex::new(Vec::<String>::new());
        let log = |m: &str| said.lock().unwrap().push(m.to_owned());
        let tables = |api: &[&str]| {
            [("web".to_owned(), routed(&["10.0.0.2:2", "10.0.0.1:1"])), ("api".to_owned(), routed(api))].into()
        };
        lbs.apply(&planes, ip, tables(&["10.0.0.3:3"]), &no_tls, &log);
        let addr = |s: &str| -> std::net::SocketAddr { s.parse().unwrap() };
        assert_eq!(lbs.routes["web"], [addr("10.0.0.1:1"), addr("10.0.0.2:2")], "sorted by address");
        assert_eq!(lbs.routes["api"], [addr("10.0.0.3:3")]);
        // api's load balancer stops answering: its routes are not kept
        // (not known healthy), web's are, and the failure is logged.
        planes.fail("api", Some("admin refused"));
        lbs.apply(&planes, ip, tables(&["10.0.0.3:3"]), &no_tls, &log);
        assert!(!lbs.routes.contains_key("api"), "{:?}", lbs.routes);
        assert_eq!(lbs.routes["web"].len(), 2);
        assert!(said.lock().unwrap().iter().any(|m| m.starts_with("api: its backends' health")), "{said:?}");
        // A service gone from the fleet: its load balancer stopped, no
        // routes.
        planes.fail("api", None);
        lbs.apply(&planes, ip, [("web".to_owned(), routed(&["10.0.0.1:1"]))].into(), &no_tls, &log);
        assert_eq!(lbs.routes.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(lbs.routes["web"], [addr("10.0.0.1:1")]);
        assert!(said.lock().unwrap().iter().any(|m| m == "api: load balancer stopped"), "{said:?}");
    }

    #[test]
    fn backends_of_a_weight_zero_release_are_on_standby_not_routed_to() {
        let planes = RecordingDataPlanes::default();
        let mut lbs = LoadBalancers::default();
        let ip: std::net::IpAddr = "127.0.0.5".parse().unwrap();
        let no_tls = |_: &str, _: &crate::fleet::place::FleetTls| -> Result<TlsPaths, String> { Err("none".into()) };
        let mut web = routed(&["10.0.0.1:1"]);
        let standby = vec!["10.0.0.2:2".parse().unwrap()];
        web.table.push(TableEntry { release: "standby".into(), weight: 0, backends: standby.clone(), fault: None });
        lbs.apply(&planes, ip, [("web".to_owned(), web)].into(), &no_tls, &|_| {});
        assert_eq!(lbs.routes["web"], ["10.0.0.1:1".parse::<std::net::SocketAddr>().unwrap()]);
        assert_eq!(lbs.standby["web"], standby);
        // Switched: the same backend at weight 100 is routed to.
        let switched = Routed {
            table: vec![TableEntry { release: "stable".into(), weight: 100, backends: standby.clone(), fault: None }],
            ..routed(&[])
        };
        lbs.apply(&planes, ip, [("web".to_owned(), switched)].into(), &no_tls, &|_| {});
        assert_eq!(lbs.routes["web"], standby);
        assert!(!lbs.standby.contains_key("web"));
    }

    #[test]
    fn acme_tokens_are_given_once_taken_back_when_gone_and_tried_again_after_a_failure() {
        use crate::serve::dataplane::DataPlaneCall;
        let planes = RecordingDataPlanes::default();
        let mut lbs = LoadBalancers::default();
        let ip: std::net::IpAddr = "127.0.0.5".parse().unwrap();
        let no_tls = |_: &str, _: &crate::fleet::place::FleetTls| -> Result<TlsPaths, String> { Err("none".into()) };
        let log = |_: &str| {};
        let with = |tokens: &[(&str, &str)]| {
            let mut r = routed(&["10.0.0.1:1"]);
            r.challenges = tokens.iter().map(|(t, k)| ((*t).to_owned(), (*k).to_owned())).collect();
            [("web".to_owned(), r)].into()
        };
        let given = |planes: &RecordingDataPlanes| -> Vec<(String, Option<String>)> {
            planes
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    DataPlaneCall::Challenge { token, key_auth, .. } => Some((token, key_auth)),
                    _ => None,
                })
                .collect()
        };
        lbs.apply(&planes, ip, with(&[("t1", "t1.thumb")]), &no_tls, &log);
        lbs.apply(&planes, ip, with(&[("t1", "t1.thumb")]), &no_tls, &log);
        assert_eq!(given(&planes), [("t1".to_owned(), Some("t1.thumb".to_owned()))], "given once");
        // The leader withdrew it: taken back.
        lbs.apply(&planes, ip, with(&[]), &no_tls, &log);
        assert_eq!(given(&planes).last(), Some(&("t1".to_owned(), None)));
        // A load balancer that refuses a token is asked again next round.
        planes.fail("web", Some("admin refused"));
        lbs.apply(&planes, ip, with(&[("t2", "t2.thumb")]), &no_tls, &log);
        planes.fail("web", None);
        let before = given(&planes).len();
        lbs.apply(&planes, ip, with(&[("t2", "t2.thumb")]), &no_tls, &log);
        let after = given(&planes);
        assert_eq!(after.len(), before + 1, "{after:?}");
        assert_eq!(after.last(), Some(&("t2".to_owned(), Some("t2.thumb".to_owned()))));
    }
}
