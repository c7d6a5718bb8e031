//! The controller's answers, typed: one payload per [`Request`], so that the
//! CLI, chaos and the tests read fields, never strings out of a JSON tree.
//!
//! The JSON on the wire is exactly what these types serialize to
//! (`Answer` is untagged), and the OpenAPI document describes it. A client
//! knows which request it sent, so [`Answer::parse`] reads a body back into
//! that request's payload.
//!
//! For: the shape of every answer of `kiln serve`. Must never: compute an
//! answer (the controller's `answers` does) or render one (the CLI does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::api::Request;
use super::controller::{Down, Failing, Quarantine, ReleaseRef};
use super::history::Entry;
use super::history::Outcome;
use crate::heal::{ExitNote, Health, Pending, ProbeFailure};
use crate::proxy::metrics::Totals;
use crate::proxy::TableEntry;
use crate::release::diff::Diff;
use crate::release::plan::{Plan, Step};
use crate::runtime::bundle::Limits;
use crate::runtime::logs::LogLine;

fn is_false(b: &bool) -> bool {
    !*b
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// Deploy, rollback and drill: a release begun (or nothing to do).
    Release(Released),
    /// `/metrics`: Prometheus text, sent as `text/plain`.
    Metrics(String),
    Status(Status),
    Promote(Promoted),
    Abort(Aborted),
    Down(WentDown),
    Quarantine(Quarantined),
    ReleaseQuarantine(Unquarantined),
    Inspect(Box<InstanceView>),
    VerifyInstances(Drifts),
    Kill(Killed),
    History(HistoryAnswer),
    Diff(Diff),
    Logs(Logs),
}

impl Answer {
    /// Reads the body of the answer to `req` back into its payload.
    pub fn parse(req: &Request, body: &[u8]) -> Result<Answer, serde_json::Error> {
        Ok(match req {
            Request::Deploy { .. } | Request::Rollback { .. } | Request::Drill { .. } => {
                Answer::Release(serde_json::from_slice(body)?)
            }
            Request::Metrics => Answer::Metrics(String::from_utf8_lossy(body).into_owned()),
            Request::Status { .. } => Answer::Status(serde_json::from_slice(body)?),
            Request::Promote { .. } => Answer::Promote(serde_json::from_slice(body)?),
            Request::Abort { .. } => Answer::Abort(serde_json::from_slice(body)?),
            Request::Down { .. } => Answer::Down(serde_json::from_slice(body)?),
            Request::Quarantine { .. } => Answer::Quarantine(serde_json::from_slice(body)?),
            Request::ReleaseQuarantine { .. } => Answer::ReleaseQuarantine(serde_json::from_slice(body)?),
            Request::Inspect { .. } => Answer::Inspect(serde_json::from_slice(body)?),
            Request::VerifyInstances { .. } => Answer::VerifyInstances(serde_json::from_slice(body)?),
            Request::Kill { .. } => Answer::Kill(serde_json::from_slice(body)?),
            Request::History { .. } => Answer::History(serde_json::from_slice(body)?),
            Request::Diff { .. } => Answer::Diff(serde_json::from_slice(body)?),
            Request::Logs { .. } => Answer::Logs(serde_json::from_slice(body)?),
        })
    }

    /// The JSON body as sent (the metrics text as a JSON string).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("answers serialize")
    }
}

/// A release begun by a deploy, a rollback or a drill. Which fields are
/// set says what happened: `noop` (already runs that), `scaled` (the same
/// release at another size), `instant` (a table swap, no new instances),
/// otherwise a new release following `plan`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Released {
    pub service: String,
    /// The release that now goes on (for `noop`, the one already serving).
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub noop: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaled: Option<Scaled>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// A rollback done by a table swap (no new instances).
    #[serde(default, skip_serializing_if = "is_false")]
    pub instant: bool,
    /// An instant rollback's own release id in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// The release in progress that a rollback ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    /// A drill: the stable release, the analysis window, the injected fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<u16>,
}

/// A scale of the stable release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaled {
    pub from: u32,
    pub to: u32,
}

/// `kiln status`: each service (or the one asked for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub listen: Option<String>,
    /// The host names it answers on its address (none: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Its certificate, when it serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
    pub proxy_pid: Option<i32>,
    pub strategy: String,
    pub replicas: u32,
    pub stable: Option<ReleaseRef>,
    pub previous: Option<Previous>,
    pub rollout: Option<RolloutView>,
    pub last: Option<LastRelease>,
    /// The routing table the load balancer was sent.
    pub traffic: Vec<TableEntry>,
    /// The load balancer's totals (absent when it cannot be asked).
    pub requests: Option<Totals>,
    pub down: Option<Down>,
    pub instances: Vec<InstanceStatus>,
    pub heal: HealView,
    pub quarantined: BTreeMap<String, Quarantine>,
    /// Set while the service's reconcile fails (the others go on).
    pub reconcile: Option<Failing>,
}

/// A served certificate: its file and when it stops being valid (read
/// from the file; absent when the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    pub cert: String,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
}

/// The release replaced last, kept warm for an instant rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Previous {
    pub release: ReleaseRef,
    pub warm_for_ms: u64,
}

/// The release in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub release: String,
    pub digest: String,
    pub image: String,
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    pub current: Option<Step>,
    pub new_percent: u32,
    /// Why it waits for a person, when it does.
    pub paused: Option<String>,
    pub elapsed_ms: u64,
}

