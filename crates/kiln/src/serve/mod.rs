//! `kiln serve`: the long-running release controller.
//!
//! - One per `KILN_HOME`: `serve.lock` (flock) names the holder's pid to a
//!   second one, which refuses to start.
//! - Its API is HTTP on the unix socket `$KILN_HOME/serve.sock` (mode 0600)
//!   and, with `--tcp`, on loopback with a token ([`auth`]); [`api`] turns
//!   requests into one [`api::Request`] enum, which the [`controller`]
//!   carries out between reconcile ticks. The same listeners serve the
//!   event stream ([`events`]), the dashboard ([`dashboard`]) and the
//!   OpenAPI document.
//! - The data plane is a `kiln proxy` process per service ([`dataplane`]),
//!   so traffic survives a SIGKILL of the controller; a restarted one adopts
//!   the proxies as `Runtime` adopts instances through their shims.
//! - State and history are in `state.db` ([`crate::serve::history`]).
//!
//! This module wires threads and sockets; it must never decide (that is
//! [`crate::release`]) or render (that is the front end).

pub mod answer;
pub mod api;
pub mod auth;
pub mod controller;
pub mod dashboard;
pub mod dataplane;
pub mod events;
pub mod history;
pub use crate::net::http;
pub mod metrics;
pub mod prober;
pub mod upgrade;

use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::image::store::StoreError;
use crate::runtime::RunError;
use crate::serve::history::HistoryError;
use crate::spec::SpecError;

/// Why a request cannot be carried out now (409), case by case; each
/// names the service, release or instance.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Conflict {
    #[error("kiln serve is stopping")]
    Stopping,
    #[error("release {release} of {service} is a drill: it is never promoted")]
    DrillNotPromoted { service: String, release: String },
    #[error("release {release} of {service} is not paused (step {step} of {steps})")]
    NotPaused { service: String, release: String, step: usize, steps: usize },
    #[error("service {service} has no release in progress")]
    NoReleaseInProgress { service: String },
    #[error("service {service} has release {release} in progress; a drill needs a steady service")]
    Busy { service: String, release: String },
    #[error("service {service} has no release serving")]
    NotServing { service: String },
    #[error("service {service} has no stable release to drill against")]
    NoStable { service: String },
    #[error("service {service}: {release} already serves")]
    AlreadyServes { service: String, release: String },
    #[error("service {service} has no release to roll back from")]
    NothingToRollBackFrom { service: String },
    #[error("service {service}: no earlier good release to roll back to")]
    NoEarlierRelease { service: String },
    #[error("instance {instance} is quarantined already")]
    Quarantined { instance: String },
    #[error("instance {instance} is not quarantined")]
    NotQuarantined { instance: String },
    #[error("instance {instance} is {state}; there is nothing to freeze")]
    NothingToFreeze { instance: String, state: String },
    #[error("{down} of {replicas} instances of {service} are down; killing one more would pass max_share {max_share}")]
    MaxShare { service: String, down: u32, replicas: u32, max_share: f64 },
}

