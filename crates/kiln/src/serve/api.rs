//! The controller's command surface: every front end (the CLI today, the
//! HTTP API on the unix socket) turns its input into one [`Request`], and
//! every outcome's HTTP status comes from the [`ServeError`] variant, never
//! from its text. This module only converts; it must never act.

use serde::{Deserialize, Serialize};

use super::ServeError;
use crate::net::http;
use crate::runtime::logs::LogFilter;

/// Everything `kiln serve` can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Release `image` (or the service's image) for `service`. `file`, when
    /// given, must be the kiln.toml kiln serve runs (it refuses another).
    Deploy { service: String, image: Option<String>, file: Option<std::path::PathBuf>, actor: String },
    /// Services, releases, instances, the rollout in progress.
    Status { service: Option<String> },
    /// The controller's Prometheus metrics (answered as text, not JSON).
    Metrics,
    /// Back to the previous release, or to `to` (instant when it is
    /// still warm, else a fast release of its image).
    Rollback { service: String, to: Option<String>, actor: String },
    /// Go on past a pause.
    Promote { service: String, actor: String },
    /// Remove the canary, traffic back to stable.
    Abort { service: String, actor: String },
    /// Take an instance out of traffic, freeze it, keep it for a
    /// post-mortem; a replacement starts.
    Quarantine { instance: String, reason: Option<String>, actor: String },
    /// Destroy a quarantined instance and what was kept of it.
    ReleaseQuarantine { instance: String, actor: String },
    /// What an instance runs and why it is where it is.
    Inspect { instance: String },
    /// Check instances for drift now; drifted ones are healed.
    VerifyInstances { service: Option<String> },
    /// Chaos: SIGKILL one random serving instance of `service`, unless
    /// more than `max_share` of its replicas are down already.
    Kill { service: String, max_share: f64, actor: String },
    /// A rollback drill: a canary of the stable digest whose traffic share
    /// the load balancer fails (without a client seeing it), so that
    /// analysis must catch it and roll it back; stable is left untouched.
    /// `window_ms` replaces the analysis window (the service's
    /// `step_interval`, or 10 s).
    Drill { service: String, window_ms: Option<u64>, actor: String },
    /// The release history (of one service), and with `verify` whether its
    /// hash chain holds.
    History { service: Option<String>, verify: bool },
    /// What changed between two releases of a service: digest, revision,
    /// config, environment variable names.
    Diff { service: String, from: String, to: String },
    /// Log lines of instances: the newest `limit` that match.
    Logs { filter: LogFilter, limit: usize },
    /// Take a service down: drain and destroy its instances, stop its load
    /// balancer; history and the archive stay, volumes unless `purge`.
    Down { service: String, purge: bool, actor: String },
}

