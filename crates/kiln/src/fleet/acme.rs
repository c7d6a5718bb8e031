//! A fleet's certificates from an ACME CA (kiln.toml's `tls = { acme =
//! URL }`): the leading controller orders each one; the CA's http-01
//! checks are answered by every host's load balancer (the leader puts each
//! token under `/kiln/acme/challenge/SERVICE/TOKEN`, every agent gives it
//! to its load balancer's redirect listener); the new key is sealed as a
//! fleet secret and the chain written into the service's desired state,
//! with a `cert_obtained` history entry, in one transaction conditioned on
//! the leader's epoch. Every host's agent then serves the same pair, as
//! with a certificate's files; a renewal reaches them the same way.
//!
//! A CA checks a name at whichever address its DNS gives, so the leader
//! asks it to check only once every live host's redirect listener answers
//! the token: a round-robin DNS record over the hosts passes whichever
//! host the CA reaches.
//!
//! For: what is due (the pure [`due`]), the tokens in etcd and their check
//! on every host, the account key, and taking a certificate in. Must
//! never: write unconditioned on the leader's epoch, put a key in etcd
//! in the clear, or talk to the CA itself (that is [`crate::acme`]'s).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::etcd::{Compare, Etcd, EtcdError};
use super::place::{Desired, FleetSecret, FleetTls};
use super::{history, LEADER, SERVICES};
use crate::serve::history::Event;

/// The tokens every host's load balancer answers: `CHALLENGES` +
/// `SERVICE/TOKEN` → the key authorization.
pub const CHALLENGES: &str = "/kiln/acme/challenge/";

/// How long the leader waits for every host's load balancer to answer a
/// token (an agent takes it up within a round, a third of its lease).
pub const ANSWERED_WITHIN: Duration = Duration::from_secs(20);

/// Why a fleet certificate could not be taken in.
#[derive(Debug, thiserror::Error)]
pub enum FleetAcmeError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Secret(#[from] super::secrets::FleetSecretError),
    #[error(transparent)]
    History(#[from] history::FleetHistoryError),
    /// The account key sealed in etcd does not open as one.
    #[error("fleet secret {name:?}: not an ACME account key: {detail}")]
    Account { name: String, detail: String },
    /// The CA's chain does not read as a certificate.
    #[error("service {service}: the CA's certificate: {detail}")]
    Chain { service: String, detail: String },
    /// This controller no longer leads: nothing was written.
    #[error("no longer the leader (epoch {epoch})")]
    NotLeader { epoch: i64 },
    /// The service or the history kept moving.
    #[error("service {service}: its desired state kept changing; the certificate is taken in next time")]
    Contended { service: String },
}

/// The end of validity of the certificate in desired state (None: none
/// yet, or one that does not read).
pub fn not_after(t: &FleetTls) -> Option<i64> {
    (!t.cert.is_empty())
        .then(|| crate::proxy::tls::not_after_pem(t.cert.as_bytes(), Path::new("(desired state)")).ok())
        .flatten()
}

/// Whether a certificate is to be ordered for `d` at `now`: a service
/// that asks an ACME CA, runs, listens and answers plain HTTP (where the
/// CA checks), with no certificate yet or within its `renew_before` of
/// the end.
pub fn due(d: &Desired, now: i64) -> bool {
    let Some((t, acme)) = d.edge.tls.as_ref().and_then(|t| Some((t, t.acme.as_ref()?))) else { return false };
    d.replicas > 0
        && d.listen.is_some()
        && d.edge.redirect_http.is_some()
        && !d.edge.hosts.is_empty()
        && crate::spec::edge::acme_due(not_after(t), now, acme.renew_before_secs)
}

/// Every service's tokens, as the agents give them to their load
/// balancers: service → token → key authorization.
pub fn challenges(cluster: &Etcd) -> Result<BTreeMap<String, BTreeMap<String, String>>, EtcdError> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for kv in cluster.range_prefix(CHALLENGES)? {
        let Some((service, token)) = kv.key.trim_start_matches(CHALLENGES).split_once('/') else { continue };
        let Ok(key_auth) = String::from_utf8(kv.value) else { continue };
        out.entry(service.to_owned()).or_default().insert(token.to_owned(), key_auth);
    }
    Ok(out)
}

fn leading(epoch: i64) -> Compare {
    Compare::Created { key: LEADER.to_owned(), revision: epoch }
}

/// Removes every token of `service` (those a leader that died left), if
/// this controller still leads.
pub fn clear_challenges(cluster: &Etcd, epoch: i64, service: &str) -> Result<(), EtcdError> {
    let prefix = format!("{CHALLENGES}{service}/");
    let keys: Vec<String> = cluster.range_prefix(&prefix)?.into_iter().map(|kv| kv.key).collect();
    if !keys.is_empty() {
        cluster.txn(&[leading(epoch)], &[], &keys)?;
    }
    Ok(())
}