/// Why the controller refused or failed, naming the thing.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("kiln serve is already running on {} (pid {pid}); stop it first", home.display())]
    AlreadyRunning { home: PathBuf, pid: String },
    #[error("kiln serve is not running on {} (start it with `kiln serve`): {source}", home.display())]
    NotRunning { home: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("service {0:?} has no listen address in kiln.toml; kiln needs one to route its traffic")]
    NoListen(String),
    #[error("no service {0:?} in kiln serve's kiln.toml")]
    UnknownService(String),
    #[error("no instance {0:?} of a service kiln serve manages")]
    UnknownInstance(String),
    #[error("service {service}: no release {release:?} in its history")]
    UnknownRelease { service: String, release: String },
    #[error("service {service}: no image {reference:?} in the store")]
    UnknownImage { service: String, reference: String },
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// No or a wrong credential; says nothing more (not where the token is).
    #[error("unauthorized")]
    Unauthorized,
    /// The request's head (or body) did not arrive in time: 408.
    #[error("the request was not received in time")]
    Timeout,
    /// Too many connections are open: 503, try again.
    #[error("too many connections; try again")]
    Busy,
    #[error("{}: kiln serve has no TCP listener, and a browser cannot open its unix socket; restart it with --tcp 127.0.0.1:7070 ({source})", path.display())]
    NoTcp { path: PathBuf, source: std::io::Error },
    #[error("--tcp {0}: the API listens on loopback addresses only")]
    NotLoopback(SocketAddr),
    #[error("refused: {0} (the dashboard sends it; other programs use Authorization: Bearer)")]
    Csrf(&'static str),
    #[error("bad request: {field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("no such API route {0:?}")]
    NoRoute(String),
    #[error("method not allowed: {method} {path} (allowed: {allow})")]
    MethodNotAllowed { method: String, path: String, allow: &'static str },
    /// The address a service's `listen` names cannot be bound (another
    /// process listens there): the running listener is left serving.
    #[error("{at}")]
    ListenTaken { at: Box<SpecError> },
    #[error("service {service}: the load balancer on {listen} did not start: {log}")]
    ProxyStart { service: String, listen: SocketAddr, log: String },
    #[error("service {service}: load balancer admin {admin}: {detail}")]
    Proxy { service: String, admin: SocketAddr, detail: String },
    #[error(transparent)]
    Handoff(#[from] crate::handoff::HandoffError),
    #[error("service {service}: kiln serve releases it as {} says; this deploy names {}: edit that file (or restart kiln serve -f {})", running.display(), given.display(), given.display())]
    OtherFile { service: String, running: PathBuf, given: PathBuf },
    #[error("kiln serve runs {}, not {}: an upgrade keeps the same kiln.toml", running.display(), given.display())]
    UpgradeFile { running: PathBuf, given: PathBuf },
    #[error("service {service}: {source}")]
    Refused { service: String, source: Box<crate::verify::promote::PromoteError> },
    #[error("kiln serve answered {status}: {message}")]
    Remote { status: u16, message: String },
}

/// The API socket of a kiln home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("serve.sock")
}

/// Holds `serve.lock` for the life of the controller.
#[derive(Debug)]
pub struct Lock {
    pub(crate) file: std::fs::File,
}

/// Takes the controller lock, or names who holds it.
pub fn lock(home: &Path) -> Result<Lock, ServeError> {
    let path = home.join("serve.lock");
    std::fs::create_dir_all(home).map_err(|source| ServeError::Io { path: home.to_owned(), source })?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| ServeError::Io { path: path.clone(), source })?;
    // SAFETY: flock on a descriptor this function owns; non-blocking.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        return Err(ServeError::AlreadyRunning { home: home.to_owned(), pid: pid.trim().to_owned() });
    }
    f.set_len(0)
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .map_err(|source| ServeError::Io { path, source })?;
    Ok(Lock { file: f })
}

/// A request from the API thread and where its answer goes.
pub type Call = (api::Request, mpsc::Sender<Result<answer::Answer, ServeError>>);

