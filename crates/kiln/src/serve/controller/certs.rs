//! The certificates of the services' HTTPS listeners, as the controller
//! keeps them: each served certificate's end of validity watched (the
//! `cert-expiring` alert 14 days before it), and those a service asks an
//! ACME CA for obtained and renewed, each issuance on a thread of its own
//! (a CA answers in seconds; the controller's tick never waits for it).
//!
//! Observe (the certificate file, a finished issuance) → pure decide
//! (`spec::edge::expiry_warning`, `acme_due`, `acme_retry_secs`) → act
//! (record the warning; start an issuance). A failed issuance backs off,
//! 1 minute doubling to 1 hour; the running certificate stays served.
//!
//! For: those two jobs. Must never: block a tick on a CA, or serve a
//! certificate the load balancer has not checked (it loads the files only
//! if they pass).

use std::sync::mpsc;

use super::*;
use crate::acme::store::{live_files, TlsStore};

/// A service's issuance in flight, and its failures in a row.
#[derive(Debug, Default)]
pub(super) struct Acme {
    running: Option<mpsc::Receiver<Result<i64, String>>>,
    pub(super) failures: u32,
    /// No issuance starts before this (a backoff, or the next look).
    pub(super) next_ms: u64,
}

/// A service that asks an ACME CA: its name, its settings, its hosts and
/// its load balancer (which answers the CA's checks).
type Wanted = (String, crate::spec::edge::AcmeSpec, Vec<String>, Arc<dyn DataPlane>);

/// The service's load balancer answers the CA's http-01 checks.
struct Publish(Arc<dyn DataPlane>);

impl crate::acme::Challenges for Publish {
    fn publish(&self, token: &str, key_auth: &str) -> Result<(), String> {
        self.0.challenge(token, Some(key_auth)).map_err(|e| e.to_string())
    }
    fn withdraw(&self, token: &str) {
        let _ = self.0.challenge(token, None);
    }
}

impl Controller<'_> {
    /// The certificate file a service serves: its own, or the one kiln
    /// obtained for it.
    pub(super) fn served_cert(&self, name: &str, spec: &ServiceSpec) -> Option<PathBuf> {
        let t = spec.edge.tls.as_ref()?;
        Some(match t.acme {
            Some(_) => live_files(&self.home, name).cert,
            None => t.cert.clone(),
        })
    }

    /// Once a minute: each served certificate's end of validity, read from
    /// its file; one within 14 days is recorded and alerted
    /// (`cert-expiring`), again each day until it is renewed. A file that
    /// cannot be read is left to its load balancer, which keeps the pair
    /// it has and says so.
    pub(super) fn check_certificates(&mut self, now_ms: u64) {
        if self.certs_checked_ms.is_some_and(|t| now_ms < t + 60_000) {
            return;
        }
        self.certs_checked_ms = Some(now_ms);
        let now = (now_ms / 1000) as i64;
        let certs: Vec<(String, PathBuf)> = self
            .services
            .iter()
            .filter(|(_, s)| s.state.down.is_none())
            .filter_map(|(n, s)| self.served_cert(n, &s.spec).map(|c| (n.clone(), c)))
            .collect();
        for (name, cert) in certs {
            let Ok(not_after) = crate::proxy::tls::not_after(&cert) else { continue };
            let Some(days_left) =
                crate::spec::edge::expiry_warning(not_after, now, self.cert_warned.get(&name).copied())
            else {
                continue;
            };
            let release = self.release_of(&name);
            let event = Event::CertExpiring { cert: cert.display().to_string(), not_after, days_left };
            match self.record(&name, &release, now_ms, &event) {
                Ok(()) => {
                    self.cert_warned.insert(name, (not_after, now));
                }
                Err(e) => eprintln!("kiln serve: service {name}: recording a certificate warning: {e}"),
            }
        }
    }

    /// Each ACME service: a finished issuance is taken in; one that is due
    /// (no certificate, or within `renew_before` of its end) and not
    /// backing off is started.
    pub(super) fn tick_acme(&mut self, now_ms: u64) {
        let wanted: Vec<Wanted> = self
            .services
            .iter()
            .filter(|(_, s)| s.state.down.is_none())
            .filter_map(|(n, s)| {
                let acme = s.spec.edge.tls.as_ref()?.acme.clone()?;
                Some((n.clone(), acme, s.spec.edge.hosts.clone(), s.dp.clone()?))
            })
            .collect();
        for (name, acme, hosts, dp) in wanted {
            let st = self.acme.entry(name.clone()).or_default();
            if let Some(rx) = &st.running {
                match rx.try_recv() {
                    Err(mpsc::TryRecvError::Empty) => continue,
                    Ok(Ok(not_after)) => {
                        eprintln!(
                            "kiln serve: service {name}: certificate for {} obtained, valid until {}",
                            hosts.join(", "),
                            crate::time::rfc3339(not_after)
                        );
                        st.failures = 0;
                        // Looked at again (renewal) after a pause, so a
                        // `renew_before` longer than the CA's validity
                        // renews every 10 s, not every tick.
                        st.next_ms = now_ms + 10_000;
                    }
                    failed => {
                        let e = match failed {
                            Ok(Err(e)) => e,
                            _ => "the issuance thread ended without an answer".to_owned(),
                        };
                        st.failures += 1;
                        let wait = crate::spec::edge::acme_retry_secs(st.failures);
                        st.next_ms = now_ms + wait as u64 * 1000;
                        eprintln!(
                            "kiln serve: service {name}: no certificate from {}: {e}; again in {wait} s",
                            acme.directory
                        );
                    }
                }
                st.running = None;
            }
            if now_ms < st.next_ms {
                continue;
            }
            let store = TlsStore::open(&self.home);
            let files = live_files(&self.home, &name);
            // After a reboot the clear copy is gone: written again from the store.
            if !files.cert.exists() {
                if let Err(e) = store.write_live(&name) {
                    eprintln!("kiln serve: service {name}: the stored certificate: {e}");
                }
            }
            let not_after = crate::proxy::tls::not_after(&files.cert).ok();
            let now = (now_ms / 1000) as i64;
            if !crate::spec::edge::acme_due(not_after, now, acme.renew_before_secs) {
                // Not due: looked at again in a minute.
                st.next_ms = now_ms + 60_000;
                continue;
            }
            let (tx, rx) = mpsc::channel();
            st.running = Some(rx);
            let order =
                crate::acme::Order { directory: acme.directory.clone(), email: acme.email, ca: acme.ca, names: hosts };
            let home = self.home.clone();
            eprintln!(
                "kiln serve: service {name}: asking {} for a certificate for {}",
                order.directory,
                order.names.join(", ")
            );
            std::thread::spawn(move || {
                let result = (|| -> Result<i64, String> {
                    let store = TlsStore::open(&home);
                    let account = store.account_key(&order.directory).map_err(|e| e.to_string())?;
                    let key = crate::acme::new_key().map_err(|e| e.to_string())?;
                    let issued = crate::acme::issue(&order, &account, &key, &Publish(dp)).map_err(|e| e.to_string())?;
                    store.save(&name, &issued).map_err(|e| e.to_string())?;
                    crate::proxy::tls::not_after(&live_files(&home, &name).cert).map_err(|e| e.to_string())
                })();
                let _ = tx.send(result);
            });
        }
    }
}
