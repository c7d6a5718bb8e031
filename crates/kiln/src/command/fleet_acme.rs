//! The leading controller's certificates from ACME, for fleet services
//! that ask a CA: each due one ordered on a thread of its own (a CA
//! answers in seconds; the leader's round never waits for it), a failure
//! backed off 1 minute doubling to 1 hour, as on one host; the running
//! certificate stays served meanwhile.
//!
//! Observe (desired state, the live hosts, a finished issuance) → pure
//! decide ([`crate::fleet::acme::due`], `acme_retry_secs`) → act (an
//! issuance, whose every write goes through [`crate::fleet::acme`],
//! conditioned on the epoch it was started under).
//!
//! For: starting and following those issuances. Must never: block a
//! round, or write to etcd itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;

use crate::fleet::acme::{self as fleet_acme, Taken};
use crate::fleet::etcd::{Cluster, Etcd};

/// One service's issuance in flight, and its failures in a row.
#[derive(Debug, Default)]
struct State {
    running: Option<mpsc::Receiver<Result<Taken, String>>>,
    failures: u32,
    /// No issuance starts before this (a backoff, or a pause after one).
    next_ms: u64,
}

/// The issuances of one controller, across the rounds it leads.
#[derive(Debug)]
pub(super) struct Issuer {
    cluster: Cluster,
    home: PathBuf,
    by: BTreeMap<String, State>,
}

impl Issuer {
    pub(super) fn new(cluster: Cluster, home: PathBuf) -> Issuer {
        Issuer { cluster, home, by: BTreeMap::new() }
    }

    /// One round under `epoch`: a finished issuance is taken note of; a
    /// service whose certificate is due, and not backing off, gets one
    /// started. One failing service never holds up the others.
    pub(super) fn round(&mut self, etcd: &Etcd, epoch: i64, log: &dyn Fn(&str)) {
        let services = match crate::fleet::services(etcd, &|_| {}) {
            Ok(s) => s,
            Err(e) => return log(&format!("certificates: {e}")),
        };
        let now_ms = crate::time::now_ms();
        self.by.retain(|name, st| st.running.is_some() || services.contains_key(name));
        let mut hosts = None;
        for (name, (d, _)) in services {
            let st = self.by.entry(name.clone()).or_default();
            if let Some(rx) = &st.running {
                let outcome = match rx.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => continue,
                    Ok(outcome) => outcome,
                    Err(mpsc::TryRecvError::Disconnected) => Err("the issuance ended without an answer".into()),
                };
                st.running = None;
                match outcome {
                    Ok(Taken::Written { not_after, replaced }) => {
                        log(&format!(
                            "{name}: certificate for {} obtained, valid until {}; every host is given it",
                            d.edge.hosts.join(", "),
                            crate::time::rfc3339(not_after)
                        ));
                        st.failures = 0;
                        // Looked at again after a pause: a renew_before
                        // longer than the CA's validity renews every 10 s,
                        // not every round.
                        st.next_ms = now_ms + 10_000;
                        if let Some(old) = replaced {
                            if let Err(e) = crate::fleet::secrets::remove(etcd, &old) {
                                log(&format!("{name}: the replaced certificate's key {old}: {e}"));
                            }
                        }
                    }
                    Ok(Taken::NotWanted) => log(&format!("{name}: certificate obtained, but no longer asked for")),
                    Err(e) => {
                        st.failures += 1;
                        let wait = crate::spec::edge::acme_retry_secs(st.failures);
                        st.next_ms = now_ms + wait as u64 * 1000;
                        log(&format!("{name}: no certificate: {e}; again in {wait} s"));
                    }
                }
            }
            if now_ms < st.next_ms || !fleet_acme::due(&d, (now_ms / 1000) as i64) {
                continue;
            }
            // Every live host's redirect listener answers the CA's check.
            let records = match &hosts {
                Some(r) => r,
                None => match crate::fleet::host_records(etcd) {
                    Ok(r) => hosts.insert(r),
                    Err(e) => return log(&format!("certificates: {e}")),
                },
            };
            let Some(port) = d.edge.redirect_http else { continue };
            let at: Vec<(String, std::net::SocketAddr)> = records
                .iter()
                .filter_map(|r| Some((r.name.clone(), std::net::SocketAddr::new(r.address?, port))))
                .collect();
            if at.is_empty() {
                continue;
            }
            let Some(acme) = d.edge.tls.as_ref().and_then(|t| t.acme.clone()) else { continue };
            log(&format!("{name}: asking {} for a certificate for {}", acme.directory, d.edge.hosts.join(", ")));
            let (tx, rx) = mpsc::channel();
            st.running = Some(rx);
            let (cluster, home) = (self.cluster.clone(), self.home.clone());
            std::thread::spawn(move || {
                let _ = tx.send(issue(&cluster, &home, epoch, &name, &d, &acme, at));
            });
        }
    }
}

/// One issuance for `service` (desired state `d`, as read when it was
/// started): the tokens of a dead leader cleared, the fleet's account,
/// a new key, the order with every host answering its tokens, and the
/// certificate taken in.
fn issue(
    cluster: &Cluster,
    home: &std::path::Path,
    epoch: i64,
    service: &str,
    d: &crate::fleet::place::Desired,
    acme: &crate::fleet::place::FleetAcme,
    hosts: Vec<(String, std::net::SocketAddr)>,
) -> Result<Taken, String> {
    let etcd = Etcd::new(cluster).map_err(|e| e.to_string())?;
    fleet_acme::clear_challenges(&etcd, epoch, service).map_err(|e| e.to_string())?;
    // The CA file the deploy read, where the ACME client reads one.
    let ca = match &acme.ca_pem {
        Some(pem) => {
            let dir = crate::runtime::run_dir(home).join("acme-ca");
            let path = dir.join(format!("{}.pem", &crate::digest::Digest::of(pem.as_bytes()).hex()[..16]));
            std::fs::create_dir_all(&dir)
                .and_then(|()| crate::sys::atomic::write(&path, pem.as_bytes()))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let account = fleet_acme::account_key(&etcd, home, &acme.directory).map_err(|e| e.to_string())?;
    let key = crate::acme::new_key().map_err(|e| e.to_string())?;
    let order = crate::acme::Order {
        directory: acme.directory.clone(),
        email: acme.email.clone(),
        ca,
        names: d.edge.hosts.clone(),
    };
    let publish = fleet_acme::Publish {
        cluster: &etcd,
        epoch,
        service: service.to_owned(),
        name: d.edge.hosts[0].clone(),
        hosts,
        wait: fleet_acme::ANSWERED_WITHIN,
    };
    let issued = crate::acme::issue(&order, &account, &key, &publish).map_err(|e| e.to_string())?;
    fleet_acme::take(&etcd, epoch, home, service, d, &issued).map_err(|e| e.to_string())
}