/// Binds the API socket (mode 0600), replacing a stale one.
pub fn bind_api(home: &Path) -> Result<UnixListener, ServeError> {
    let path = socket_path(home);
    let io = |source| ServeError::Io { path: path.clone(), source };
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Carries out the commands of `POST /v1/commands` (bake, run, ps, ...;
/// everything that is not a request to the controller), each on its
/// connection's thread. Implemented outside this module
/// ([`crate::command::remote::Runner`]) so that `serve` needs nothing of
/// the commands it carries.
pub trait Commands: Send + Sync + std::fmt::Debug {
    /// The answer to one request body (its HTTP status, and the JSON),
    /// handing each progress event to `progress` as it comes.
    fn carry_out(&self, body: &[u8], progress: &mut dyn FnMut(serde_json::Value)) -> (u16, serde_json::Value);
}

/// What every API connection handler shares.
#[derive(Debug, Clone)]
pub struct ApiShared {
    pub calls: mpsc::Sender<Call>,
    pub bus: Arc<events::Bus>,
    pub gate: Arc<upgrade::Gate>,
    pub commands: Arc<dyn Commands>,
}

/// Serves the API socket: each connection's request goes to the controller
/// over `calls`, and its answer back. Runs until the process exits.
pub fn serve_api(listener: UnixListener, shared: ApiShared) {
    let gate = shared.gate.clone();
    upgrade::accept_loop(
        listener,
        gate,
        |l| l.accept().map(|(c, _)| c),
        move |conn: UnixStream| {
            let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
            if let Ok(w) = conn.try_clone() {
                answer(conn, w, &shared, None);
            }
        },
        refuse_busy,
    );
}

/// Where `kiln serve` records its TCP address (when it has one).
pub fn tcp_path(home: &Path) -> PathBuf {
    home.join("serve.tcp")
}

/// The link that signs a browser in to the dashboard of the `kiln serve`
/// on `home`: its TCP address and the token, once.
pub fn dashboard_link(home: &Path) -> Result<String, ServeError> {
    call(home, &api::Request::Status { service: None })?;
    let path = tcp_path(home);
    let addr = std::fs::read_to_string(&path).map_err(|source| ServeError::NoTcp { path: path.clone(), source })?;
    Ok(format!("http://{}/?token={}", addr.trim(), token(home)?))
}

/// The token file of a kiln home.
pub fn token_path(home: &Path) -> PathBuf {
    home.join("serve.token")
}

/// The API token for TCP clients: read, or made (32 random bytes, hex,
/// mode 0600) on first use.
pub fn token(home: &Path) -> Result<String, ServeError> {
    let path = token_path(home);
    let io = |source| ServeError::Io { path: path.clone(), source };
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_owned());
    }
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(io)?;
    let t = crate::digest::hex(&b);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io)?;
    writeln!(f, "{t}").map_err(io)?;
    Ok(t)
}

/// Binds the API's loopback TCP listener (any other address is refused).
pub fn bind_tcp(home: &Path, addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    if !addr.ip().is_loopback() {
        return Err(ServeError::NotLoopback(addr));
    }
    std::net::TcpListener::bind(addr).map_err(|source| ServeError::Io { path: token_path(home), source })
}

/// Serves the API on a loopback TCP listener too; every request must carry
/// `Authorization: Bearer TOKEN` (or be a dashboard session, see [`auth`])
/// or gets 401 and changes nothing.
pub fn serve_tcp(home: &Path, listener: std::net::TcpListener, shared: ApiShared) -> Result<(), ServeError> {
    let keys = auth::Keys::new(&token(home)?);
    let gate = shared.gate.clone();
    upgrade::accept_loop(
        listener,
        gate,
        |l| l.accept().map(|(c, _)| c),
        move |conn: std::net::TcpStream| {
            let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
            let _ = conn.set_nodelay(true);
            if let Ok(w) = conn.try_clone() {
                answer(conn, w, &shared, Some(&keys));
            }
        },
        refuse_busy,
    );
    Ok(())
}

/// The API's description, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// How long a client has to send a request's head; then it gets 408.
const HEAD_TIME: Duration = Duration::from_secs(5);
/// How long it has for the body after that (at most 1 MiB).
const BODY_TIME: Duration = Duration::from_secs(10);

/// Answers a connection refused because too many are open: 503, closed,
/// without reading the request (no thread was given to it).
fn refuse_busy(mut w: impl Write) {
    let e = ServeError::Busy;
    let _ = write_error(&mut w, &e);
}

