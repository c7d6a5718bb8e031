//! Commands carried out by `kiln serve` for a client: the wire form of a
//! [`Command`] (a [`Job`], the body of `POST /v1/commands`), the server side
//! ([`Runner`], which `kiln serve` is given as its [`crate::serve::Commands`])
//! and the client the CLI uses ([`send`]).
//!
//! With `kiln serve` running, the CLI is a client of it: every command runs
//! in the controller's process, and the same request works over TCP with
//! the token. Without one, the CLI carries the command out itself through
//! the same [`super::execute`].
//!
//! This module converts and carries; it must never decide what a command
//! does (that is [`super::execute`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Command, CommandError, Output, PathNeed};
use crate::bake::{Progress, StepReport};
use crate::runtime::logs::Retention;

/// One command as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub command: Command,
    /// The client's `SOURCE_DATE_EPOCH`, for a bake.
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
}

impl Job {
    /// Whether this command can be carried out by `kiln serve`: not a
    /// controller request (it has routes of its own) nor `kiln proxy`
    /// (a load balancer in the caller's foreground).
    pub fn is_remote(&self) -> bool {
        !matches!(
            self.command,
            Command::Controller(_)
                | Command::Proxy(_)
                | Command::RotateKey { .. }
                | Command::Login { .. }
                | Command::Logout { .. }
                | Command::DbUpdate { .. }
                | Command::Agent { .. }
                | Command::Assign { .. }
                | Command::FleetController { .. }
                | Command::Place { .. }
                | Command::FleetChange { .. }
                | Command::FleetRemote { .. }
                | Command::DrainHost { .. }
                | Command::Hosts { .. }
                | Command::FleetHistory { .. }
                | Command::FleetSecret { .. }
                | Command::FleetLogs { .. }
                | Command::FleetPs { .. }
                | Command::FleetMetrics { .. }
                | Command::FleetVerify { .. }
                | Command::FleetChaos { .. }
                | Command::FleetKill { .. }
                | Command::FleetDrill { .. }
                | Command::FleetQuarantine { .. }
                | Command::FleetServices { .. }
        )
    }

    /// Refuses what no server can take: a relative path (relative to what,
    /// on the server?), naming the field.
    pub fn check(&self) -> Result<(), CommandError> {
        if self.source_date_epoch.is_some_and(|t| t < 0) {
            return Err(CommandError::BadRequest {
                field: "source_date_epoch".into(),
                message: "seconds since 1970, not negative".into(),
            });
        }
        let mut c = self.command.clone();
        for (field, p, need) in c.paths_mut() {
            if !p.is_absolute() {
                return Err(CommandError::BadRequest {
                    field: field.into(),
                    message: format!("{}: must be an absolute path on the host kiln serve runs on", p.display()),
                });
            }
            let there = match need {
                PathNeed::File => p.is_file(),
                PathNeed::Exists => p.exists(),
                PathNeed::Optional => !p.exists() || p.is_file(),
            };
            if !there {
                return Err(CommandError::NoFile { field: field.into(), path: p.clone() });
            }
        }
        Ok(())
    }

    /// The job with its paths made absolute against the caller's working
    /// directory (what a CLI does before sending it).
    pub fn absolute(mut self) -> std::io::Result<Job> {
        for (_, p, _) in self.command.paths_mut() {
            *p = std::path::absolute(&*p)?;
        }
        Ok(self)
    }
}

/// A progress event of a command in flight, one NDJSON line of a streamed
/// answer: `{"progress": {"started": {...}}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    Started { index: usize, total: usize, description: String },
    Output { line: String },
    Finished { report: StepReport },
}

/// A [`Progress`] that hands each event on as JSON.
struct Relay<'a>(&'a mut dyn FnMut(Value));

impl Relay<'_> {
    fn send(&mut self, s: Step) {
        (self.0)(json!({ "progress": s }));
    }
}

impl Progress for Relay<'_> {
    fn step_started(&mut self, index: usize, total: usize, description: &str) {
        self.send(Step::Started { index, total, description: description.to_owned() });
    }
    fn step_output(&mut self, line: &str) {
        self.send(Step::Output { line: line.to_owned() });
    }
    fn step_finished(&mut self, report: &StepReport) {
        self.send(Step::Finished { report: report.clone() });
    }
}

