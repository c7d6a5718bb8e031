//! The release keys of `[service.NAME]`: replicas, the load balancer's
//! address, health checks, the strategy and its settings, canary analysis.
//!
//! Pure, like the rest of `spec`: every value is checked here, once, and the
//! controller takes the validated [`ReleaseSpec`] as it is. Durations are
//! kept in milliseconds. This module must never look at the store or the
//! network: whether an image exists or a port is free is the deployer's
//! question.

use std::net::SocketAddr;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{field_err, FieldError};
use crate::time::parse_duration_ms;

/// How a service is released: what the controller reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseSpec {
    /// Instances of the current release (at least 1).
    pub replicas: u32,
    /// The load balancer's address for this service; required to deploy.
    pub listen: Option<SocketAddr>,
    /// The line of the `listen` key (0 when absent), for an address that
    /// turns out to be taken when the load balancer binds it.
    #[serde(skip)]
    pub listen_line: usize,
    pub health: HealthSpec,
    pub strategy: Strategy,
    /// How long an old instance's requests may take to finish once it no
    /// longer gets new ones.
    pub drain_timeout_ms: u64,
    /// How long the previous release's instances stay warm after a
    /// blue-green switch or a canary's promotion (an instant rollback).
    pub keep_previous_ms: u64,
    /// A release that has not reached its next step by then fails.
    pub progress_deadline_ms: u64,
    /// Digests of succeeded releases kept archived (gc roots) for rollback.
    pub keep_releases: u32,
    pub heal: HealSpec,
}

/// `[service.NAME.heal]`: how failed, old and drifted instances are
/// replaced, and how long quarantined ones are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealSpec {
    /// Instances older than this are replaced, one at a time, surge-first.
    pub max_age_ms: Option<u64>,
    /// Failures in a row (instances that died or turned unhealthy before
    /// `min_uptime`) that make a crash loop.
    pub crash_loop: u32,
    /// An instance that served this long resets the crash count.
    pub min_uptime_ms: u64,
    /// Replacements back off from 1 s, doubling once a crash loop starts,
    /// up to this.
    pub backoff_cap_ms: u64,
    /// How often every instance is checked for drift (`None`: only on
    /// `kiln verify-instances`).
    pub drift_interval_ms: Option<u64>,
    /// Quarantine a drifted instance instead of replacing it.
    pub quarantine_drift: bool,
    /// Quarantine the instances of a failed canary instead of removing them.
    pub quarantine_failed_canary: bool,
    /// A quarantined instance is destroyed after this long.
    pub quarantine_ttl_ms: u64,
}

impl Default for HealSpec {
    fn default() -> Self {
        HealSpec {
            max_age_ms: None,
            crash_loop: 3,
            min_uptime_ms: 10_000,
            backoff_cap_ms: 60_000,
            drift_interval_ms: Some(60_000),
            quarantine_drift: false,
            quarantine_failed_canary: false,
            quarantine_ttl_ms: 24 * 3_600_000,
        }
    }
}

/// When an instance counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSpec {
    /// `GET path` must answer 2xx or 3xx; without a path the instance's
    /// port must accept a connection.
    pub path: Option<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive passes before a new instance joins.
    pub healthy_threshold: u32,
    /// Consecutive failures before an instance leaves.
    pub unhealthy_threshold: u32,
    /// A new instance not healthy by then fails the release.
    pub start_deadline_ms: u64,
}

/// The ways one release replaces another.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop every old instance, then start the new ones: downtime.
    Recreate,
    Rolling(RollingSpec),
    BlueGreen(BlueGreenSpec),
    Canary(CanarySpec),
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate => "recreate",
            Strategy::Rolling(_) => "rolling",
            Strategy::BlueGreen(_) => "blue-green",
            Strategy::Canary(_) => "canary",
        }
    }
}