fn answer<C: http::Timed>(conn: C, mut w: impl Write, shared: &ApiShared, keys: Option<&auth::Keys>) {
    let mut r = BufReader::new(http::Deadline { stream: conn, until: std::time::Instant::now() + HEAD_TIME });
    let (mut req, len) = match http::read_head(&mut r) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return drop(write_error(&mut w, &ServeError::Timeout)),
        Err(e) => {
            let e = ServeError::BadRequest { field: "request".into(), message: e.to_string() };
            return drop(write_error(&mut w, &e));
        }
    };
    // Who asks is settled before what is asked, and before its body is
    // read: a request without the token learns nothing, not even whether
    // its parameters were good.
    let public = matches!(req.path.as_str(), "/" | "/openapi.json");
    let denied = if public { None } else { auth::check(&req, keys).err() };
    if let Some(d) = denied {
        return drop(write_error(&mut w, &refusal(d)));
    }
    r.get_mut().until = std::time::Instant::now() + BODY_TIME;
    match http::read_body(&mut r, &mut req, len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return drop(write_error(&mut w, &ServeError::Timeout)),
        Err(e) => {
            let e = ServeError::BadRequest { field: "body".into(), message: e.to_string() };
            return drop(write_error(&mut w, &e));
        }
    }

    let route = match api::route(&req) {
        Ok(r) => r,
        Err(e) => return drop(write_error(&mut w, &e)),
    };
    let result = match route {
        // The API's shape is no secret; schema tools read it first.
        api::Route::OpenApi => return drop(http::write_response(&mut w, 200, OPENAPI.as_bytes())),
        api::Route::Dashboard { token } => return dashboard(&mut w, &req, token.as_deref(), keys),
        api::Route::Events { last_id, stream: true } => return stream_events(w, shared, last_id),
        api::Route::Events { last_id, stream: false } => {
            return drop(http::write_response(&mut w, 200, poll_events(shared, last_id).to_string().as_bytes()))
        }
        api::Route::Command { stream } => return run_command(w, shared, &req.body, stream),
        api::Route::Call(req) => {
            let (tx, rx) = mpsc::channel();
            shared
                .calls
                .send((req, tx))
                .map_err(|_| ServeError::Conflict(Conflict::Stopping))
                .and_then(|_| rx.recv().map_err(|_| ServeError::Conflict(Conflict::Stopping)))
                .and_then(|r| r)
        }
    };
    let _ = match result {
        Ok(answer::Answer::Metrics(s)) => {
            http::write_response_typed(&mut w, 200, "text/plain; version=0.0.4; charset=utf-8", s.as_bytes())
        }
        Ok(a) => http::write_response(&mut w, 200, a.to_json().as_bytes()),
        Err(e) => write_error(&mut w, &e),
    };
}

/// `GET /`: a browser signing in with the link `kiln dashboard` prints
/// (the token becomes a session cookie and leaves the address bar), the
/// sign-in hint, or the page.
fn dashboard(w: &mut impl Write, req: &http::Request, token: Option<&str>, keys: Option<&auth::Keys>) {
    let _ = dashboard::answer(w, req, token, keys, dashboard::Page::Host);
}

fn refusal(d: auth::Denied) -> ServeError {
    match d {
        auth::Denied::Unauthenticated => ServeError::Unauthorized,
        auth::Denied::Csrf(why) => ServeError::Csrf(why),
    }
}

fn write_error(w: &mut impl Write, e: &ServeError) -> std::io::Result<()> {
    let body = serde_json::json!({ "error": e.to_string() });
    let allow = match e {
        ServeError::MethodNotAllowed { allow, .. } => vec![("Allow", *allow)],
        _ => Vec::new(),
    };
    http::write_response_full(w, api::status_of(e), "application/json", &allow, body.to_string().as_bytes())
}

/// `POST /v1/commands`: one command, carried out on this thread. Streamed
/// (`Accept: application/x-ndjson`), the answer is 200 and NDJSON: a line
/// per progress event, then the outcome with its own `status`; otherwise
/// the outcome alone, with its status.
fn run_command(mut w: impl Write, shared: &ApiShared, body: &[u8], stream: bool) {
    if !stream {
        let (status, answer) = shared.commands.carry_out(body, &mut |_| {});
        let _ = http::write_response(&mut w, status, answer.to_string().as_bytes());
        return;
    }
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
    let mut open = w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_ok();
    let (status, mut answer) = shared.commands.carry_out(body, &mut |event| {
        // A client that went away stops getting progress; the command
        // itself runs to its end (half a bake is worth nothing).
        open = open && writeln!(w, "{event}").and_then(|_| w.flush()).is_ok();
    });
    answer["status"] = serde_json::json!(status);
    let _ = writeln!(w, "{answer}").and_then(|_| w.flush());
}