/// The tokens of one order, published through etcd for every host's load
/// balancer; a token counts as published once each of `hosts` (name,
/// redirect listener) answers it.
#[derive(Debug)]
pub struct Publish<'a> {
    pub cluster: &'a Etcd,
    pub epoch: i64,
    pub service: String,
    /// The host name asked for (the `Host` of the check).
    pub name: String,
    pub hosts: Vec<(String, SocketAddr)>,
    pub wait: Duration,
}

impl crate::acme::Challenges for Publish<'_> {
    fn publish(&self, token: &str, key_auth: &str) -> Result<(), String> {
        let key = format!("{CHALLENGES}{}/{token}", self.service);
        let put = [(key, key_auth.as_bytes().to_vec(), 0)];
        match self.cluster.txn(&[leading(self.epoch)], &put, &[]) {
            Ok(true) => {}
            Ok(false) => return Err(FleetAcmeError::NotLeader { epoch: self.epoch }.to_string()),
            Err(e) => return Err(e.to_string()),
        }
        let deadline = Instant::now() + self.wait;
        loop {
            let missing: Vec<&str> = self
                .hosts
                .iter()
                .filter(|(_, addr)| answer(*addr, &self.name, token).as_deref() != Some(key_auth))
                .map(|(h, _)| h.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the load balancers of {} did not answer the token within {} s",
                    missing.join(", "),
                    self.wait.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn withdraw(&self, token: &str) {
        let key = format!("{CHALLENGES}{}/{token}", self.service);
        let _ = self.cluster.txn(&[leading(self.epoch)], &[], &[key]);
    }
}

/// What `addr`'s redirect listener answers for `token`, asked as the CA
/// asks (`GET /.well-known/acme-challenge/TOKEN`, `Host: name`).
fn answer(addr: SocketAddr, name: &str, token: &str) -> Option<String> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let target = format!("/.well-known/acme-challenge/{token}");
    let req = crate::net::http::Outgoing {
        method: "GET",
        target: &target,
        host: name,
        headers: &[],
        body: crate::net::http::Body::None,
    };
    let r = crate::net::http::send(stream, req).ok()?;
    if r.status != 200 {
        return None;
    }
    String::from_utf8(r.bytes(4096).ok()?).ok()
}

/// The fleet secret holding the account key for the CA at `directory`.
pub fn account_name(directory: &str) -> String {
    format!("acme-account-{}", &crate::digest::Digest::of(directory.as_bytes()).hex()[..16])
}

/// The fleet's account key at the CA `directory` (a fleet secret, so any
/// leader uses the same account), made and sealed on first use.
pub fn account_key(cluster: &Etcd, home: &Path, directory: &str) -> Result<p256::ecdsa::SigningKey, FleetAcmeError> {
    let name = account_name(directory);
    let bad = |detail: String| FleetAcmeError::Account { name: name.clone(), detail };
    match super::secrets::list(cluster)?.into_iter().find(|r| r.name == name) {
        Some(row) => {
            let s = FleetSecret { name: name.clone(), env: None, version: row.version };
            let dir = super::secrets::sealed(cluster, home, std::slice::from_ref(&s))?;
            let value = crate::secrets::Secrets::fleet(dir.path(), home)
                .get(&name)
                .map_err(super::secrets::FleetSecretError::from)?;
            p256::ecdsa::SigningKey::from_slice(value.expose()).map_err(|e| bad(e.to_string()))
        }
        None => {
            let key = crate::acme::new_key().map_err(|e| bad(format!("a new key: {e}")))?;
            super::secrets::set(cluster, home, &name, &key.to_bytes())?;
            Ok(key)
        }
    }
}

/// What taking a certificate in did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// Written: every host is given it. `replaced`: the previous key's
    /// fleet secret, no longer used.
    Written { not_after: i64, replaced: Option<String> },
    /// The service no longer asks for this certificate (taken down, or
    /// other names or another CA since it was ordered): nothing written.
    NotWanted,
}