/// Replace a few at a time. The default is surge-first (`max_surge` 1,
/// `max_unavailable` 0): capacity never drops below `replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollingSpec {
    /// Instances above `replicas` while rolling.
    pub max_surge: u32,
    /// Instances below `replicas` while rolling.
    pub max_unavailable: u32,
}

/// Start the whole new set, smoke-test it through a private preview load
/// balancer (no client traffic reaches it yet), switch in one swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlueGreenSpec {
    pub smoke: Vec<SmokeCheck>,
}

/// One request against the new set before it gets traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCheck {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The body must contain this.
    pub contains: Option<String>,
    /// The body must not contain this.
    pub not_contains: Option<String>,
}

impl SmokeCheck {
    /// What is wrong with an answer to this check, if anything (pure: the
    /// blue-green smoke checks and `kiln test` judge with it).
    pub fn judge(&self, status: u16, body: &[u8]) -> Option<String> {
        let body = String::from_utf8_lossy(body);
        if status != self.status {
            return Some(format!("answered {status}, expected {}", self.status));
        }
        if let Some(want) = self.contains.as_deref().filter(|w| !body.contains(*w)) {
            return Some(format!("the body does not contain {want:?}"));
        }
        self.not_contains.as_deref().filter(|b| body.contains(*b)).map(|bad| format!("the body contains {bad:?}"))
    }
}

/// Shift traffic in steps, judging each one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanarySpec {
    /// Ends with `Weight(100)` (added when the file does not say it).
    pub steps: Vec<CanaryStep>,
    pub step_interval_ms: u64,
    pub analysis: AnalysisSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CanaryStep {
    /// The canary's share of traffic, percent.
    Weight(u32),
    /// Wait for `kiln promote` (`None`) or for this long.
    Pause(Option<u64>),
}

/// How a canary step is judged against stable over the same window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisSpec {
    /// Fewer canary requests than this in a step: inconclusive.
    pub min_requests: u64,
    /// How far the canary's error rate may exceed stable's (absolute: 0.01
    /// is one point) before it fails, when the difference is significant.
    pub max_error_rate: f64,
    /// How far the canary's p99 may exceed stable's (a ratio) before it
    /// fails, when a rank test says the canary is slower.
    pub max_p99_ratio: f64,
    /// A p99 that rose by less than this (milliseconds) never fails a
    /// canary, whatever the ratio: on loopback a fresh instance on a busy
    /// host is a fraction of a millisecond slower, which no user notices.
    pub min_p99_increase_ms: f64,
    /// Confidence the significance tests need (0.5–0.9999).
    pub confidence: f64,
    /// Inconclusive steps waited out (one more interval each) before the
    /// release pauses for a person.
    pub inconclusive_limit: u32,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            min_requests: 50,
            max_error_rate: 0.01,
            max_p99_ratio: 1.5,
            min_p99_increase_ms: 2.0,
            confidence: 0.95,
            inconclusive_limit: 3,
        }
    }
}