/// Passes one event on to a front end's [`Progress`].
pub fn replay(step: Step, progress: &mut dyn Progress) {
    match step {
        Step::Started { index, total, description } => progress.step_started(index, total, &description),
        Step::Output { line } => progress.step_output(&line),
        Step::Finished { report } => progress.step_finished(&report),
    }
}

/// The HTTP status of a command's error, by variant: the caller's mistake
/// (4xx) or the host's (5xx), never by its text.
pub fn status(e: &CommandError) -> u16 {
    use crate::image::store::StoreError;
    use crate::runtime::RunError;
    use crate::secrets::SecretError;
    use crate::verify::vulns::VulnError;
    use crate::verify::{gate::TestError, inventory::InventoryError, promote::PromoteError, sign::SignError};
    fn store(e: &StoreError) -> u16 {
        match e {
            StoreError::NotFound(_) => 404,
            // Several match: the caller must say which.
            StoreError::Ambiguous { .. } => 409,
            StoreError::TagConflict { .. } => 409,
            _ => 500,
        }
    }
    fn secret(e: &SecretError) -> u16 {
        match e {
            SecretError::BadName(_) => 400,
            SecretError::Missing(_) => 404,
            _ => 500,
        }
    }
    fn run(e: &RunError) -> u16 {
        match e {
            RunError::Store(s) => store(s),
            RunError::Secret(s) => secret(s),
            RunError::Invalid(_) | RunError::NoProgram { .. } => 400,
            RunError::Ambiguous { .. } => 409,
            RunError::NotFound(_) => 404,
            RunError::NotExited(..) => 409,
            _ => 500,
        }
    }
    fn io(e: &std::io::Error) -> u16 {
        if e.kind() == std::io::ErrorKind::NotFound {
            404
        } else {
            500
        }
    }
    fn sign(e: &SignError) -> u16 {
        match e {
            SignError::Store(s) => store(s),
            SignError::Secret(s) => secret(s),
            SignError::Io { source, .. } => io(source),
            SignError::KeyExists { .. } => 409,
            SignError::BadKey { .. } => 400,
            SignError::NoKey { .. } => 404,
            SignError::Unsigned { .. } | SignError::Invalid { .. } => 403,
        }
    }
    fn inventory(e: &InventoryError) -> u16 {
        match e {
            InventoryError::Store(s) => store(s),
            InventoryError::Parse { .. } => 422,
        }
    }
    match e {
        CommandError::Spec(_) | CommandError::BadRequest { .. } => 400,
        CommandError::NoFile { .. } => 404,
        CommandError::Bake(b) => match b {
            crate::bake::BakeError::Store { source, .. } => store(source),
            // A step of the caller's kiln.toml failed, or its input is bad.
            crate::bake::BakeError::Step { .. } | crate::bake::BakeError::Unpack { .. } => 422,
            _ => 500,
        },
        CommandError::Store(s) => store(s),
        CommandError::Run(r) => run(r),
        CommandError::Secret(s) => secret(s),
        CommandError::History(_) => 500,
        CommandError::Test(t) => match t {
            TestError::Spec(_) | TestError::NoTest { .. } | TestError::NotFromFile { .. } => 400,
            TestError::Store(s) => store(s),
            TestError::Run(r) => run(r),
        },
        CommandError::Sign(s) => sign(s),
        CommandError::Vuln(v) => match v {
            VulnError::Store(s) => store(s),
            VulnError::Inventory(i) => inventory(i),
            VulnError::NoDatabase => 400,
            VulnError::Database { .. } => 400,
            VulnError::Stale { .. } => 409,
        },
        CommandError::Inventory(i) => inventory(i),
        CommandError::Etcd(e) => match e {
            crate::fleet::etcd::EtcdError::Invalid { path, .. } if path == "--cluster" => 400,
            _ => 502,
        },
        CommandError::FleetSecret(s) => {
            use crate::fleet::secrets::FleetSecretError as E;
            match s {
                E::Etcd(_) => 502,
                E::Missing { .. } | E::MissingVersion { .. } | E::NoKey => 404,
                E::InUse { .. } | E::Contended { .. } | E::TooManyVersions { .. } => 409,
                E::Secret(e) => secret(e),
                E::Io { .. } => 500,
            }
        }
        CommandError::FleetHistory(h) => match h {
            crate::fleet::history::FleetHistoryError::Etcd(_) => 502,
            // The check found tampering: the answer stands, as a conflict
            // with what the history should be.
            _ => 409,
        },
        CommandError::FleetChange(c) => {
            use crate::fleet::change::ChangeError;
            match c {
                ChangeError::NoService { .. } => 404,
                ChangeError::NoPrevious { .. } | ChangeError::NoCanary { .. } | ChangeError::Contended { .. } => 409,
                ChangeError::Failed { .. } | ChangeError::Paused { .. } => 409,
                ChangeError::CanaryInProgress { .. } | ChangeError::DrillNotPromoted { .. } => 409,
                ChangeError::BadDrill { .. } => 400,
            }
        }
        CommandError::Db(d) => {
            use crate::verify::osvdb::DbError;
            match d {
                DbError::NotHttps { .. } | DbError::Ecosystem { .. } | DbError::Ca { .. } => 400,
                DbError::Io { .. } => 500,
                // The source failed, or sent what is not an export.
                DbError::Fetch { .. } | DbError::Status { .. } | DbError::Invalid { .. } => 502,
            }
        }
        CommandError::Promote(p) if p.is_refusal() => 403,
        CommandError::Promote(p) => match p {
            PromoteError::Store(s) => store(s),
            PromoteError::Sign(s) => sign(s),
            PromoteError::UnknownChannel { .. } => 404,
            _ => 403,
        },
        CommandError::Registry(r) => match r {
            crate::image::registry::RegistryError::Store(s) => store(s),
            crate::image::registry::RegistryError::BadRemote { .. } => 400,
            // Nothing answers where the body says the registry is.
            crate::image::registry::RegistryError::Io { .. } => 404,
            // The registry failed or could not be reached: a bad gateway.
            _ => 502,
        },
        CommandError::Serve(s) => crate::serve::api::status_of(s),
        CommandError::Remote { status, .. } => *status,
        CommandError::Controller { .. } => 502,
    }
}