/// The last release that ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRelease {
    pub release: String,
    pub outcome: Outcome,
    pub reason: String,
}

/// One live instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub health: HealthView,
    pub quarantined: bool,
    pub draining: bool,
    /// Drained or stopping: it is leaving, its health no longer checked.
    pub leaving: bool,
    pub recycle_in_s: Option<u64>,
    pub drift: Option<Vec<String>>,
    pub id: String,
    pub release: String,
    pub digest: String,
    pub revision: Option<String>,
    pub image: String,
    pub state: String,
    pub port: u16,
    pub age_s: i64,
    pub in_table: bool,
    pub release_weight: Option<u32>,
    /// Its own share of the service's traffic, in percent (one decimal).
    pub share_percent: Option<f64>,
    /// Which stored version of each secret it holds.
    pub secrets: BTreeMap<String, String>,
}

/// An instance's probes, as status shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    pub healthy: bool,
    pub passes: u32,
    pub fails: u32,
    pub last_failure: Option<ProbeFailure>,
}

/// A service's healing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealView {
    /// A crash loop: its stable release keeps failing.
    pub failing: bool,
    pub failures_in_a_row: u32,
    pub next_start_in_ms: u64,
    pub pending: Vec<Pending>,
    pub last_failures: Vec<ExitNote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub service: String,
    pub release: String,
    pub promoted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborted {
    pub service: String,
    pub release: String,
    pub aborted: bool,
}

/// `kiln down`: taken down now, or `already` before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WentDown {
    pub service: String,
    pub down: Down,
    pub already: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub service: String,
    pub instance: String,
    pub quarantined: bool,
    /// Where its logs, tmpfs and volume contents were copied.
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unquarantined {
    pub service: String,
    pub instance: String,
    pub destroyed: bool,
}

/// `kiln inspect` of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub service: String,
    pub release: Option<String>,
    pub digest: String,
    pub image: String,
    pub revision: Option<String>,
    pub state: String,
    pub port: u16,
    pub started_ms: u64,
    pub age_s: u64,
    /// Names only: values stay in the instance.
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    pub volumes: Vec<(String, String)>,
    pub limits: Limits,
    pub runc_root: std::path::PathBuf,
    pub health: Health,
    pub drift: Option<Vec<String>>,
    pub quarantine: Option<Quarantine>,
}

/// `kiln verify-instances`: each instance that differs from its release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drifts {
    pub instances: Vec<Drift>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub service: String,
    pub instance: String,
    pub drift: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Killed {
    pub service: String,
    pub instance: String,
    pub killed_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryAnswer {
    pub entries: Vec<Entry>,
    /// The hash chain's check, when asked for.
    pub verified: Option<Verified>,
}

/// A check of the history's hash chain: the entries, or what broke it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logs {
    pub lines: Vec<LogLine>,
}

/// A payload one kind of request is answered with, so that a client can
/// ask for it by type ([`crate::serve::ask`]).
pub trait Payload: Sized {
    fn from_answer(a: Answer) -> Option<Self>;
}

macro_rules! payloads {
    ($($variant:ident => $t:ty),* $(,)?) => {
        $(impl Payload for $t {
            fn from_answer(a: Answer) -> Option<Self> {
                match a {
                    Answer::$variant(x) => Some(x),
                    _ => None,
                }
            }
        })*
    };
}

payloads! {
    Release => Released,
    Status => Status,
    Promote => Promoted,
    Abort => Aborted,
    Down => WentDown,
    Quarantine => Quarantined,
    ReleaseQuarantine => Unquarantined,
    Inspect => Box<InstanceView>,
    VerifyInstances => Drifts,
    Kill => Killed,
    History => HistoryAnswer,
    Diff => Diff,
    Logs => Logs,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire stays as it was: optional parts of a release answer are
    /// left out, not sent as null, and read back the same.
    #[test]
    fn a_release_answer_keeps_its_wire_shape() {
        let noop = Released { service: "web".into(), release: None, noop: true, ..Default::default() };
        assert_eq!(serde_json::to_string(&noop).unwrap(), r#"{"service":"web","release":null,"noop":true}"#);
        let instant = Released {
            service: "web".into(),
            release: Some("web-2".into()),
            rollback: Some("web-4".into()),
            instant: true,
            ..Default::default()
        };
        let wire = Answer::Release(instant.clone()).to_json();
        assert_eq!(wire, r#"{"service":"web","release":"web-2","instant":true,"rollback":"web-4"}"#);
        let req = Request::Rollback { service: "web".into(), to: None, actor: "a".into() };
        assert_eq!(Answer::parse(&req, wire.as_bytes()).unwrap(), Answer::Release(instant));
    }

    #[test]
    fn an_answer_is_read_as_the_payload_of_its_request() {
        let body = br#"{"service":"web","release":"web-3","promoted":true}"#;
        let req = Request::Promote { service: "web".into(), actor: "a".into() };
        let a = Answer::parse(&req, body).unwrap();
        assert_eq!(
            Promoted::from_answer(a.clone()),
            Some(Promoted { service: "web".into(), release: "web-3".into(), promoted: true })
        );
        assert_eq!(Aborted::from_answer(a), None);
        // A body that is not the request's payload is an error, not a default.
        let req = Request::Abort { service: "web".into(), actor: "a".into() };
        assert!(Answer::parse(&req, body).is_err());
    }
}