/// The raw release keys of a `[service.NAME]` table (deserialized as part
/// of it: serde cannot flatten into a table that refuses unknown keys).
#[derive(Default)]
pub(super) struct RawRelease {
    pub replicas: Option<Spanned<i64>>,
    pub listen: Option<Spanned<String>>,
    pub strategy: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub keep_previous: Option<Spanned<String>>,
    pub progress_deadline: Option<Spanned<String>>,
    pub keep_releases: Option<Spanned<i64>>,
    pub health: Option<Spanned<RawHealth>>,
    pub rolling: Option<Spanned<RawRolling>>,
    pub blue_green: Option<Spanned<RawBlueGreen>>,
    pub canary: Option<Spanned<RawCanary>>,
    pub heal: Option<Spanned<RawHeal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeal {
    max_age: Option<Spanned<String>>,
    crash_loop: Option<Spanned<i64>>,
    min_uptime: Option<Spanned<String>>,
    backoff_cap: Option<Spanned<String>>,
    drift_interval: Option<Spanned<String>>,
    on_drift: Option<Spanned<String>>,
    quarantine_failed_canary: Option<bool>,
    quarantine_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<i64>>,
    unhealthy_threshold: Option<Spanned<i64>>,
    start_deadline: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRolling {
    max_surge: Option<Spanned<i64>>,
    max_unavailable: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBlueGreen {
    #[serde(default)]
    smoke: Vec<Spanned<RawSmoke>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSmoke {
    Path(String),
    Full(RawSmokeFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmokeFull {
    path: String,
    method: Option<String>,
    status: Option<i64>,
    contains: Option<String>,
    not_contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCanary {
    steps: Option<Vec<Spanned<RawStep>>>,
    step_interval: Option<Spanned<String>>,
    analysis: Option<Spanned<RawAnalysis>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawStep {
    Weight(i64),
    Word(String),
    Pause { pause: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnalysis {
    min_requests: Option<Spanned<i64>>,
    max_error_rate: Option<Spanned<f64>>,
    max_p99_ratio: Option<Spanned<f64>>,
    min_p99_increase_ms: Option<Spanned<f64>>,
    confidence: Option<Spanned<f64>>,
    inconclusive_limit: Option<Spanned<i64>>,
}

/// An address the file claims for a listener: `(address, key, span)`, so
/// that two claims of one address can be refused naming the second.
pub(super) type Claim = (SocketAddr, String, Range<usize>);

pub(super) fn duration(v: &Option<Spanned<String>>, key: &str, default_ms: u64) -> Result<u64, FieldError> {
    match v {
        None => Ok(default_ms),
        Some(d) => parse_duration_ms(d.get_ref()).ok_or_else(|| {
            field_err(d.span(), key, format!("{:?}: expected a duration like 500ms, 30s, 10m", d.get_ref()))
        }),
    }
}

fn count(v: &Option<Spanned<i64>>, key: &str, default: u32, min: i64) -> Result<u32, FieldError> {
    match v {
        None => Ok(default),
        Some(n) if *n.get_ref() < min || *n.get_ref() > i64::from(u32::MAX) => {
            Err(field_err(n.span(), key, format!("must be at least {min}")))
        }
        Some(n) => Ok(*n.get_ref() as u32),
    }
}

pub(super) fn address(v: &Spanned<String>, key: &str, port_zero: bool) -> Result<SocketAddr, FieldError> {
    let a: SocketAddr = v
        .get_ref()
        .parse()
        .map_err(|_| field_err(v.span(), key, format!("{:?}: expected IP:PORT, like 127.0.0.1:8080", v.get_ref())))?;
    if a.port() == 0 && !port_zero {
        return Err(field_err(v.span(), key, "needs a fixed port: clients must know where to connect"));
    }
    Ok(a)
}

fn probability(v: &Option<Spanned<f64>>, key: &str, default: f64, range: (f64, f64)) -> Result<f64, FieldError> {
    match v {
        None => Ok(default),
        Some(x) if !(range.0..=range.1).contains(x.get_ref()) => {
            Err(field_err(x.span(), key, format!("must be between {} and {}", range.0, range.1)))
        }
        Some(x) => Ok(*x.get_ref()),
    }
}

/// Validates the release keys; returns them and the addresses they claim.
pub(super) fn validate(raw: RawRelease) -> Result<(ReleaseSpec, Vec<Claim>), FieldError> {
    let mut claims = Vec::new();
    let replicas = count(&raw.replicas, "replicas", 1, 1)?;
    let listen = match &raw.listen {
        Some(l) => {
            let a = address(l, "listen", false)?;
            claims.push((a, "listen".to_owned(), l.span()));
            Some(a)
        }
        None => None,
    };
    let health = match raw.health {
        None => HealthSpec::default(),
        Some(h) => validate_health(h.into_inner())?,
    };
    let kind = match &raw.strategy {
        None => "rolling",
        Some(s) => match s.get_ref().as_str() {
            k @ ("recreate" | "rolling" | "blue-green" | "canary") => k,
            other => {
                return Err(field_err(
                    s.span(),
                    "strategy",
                    format!("unknown strategy {other:?}: expected recreate, rolling, blue-green or canary"),
                ))
            }
        },
    };
    // Settings for a strategy the service does not use are a mistake the
    // user would otherwise only find in the middle of a release.
    let stray = [
        ("rolling", raw.rolling.as_ref().map(Spanned::span)),
        ("blue_green", raw.blue_green.as_ref().map(Spanned::span)),
        ("canary", raw.canary.as_ref().map(Spanned::span)),
    ];
    for (table, span) in stray {
        if let Some(span) = span {
            if table.replace('_', "-") != kind {
                return Err(field_err(span, table, format!("is set, but the strategy is {kind}")));
            }
        }
    }
    let strategy = match kind {
        "recreate" => Strategy::Recreate,
        "rolling" => Strategy::Rolling(validate_rolling(raw.rolling.map(Spanned::into_inner))?),
        "blue-green" => Strategy::BlueGreen(validate_blue_green(raw.blue_green.map(Spanned::into_inner))?),
        _ => Strategy::Canary(validate_canary(raw.canary.map(Spanned::into_inner))?),
    };
    let spec = ReleaseSpec {
        replicas,
        listen,
        listen_line: 0,
        health,
        strategy,
        drain_timeout_ms: duration(&raw.drain_timeout, "drain_timeout", 30_000)?,
        keep_previous_ms: duration(&raw.keep_previous, "keep_previous", 300_000)?,
        progress_deadline_ms: duration(&raw.progress_deadline, "progress_deadline", 600_000)?,
        keep_releases: count(&raw.keep_releases, "keep_releases", 10, 1)?,
        heal: match raw.heal {
            None => HealSpec::default(),
            Some(h) => validate_heal(h.into_inner())?,
        },
    };
    if spec.progress_deadline_ms < spec.health.start_deadline_ms {
        let span = raw.progress_deadline.as_ref().map(Spanned::span);
        return Err((span, "progress_deadline".into(), "must be at least health.start_deadline".into()));
    }
    Ok((spec, claims))
}

fn validate_heal(h: RawHeal) -> Result<HealSpec, FieldError> {
    let d = HealSpec::default();
    let positive = |v: &Option<Spanned<String>>, key: &str, default: u64| -> Result<u64, FieldError> {
        let ms = duration(v, key, default)?;
        match v {
            Some(s) if ms == 0 => Err(field_err(s.span(), key, "must be more than 0")),
            _ => Ok(ms),
        }
    };
    let max_age_ms = match &h.max_age {
        None => None,
        Some(_) => Some(positive(&h.max_age, "heal.max_age", 0)?),
    };
    let drift_interval_ms = match &h.drift_interval {
        Some(s) if s.get_ref() == "off" => None,
        Some(_) => Some(positive(&h.drift_interval, "heal.drift_interval", 0)?),
        None => d.drift_interval_ms,
    };
    let quarantine_drift = match &h.on_drift {
        None => d.quarantine_drift,
        Some(s) => match s.get_ref().as_str() {
            "replace" => false,
            "quarantine" => true,
            other => {
                return Err(field_err(
                    s.span(),
                    "heal.on_drift",
                    format!("{other:?}: expected \"replace\" or \"quarantine\""),
                ))
            }
        },
    };
    Ok(HealSpec {
        max_age_ms,
        crash_loop: count(&h.crash_loop, "heal.crash_loop", d.crash_loop, 1)?,
        min_uptime_ms: duration(&h.min_uptime, "heal.min_uptime", d.min_uptime_ms)?,
        backoff_cap_ms: positive(&h.backoff_cap, "heal.backoff_cap", d.backoff_cap_ms)?,
        drift_interval_ms,
        quarantine_drift,
        quarantine_failed_canary: h.quarantine_failed_canary.unwrap_or(d.quarantine_failed_canary),
        quarantine_ttl_ms: positive(&h.quarantine_ttl, "heal.quarantine_ttl", d.quarantine_ttl_ms)?,
    })
}

/// The health settings of a service that names none: a connect check
/// every second.
impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: None,
            interval_ms: 1000,
            timeout_ms: 1000,
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            start_deadline_ms: 30_000,
        }
    }
}

fn validate_health(h: RawHealth) -> Result<HealthSpec, FieldError> {
    let d = HealthSpec::default();
    let path = match h.path {
        Some(p) if !p.get_ref().starts_with('/') || p.get_ref().bytes().any(|b| b <= b' ' || b == 0x7f) => {
            return Err(field_err(p.span(), "health.path", "must start with '/' and hold no spaces or control bytes"))
        }
        p => p.map(Spanned::into_inner),
    };
    let spec = HealthSpec {
        path,
        interval_ms: duration(&h.interval, "health.interval", d.interval_ms)?,
        timeout_ms: duration(&h.timeout, "health.timeout", d.timeout_ms)?,
        healthy_threshold: count(&h.healthy_threshold, "health.healthy_threshold", d.healthy_threshold, 1)?,
        unhealthy_threshold: count(&h.unhealthy_threshold, "health.unhealthy_threshold", d.unhealthy_threshold, 1)?,
        start_deadline_ms: duration(&h.start_deadline, "health.start_deadline", d.start_deadline_ms)?,
    };
    if spec.interval_ms == 0 {
        return Err((h.interval.map(|i| i.span()), "health.interval".into(), "must be more than 0".into()));
    }
    if spec.timeout_ms == 0 {
        return Err((h.timeout.map(|i| i.span()), "health.timeout".into(), "must be more than 0".into()));
    }
    Ok(spec)
}

fn validate_rolling(r: Option<RawRolling>) -> Result<RollingSpec, FieldError> {
    let Some(r) = r else { return Ok(RollingSpec { max_surge: 1, max_unavailable: 0 }) };
    let spec = RollingSpec {
        max_surge: count(&r.max_surge, "rolling.max_surge", 1, 0)?,
        max_unavailable: count(&r.max_unavailable, "rolling.max_unavailable", 0, 0)?,
    };
    if spec.max_surge == 0 && spec.max_unavailable == 0 {
        let span = r.max_surge.as_ref().or(r.max_unavailable.as_ref()).map(Spanned::span);
        return Err((span, "rolling.max_surge".into(), "max_surge and max_unavailable cannot both be 0".into()));
    }
    Ok(spec)
}

fn validate_blue_green(b: Option<RawBlueGreen>) -> Result<BlueGreenSpec, FieldError> {
    let Some(b) = b else { return Ok(BlueGreenSpec { smoke: Vec::new() }) };
    Ok(BlueGreenSpec { smoke: validate_checks(b.smoke, "blue_green.smoke")? })
}

/// HTTP checks (`"/path"` or `{ path, method, status, contains,
/// not_contains }`), for blue-green smoke checks and image tests alike.
pub(super) fn validate_checks(raw: Vec<Spanned<RawSmoke>>, list: &str) -> Result<Vec<SmokeCheck>, FieldError> {
    let mut smoke = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("{list}[{i}]");
        let span = s.span();
        let check = match s.into_inner() {
            RawSmoke::Path(path) => {
                SmokeCheck { method: "GET".into(), path, status: 200, contains: None, not_contains: None }
            }
            RawSmoke::Full(f) => {
                let status = f.status.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(field_err(span, &format!("{key}.status"), format!("{status} is not an HTTP status")));
                }
                let method = f.method.unwrap_or_else(|| "GET".into());
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(field_err(span, &format!("{key}.method"), format!("{method:?} is not a method")));
                }
                SmokeCheck {
                    method,
                    path: f.path,
                    status: status as u16,
                    contains: f.contains,
                    not_contains: f.not_contains,
                }
            }
        };
        if !check.path.starts_with('/') || check.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(field_err(span, &format!("{key}.path"), "must start with '/' and hold no spaces"));
        }
        smoke.push(check);
    }
    Ok(smoke)
}

fn validate_canary(c: Option<RawCanary>) -> Result<CanarySpec, FieldError> {
    let default_steps = vec![CanaryStep::Weight(10), CanaryStep::Weight(50), CanaryStep::Weight(100)];
    let Some(c) = c else {
        return Ok(CanarySpec { steps: default_steps, step_interval_ms: 30_000, analysis: AnalysisSpec::default() });
    };
    let mut steps = Vec::new();
    let mut last = 0;
    for (i, s) in c.steps.into_iter().flatten().enumerate() {
        let key = format!("canary.steps[{i}]");
        let span = s.span();
        let step = match s.into_inner() {
            RawStep::Weight(w) if !(1..=100).contains(&w) => {
                return Err(field_err(span, &key, format!("{w}: a weight is a percentage, 1 to 100")))
            }
            RawStep::Weight(w) if w as u32 <= last => {
                return Err(field_err(span, &key, format!("{w} does not increase (the step before is {last})")))
            }
            RawStep::Weight(w) => {
                last = w as u32;
                CanaryStep::Weight(last)
            }
            RawStep::Word(w) if w == "pause" => CanaryStep::Pause(None),
            RawStep::Word(w) => {
                return Err(field_err(
                    span,
                    &key,
                    format!("{w:?}: expected a weight, \"pause\" or {{ pause = \"5m\" }}"),
                ))
            }
            RawStep::Pause { pause } => match parse_duration_ms(&pause) {
                Some(ms) => CanaryStep::Pause(Some(ms)),
                None => {
                    return Err(field_err(span, &format!("{key}.pause"), format!("{pause:?}: expected a duration")))
                }
            },
        };
        if last == 100 && matches!(step, CanaryStep::Pause(_)) {
            return Err(field_err(span, &key, "a pause after 100% would hold nothing back"));
        }
        steps.push(step);
    }
    if steps.is_empty() {
        steps = default_steps;
    } else if last < 100 {
        // Like Argo Rollouts: the end of the steps is full promotion.
        steps.push(CanaryStep::Weight(100));
    }
    let analysis = match c.analysis {
        None => AnalysisSpec::default(),
        Some(a) => {
            let a = a.into_inner();
            let d = AnalysisSpec::default();
            AnalysisSpec {
                min_requests: u64::from(count(&a.min_requests, "canary.analysis.min_requests", 50, 1)?),
                max_error_rate: probability(
                    &a.max_error_rate,
                    "canary.analysis.max_error_rate",
                    d.max_error_rate,
                    (0.0, 1.0),
                )?,
                max_p99_ratio: probability(
                    &a.max_p99_ratio,
                    "canary.analysis.max_p99_ratio",
                    d.max_p99_ratio,
                    (1.0, 1000.0),
                )?,
                min_p99_increase_ms: probability(
                    &a.min_p99_increase_ms,
                    "canary.analysis.min_p99_increase_ms",
                    d.min_p99_increase_ms,
                    (0.0, 60_000.0),
                )?,
                confidence: probability(&a.confidence, "canary.analysis.confidence", d.confidence, (0.5, 0.9999))?,
                inconclusive_limit: count(&a.inconclusive_limit, "canary.analysis.inconclusive_limit", 3, 0)?,
            }
        }
    };
    let step_interval_ms = duration(&c.step_interval, "canary.step_interval", 30_000)?;
    if step_interval_ms < 1000 {
        let span = c.step_interval.as_ref().map(Spanned::span);
        return Err((span, "canary.step_interval".into(), "must be at least 1s: analysis needs a window".into()));
    }
    Ok(CanarySpec { steps, step_interval_ms, analysis })
}

#[cfg(test)]
mod tests;