/// An error with its causes, as the CLI prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.ends_with(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    text
}

/// The answer to a command that failed: the message, the field when the
/// request was bad, and the exit status a CLI gives it.
pub(crate) fn failure(e: &CommandError) -> (u16, Value) {
    let mut body = json!({ "error": chain(e), "exit": e.exit_code() });
    if let CommandError::BadRequest { field, .. } = e {
        body["field"] = json!(field);
    }
    (status(e), body)
}

/// JSON has one number type: `3000.0` is as much an integer as `3000`, so
/// whole numbers become integers before the body meets the integer fields.
fn whole_numbers(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Strictly within ±2^63 (and below 2^64 on the positive side) the
            // cast is exact; an integer past those was read as a float.
            if f.fract() == 0.0 && f > -9.223_372_036_854_776e18 && f < 9.223_372_036_854_776e18 {
                *v = json!(f as i64);
            } else if f.fract() == 0.0 && (0.0..1.844_674_407_370_955_2e19).contains(&f) {
                *v = json!(f as u64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(whole_numbers),
        Value::Object(o) => o.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// Carries out the commands of `POST /v1/commands` in `kiln serve`, each on
/// its connection's thread, with the real tools of the host.
#[derive(Debug, Clone)]
pub struct Runner {
    pub home: PathBuf,
    pub retention: Retention,
}

impl Runner {
    fn run(&self, body: &[u8], progress: &mut dyn FnMut(Value)) -> Result<Output, CommandError> {
        let bad = |e: serde_json::Error| {
            let m = e.to_string();
            // serde names the field between backticks; a wrong command
            // name is the `command` field's fault.
            let field = match m.split('`').nth(1) {
                Some(f) if !m.starts_with("unknown variant") => f,
                _ => "command",
            };
            CommandError::BadRequest { field: field.to_owned(), message: m }
        };
        let mut v: Value = serde_json::from_slice(body).map_err(bad)?;
        whole_numbers(&mut v);
        let job = Job::deserialize(v).map_err(bad)?;
        if !job.is_remote() {
            return Err(CommandError::BadRequest { field: "command".into(), message: "not a command body".into() });
        }
        job.check()?;
        let host = super::host::Host::open(&self.home)?;
        let mut relay = Relay(progress);
        let now = (crate::serve::now_ms() / 1000) as i64;
        let mut ctx = host.context(&mut relay, now, job.source_date_epoch, self.retention);
        super::execute(job.command, &mut ctx)
    }
}

impl crate::serve::Commands for Runner {
    fn carry_out(&self, body: &[u8], progress: &mut dyn FnMut(Value)) -> (u16, Value) {
        let started = std::time::Instant::now();
        let what = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["command"].as_object().and_then(|o| o.keys().next().cloned()))
            .unwrap_or_else(|| "?".into());
        // A bug in one command must not take the controller down with it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(body, progress)));
        let (status, answer) = match outcome {
            Ok(Ok(output)) => (200, serde_json::to_value(&output).unwrap_or_default()),
            Ok(Err(e)) => failure(&e),
            Err(_) => (
                500,
                json!({ "error": format!("kiln serve: the {what} command panicked (a bug; see kiln serve's log)"), "exit": 1 }),
            ),
        };
        eprintln!("kiln serve: command {what}: {status} in {} ms", started.elapsed().as_millis());
        (status, answer)
    }
}

/// Carries out `job` in the `kiln serve` of `home`, replaying its progress
/// on `progress` as it comes. `None` when no `kiln serve` answers there
/// (or an older one without `/v1/commands`): the caller runs it itself.
pub fn send(home: &Path, job: &Job, progress: &mut dyn Progress) -> Option<Result<Output, CommandError>> {
    if !job.is_remote() {
        return None;
    }
    let s = UnixStream::connect(crate::serve::socket_path(home)).ok()?;
    exchange(home, s, job, progress)
}

fn lost(home: &Path, source: std::io::Error) -> CommandError {
    CommandError::Serve(crate::serve::ServeError::NotRunning { home: home.to_owned(), source })
}

fn exchange(
    home: &Path,
    s: UnixStream,
    job: &Job,
    progress: &mut dyn Progress,
) -> Option<Result<Output, CommandError>> {
    let body = serde_json::to_vec(job).expect("a job serializes");
    let head = format!(
        "POST /v1/commands HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\nAccept: application/x-ndjson\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut r = BufReader::new(s);
    if let Err(e) = r.get_mut().write_all(head.as_bytes()).and_then(|_| r.get_mut().write_all(&body)) {
        return Some(Err(lost(home, e)));
    }
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || line.is_empty() {
        // It accepted the connection and went away: nothing was carried out.
        return None;
    }
    let http = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) if line.trim_end().is_empty() => break,
            Ok(_) => {}
            Err(e) => return Some(Err(lost(home, e))),
        }
    }
    if http == 404 {
        // A kiln serve from before /v1/commands.
        return None;
    }
    if http != 200 {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut rest);
        let v: Value = serde_json::from_str(&rest).unwrap_or(Value::Null);
        let message = v["error"].as_str().map(str::to_owned).unwrap_or(rest);
        return Some(Err(CommandError::Remote { status: http, exit: 1, message }));
    }
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "it went away before the command finished (its outcome is unknown)",
                );
                return Some(Err(lost(home, e)));
            }
            Ok(_) => {}
            Err(e) => return Some(Err(lost(home, e))),
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(p) = v.get_mut("progress").map(Value::take) {
            if let Ok(step) = serde_json::from_value::<Step>(p) {
                replay(step, progress);
            }
            continue;
        }
        let status = v.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        if status == 200 {
            return Some(serde_json::from_value::<Output>(v).map_err(|e| CommandError::Remote {
                status: 500,
                exit: 1,
                message: format!("kiln serve sent an answer this kiln cannot read: {e}"),
            }));
        }
        let exit = v["exit"].as_i64().map_or(1, |c| c as i32);
        let message = v["error"].as_str().unwrap_or("kiln serve failed the command").to_owned();
        return Some(Err(CommandError::Remote { status, exit, message }));
    }
}

#[cfg(test)]
mod tests;
