//! `kiln chaos`: kills random instances of a service through `kiln serve`
//! at a set rate, never more than a set share at once (the controller
//! refuses a kill past it), then reports what healing did, from the
//! service's history and its load balancer's counts. This module is a
//! client of the API: it must never touch an instance itself.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::history::{Event, History};
use crate::serve::api::Request;
use crate::serve::dataplane::Totals;
use crate::serve::{self, ServeError};

/// What to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub service: String,
    /// Kills per second.
    pub kill_rate: f64,
    pub duration: Duration,
    /// At most this share of the replicas down at once.
    pub max_share: f64,
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
    let st = serve::call(home, &Request::Status { service: Some(service.to_owned()) })?;
    Ok(serde_json::from_value(st["services"][0]["requests"].clone()).unwrap_or_default())
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
    while start.elapsed() < o.duration {
        let req = Request::Kill { service: o.service.clone(), max_share: o.max_share, actor: o.actor.clone() };
        match serve::call(home, &req) {
            Ok(v) => {
                report.kills += 1;
                killed.push(v["instance"].as_str().unwrap_or_default().to_owned());
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