/// `GET /v1/events` without `Accept: text/event-stream`: the kept events
/// after `last_id`, at once (for tools that poll; the stream is the same
/// events, live).
fn poll_events(shared: &ApiShared, last_id: Option<u64>) -> serde_json::Value {
    let events: Vec<serde_json::Value> = shared
        .bus
        .since(last_id)
        .into_iter()
        .map(|e| {
            let data: serde_json::Value = serde_json::from_str(&e.data).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "id": e.id, "event": e.kind, "data": data })
        })
        .collect();
    let last = events.last().and_then(|e| e["id"].as_u64()).or(last_id).unwrap_or(0);
    serde_json::json!({ "events": events, "last_id": last })
}

/// `GET /v1/events`: server-sent events until the client goes, falls too
/// far behind, or a successor takes over (then the browser reconnects to
/// it, as EventSource does by itself).
fn stream_events(mut w: impl Write, shared: &ApiShared, last_id: Option<u64>) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nretry: 1000\n\n";
    let (backlog, rx) = shared.bus.subscribe(last_id);
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    for e in backlog {
        if w.write_all(e.frame().as_bytes()).is_err() {
            return;
        }
    }
    let _ = w.flush();
    let mut quiet = 0;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(e) => {
                quiet = 0;
                if w.write_all(e.frame().as_bytes()).and_then(|_| w.flush()).is_err() {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                quiet += 1;
                // A comment now and then finds a client that went away.
                if shared.gate.is_paused()
                    || (quiet % 15 == 0 && w.write_all(b": idle\n\n").and_then(|_| w.flush()).is_err())
                {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

pub use crate::time::now_ms;

/// How `kiln serve` starts.
#[derive(Debug)]
pub struct Options {
    /// A loopback address for the API with a token, besides the socket.
    pub tcp: Option<SocketAddr>,
    /// Take over from the running `kiln serve` (see [`upgrade`]).
    pub upgrade: bool,
    pub commands: Arc<dyn Commands>,
}

/// Runs the controller in the foreground: the lock, the API socket, then
/// reconcile ticks (every 100 ms) with API requests carried out between
/// them. With `upgrade`, it takes over from the running `kiln serve`
/// instead (see [`upgrade`]): its lock and API sockets, its instances and
/// load balancers, which are replaced by this binary's. Returns only on a
/// start-up error (a predecessor then serves on as before).
pub fn run(
    home: &Path,
    file: &Path,
    store: &crate::image::store::Store,
    driver: &dyn crate::runtime::driver::Driver,
    launcher: &dyn crate::runtime::Launcher,
    options: Options,
) -> Result<(), ServeError> {
    let Options { tcp, upgrade, commands } = options;
    if let Some(a) = tcp.filter(|a| !a.ip().is_loopback()) {
        return Err(ServeError::NotLoopback(a));
    }
    let (tx, rx) = mpsc::channel::<Call>();
    let gate = Arc::new(upgrade::Gate::default());
    let (c, listeners) = if upgrade {
        // Validated before the predecessor pauses for us.
        crate::spec::load(file)?;
        let inherited = upgrade::take_over(home, file)?;
        let mut c = controller::Controller::new(home, file, store, driver, launcher)?;
        for (service, result) in c.hand_over_data_planes() {
            match result {
                Ok(pid) => eprintln!("kiln serve: {service}: load balancer handed over to pid {pid}"),
                Err(e) => eprintln!("kiln serve: {service}: load balancer kept: {e}"),
            }
        }
        controller::crash_point("upgrade-adopted");
        (c, inherited)
    } else {
        let lock = lock(home)?;
        let c = controller::Controller::new(home, file, store, driver, launcher)?;
        let tcp = tcp.map(|a| bind_tcp(home, a)).transpose()?;
        (c, upgrade::Listeners { lock, api: bind_api(home)?, tcp, predecessor: None })
    };
    let shared = ApiShared { calls: tx, bus: c.events(), gate: gate.clone(), commands };
    let kept = listeners.kept(file)?;
    let upgrade::Listeners { lock: _lock, api, tcp, predecessor } = listeners;
    if let Some(l) = tcp {
        let io = |source| ServeError::Io { path: token_path(home), source };
        let bound = l.local_addr().map_err(io)?;
        l.set_nonblocking(true).map_err(io)?;
        serve_tcp(home, l, shared.clone())?;
        // Where `kiln dashboard` finds it.
        let path = tcp_path(home);
        crate::sys::atomic::write(&path, format!("{bound}\n").as_bytes())
            .map_err(|source| ServeError::Io { path: path.clone(), source })?;
        eprintln!(
            "kiln serve: API and dashboard on http://{bound}/ (token in {}; `kiln dashboard` prints the sign-in link)",
            token_path(home).display()
        );
    } else {
        let _ = std::fs::remove_file(tcp_path(home));
    }
    api.set_nonblocking(true).map_err(|source| ServeError::Io { path: socket_path(home), source })?;
    serve_api(api, shared);
    if let Some(p) = predecessor {
        p.ready()?;
        eprintln!("kiln serve: took over from the previous kiln serve");
    }
    let successors = upgrade::offer(home)?;
    // Said at start, not at the first instance that needs a secret.
    for store in [crate::secrets::Secrets::new(home), crate::secrets::Secrets::signing_keys(home)] {
        if let Err(e) = store.check() {
            eprintln!("kiln serve: warning: {e}; instances that use secrets (or signing) will fail until it is given");
        }
    }
    eprintln!("kiln serve: ready on {}", socket_path(home).display());
    let mut c = c;
    loop {
        crate::sys::children::reap();
        if let Err(e) = c.tick(now_ms()) {
            eprintln!("kiln serve: {e}");
        }
        let until = std::time::Instant::now() + Duration::from_millis(100);
        while let Ok((req, reply)) = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
            let _ = reply.send(c.handle(req, now_ms()));
        }
        if let Ok(successor) = successors.try_recv() {
            upgrade::hand_over(&mut c, &gate, &rx, successor, &kept);
        }
    }
}

/// Sends one request to the `kiln serve` of `home`; its answer.
pub fn call(home: &Path, req: &api::Request) -> Result<answer::Answer, ServeError> {
    let s = UnixStream::connect(socket_path(home))
        .map_err(|source| ServeError::NotRunning { home: home.to_owned(), source })?;
    let (m, t, b) = api::to_http(req);
    let r = http::exchange(s, m, &t, &b).map_err(|source| ServeError::NotRunning { home: home.to_owned(), source })?;
    if r.status != 200 {
        #[derive(serde::Deserialize)]
        struct Refusal {
            error: String,
        }
        let message = serde_json::from_slice::<Refusal>(&r.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into());
        return Err(ServeError::Remote { status: r.status, message });
    }
    answer::Answer::parse(req, &r.body)
        .map_err(|e| ServeError::Remote { status: r.status, message: format!("an answer kiln cannot read: {e}") })
}

/// Sends one request to the `kiln serve` of `home`; its answer as the
/// payload type `T` that request is answered with.
pub fn ask<T: answer::Payload>(home: &Path, req: &api::Request) -> Result<T, ServeError> {
    T::from_answer(call(home, req)?).ok_or_else(|| ServeError::Remote {
        status: 200,
        message: format!("kiln serve answered {req:?} with the answer to another request"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_made_once_and_private() {
        let home = kiln_testutil::tempdir("serve-token");
        let t = token(&home).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(token(&home).unwrap(), t);
        let mode = std::fs::metadata(token_path(&home)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
