//! The fleet's heal commands: `kiln chaos --cluster` or `--controller`
//! (kills asked of each instance's host, never past the share down; the
//! run on the caller's machine, each kill through etcd or the
//! controller's API), `kiln quarantine` and
//! `release-quarantine --cluster`, and `kiln verify-instances --cluster`
//! (every host checks its instances for drift now). Each asks agents
//! through etcd (`/kiln/ask/`), a kill or a quarantine in the same
//! transaction as its history entry; the agents act (`super::agent`).
//!
//! For: asking and reporting. Must never: touch an instance itself, or
//! decide which to kill (`fleet::chaos::pick` does).

use super::fleet_api::FleetRequest;
use super::*;
use crate::fleet::ps::SlotRow;

/// Carries out a fleet heal command; any other is refused by name.
pub(super) fn execute(cmd: Command) -> Result<Output, CommandError> {
    match cmd {
        Command::FleetChaos { via, service, kill_rate, duration_ms, max_share, kills, actor } => {
            let bad =
                |field: &str, message: &str| CommandError::BadRequest { field: field.into(), message: message.into() };
            if !(kill_rate.is_finite() && kill_rate > 0.0) {
                return Err(bad("kill_rate", "kills per second: a positive number"));
            }
            if !(max_share > 0.0 && max_share <= 1.0) {
                return Err(bad("max_share", "a share of the replicas, above 0 and at most 1"));
            }
            let target: Box<dyn ChaosTarget> = match via {
                FleetVia::Cluster(cluster) => {
                    let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
                    if crate::fleet::service(&etcd, &service)?.is_none() {
                        return Err(bad("service", &format!("{service} is not in the fleet")));
                    }
                    Box::new(Direct { etcd, actor })
                }
                FleetVia::Controller(controller) => {
                    let known = match controller.ask(&FleetRequest::Services {})? {
                        Output::FleetServices(rows) => rows.iter().any(|r| r.name == service),
                        _ => false,
                    };
                    if !known {
                        return Err(bad("service", &format!("{service} is not in the fleet")));
                    }
                    Box::new(Through { controller, actor })
                }
            };
            let plan =
                Plan { service, kill_rate, killing: std::time::Duration::from_millis(duration_ms), max_share, kills };
            Ok(Output::FleetChaos(chaos(target.as_ref(), plan)?))
        }
        Command::FleetKill { cluster, service, instance, actor } => {
            let etcd = crate::fleet::etcd::Etcd::new(&cluster)?;
            let rows =
                crate::fleet::ps::rows(&crate::fleet::all_assignments(&etcd)?, &crate::fleet::host_records(&etcd)?);
            let row = rows.iter().find(|r| r.service == service && r.instance.as_deref() == Some(instance.as_str()));
            let Some(row) = row.filter(|r| r.state == crate::fleet::ps::SlotState::Serving) else {
                return Err(CommandError::BadRequest {
                    field: "instance".into(),
                    message: format!("{instance} is no serving instance of {service} (kiln ps --cluster)"),
                });
            };
            Direct { etcd, actor }.kill(&service, row)?;
            Ok(Output::Done { message: format!("{instance} on {}: SIGKILL asked of its agent", row.host) })
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

/// What a chaos run does: kills of `service` at `kill_rate` a second for
/// `killing` (or `kills` of them), at most `max_share` of its slots down.
struct Plan {
    service: String,
    kill_rate: f64,
    killing: std::time::Duration,
    max_share: f64,
    kills: Option<u32>,
}

/// Where a chaos run reads the fleet's slots and asks its kills: etcd
/// itself ([`Direct`]) or a controller's API ([`Through`]).
trait ChaosTarget {
    fn rows(&self) -> Result<Vec<SlotRow>, CommandError>;
    /// Asks `row`'s host to SIGKILL its instance, with its history entry.
    fn kill(&self, service: &str, row: &SlotRow) -> Result<(), CommandError>;
}

/// The fleet through etcd.
struct Direct {
    etcd: crate::fleet::etcd::Etcd,
    actor: String,
}

impl ChaosTarget for Direct {
    fn rows(&self) -> Result<Vec<SlotRow>, CommandError> {
        let assigned = crate::fleet::all_assignments(&self.etcd)?;
        Ok(crate::fleet::ps::rows(&assigned, &crate::fleet::host_records(&self.etcd)?))
    }

    fn kill(&self, service: &str, row: &SlotRow) -> Result<(), CommandError> {
        let instance = row.instance.clone().unwrap_or_default();
        // The kill asked with its history entry, in one transaction (log
        // before state).
        let entry = crate::fleet::records::of_replacing(
            service,
            &row.image,
            &instance,
            crate::heal::Cause::Chaos,
            format!("killed by kiln chaos of {} on {}", self.actor, row.host),
        );
        let ask = (format!("{}{}/{instance}", crate::fleet::chaos::KILLS, row.host), self.actor.as_bytes().to_vec(), 0);
        if !crate::fleet::history::record(&self.etcd, &[entry], &[ask], &[])? {
            return Err(crate::fleet::change::ChangeError::Contended { service: service.to_owned(), tries: 5 }.into());
        }
        Ok(())
    }
}

/// The fleet through a controller's API: `GET /v1/fleet/ps`, and each
/// kill a `{"kill": …}` request the controller carries out as above.
struct Through {
    controller: fleet_api::Controller,
    actor: String,
}

impl ChaosTarget for Through {
    fn rows(&self) -> Result<Vec<SlotRow>, CommandError> {
        match self.controller.ask(&FleetRequest::Ps {})? {
            Output::FleetPs(rows) => Ok(rows),
            _ => Err(CommandError::BadRequest {
                field: "controller".into(),
                message: format!("{}: GET /v1/fleet/ps did not answer the fleet's slots", self.controller.url),
            }),
        }
    }

    fn kill(&self, service: &str, row: &SlotRow) -> Result<(), CommandError> {
        let request = FleetRequest::Kill {
            service: service.to_owned(),
            instance: row.instance.clone().unwrap_or_default(),
            actor: self.actor.clone(),
        };
        self.controller.ask(&request).map(drop)
    }
}

/// Runs `plan` against `target`: the next kill chosen by
/// [`crate::fleet::chaos::pick`] each period, every slot observed each
/// 100 ms until the kills are over and every killed slot served again
/// (or 30 s after the last), then the report.
fn chaos(target: &dyn ChaosTarget, plan: Plan) -> Result<crate::fleet::chaos::ChaosReport, CommandError> {
    use crate::fleet::chaos::{pick, Pick, Tally};
    let started = std::time::Instant::now();
    let period = std::time::Duration::from_secs_f64(1.0 / plan.kill_rate);
    // After the last kill, its slot has this long to serve again.
    let settle = std::time::Duration::from_secs(30);
    let mut next = started;
    let mut tally = Tally::default();
    let mut made = 0u32;
    let mut seed = crate::time::now_ms() | 1;
    loop {
        let now = std::time::Instant::now();
        let all = target.rows()?;
        tally.observe(&all, crate::time::now_ms());
        let on = now - started < plan.killing && plan.kills.is_none_or(|k| made < k);
        if on && now >= next {
            // xorshift: which serving slot; no need for more.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match pick(&all, &plan.service, plan.max_share, &tally, seed as usize) {
                Pick::Kill { slot, instance, .. } => {
                    if let Some(row) = all.iter().find(|r| r.instance.as_deref() == Some(&instance)) {
                        target.kill(&plan.service, row)?;
                        tally.killed(&slot, &instance, crate::time::now_ms());
                        made += 1;
                    }
                }
                Pick::Refused { .. } => tally.refused(),
                Pick::Nothing => {}
            }
            next += period;
        }
        if !on && (tally.settled() || now - started >= plan.killing + settle) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(tally.report(&plan.service))
}

/// Starts a rollback drill of `service` (`start`) and follows it
/// (`observe`, every 100 ms) until the leader's analysis ended it and its
/// canary's instances are gone, or ten windows and a minute passed (an
/// inconclusive drill is judged again up to the analysis's limit).
pub(super) fn drill(
    observe: &mut dyn FnMut() -> Result<super::fleet::Observed, CommandError>,
    start: &mut dyn FnMut(&mut Context<'_>) -> Result<(), CommandError>,
    ctx: &mut Context<'_>,
    service: &str,
    window_ms: u64,
) -> Result<crate::fleet::drill::DrillReport, CommandError> {
    let (desired, verdict, records) = observe()?;
    let Some(desired) = desired else {
        return Err(crate::fleet::change::ChangeError::NoService { service: service.to_owned() }.into());
    };
    let stable = crate::fleet::drill::stable_instances(service, &records);
    let now = || crate::time::now_ms();
    start(ctx)?;
    let mut watch = crate::fleet::drill::Watch::new(service, &desired.image, window_ms, verdict, stable, now());
    ctx.progress.step_output(&format!(
        "{service}: drill started: a canary of {} failed at every load balancer, judged every {} ms",
        desired.image, window_ms
    ));
    let waited = window_ms.div_ceil(1000) * 10 + 60;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(waited);
    loop {
        let (desired, verdict, records) = observe()?;
        if watch.observe(desired.as_ref(), verdict.as_ref(), &records, now()) || std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(watch.report(waited))
}