/// What an API connection asks: a command, the event stream, or one of
/// the files `kiln serve` serves (the dashboard and the API description).
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Call(Request),
    /// `GET /v1/events`: the events after `last_id`, as server-sent events
    /// from then on when the client accepts `text/event-stream` (as
    /// EventSource does), else the kept ones as JSON, at once.
    Events {
        last_id: Option<u64>,
        stream: bool,
    },
    /// `GET /`: the dashboard; with `?token=`, a browser signing in.
    Dashboard {
        token: Option<String>,
    },
    /// `GET /openapi.json`.
    OpenApi,
    /// `POST /v1/commands`: a command (bake, run, ps, ...) whose body the
    /// command surface parses ([`crate::command::remote::Job`]); `stream`
    /// when the client accepts NDJSON progress.
    Command {
        stream: bool,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillBody {
    service: String,
    /// JSON has one number type: 3000.0 is as much an integer as 3000.
    window_ms: Option<f64>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    service: String,
    image: Option<String>,
    file: Option<std::path::PathBuf>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    service: String,
    to: Option<String>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineBody {
    instance: String,
    reason: Option<String>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceBody {
    instance: String,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    service: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillBody {
    service: String,
    max_share: Option<f64>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DownBody {
    service: String,
    purge: Option<bool>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    service: String,
    actor: Option<String>,
}

/// A JSON object body as `T`; a bad one is refused naming its field (an
/// unknown or missing one, or the one whose value has the wrong type),
/// never its value.
fn body<T: serde::de::DeserializeOwned>(req: &http::Request) -> Result<T, ServeError> {
    let bad = |field: &str, message: String| ServeError::BadRequest { field: field.to_owned(), message };
    let v: serde_json::Value = serde_json::from_slice(&req.body).map_err(|e| bad("body", e.to_string()))?;
    let serde_json::Value::Object(map) = &v else {
        return Err(bad("body", "expected a JSON object".into()));
    };
    serde_json::from_value::<T>(v.clone()).map_err(|e| {
        let message = e.to_string();
        if message.starts_with("unknown field") || message.starts_with("missing field") {
            let field = message.split('`').nth(1).unwrap_or("body").to_owned();
            return bad(&field, message);
        }
        // A value of the wrong type: serde's message names the value, so
        // the field is the one whose removal makes that error go.
        let field = map.keys().find(|k| {
            let mut rest = map.clone();
            rest.remove(*k);
            serde_json::from_value::<T>(serde_json::Value::Object(rest))
                .map_or_else(|e| e.to_string() != message, |_| true)
        });
        bad(field.map_or("body", String::as_str), message)
    })
}

fn not_allowed(req: &http::Request, allow: &'static str) -> ServeError {
    ServeError::MethodNotAllowed { method: req.method.clone(), path: req.path.clone(), allow }
}

/// A query parameter that must be present.
fn required(req: &http::Request, name: &str) -> Result<String, ServeError> {
    req.param(name)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ServeError::BadRequest { field: name.into(), message: "missing query parameter".into() })
}

/// A query parameter parsed as `T`, if present.
fn number<T: std::str::FromStr>(req: &http::Request, name: &str) -> Result<Option<T>, ServeError> {
    req.param(name)
        .map(|v| {
            v.parse()
                .map_err(|_| ServeError::BadRequest { field: name.into(), message: format!("{v:?} is not a number") })
        })
        .transpose()
}

/// Parses an HTTP request of the API into a [`Route`].
pub fn route(req: &http::Request) -> Result<Route, ServeError> {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/") => Ok(Route::Dashboard { token: req.param("token").map(str::to_owned) }),
        ("GET", "/openapi.json") => Ok(Route::OpenApi),
        ("GET", "/v1/events") => {
            // Both are checked; the header (what EventSource sends on a
            // reconnect) wins.
            let id = |field: &str, v: Option<&str>| {
                v.map(|v| {
                    v.trim().parse::<u64>().map_err(|_| ServeError::BadRequest {
                        field: field.into(),
                        message: format!("{v:?} is not an event id"),
                    })
                })
                .transpose()
            };
            let header = id("Last-Event-ID", req.header("last-event-id"))?;
            let last_id = header.or(id("last_event_id", req.param("last_event_id"))?);
            let stream = req.header("accept").is_some_and(|a| a.contains("text/event-stream"));
            Ok(Route::Events { last_id, stream })
        }
        (_, "/" | "/openapi.json" | "/v1/events") => Err(not_allowed(req, "GET")),
        ("POST", "/v1/commands") => {
            let stream = req.header("accept").is_some_and(|a| a.contains("application/x-ndjson"));
            Ok(Route::Command { stream })
        }
        (_, "/v1/commands") => Err(not_allowed(req, "POST")),
        _ => parse(req).map(Route::Call),
    }
}

/// Parses an HTTP request of the API into a [`Request`].
pub fn parse(req: &http::Request) -> Result<Request, ServeError> {
    let actor = |a: Option<String>| a.unwrap_or_else(|| "api".into());
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/status") => Ok(Request::Status { service: req.param("service").map(str::to_owned) }),
        ("GET", "/v1/history") => {
            let verify = match req.param("verify") {
                None | Some("false") => false,
                Some("true") => true,
                Some(v) => {
                    return Err(ServeError::BadRequest {
                        field: "verify".into(),
                        message: format!("{v:?}: expected true or false"),
                    })
                }
            };
            Ok(Request::History { service: req.param("service").map(str::to_owned), verify })
        }
        ("GET", "/v1/diff") => Ok(Request::Diff {
            service: required(req, "service")?,
            from: required(req, "from")?,
            to: required(req, "to")?,
        }),
        ("GET", "/v1/logs") => {
            let limit = number::<usize>(req, "limit")?.unwrap_or(200);
            if !(1..=5000).contains(&limit) {
                return Err(ServeError::BadRequest { field: "limit".into(), message: format!("{limit}: 1 to 5000") });
            }
            let opt = |n: &str| req.param(n).filter(|v| !v.is_empty()).map(str::to_owned);
            Ok(Request::Logs {
                filter: LogFilter {
                    service: opt("service"),
                    release: opt("release"),
                    instance: opt("instance"),
                    image: opt("image"),
                    since: number(req, "since")?,
                },
                limit,
            })
        }
        ("GET", "/metrics") => Ok(Request::Metrics),
        ("POST", "/v1/deploy") => {
            let b: DeployBody = body(req)?;
            if b.file.as_ref().is_some_and(|f| !f.is_absolute()) {
                return Err(ServeError::BadRequest {
                    field: "file".into(),
                    message: "must be an absolute path".into(),
                });
            }
            Ok(Request::Deploy { service: b.service, image: b.image, file: b.file, actor: actor(b.actor) })
        }
        ("POST", "/v1/rollback") => {
            let b: RollbackBody = body(req)?;
            Ok(Request::Rollback { service: b.service, to: b.to, actor: actor(b.actor) })
        }
        ("POST", "/v1/promote" | "/v1/abort") => {
            let b: ServiceBody = body(req)?;
            let (service, actor) = (b.service, actor(b.actor));
            Ok(if req.path == "/v1/promote" {
                Request::Promote { service, actor }
            } else {
                Request::Abort { service, actor }
            })
        }
        ("POST", "/v1/down") => {
            let b: DownBody = body(req)?;
            Ok(Request::Down { service: b.service, purge: b.purge.unwrap_or(false), actor: actor(b.actor) })
        }
        ("POST", "/v1/quarantine") => {
            let b: QuarantineBody = body(req)?;
            Ok(Request::Quarantine { instance: b.instance, reason: b.reason, actor: actor(b.actor) })
        }
        ("POST", "/v1/release-quarantine") => {
            let b: InstanceBody = body(req)?;
            Ok(Request::ReleaseQuarantine { instance: b.instance, actor: actor(b.actor) })
        }
        ("GET", p) if p.starts_with("/v1/instances/") => {
            let id = &p["/v1/instances/".len()..];
            if id.is_empty() || id.contains('/') {
                return Err(ServeError::BadRequest {
                    field: "instance".into(),
                    message: format!("{p:?}: expected /v1/instances/ID"),
                });
            }
            Ok(Request::Inspect { instance: id.to_owned() })
        }
        ("POST", "/v1/verify-instances") => {
            let b: VerifyBody = if req.body.is_empty() { VerifyBody { service: None } } else { body(req)? };
            Ok(Request::VerifyInstances { service: b.service })
        }
        ("POST", "/v1/chaos/kill") => {
            let b: KillBody = body(req)?;
            let max_share = b.max_share.unwrap_or(0.34);
            if !(max_share > 0.0 && max_share <= 1.0) {
                return Err(ServeError::BadRequest {
                    field: "max_share".into(),
                    message: format!("{max_share}: must be more than 0 and at most 1"),
                });
            }
            Ok(Request::Kill { service: b.service, max_share, actor: actor(b.actor) })
        }
        ("POST", "/v1/chaos/drill") => {
            let b: DrillBody = body(req)?;
            if let Some(ms) = b.window_ms.filter(|ms| ms.fract() != 0.0 || !(1000.0..=600_000.0).contains(ms)) {
                return Err(ServeError::BadRequest {
                    field: "window_ms".into(),
                    message: format!("{ms}: the analysis window must be 1 s to 10 min, in whole milliseconds"),
                });
            }
            Ok(Request::Drill { service: b.service, window_ms: b.window_ms.map(|ms| ms as u64), actor: actor(b.actor) })
        }
        (_, "/v1/status" | "/v1/history" | "/v1/diff" | "/v1/logs" | "/metrics") => Err(not_allowed(req, "GET")),
        (_, p) if p.starts_with("/v1/instances/") => Err(not_allowed(req, "GET")),
        (
            _,
            "/v1/deploy"
            | "/v1/rollback"
            | "/v1/promote"
            | "/v1/abort"
            | "/v1/down"
            | "/v1/quarantine"
            | "/v1/release-quarantine"
            | "/v1/verify-instances"
            | "/v1/chaos/kill"
            | "/v1/chaos/drill",
        ) => Err(not_allowed(req, "POST")),
        _ => Err(ServeError::NoRoute(req.path.clone())),
    }
}

/// The HTTP status of an error, by variant.
pub fn status_of(e: &ServeError) -> u16 {
    match e {
        ServeError::BadRequest { .. } | ServeError::Spec(_) => 400,
        ServeError::UnknownService(_)
        | ServeError::NoRoute(_)
        | ServeError::UnknownImage { .. }
        | ServeError::UnknownInstance(_)
        | ServeError::UnknownRelease { .. } => 404,
        ServeError::MethodNotAllowed { .. } => 405,
        ServeError::Unauthorized => 401,
        ServeError::Timeout => 408,
        ServeError::Busy => 503,
        ServeError::Csrf(_) => 403,
        ServeError::Conflict(_) | ServeError::ListenTaken { .. } | ServeError::OtherFile { .. } => 409,
        ServeError::Refused { source, .. } if source.is_refusal() => 403,
        _ => 500,
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The request as the CLI sends it: method, target and JSON body.
pub fn to_http(r: &Request) -> (&'static str, String, Vec<u8>) {
    match r {
        Request::Status { service: Some(s) } => ("GET", format!("/v1/status?service={}", encode(s)), Vec::new()),
        Request::Status { service: None } => ("GET", "/v1/status".into(), Vec::new()),
        Request::Metrics => ("GET", "/metrics".into(), Vec::new()),
        Request::History { service, verify } => {
            let mut q = vec![format!("verify={verify}")];
            q.extend(service.as_ref().map(|s| format!("service={}", encode(s))));
            ("GET", format!("/v1/history?{}", q.join("&")), Vec::new())
        }
        Request::Diff { service, from, to } => {
            ("GET", format!("/v1/diff?service={}&from={}&to={}", encode(service), encode(from), encode(to)), Vec::new())
        }
        Request::Logs { filter, limit } => {
            let mut q = vec![format!("limit={limit}")];
            let f = filter;
            for (k, v) in
                [("service", &f.service), ("release", &f.release), ("instance", &f.instance), ("image", &f.image)]
            {
                q.extend(v.as_ref().map(|v| format!("{k}={}", encode(v))));
            }
            q.extend(filter.since.map(|s| format!("since={s}")));
            ("GET", format!("/v1/logs?{}", q.join("&")), Vec::new())
        }
        Request::Deploy { service, image, file, actor } => (
            "POST",
            "/v1/deploy".into(),
            serde_json::to_vec(
                &serde_json::json!({ "service": service, "image": image, "file": file, "actor": actor }),
            )
            .unwrap(),
        ),
        Request::Rollback { service, to, actor } => (
            "POST",
            "/v1/rollback".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service, "to": to, "actor": actor })).unwrap(),
        ),
        Request::Down { service, purge, actor } => (
            "POST",
            "/v1/down".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service, "purge": purge, "actor": actor })).unwrap(),
        ),
        Request::Quarantine { instance, reason, actor } => (
            "POST",
            "/v1/quarantine".into(),
            serde_json::to_vec(&serde_json::json!({ "instance": instance, "reason": reason, "actor": actor })).unwrap(),
        ),
        Request::ReleaseQuarantine { instance, actor } => (
            "POST",
            "/v1/release-quarantine".into(),
            serde_json::to_vec(&serde_json::json!({ "instance": instance, "actor": actor })).unwrap(),
        ),
        Request::Inspect { instance } => ("GET", format!("/v1/instances/{instance}"), Vec::new()),
        Request::VerifyInstances { service } => (
            "POST",
            "/v1/verify-instances".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service })).unwrap(),
        ),
        Request::Kill { service, max_share, actor } => (
            "POST",
            "/v1/chaos/kill".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service, "max_share": max_share, "actor": actor }))
                .unwrap(),
        ),
        Request::Drill { service, window_ms, actor } => (
            "POST",
            "/v1/chaos/drill".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service, "window_ms": window_ms, "actor": actor }))
                .unwrap(),
        ),
        Request::Promote { service, actor } | Request::Abort { service, actor } => {
            let path = if matches!(r, Request::Promote { .. }) { "/v1/promote" } else { "/v1/abort" };
            (
                "POST",
                path.into(),
                serde_json::to_vec(&serde_json::json!({ "service": service, "actor": actor })).unwrap(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, body: &str) -> http::Request {
        let raw = format!("{method} {target} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        http::read_request(&mut raw.as_bytes()).unwrap()
    }

    #[test]
    fn a_bad_body_is_refused_naming_its_field_not_its_value() {
        let field = |r: Result<Request, ServeError>| match r {
            Err(ServeError::BadRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(parse(&req("POST", "/v1/deploy", r#"{"service": 5}"#))), "service");
        assert_eq!(field(parse(&req("POST", "/v1/deploy", r#"{"service": "web", "image": [1]}"#))), "image");
        assert_eq!(field(parse(&req("POST", "/v1/deploy", r#"{"servic": "web"}"#))), "servic");
        assert_eq!(field(parse(&req("POST", "/v1/deploy", r#"{}"#))), "service");
        // Not an object: refused, though serde would read [null] as a struct.
        assert_eq!(field(parse(&req("POST", "/v1/verify-instances", "[null]"))), "body");
        assert_eq!(field(parse(&req("POST", "/v1/down", r#"{"service": "web", "purge": "yes"}"#))), "purge");
    }

    #[test]
    fn every_request_round_trips_through_http() {
        let all = [
            Request::Deploy {
                service: "web".into(),
                image: Some("hello:2".into()),
                file: Some("/srv/kiln.toml".into()),
                actor: "me".into(),
            },
            Request::Deploy { service: "web".into(), image: None, file: None, actor: "me".into() },
            Request::Status { service: None },
            Request::Status { service: Some("web".into()) },
            Request::Rollback { service: "web".into(), to: None, actor: "me".into() },
            Request::Rollback { service: "web".into(), to: Some("web-3".into()), actor: "me".into() },
            Request::Promote { service: "web".into(), actor: "me".into() },
            Request::Abort { service: "web".into(), actor: "me".into() },
            Request::Quarantine { instance: "web-1a2b3c4d".into(), reason: Some("slow".into()), actor: "me".into() },
            Request::Quarantine { instance: "web-1a2b3c4d".into(), reason: None, actor: "me".into() },
            Request::ReleaseQuarantine { instance: "web-1a2b3c4d".into(), actor: "me".into() },
            Request::Inspect { instance: "web-1a2b3c4d".into() },
            Request::VerifyInstances { service: None },
            Request::VerifyInstances { service: Some("web".into()) },
            Request::Kill { service: "web".into(), max_share: 0.5, actor: "me".into() },
            Request::Drill { service: "web".into(), window_ms: None, actor: "me".into() },
            Request::Drill { service: "web".into(), window_ms: Some(3000), actor: "me".into() },
            Request::History { service: None, verify: false },
            Request::History { service: Some("web app".into()), verify: true },
            Request::Diff { service: "web".into(), from: "web-1".into(), to: "web-2&x".into() },
            Request::Logs { filter: LogFilter::default(), limit: 200 },
            Request::Logs {
                filter: LogFilter {
                    service: Some("web".into()),
                    release: Some("web-2".into()),
                    instance: Some("web-1a".into()),
                    image: Some("sha256:ab".into()),
                    since: Some(17),
                },
                limit: 10,
            },
        ];
        for r in all {
            let (m, t, b) = to_http(&r);
            assert_eq!(parse(&req(m, &t, std::str::from_utf8(&b).unwrap())).unwrap(), r);
        }
    }

    #[test]
    fn bad_requests_name_the_field_and_map_to_statuses_by_variant() {
        let e = parse(&req("POST", "/v1/deploy", r#"{"service":"web","imgae":"x"}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "imgae"), "{e}");
        assert_eq!(status_of(&e), 400);
        let e = parse(&req("POST", "/v1/deploy", r#"{"image":"x"}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "service"), "{e}");
        let e = parse(&req("POST", "/v1/deploy", "not json")).unwrap_err();
        assert_eq!(status_of(&e), 400);
        assert_eq!(status_of(&parse(&req("DELETE", "/v1/status", "")).unwrap_err()), 405);
        assert_eq!(status_of(&parse(&req("GET", "/nope", "")).unwrap_err()), 404);
        assert_eq!(status_of(&ServeError::Conflict(super::super::Conflict::Stopping)), 409);
        let e = parse(&req("POST", "/v1/chaos/drill", r#"{"service":"web","window_ms":5}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "window_ms"), "{e}");
        let e = parse(&req("POST", "/v1/chaos/drill", r#"{"service":"web","window_ms":1500.5}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "window_ms"), "{e}");
        let ok = parse(&req("POST", "/v1/chaos/drill", r#"{"service":"web","window_ms":3000.0}"#)).unwrap();
        assert!(matches!(ok, Request::Drill { window_ms: Some(3000), .. }));
        let e = parse(&req("POST", "/v1/chaos/kill", r#"{"service":"web","max_share":2}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "max_share"), "{e}");
        let e = parse(&req("POST", "/v1/quarantine", r#"{"reason":"x"}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "instance"), "{e}");
        assert_eq!(status_of(&ServeError::UnknownInstance("x".into())), 404);
        assert_eq!(status_of(&ServeError::Unauthorized), 401);
        assert_eq!(status_of(&ServeError::Csrf("x")), 403);
        let e = parse(&req("GET", "/v1/diff?service=web&from=web-1", "")).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "to"), "{e}");
        let e = parse(&req("GET", "/v1/logs?limit=0", "")).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "limit"), "{e}");
        let e = parse(&req("GET", "/v1/logs?since=yesterday", "")).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "since"), "{e}");
        let e = parse(&req("GET", "/v1/history?verify=maybe", "")).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "verify"), "{e}");
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_there_are() {
        let doc: serde_json::Value = serde_json::from_str(super::super::OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let m = method.to_uppercase();
                documented.insert((m.clone(), path.clone()));
                // Every documented operation is a route (not 404 or 405).
                let concrete = path.replace("{instance}", "web-1a2b3c4d");
                let body = if m == "POST" { "{}" } else { "" };
                let r = route(&req(&m, &concrete, body));
                assert!(
                    !matches!(r, Err(ServeError::NoRoute(_) | ServeError::MethodNotAllowed { .. })),
                    "{m} {path} is documented but no route"
                );
                // Each body's fields are the ones the parser takes.
                if let Some(schema) = op.pointer("/requestBody/content/application~1json/schema") {
                    assert_eq!(schema["additionalProperties"], false, "{path}: unknown fields are refused");
                    for (field, _) in schema["properties"].as_object().unwrap() {
                        let probe = format!("{{\"{field}\": 12345.5}}");
                        let e = parse(&req(&m, path, &probe)).unwrap_err();
                        assert!(
                            !e.to_string().contains("unknown field"),
                            "{path}: documented field {field:?} is unknown to the parser: {e}"
                        );
                    }
                }
            }
        }
        // Every request the CLI sends is documented.
        let all = [
            Request::Deploy { service: "w".into(), image: None, file: None, actor: "a".into() },
            Request::Status { service: None },
            Request::Metrics,
            Request::Rollback { service: "w".into(), to: None, actor: "a".into() },
            Request::Promote { service: "w".into(), actor: "a".into() },
            Request::Abort { service: "w".into(), actor: "a".into() },
            Request::Quarantine { instance: "i".into(), reason: None, actor: "a".into() },
            Request::ReleaseQuarantine { instance: "i".into(), actor: "a".into() },
            Request::Inspect { instance: "i".into() },
            Request::VerifyInstances { service: None },
            Request::Kill { service: "w".into(), max_share: 0.5, actor: "a".into() },
            Request::Drill { service: "w".into(), window_ms: None, actor: "a".into() },
            Request::History { service: None, verify: true },
            Request::Diff { service: "w".into(), from: "a".into(), to: "b".into() },
            Request::Logs { filter: LogFilter::default(), limit: 5 },
            Request::Down { service: "w".into(), purge: true, actor: "a".into() },
        ];
        for r in &all {
            let (m, t, _) = to_http(r);
            let path = t.split('?').next().unwrap();
            let path = if path.starts_with("/v1/instances/") { "/v1/instances/{instance}" } else { path };
            assert!(documented.contains(&(m.to_owned(), path.to_owned())), "{m} {path} is not in openapi.json");
        }
        // The files, the stream, and every other command (its body is
        // checked against the command surface in command::remote).
        let extra = [("GET", "/"), ("GET", "/openapi.json"), ("GET", "/v1/events"), ("POST", "/v1/commands")];
        for e in extra {
            assert!(documented.contains(&(e.0.to_owned(), e.1.to_owned())), "{e:?}");
        }
        assert_eq!(
            documented.len(),
            all.len() + extra.len(),
            "no operation documented twice or left over: {documented:?}"
        );
    }

    #[test]
    fn the_stream_and_the_files_are_routes_of_their_own() {
        assert_eq!(route(&req("GET", "/", "")).unwrap(), Route::Dashboard { token: None });
        assert_eq!(route(&req("GET", "/?token=ab", "")).unwrap(), Route::Dashboard { token: Some("ab".into()) });
        assert_eq!(route(&req("GET", "/openapi.json", "")).unwrap(), Route::OpenApi);
        assert_eq!(route(&req("GET", "/v1/events", "")).unwrap(), Route::Events { last_id: None, stream: false });
        let raw = "GET /v1/events HTTP/1.1\r\nLast-Event-ID: 42\r\nAccept: text/event-stream\r\n\r\n";
        let r = http::read_request(&mut raw.as_bytes()).unwrap();
        assert_eq!(route(&r).unwrap(), Route::Events { last_id: Some(42), stream: true });
        let e = route(&req("GET", "/v1/events?last_event_id=x", "")).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "last_event_id"), "{e}");
        let raw = "GET /v1/events?last_event_id=-1 HTTP/1.1\r\nLast-Event-ID: 0\r\n\r\n";
        let r = http::read_request(&mut raw.as_bytes()).unwrap();
        assert!(route(&r).is_err(), "a bad parameter is refused even beside a good header");
        assert_eq!(status_of(&route(&req("POST", "/v1/events", "")).unwrap_err()), 405);
        assert!(matches!(route(&req("GET", "/v1/status", "")).unwrap(), Route::Call(Request::Status { .. })));
        assert_eq!(route(&req("POST", "/v1/commands", "{}")).unwrap(), Route::Command { stream: false });
        let raw = "POST /v1/commands HTTP/1.1\r\nAccept: application/x-ndjson\r\nContent-Length: 2\r\n\r\n{}";
        let r = http::read_request(&mut raw.as_bytes()).unwrap();
        assert_eq!(route(&r).unwrap(), Route::Command { stream: true });
        assert_eq!(status_of(&route(&req("GET", "/v1/commands", "")).unwrap_err()), 405);
    }
}
