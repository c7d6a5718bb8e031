//! The controller's command surface: every front end (the CLI today, the
//! HTTP API on the unix socket) turns its input into one [`Request`], and
//! every outcome's HTTP status comes from the [`ServeError`] variant, never
//! from its text. This module only converts; it must never act.

use serde::{Deserialize, Serialize};

use super::http;
use super::ServeError;

/// Everything `kiln serve` can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Release `image` (or the service's image) for `service`.
    Deploy { service: String, image: Option<String>, actor: String },
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DrillBody {
    service: String,
    window_ms: Option<u64>,
    actor: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    service: String,
    image: Option<String>,
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
struct ServiceBody {
    service: String,
    actor: Option<String>,
}

fn body<'a, T: Deserialize<'a>>(req: &'a http::Request) -> Result<T, ServeError> {
    serde_json::from_slice(&req.body).map_err(|e| ServeError::BadRequest {
        field: e.to_string().split('`').nth(1).unwrap_or("body").to_owned(),
        message: e.to_string(),
    })
}

/// Parses an HTTP request of the API into a [`Request`].
pub fn parse(req: &http::Request) -> Result<Request, ServeError> {
    let actor = |a: Option<String>| a.unwrap_or_else(|| "api".into());
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/status") => Ok(Request::Status { service: req.param("service").map(str::to_owned) }),
        ("GET", "/metrics") => Ok(Request::Metrics),
        ("POST", "/v1/deploy") => {
            let b: DeployBody = body(req)?;
            Ok(Request::Deploy { service: b.service, image: b.image, actor: actor(b.actor) })
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
            if let Some(ms) = b.window_ms.filter(|ms| !(1000..=600_000).contains(ms)) {
                return Err(ServeError::BadRequest {
                    field: "window_ms".into(),
                    message: format!("{ms}: the analysis window must be 1 s to 10 min"),
                });
            }
            Ok(Request::Drill { service: b.service, window_ms: b.window_ms, actor: actor(b.actor) })
        }
        (
            _,
            "/v1/status"
            | "/metrics"
            | "/v1/deploy"
            | "/v1/rollback"
            | "/v1/promote"
            | "/v1/abort"
            | "/v1/quarantine"
            | "/v1/release-quarantine"
            | "/v1/verify-instances"
            | "/v1/chaos/kill"
            | "/v1/chaos/drill",
        ) => Err(ServeError::MethodNotAllowed(format!("{} {}", req.method, req.path))),
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
        ServeError::MethodNotAllowed(_) => 405,
        ServeError::Unauthorized { .. } => 401,
        ServeError::Conflict(_) => 409,
        ServeError::Refused { source, .. } if source.is_refusal() => 403,
        _ => 500,
    }
}

/// The request as the CLI sends it: method, target and JSON body.
pub fn to_http(r: &Request) -> (&'static str, String, Vec<u8>) {
    match r {
        Request::Status { service: Some(s) } => ("GET", format!("/v1/status?service={s}"), Vec::new()),
        Request::Status { service: None } => ("GET", "/v1/status".into(), Vec::new()),
        Request::Metrics => ("GET", "/metrics".into(), Vec::new()),
        Request::Deploy { service, image, actor } => (
            "POST",
            "/v1/deploy".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service, "image": image, "actor": actor })).unwrap(),
        ),
        Request::Rollback { service, to, actor } => (
            "POST",
            "/v1/rollback".into(),
            serde_json::to_vec(&serde_json::json!({ "service": service, "to": to, "actor": actor })).unwrap(),
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
    fn every_request_round_trips_through_http() {
        let all = [
            Request::Deploy { service: "web".into(), image: Some("hello:2".into()), actor: "me".into() },
            Request::Deploy { service: "web".into(), image: None, actor: "me".into() },
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
        assert_eq!(status_of(&ServeError::Conflict("x".into())), 409);
        let e = parse(&req("POST", "/v1/chaos/drill", r#"{"service":"web","window_ms":5}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "window_ms"), "{e}");
        let e = parse(&req("POST", "/v1/chaos/kill", r#"{"service":"web","max_share":2}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "max_share"), "{e}");
        let e = parse(&req("POST", "/v1/quarantine", r#"{"reason":"x"}"#)).unwrap_err();
        assert!(matches!(&e, ServeError::BadRequest { field, .. } if field == "instance"), "{e}");
        assert_eq!(status_of(&ServeError::UnknownInstance("x".into())), 404);
        assert_eq!(status_of(&ServeError::Unauthorized { path: "t".into() }), 401);
    }
}
