//! The API of a fleet controller (`kiln serve --cluster … --tcp ADDR`, or
//! `kiln controller --api ADDR`): every controller, leading or not, takes
//! the fleet's commands over HTTP, as the same [`Command`]s the CLI makes
//! (with this controller's cluster), and answers with the same typed
//! [`Output`]. A change is written to etcd conditioned on what it read,
//! so it does not matter which controller takes it.
//!
//! - `GET /v1/fleet/services`, `GET /v1/fleet/hosts`, `GET /v1/fleet/ps`,
//!   `GET /v1/fleet/history`, `GET /metrics` (Prometheus text);
//! - `GET /`: the fleet's dashboard (`/?token=TOKEN` signs a browser in,
//!   with a session cookie; its changes then carry the CSRF value);
//! - `POST /v1/fleet` with a [`FleetRequest`], externally tagged:
//!   `{"rollback": {"service": "web", "actor": "ops@laptop"}}`,
//!   `{"history": {"service": "web", "verify": true}}`.
//!
//! Callers send `Authorization: Bearer TOKEN` (`$KILN_HOME/serve.token`).
//! [`Controller`] is the client side, for `kiln … --controller URL`: a
//! person's machine then needs no etcd credentials.
//!
//! For: the routes, bodies and connections of the fleet API. Must never:
//! decide or act on the fleet itself (`command::fleet` and `fleet` do).

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Command, CommandError, Output};
use crate::fleet::change::{CanaryPlan, Change};
use crate::fleet::etcd::Cluster;
use crate::fleet::place::Desired;
use crate::net::http;
use crate::serve::auth;

/// A controller's fleet API, as a client reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    pub token: String,
}

impl Controller {
    /// Asks the controller for `request` (a GET for the two reads, else
    /// `POST /v1/fleet`); its typed answer, or its refusal as
    /// [`CommandError::Remote`] with the status and exit code it chose.
    pub fn ask(&self, request: &FleetRequest) -> Result<Output, CommandError> {
        let (method, path, body) = match request {
            FleetRequest::Services {} => ("GET", "/v1/fleet/services", Vec::new()),
            FleetRequest::Hosts {} => ("GET", "/v1/fleet/hosts", Vec::new()),
            FleetRequest::Metrics {} => ("GET", "/metrics", Vec::new()),
            other => ("POST", "/v1/fleet", serde_json::to_vec(other).unwrap_or_default()),
        };
        let unreachable = |e: std::io::Error| CommandError::Controller { url: self.url.clone(), source: e };
        let (authority, tls) = match (self.url.strip_prefix("https://"), self.url.strip_prefix("http://")) {
            (Some(a), _) => {
                let config =
                    crate::net::tls::client_config(None).map_err(|e| unreachable(std::io::Error::other(e.detail)))?;
                (a.trim_end_matches('/'), Some(config))
            }
            (None, Some(a)) => (a.trim_end_matches('/'), None),
            _ => {
                return Err(CommandError::BadRequest {
                    field: "controller".into(),
                    message: format!("{}: give http://HOST:PORT or https://HOST:PORT", self.url),
                })
            }
        };
        let stream = crate::net::tls::connect(authority, tls.as_ref(), Duration::from_secs(30)).map_err(unreachable)?;
        let auth = format!("Bearer {}", self.token);
        let req = http::Outgoing {
            method,
            target: path,
            host: authority,
            headers: &[("Authorization", &auth), ("Content-Type", "application/json")],
            body: http::Body::Bytes(&body),
        };
        let r = http::send(stream, req).map_err(unreachable)?;
        let status = r.status;
        let bytes = r.bytes(16 << 20).map_err(unreachable)?;
        if status != 200 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(CommandError::Remote {
                status,
                exit: v["exit"].as_i64().map_or(1, |e| e as i32),
                message: v["error"]
                    .as_str()
                    .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned),
            });
        }
        if *request == (FleetRequest::Metrics {}) {
            return Ok(Output::FleetMetrics(String::from_utf8_lossy(&bytes).into_owned()));
        }
        serde_json::from_slice(&bytes).map_err(|e| unreachable(std::io::Error::other(format!("not an answer: {e}"))))
    }
}

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

