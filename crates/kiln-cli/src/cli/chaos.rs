//! `kiln chaos`: kills random instances of a service through `kiln serve`
//! at a set rate, never more than a set share at once (the controller
//! refuses a kill past it), then reports what healing did, from the
//! service's history and its load balancer's counts. `kiln chaos --drill
//! canary` ([`drill`]) has the controller run a canary made to fail and
//! reports how fast analysis caught it and rolled it back. This module is
//! a client of the API: it must never touch an instance itself.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use kiln::serve::answer::{Killed, Released, ServiceStatus, Status};
use kiln::serve::api::Request;
use kiln::serve::dataplane::Totals;
use kiln::serve::history::{Event, History};
use kiln::serve::{self, ServeError};

/// What to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub service: String,
    /// Kills per second.
    pub kill_rate: f64,
    pub duration: Duration,
    /// At most this share of the replicas down at once.
    pub max_share: f64,
    /// Stop after this many kills (refused ones do not count), if sooner.
    pub max_kills: Option<u32>,
    pub actor: String,
}

/// What happened.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub service: String,
    pub kills: u32,
    /// Kills the controller refused (too many down already).
    pub refused: u32,
    pub replaced: u32,
    /// Killed instances with no serving replacement when the report was made.
    pub unreplaced: Vec<String>,
    /// Time from a kill to its replacement serving.
    pub replace_median_ms: Option<u64>,
    pub replace_p99_ms: Option<u64>,
    pub replace_max_ms: Option<u64>,
    /// Requests through the load balancer meanwhile, and failed ones (5xx).
    pub requests: u64,
    pub failed_requests: u64,
    pub retries: u64,
}

fn totals(home: &Path, service: &str) -> Result<Totals, ServeError> {
    Ok(status(home, service)?.and_then(|s| s.requests).unwrap_or_default())
}

