//! The fleet's heal commands: `kiln chaos --cluster` (kills asked of
//! each instance's host, never past the share down), `kiln quarantine` and
//! `release-quarantine --cluster`, and `kiln verify-instances --cluster`
//! (every host checks its instances for drift now). Each asks agents
//! through etcd (`/kiln/ask/`), a kill or a quarantine in the same
//! transaction as its history entry; the agents act (`super::agent`).
//!
//! For: asking and reporting. Must never: touch an instance itself, or
//! decide which to kill (`fleet::chaos::pick` does).

use super::*;

/// Carries out a fleet heal command; any other is refused by name.
pub(super) fn execute(cmd: Command) -> Result<Output, CommandError> {
    match cmd {
        Command::FleetChaos { cluster, service, kill_rate, duration_ms, max_share, kills, actor } => {
            use crate::fleet::chaos::{pick, Pick, Tally, KILLS};
            let bad =
                |field: &str, message: &str| CommandError::BadRequest { field: field.into(), message: message.into() };
            if !(kill_rate.is_finite() && kill_rate > 0.0) {
                return Err(bad("kill_rate", "kills per second: a positive number"));
            }
            if !(max_share > 0.0 && max_share <= 1.0) {
                return Err(bad("max_share", "a share of the replicas, above 0 and at most 1"));
            }
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            if crate::fleet::service(&etcd, &service)?.is_none() {
                return Err(bad("service", &format!("{service} is not in the fleet")));
            }
            let rows = || -> Result<Vec<crate::fleet::ps::SlotRow>, CommandError> {
                let assigned = crate::fleet::all_assignments(&etcd)?;
                Ok(crate::fleet::ps::rows(&assigned, &crate::fleet::host_records(&etcd)?))
            };
            let started = std::time::Instant::now();
            let killing = std::time::Duration::from_millis(duration_ms);
            let period = std::time::Duration::from_secs_f64(1.0 / kill_rate);
            // After the last kill, its slot has this long to serve again.
            let settle = std::time::Duration::from_secs(30);
            let mut next = started;
            let mut tally = Tally::default();
            let mut made = 0u32;
            let mut seed = crate::time::now_ms() | 1;
            loop {
                let now = std::time::Instant::now();
                let all = rows()?;
                tally.observe(&all, crate::time::now_ms());
                let on = now - started < killing && kills.is_none_or(|k| made < k);
                if on && now >= next {
                    // xorshift: which serving slot; no need for more.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    match pick(&all, &service, max_share, &tally, seed as usize) {
                        Pick::Kill { host, slot, instance } => {
                            // The kill asked with its history entry, in
                            // one transaction (log before state).
                            let image =
                                all.iter().find(|r| r.instance.as_deref() == Some(&instance)).map(|r| r.image.clone());
                            let entry = crate::fleet::records::of_replacing(
                                &service,
                                &image.unwrap_or_default(),
                                &instance,
                                crate::heal::Cause::Chaos,
                                format!("killed by kiln chaos of {actor} on {host}"),
                            );
                            let ask = (format!("{KILLS}{host}/{instance}"), actor.as_bytes().to_vec(), 0);
                            if !crate::fleet::history::record(&etcd, &[entry], &[ask], &[])? {
                                return Err(crate::fleet::change::ChangeError::Contended { service, tries: 5 }.into());
                            }
                            tally.killed(&slot, &instance, crate::time::now_ms());
                            made += 1;
                        }
                        Pick::Refused { .. } => tally.refused(),
                        Pick::Nothing => {}
                    }
                    next += period;
                }
                if !on && (tally.settled() || now - started >= killing + settle) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Ok(Output::FleetChaos(tally.report(&service)))
        }
        Command::FleetQuarantine { cluster, instance, reason, actor, release } => {
            use crate::fleet::quarantine::{find, key, Ask};
            use crate::serve::history::Event;
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            let rows =
                crate::fleet::ps::rows(&crate::fleet::all_assignments(&etcd)?, &crate::fleet::host_records(&etcd)?);
            let bad = |message: String| CommandError::BadRequest { field: "instance".into(), message };
            let row = find(&rows, &instance).map_err(bad)?;
            let id = row.instance.clone().unwrap_or_default();
            let k = key(&row.host, &id);
            let asked = etcd.get(&k)?.is_some();
            let record = |event| crate::fleet::history::Record {
                service: row.service.clone(),
                release: crate::fleet::history::release_of(&row.image),
                event,
            };
            let (written, message) = if release {
                if !asked {
                    return Err(bad(format!("{id} is not quarantined")));
                }
                let entry = record(Event::Unquarantined { instance: id.clone(), actor: actor.clone() });
                let written = crate::fleet::history::record(&etcd, &[entry], &[], std::slice::from_ref(&k))?;
                (written, format!("{id}: released; {}'s agent destroys it and what was kept", row.host))
            } else {
                if asked {
                    return Err(bad(format!("{id} is quarantined already")));
                }
                if row.state != crate::fleet::ps::SlotState::Serving {
                    return Err(bad(format!("{id} is {}: only a serving instance is quarantined", row.state.name())));
                }
                let ask = Ask { reason: reason.clone(), actor: actor.clone(), at_ms: crate::time::now_ms() };
                let entry = record(Event::Quarantined { instance: id.clone(), reason, actor });
                let put = (k, serde_json::to_vec(&ask).unwrap_or_default(), 0);
                let written = crate::fleet::history::record(&etcd, &[entry], &[put], &[])?;
                let message = format!(
                    "{id} on {}: out of every load balancer within a round, then frozen and kept in its \
                     $KILN_HOME/quarantine/{id}/; slot {} gets a new instance",
                    row.host, row.slot
                );
                (written, message)
            };
            if !written {
                return Err(
                    crate::fleet::change::ChangeError::Contended { service: row.service.clone(), tries: 5 }.into()
                );
            }
            Ok(Output::Done { message })
        }
        Command::FleetVerify { cluster, service } => {
            use crate::fleet as f;
            let etcd = f::etcd::Etcd::new(&cluster)?;
            let asked = etcd.put(f::VERIFY, crate::time::now_secs().to_string().as_bytes(), 0)?;
            // Each agent answers within a round or two; one that does not
            // within 15 s is named as such.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            let rows = loop {
                let rows = f::hosts(&etcd)?;
                let answered = |r: &f::HostRow| r.host.verified.as_ref().is_some_and(|v| v.asked >= asked);
                if rows.iter().all(answered) || std::time::Instant::now() >= deadline {
                    break rows;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            };
            let out = rows
                .into_iter()
                .map(|r| {
                    let v = r.host.verified.filter(|v| v.asked >= asked).map(|mut v| {
                        v.drifted.retain(|d| service.as_ref().is_none_or(|s| *s == d.service));
                        v
                    });
                    (r.host.name, v)
                })
                .collect();
            Ok(Output::FleetVerified(out))
        }
        _ => Err(CommandError::BadRequest { field: "command".into(), message: "not a fleet heal command".into() }),
    }
}