/// A fleet command as an API body. Each becomes the [`Command`] the CLI
/// would make, with the controller's cluster. A change names who asks
/// (`actor`, for the history; `api` when not given).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FleetRequest {
    Services {},
    Hosts {},
    /// `kiln ps --cluster`: every slot, where it is and its state.
    Ps {},
    /// `GET /metrics`: Prometheus text.
    Metrics {},
    /// `kiln quarantine --cluster` (and `release-quarantine`, `release`).
    Quarantine {
        instance: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        actor: String,
        #[serde(default)]
        release: bool,
    },
    /// `kiln chaos --drill canary --controller`: the drill's canary
    /// started (the caller follows it with `GET /v1/fleet/services`).
    Drill {
        service: String,
        /// Percent of requests, 1 to 50.
        weight: u32,
        /// The window it is judged on, 1 s to 60 s.
        window_ms: u64,
        #[serde(default)]
        actor: String,
    },
    /// One kill of `kiln chaos --controller`: serving instance `instance`
    /// of `service`, SIGKILLed by its host.
    Kill {
        service: String,
        instance: String,
        #[serde(default)]
        actor: String,
    },
    /// `kiln verify-instances --cluster`: every host checks its instances.
    Verify {
        #[serde(default)]
        service: Option<String>,
    },
    /// `kiln logs --cluster`: every live host's logs matching the filter.
    Logs {
        #[serde(default)]
        filter: crate::runtime::logs::LogFilter,
    },
    /// `kiln history --cluster`: the fleet's history (of `service`, if
    /// given), the chain checked first with `verify`.
    History {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        verify: bool,
    },
    /// `kiln place`: the desired state as it is.
    Place {
        service: String,
        desired: Desired,
        #[serde(default)]
        actor: String,
    },
    /// `kiln deploy --cluster`: `settings` (as kiln.toml's service makes
    /// them) with a new image, a canary when `canary` is given. A tag is
    /// resolved to its digest through the registry, with `registry`'s
    /// settings. Not followed: `GET /v1/fleet/services` shows progress.
    Deploy {
        service: String,
        settings: Desired,
        #[serde(default)]
        canary: Option<CanaryPlan>,
        #[serde(default)]
        registry: crate::spec::registries::RegistrySpec,
        #[serde(default)]
        actor: String,
        /// Only say what it would change (`kiln plan --cluster`).
        #[serde(default)]
        dry_run: bool,
    },
    Rollback {
        service: String,
        #[serde(default)]
        actor: String,
    },
    Promote {
        service: String,
        #[serde(default)]
        actor: String,
    },
    Abort {
        service: String,
        #[serde(default)]
        actor: String,
    },
    Down {
        service: String,
        #[serde(default)]
        actor: String,
    },
    DrainHost {
        host: String,
        #[serde(default)]
        undo: bool,
        #[serde(default)]
        actor: String,
    },
}

impl FleetRequest {
    /// A person's change to `service` as a request (`registry`: a
    /// deploy's settings for resolving a tag).
    pub fn of_change(
        service: String,
        change: Change,
        registry: crate::spec::registries::RegistrySpec,
        actor: String,
    ) -> Self {
        match change {
            Change::Deploy { settings, canary } => {
                FleetRequest::Deploy { service, settings: *settings, canary, registry, actor, dry_run: false }
            }
            Change::Rollback => FleetRequest::Rollback { service, actor },
            Change::Promote => FleetRequest::Promote { service, actor },
            Change::Abort => FleetRequest::Abort { service, actor },
            Change::Down => FleetRequest::Down { service, actor },
            Change::Drill { weight, window_secs } => {
                FleetRequest::Drill { service, weight, window_ms: window_secs * 1000, actor }
            }
        }
    }