/// The status of `service` (none when kiln serve does not know it).
fn status(home: &Path, service: &str) -> Result<Option<ServiceStatus>, ServeError> {
    let st: Status = serve::ask(home, &Request::Status { service: Some(service.to_owned()) })?;
    Ok(st.services.into_iter().next())
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Runs the kills, waits (up to 30 s) for the replacements, reports.
pub fn run(home: &Path, o: &Options) -> Result<Report, ServeError> {
    let before = totals(home, &o.service)?;
    let mut report = Report { service: o.service.clone(), ..Report::default() };
    let mut killed = Vec::new();
    let start = Instant::now();
    let every = Duration::from_secs_f64(1.0 / o.kill_rate.max(0.001));
    let mut next = start;
    while start.elapsed() < o.duration && o.max_kills.is_none_or(|n| report.kills < n) {
        let req = Request::Kill { service: o.service.clone(), max_share: o.max_share, actor: o.actor.clone() };
        match serve::ask::<Killed>(home, &req) {
            Ok(k) => {
                report.kills += 1;
                killed.push(k.instance);
            }
            Err(ServeError::Remote { status: 409, .. }) => report.refused += 1,
            Err(e) => return Err(e),
        }
        next += every;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    // The replacements of the last kills.
    let history = History::open(&History::path_in(home))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let times = loop {
        let mut times = Vec::new();
        let mut pending: Vec<String> = killed.clone();
        for e in history.entries(Some(&o.service))? {
            if let Event::Replaced { instance, took_ms, .. } = &e.event {
                if let Some(i) = pending.iter().position(|k| k == instance) {
                    pending.remove(i);
                    times.push(*took_ms);
                }
            }
        }
        if pending.is_empty() || Instant::now() > deadline {
            report.unreplaced = pending;
            break times;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut sorted = times;
    sorted.sort_unstable();
    report.replaced = sorted.len() as u32;
    report.replace_median_ms = quantile(&sorted, 0.5);
    report.replace_p99_ms = quantile(&sorted, 0.99);
    report.replace_max_ms = sorted.last().copied();
    let after = totals(home, &o.service)?;
    report.requests = after.requests.saturating_sub(before.requests);
    report.failed_requests = after.failed.saturating_sub(before.failed);
    report.retries = after.retries.saturating_sub(before.retries);
    Ok(report)
}

/// What a rollback drill showed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrillReport {
    pub service: String,
    /// The drill's release, and the stable one it ran against.
    pub release: String,
    pub stable: String,
    pub window_ms: u64,
    /// The drill's canary share, percent.
    pub canary_percent: u32,
    /// Analysis failed the canary and traffic went back to stable.
    pub caught: bool,
    pub outcome: String,
    pub reason: String,
    /// From the canary's first routed request to the failing verdict.
    pub detect_ms: Option<u64>,
    /// From the start to traffic wholly back on stable.
    pub rollback_ms: Option<u64>,
    /// From the start to the canary's instances gone.
    pub cleaned_ms: Option<u64>,
    /// Faulted canary requests the verdict counted.
    pub canary_requests: u64,
    /// The same stable release and instances before and after.
    pub stable_untouched: bool,
    /// Client requests through the load balancer meanwhile, failed ones (5xx).
    pub requests: u64,
    pub failed_requests: u64,
}

impl DrillReport {
    /// Whether the drill proved what it is for.
    pub fn passed(&self) -> bool {
        self.caught && self.stable_untouched && self.failed_requests == 0
    }
}

/// The stable release of `service` and its live instances, sorted.
fn stable_set(home: &Path, service: &str) -> Result<(String, Vec<String>), ServeError> {
    let s = status(home, service)?;
    let stable = s.as_ref().and_then(|s| s.stable.as_ref()).map(|r| r.id.clone()).unwrap_or_default();
    let mut ids: Vec<String> =
        s.iter().flat_map(|s| &s.instances).filter(|i| i.release == stable).map(|i| i.id.clone()).collect();
    ids.sort();
    Ok((stable, ids))
}

/// Runs a rollback drill on `service` and follows it to its end (at most
/// ten analysis windows and a minute).
pub fn drill(home: &Path, service: &str, window: Option<Duration>, actor: &str) -> Result<DrillReport, ServeError> {
    let before = totals(home, service)?;
    let (stable, instances) = stable_set(home, service)?;
    let req = Request::Drill {
        service: service.to_owned(),
        window_ms: window.map(|w| w.as_millis() as u64),
        actor: actor.to_owned(),
    };
    let started: Released = serve::ask(home, &req)?;
    let release = started.release.unwrap_or_default();
    let window_ms = started.window_ms.unwrap_or(10_000);
    let mut r =
        DrillReport { service: service.to_owned(), release: release.clone(), stable, window_ms, ..Default::default() };
    let history = History::open(&History::path_in(home))?;
    let deadline = Instant::now() + Duration::from_millis(window_ms * 10) + Duration::from_secs(60);
    let entries = loop {
        let entries: Vec<_> = history.entries(Some(service))?.into_iter().filter(|e| e.release == release).collect();
        if entries.iter().any(|e| matches!(e.event, Event::Finished { .. })) || Instant::now() > deadline {
            break entries;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let t0 = entries.iter().find(|e| matches!(e.event, Event::Started { .. })).map_or(0, |e| e.at_ms);
    let since = |at: i64| Some(at.saturating_sub(t0).max(0) as u64);
    let mut routed = None;
    for e in &entries {
        match &e.event {
            Event::Step { weights, .. } => {
                let w = weights.get(&release).copied().unwrap_or(0);
                if w > 0 && routed.is_none() {
                    routed = Some(e.at_ms);
                    r.canary_percent = w;
                }
                if w == 0 && routed.is_some() {
                    r.rollback_ms = since(e.at_ms);
                }
            }
            Event::Verdict { verdict, .. } => {
                r.canary_requests = verdict.canary_requests;
                if verdict.outcome == kiln::release::analysis::Outcome::Fail {
                    r.detect_ms = routed.map(|at| e.at_ms.saturating_sub(at).max(0) as u64);
                }
            }
            Event::Finished { outcome, reason, .. } => {
                r.outcome = outcome.name().to_owned();
                r.reason = reason.clone();
                r.caught = *outcome == kiln::serve::history::Outcome::RolledBack && r.detect_ms.is_some();
            }
            _ => {}
        }
    }
    if r.outcome.is_empty() {
        r.outcome = "unfinished".into();
        r.reason = format!("the drill had not ended after {} s", (window_ms * 10) / 1000 + 60);
    }
    // The canary's instances drain, then go.
    let gone_by = Instant::now() + Duration::from_secs(30);
    loop {
        let left = status(home, service)?.is_some_and(|s| s.instances.iter().any(|i| i.release == release));
        if !left {
            r.cleaned_ms = Some((kiln::time::now_ms() as i64).saturating_sub(t0).max(0) as u64);
            break;
        }
        if Instant::now() > gone_by {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (stable_after, instances_after) = stable_set(home, service)?;
    r.stable_untouched = stable_after == r.stable && instances_after == instances;
    let after = totals(home, service)?;
    r.requests = after.requests.saturating_sub(before.requests);
    r.failed_requests = after.failed.saturating_sub(before.failed);
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(super::quantile(&v, 0.5), Some(50));
        assert_eq!(super::quantile(&v, 0.99), Some(99));
        assert_eq!(super::quantile(&[7], 0.99), Some(7));
        assert_eq!(super::quantile(&[], 0.5), None);
    }
}