/// Takes an issued certificate in: its key sealed as fleet secret
/// `tls-SERVICE-HASH`, then the service's desired state given the chain
/// and that key's version, with a `cert_obtained` entry, in one
/// transaction conditioned on the leader's epoch and on the service and
/// the history being as read (read again when they moved, while the
/// service still asks for what `ordered` asked).
pub fn take(
    cluster: &Etcd,
    epoch: i64,
    home: &Path,
    service: &str,
    ordered: &Desired,
    issued: &crate::acme::Issued,
) -> Result<Taken, FleetAcmeError> {
    let not_after = crate::proxy::tls::not_after_pem(issued.chain_pem.as_bytes(), Path::new("(the CA's chain)"))
        .map_err(|e| FleetAcmeError::Chain { service: service.to_owned(), detail: e.to_string() })?;
    let Some(ordered_tls) = ordered.edge.tls.as_ref() else { return Ok(Taken::NotWanted) };
    let directory = ordered_tls.acme.as_ref().map(|a| a.directory.clone()).unwrap_or_default();
    let name = format!("tls-{service}-{}", &crate::digest::Digest::of(issued.key_pem.as_bytes()).hex()[..12]);
    let version = super::secrets::set(cluster, home, &name, issued.key_pem.as_bytes())?;
    const TRIES: u32 = 5;
    for _ in 0..TRIES {
        let Some((mut d, revision)) = super::service(cluster, service)? else { return Ok(Taken::NotWanted) };
        let Some(t) = d.edge.tls.as_mut() else { return Ok(Taken::NotWanted) };
        if !t.same_order(&d.edge.hosts, ordered_tls, &ordered.edge.hosts) {
            return Ok(Taken::NotWanted);
        }
        let previous =
            std::mem::replace(&mut t.key, FleetSecret { name: name.clone(), env: None, version: version.clone() });
        t.cert.clone_from(&issued.chain_pem);
        let event = Event::CertObtained { hosts: d.edge.hosts.clone(), not_after, directory: directory.clone() };
        let entry = history::Record { service: service.to_owned(), release: history::release_of(&d.image), event };
        let tip = history::tip(cluster)?;
        let (logged, mut puts) = history::append(&tip, &[entry], crate::time::now_ms() as i64);
        let key = format!("{SERVICES}{service}");
        puts.push((key.clone(), serde_json::to_vec(&d).unwrap_or_default(), 0));
        let compares = [leading(epoch), Compare::Modified { key, revision }, logged];
        if cluster.txn(&compares, &puts, &[])? {
            let replaced = (!previous.name.is_empty() && previous.name != name).then_some(previous.name);
            return Ok(Taken::Written { not_after, replaced });
        }
        if cluster.get(LEADER)?.is_none_or(|(rev, _)| rev != epoch) {
            return Err(FleetAcmeError::NotLeader { epoch });
        }
    }
    Err(FleetAcmeError::Contended { service: service.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::place::{FleetAcme, FleetEdge};

    fn acme_service(cert: &str) -> Desired {
        let mut d = crate::fleet::fixtures::desired("127.0.0.1:5000/web@sha256:aa");
        d.listen = Some(8443);
        d.edge = FleetEdge {
            hosts: vec!["shop.test".into()],
            redirect_http: Some(8080),
            tls: Some(FleetTls {
                cert: cert.to_owned(),
                acme: Some(FleetAcme {
                    directory: "https://ca.test/dir".into(),
                    renew_before_secs: 30 * 86_400,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        d
    }

    #[test]
    fn a_certificate_is_due_when_there_is_none_or_its_renewal_time_came_and_only_where_a_ca_can_check() {
        let none = acme_service("");
        assert!(due(&none, 0));
        // Not where the CA cannot reach a host: no redirect listener, no
        // load balancer, no names, nothing running.
        for broken in [
            Desired { edge: FleetEdge { redirect_http: None, ..none.edge.clone() }, ..none.clone() },
            Desired { listen: None, ..none.clone() },
            Desired { edge: FleetEdge { hosts: vec![], ..none.edge.clone() }, ..none.clone() },
            Desired { replicas: 0, ..none.clone() },
        ] {
            assert!(!due(&broken, 0), "{broken:?}");
        }
        // A certificate's files are the person's to renew.
        let mut files = none.clone();
        files.edge.tls.as_mut().unwrap().acme = None;
        assert!(!due(&files, 0));
        // A chain that does not read counts as none: ordered again.
        assert!(due(&acme_service("not a certificate"), 0));
    }

    #[test]
    fn a_deploy_keeps_the_obtained_certificate_while_it_asks_the_same_ca_for_the_same_names() {
        let mut cur = acme_service("CHAIN");
        cur.edge.tls.as_mut().unwrap().key = FleetSecret { name: "tls-web-1".into(), env: None, version: "v1".into() };
        let next = Desired { image: "127.0.0.1:5000/web@sha256:bb".into(), ..acme_service("") };
        let change = crate::fleet::change::Change::Deploy { settings: Box::new(next.clone()), canary: None };
        let (d, _) = crate::fleet::change::apply("web", Some(&cur), change, 0).unwrap();
        let t = d.unwrap().edge.tls.unwrap();
        assert_eq!((t.cert.as_str(), t.key.name.as_str()), ("CHAIN", "tls-web-1"));
        // Other names: a new order, nothing carried over.
        let mut other = next.clone();
        other.edge.hosts = vec!["www.shop.test".into()];
        let change = crate::fleet::change::Change::Deploy { settings: Box::new(other), canary: None };
        let (d, _) = crate::fleet::change::apply("web", Some(&cur), change, 0).unwrap();
        assert_eq!(d.unwrap().edge.tls.unwrap().cert, "");
        // Another CA: the same.
        let mut moved = next;
        moved.edge.tls.as_mut().unwrap().acme.as_mut().unwrap().directory = "https://other.test/dir".into();
        let change = crate::fleet::change::Change::Deploy { settings: Box::new(moved), canary: None };
        let (d, _) = crate::fleet::change::apply("web", Some(&cur), change, 0).unwrap();
        assert_eq!(d.unwrap().edge.tls.unwrap().cert, "");
    }
}