    /// The command it stands for, against `cluster`.
    pub fn into_command(self, cluster: Cluster) -> Command {
        let who = |actor: String| if actor.trim().is_empty() { "api".to_owned() } else { actor };
        let change = |service: String, change: Change, actor: String| Command::FleetChange {
            cluster: cluster.clone(),
            service,
            change,
            registry: Default::default(),
            wait: None,
            bake: None,
            actor: who(actor),
            dry_run: false,
        };
        match self {
            FleetRequest::Services {} => Command::FleetServices { cluster },
            FleetRequest::Hosts {} => Command::Hosts { cluster },
            FleetRequest::History { service, verify } => Command::FleetHistory { cluster, service, verify },
            FleetRequest::Logs { filter } => Command::FleetLogs { cluster, filter },
            FleetRequest::Ps {} => Command::FleetPs { cluster },
            FleetRequest::Metrics {} => Command::FleetMetrics { cluster },
            FleetRequest::Verify { service } => Command::FleetVerify { cluster, service },
            FleetRequest::Drill { service, weight, window_ms, actor } => {
                change(service, Change::Drill { weight, window_secs: window_ms.div_ceil(1000) }, actor)
            }
            FleetRequest::Kill { service, instance, actor } => {
                Command::FleetKill { cluster, service, instance, actor: who(actor) }
            }
            FleetRequest::Quarantine { instance, reason, actor, release } => {
                Command::FleetQuarantine { cluster, instance, reason, actor: who(actor), release }
            }
            FleetRequest::Place { service, desired, actor } => {
                Command::Place { cluster, service, desired, actor: who(actor) }
            }
            FleetRequest::Deploy { service, settings, canary, registry, actor, dry_run } => Command::FleetChange {
                cluster: cluster.clone(),
                service,
                change: Change::Deploy { settings: Box::new(settings), canary },
                registry,
                wait: None,
                bake: None,
                actor: who(actor),
                dry_run,
            },
            FleetRequest::Rollback { service, actor } => change(service, Change::Rollback, actor),
            FleetRequest::Promote { service, actor } => change(service, Change::Promote, actor),
            FleetRequest::Abort { service, actor } => change(service, Change::Abort, actor),
            FleetRequest::Down { service, actor } => change(service, Change::Down, actor),
            FleetRequest::DrainHost { host, undo, actor } => {
                Command::DrainHost { cluster, host, undo, actor: who(actor) }
            }
        }
    }
}

/// The request a route and body stand for, or why none does (status and
/// a message naming the field). Pure.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<FleetRequest, (u16, CommandError)> {
    let bad = |field: &str, message: String| (400, CommandError::BadRequest { field: field.into(), message });
    match (method, path) {
        ("GET", "/v1/fleet/services") => Ok(FleetRequest::Services {}),
        ("GET", "/v1/fleet/hosts") => Ok(FleetRequest::Hosts {}),
        ("GET", "/v1/fleet/ps") => Ok(FleetRequest::Ps {}),
        ("GET", "/v1/fleet/history") => Ok(FleetRequest::History { service: None, verify: false }),
        ("GET", "/metrics") => Ok(FleetRequest::Metrics {}),
        ("POST", "/v1/fleet") => serde_json::from_slice(body).map_err(|e| {
            let m = e.to_string();
            // serde names the field between backticks; a wrong request
            // name is the `request` field's fault.
            let field = match m.split('`').nth(1) {
                Some(f) if !m.starts_with("unknown variant") => f.to_owned(),
                _ => "request".to_owned(),
            };
            bad(&field, m)
        }),
        (
            _,
            "/v1/fleet" | "/v1/fleet/services" | "/v1/fleet/hosts" | "/v1/fleet/ps" | "/v1/fleet/history" | "/metrics",
        ) => Err((405, CommandError::BadRequest { field: "method".into(), message: format!("{method} {path}") })),
        _ => Err((404, CommandError::BadRequest { field: "path".into(), message: format!("no route {path}") })),
    }
}

/// Serves the fleet API on `listener` until `stop`, carrying requests out
/// with the store of `home` against `cluster`; callers must send the
/// token in `home`.
pub fn serve(
    home: std::path::PathBuf,
    cluster: Cluster,
    listener: TcpListener,
    retention: crate::runtime::logs::Retention,
    stop: &'static AtomicBool,
) -> Result<(), CommandError> {
    let keys = auth::Keys::new(&crate::serve::token(&home)?);
    let busy = |mut conn: TcpStream| drop(http::write_response(&mut conn, 503, br#"{"error":"busy"}"#));
    let handle = Arc::new(move |conn| drop(one(&home, &cluster, &keys, retention, conn)));
    crate::net::accept::serve(listener, stop, MAX_CONNECTIONS, busy, handle);
    Ok(())
}

/// Answers one request on `conn`, then closes it.
fn one(
    home: &std::path::Path,
    cluster: &Cluster,
    keys: &auth::Keys,
    retention: crate::runtime::logs::Retention,
    mut conn: TcpStream,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = match http::read_request(&mut BufReader::new(conn.try_clone()?)) {
        Ok(r) => r,
        // Not a request it can read (or a body over 1 MiB): said so, not
        // just closed on.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            let body = serde_json::json!({ "error": format!("bad request: {e}"), "field": "request" });
            return http::write_response(&mut conn, 400, body.to_string().as_bytes());
        }
        Err(e) => return Err(e),
    };
    // The dashboard signs a browser in itself (`/?token=`, once).
    if req.method == "GET" && req.path == "/" {
        let page = crate::serve::dashboard::Page::Fleet;
        return crate::serve::dashboard::answer(&mut conn, &req, req.param("token"), Some(keys), page);
    }
    let (status, body) = match auth::check(&req, Some(keys)) {
        Err(auth::Denied::Unauthenticated) => {
            (401, serde_json::json!({ "error": "send Authorization: Bearer TOKEN ($KILN_HOME/serve.token)" }))
        }
        Err(auth::Denied::Csrf(why)) => (403, serde_json::json!({ "error": why })),
        Ok(_) => match route(&req.method, &req.path, &req.body) {
            Err((status, e)) => (status, super::remote::failure(&e).1),
            Ok(request) => {
                let outcome = carry_out(home, request.into_command(cluster.clone()), retention);
                match outcome {
                    // Prometheus reads text, not JSON.
                    Ok(Output::FleetMetrics(text)) => {
                        return http::write_response_typed(
                            &mut conn,
                            200,
                            "text/plain; version=0.0.4; charset=utf-8",
                            text.as_bytes(),
                        )
                    }
                    Ok(output) => (200, serde_json::to_value(&output).unwrap_or_default()),
                    Err(e) => super::remote::failure(&e),
                }
            }
        },
    };
    http::write_response(&mut conn, status, body.to_string().as_bytes())
}

/// Carries out `cmd` with the store of `home`, as the CLI would.
fn carry_out(
    home: &std::path::Path,
    cmd: Command,
    retention: crate::runtime::logs::Retention,
) -> Result<Output, CommandError> {
    struct Quiet;
    impl crate::bake::Progress for Quiet {
        fn step_started(&mut self, _: usize, _: usize, _: &str) {}
        fn step_output(&mut self, _: &str) {}
        fn step_finished(&mut self, _: &crate::bake::StepReport) {}
    }
    let host = super::host::Host::open(home)?;
    let mut quiet = Quiet;
    let ctx_now = crate::time::now_secs();
    let mut ctx = host.context(&mut quiet, ctx_now, None, retention);
    super::execute(cmd, &mut ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_bodies_become_the_cli_s_commands_and_bad_ones_name_the_field() {
        let ok = |m: &str, p: &str, b: &[u8]| route(m, p, b).map_err(|(s, e)| format!("{s} {e}"));
        assert_eq!(ok("GET", "/v1/fleet/services", b""), Ok(FleetRequest::Services {}));
        assert_eq!(ok("GET", "/v1/fleet/hosts", b""), Ok(FleetRequest::Hosts {}));
        assert_eq!(
            ok("POST", "/v1/fleet", br#"{"rollback": {"service": "web"}}"#),
            Ok(FleetRequest::Rollback { service: "web".into(), actor: String::new() })
        );
        assert_eq!(
            ok("POST", "/v1/fleet", br#"{"history": {"service": "web", "verify": true}}"#),
            Ok(FleetRequest::History { service: Some("web".into()), verify: true })
        );
        assert_eq!(ok("GET", "/v1/fleet/history", b""), Ok(FleetRequest::History { service: None, verify: false }));
        let cluster = Cluster { urls: vec!["http://127.0.0.1:2379".into()], ca: None, cert: None, key: None };
        // Who asked travels to the history; "api" when the body names no one.
        let cmd = FleetRequest::Promote { service: "web".into(), actor: String::new() }.into_command(cluster.clone());
        assert!(matches!(
            cmd,
            Command::FleetChange { ref service, change: Change::Promote, wait: None, ref actor, .. }
                if service == "web" && actor == "api"
        ));
        let cmd =
            FleetRequest::Down { service: "web".into(), actor: "ops@laptop".into() }.into_command(cluster.clone());
        assert!(matches!(cmd, Command::FleetChange { ref actor, .. } if actor == "ops@laptop"));
        let field = |body: &[u8]| match route("POST", "/v1/fleet", body) {
            Err((400, CommandError::BadRequest { field, .. })) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(br#"{"rollback": {}}"#), "service");
        assert_eq!(field(br#"{"rollback": {"service": "web", "to": "x"}}"#), "to");
        assert_eq!(field(br#"{"reboot": {}}"#), "request");
        assert!(matches!(route("DELETE", "/v1/fleet", b""), Err((405, _))));
        assert!(matches!(route("GET", "/v1/commands", b""), Err((404, _))));
    }
}
